"""The review database's engines: one per process per URL (SQLite set up for safe concurrent writes), the
per-URL writer locks, and the Alembic migrations run under a cross-process lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

__all__ = ["BUSY_TIMEOUT_MS", "MIGRATIONS_DIR", "alembic_config", "default_url", "migrate", "shared_engine",
           "writer_lock"]

BUSY_TIMEOUT_MS = 30_000
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def default_url() -> str:
    """``$XAI_DB_URL``, else ``sqlite:///<$XAI_DATA_DIR or ./data>/review.sqlite3``."""
    url = os.environ.get("XAI_DB_URL")
    if url:
        return url
    data_dir = Path(os.environ.get("XAI_DATA_DIR") or Path.cwd() / "data")
    return f"sqlite:///{(data_dir / 'review.sqlite3').resolve()}"


_ENGINES: dict[str, tuple[int, Engine]] = {}
_ENGINES_LOCK = threading.Lock()


def _sqlite_setup(engine: Engine) -> None:
    """WAL, FULL sync, busy timeout, foreign keys; BEGIN (IMMEDIATE for writes) issued by us."""

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN handling off: see _on_begin
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def shared_engine(url: str) -> Engine:
    """The process's engine for ``url``, created (and the schema migrated) on first use.

    A forked child does not reuse its parent's engine: the inherited pool is dropped without closing the
    parent's connections (``dispose(close=False)``, as SQLAlchemy prescribes after ``fork``)."""
    with _ENGINES_LOCK:
        pid, engine = _ENGINES.get(url, (None, None))
        if engine is not None and pid != os.getpid():
            engine.dispose(close=False)
            engine = None
        if engine is None:
            parsed = sa.make_url(url)
            if parsed.get_backend_name() == "sqlite":
                database = parsed.database
                if database and database != ":memory:":
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
                _sqlite_setup(engine)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True)
            migrate(engine)
            _ENGINES[url] = (os.getpid(), engine)
        return engine


_WRITER_LOCKS: dict[str, threading.Lock] = {}


def writer_lock(url: str) -> threading.Lock:
    with _ENGINES_LOCK:
        return _WRITER_LOCKS.setdefault(url, threading.Lock())


@contextlib.contextmanager
def _migration_lock(engine: Engine, connection: Connection) -> Iterator[None]:
    """One migrator at a time across processes: a file lock beside a SQLite file, an advisory lock on
    PostgreSQL (other back ends rely on their own DDL locking)."""
    backend = engine.url.get_backend_name()
    database = engine.url.database
    if backend == "sqlite" and database and database != ":memory:":
        with open(f"{database}.migrate.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif backend == "postgresql":
        key = 0x5845_4149_5245_56  # "XAIREV"
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
        connection.commit()
        try:
            yield
        finally:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
            connection.commit()
    else:
        yield


def alembic_config() -> Any:
    """An Alembic ``Config`` built in code for the migrations shipped in this package (no alembic.ini)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine, revision: str = "head", *, downgrade: bool = False) -> None:
    """Upgrade (or, with ``downgrade=True``, downgrade) the schema to ``revision`` under the migration lock."""
    from alembic import command

    config = alembic_config()
    with engine.connect() as connection, _migration_lock(engine, connection):
        config.attributes["connection"] = connection
        (command.downgrade if downgrade else command.upgrade)(config, revision)
        connection.commit()

