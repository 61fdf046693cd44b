"""The server the multiprocess executor forks step processes from, and what it preloads.

Steps run in their own processes, at most two at once (the machine has 2 cores). They fork
from a server that has already imported the code location and what its steps import lazily
(ArviZ, SciPy's stats, the NetCDF writer, the plots, the models' modules, and what opens the
Dagster instance): seconds of imports paid once per command instead of in every step. The
code location itself imports none of the heavy ones, so the command line, the code server
and the daemon stay light. JAX and NumPyro are not preloaded: only the NUTS engines
(``exact_nuts``, ``rowwise``) use them, a step that runs one imports them itself (about 2 s),
and the default engines are numpy. No Dagster import here: the command line starts the
server before it imports Dagster itself, so that the two imports overlap on the machine's
two cores. A later distance's process of the same command forks its steps from this same
server (:func:`share_step_server`, :func:`join_step_server`).
"""

from __future__ import annotations

STEP_PRELOAD = [
    "racedayai_bayes.definitions",
    "arviz",
    "scipy.stats",
    "h5netcdf",
    "racedayai_bayes.lib.evaluation.report",
    "racedayai_bayes.lib.evaluation.plots",
    "racedayai_bayes.lib.models.seed.exact",
    "racedayai_bayes.lib.models.forecast.fit",
    "racedayai_bayes.lib.outputs.artifacts",
    # what a posterior step imported itself when measured (2026-12-03): the scores' metrics
    # (0.15 s), the rank plot's backend, the seed's plots, the artifact's Parquet side tables
    "sklearn.metrics",
    "arviz.plots.backends.matplotlib",
    "racedayai_bayes.lib.models.seed.plots",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "h5netcdf.legacyapi",
    # what a step process imports to open the Dagster instance (SQLite storages, their
    # Alembic revision check, the instance factory): about 0.5 s of every step otherwise.
    # A name a later Dagster no longer has is skipped (the forkserver ignores ImportError).
    "sqlalchemy.dialects.sqlite",
    "alembic.script",
    "alembic.runtime.migration",
    "dagster._core.instance.factory",
    "dagster._core.secrets.env_file",
    "dagster._core.storage.root",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.schedules.sqlite",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.run_coordinator",
    "dagster._daemon",
    "dagster._scheduler",
    "upath.implementations.local",
    # last: open the instance once and read from its storages, so that no step pays the
    # first SQLAlchemy statement's one-time cost (racedayai_bayes/step_warmup.py)
    "racedayai_bayes.step_warmup",
]
# Dagster's multiprocess executor puts this module first in the list it preloads
_EXECUTOR_FIRST = "dagster._core.executor.multiprocess"


def start_step_server() -> None:
    """Start this process's forkserver now, with the executor's preload list.

    The executor later sets the same list and finds the server running. Started inside the
    command's stderr redirection, the server's import warnings go to the refit's log file.
    """
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([_EXECUTOR_FIRST, *STEP_PRELOAD])
    forkserver.ensure_running()


# How a later distance's process (``refit --after``) finds the first process's server: the
# write end of the server's "alive" pipe, inherited, and the server's socket address.
SHARED_SERVER_ENV = "RACEDAYAI_STEP_SERVER"


def share_step_server() -> tuple[dict[str, str], int]:
    """The environment entry and the file descriptor that let a child process of this one
    fork its step processes from this process's server (see :func:`join_step_server`).

    The child must inherit the descriptor (``pass_fds``): the server runs as long as any
    holder of it lives, as it does for this process's own steps.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    server.ensure_running()
    fd = server._forkserver_alive_fd
    return {SHARED_SERVER_ENV: f"{fd}:{server._forkserver_address}"}, fd


def join_step_server() -> bool:
    """Fork this process's steps from the server its parent shared (:func:`share_step_server`),
    instead of starting a second one: a second server would import everything again (about
    7 s of CPU on this machine) while the first run's steps need the cores. False, and
    nothing changed, if the parent shared none or it has gone.

    The standard library's forkserver client keeps the server's address and alive pipe and
    starts a server only when it has not started one itself; this sets the first two and
    makes its "ensure running" start only the resource tracker, which every process keeps
    for itself. A step then reaches the server exactly as the parent's steps do.
    """
    import os
    from multiprocessing import forkserver, resource_tracker

    value = os.environ.pop(SHARED_SERVER_ENV, "")
    fd_text, _, address = value.partition(":")
    if not fd_text.isdigit() or not address or not os.path.exists(address):
        return False
    try:
        os.fstat(int(fd_text))
    except OSError:
        return False
    server = forkserver._forkserver
    with server._lock:
        server._forkserver_address = address
        server._forkserver_alive_fd = int(fd_text)
    server.ensure_running = resource_tracker.ensure_running  # the server is the parent's: never start one
    return True
