"""The step server: a later distance's process forks its steps from the first process's
server, and the server warms the instance once for every step."""

import json
import os
import subprocess
import sys
import textwrap

from racedayai_bayes.step_server import SHARED_SERVER_ENV
from racedayai_bayes_tests.conftest import run_in_step_process

# A parent that starts a server with nothing to preload, shares it with a child process,
# and prints the server's pid and what the child's forked process says its parent is.
PARENT = textwrap.dedent("""
    import multiprocessing, os, subprocess, sys
    from multiprocessing import forkserver
    from racedayai_bayes.step_server import share_step_server

    multiprocessing.get_context("forkserver").set_forkserver_preload([])
    env, fd = share_step_server()
    if sys.argv[1] == "unshared":
        env = {}
    out = subprocess.run([sys.executable, *sys.argv[2].split()], env={**os.environ, **env}, pass_fds=(fd,),
                         capture_output=True, text=True)
    print(forkserver._forkserver._forkserver_pid, out.stdout.strip(), out.returncode, out.stderr[-2000:])
""")

CHILD = textwrap.dedent("""
    import multiprocessing, os
    from racedayai_bayes.step_server import SHARED_SERVER_ENV, join_step_server

    def parent_pid(queue):
        queue.put(os.getppid())

    if __name__ == "__main__":
        import signal, sys
        shared = os.environ.get(SHARED_SERVER_ENV, "")
        joined = join_step_server()
        assert SHARED_SERVER_ENV not in os.environ  # not passed on to the steps
        if sys.argv[1:] == ["kill"]:  # the shared server dies after this process joined it
            import time
            from racedayai_bayes.lib.processes import alive
            server = int(shared.split(":")[0])
            os.kill(server, signal.SIGKILL)
            while alive(server):  # the kill is delivered asynchronously
                time.sleep(0.01)
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([])
        queue = ctx.Queue()
        step = ctx.Process(target=parent_pid, args=(queue,))
        step.start()
        forked_from = queue.get(timeout=60)
        step.join(60)
        print(joined, forked_from, step.exitcode)
""")


def _run(mode: str, folder, *child_args: str) -> list[str]:
    child = folder / "child.py"  # a file: the forked process unpickles its target from it
    child.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != SHARED_SERVER_ENV}
    out = subprocess.run([sys.executable, "-c", PARENT, mode, " ".join([str(child), *child_args])], capture_output=True,
                         text=True, env=env, timeout=120, check=True)
    return out.stdout.split()


def test_a_later_process_forks_its_steps_from_the_server_its_parent_shared(tmp_path):
    server, joined, forked_from, exitcode, returncode, *err = _run("shared", tmp_path)
    assert (joined, exitcode, returncode) == ("True", "0", "0"), err
    assert forked_from == server  # no second server: the step is a child of the parent's


def test_without_a_shared_server_a_process_starts_its_own(tmp_path):
    server, joined, forked_from, exitcode, returncode, *err = _run("unshared", tmp_path)
    assert (joined, exitcode, returncode) == ("False", "0", "0"), err
    assert forked_from != server


def test_a_shared_server_that_dies_later_is_replaced_by_one_of_the_processs_own(tmp_path):
    server, joined, forked_from, exitcode, returncode, *err = _run("shared", tmp_path, "kill")
    assert (joined, exitcode, returncode) == ("True", "0", "0"), err
    assert forked_from != server  # the step still ran, from a server the child started


# A parent that starts a server with nothing to preload, then forks: the fork adopts the
# server and starts a step; it prints the server's pid, what the step says its parent is, and
# the step's exit code. With "kill", the server dies after the fork adopted it.
FORKED = textwrap.dedent("""
    import multiprocessing, os, signal, sys, time
    from multiprocessing import forkserver
    from racedayai_bayes.lib.processes import alive
    from racedayai_bayes.step_server import adopt_step_server

    def parent_pid(queue):
        queue.put(os.getppid())

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([])
        forkserver.ensure_running()
        server = forkserver._forkserver._forkserver_pid
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                adopted = adopt_step_server()
                if sys.argv[1:] == ["kill"]:
                    os.kill(server, signal.SIGKILL)
                    while alive(server):
                        time.sleep(0.01)
                queue = ctx.Queue()
                step = ctx.Process(target=parent_pid, args=(queue,))
                step.start()
                forked_from = queue.get(timeout=60)
                step.join(60)
                print(server, adopted, forked_from, step.exitcode, flush=True)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
""")


def _run_forked(folder, *args: str) -> list[str]:
    script = folder / "forked.py"  # a file: the step unpickles its target from it
    script.write_text(FORKED)
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != SHARED_SERVER_ENV})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


def test_a_forked_process_forks_its_steps_from_the_server_it_inherited(tmp_path):
    """The refit command forks its later distance's process (cli._ForkedLater): that process
    adopts the command's server. Without adopting it, the standard library waits on the
    server as on a child of its own, and it is not one (ChildProcessError)."""
    server, adopted, forked_from, exitcode, child_code = _run_forked(tmp_path)
    assert (adopted, exitcode, child_code) == ("True", "0", "0")
    assert forked_from == server


