"""The refit's event-log connections kept open (racedayai_bayes/event_log_connections.py).

The behaviour is installed in a separate interpreter (the refit command and the step server
install it in theirs), so that this test process's own Dagster storages stay as Dagster
makes them. The script checks, and reports as JSON: the same connection serves successive
calls; another process (plain Dagster) reads every event at once and writes to the same
database meanwhile; at most MAX_DATABASES engines stay open; a forked child opens its own
connection and leaves its parent's alone; dispose() and wipe() close what is open and the
storage works after them.
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
    from dagster._core.events.log import EventLogEntry
    from racedayai_bayes import event_log_connections as ec

    out = {"installed": ec.keep_event_log_connections(), "again": ec.keep_event_log_connections(),
           "foreign_function_replaceable": ec._replaceable(lambda self, shard: None)}
    home = tempfile.mkdtemp()
    instance = dg.DagsterInstance.from_config(home)
    storage = instance.event_log_storage
    out["storage_class"] = type(storage).__name__

    def log(run_id, text):
        storage.store_event(EventLogEntry(error_info=None, level=20, user_message=text, run_id=run_id,
                                          timestamp=time.time(), dagster_event=None, job_name="job"))

    def count(run_id):
        return len(instance.all_logs(run_id))

    run_a = "a" * 8 + "-0000-0000-0000-000000000000"
    engines_seen = set()
    for i in range(10):
        log(run_a, f"event {i}")
        engines_seen.add(id(ec._own_engines(storage)[run_a]))
    out["engines_for_ten_events"] = len(engines_seen)
    out["connections_kept"] = ec._own_engines(storage)[run_a].pool.checkedin()

    # another process, with Dagster's own storage, reads and writes the same run's database
    # while this process keeps its connection open
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
        log(f"{k}" * 8 + "-0000-0000-0000-000000000000", "x")
    out["engines_open"] = len(ec._own_engines(storage))
    out["max_databases"] = ec.MAX_DATABASES

    # a fork: the child opens its own connection, never the parent's
    parent_engines = ec._own_engines(storage)
    log(run_a, "before the fork")
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            log(run_a, "child")
            ok = ec._own_engines(storage) is not parent_engines and any(s is parent_engines for s in ec._SET_ASIDE)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    out["child_ok"] = os.waitstatus_to_exitcode(status) == 0
    log(run_a, "parent after the fork")
    out["parent_engines_kept"] = ec._own_engines(storage) is parent_engines
    out["after_fork"] = count(run_a)

    # dispose() closes; the storage opens again when used
    instance.dispose()
    out["engines_after_dispose"] = len(ec._own_engines(storage))
    log(run_a, "after dispose")
    out["after_dispose"] = count(run_a)

    # wipe() closes before it deletes the runs' databases; a new event makes a new one
    storage.wipe()
    out["after_wipe"] = count(run_a)
    log(run_a, "after wipe")
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
    assert report["installed"] is True and report["again"] is True
    assert report["storage_class"] == "SqliteEventLogStorage"
    assert report["foreign_function_replaceable"] is False


def test_successive_events_share_one_open_connection(report):
    assert report["engines_for_ten_events"] == 1
    assert report["connections_kept"] == 1


def test_another_process_reads_every_event_at_once_and_writes_meanwhile(report):
    assert report["other_process_saw"] == 10  # each call committed before it returned
    assert report["after_other_process"] == 15  # and held no lock between calls


def test_only_the_databases_used_last_stay_open(report):
    assert report["engines_open"] == report["max_databases"]


def test_a_forked_child_opens_its_own_connection(report):
    assert report["child_ok"] is True
    assert report["parent_engines_kept"] is True
    assert report["after_fork"] == 18  # 15, the parent's event before the fork, the child's, the parent's after


def test_dispose_and_wipe_close_what_is_open(report):
    assert report["engines_after_dispose"] == 0
    assert report["after_dispose"] == 19
    assert report["after_wipe"] == 0  # the run's database was deleted
    assert report["after_wipe_and_one_event"] == 1
