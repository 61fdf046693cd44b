"""Event-log writes of the refit's own processes over SQLite connections kept open.

Dagster's SQLite event log (one database per run, and an index database) opens a new
SQLAlchemy engine and a new SQLite connection for every read and every write, and closes
both after it: an engine without a pool (``NullPool``), made and disposed of per call. A
step writes every one of its events that way, and an asset's events write twice (the run's
database and the index). Measured on this machine (2026-12-07, 300 asset materializations
in a row, 3 alternated repeats): 8.0-9.0 ms of CPU per event as Dagster does it, against
2.3-3.4 ms over a connection kept open; a refit writes about 555 events (full scale or
demo alike), most of them from its step processes.

:func:`keep_event_log_connections` makes ``SqliteEventLogStorage`` keep, per storage object
and database, one engine whose pool holds its connection open between calls, for the few
databases used last (:data:`MAX_DATABASES`: the run's, the index, and another run's now and
then). Everything else stays as Dagster does it: the same statements, in the same
transactions (each call still commits before it returns, so another process reads the event
at once, and the UI's watcher sees the database file change as before: the journal mode is
not changed), under the storage's own lock. SQLite itself serialises writers across
processes, as it did with one connection per call.

It is installed only in the processes the refit command starts: the command itself (its
runs' orchestration) and the step server (every step process forks from it): see
``cli._instance`` and ``step_warmup``. ``dagster dev``'s webserver and daemon, which live long
and read many runs' databases, keep Dagster's own behaviour.

Forks: a connection must not cross a fork (SQLite's own rule). The engines are kept per
process id: a forked child that finds its parent's engines sets them aside, never used or
closed, and opens its own. The step server disposes of the instance it warms before it
forks any step, so there are none to set aside there in practice. ``dispose()`` and
``wipe()`` close this process's connections first (``wipe`` deletes the runs' database
files).

``_connect`` is a private method of Dagster's: this replaces it only where it is, line for
line, the one of the Dagster it was written for (1.13, ``_DAGSTER_CONNECT``). With any other
nothing is installed and every call works as Dagster makes it: this never raises.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections import OrderedDict

MAX_DATABASES = 4  # engines kept open per storage object and process (least recently used closed)

_ATTRIBUTE = "_racedayai_engines"
_SET_ASIDE: list = []  # a forked child's inherited engines: kept referenced, so never closed there


def _own_engines(storage) -> OrderedDict:
    """This process's engines of ``storage``, by database (a forked child starts with none)."""
    kept = storage.__dict__.get(_ATTRIBUTE)
    if kept is None or kept[0] != os.getpid():
        if kept is not None:
            _SET_ASIDE.append(kept[1])  # the parent's: not this process's to use or to close
        kept = (os.getpid(), OrderedDict())
        storage.__dict__[_ATTRIBUTE] = kept
    return kept[1]


def _engine(storage, shard: str):
    import sqlalchemy as db
    from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
    from sqlalchemy.pool import QueuePool

    engines = _own_engines(storage)
    engine = engines.pop(shard, None)
    if engine is None:
        # one connection, kept between calls; the storage's lock lets one call at a time use
        # it (a second checkout could only come from another thread, which waits for the lock)
        engine = db.create_engine(storage.conn_string_for_shard(shard), poolclass=QueuePool, pool_size=1,
                                  max_overflow=2, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                                                                "check_same_thread": False})
    engines[shard] = engine  # the most recently used last
    while len(engines) > MAX_DATABASES:
        engines.popitem(last=False)[1].dispose()
    return engine


def close_kept_connections(storage) -> int:
    """Close this process's kept connections of ``storage``; how many engines were disposed of."""
    kept = storage.__dict__.get(_ATTRIBUTE)
    if kept is None or kept[0] != os.getpid():
        return 0
    engines = kept[1]
    count = len(engines)
    while engines:
        engines.popitem(last=False)[1].dispose()
    return count


# Dagster 1.13's SqliteEventLogStorage._connect, line for line (blank lines and indentation
# aside): the method replaced here. Any other (a later Dagster's) is left as it is.
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
    return [line.strip() for line in source.splitlines() if line.strip()]


def _replaceable(connect) -> bool:
    """Whether ``connect`` is, line for line, the ``_connect`` this module replaces."""
    try:
        source = inspect.getsource(inspect.unwrap(connect))
    except (OSError, TypeError):
        return False
    return _lines(source) == _lines(_DAGSTER_CONNECT)


def keep_event_log_connections() -> bool:
    """Install the module docstring's behaviour in this process (and the processes it forks
    afterwards). True if installed (or already); False if this Dagster's SQLite event log is
    not the expected one (then nothing changes)."""
    try:
        import dagster._check as check
        from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
    except ImportError:
        return False
    if getattr(SqliteEventLogStorage._connect, "_racedayai_kept", False):
        return True
    if not _replaceable(SqliteEventLogStorage._connect):
        return False
    original_dispose, original_wipe = SqliteEventLogStorage.dispose, SqliteEventLogStorage.wipe

    @contextlib.contextmanager
    def _connect(self, shard: str):
        with self._db_lock:
            check.str_param(shard, "shard")
            engine = _engine(self, shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    def dispose(self) -> None:
        with self._db_lock:
            close_kept_connections(self)
        original_dispose(self)

    def wipe(self) -> None:
        with self._db_lock:  # the runs' database files are deleted: no connection may stay open on one
            close_kept_connections(self)
        original_wipe(self)

    _connect._racedayai_kept = True
    SqliteEventLogStorage._connect = _connect
    SqliteEventLogStorage.dispose = dispose
    SqliteEventLogStorage.wipe = wipe
    return True
