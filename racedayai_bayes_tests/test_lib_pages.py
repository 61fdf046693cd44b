"""The page size of a step process's fresh memory (lib/pages.py): the kernel's counts read,
the choice, and its application to a process and to the step server's step processes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from racedayai_bayes.lib import pages
from racedayai_bayes_tests.conftest import run_in_step_process

# /proc/buddyinfo of this VM on 2026-12-07 ~15:40 (free blocks of order 0, 1, ..., 10 per zone)
BUDDYINFO = """\
Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3
Node 0, zone    DMA32    558    448    338    213    120     71     42     25     12     15    729
Node 0, zone   Normal   4274   5176   6231   3454   3539   2548   2973   1194   1243    721   2865
"""


def _below(counts: list[int], order: int) -> float:
    return sum(n * 4 * 2**o for o, n in enumerate(counts[:order])) / 1024


def test_unreported_free_memory_sums_every_zones_blocks_below_the_reporting_order():
    dma32 = [558, 448, 338, 213, 120, 71, 42, 25, 12, 15, 729]
    normal = [4274, 5176, 6231, 3454, 3539, 2548, 2973, 1194, 1243, 721, 2865]
    dma = [0] * 8 + [1, 1, 3]
    assert pages.unreported_free_mb(BUDDYINFO, 9) == pytest.approx(_below(dma32, 9) + _below(normal, 9) + _below(dma, 9))
    assert pages.unreported_free_mb(BUDDYINFO, 9) == pytest.approx(3538288 / 1024)  # KB by hand: 3,455 MB
    # order 11: every free block (orders 0-10); order 0: none
    assert pages.unreported_free_mb(BUDDYINFO, 11) == pytest.approx(_below(dma32, 11) + _below(normal, 11) + _below(dma, 11))
    assert pages.unreported_free_mb(BUDDYINFO, 0) == 0
    assert pages.unreported_free_mb(BUDDYINFO, 9, page_kb=64) == pytest.approx(16 * pages.unreported_free_mb(BUDDYINFO, 9))
    assert pages.unreported_free_mb("", 9) == 0
    with pytest.raises(ValueError, match="not a /proc/buddyinfo line"):
        pages.unreported_free_mb("Node 0, DMA 1 2 3", 9)


def test_small_pages_only_where_the_guest_still_has_enough_free_memory():
    small = pages.choose("auto", 9, 3000.0, pool_mb=2048)
    assert small.small
    assert small.describe() == ("4 KB pages: 3,000 MB of free memory the host has not taken back "
                                "(at least 2,048 MB)")
    short = pages.choose("auto", 9, 2047.0, pool_mb=2048)
    assert not short.small and "under 2,048 MB" in short.describe()
    assert short.describe().startswith("2 MB where asked pages: 2,047 MB")
    # a kernel that reports no free memory to a host keeps what processes free: huge pages as asked
    assert not pages.choose("auto", None, None).small
    assert not pages.choose("auto", 9, None).small  # counts unreadable: as the allocator asks
    # the setting wins either way
    assert pages.choose("4kb", None, None).small and pages.choose("4kb", 9, 10.0).small
    assert not pages.choose("2mb", 9, 1e6).small


def test_the_setting_reads_the_environment_and_refuses_an_unknown_value(monkeypatch):
    monkeypatch.delenv(pages.PAGES_ENV, raising=False)
    assert pages.setting() == "auto"
    for value, expected in (("", "auto"), (" 4KB ", "4kb"), ("2mb", "2mb"), ("AUTO", "auto")):
        monkeypatch.setenv(pages.PAGES_ENV, value)
        assert pages.setting() == expected
    monkeypatch.setenv(pages.PAGES_ENV, "huge")
    with pytest.raises(ValueError, match=r"RACEDAYAI_STEP_PAGES='huge': expected one of auto, 4kb, 2mb"):
        pages.setting()


def test_only_a_real_order_with_a_device_that_reports_counts(tmp_path, monkeypatch):
    """The page reporting module exists wherever the kernel was built with it; only a virtio
    balloon that negotiated free page reporting (feature bit 5) takes the memory, and only an
    order up to 10 is a real one (11 and 4294967295 are placeholders of kernels without a reporter)."""
    order_file, buddyinfo, balloons = tmp_path / "order", tmp_path / "buddyinfo", tmp_path / "balloons"
    monkeypatch.setattr(pages, "REPORTING_ORDER", order_file)
    monkeypatch.setattr(pages, "BUDDYINFO", buddyinfo)
    monkeypatch.setattr(pages, "BALLOONS", balloons)
    buddyinfo.write_text(BUDDYINFO)
    assert pages.unreported_now() == (None, None)  # no order file: no reporting
    order_file.write_text("9\n")
    assert pages.unreported_now() == (None, None)  # no balloon
    (balloons / "virtio0").mkdir(parents=True)
    (balloons / "virtio0" / "features").write_text("0110000100" + "0" * 54 + "\n")  # bit 5 off
    assert not pages.reporting_active() and pages.unreported_now() == (None, None)
    (balloons / "virtio3").mkdir()
    (balloons / "virtio3" / "features").write_text("0110010100" + "0" * 54 + "\n")  # bit 5 on
    assert pages.reporting_active()
    order, mb = pages.unreported_now()
    assert order == 9 and mb == pytest.approx(pages.unreported_free_mb(BUDDYINFO, 9, os.sysconf("SC_PAGE_SIZE") // 1024))
    for placeholder in ("11", "4294967295", "0", "-1", "nine"):
        order_file.write_text(placeholder)
        assert pages.unreported_now() == (None, None), placeholder
    order_file.write_text("9")
    buddyinfo.write_text("not the kernel's table\n")
    assert pages.unreported_now() == (9, None)  # unreadable counts: the choice keeps huge pages
    buddyinfo.unlink()
    assert pages.unreported_now() == (9, None)
    assert not pages.choose("auto", *pages.unreported_now()).small


def test_the_bench_reads_each_choice_back_from_its_log_line():
    for choice, expected in ((pages.choose("auto", 9, 3648.2), "4 KB (3,648 MB)"),
                             (pages.choose("auto", 9, 828.0), "2 MB (828 MB)"),
                             (pages.choose("4kb", None, None), "4 KB"), (pages.choose("2mb", 9, 50.0), "2 MB"),
                             (pages.choose("auto", None, None), "2 MB"), (pages.choose("auto", 9, None), "2 MB")):
        assert pages.choice_from_log(choice.describe()) == expected, choice
    assert pages.choice_from_log("took CPU slot 1 after waiting 2.0 s") is None


def test_a_process_that_made_no_choice_is_left_alone():
    """reapply_step_pages (the CPU-slot resource's call) changes nothing in a process that did
    not choose as it started: a step run in the calling process, as tests and dg.materialize do."""
    before = pages.huge_pages_allowed()
    assert pages.last_choice() is None
    assert pages.reapply_step_pages() is None
    assert pages.huge_pages_allowed() == before and pages.last_choice() is None


# In a process of its own: whether it may get huge pages, before and after each choice, as
# the prctl says and as the kernel shows it in /proc/self/status (THP_enabled, Linux 5.0+)
APPLY = textwrap.dedent("""
    import json, os
    from racedayai_bayes.lib import pages

    def status():
        for line in open("/proc/self/status"):
            if line.startswith("THP_enabled:"):
                return int(line.split()[1])
        return None

    assert pages.set_huge_pages(True)  # whatever the process that started this one had
    seen = [pages.huge_pages_allowed(), status(), pages.reapply_step_pages()]
    for value in ("4kb", "2mb", "4kb"):
        os.environ[pages.PAGES_ENV] = value
        choice = pages.apply_step_pages()
        seen.append([choice.small, pages.last_choice() == choice, pages.huge_pages_allowed(), status()])
    os.environ[pages.PAGES_ENV] = "nonsense"  # never raised in a step: auto
    choice = pages.reapply_step_pages()  # this process chose before: it chooses again
    seen.append([choice.small, choice.reason.startswith(pages.PAGES_ENV), pages.last_choice() == choice])
    print(json.dumps(seen))
""")

THP_SETTABLE = sys.platform.startswith("linux") and pages.huge_pages_allowed() is True


@pytest.mark.skipif(not THP_SETTABLE, reason="needs Linux's prctl(PR_SET_THP_DISABLE), huge pages allowed here")
def test_a_choice_is_applied_to_the_process_and_can_be_undone():
    out = subprocess.run([sys.executable, "-c", APPLY], capture_output=True, text=True, check=True, timeout=120)
    seen = json.loads(out.stdout)
    assert seen[:3] == [True, 1, None]  # huge pages allowed, as /proc shows; no choice made yet: none remade
    assert seen[3] == [True, True, False, 0]  # 4kb: refused
    assert seen[4] == [False, True, True, 1]  # 2mb: allowed again
    assert seen[5] == [True, True, False, 0]
    assert seen[6][1:] == [False, True]  # the unknown value read as auto, and remade


PAGES_STATE = """
    def state(queue):
        from racedayai_bayes.lib import pages
        queue.put((pages.huge_pages_allowed(), pages.last_choice() is not None and pages.last_choice().small))
"""
PAGES_PARENT = """
    def parent():
        from racedayai_bayes.lib import pages
        return pages.huge_pages_allowed(), pages.last_choice()
"""


@pytest.mark.skipif(not THP_SETTABLE, reason="needs Linux's prctl(PR_SET_THP_DISABLE), huge pages allowed here")
def test_every_step_process_of_the_server_chooses_its_pages_and_the_command_keeps_its_own(tmp_path):
    """With step_pages in the preload, a process forked from the server has made its choice
    (RACEDAYAI_STEP_PAGES: 4kb refuses huge pages, 2mb allows them); without it, nothing is
    chosen; the process that started the server is untouched either way."""
    cases = (("4kb", ["racedayai_bayes.step_pages"], ["False", "True", "True", "None"]),
             ("2mb", ["racedayai_bayes.step_pages"], ["True", "False", "True", "None"]),
             ("4kb", [], ["True", "False", "True", "None"]))
    for value, preload, expected in cases:
        env = {**os.environ, pages.PAGES_ENV: value}
        assert run_in_step_process(tmp_path, PAGES_STATE, PAGES_PARENT, preload, env) == expected, (value, preload)


def test_importing_the_page_module_elsewhere_registers_nothing():
    script = ("import os, racedayai_bayes.step_pages\n"
              "from racedayai_bayes.lib import pages\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    os._exit(0 if pages.last_choice() is None and pages.huge_pages_allowed() in (True, None) else 1)\n"
              "print(os.waitpid(pid, 0)[1])")
    env = {**os.environ, pages.PAGES_ENV: "4kb"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "0"
