"""Benchmarks: run by `make bench`, never by pytest. Every comparison runs in one process or one
run, side by side, so its ratios hold on a shared, noisy machine; absolute seconds do not.

(a) side_by_side: the seed model's rowwise (the notebook's NUTS), exact (independence MH on
    the collapsed scales) and exact_nuts (NUTS on the same) engines on the same 50,000 rows of
    70.3 with the seed's settings: min bulk ESS per second of the whole fit (compile
    included), and the ratios to rowwise.
(b) full_scale: `racedayai-bayes refit` end to end on `full` synthetic data (about 3.7M
    modelled rows; every model, both distances, every output and artifact) on a fresh
    instance: wall time per step and in all, the peak memory of the whole process tree, and
    the I/O floor measured just before and just after it (Arrow reading the three input CSVs
    and writing CSVs of the outputs' size), so the ratio of wall time to floor compares like
    with like (to the lower of the two floors, since 2026-12-07: a slow reading, as when the
    inputs had left the page cache, would flatter the ratio); the CPU of the refit's processes, each through its exit, and the whole
    machine's by kind (the kernel's own threads' share, this bench's monitor's own). Then
    every model's held-out scores side by side, the comparison against
    seed_asof (MAE, ELPD difference in clustered SEs, coverage and its deciles), and what was
    published.
(c) backtest: the same on the last full season (holdout_season = latest - 1).
(d) variance: the full synthetic world's variance structure against real_variance_structure.json.
(g) profile: the full-scale refit's work in one process, phase by phase and inside each step.
(f) forecast_cli: `racedayai-bayes forecast` of a 3,000-athlete start list from the full-scale
    published 70.3 posterior, beside a process that only imports the package and opens the
    artifact.
(e) intervals: the seed's predictive quantiles (lib/models/seed/predict.py) against the plain
    way (independent noise per row and draw, np.quantile) on the same rows and draws.

Results are merged into bench/results.json and written as a dated table to bench/RESULTS.md.
"""

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"
RESULTS = HERE / "results.json"
TABLE = HERE / "RESULTS.md"


def _inputs(size: str, seed: int = 0) -> tuple[Path, float | None]:
    from racedayai_bayes.demo.simulate import write_demo_data

    folder = WORK / f"{size}-{seed}"
    if (folder / "athlete_race.csv").exists():
        return folder, None
    t0 = time.perf_counter()
    write_demo_data(folder, size=size, seed=seed)
    return folder, time.perf_counter() - t0


def _diag(model, wall: float) -> dict:
    s = model.summary()
    sampling = float(model.info.get("wall_s", wall))
    return {
        "rows": int(model.info.get("rows_fitted", model.info.get("rows", 0))),
        "wall_s": round(wall, 2),
        "sampling_s": round(sampling, 2),
        "max_rhat": round(float(s["r_hat"].max()), 4),
        "worst_rhat": str(s["r_hat"].idxmax()),
        "min_ess_bulk": round(float(s["ess_bulk"].min()), 1),
        "worst_ess": str(s["ess_bulk"].idxmin()),
        "min_ess_per_s": round(float(s["ess_bulk"].min()) / wall, 3),
        "min_ess_per_sampling_s": round(float(s["ess_bulk"].min()) / sampling, 3),
        "divergences": int(model.draws.diverging.sum()),
        "checks": {c.name: c.level for c in model.diagnostics()},
    }


def side_by_side(args) -> dict:
    """The seed model's two engines on the notebook's 50,000 rows of 70.3, one after the other."""
    from racedayai_bayes.lib.data.frame import distance_rows
    from racedayai_bayes.lib.models.seed.fit import SeedModel, SeedSettings, _sample

    folder, _ = _inputs("demo")
    frame = _model_frame(folder)
    rows = _sample(distance_rows(frame, "70.3"), 50_000)  # the seed's subsample
    # What the engines import lazily (ArviZ for PSIS k-hat, the independence sampler, and the
    # NUTS engines' JAX and NumPyro) is imported before the clock starts: a fit's seconds are
    # its work and its compile, not a package import. A step process has ArviZ preloaded; a
    # step that runs a NUTS engine imports JAX and NumPyro itself (about 2 s), which these
    # figures leave out.
    import arviz  # noqa: F401

    from racedayai_bayes.lib.inference import imh  # noqa: F401
    from racedayai_bayes.lib.models.seed import exact_nuts, rowwise  # noqa: F401
    settings = dict(num_warmup=args.warmup, num_samples=args.samples, num_chains=2, target_accept=0.85)
    out = {}
    for engine in ("exact", "exact_nuts", "rowwise"):
        if engine == "rowwise" and args.skip_rowwise:
            continue
        print(f"[side_by_side] {engine}: {len(rows):,} rows, {args.warmup}+{args.samples} x 2 chains", flush=True)
        t0 = time.perf_counter()
        model = SeedModel("profile", SeedSettings(engine=engine, subsample=len(rows), **settings)).fit(rows, "70.3")
        out[engine] = _diag(model, time.perf_counter() - t0)
        print(f"[side_by_side] {engine}: {out[engine]}", flush=True)
    if "rowwise" in out:
        # per second of the whole fit (compile included), and of sampling alone
        out["ess_per_s_ratio"] = round(out["exact"]["min_ess_per_s"] / max(out["rowwise"]["min_ess_per_s"], 1e-12), 1)
        out["ess_per_sampling_s_ratio"] = round(
            out["exact"]["min_ess_per_sampling_s"] / max(out["rowwise"]["min_ess_per_sampling_s"], 1e-12), 1)
        out["exact_nuts_ess_per_s_ratio"] = round(
            out["exact_nuts"]["min_ess_per_s"] / max(out["rowwise"]["min_ess_per_s"], 1e-12), 1)
    out["settings"] = {**settings, "rows": len(rows), "distance": "70.3"}
    return out


def _proc_stat(pid) -> tuple[str, list[str]] | None:
    """A process's name and the fields of /proc/<pid>/stat after it (fields[1]: the parent's
    pid; [11], [12]: user and system CPU in clock ticks; [19]: the start time); None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.index("(") + 1:text.rindex(")")], text.rsplit(")", 1)[1].split()


class TreeRSS(threading.Thread):
    """Samples the memory of a process and all its descendants (Linux /proc): the summed RSS,
    and the summed PSS (proportional set size: a page shared by n processes counts 1/n in
    each). Step processes fork from one server with the code location preloaded, so they
    share its pages; RSS counts those once per process, PSS once in all."""

    PSS_EVERY_S = 0.6

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every, self.stop = pid, every, threading.Event()
        self.peak_kb, self.peak_pss_kb = 0, 0
        self.peak_parts: list[tuple[int, int, str]] = []  # (pid, PSS kB, command) at the PSS peak
        # pid -> (user s, system s), as last sampled: a process shorter than a sample is missed,
        # and a pid the kernel reuses within the run keeps only its last process's time
        self.cpu: dict[int, tuple[float, float]] = {}
        self.commands: dict[int, str] = {}  # pid -> its command line, as first seen
        self.cpu_s = 0.0  # this thread's own CPU seconds so far
        self._pss_at = -float("inf")  # when smaps_rollup was last read (time.monotonic)
        self._last_rss = 0  # the summed RSS of the last sample (kB)

    def _cpu(self, pid: int) -> None:
        stat = _proc_stat(pid)
        if stat is None:
            return
        fields = stat[1]
        tick = os.sysconf("SC_CLK_TCK")
        self.cpu[pid] = (int(fields[11]) / tick, int(fields[12]) / tick)  # utime, stime
        if pid not in self.commands:
            self.commands[pid] = self._command(pid)

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds of every process seen in the tree, up to its last sample."""
        return sum(u for u, _ in self.cpu.values()), sum(s for _, s in self.cpu.values())

    def _tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            pids.append(p)
            for task in Path(f"/proc/{p}/task").glob("*"):
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    pass
        return pids

    @staticmethod
    def _command(pid: int) -> str:
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return "?"
        text = " ".join(a.decode(errors="replace") for a in args if a)
        if "forkserver import main" in text:
            return "forkserver or a step"
        return text[:80]

    @staticmethod
    def _field(path: Path, name: str) -> int:
        try:
            for line in path.read_text().splitlines():
                if line.startswith(name):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def run(self):
        start = time.thread_time()
        while not self.stop.is_set():
            pids = self._tree()
            for p in pids:
                self._cpu(p)
            rss = sum(self._field(Path(f"/proc/{p}/status"), "VmRSS:") for p in pids)
            self.peak_kb = max(self.peak_kb, rss)
            # A process's PSS is at most its RSS, so the tree's PSS can pass its peak only when
            # the summed RSS does; only then is smaps_rollup read: at most every PSS_EVERY_S
            # while the summed RSS rises, and as soon as it falls (a peak just passed). That
            # read walks the page tables of each process (40 ms for the whole tree at full
            # scale), most of the monitor's cost: read at every sample, the bench process took
            # 6.3-8.7 CPU s per full-scale refit, on the refit's own cores (2026-12-06).
            now = time.monotonic()
            turned = rss < self._last_rss
            self._last_rss = rss
            if rss > self.peak_pss_kb and (turned or now - self._pss_at >= self.PSS_EVERY_S):
                self._pss_at = now
                parts = [(p, self._field(Path(f"/proc/{p}/smaps_rollup"), "Pss:")) for p in pids]
                pss = sum(kb for _, kb in parts)
                if pss > self.peak_pss_kb:
                    self.peak_pss_kb = pss
                    self.peak_parts = [(p, kb, self._command(p)) for p, kb in parts if kb > 0]
            self.cpu_s = time.thread_time() - start  # the monitor's own CPU (user and system)
            time.sleep(self.every)


