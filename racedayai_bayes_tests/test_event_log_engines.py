"""The event log's engines made once per database (racedayai_bayes/event_log_engines.py).

The behaviour is installed in a separate interpreter (the refit command and the step server
install it in theirs), so that this test process's own Dagster storages stay as Dagster
makes them. The script reports, as JSON: one engine serves a database's successive calls,
asset events included (they write the run's database and the index); each call still
closes its connection, so the run's ``.db`` file (a write-ahead-log database) changes with
every event, as the UI's watcher needs; a plain-Dagster process between two of this
process's calls reads every event and writes its own; at most MAX_DATABASES engines are
kept, the index's among them; a forked child makes its own engines; wipe() leaves a storage
that works.
"""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    r"""
    import json, os, subprocess, sys, tempfile, time
    import dagster as dg
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    from racedayai_bayes import event_log_engines as ee

    out = {"replaceable": ee._replaceable(SqliteEventLogStorage._connect),
           "other_method_replaceable": ee._replaceable(SqliteEventLogStorage.get_all_run_ids),
           "installed": ee.reuse_event_log_engines(), "again": ee.reuse_event_log_engines()}
    home = tempfile.mkdtemp()
    instance = dg.DagsterInstance.from_config(home)
    storage = instance.event_log_storage
    out["storage_class"] = type(storage).__name__

    def materialize(run_id, i):
        event = DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, "job", step_key="step",
                             event_specific_data=StepMaterializationData(dg.AssetMaterialization("thing", metadata={"i": i})))
        storage.store_event(EventLogEntry(error_info=None, level=20, user_message="", run_id=run_id,
                                          timestamp=time.time(), dagster_event=event, job_name="job", step_key="step"))

    def count(run_id):
        return len(instance.all_logs(run_id))

    def db_stamp(run_id):
        stat = os.stat(storage.path_for_shard(run_id))
        return (stat.st_mtime_ns, stat.st_size)

    run_a = "a" * 8 + "-0000-0000-0000-000000000000"
    engines, changed = set(), 0
    materialize(run_a, -1)
    for i in range(10):
        before = db_stamp(run_a)
        time.sleep(0.002)
        materialize(run_a, i)
        changed += db_stamp(run_a) != before  # the close copied the write-ahead log into the .db file
        engines.add(id(ee._engines(storage)[run_a]))
    out["engines_for_ten_events"] = len(engines)
    import sqlite3
    with sqlite3.connect(storage.path_for_shard(run_a)) as probe:
        out["journal_mode"] = probe.execute("PRAGMA journal_mode").fetchone()[0]
    out["db_file_changed_with_each_event"] = changed
    out["index_knows_the_last"] = instance.get_latest_materialization_event(dg.AssetKey("thing")) \
        .asset_materialization.metadata["i"].value

    # another process, with Dagster's own storage, between two calls of this one (whose
    # engines stay): it reads every event and writes its own
    other = subprocess.run([sys.executable, "-c", (
        "import sys, time, dagster as dg\n"
        "from dagster._core.events.log import EventLogEntry\n"
        "i = dg.DagsterInstance.from_config(sys.argv[1])\n"
        "print(len(i.all_logs(sys.argv[2])))\n"
        "[i.event_log_storage.store_event(EventLogEntry(error_info=None, level=20, user_message='other', "
        "run_id=sys.argv[2], timestamp=time.time(), dagster_event=None, job_name='job')) for _ in range(5)]\n"
    ), home, run_a], capture_output=True, text=True, timeout=120)
    out["other_process_saw"] = int(other.stdout.split()[-1]) if other.returncode == 0 else other.stderr[-500:]
    out["after_other_process"] = count(run_a)

    # at most MAX_DATABASES engines: the index, and the runs used last
    for k in range(6):
        materialize(f"{k}" * 8 + "-0000-0000-0000-000000000000", 100 + k)
    out["engines_kept"] = len(ee._engines(storage))
    out["index_engine_kept"] = "index" in ee._engines(storage)
    out["max_databases"] = ee.MAX_DATABASES

    # a fork: the child makes its own engines and writes; the parent's stay and still work
    parent_engines = ee._engines(storage)
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            materialize(run_a, 200)
            ok = ee._engines(storage) is not parent_engines and run_a in ee._engines(storage)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    out["child_ok"] = os.waitstatus_to_exitcode(status) == 0
    materialize(run_a, 201)
    out["parent_engines_kept"] = ee._engines(storage) is parent_engines
    out["after_fork"] = count(run_a)

    # wipe() deletes the runs' databases: the next event makes a new one
    storage.wipe()
    out["after_wipe"] = count(run_a)
    materialize(run_a, 300)
    out["after_wipe_and_one_event"] = count(run_a)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def report():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_installed_once_and_only_over_dagsters_own_connect(report):
    # this Dagster's _connect is the one the module was written for: if an upgrade changes it,
    # this fails, and the refit runs at Dagster's own speed until the module is looked at again
    assert report["replaceable"] is True
    assert report["other_method_replaceable"] is False
    assert report["installed"] is True and report["again"] is True
    assert report["storage_class"] == "SqliteEventLogStorage"


def test_one_engine_per_database_and_each_call_still_closes_its_connection(report):
    assert report["engines_for_ten_events"] == 1
    assert report["journal_mode"] == "wal"  # what makes the close matter: it copies the log back
    # the UI's watcher of a run waits for its .db file to change: each close copies the
    # write-ahead log back, as with Dagster's own engines
    assert report["db_file_changed_with_each_event"] == 10
    assert report["index_knows_the_last"] == 9


def test_a_plain_dagster_process_reads_every_event_and_writes_alongside(report):
    assert report["other_process_saw"] == 11
    assert report["after_other_process"] == 16


def test_only_the_databases_used_last_keep_their_engines(report):
    assert report["engines_kept"] == report["max_databases"]
    assert report["index_engine_kept"] is True  # used by every asset event, so never the least recent


def test_a_forked_child_makes_its_own_engines(report):
    assert report["child_ok"] is True
    assert report["parent_engines_kept"] is True
    assert report["after_fork"] == 18  # 16, the child's event and the parent's after it


def test_wipe_leaves_a_storage_that_works(report):
    assert report["after_wipe"] == 0
    assert report["after_wipe_and_one_event"] == 1


@pytest.mark.parametrize("change", [
    ("        engine.dispose()\n", ""),  # a line dropped
    ("poolclass=NullPool", "poolclass=QueuePool"),  # a line changed
    ("                yield conn", "            yield conn"),  # the yield moved out of the transaction
])
def test_the_guard_refuses_a_connect_that_differs_in_any_line(change):
    from racedayai_bayes.event_log_engines import _DAGSTER_CONNECT, _matches

    old, new = change
    assert old in _DAGSTER_CONNECT
    assert _matches(_DAGSTER_CONNECT) and _matches("    " + _DAGSTER_CONNECT.replace("\n", "\n    "))
    assert not _matches(_DAGSTER_CONNECT.replace(old, new))
