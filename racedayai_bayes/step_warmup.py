"""Imported last by the step server (step_server.STEP_PRELOAD): warm, once, what every step
process would otherwise warm for itself: the instance's storages and the refit job's
repository (:func:`warm_refit_job`). Only the
server's import warms; any other import of the module only defines the functions.

A step process opens the Dagster instance and reads and writes its storages. The first
statement a process sends through SQLAlchemy builds lazily made, process-wide structures
(compiler state, memoised attributes of Dagster's table definitions): about 0.3 s of CPU,
measured in every step of a demo refit, where a later statement costs a few ms. The server
opens the instance once, reads from each storage, and closes it before it forks any step,
so every step inherits these structures already built. It adds no run or event (opening an
instance for the first time creates its empty databases, as any command would). A failure here
only means the steps warm themselves again: it is never raised, as the server must start.

Each step process also checks the Alembic revision of every SQLite database it opens, and
Alembic executed Dagster's 89 revision scripts for each check: the server reads them once
(:func:`share_alembic_revision_maps`) and every step inherits what it read.

The plots need no warm-up here. Until 2026-12-04 the server drew one plot of each kind the
harness draws, as a process's first figure cost 0.4 s more than a later one. Now the preload's
ArviZ imports Matplotlib's pyplot, which loads the font manager: a step's plots cost the same
after that warm-up as without it (0.555 and 0.546 s, a seed posterior's four plots, four
forked processes each, 2026-12-05), and the warm-up cost 0.27 s before the first step could start.
"""

from __future__ import annotations

import os

from racedayai_bayes.step_server import in_step_server

_SHARED_REVISION_MAPS: dict = {}


def share_alembic_revision_maps() -> bool:
    """Make every Alembic script directory of one folder share one revision map, built once
    per process tree.

    Each time a Dagster SQLite storage connects to a database it has not seen in this
    process (the run, event-log index and schedule databases, and each run's own event
    shard), it checks the database's Alembic revision against the head. Each check makes a
    new :class:`alembic.script.ScriptDirectory`, and each new one builds its revision map by
    executing every revision script Dagster ships (89 files): 13-17 ms of CPU per check,
    4 or 5 checks per step process, in every step process of a refit (measured 2026-12-05).
    The scripts cannot change while a process runs, so a map built once serves every later
    directory of the same folders. Called before the step server opens the instance
    (:func:`warm_instance`), every step forked from it inherits the map already built. The
    database's own revision is still read from the database at every check.

    Only the map is shared: each directory keeps its own options. Alembic changes a map only
    when it writes a new revision script (``alembic revision``), which Dagster never does.
    True if installed (or already); False if this Alembic's script directory has no
    revision map to share (the checks then cost as before). A directory whose attributes
    are not as expected keeps its own map: this never raises.
    """
    import functools
    import inspect

    try:
        from alembic.script import ScriptDirectory
    except ImportError:
        return False
    if getattr(ScriptDirectory.__init__, "_racedayai_shared_maps", False):
        return True  # installed already (this command's instance, or the server's preload)
    try:
        if "self.revision_map" not in inspect.getsource(ScriptDirectory.__init__):
            return False
    except (OSError, TypeError):  # no source to read: leave Alembic as it is
        return False
    original_init = ScriptDirectory.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        try:
            key = (os.path.abspath(self.dir), tuple(os.path.abspath(str(v)) for v in self.version_locations or ()),
                   bool(self.sourceless), bool(self.recursive_version_locations))
            self.revision_map = _SHARED_REVISION_MAPS.setdefault(key, self.revision_map)
        except Exception:  # noqa: BLE001 - another Alembic: this directory keeps the map it made
            pass

    __init__._racedayai_shared_maps = True
    ScriptDirectory.__init__ = __init__
    return True


def warm_instance() -> bool:
    """Open the instance of ``$DAGSTER_HOME``, read from its run, event-log and schedule
    storages, and close it (its connections too: nothing open is inherited by a fork).
    True if it did; False without ``$DAGSTER_HOME`` or on any error."""
    if not os.environ.get("DAGSTER_HOME"):
        return False
    try:
        import dagster as dg

        instance = dg.DagsterInstance.get()
        try:
            records = instance.get_run_records(limit=1)
            if records:
                instance.all_logs(records[0].dagster_run.run_id, of_type=dg.DagsterEventType.STEP_START)
            instance.get_latest_materialization_event(dg.AssetKey("model_frame"))
            instance.all_instigator_state()
        finally:
            instance.dispose()
    except Exception:  # noqa: BLE001 - warming is optional; the steps warm themselves
        return False
    return True


def warm_refit_job() -> bool:
    """Resolve the refit job as a step process of ``racedayai-bayes refit`` resolves it (the
    command's ``dg.reconstructable(refit_job_def)``), so that every step forked afterwards
    finds the job's repository already built: 0.016 s of CPU less in each step (0.023 s ->
    0.007 s for a step's subset of the job, measured 2026-12-05), for 0.02 s here. Steps of a
    run launched otherwise (the daemon, the UI) load the code location by another pointer and
    resolve it themselves, as before. True if it did; False on any error."""
    try:
        import dagster as dg

        from racedayai_bayes.definitions import refit_job_def

        dg.reconstructable(refit_job_def).get_definition()
    except Exception:  # noqa: BLE001 - warming is optional; the steps resolve the job themselves
        return False
    return True


def end_without_teardown() -> None:
    """The step server's exit, registered (last, so run first) with atexit by its preload:
    flush logging's handlers and stdout/stderr, then end the process without the
    interpreter's teardown.

    The server ends when the command that started it has gone. Freeing every module it
    preloaded (Dagster, ArviZ, SciPy, Matplotlib, the code location) took about 0.9 s of CPU
    after the command had ended (strace, 2026-12-04), during which it still held the
    command's stdout. Its step processes never run this: they end through os._exit.
    """
    import logging

    from racedayai_bayes.lib.processes import exit_now

    logging.shutdown()
    exit_now(0)


if in_step_server():  # a test or a tool that imports this module opens no instance
    from racedayai_bayes.lib.processes import freeze_imports

    try:
        # every step process forked from the server writes its stacks to the refit's log on
        # SIGUSR1 (the stop watchdog's last look at a step that did not stop; stop_watchdog.py)
        from racedayai_bayes.stop_watchdog import enable_stack_dumps, end_steps_with_their_run

        enable_stack_dumps()
        # and ends itself once the run's process that started it has gone (killed): no step is left behind
        end_steps_with_their_run()
        share_alembic_revision_maps()
        warm_instance()
        warm_refit_job()
        import atexit

        atexit.register(end_without_teardown)
    finally:
        # the preload is over (step_gc turned the collector off for it): every object it made
        # is kept for the server's life, and its step processes never walk them again; and the
        # collector is on again whatever happened above
        freeze_imports()