def test_a_forked_process_whose_inherited_server_dies_starts_its_own(tmp_path):
    server, adopted, forked_from, exitcode, child_code = _run_forked(tmp_path, "kill")
    assert (adopted, exitcode, child_code) == ("True", "0", "0")
    assert forked_from != server


def test_a_process_without_a_server_adopts_none(monkeypatch):
    from multiprocessing import forkserver

    from racedayai_bayes.step_server import adopt_step_server

    monkeypatch.setattr(forkserver._forkserver, "_forkserver_pid", None)
    assert adopt_step_server() is False


def test_a_server_that_is_gone_is_not_joined(monkeypatch, tmp_path):
    from racedayai_bayes.step_server import join_step_server

    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    os.close(write_fd)  # a descriptor that is not open
    monkeypatch.setenv(SHARED_SERVER_ENV, f"{os.getpid()}:{write_fd}:{tmp_path / 'listener'}")
    assert join_step_server() is False  # no socket
    assert SHARED_SERVER_ENV not in os.environ
    (tmp_path / "listener").touch()
    monkeypatch.setenv(SHARED_SERVER_ENV, f"{os.getpid()}:{write_fd}:{tmp_path / 'listener'}")
    assert join_step_server() is False  # its pipe is not open
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    read_fd, write_fd = os.pipe()
    try:
        monkeypatch.setenv(SHARED_SERVER_ENV, f"{dead.stdout.strip()}:{write_fd}:{tmp_path / 'listener'}")
        assert join_step_server() is False  # its server process has ended
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_the_warm_up_opens_the_instance_and_writes_no_run(tmp_path):
    """The server's warm-up reads the instance (so steps inherit SQLAlchemy's built state),
    adds nothing to it, and is skipped without DAGSTER_HOME, as any failure is."""
    script = textwrap.dedent("""
        import dagster as dg
        from racedayai_bayes.step_warmup import warm_instance
        print(warm_instance(), len(dg.DagsterInstance.get().get_run_records()))
    """)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "0"]
    env.pop("DAGSTER_HOME")
    script = "from racedayai_bayes.step_warmup import warm_instance; print(warm_instance())"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False"]
    (tmp_path / "dagster.yaml").write_text("run_storage: {module: no.such.module, class: Nope}\n")
    env["DAGSTER_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False"]


def test_only_the_servers_import_warms_the_instance(tmp_path):
    """Imported by the step server's preload, the module opens the instance (its databases
    appear); imported anywhere else, it only defines its functions."""
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    script = "import racedayai_bayes.step_warmup as w; print(w.in_step_server())"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False"] and not (tmp_path / "history").exists()
    script = textwrap.dedent("""
        import multiprocessing, os
        if __name__ == "__main__":
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["racedayai_bayes.step_warmup"])
            step = ctx.Process(target=os.getpid)
            step.start()
            step.join(120)
            print(step.exitcode)
    """)
    path = tmp_path / "server.py"
    path.write_text(script)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300, check=True)
    assert out.stdout.split() == ["0"]
    assert (tmp_path / "history" / "runs.db").exists()  # the server's preload opened the instance


def test_alembic_revision_scripts_are_read_once_per_process_and_every_check_still_sees_the_head(tmp_path):
    """After share_alembic_revision_maps, a second instance's storages check their databases'
    revisions without executing Dagster's revision scripts again, and each check still finds
    the database at the head. Another script folder, or other options, keep a map of their own."""
    script = textwrap.dedent("""
        import sys

        import dagster as dg
        from alembic.script import Script, ScriptDirectory
        from racedayai_bayes.step_warmup import share_alembic_revision_maps

        loaded = []
        original = Script._from_path.__func__
        Script._from_path = classmethod(lambda cls, *a, **k: loaded.append(1) or original(cls, *a, **k))
        print(share_alembic_revision_maps(), share_alembic_revision_maps())
        versions = []
        for _ in range(2):
            instance = dg.DagsterInstance.get()
            instance.get_run_records()
            versions += [instance.run_storage.alembic_version(), instance.event_log_storage.alembic_version(),
                         instance.schedule_storage.alembic_version()]
            print(len(loaded) > 0, end=" ")
            loaded.clear()
            instance.dispose()
        print(all(db == head and head for db, head in versions))
        one = ScriptDirectory(dir=sys.argv[1])
        print(ScriptDirectory(dir=sys.argv[1]).revision_map is one.revision_map,
              ScriptDirectory(dir=sys.argv[2]).revision_map is one.revision_map,
              ScriptDirectory(dir=sys.argv[1], sourceless=True).revision_map is one.revision_map)
        # an Alembic whose directory lacks an attribute the key reads: it keeps its own map
        ScriptDirectory.sourceless = property(lambda self: 1 / 0, lambda self, value: None)
        print(ScriptDirectory(dir=sys.argv[1]).revision_map is one.revision_map)
    """)
    for folder in ("a", "b"):
        (tmp_path / folder / "versions").mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a"), str(tmp_path / "b")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # the first instance reads the scripts, the second none; every revision is the head; a
    # folder's map is shared only by directories of the same folder and options
    assert out.stdout.split() == ["True", "True", "True", "False", "True", "True", "False", "False", "False"]


