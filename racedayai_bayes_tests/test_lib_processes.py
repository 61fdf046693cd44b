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


FROZEN = """
import gc, sys
from racedayai_bayes.lib.processes import imports_frozen

before = gc.get_freeze_count()
with imports_frozen():
    off = not gc.isenabled()
    import json  # noqa: F401
print(off, gc.isenabled(), gc.get_freeze_count() > before)
gc.disable()
with imports_frozen():
    pass
print(gc.isenabled())  # frozen, and the collector on, as a step process needs it
gc.enable()
count = gc.get_freeze_count()
try:
    with imports_frozen():
        raise KeyError("x")
except KeyError:
    pass
print(gc.isenabled(), gc.get_freeze_count() == count)
"""


def test_imports_frozen_turns_the_collector_off_then_freezes_and_turns_it_on():
    """Inside the block the collector is off; after it, what was alive is frozen and the
    collector is on. An error in the block leaves nothing frozen and the collector as it was."""
    out = subprocess.run([sys.executable, "-c", FROZEN], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "True", "True", "True"]
