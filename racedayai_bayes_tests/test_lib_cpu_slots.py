import contextlib
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


def test_waiters_are_served_by_rank_then_in_the_order_they_came(tmp_path):
    """A freed slot goes to the first live ticket of the queue, not to whichever waiter polls
    first: lower rank first, then the earlier waiter; a free slot is taken at once only
    while no one waits."""
    held = cpu_slots.acquire(tmp_path, 1)
    served: list[str] = []
    lock = threading.Lock()

    def wait(name, rank):
        slot = cpu_slots.acquire(tmp_path, 1, rank=rank, poll_s=0.01)
        with lock:
            served.append(name)
        time.sleep(0.05)
        slot.release()

    threads = []
    for queued, (name, rank) in enumerate((("late-rank", 5), ("first", 1), ("second", 1)), start=1):
        threads.append(threading.Thread(target=wait, args=(name, rank)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(cpu_slots._live_tickets(tmp_path / cpu_slots.QUEUE)) < queued and time.monotonic() < deadline:
            time.sleep(0.01)  # each waits in the queue before the next comes
    assert served == [] and len(os.listdir(tmp_path / cpu_slots.QUEUE)) == 3
    assert cpu_slots.try_acquire(tmp_path, 2, unless_queued=True) is None  # a second core is not taken from waiters
    held.release()
    for thread in threads:
        thread.join(timeout=10)
    assert served == ["first", "second", "late-rank"]
    assert os.listdir(tmp_path / cpu_slots.QUEUE) == []  # every ticket removed as its waiter was served


WAIT = """
import sys
from racedayai_bayes.lib import cpu_slots
print("waiting", flush=True)
cpu_slots.acquire(sys.argv[1], 1, rank=0, on_wait=lambda: print("queued", flush=True))
"""


def test_a_dead_waiters_ticket_does_not_hold_the_queue(tmp_path):
    holder = _holder(tmp_path, 1)
    waiter = subprocess.Popen([sys.executable, "-c", WAIT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout.readline().strip() == "waiting"
        assert waiter.stdout.readline().strip() == "queued"
        waiter.kill()  # dies in the queue: its ticket stays behind, unlocked
        waiter.wait()
        assert len(os.listdir(tmp_path / cpu_slots.QUEUE)) == 1
        holder.kill()
        holder.wait()
        slot = cpu_slots.acquire(tmp_path, 1, rank=9, poll_s=0.01)  # a later, lower-priority waiter
        assert slot.waited_s < 5
        slot.release()
        assert os.listdir(tmp_path / cpu_slots.QUEUE) == []
    finally:
        for proc in (holder, waiter):
            proc.kill()
            proc.wait()


def test_a_stopped_waiter_keeps_its_ticket_but_does_not_hold_the_queue(tmp_path):
    """A waiter stopped by SIGSTOP (or Ctrl-Z) is passed over while it is stopped; it is still
    served once it runs again."""
    holder = _holder(tmp_path, 1)
    waiter = subprocess.Popen([sys.executable, "-c", WAIT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout.readline().strip() == "waiting"
        assert waiter.stdout.readline().strip() == "queued"
        os.kill(waiter.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not cpu_slots.stopped(waiter.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        holder.kill()
        holder.wait()
        # rank 9 queues behind the stopped waiter's rank 0, and is served all the same (in a
        # thread: were the stopped waiter to hold the queue, this would wait for ever)
        got = []
        later = threading.Thread(target=lambda: got.append(cpu_slots.acquire(tmp_path, 1, rank=9, poll_s=0.01)), daemon=True)
        later.start()
        later.join(30)
        assert got, "a stopped waiter held the queue"
        slot = got[0]
        assert len(os.listdir(tmp_path / cpu_slots.QUEUE)) == 1  # the stopped waiter's ticket stays
        slot.release()
        os.kill(waiter.pid, signal.SIGCONT)
        assert waiter.wait(timeout=30) == 0  # served in its turn once it runs again
        assert os.listdir(tmp_path / cpu_slots.QUEUE) == []
    finally:
        for proc in (holder, waiter):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_a_temporary_ticket_left_by_a_dead_waiter_is_removed_once_stale(tmp_path):
    queue = tmp_path / cpu_slots.QUEUE
    queue.mkdir()
    stale, fresh, held = queue / ".0000-1-1-1.ticket.new", queue / ".0000-2-1-1.ticket.new", queue / ".0000-3-1-1.ticket.new"
    for path in (stale, fresh, held):
        path.touch()
    old = time.time() - 2 * cpu_slots.STALE_TEMP_S
    os.utime(stale, (old, old))
    os.utime(held, (old, old))
    fd = os.open(held, os.O_RDWR)
    lock = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
                             str(fd)], pass_fds=(fd,), stdout=subprocess.PIPE, text=True)
    try:
        assert lock.stdout.readline().strip() == "locked"  # a live waiter, about to rename it
        slot = cpu_slots.acquire(tmp_path, 1)
        slot.release()
        assert cpu_slots._live_tickets(queue) == []
        assert sorted(p.name for p in queue.iterdir()) == sorted([fresh.name, held.name])
    finally:
        lock.kill()
        lock.wait()
        os.close(fd)
