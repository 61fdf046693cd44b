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


def test_a_low_priority_waiter_yields_a_freed_slot_to_a_normal_one(tmp_path):
    held = cpu_slots.acquire(tmp_path, 1)
    got: list[str] = []

    def wait(name, low):
        slot = cpu_slots.acquire(tmp_path, 1, poll_s=0.01, low_priority=low, grace_s=0.1)
        got.append(name)
        time.sleep(0.3)  # holds it a while, then frees it for the next
        slot.release()

    low = threading.Thread(target=wait, args=("low", True))
    low.start()
    time.sleep(0.2)  # the low-priority one waits first
    normal = threading.Thread(target=wait, args=("normal", False))
    normal.start()
    time.sleep(0.2)
    assert got == []
    held.release()
    normal.join(timeout=10)
    low.join(timeout=10)
    assert got == ["normal", "low"]  # the normal waiter took the slot first; the low one got it next


def test_a_low_priority_waiter_takes_a_free_slot_when_nobody_else_waits(tmp_path):
    slot = cpu_slots.acquire(tmp_path, 1, low_priority=True)
    assert slot.waited_s < 1.0
    slot.release()
    # a niced process is low-priority by default
    out = subprocess.run([sys.executable, "-c", "import os; os.nice(5); from racedayai_bayes.lib import cpu_slots; "
                          f"print(cpu_slots.acquire({str(tmp_path)!r}, 1).index)"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0", out.stderr


def test_a_waiting_low_priority_step_leaves_a_freed_slot_for_a_step_about_to_ask(tmp_path):
    """A run starts its next step only after its last one ended: that step comes up within
    the grace time and takes the slot its run just freed, though a low-priority step waited."""
    held = cpu_slots.acquire(tmp_path, 1)
    got: list[str] = []

    def low_waiter():
        slot = cpu_slots.acquire(tmp_path, 1, poll_s=0.01, low_priority=True, grace_s=1.0)
        got.append("low")
        slot.release()

    thread = threading.Thread(target=low_waiter)
    thread.start()
    time.sleep(0.2)
    held.release()
    time.sleep(0.3)  # the next step of the run that held it comes up
    nxt = cpu_slots.acquire(tmp_path, 1, low_priority=False)
    assert got == [] and nxt.waited_s < 0.5
    nxt.release()
    thread.join(timeout=10)
    assert got == ["low"]
