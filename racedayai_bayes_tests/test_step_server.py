"""The step server: a later distance's process forks its steps from the first process's
server, and the server warms the instance once for every step."""

import os
import subprocess
import sys
import textwrap

from racedayai_bayes.step_server import SHARED_SERVER_ENV

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
    out = subprocess.run([sys.executable, sys.argv[2]], env={**os.environ, **env}, pass_fds=(fd,),
                         capture_output=True, text=True)
    print(forkserver._forkserver._forkserver_pid, out.stdout.strip(), out.returncode, out.stderr[-2000:])
""")

CHILD = textwrap.dedent("""
    import multiprocessing, os
    from racedayai_bayes.step_server import SHARED_SERVER_ENV, join_step_server

    def parent_pid(queue):
        queue.put(os.getppid())

    if __name__ == "__main__":
        joined = join_step_server()
        assert SHARED_SERVER_ENV not in os.environ  # not passed on to the steps
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([])
        queue = ctx.Queue()
        step = ctx.Process(target=parent_pid, args=(queue,))
        step.start()
        forked_from = queue.get(timeout=60)
        step.join(60)
        print(joined, forked_from, step.exitcode)
""")


def _run(mode: str, folder) -> list[str]:
    child = folder / "child.py"  # a file: the forked process unpickles its target from it
    child.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != SHARED_SERVER_ENV}
    out = subprocess.run([sys.executable, "-c", PARENT, mode, str(child)], capture_output=True, text=True, env=env,
                         timeout=120, check=True)
    return out.stdout.split()


def test_a_later_process_forks_its_steps_from_the_server_its_parent_shared(tmp_path):
    server, joined, forked_from, exitcode, returncode, *err = _run("shared", tmp_path)
    assert (joined, exitcode, returncode) == ("True", "0", "0"), err
    assert forked_from == server  # no second server: the step is a child of the parent's


def test_without_a_shared_server_a_process_starts_its_own(tmp_path):
    server, joined, forked_from, exitcode, returncode, *err = _run("unshared", tmp_path)
    assert (joined, exitcode, returncode) == ("False", "0", "0"), err
    assert forked_from != server


def test_a_server_that_is_gone_is_not_joined(monkeypatch, tmp_path):
    from racedayai_bayes.step_server import join_step_server

    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    os.close(write_fd)  # a descriptor that is not open
    monkeypatch.setenv(SHARED_SERVER_ENV, f"{write_fd}:{tmp_path / 'listener'}")
    assert join_step_server() is False
    assert SHARED_SERVER_ENV not in os.environ


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


def test_the_warm_up_draws_each_kind_of_harness_plot():
    from racedayai_bayes.step_warmup import warm_plots

    assert warm_plots() is True
