"""The server the multiprocess executor forks step processes from, and what it preloads.

Steps run in their own processes, at most two heavy ones at once (the machine has 2 cores). They fork
from a server that has already imported the code location and what its steps import lazily
(ArviZ, SciPy's stats, the NetCDF writer, the plots, the models' modules, and what opens the
Dagster instance): seconds of imports paid once per command instead of in every step. The
code location itself imports none of the heavy ones, so the command line, the code server
and the daemon stay light. JAX and NumPyro are not preloaded: only the NUTS engines
(``exact_nuts``, ``rowwise``) use them, a step that runs one imports them itself (about 2 s),
and the default engines are numpy. No Dagster import here: the command line starts the
server before it imports Dagster itself, so that the two imports overlap on the machine's
two cores. A later distance's process of the same command forks its steps from this same
server: forked from the command, it adopts the server it inherited (:func:`adopt_step_server`);
started as a new interpreter, it joins the one shared with it (:func:`share_step_server`,
:func:`join_step_server`).
"""

from __future__ import annotations

STEP_PRELOAD = [
    # first: the garbage collector off until step_warmup, last, freezes what the preload made
    "racedayai_bayes.step_gc",
    # every step process chooses the page size of its fresh memory as it starts (lib/pages.py)
    "racedayai_bayes.step_pages",
    # Dagster's multiprocess executor preloads this module first unless the list has it: here
    # it is in the list, after step_gc and step_pages, so the executor's list and the command's are this one
    "dagster._core.executor.multiprocess",
    "racedayai_bayes.definitions",
    "arviz",
    "scipy.stats",
    # the artifacts' NetCDF library (lib/outputs/artifacts.NETCDF_ENGINE) and xarray's backend
    # for it, and h5py, which reads an artifact's groups and attributes
    "netCDF4",
    "xarray.backends.netCDF4_",
    "h5py",
    "racedayai_bayes.lib.evaluation.report",
    "racedayai_bayes.lib.evaluation.plots",
    "racedayai_bayes.lib.models.seed.exact",
    "racedayai_bayes.lib.models.forecast.fit",
    "racedayai_bayes.lib.outputs.artifacts",
    # what a posterior step imported itself when measured (2026-12-03): the seed's plots, the
    # artifact's Parquet side tables (and scikit-learn's metrics until 2026-12-04, 0.3 s:
    # the harness computes them itself now, lib/evaluation/diagnostics.point_metrics)
    "racedayai_bayes.lib.models.seed.plots",
    "pyarrow.parquet",
    "pyarrow.dataset",
    # what a step process imports to open the Dagster instance (SQLite storages, their
    # Alembic revision check, the instance factory): about 0.5 s of every step otherwise.
    # A name a later Dagster no longer has is skipped (the forkserver ignores ImportError).
    "sqlalchemy.dialects.sqlite",
    "alembic.script",
    "alembic.runtime.migration",
    "dagster._core.instance.factory",
    "dagster._core.secrets.env_file",
    "dagster._core.storage.root",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.schedules.sqlite",
    "dagster._core.storage.local_compute_log_manager",
    "dagster._core.run_coordinator",
    "dagster._daemon",
    "dagster._scheduler",
    "upath.implementations.local",
    # last: open the instance once and read from its storages, so that no step pays the
    # first SQLAlchemy statement's one-time cost (racedayai_bayes/step_warmup.py)
    "racedayai_bayes.step_warmup",
]


# glibc's allocator in the step server, and so in every step process forked from it (they
# inherit its state): keep freed memory for the next allocation instead of giving it back.
# By default every block over 32 MB (a column of 4M float64s is 32 MB) is a fresh mmap, so a
# step that makes and drops such arrays gets fresh pages from the kernel each time, each page
# faulted in and zeroed: on this VM that system time was a third of a full-scale refit's CPU
# (54 of 157 s at ~13:26), and 30 alloc/free cycles of 160 MB took 3.6 s against 0.6 s kept
# (2026-12-03). Full scale, alternating off and on: 131-132 s against 104-116 s, system CPU
# 66-72 s against 46-47 s (README). A step's memory then stays at its own peak until it
# exits (peak 3.6 GB summed PSS against 2.9-3.0).
# And transparent huge pages for the heap (glibc.malloc.hugetlb=1: glibc asks the kernel for
# 2 MB pages with madvise, which a kernel whose THP mode is "madvise" honours): the first touch
# of 1 GB of fresh memory took 5.6-7.9 s in 4 KB pages and 0.17-0.25 s in 2 MB pages here (a
# Firecracker VM whose balloon takes freed pages back; 2026-12-03 ~19:00). On 2026-12-07
# ~13:40-14:20 it was the reverse, 0.4-0.5 s against 5.7-9.9 s (and 0.5 against 1.4-1.7 s on
# 2026-12-06), and whole refits alternated with 4 KB pages everywhere (this and NumPy's own,
# NUMPY_MADVISE_HUGEPAGE=0) were within the noise on 2026-12-06 and 2026-12-07 (README,
# Measured here): the setting stays. Since 2026-12-07 ~16:00 each step process also chooses
# for itself as it starts (lib/pages.py, step_pages): 4 KB pages while the free memory the host
# has not taken back is ample (only small pages can come from it, and what this VM's kernel
# hands back is dear to touch in either size), else 2 MB pages where asked, as set here.
# Arrow allocates through glibc too (ARROW_DEFAULT_MEMORY_POOL=system, not its bundled
# mimalloc), so that its buffers get the same pages: reading and checking athlete_race.csv at
# full scale took 2.7-2.9 s so, against 4.6-5.4 s with mimalloc and 6.2-9.4 s with neither.
# A setting already in the environment wins: MALLOC_MMAP_MAX_=65536
# MALLOC_TRIM_THRESHOLD_=131072 GLIBC_TUNABLES=glibc.malloc.hugetlb=0 are glibc's defaults,
# ARROW_DEFAULT_MEMORY_POOL=mimalloc is Arrow's.
STEP_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
                   "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", "ARROW_DEFAULT_MEMORY_POOL": "system"}


