"""The SQLite event log's engines made once per database in the refit's own processes.

Dagster's SQLite event log (one database per run, and an index database) makes a new
SQLAlchemy engine for every read and every write, connects through it, and disposes of it
after: parsing the URL, building the dialect, and initialising the dialect on its first
connection again each time. A step writes every one of its events that way, and an asset's
events write twice (the run's database and the index); a refit writes about 555 events,
full scale or demo alike, most of them from its step processes.

:func:`reuse_event_log_engines` makes ``SqliteEventLogStorage`` keep the engine of each
database it uses (per storage object and process, the :data:`MAX_DATABASES` used last) and
nothing else. The engine has no pool, as Dagster's (``NullPool``): every call still opens
its own SQLite connection and closes it before it returns, with the same statements in the
same transaction, under the storage's own lock. So what SQLite does on a connection's close
happens as before: the last connection to a database copies its write-ahead log back into
the database file (Dagster makes every event database a WAL one), which is what the UI's
watcher of a run waits for (it watches the ``.db`` file); no connection is open across a
fork; no statement left unfinished can outlive its call. An engine without a pool holds no
connection, so one made before a fork would even be safe to use after it; a forked child
makes its own anyway (engines are kept per process id).

Measured on this machine (2026-12-07 ~02:50-03:05, a slow hour): Dagster's way took 8.0-9.0
ms of CPU per asset materialization stored (300 in a row, 3 alternated repeats), 4.6-6.9 ms
with the engines kept; later demo refits, alternated on an instance each (4 pairs), took
34.5-38.7 CPU s of the whole machine against 38.7-44.0 s (README, Measured here). On
2026-12-06 ~18:00, a faster hour, the same idea measured 2.0-2.7 ms against 3.9-4.1 ms an
event and no difference in the demo's wall time (5 pairs, which did not measure its CPU).
Keeping the connections open as well (2.3-3.4 ms) was measured and left: the UI's watcher
would no longer see a run's events as they come (no close, so no copy back into the ``.db``
file), a connection open in the refit command when it forks its later distance's process
would share SQLite's in-memory lock state with the child, and a statement left unfinished by
an error would hold an old snapshot on a pooled connection.

It is installed in the refit command and its later distance's process (``cli._instance``),
and in the step server (``step_warmup``, the last module of its preload), which every step
process of a run of the refit job forks from, whoever launched the run (the command, the
schedule, the UI). The webserver, the daemon and a run's own process when the daemon or the
UI launched it keep Dagster's own way.

``_connect`` is a private method of Dagster's: this replaces it only where it is, line for
line, the one of the Dagster it was written for (1.13, ``_DAGSTER_CONNECT``). With any
other, nothing is installed and every call works as Dagster makes it: this never raises.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections import OrderedDict

MAX_DATABASES = 4  # engines kept per storage object and process (the least recently used dropped)

_ATTRIBUTE = "_racedayai_engines"

# Dagster 1.13's SqliteEventLogStorage._connect, line for line: the method replaced here.
_DAGSTER_CONNECT = """
@contextmanager
def _connect(self, shard: str) -> Iterator[Connection]:
    with self._db_lock:
        check.str_param(shard, "shard")

        conn_string = self.conn_string_for_shard(shard)
        engine = create_engine(
            conn_string,
            poolclass=NullPool,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )

        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)

        with engine.connect() as conn:
            with conn.begin():
                yield conn
        engine.dispose()
"""


def _lines(source: str) -> list[str]:
    """The source's lines, dedented as a whole (each line's own indentation kept)."""
    return [line.rstrip() for line in inspect.cleandoc(source).splitlines()]


def _matches(source: str) -> bool:
    """Whether ``source`` is, line for line, the ``_connect`` this module replaces."""
    return _lines(source) == _lines(_DAGSTER_CONNECT)


def _replaceable(connect) -> bool:
    """Whether the function ``connect`` is the ``_connect`` this module replaces."""
    try:
        source = inspect.getsource(inspect.unwrap(connect))
    except (OSError, TypeError, ValueError):
        return False
    return _matches(source)


def _engines(storage) -> OrderedDict:
    """This process's engines of ``storage``, by database (a forked child starts with none)."""
    kept = storage.__dict__.get(_ATTRIBUTE)
    if kept is None or kept[0] != os.getpid():
        kept = (os.getpid(), OrderedDict())
        storage.__dict__[_ATTRIBUTE] = kept
    return kept[1]


def _engine(storage, shard: str, create_engine, null_pool, timeout: float):
    engines = _engines(storage)
    engine = engines.pop(shard, None)
    if engine is None:
        # exactly Dagster's engine: no pool, so nothing stays open between calls
        engine = create_engine(storage.conn_string_for_shard(shard), poolclass=null_pool,
                               connect_args={"timeout": timeout})
    engines[shard] = engine  # the most recently used last
    while len(engines) > MAX_DATABASES:
        engines.popitem(last=False)[1].dispose()
    return engine


def reuse_event_log_engines() -> bool:
    """Install the module docstring's behaviour in this process (and the processes it forks
    afterwards). True if installed (or already); False if this Dagster's SQLite event log is
    not the expected one, or anything else goes wrong (then nothing changes). Never raises:
    the step server's preload calls it, and a preload that raises stops the server."""
    try:
        return _install()
    except Exception:  # noqa: BLE001 - a Dagster that moved things: its own behaviour stays
        return False


def _install() -> bool:
    from dagster._core.storage.event_log.sqlite import sqlite_event_log as module

    storage_class = module.SqliteEventLogStorage
    if getattr(storage_class._connect, "_racedayai_engines", False):
        return True
    if not _replaceable(storage_class._connect):
        return False
    check, create_engine, null_pool = module.check, module.create_engine, module.NullPool
    timeout = module.SQLITE_BUSY_TIMEOUT_SECONDS

    @contextlib.contextmanager
    def _connect(self, shard: str):
        with self._db_lock:
            check.str_param(shard, "shard")
            engine = _engine(self, shard, create_engine, null_pool, timeout)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn
            # the engine is kept, not disposed of: it holds no connection (no pool)

    _connect._racedayai_engines = True
    storage_class._connect = _connect
    return True