def _machine_ticks() -> dict[str, float]:
    """The machine's CPU seconds so far by kind (the first line of /proc/stat); {} elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {name: int(v) / tick for name, v in zip(names, fields)}


def _become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (Linux prctl PR_SET_CHILD_SUBREAPER):
    an orphaned descendant is reparented here rather than to init, so that its CPU time, and
    its own reaped children's, reach this process's RUSAGE_CHILDREN once it is reaped."""
    from racedayai_bayes.lib.processes import prctl

    return prctl(36, 1) == 0


def _reap_orphans(timeout: float = 30.0) -> list[str]:
    """Wait for every child left (orphans reparented here: _become_subreaper), for up to
    ``timeout`` s; the children still running then ("pid name"), which are not counted where
    their CPU belongs. Call it only when no child of this process is awaited elsewhere (a
    Popen's): every part here runs its other processes to their end before returning."""
    end = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return []
        if pid == 0:
            if time.monotonic() >= end:
                break
            time.sleep(0.05)
    stats = ((entry.name, _proc_stat(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [f"{pid} {stat[0]}" for pid, stat in stats if stat is not None and stat[1][1] == str(os.getpid())]


def _kernel_threads() -> dict[tuple[int, int], tuple[str, float]]:
    """Each kernel thread (a child of kthreadd, pid 2), keyed by its pid and start time (a pid
    can be reused): its name with the instance number dropped ("kworker/u8:2-writeback" is
    "kworker-writeback") and its CPU seconds so far; {} where there is no /proc or pid 2 is
    not kthreadd (in a PID namespace). A kworker's name is the work queue it serves when read:
    it changes, so CPU is compared per thread (:func:`_kernel_cpu_between`) and only then named."""
    out: dict[tuple[int, int], tuple[str, float]] = {}
    try:
        if Path("/proc/2/comm").read_text().strip() != "kthreadd":
            return out
        entries = list(Path("/proc").iterdir())
    except OSError:
        return out
    tick = os.sysconf("SC_CLK_TCK")
    for entry in entries:
        stat = _proc_stat(entry.name) if entry.name.isdigit() else None
        if stat is None or stat[1][1] != "2":
            continue
        name, fields = stat
        base, _, queue = name.partition("-")
        key = (int(entry.name), int(fields[19]))  # fields[19]: the start time (field 22 of stat)
        out[key] = (base.split("/")[0] + (f"-{queue}" if queue else ""), (int(fields[11]) + int(fields[12])) / tick)
    return out


def _kernel_cpu_between(before: dict, after: dict) -> dict[str, float]:
    """The kernel threads' CPU seconds between two :func:`_kernel_threads` readings, by the name
    each had at the second (a thread that ended between them is missed; one that began counts
    whole). On this VM they do, among other work, the page cache's writeback and DAMON's
    reclaim (kdamond), which hands memory back to the host."""
    out: dict[str, float] = {}
    for key, (name, seconds) in after.items():
        used = seconds - before.get(key, (name, 0.0))[1]
        if used > 0:
            out[name] = out.get(name, 0.0) + used
    return out


def fresh_memory_probe(mb: int = 400, *, huge: bool = True) -> float:
    """Seconds per GB for a new process to write memory the machine has not used for a few
    seconds, measured in a child process: on this VM (Firecracker, free page reporting)
    such memory has been handed back to the host, and touching it again cost 15-80x what
    touching memory freed a moment ago cost (measured on 2026-12-03). Every step process
    grows into memory of its own, so the rate bears on a refit's wall time.

    It writes every byte of ``mb`` MB, as ``np.ones`` did, in 2 MB pages (transparent huge
    pages, asked for with madvise as the step processes' heap and NumPy's large arrays are)
    or, with ``huge=False``, in 4 KB pages (refused with madvise, whatever the kernel's THP
    mode). Which of the two is the dearer changes from hour to hour here: on 2026-12-03
    ~19:00 touching 1 GB took 5.6-7.9 s in 4 KB pages and 0.17-0.25 s in 2 MB pages; on
    2026-12-06 1.4-1.7 s against 0.5 s; on 2026-12-07 the bench's probe (then ``np.ones``)
    gave 0.2 s per GB at ~12:15, and from ~13:40 to ~14:20 touching 1 GB took 5.7-9.9 s in
    2 MB pages against 0.45-0.5 s in 4 KB pages. A small probe does not show it: at ~14:15
    that day 64 MB took 0.15 s per GB in 2 MB pages and 400 MB 8.8 s per GB (presumably
    because the first pages a process gets were freed a moment before), so the probe takes
    ``mb`` MB. Even so, the 2 MB probe runs just after the floor's reading, which frees
    about a GB, and the 4 KB one just after the 2 MB one: at ~14:21 that day the first gave
    0.14 s per GB minutes after the same kind of probe had given 8.8 s on the idle machine,
    and the refit that followed had 34 s of system CPU (27 s at ~12:17). Read both as lower
    bounds of the hour's rates. Until 2026-12-07 ~14:20 (670465b) the probe was ``np.ones``
    of 400 MB: 2 MB pages too, as NumPy asks for them for a large array (5.9-8.9 s per GB
    at ~14:20, as this one then); from 670465b to ~14:50 this one touched one byte of each
    4 KB page (the kernel's zeroing only, without the writing of the rest)."""
    code = ("import mmap, time, numpy as np; time.sleep(3); "
            f"n = {mb} << 20; m = mmap.mmap(-1, n + (2 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS); "
            f"m.madvise(mmap.{'MADV_HUGEPAGE' if huge else 'MADV_NOHUGEPAGE'}); "
            "a = np.frombuffer(m, dtype=np.uint8); o = (-a.ctypes.data) % (2 << 20); "
            "t = time.perf_counter(); a[o:o + n] = 1; print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return round(float(out) * 1024 / mb, 2)


def io_floor(folder: Path, scratch: Path, season: int | None = None) -> dict:
    """Arrow reading the three input CSVs and writing CSVs of the outputs' size and columns.

    The outputs' shape comes from a first, untimed read (which also warms the page cache, as
    the refit's own reads are warm after the first run of a week), with the rows the refit
    models chosen by its rules (lib/data/frame.frame_rules, on the columns as the data
    contract reads them: trimmed text, is_pro's and event_distance's spellings, numbers and
    seasons; with ``season``, a backtest's, none after that season, as lib/data/split.py
    drops them). The written tables have the prediction CSVs' twelve columns and one row per
    such race, and numbers of the same length: a forecast is a float at full precision, which
    Arrow writes in shortest round-trip form (about 17 digits: 19093.577876091553), so each
    prediction column is the race's time, scaled, plus a seeded fraction of a second. They are written with the
    refit's writer options (lib/outputs/io.csv_write_options: values unquoted), or, if a text
    needs quotes (the refit then writes with pandas, which quotes only such values), with
    Arrow's quoting of only those values: chosen before the clock starts. The two distances'
    files are written at once, on two threads (Arrow lets go of the GIL), as the refit's two
    runs write theirs. The refit's durability (a temporary file, fsync, rename, the folder's
    fsync) is left out: the floor is the least the reads and writes take. ``bytes`` is what
    was written: the bench reports it beside the size of the refit's own prediction CSVs.

    Until 2026-12-07 ~10:00 (49fe35b) the prediction columns were the time times (1 + 0.01k),
    short numbers (13196.66), every text quoted, professionals' rows included, one file after
    the other, and the clock also timed making the tables: 454 MB against 590 MB of the
    full-scale refit's own CSVs. From 49fe35b to ~10:40 the columns were as now, pros' rows
    included (594 MB, 3.72M rows against the refit's 3.71M; 594 MB for the backtest, whose
    CSVs are 565 MB), written one after the other.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from racedayai_bayes.lib.data import contracts
    from racedayai_bayes.lib.data.frame import MODEL_DISTANCES, frame_rules
    from racedayai_bayes.lib.outputs.io import csv_write_options

    names = (contracts.RACE_FILE, contracts.PROFILE_FILE, contracts.CLUSTER_FILE)
    text = pacsv.ConvertOptions(column_types={"event_distance": pa.string(), "athlete_hash": pa.string()})
    # The untimed read is the timed one's twin, in this process: the memory it frees stays in
    # Arrow's pool for the timed reads, as the floors have always had it. Reading the file
    # through the contract (lib/data/contracts.read_races) instead, even in another process,
    # made the timed reads 10-15 s against 3.8-5.2 s (the memory it freed had gone back to the
    # host: see the README's "Measured here"). So the refit's rules are applied here to
    # Arrow's columns, read as the contract reads them (lib/data/frame.frame_rules).
    races = pacsv.read_csv(folder / contracts.RACE_FILE, convert_options=text)

    def trimmed(column):  # the contract trims every text cell; a blank one is missing
        out = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
        return pc.if_else(pc.equal(out, ""), pa.scalar(None, pa.string()), out)

    pro = pc.fill_null(pc.is_in(pc.utf8_lower(trimmed(races["is_pro"])), value_set=pa.array(sorted(contracts._TRUE))),
                       False).to_numpy(zero_copy_only=False)
    distance = trimmed(races["event_distance"])
    for spelled, canonical in contracts._DISTANCE_SPELLINGS.items():
        distance = pc.if_else(pc.equal(distance, spelled), canonical, distance)
    total, year = contracts.parse_numbers(races["total_sec"]), contracts.parse_numbers(races["event_year"])
    year[(year < contracts.FIRST_SEASON) | (year > contracts.last_plausible_season())] = np.nan
    # the refit's own rules, on these columns (no column is copied: pandas wraps the arrays)
    rules = frame_rules(pd.DataFrame({"is_pro": pro, "event_distance": pd.array(distance, dtype=pd.ArrowDtype(pa.string())),
                                      "total_sec": total, "event_year": year}, copy=False))
    keep = np.logical_and.reduce(list(rules.values()))
    if season is not None:
        keep &= year <= season
    fraction = np.random.default_rng(0)
    tables = {}
    for d in MODEL_DISTANCES:
        rows = keep & pc.fill_null(pc.equal(distance, d), False).to_numpy(zero_copy_only=False)
        n = int(rows.sum())
        values = total[rows]
        tables[d] = pa.table({
            "athlete_hash": trimmed(races["athlete_hash"]).filter(rows), "event_distance": distance.filter(rows),
            "event_year": pa.array(year[rows].astype(np.int64)), "total_sec": pa.array(values),
            **{c: pa.array(values * (1.0 + 0.01 * k) + fraction.random(n)) for k, c in enumerate(
                ("bayes_pred", "bayes_std", "bayes_p05", "bayes_p50", "bayes_p95"))},
            "model": pa.array(["forecast"] * n), "event_name": trimmed(races["event_name"]).filter(rows),
            "held_out": pa.array(np.zeros(n, bool)),
        })
    del races, distance

    def needs_quotes(table) -> bool:  # a comma, quote or line break in a text: the refit's options refuse it
        return any(pc.any(pc.match_substring_regex(table[c], r'[,"\r\n]')).as_py()
                   for c in table.column_names if pa.types.is_string(table[c].type) or pa.types.is_large_string(table[c].type))

    quoted = [d for d, t in tables.items() if needs_quotes(t)]
    options = {d: pacsv.WriteOptions(quoting_style="needed", quoting_header="none") if d in quoted
               else csv_write_options() for d in tables}
    scratch.mkdir(parents=True, exist_ok=True)

    def write(d: str) -> int:
        path = scratch / f"floor_{d}.csv"
        pacsv.write_csv(tables[d], path, options[d])
        return path.stat().st_size

    t0 = time.perf_counter()
    for name in names:
        pacsv.read_csv(folder / name, convert_options=text)
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    with ThreadPoolExecutor(len(tables)) as pool:
        written = sum(pool.map(write, list(tables)))
    t_write = time.perf_counter() - t1
    for d in tables:
        # scratch, removed once timed: a machine about to refit has no such files just written,
        # and their page cache, freed, is free memory the host has not taken back (lib/pages.py):
        # left, it took about 350 of the 590 MB from the refit's steps' small pages (2026-12-07)
        (scratch / f"floor_{d}.csv").unlink(missing_ok=True)
    out = {"read_s": round(t_read, 2), "write_s": round(t_write, 2), "total_s": round(t_read + t_write, 2),
           "rows": {d: t.num_rows for d, t in tables.items()}, "bytes": written}
    if quoted:
        out["quoted"] = quoted  # written with the values that need quotes quoted
    return out


def _run_history(home: Path) -> dict:
    """Per step (and partition) wall seconds, and every check evaluation, from the instance."""
    import dagster as dg

    from racedayai_bayes.lib.pages import choice_from_log

    instance = dg.DagsterInstance.from_config(str(home))
    steps: dict[str, float] = {}
    checks: list = []
    pids: dict[int, str] = {}  # step process id -> step[partition]
    pages: dict[str, str] = {}  # step[partition] -> the page size its fresh memory came in (lib/pages.py)
    for run in instance.get_runs():
        part = run.tags.get("dagster/partition", "")
        starts = {}
        for e in instance.all_logs(run.run_id):
            ev = e.dagster_event
            if ev is None:
                choice = choice_from_log(e.user_message or "")
                if choice and e.step_key:
                    pages[f"{e.step_key}[{part}]"] = choice  # the last one: once the step held its slot
                continue
            if ev.event_type == dg.DagsterEventType.STEP_WORKER_STARTED and "pid" in ev.event_specific_data.metadata:
                pids[int(ev.event_specific_data.metadata["pid"].value)] = f"{e.step_key}[{part}]"
            if ev.event_type == dg.DagsterEventType.STEP_START:
                starts[e.step_key] = e.timestamp
            elif ev.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                steps[f"{e.step_key}[{part}]"] = round(e.timestamp - starts.get(e.step_key, e.timestamp), 2)
            elif ev.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
                d = ev.event_specific_data
                checks.append({"asset": d.asset_key.to_user_string(), "distance": part, "check": d.check_name,
                               "passed": bool(d.passed), "severity": d.severity.value,
                               "value": d.metadata["value"].value if "value" in d.metadata else None})
    return {"steps": steps, "checks": checks, "pids": pids, "pages": pages}


def _decisions(home: Path) -> dict:
    """The stored comparison of each distance (the published_model asset's value)."""
    from racedayai_bayes.lib.outputs import stored

    return {path.stem: stored.load(path) for path in (home / "storage" / "published_model").glob("*.pkl")}


def _models_table(decision) -> dict:
    """Every model's held-out scores, and forecast against seed_asof, of one distance."""
    from racedayai_bayes.lib.evaluation.scores import elpd_difference

    models = {}
    for name, j in decision.judged.items():
        s = j.judged.scores
        checks = {c.name: c.level for c in j.checks}
        models[name] = {
            "judged_on": j.judged.label, "rows": s.rows, "editions": s.editions,
            "elpd": round(s.elpd, 5), "elpd_se": round(s.elpd_se, 5),
            "mae_p50_min": round(s.mae_p50_sec / 60, 2), "mae_pred_min": round(s.mae_pred_sec / 60, 2),
            "r2": round(s.r2, 4), "coverage_90": round(s.coverage_90, 4), "coverage_se": round(s.coverage_se, 4),
            "decile_coverage": [round(float(v), 3) for v in s.deciles["coverage"]],
            "deciles_consistent": checks.get("coverage_by_decile") == "pass",
            "fit_wall_s": round(float(j.model.info.get("wall_s", float("nan"))), 2),
            "checks": checks,
            "groups": {g: {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()} for g, d in s.groups.items()},
        }
    versus = None
    if {"forecast", "seed_asof"} <= set(decision.judged):
        f, a = decision.judged["forecast"], decision.judged["seed_asof"]
        d, se, n = elpd_difference(f.judged.prediction.log_density, a.judged.prediction.log_density, f.judged.clusters)
        versus = {
            "mae_p50_ratio": round(f.judged.scores.mae_p50_sec / a.judged.scores.mae_p50_sec, 4),
            "mae_pred_ratio": round(f.judged.scores.mae_pred_sec / a.judged.scores.mae_pred_sec, 4),
            "elpd_diff": round(d, 5), "elpd_diff_se": round(se, 5), "elpd_diff_in_se": round(d / se, 1),
            "rows": n, "editions": f.judged.scores.editions,
        }
    return {"published": decision.published, "reason": decision.reason, "models": models, "forecast_vs_seed_asof": versus}


def _refit(tag: str, folder: Path, extra_args: list[str]) -> dict:
    """One `racedayai-bayes refit` on a fresh instance, the I/O floor just before and after."""
    home = WORK / f"{tag}_home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    out_dir = WORK / f"{tag}_outputs"
    shutil.rmtree(out_dir, ignore_errors=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "RACEDAYAI_INPUT_DIR": str(folder), "RACEDAYAI_OUTPUT_DIR": str(out_dir)}
    # a backtest's floor writes the rows its CSVs hold: none after the held-out season
    season = int(extra_args[extra_args.index("--holdout-season") + 1]) if "--holdout-season" in extra_args else None
    floor_before = io_floor(folder, WORK / "floor", season)
    print(f"[{tag}] I/O floor before: {floor_before}", flush=True)
    print(f"[{tag}] racedayai-bayes refit {' '.join(extra_args)}", flush=True)
    # every process of the refit's tree, through its exit: a parent's rusage of its children
    # counts each child it waited for and, recursively, the children each of those waited for.
    # The step server reaps its step processes, but the command does not wait for the server,
    # which ends just after it: as this process is the subreaper of its descendants, any it
    # leaves is reparented here on its exit, and reaped below (_reap_orphans)
    through_exit = _become_subreaper()
    earlier_left = _reap_orphans()  # those an earlier part left (a demo refit's step server): not this refit's
    fresh_before = fresh_memory_probe()
    fresh_small_before = fresh_memory_probe(huge=False)
    # the free memory the host has not taken back, as the step processes read it when they
    # choose their pages (lib/pages.py); None where the kernel reports none to a host
    from racedayai_bayes.lib.pages import unreported_now

    pool_before = unreported_now()[1]
    ticks_before = _machine_ticks()
    kernel_before = _kernel_threads()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine_t0 = t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "racedayai_bayes.cli", "refit", *extra_args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mon = TreeRSS(proc.pid)
    mon.start()
    log, _ = proc.communicate()
    wall = time.perf_counter() - t0
    refit_left = _reap_orphans()
    ticks = {k: v - ticks_before.get(k, 0) for k, v in _machine_ticks().items()}
    kernel = _kernel_cpu_between(kernel_before, _kernel_threads())
    machine_window = time.perf_counter() - machine_t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    mon.stop.set()
    mon.join()
    sampled_user, sampled_system = mon.cpu_seconds()
    cpu_user = children.ru_utime - children_before.ru_utime
    cpu_system = children.ru_stime - children_before.ru_stime
    floor_after = io_floor(folder, WORK / "floor", season)
    print(f"[{tag}] I/O floor after: {floor_after}", flush=True)
    (WORK / f"{tag}_refit.log").write_text(log)
    history = _run_history(home)
    # the lower of the two: the floor is the least the reads and writes take, and a slow
    # reading (the inputs out of the page cache: 10.1 s against 6.4 s after, ~00:05 on
    # 2026-12-07) would flatter the ratio; the runs before 8d583cb (~00:25 that day) used
    # their mean, and their results carry no ``io_floor_rule``
    floor = min(floor_before["total_s"], floor_after["total_s"])
    rows = csv_bytes = 0
    for f in out_dir.rglob("bayesian_predictions_*.csv"):  # a backtest's are under backtests/<season>/
        rows += sum(1 for _ in open(f)) - 1
        csv_bytes += f.stat().st_size
    decisions = {}
    for distance, decision in _decisions(home).items():
        decisions[distance] = _models_table(decision)
    return {
        "rows": rows,
        # the refit's prediction CSVs, and what the floor wrote in their place (io_floor)
        "prediction_csv_bytes": csv_bytes,
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "io_floor_s": round(floor, 2),
        "io_floor_rule": "lower",  # of the two readings (before the refit, after it)
        "io_floor_before": floor_before,
        "io_floor_after": floor_after,
        "floor_ratio": round(wall / floor, 2),
        "peak_rss_mb": round(mon.peak_pss_kb / 1024, 0),  # PSS: shared pages counted once
        "peak_rss_summed_mb": round(mon.peak_kb / 1024, 0),  # every process's RSS added up
        "peak_memory_measure": "peak_rss_mb: the summed PSS of the process tree (shared pages counted once); peak_rss_summed_mb: the summed RSS (shared pages counted in every process)",
        # CPU seconds of the refit's processes, every one through its exit (the rusage of the
        # bench's reaped children); for what memory costs in system time here, see
        # fresh_memory_probe. The sampled ones add up each process's last sample (every 0.2 s):
        # what the per-step table below is made of, less than the whole by each process's last
        # moments and its exit
        "cpu_user_s": round(cpu_user, 1),
        "cpu_system_s": round(cpu_system, 1),
        "cpu_sampled_s": [round(sampled_user, 1), round(sampled_system, 1)],
        # False where this process could not become the subreaper: the processes the command
        # leaves (its step server and, through it, the step processes) are then missed
        "cpu_through_exit": through_exit and not refit_left,
        "orphans_left": {"before": earlier_left, "after": refit_left},
        # the memory monitor's own CPU, on the same cores as the refit: the measurement's cost
        "monitor_cpu_s": round(mon.cpu_s, 2),
        "fresh_memory_s_per_gb": fresh_before,  # in 2 MB pages
        "fresh_memory_4kb_s_per_gb": fresh_small_before,  # in 4 KB pages
        # free memory the host had not taken back, just before the refit (lib/pages.py)
        "unreported_free_mb_before": None if pool_before is None else round(pool_before),
        # the whole machine during the refit (/proc/stat): the time the hypervisor gave this
        # VM's CPUs to others (steal) and the CPU time no process used (idle), in CPU seconds
        "machine_steal_s": None if "steal" not in ticks else round(ticks["steal"], 2),
        "machine_idle_s": None if "idle" not in ticks else round(ticks["idle"], 2),
        "machine_cpus": os.cpu_count(),
        # the whole machine's CPU seconds by kind during the refit (/proc/stat), and the part of
        # its system time that the kernel's own threads took (writeback, reclaim, other work),
        # which no process of the refit's tree is charged for
        "machine_cpu_s": {k: round(v, 2) for k, v in ticks.items()},
        "machine_window_s": round(machine_window, 2),  # the span of those readings (the refit and its reaping)
        "kernel_threads_cpu_s": round(sum(kernel.values()), 2),
        "kernel_threads_top": {k: round(v, 2) for k, v in sorted(kernel.items(), key=lambda kv: -kv[1])[:4] if v >= 0.05},
        "step_wall_s": history["steps"],
        # the page size each step's fresh memory came in, and the free memory the host had not
        # taken back when it chose (lib/pages.py)
        "step_pages": history["pages"],
        # each step process's CPU seconds (user, system) as last sampled; the rest of the
        # tree (the command, the run workers, the step server) under "other"
        "step_cpu_s": _step_cpu(mon.cpu, history["pids"]),
        "other_cpu_s": {f"{mon.commands.get(pid, '?')} (pid {pid})": [round(u, 2), round(s, 2)]
                        for pid, (u, s) in mon.cpu.items() if pid not in history["pids"] and u + s >= 0.05},
        # what the process tree held at its PSS peak: each process's PSS, step processes by step
        "peak_parts_mb": {f"{history['pids'].get(pid, command)} (pid {pid})": round(kb / 1024)
                          for pid, kb, command in sorted(mon.peak_parts, key=lambda x: -x[1])},
        "checks_failed": [c for c in history["checks"] if not c["passed"]],
        "all_error_checks_passed": all(c["passed"] or c["severity"] != "ERROR" for c in history["checks"]),
        "models": decisions,
        "refit_output": log.splitlines()[-25:],
    }


def _step_cpu(cpu: dict[int, tuple[float, float]], pids: dict[int, str]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for pid, (user, system) in cpu.items():
        key = pids.get(pid, "other")
        u, s = out.get(key, [0.0, 0.0])
        out[key] = [round(u + user, 2), round(s + system, 2)]
    return dict(sorted(out.items()))


def full_scale(args) -> dict:
    folder, gen_s = _inputs("full")
    out = _refit("full", folder, [])
    out["data_generation_s"] = None if gen_s is None else round(gen_s, 1)
    return out


def demo_rerun(args) -> dict:
    """`make run`'s refit on the demo data in a fresh instance: a first one, then two later ones,
    which are what a user waits for every time after the first (issue 12's target: at most
    15 s; they reuse the model frame the first stored, the inputs being unchanged), then one
    with ``--rebuild-inputs``: the same refit reading the inputs again, as when they change."""
    folder, _ = _inputs("demo", seed=0)
    home = WORK / "demo_home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    out_dir = WORK / "demo_outputs"
    shutil.rmtree(out_dir, ignore_errors=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "RACEDAYAI_INPUT_DIR": str(folder), "RACEDAYAI_OUTPUT_DIR": str(out_dir)}
    runs = []
    for i, flags in enumerate(([], [], [], ["--rebuild-inputs"])):
        t0 = time.perf_counter()
        started = time.time()  # the events' clock
        proc = subprocess.run([sys.executable, "-m", "racedayai_bayes.cli", "refit", *flags], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
        ended = time.time()
        lines = proc.stdout.splitlines()
        run_ids = dict(m.groups() for m in (re.match(r"refit (\S+): started run (\S+)$", line.strip()) for line in lines) if m)
        runs.append({"wall_s": round(wall, 1), "exit_code": proc.returncode, "lines": len(lines), "flags": flags,
                     "inputs_reused": any(line.startswith("inputs unchanged since run") for line in lines),
                     "run_lines": [line.strip() for line in lines if line.startswith("refit ") and "succeeded" in line],
                     "phases_s": _demo_phases(home, run_ids, started, ended)})
        print(f"[demo_rerun] refit {i + 1} {' '.join(flags)}: {wall:.1f} s, exit {proc.returncode}, {len(lines)} lines",
              flush=True)
    later = sorted(r["wall_s"] for r in runs[1:3])
    return {"first": runs[0], "later": runs[1:3], "rebuilt": runs[3], "second_run_median_s": later[len(later) // 2]
            if len(later) % 2 else round(sum(later) / len(later), 1), "target_s": 15}


def _demo_phases(home: Path, run_ids: dict[str, str], started: float, ended: float) -> dict:
    """Where one refit's wall time went, from its runs' events (the command's own clock at
    both ends): until the first step started (imports, the step server, creating the first
    run), the distances' runs (first step start to the last of them ending), the means run's
    time beyond them (it may start before the later distance's run ends, beside its last
    steps), the command's end after the last event; and the means run's own span."""
    import dagster as dg

    distance_runs = [r for label, r in run_ids.items() if label != "means"]
    means_run = run_ids.get("means")
    if not distance_runs or means_run is None:  # a refit that failed: no phases
        return {}
    instance = dg.DagsterInstance.from_config(str(home))
    spans = {}
    for run_id in (*distance_runs, means_run):
        events = [e for e in instance.all_logs(run_id) if e.dagster_event is not None]
        step_starts = [e.timestamp for e in events if e.dagster_event.event_type == dg.DagsterEventType.STEP_START]
        spans[run_id] = (min(step_starts, default=float("nan")), max((e.timestamp for e in events), default=float("nan")),
                         min((e.timestamp for e in events), default=float("nan")))
    first_step = min(spans[r][0] for r in distance_runs)
    distances_end = max(spans[r][1] for r in distance_runs)
    last_event = max(v[1] for v in spans.values())
    return {"until_first_step": round(first_step - started, 2), "distance_runs": round(distances_end - first_step, 2),
            "means_after_distance_runs": round(max(0.0, last_event - distances_end), 2),
            "after_last_event": round(ended - last_event, 2),
            "means_run": round(spans[means_run][1] - spans[means_run][2], 2)}


def backtest(args) -> dict:
    """The last full season held out (the one before the latest, partial, season)."""
    import pyarrow.csv as pacsv

    folder, _ = _inputs("full")
    years = pacsv.read_csv(folder / "athlete_race.csv", convert_options=pacsv.ConvertOptions(include_columns=["event_year"]))
    season = int(max(years["event_year"].to_pylist())) - 1
    out = _refit("backtest", folder, ["--holdout-season", str(season)])
    out["season"] = season
    return out


def variance(args) -> dict:
    """The full world's variance structure against real_variance_structure.json (measured / real)."""
    import pandas as pd

    from racedayai_bayes.demo.calibration import compare, variance_structure
    from racedayai_bayes.demo.simulate import CALIBRATION

    folder, _ = _inputs("full")
    races = pd.read_csv(folder / "athlete_race.csv", usecols=["athlete_hash", "is_pro", "event_name", "event_year",
                                                                 "event_distance", "total_sec"],
                        dtype={"event_distance": str, "athlete_hash": str, "is_pro": str}, engine="pyarrow")
    out = {}
    for d in ("70.3", "140.6"):
        measured = variance_structure(races, d)
        real = {"sd_course_mean": CALIBRATION[d]["sd_course"], "sd_edition_within_course": CALIBRATION[d]["sd_day"],
                "sd_athlete_mean_resid_2plus": CALIBRATION[d]["sd_athlete"],
                "sd_within_athlete": CALIBRATION[d]["sd_within_athlete"]}
        out[d] = {"measured": {k: round(v, 4) for k, v in measured.items()},
                  "ratio_to_real": {k: round(v, 3) for k, v in compare(measured, real).items()},
                  "share_new_course_real": CALIBRATION[d]["new_course_share"]}
    return out


def _naive_intervals(draws, enc, design, max_draws: int, seed: int):
    """The plain posterior predictive quantiles: every row and draw gets its own noise."""
    import numpy as np

    from racedayai_bayes.lib.models.seed.predict import thinned_draws

    rng = np.random.default_rng(seed)
    pick = thinned_draws(draws.num_chains * draws.num_draws, max_draws)
    p = {k: draws.flat(k)[pick] for k in draws.samples}
    out = []
    for start in range(0, len(design), 20_000):
        sl = slice(start, start + 20_000)
        mu = (p["mu_global"][None] + p["mu_gender"].T[design.gender_idx[sl]] + p["mu_age"].T[np.maximum(design.age_idx[sl], 0)]
              + p["mu_cluster"].T[np.maximum(design.cluster_idx[sl], 0)]
              + design.fitness[sl, None] * p["beta_fitness"][None] + design.experience[sl, None] * p["beta_experience"][None])
        mu += rng.standard_normal(mu.shape) * p["sigma"][None]
        out.append(np.quantile(mu, (0.05, 0.5, 0.95), axis=1) * enc.y_std + enc.y_mean)
    return np.concatenate(out, axis=1)


def intervals(args) -> dict:
    """Side by side: the library's quantiles and the plain ones, same draws and rows."""
    import numpy as np

    from racedayai_bayes.lib.data.frame import distance_rows
    from racedayai_bayes.lib.models.seed.encoding import encode
    from racedayai_bayes.lib.models.seed.fit import SeedModel
    from racedayai_bayes.lib.models.seed.predict import predictive_summary

    folder, _ = _inputs("demo")
    frame = _model_frame(folder)
    rows = distance_rows(frame, "70.3")
    post = SeedModel("profile").fit(rows, "70.3")
    n = 200_000
    big = rows.sample(n, replace=True, random_state=1)
    design = encode(big, post.encoding)
    t0 = time.perf_counter()
    naive = _naive_intervals(post.draws, post.encoding, design, 1000, 3)
    naive_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = predictive_summary(post.draws, post.encoding, design, max_draws=1000, seed=3)
    fast_s = time.perf_counter() - t0
    diff = {k: float(np.median(np.abs(fast[k] - naive[i])) / np.mean(fast["sd"]))
            for i, k in enumerate(("p05", "p50", "p95"))}
    full = rows.sample(2_200_000, replace=True, random_state=2)
    full_design = encode(full, post.encoding)
    t0 = time.perf_counter()
    predictive_summary(post.draws, post.encoding, full_design, max_draws=1000, seed=3)
    full_s = time.perf_counter() - t0
    return {
        "rows": n,
        "draws": 1000,
        "plain_s": round(naive_s, 2),
        "library_s": round(fast_s, 2),
        "speedup": round(naive_s / fast_s, 1),
        "median_abs_diff_in_sd": {k: round(v, 4) for k, v in diff.items()},
        "rows_2_2m_s": round(full_s, 2),
    }


class _Timer:
    """Wall seconds of named phases, and of named functions while ``wrap`` is in force, with the
    CPU seconds the process spent meanwhile (every thread's, user and system: time.process_time)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def add(self, name: str, seconds: float, cpu: float = 0.0) -> None:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 3)
        self.cpu[name] = round(self.cpu.get(name, 0.0) + cpu, 3)

    def table(self) -> list[list]:
        """[phase, seconds] in the order the phases first ran (JSON objects lose it)."""
        return [[k, v] for k, v in self.seconds.items()]

    def cpu_table(self) -> list[list]:
        """[phase, CPU seconds], in the same order."""
        return [[k, self.cpu[k]] for k in self.seconds]

    def phase(self, name: str, fn, *a, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*a, **kw)
        self.add(name, time.perf_counter() - t0, time.process_time() - c0)
        return out

    def wrap(self, module, attr: str, name: str):
        """Time every call of module.attr (and put it back with the returned undo)."""
        original = getattr(module, attr)

        def timed(*a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return original(*a, **kw)
            finally:
                self.add(name, time.perf_counter() - t0, time.process_time() - c0)

        setattr(module, attr, timed)
        return lambda: setattr(module, attr, original)


def profile(args) -> dict:
    """The full-scale refit's work in one process, phase by phase and inside each step:
    reading and validation, the merge and the as-of history, each model's fit (its own
    phases, from its progress messages), judging, the artifact, plots, the hand-off between
    steps (storing each step's value and loading it, as the IO manager does), the prediction
    CSVs. No Dagster and no second process: the orchestration's own cost is full_scale's wall
    time minus the sum of these."""
    from racedayai_bayes.lib.data import contracts, frame as fr, history
    from racedayai_bayes.lib.data.split import split_holdout
    from racedayai_bayes.lib.evaluation.judge import JudgeSettings, judge
    from racedayai_bayes.lib.evaluation.report import judged_plots
    from racedayai_bayes.lib.models.base import MODEL_NAMES, registry
    from racedayai_bayes.lib.outputs.artifacts import write_artifact
    from racedayai_bayes.lib.outputs import stored
    from racedayai_bayes.lib.outputs.io import atomic_path, write_csv_atomic
    from racedayai_bayes.lib.outputs.tables import prediction_table

    folder, _ = _inputs("full")
    t = _Timer()
    undo = [t.wrap(history, "edition_relative", "model_frame: edition-relative times"),
            t.wrap(history, "cumulated_totals", "model_frame: running totals per athlete"),
            t.wrap(fr, "season_table", "model_frame: season table (every start)"),
            t.wrap(fr, "add_history", "model_frame: as-of history per race"),
            t.wrap(fr, "_lookup", "model_frame: join profiles and clusters")]
    total0, cpu0 = time.perf_counter(), time.process_time()
    try:
        races = t.phase("read+validate athlete_race.csv", contracts.read_races, folder / contracts.RACE_FILE).frame
        profiles = t.phase("read+validate athlete_profile.csv", contracts.read_profiles, folder / contracts.PROFILE_FILE).frame
        clusters = t.phase("read+validate cluster_assignments.csv", contracts.read_clusters, folder / contracts.CLUSTER_FILE).frame
        frame, _, seasons = t.phase("model_frame (all)", fr.model_frame_and_seasons, races, profiles, clusters)
    finally:
        for u in undo:
            u()

    store = WORK / "profile_store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)

    def handoff(name, value):
        # what the IO manager does between steps (defs/resources.py): write the stored value
        # atomically (a view of a value loaded here shares its file's bytes), then load it (its
        # arrays mapped from the page cache); the later phases work on the loaded value, as the
        # steps do
        path = store / f"{name.replace(' ', '_')}.pkl"
        previous = stored.source_names(path)
        t0, c0 = time.perf_counter(), time.process_time()
        with atomic_path(path, durable=False) as tmp:  # as the IO manager: no fsync, large values mapped
            stored.dump_file(value, tmp, final=path)
        stored.remove_replaced_links(path, previous)
        t.add(f"hand-off: store {name}", time.perf_counter() - t0, time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        loaded = stored.load(path)
        t.add(f"hand-off: load {name}", time.perf_counter() - t0, time.process_time() - c0)
        sizes[name] = round(path.stat().st_size / 1e6, 1)
        return loaded

    sizes: dict[str, float] = {}
    frame = handoff("model_frame", frame)
    seasons = handoff("athlete_seasons", seasons)
    fits: dict = {}
    out_dir = WORK / "profile_outputs"
    shutil.rmtree(out_dir, ignore_errors=True)
    for distance in fr.MODEL_DISTANCES:
        # the split and its rows' groups, as the holdout_split step makes them before storing it
        split = t.phase(f"{distance} holdout_split", _split_with_groups, split_holdout, fr.distance_rows(frame, distance))
        split = handoff(f"holdout_split {distance}", split)
        for name in MODEL_NAMES:
            marks = []
            t0, c0 = time.perf_counter(), time.process_time()
            fitted = registry()[name].build().fit(split.train, distance,
                                                   progress=lambda m: marks.append((time.perf_counter() - t0, m)))
            t.add(f"{distance} {name}: fit", time.perf_counter() - t0, time.process_time() - c0)
            judged = t.phase(f"{distance} {name}: judge (held-out and in-sample predictions, scores, checks)",
                             judge, fitted, split, JudgeSettings(), None)
            t.phase(f"{distance} {name}: artifact (NetCDF and side tables)", write_artifact, judged, split, out_dir,
                    seasons if name == "forecast" else None)
            t.phase(f"{distance} {name}: plots", judged_plots, judged)
            handoff(f"posterior_{name} {distance}", judged)
            fits[f"{distance} {name}"] = [f"{s:7.2f} s  {m}" for s, m in marks if "steps per chain" not in m
                                          and "sampling " not in m and "warmup " not in m][:12]
            if name == "forecast":
                pred = t.phase(f"{distance} predictions: forecast every row", fitted.predict, split.rows)
                table = t.phase(f"{distance} predictions: table", prediction_table, split.rows, pred, name, split.held_out)
                t.phase(f"{distance} predictions: write CSV", write_csv_atomic, table, out_dir / f"bayesian_predictions_{distance}.csv")
    total, total_cpu = time.perf_counter() - total0, time.process_time() - cpu0
    shutil.rmtree(store, ignore_errors=True)
    return {"seconds": t.table(), "cpu_seconds": t.cpu_table(), "total_s": round(total, 1),
            "total_cpu_s": round(total_cpu, 1), "stored_mb": sizes, "fit_messages": fits}


def _split_with_groups(split_holdout, rows):
    split = split_holdout(rows)
    split.groups  # noqa: B018 (made once, stored with the split: defs/split.py)
    return split


_OPEN_ONLY = """
import sys, time
t0 = time.perf_counter()
from racedayai_bayes import cli  # what the command imports first
from racedayai_bayes.lib.data.contracts import read_start_list
from racedayai_bayes.lib.outputs.artifacts import load_artifact
start = read_start_list(sys.argv[2])  # the command opens the artifact for the start list's athletes
load_artifact(sys.argv[1], athletes=start.athletes["athlete_hash"].dropna())
from racedayai_bayes.lib.processes import exit_now
exit_now(0)  # ends as the command does, without the interpreter's teardown: the two differ by the forecast alone
"""


def forecast_cli(args) -> dict:
    """`racedayai-bayes forecast` of a 3,000-athlete start list from the full-scale published
    70.3 posterior, side by side with a process that only imports the package and opens the
    same artifact: medians of three interleaved repeats, each a fresh process."""
    import statistics

    import numpy as np
    import pyarrow.csv as pacsv

    from racedayai_bayes.lib.outputs.artifacts import artifact_dir

    folder, _ = _inputs("full")
    posterior = WORK / "full_outputs" / "posterior" / "70.3"
    if not (posterior / "latest").exists():
        return {"skipped": "no published full-scale 70.3 posterior: run the full_scale part first"}
    races = pacsv.read_csv(folder / "athlete_race.csv", convert_options=pacsv.ConvertOptions(
        include_columns=["athlete_hash", "gender", "age_group", "event_distance", "event_name"],
        column_types={"event_distance": "string", "athlete_hash": "string"})).to_pandas()
    races = races[races["event_distance"] == "70.3"].dropna(subset=["athlete_hash"])
    event = races["event_name"].value_counts().index[0]
    athletes = races.drop_duplicates("athlete_hash")
    start = athletes.sample(3000, random_state=1)[["athlete_hash", "gender", "age_group"]]
    start_csv = WORK / "start_list_3000.csv"
    start.to_csv(start_csv, index=False)
    artifact = artifact_dir(WORK / "full_outputs", "70.3")
    cmd = [sys.executable, "-m", "racedayai_bayes.cli", "forecast", "--posterior", str(posterior), "--event", event,
           "--start-list", str(start_csv), "--output", str(WORK / "forecast_3000.csv")]
    times = {"forecast_s": [], "import_and_open_s": []}
    for _ in range(3):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        times["forecast_s"].append(time.perf_counter() - t0)
        if done.returncode != 0:
            return {"error": done.stderr[-2000:]}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", _OPEN_ONLY, str(artifact), str(start_csv)], check=True, capture_output=True)
        times["import_and_open_s"].append(time.perf_counter() - t0)
    out_rows = sum(1 for _ in open(WORK / "forecast_3000.csv")) - 1
    med = {k: round(statistics.median(v), 2) for k, v in times.items()}
    return {"athletes": len(start), "rows_out": out_rows, "event": event, "artifact": str(artifact),
            **med, "forecast_only_s": round(med["forecast_s"] - med["import_and_open_s"], 2),
            "runs": {k: [round(x, 2) for x in v] for k, v in times.items()}, "under_2_s": med["forecast_s"] < 2.0}


def _model_frame(folder: Path):
    from racedayai_bayes.lib.data import contracts
    from racedayai_bayes.lib.data.frame import build_model_frame

    frame, _ = build_model_frame(
        contracts.read_races(folder / contracts.RACE_FILE).frame,
        contracts.read_profiles(folder / contracts.PROFILE_FILE).frame,
        contracts.read_clusters(folder / contracts.CLUSTER_FILE).frame,
    )
    return frame


def _refit_lines(title: str, fs: dict) -> list[str]:
    lines = [f"## {title}", "",
             f"| rows | wall s | I/O floor s: {'the lower' if fs.get('io_floor_rule') == 'lower' else 'the mean'} of (before, after) | wall / floor | peak memory MB (process tree: PSS; summed RSS) | ERROR checks | exit |",
             "|---|---|---|---|---|---|---|",
             f"| {fs['rows']:,} | {fs['wall_s']} | {fs['io_floor_s']} ({fs['io_floor_before']['total_s']}, "
             f"{fs['io_floor_after']['total_s']}) | **{fs['floor_ratio']}x** | {fs['peak_rss_mb']:.0f}; {fs.get('peak_rss_summed_mb', float('nan')):.0f} | "
             f"{'all pass' if fs['all_error_checks_passed'] else 'SOME FAILED'} | {fs['exit_code']} |", ""]
    floor_bytes = fs["io_floor_after"].get("bytes")
    if floor_bytes and fs.get("prediction_csv_bytes"):
        quoted = fs["io_floor_after"].get("quoted")
        how = (f"with the values that need quotes quoted ({', '.join(quoted)}: the refit's options refuse them)"
               if quoted else "with the refit's writer options")
        lines += [f"The floor wrote {floor_bytes / 1e6:,.0f} MB of CSV {how}; the refit's "
                  f"prediction CSVs are {fs['prediction_csv_bytes'] / 1e6:,.0f} MB (bench/run.py io_floor).", ""]
    cores = fs.get("machine_cpus") or 1
    if "cpu_system_s" in fs:
        monitor = (f" This bench's memory monitor took {fs['monitor_cpu_s']} CPU s of the machine's {cores} cores meanwhile "
                   "(reading the processes' PSS walks their page tables)." if "monitor_cpu_s" in fs else "")
        if "cpu_sampled_s" not in fs:  # a run before 2026-12-06 ~22:30: each process as last sampled
            how = "each as last sampled every 0.2 s"
        elif fs.get("cpu_through_exit"):
            how = "each through its exit"
        else:  # no subreaper, or a process still running after the refit: some processes are missing
            how = f"the processes this bench could reap (some were not: {fs.get('orphans_left')})"
        lines += [f"CPU of the refit's processes ({how}): {fs['cpu_user_s']} s user, "
                  f"**{fs['cpu_system_s']} s system**.{monitor} "
                  f"Just before it, a new process took {fs['fresh_memory_s_per_gb']} s per GB to write memory "
                  "the machine had not used for 3 s, in 2 MB pages as the step processes' heap and NumPy's large "
                  "arrays get them (" + (
                      f"{fs['fresh_memory_4kb_s_per_gb']} s per GB in 4 KB pages; both after other processes freed "
                      "memory seconds before, so lower bounds of the hour's rates; "
                      if fs.get("fresh_memory_4kb_s_per_gb") is not None else "") +
                  "bench/run.py `fresh_memory_probe`): on this VM, memory "
                  "the host has taken back costs system time at such a rate when a process touches it again "
                  "(0.8 to 14 s per GB, measured on 2026-12-03), and which page size is the dearer changes "
                  "from hour to hour." + (
                      f" The free memory the host had not taken back (lib/pages.py) was {fs['unreported_free_mb_before']:,} MB "
                      "as the refit started." if fs.get("unreported_free_mb_before") is not None else ""), ""]
    window = fs.get("machine_window_s") or fs["wall_s"]
    if fs.get("machine_steal_s") is not None:
        lines += [f"The whole machine during the refit (/proc/stat): **{fs['machine_steal_s']:.1f} CPU s stolen** by the "
                  f"hypervisor for other guests, {fs['machine_idle_s']:.1f} CPU s idle, of {cores * window:.0f} "
                  f"on {fs.get('machine_cpus')} cores. Stolen time is one reason the same code's wall time moves from run "
                  "to run here; contention for the host's caches and memory, which no counter here shows, is another.", ""]
    machine = fs.get("machine_cpu_s")
    if machine and "kernel_threads_cpu_s" in fs:
        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(fs.get("kernel_threads_top", {}).items(), key=lambda kv: -kv[1]))
        lines += [f"By kind, the machine's CPU seconds: {machine.get('user', 0):.1f} user ({machine.get('nice', 0):.1f} more "
                  f"at a lower priority: the later distance's process runs niced), {machine.get('system', 0):.1f} "
                  f"system, {machine.get('iowait', 0):.1f} waiting for the disk, {machine.get('softirq', 0):.1f} soft "
                  f"interrupts. **{fs['kernel_threads_cpu_s']:.1f} s of the system time were the kernel's own threads** "
                  f"({top or 'none'}; a kworker is named by the work queue it served last, so the split is "
                  "approximate): the page cache's writeback and DAMON's reclaim (kdamond), which hands memory back "
                  "to the host, among other work. No process of the refit is charged for them, so the CPU of its "
                  "processes above leaves them out.", ""]
    for distance, d in sorted(fs["models"].items()):
        lines += [f"### {distance}: published **{d['published']}**", "", d["reason"] + ".", "",
                  "| model | fit s | ELPD per row (± SE) | MAE p50 min | MAE pred min | R² | 90% coverage (± SE) | decile coverage | sampler checks |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, m in sorted(d["models"].items()):  # one order, fresh or read back from results.json
            sampler = ", ".join(f"{k} {v}" for k, v in sorted(m["checks"].items()) if k in ("rhat", "ess", "divergences", "proposal"))
            lines.append(f"| {name} | {m['fit_wall_s']} | {m['elpd']:.4f} ± {m['elpd_se']:.4f} | {m['mae_p50_min']} | "
                         f"{m['mae_pred_min']} | {m['r2']} | {m['coverage_90']:.3f} ± {m['coverage_se']:.3f} | "
                         f"{min(m['decile_coverage']):.3f}–{max(m['decile_coverage']):.3f} | {sampler} |")
        v = d["forecast_vs_seed_asof"]
        if v:
            lines += ["", f"forecast against seed_asof on the same {v['rows']:,} rows in {v['editions']} editions: "
                      f"MAE of bayes_p50 x{v['mae_p50_ratio']} ({(1 - v['mae_p50_ratio']) * 100:.0f}% lower), "
                      f"ELPD {v['elpd_diff']:+.4f} per row ± {v['elpd_diff_se']:.4f} (**{v['elpd_diff_in_se']} clustered SEs**).", ""]
    cpu = fs.get("step_cpu_s", {})
    pages = fs.get("step_pages", {})
    lines += ["Per step: wall seconds, and the CPU seconds of its process (user, system; sampled every 0.2 s, "
              "so a slight undercount; `other` is the rest of the tree: the command, the run workers, the step server), "
              "and the pages its fresh memory came in, as it chose once it held its CPU slot (lib/pages.py: 4 KB while the "
              "free memory the host has not taken back, in brackets, is ample; else 2 MB where the allocator asks; blank "
              "for a step that takes no slot, which chose as it started and logged nothing):",
              "", "| step | wall s | user s | system s | pages |", "|---|---|---|---|---|"]
    for k, v in sorted(fs["step_wall_s"].items()):
        u, s = cpu.get(k, ("", ""))
        lines.append(f"| {k} | {v} | {u} | {s} | {pages.get(k, '')} |")
    if "other" in cpu:
        lines.append(f"| other | | {cpu['other'][0]} | {cpu['other'][1]} | |")
    if fs.get("peak_parts_mb"):
        lines += ["", "At the memory peak, each process of the tree (PSS, MB; a step process by its step):", "",
                  "| process | MB |", "|---|---|"]
        lines += [f"| {k} | {v:,} |" for k, v in sorted(fs["peak_parts_mb"].items(), key=lambda x: -x[1]) if v >= 10]
    return lines + [""]


def _write(results: dict) -> None:
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    lines = [f"# Benchmark results ({results.get('date', '')})", "",
             f"Machine: {os.cpu_count()} cores, CPU only. Run with `make bench`.", ""]
    sbs = results.get("side_by_side")
    if sbs:
        s = sbs["settings"]
        lines += [f"## Side by side: the seed model's engines on {s['rows']:,} rows of {s['distance']}, "
                  f"{s['num_warmup']}+{s['num_samples']} x {s['num_chains']} chains", "",
                  "| engine | wall s (fit) | sampling s | max r_hat | min bulk ESS | min ESS/s (fit) | min ESS/s (sampling) | divergences |", "|---|---|---|---|---|---|---|---|"]
        for eng in ("rowwise", "exact", "exact_nuts"):
            if eng not in sbs:
                continue
            r = sbs[eng]
            lines.append(f"| {eng} | {r['wall_s']} | {r['sampling_s']} | {r['max_rhat']} ({r['worst_rhat']}) | {r['min_ess_bulk']} ({r['worst_ess']}) | {r['min_ess_per_s']} | {r.get('min_ess_per_sampling_s', '')} | {r['divergences']} |")
        if "ess_per_s_ratio" in sbs:
            lines += ["", f"min ESS per second, exact / rowwise: **{sbs['ess_per_s_ratio']}x** per second of the whole fit "
                      f"(exact_nuts / rowwise: {sbs.get('exact_nuts_ess_per_s_ratio', '')}x), "
                      f"**{sbs.get('ess_per_sampling_s_ratio', '')}x** per second of sampling. The engines use the seed's settings "
                      "(the NUTS ones at target_accept 0.85), one after the other in one process."]
        lines.append("")
    if results.get("full_scale"):
        lines += _refit_lines("Full scale: `racedayai-bayes refit` on `full` synthetic data (the latest season held out)", results["full_scale"])
    if results.get("backtest"):
        bt = results["backtest"]
        lines += _refit_lines(f"Backtest: the last full season, {bt['season']}, held out (`--holdout-season {bt['season']}`)", bt)
    pf = results.get("profile")
    if pf:
        cpu = dict(pf.get("cpu_seconds") or [])
        in_all = f"{pf['total_s']} s in all" + (f", {pf['total_cpu_s']} CPU s" if "total_cpu_s" in pf else "")
        lines += [f"## Profile: the full-scale refit's work in one process ({in_all})", "",
                  "Each phase's wall seconds (`make bench`'s `profile` part: no Dagster, one process, so these add "
                  "up to the work; full_scale's wall time minus this is orchestration and contention), and the "
                  "CPU seconds of the process meanwhile (every thread's, user and system). One "
                  "exception: inside `model_frame`, the season table is made in a second thread beside the join "
                  "of profiles and clusters (since 2026-12-03 ~13:25), and the threads beside it work on the "
                  "history, so those rows overlap and the `model_frame (all)` row is less than the sum of its parts.", ""]
        fs_cpu = results.get("full_scale", {})
        if "total_cpu_s" in pf and fs_cpu.get("cpu_through_exit"):
            lines += [f"The same work as a refit (full_scale above, its processes through their exits): "
                      f"{fs_cpu['cpu_user_s'] + fs_cpu['cpu_system_s']:.1f} CPU s against {pf['total_cpu_s']} here: "
                      "the difference is what the orchestration, the separate processes and their fresh memory add "
                      "(the two parts may have run in different hours: their dates are in the README).", ""]
        lines += ["| phase | s | CPU s |", "|---|---|---|"]
        phases = pf["seconds"].items() if isinstance(pf["seconds"], dict) else pf["seconds"]  # older files: a dict
        lines += [f"| {k} | {v} | {cpu.get(k, '')} |" for k, v in phases]
        lines += ["", "Stored size of each step's value (MB; the IO manager writes these and maps them on loading, so a "
                  "'load' row times the mapping and unpickling only: the pages are read when first used, from the "
                  "page cache the store just filled; the 'unpickle' rows of runs before 2026-12-03 ~09:30 copied "
                  "every byte; since 2026-12-07 ~20:40 a value that is a view of one stored before it, such as a "
                  "split of the model frame, shares that file's bytes and stores only the rest): "
                  + ", ".join(f"{k} {v}" for k, v in pf["stored_mb"].items()) + ".", "",
                  "Inside each fit (seconds since the fit began, from its progress messages):", ""]
        for k, msgs in pf["fit_messages"].items():
            lines += [f"- {k}:"] + [f"    - `{m.strip()}`" for m in msgs]
        lines.append("")
    dr = results.get("demo_rerun")
    if dr:
        rebuilt = dr.get("rebuilt")
        shown = [("first", dr["first"]), *[("later", r) for r in dr["later"]]]
        shown += [("later, `--rebuild-inputs`", rebuilt)] if rebuilt else []
        lines += ["## A later `make run` on the demo data", "",
                  "`racedayai-bayes refit` in a fresh instance: a first refit, which reads the inputs and builds the "
                  "model frame; two later ones, which are what `make run` costs every time after (the inputs being "
                  "unchanged, they reuse the stored model frame: every model is fitted, judged and published again); "
                  "and one with `--rebuild-inputs`, which reads the inputs again as a refit of changed inputs does:", "",
                  "| refit | inputs | wall s | exit | lines printed |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {'reused' if r.get('inputs_reused') else 'read'} | {r['wall_s']} | {r['exit_code']} | "
                  f"{r['lines']} |" for name, r in shown]
        lines += ["", f"Later refits: {dr['second_run_median_s']} s (target: at most {dr['target_s']} s). "
                  + " ".join(dr["later"][-1]["run_lines"]), ""]
        phased = [r for _, r in shown if r.get("phases_s")]
        if phased:
            lines += ["Where each refit's wall time went (s; from its runs' events): until the first step started "
                      "(the imports, the step server, creating the first run), the distances' runs (from that step to "
                      "the last of them ending), the means run's time beyond them (since 2026-12-04 ~19:40 it starts once "
                      "both distances have stored their posteriors, beside the later run's last steps), and the command's "
                      "end after its last event; the means run's own span beside:", "",
                      "| refit | until the first step | distances' runs | means run beyond them | after the last event | means run |",
                      "|---|---|---|---|---|---|"]
            for name, r in shown:
                ph = r.get("phases_s") or {}
                if ph:
                    lines.append(f"| {name} | {ph['until_first_step']} | {ph['distance_runs']} | "
                                 f"{ph.get('means_after_distance_runs', ph['means_run'])} | {ph['after_last_event']} | "
                                 f"{ph['means_run'] if 'means_after_distance_runs' in ph else '-'} |")
            lines.append("")
    fc = results.get("forecast_cli")
    if fc and "forecast_s" in fc:
        lines += [f"## Race-day forecast from the command line: {fc['athletes']:,} athletes at {fc['event']}", "",
                  "| process | median s (3 runs) |", "|---|---|",
                  f"| `racedayai-bayes forecast` (import, open the artifact, read the start list, forecast, write) | {fc['forecast_s']} |",
                  f"| import the package and open the artifact only | {fc['import_and_open_s']} |", "",
                  (f"The forecast itself: {fc['forecast_only_s']} s. " if fc["forecast_only_s"] >= 0.05 else
                   "The forecast itself: within the noise of the two processes' start-up (their medians differ by "
                   f"{fc['forecast_only_s']} s). ") + f"Under 2 s: {'yes' if fc['under_2_s'] else 'NO'}.", ""]
    var = results.get("variance")
    if var:
        lines += ["## The synthetic world's variance structure against the real one", "",
                  "measured / real (real_variance_structure.json's definitions, on the full world):", "",
                  "| distance | course | day (edition within course) | athlete (2+ races) | race to race | new-course share (2024) |",
                  "|---|---|---|---|---|---|"]
        for d, v in var.items():
            r = v["ratio_to_real"]
            lines.append(f"| {d} | {r['sd_course_mean']} | {r['sd_edition_within_course']} | {r['sd_athlete_mean_resid_2plus']} | "
                         f"{r['sd_within_athlete']} | {v['measured']['share_new_course']:.3f} (real {v['share_new_course_real']}) |")
        lines.append("")
    iv = results.get("intervals")
    if iv:
        lines += [f"## The seed model's predictive quantiles: {iv['rows']:,} rows x {iv['draws']} draws of a 70.3 posterior", "",
                  "| method | s |", "|---|---|",
                  f"| plain: own noise per row and draw, np.quantile | {iv['plain_s']} |",
                  f"| library: stratified shared noise per group combination, float32, order statistics from windows of the draws (a full sort where a row needs it), 2 threads | {iv['library_s']} |", "",
                  f"Speed-up **{iv['speedup']}x**. Median absolute difference between the two, in predictive sd: "
                  + ", ".join(f"{k} {v}" for k, v in iv["median_abs_diff_in_sd"].items())
                  + " (the plain method's own Monte Carlo error is about 0.04-0.07 sd)."
                  f" The library's way on 2.2M rows (the 70.3 CSV): {iv['rows_2_2m_s']} s.", ""]
    TABLE.write_text("\n".join(lines) + "\n")


PARTS = ("side_by_side", "profile", "full_scale", "demo_rerun", "forecast_cli", "backtest", "variance", "intervals")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["all", *PARTS], action="append",
                        help="a part to run (repeat the flag for several; default: all)")
    parser.add_argument("--warmup", type=int, default=1500, help="side_by_side warmup (seed: 1500)")
    parser.add_argument("--samples", type=int, default=1500, help="side_by_side samples (seed: 1500)")
    parser.add_argument("--skip-rowwise", action="store_true", help="side_by_side without the notebook's 20-minute sampler")
    args = parser.parse_args()
    parts = set(PARTS) if not args.part or "all" in args.part else set(args.part)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    # parts written by an older layout of this file are dropped, not mixed in
    if "io_floor_s" not in results.get("full_scale", {"io_floor_s": 0}):
        results = {k: v for k, v in results.items() if k not in ("full_scale", "backtest")}
    results["date"] = dt.date.today().isoformat()
    for part in PARTS:
        if part in parts:
            results[part] = globals()[part](args)
            _write(results)
    print(TABLE.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