def start_step_server() -> None:
    """Start this process's forkserver now, with the executor's preload list and
    :data:`STEP_MALLOC_ENV`.

    The executor later sets the same list and finds the server running. Started inside the
    command's stderr redirection, the server's import warnings go to the refit's log file.
    """
    import multiprocessing
    import os
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(STEP_PRELOAD))
    added = [k for k in STEP_MALLOC_ENV if k not in os.environ]
    os.environ.update({k: STEP_MALLOC_ENV[k] for k in added})  # read by the server's allocator as it starts
    try:
        forkserver.ensure_running()
    finally:
        for k in added:
            os.environ.pop(k, None)  # this process's other children keep the defaults


# How a later distance's process (``refit --after``) finds the first process's server: the
# server's pid, the write end of its "alive" pipe (inherited) and its socket address.
SHARED_SERVER_ENV = "RACEDAYAI_STEP_SERVER"


def share_step_server() -> tuple[dict[str, str], int]:
    """The environment entry and the file descriptor that let a child process of this one
    fork its step processes from this process's server (see :func:`join_step_server`).

    The child must inherit the descriptor (``pass_fds``): the server runs as long as any
    holder of it lives, as it does for this process's own steps.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    server.ensure_running()
    fd = server._forkserver_alive_fd
    return {SHARED_SERVER_ENV: f"{server._forkserver_pid}:{fd}:{server._forkserver_address}"}, fd


def join_step_server() -> bool:
    """Fork this process's steps from the server its parent shared (:func:`share_step_server`),
    instead of starting a second one: a second server would import everything again (about
    7 s of CPU on this machine) while the first run's steps need the cores. False if the
    parent shared none, or it has gone; the process then starts a server of its own as usual.

    The standard library's forkserver client (CPython 3.11-3.13) keeps the server's address
    and alive pipe, and starts a server when it has not started one itself. This sets the
    first two, and replaces its "ensure running" with one that starts only the resource
    tracker (which every process keeps for itself) while the shared server lives, and a
    server of this process's own once it has gone (killed, say): a step then reaches the
    server exactly as the parent's steps do. The environment entry is removed either way.
    """
    import os
    import sys

    from racedayai_bayes.lib.processes import alive

    value = os.environ.pop(SHARED_SERVER_ENV, "")
    pid_text, _, rest = value.partition(":")
    fd_text, _, address = rest.partition(":")
    # 3.14's forkserver authenticates its clients with a key this process does not have
    if sys.version_info >= (3, 14) or not (pid_text.isdigit() and fd_text.isdigit() and address):
        return False
    pid, fd = int(pid_text), int(fd_text)
    if not os.path.exists(address) or not alive(pid):
        return False
    try:
        os.fstat(fd)
    except OSError:
        return False
    _use_server(pid, fd, address)
    return True


def adopt_step_server() -> bool:
    """In a process forked (``os.fork``) from one that started a step server: fork this
    process's steps from that server too. The fork inherited the server's address and the
    alive pipe; only the standard library's "ensure running" must change, since it waits on
    the server as on a child of its own, and the server is the parent's child. False if the
    parent had no server."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    pid, fd, address = server._forkserver_pid, server._forkserver_alive_fd, server._forkserver_address
    if pid is None or fd is None or not address:
        return False
    _use_server(pid, fd, address)
    return True


def _use_server(pid: int, fd: int, address: str) -> None:
    """Fork this process's steps from the server ``pid`` (alive pipe ``fd``, socket
    ``address``) while it lives, and from a server of this process's own once it has gone."""
    from multiprocessing import forkserver, resource_tracker

    from racedayai_bayes.lib.processes import alive

    server = forkserver._forkserver

    def ensure_running() -> None:
        resource_tracker.ensure_running()
        if alive(pid):
            return
        # the shared server is gone: from now on, a server of this process's own, started
        # as the first process's was (its preload list and allocator settings)
        del server.ensure_running  # the standard method again
        with server._lock:
            server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
        start_step_server()

    with server._lock:
        server._forkserver_address = address
        server._forkserver_alive_fd = fd
        server._forkserver_pid = None  # not this process's child: the standard method must not wait on it
    server.ensure_running = ensure_running


def stop_step_server() -> None:
    """Stop this process's step server now. A server that is still importing its preload
    list would otherwise go on for seconds after the command has ended (it notices that its
    parent has gone only once it serves); nothing is lost, as no step has started."""
    import os
    import signal
    from multiprocessing import forkserver

    server = forkserver._forkserver
    with server._lock:
        pid = server._forkserver_pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        server._stop_unlocked()  # closes its pipe, reaps it, removes its socket


def in_step_server() -> bool:
    """Whether this import is the step server's preload (the standard library's
    ``multiprocessing.forkserver.main`` is importing it), not another import of the module."""
    import sys

    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "main" and frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            return True
        frame = frame.f_back
    return False
