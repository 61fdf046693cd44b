"""The page size of a step process's fresh memory, chosen from what the kernel says it has free.

On a virtual machine whose kernel reports free memory to its host (Linux's free page
reporting through a virtio balloon, as this Firecracker VM does: ``/sys/module/page_reporting``,
:func:`reporting_active`), every free block of
``page_reporting_order`` or larger (order 9: 2 MB on x86-64) is handed back to the host,
which drops its contents. A process that touches such memory again makes the host fault it
back in, at a cost far above the guest's own page fault: 4.6-9.2 s per GB here on 2026-12-07
~15:50, in 2 MB pages or 4 KB. Free blocks of lower order are never reported: the guest still
has them, and a 4 KB first touch of one cost 0.4-0.6 s per GB in the same minutes (the kernel
hands out 4 KB pages from its lowest free orders first). Once those were used up (a process
holding 1.5 GB of them), 4 KB first touches cost 7.7 s per GB too.

A transparent huge page (2 MB) can only come from a block of order 9 or more, so it is always
memory the host took back, unless another process freed it moments before. Small pages come
from the unreported low orders while there are enough of them. So a step process that is
about to make its data asks for small pages when the unreported free memory is ample, and
for huge pages otherwise: :func:`choose`, applied with ``prctl(PR_SET_THP_DISABLE)``, which
overrides the ``madvise`` of glibc's heap (``glibc.malloc.hugetlb=1``, step_server) and of
NumPy's large arrays for this process only. Huge pages are the better choice where the host
backs the guest with huge pages of its own and the low orders are short (2026-12-03: 0.17-0.25
s per GB in 2 MB pages, 5.6-7.9 s in 4 KB pages), which is why the choice is made per process
from the kernel's counts and not once for all.

Where nothing takes free memory back (bare metal, most machines), the choice is always huge
pages where asked: what the step server's allocator settings give.

Plain Python, no Dagster: the step server calls :func:`apply_step_pages` in every process it
forks, and the CPU-slot resource :func:`reapply_step_pages` once such a step holds its slot (it
may have waited); a step run in the calling process (a test's) is left as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from racedayai_bayes.lib.processes import prctl

BUDDYINFO = Path("/proc/buddyinfo")
REPORTING_ORDER = Path("/sys/module/page_reporting/parameters/page_reporting_order")
# the virtio balloon devices; a device reports free pages when its negotiated features (one
# '0' or '1' per bit) have VIRTIO_BALLOON_F_REPORTING, bit 5
BALLOONS = Path("/sys/bus/virtio/drivers/virtio_balloon")
BALLOON_F_REPORTING = 5
# the largest order a real reporting order can be (x86-64's MAX_PAGE_ORDER is 10): a kernel
# built with page reporting but with no device using it shows a placeholder there instead
# (MAX_ORDER, 11, in Linux 5.14-6.2; -1 read as 4294967295 since)
MAX_REPORTING_ORDER = 10

# RACEDAYAI_STEP_PAGES: auto (the default), 4kb (always small pages), 2mb (as the allocator
# asks: huge pages for the heap and large arrays)
PAGES_ENV = "RACEDAYAI_STEP_PAGES"
SETTINGS = ("auto", "4kb", "2mb")

# Small pages when at least this much free memory is of orders the kernel does not report.
# A full-scale refit starts with about 4 GB of it here and ends with 1.3-2 GB (the page cache
# of what it writes takes some); the model frame's step grows by about 2 GB, the 70.3 forecast
# posterior's by 1.5 GB, most others by a few hundred MB. With 2,048 MB every step after the
# model frame found less and took huge pages (2026-12-07 ~16:00: the refit's system CPU 28-34 s
# against 33 s with huge pages everywhere); with 1,024 MB nearly all took small pages (19-25 s,
# as with small pages everywhere, 18-21 s). A step that outgrows the pool gets its remaining
# small pages from memory the host took back: as dear as huge pages in an hour like that one,
# dearer where the host backs the guest with huge pages (2026-12-03).
SMALL_PAGE_POOL_MB = 1024

PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42


@dataclass(frozen=True)
class PageChoice:
    small: bool  # True: 4 KB pages only (THP disabled for this process)
    reason: str

    def describe(self) -> str:
        return f"{'4 KB' if self.small else '2 MB where asked'} pages: {self.reason}"


def unreported_free_mb(buddyinfo: str, reporting_order: int, page_kb: int = 4) -> float:
    """Free memory (MB) in blocks of orders below ``reporting_order``, from the text of
    ``/proc/buddyinfo`` (one line per zone: ``Node 0, zone Normal`` then the count of free
    blocks of order 0, 1, 2, ...). A line that does not read so is an error."""
    total_kb = 0
    for line in buddyinfo.splitlines():
        if not line.strip():
            continue
        head, sep, counts = line.partition("zone")
        fields = counts.split()
        if not sep or len(fields) < 2:
            raise ValueError(f"not a /proc/buddyinfo line: {line!r}")
        for order, count in enumerate(fields[1:reporting_order + 1]):
            total_kb += int(count) * page_kb << order
    return total_kb / 1024


def setting() -> str:
    """``$RACEDAYAI_STEP_PAGES``, lower case; ``auto`` when unset or empty. An unknown value
    is a ValueError that names the variable and its values."""
    value = (os.environ.get(PAGES_ENV) or "auto").strip().lower()
    if value not in SETTINGS:
        raise ValueError(f"{PAGES_ENV}={os.environ.get(PAGES_ENV)!r}: expected one of {', '.join(SETTINGS)}")
    return value


def choose(setting_: str, reporting_order: int | None, unreported_mb: float | None,
           pool_mb: float = SMALL_PAGE_POOL_MB) -> PageChoice:
    """The page size for a process about to make its data (module docstring)."""
    if setting_ == "4kb":
        return PageChoice(True, f"{PAGES_ENV}=4kb")
    if setting_ == "2mb":
        return PageChoice(False, f"{PAGES_ENV}=2mb")
    if reporting_order is None:
        return PageChoice(False, "nothing takes this machine's free memory back (no free page reporting)")
    if unreported_mb is None:
        return PageChoice(False, "the kernel's free block counts could not be read")
    enough = unreported_mb >= pool_mb
    return PageChoice(enough, f"{unreported_mb:,.0f} MB of free memory the host has not taken back "
                              f"({'at least' if enough else 'under'} {pool_mb:,.0f} MB)")


def reporting_active(balloons: Path | None = None) -> bool:
    """Whether a device takes this kernel's free pages back to a host: a virtio balloon that
    negotiated free page reporting (the kernel's page reporting module exists wherever it was
    built in, reporter or not)."""
    try:
        for features in (balloons or BALLOONS).glob("virtio*/features"):
            bits = features.read_text().strip()
            if len(bits) > BALLOON_F_REPORTING and bits[BALLOON_F_REPORTING] == "1":
                return True
    except OSError:
        pass
    return False


def unreported_now() -> tuple[int | None, float | None]:
    """The order from which the kernel reports free memory to a host, None where nothing
    takes it (:func:`reporting_active`) or the order is not a real one; and the free memory
    (MB) below that order now, None if it could not be read."""
    try:
        order = int(REPORTING_ORDER.read_text().strip())
    except (OSError, ValueError):
        return None, None
    if not (0 < order <= MAX_REPORTING_ORDER) or not reporting_active():
        return None, None
    try:
        return order, unreported_free_mb(BUDDYINFO.read_text(), order, os.sysconf("SC_PAGE_SIZE") // 1024)
    except (OSError, ValueError):
        return order, None


def set_huge_pages(allowed: bool) -> bool:
    """Allow or refuse transparent huge pages for the rest of this process's page faults
    (``prctl(PR_SET_THP_DISABLE)``; pages already faulted stay as they are; inherited by
    forked children and kept across exec). False where the call is unavailable (not Linux)
    or refused."""
    return prctl(PR_SET_THP_DISABLE, 0 if allowed else 1) == 0


def huge_pages_allowed() -> bool | None:
    """Whether this process may get transparent huge pages (``PR_GET_THP_DISABLE``), or None
    where that cannot be asked."""
    result = prctl(PR_GET_THP_DISABLE)
    return None if result is None else result == 0


_choice: PageChoice | None = None  # this process's latest choice (apply_step_pages)


def last_choice() -> PageChoice | None:
    """This process's latest choice, None if it made none (not a step server's step)."""
    return _choice


def apply_step_pages() -> PageChoice | None:
    """Choose this process's page size now and apply it; the choice, or None if it could not
    be applied. Never raises: a step must not fail over its pages (an unknown
    ``$RACEDAYAI_STEP_PAGES`` counts as ``auto`` here; ``refit`` refuses it before any run)."""
    global _choice
    try:
        try:
            value = setting()
        except ValueError:
            value = "auto"
        order, unreported = unreported_now() if value == "auto" else (None, None)
        choice = choose(value, order, unreported)
        if not set_huge_pages(not choice.small):
            return None
    except Exception:  # noqa: BLE001 - whatever the platform lacks, the step goes on with its pages as they are
        return None
    _choice = choice
    return choice


def reapply_step_pages() -> PageChoice | None:
    """In a process that chose its pages as it started (a step the step server forked,
    step_pages.py): choose again now, and return the choice; elsewhere (a step run in the
    calling process, a test's) nothing is changed and None is returned."""
    return apply_step_pages() if _choice is not None else None


def choice_from_log(message: str) -> str | None:
    """'4 KB (3,210 MB)' from a log line that :meth:`PageChoice.describe` wrote, '2 MB
    (870 MB)' where huge pages were left as asked, without the brackets where no free memory
    was counted; None for any other line (the bench's per-step column)."""
    import re

    m = re.match(r"(4 KB|2 MB where asked) pages: (?:([\d,]+) MB of free memory)?", message)
    if not m:
        return None
    return m.group(1)[:4] + (f" ({m.group(2)} MB)" if m.group(2) else "")
