"""lib/processes.py: a process that has died is not running, even before it is reaped."""

import os
import signal
import subprocess
import sys
import time

from racedayai_bayes.lib.processes import alive


def test_a_running_process_is_alive_and_a_killed_unreaped_one_is_not():
    assert alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(child.pid) and time.monotonic() < deadline:  # a zombie until waited for
            time.sleep(0.01)
        assert not alive(child.pid)
        assert child.poll() is not None  # ... and it was a zombie: reaped only now
    finally:
        child.kill()
        child.wait()
    assert not alive(child.pid)
