import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from racedayai_bayes.lib import cpu_slots

HOLD = """
import sys, time
from racedayai_bayes.lib import cpu_slots
slot = cpu_slots.acquire(sys.argv[1], int(sys.argv[2]))
print(slot.index, flush=True)
time.sleep(600)
"""


def _holder(folder, slots) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(slots)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() in {str(i) for i in range(slots)}
    return proc


def test_at_most_n_holders_and_a_killed_holder_frees_its_slot(tmp_path):
    first, second = _holder(tmp_path, 2), _holder(tmp_path, 2)
    try:
        waited = []
        got: list[cpu_slots.Slot] = []
        thread = threading.Thread(target=lambda: got.append(
            cpu_slots.acquire(tmp_path, 2, on_wait=lambda: waited.append(True), poll_s=0.02)))
        thread.start()
        time.sleep(0.5)
        assert waited == [True] and not got  # both slots are held: this one waits
        os.kill(first.pid, signal.SIGKILL)  # no release: the kernel drops the dead process's lock
        thread.join(timeout=10)
        assert got and got[0].waited_s >= 0.4
        got[0].release()
        again = cpu_slots.acquire(tmp_path, 2)  # released: free at once
        assert again.waited_s < 0.1
        again.release()
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_one_process_takes_distinct_slots_and_rejects_no_slots(tmp_path):
    a, b = cpu_slots.acquire(tmp_path, 2), cpu_slots.acquire(tmp_path, 2)
    assert {a.index, b.index} == {0, 1}
    a.release()
    a.release()  # twice is harmless
    b.release()
    with pytest.raises(ValueError, match="at least 1"):
        cpu_slots.acquire(tmp_path, 0)


def test_try_acquire_never_waits(tmp_path):
    held = cpu_slots.try_acquire(tmp_path, 1)
    assert held is not None and held.index == 0
    t0 = time.monotonic()
    assert cpu_slots.try_acquire(tmp_path, 1) is None
    assert time.monotonic() - t0 < 1.0
    held.release()
    again = cpu_slots.try_acquire(tmp_path, 1)
    assert again is not None
    again.release()
