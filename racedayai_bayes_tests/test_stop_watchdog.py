"""The stop watchdog: after a Ctrl-C and a grace period, a step process that has not stopped
has its stacks written to the log and is killed (racedayai_bayes/stop_watchdog.py)."""

import multiprocessing
import os
import signal
import time

from racedayai_bayes.stop_watchdog import StopWatchdog, enable_stack_dumps


def _stubborn_step(log_path: str, ready) -> None:
    """A step process that ignores interrupts and never ends; its fd 2 is ``log_path``."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 2)
    enable_stack_dumps()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ready.set()
    while True:
        time.sleep(0.05)


def _wait_for(predicate, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_step_that_ignores_the_interrupt_is_dumped_then_killed(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    log = tmp_path / "refit.log"
    step = ctx.Process(target=_stubborn_step, args=(str(log), ready), name="stubborn")
    killed_reported = []
    previous = signal.signal(signal.SIGINT, lambda *_: None)  # as Dagster captures it during a run
    try:
        def this_step():  # only the test's own step: nothing else the test process may have started
            return [(step.pid, "stubborn")] if step.pid is not None and step.is_alive() else []

        with StopWatchdog(grace_s=0.5, on_kill=killed_reported.append, processes=this_step) as dog:
            step.start()
            assert ready.wait(60)
            time.sleep(1.0)
            assert step.is_alive() and not dog.interrupted and not dog.killed  # nothing before a Ctrl-C
            t0 = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)
            assert _wait_for(lambda: dog.killed, 30)
            took = time.monotonic() - t0
        step.join(10)
    finally:
        signal.signal(signal.SIGINT, previous)
        if step.is_alive():
            step.kill()
    assert dog.interrupted
    assert step.exitcode == -signal.SIGKILL
    assert killed_reported == [[step.pid]] and dog.killed == [step.pid]
    assert 0.5 <= took < 10
    text = log.read_text()
    assert "in _stubborn_step" in text  # the stack of the step, written before the kill


def test_no_interrupt_no_kill_and_the_wakeup_fd_is_restored():
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    seen = []
    with StopWatchdog(grace_s=0.1, processes=lambda: seen.append(1) or [(999_999_999, "none")]) as dog:
        time.sleep(0.5)
    assert not dog.interrupted and not dog.killed and not seen
    assert signal.set_wakeup_fd(before) == before  # the previous wakeup fd is back


def test_kill_stragglers_skips_processes_that_ended():
    dog = StopWatchdog(processes=lambda: [(2**22 + 12345, "gone")])
    assert dog.kill_stragglers() == []


def test_a_process_that_ends_between_the_dump_and_the_kill_is_not_signalled_again():
    listings = iter([[(os.getpid(), "me")]] * 3 + [[]])  # read before the continue, the dump and the kill: gone at the kill
    dog = StopWatchdog(processes=lambda: next(listings))
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        assert dog.kill_stragglers() == [] and dog.killed == []  # this very process: never killed
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_stopped_step_is_continued_so_that_it_writes_its_stacks_before_the_kill(tmp_path):
    """A step process stopped by SIGSTOP (or Ctrl-Z) can neither write its stacks nor answer
    Dagster's stop request; the watchdog continues it first (then dumps and kills it)."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    log = tmp_path / "refit.log"
    step = ctx.Process(target=_stubborn_step, args=(str(log), ready), name="stopped")
    step.start()
    try:
        assert ready.wait(60)
        os.kill(step.pid, signal.SIGSTOP)
        dog = StopWatchdog(grace_s=0.0, processes=lambda: [(step.pid, "stopped")] if step.is_alive() else [])
        assert dog.kill_stragglers() == [step.pid]
        step.join(10)
    finally:
        if step.is_alive():
            step.kill()
    assert step.exitcode == -signal.SIGKILL
    assert "in _stubborn_step" in log.read_text()  # written after the SIGCONT, before the kill


REQUESTER = '''
import multiprocessing, os, sys, time


def step(path):
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(600)


if __name__ == "__main__":
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["racedayai_bayes_tests.orphan_preload"])
    ctx.Process(target=step, args=(sys.argv[1],)).start()
    time.sleep(600)
'''


def test_a_step_process_ends_itself_once_the_run_process_that_started_it_is_killed(tmp_path):
    """A run's process killed with SIGKILL left its step processes (forked from the step
    server) running or blocked for ever; each now ends within ORPHAN_POLL_S of its going, and
    one whose starter lives goes on."""
    import subprocess
    import sys

    from racedayai_bayes.lib.processes import alive
    from racedayai_bayes.stop_watchdog import ORPHAN_POLL_S
    from racedayai_bayes_tests.conftest import REPO

    script, pid_file = tmp_path / "requester.py", tmp_path / "step.pid"
    script.write_text(REQUESTER)
    requester = subprocess.Popen([sys.executable, str(script), str(pid_file)], cwd=REPO,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        step = int(pid_file.read_text())
        time.sleep(2 * ORPHAN_POLL_S)
        assert alive(step)  # its run lives: it goes on
        requester.kill()
        requester.wait()
        deadline = time.monotonic() + 3 * ORPHAN_POLL_S
        while alive(step) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(step), "the step process outlived the run process that started it"
    finally:
        requester.kill()
        if pid_file.exists() and pid_file.read_text() and alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