def test_the_warm_up_resolves_the_refit_job_as_the_commands_steps_do(monkeypatch):
    """The server resolves the command's reconstructable refit job once (its steps, forked
    afterwards, find it resolved); a failure only returns False."""
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableJob

    from racedayai_bayes import step_warmup
    from racedayai_bayes.definitions import refit_job_def

    assert step_warmup.warm_refit_job() is True
    hits = ReconstructableJob.get_definition.cache_info().hits
    job = dg.reconstructable(refit_job_def).get_definition()  # what a step of the command asks for
    assert ReconstructableJob.get_definition.cache_info().hits == hits + 1 and job.name == "refit"

    def broken(_fn):
        raise RuntimeError("no code location")

    monkeypatch.setattr(dg, "reconstructable", broken)
    assert step_warmup.warm_refit_job() is False


def test_the_step_server_keeps_freed_memory_and_a_setting_of_ones_own_wins(tmp_path):
    """start_step_server starts the server with STEP_MALLOC_ENV (read by glibc as it starts),
    and leaves this process's own environment as it was; a value already set is kept."""
    from racedayai_bayes.step_server import STEP_MALLOC_ENV

    script = textwrap.dedent("""
        import json, os, sys
        from multiprocessing import forkserver
        from racedayai_bayes import step_server

        step_server.STEP_PRELOAD[:] = []  # nothing to import: only the environment matters here
        step_server.start_step_server()
        import time
        pid = forkserver._forkserver._forkserver_pid
        for _ in range(200):  # the server is spawned, not yet necessarily exec'd: wait for it
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"multiprocessing.forkserver import main" in fh.read():
                    break
            time.sleep(0.05)
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = dict(item.split(b"=", 1) for item in fh.read().split(b"\\0") if b"=" in item)
        print(json.dumps([{k: env.get(k.encode(), b"").decode() for k in step_server.STEP_MALLOC_ENV},
                          {k: os.environ.get(k) for k in step_server.STEP_MALLOC_ENV}]))
    """)
    env = {k: v for k, v in os.environ.items() if k not in STEP_MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    server, own = json.loads(out.stdout.strip().splitlines()[-1])
    assert server == STEP_MALLOC_ENV, out.stderr
    assert own == {k: None for k in STEP_MALLOC_ENV}  # the command's own environment is as it was
    env["MALLOC_MMAP_MAX_"] = "7"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    server, own = json.loads(out.stdout.strip().splitlines()[-1])
    assert server["MALLOC_MMAP_MAX_"] == "7" and own["MALLOC_MMAP_MAX_"] == "7"


def test_the_servers_exit_flushes_logging_and_stdout_and_ends_with_0(tmp_path):
    log = tmp_path / "server.log"
    script = textwrap.dedent(f"""
        import atexit, logging, logging.handlers
        from racedayai_bayes.step_warmup import end_without_teardown
        buffered = logging.handlers.MemoryHandler(100, target=logging.FileHandler({str(log)!r}))
        logging.getLogger().addHandler(buffered)
        logging.getLogger().warning("a record still in the buffer")
        atexit.register(end_without_teardown)
        print("no newline, still buffered", end="")
        raise SystemExit  # as the server's loop ends once the command has gone
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "no newline, still buffered"
    assert log.read_text().strip() == "a record still in the buffer"


GC_STATE = """
    def state(queue):
        import gc
        import gc_probe  # preloaded by the server: the value it recorded there
        queue.put((gc.isenabled(), gc.get_freeze_count() > 0, gc_probe.ENABLED_AT_IMPORT))
"""
GC_PARENT = """
    def parent():
        import gc
        return gc.isenabled(), gc.get_freeze_count()
"""


def test_the_servers_preload_is_frozen_and_its_steps_collect(tmp_path):
    """The step server's preload runs without the garbage collector (step_gc, first: a module
    preloaded after it finds the collector off) and ends frozen (step_warmup, last): a step
    forked from it has the collector on and the preload's objects in the permanent generation.
    Without step_warmup the step still collects (nothing frozen); without step_gc the preload
    runs with the collector on and is still frozen. The process that starts the server is not
    touched."""
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "gc_probe.py").write_text("import gc\nENABLED_AT_IMPORT = gc.isenabled()\n")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    gc_first, warmup = "racedayai_bayes.step_gc", "racedayai_bayes.step_warmup"
    cases = (([gc_first, "gc_probe", "json", warmup], ["True", "True", "False", "True", "0"]),
             ([gc_first, "gc_probe", "json"], ["True", "False", "False", "True", "0"]),
             (["gc_probe", "json", warmup], ["True", "True", "True", "True", "0"]))
    for preload, expected in cases:
        assert run_in_step_process(tmp_path, GC_STATE, GC_PARENT, preload, env) == expected, preload


def test_importing_the_collector_module_elsewhere_changes_nothing():
    script = "import gc, racedayai_bayes.step_gc; print(gc.isenabled(), gc.get_freeze_count())"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "0"]
