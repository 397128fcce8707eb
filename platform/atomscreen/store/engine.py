"""Database URLs, engines and sessions.

The URL resolves from ``--db``, then ``$ATOMSCREEN_DB``, then the campaign's
``database:``, then ``sqlite:///atomscreen.db``. SQLite connections run in WAL
mode with foreign keys on; a bare file path is taken as a SQLite file and a
``postgresql://`` URL is given the psycopg (v3) driver.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from atomscreen.errors import AtomscreenError

T = TypeVar("T")
DEFAULT_URL = "sqlite:///atomscreen.db"
ENV_VAR = "ATOMSCREEN_DB"


class DatabaseURLError(AtomscreenError, ValueError):
    """A database URL that cannot be used, with the reason and the allowed forms."""


def normalize_url(url: str) -> str:
    """Turn a user-given URL or SQLite file path into a SQLAlchemy URL string."""
    url = url.strip()
    if not url:
        raise DatabaseURLError("empty database URL; use e.g. sqlite:///atomscreen.db or postgresql+psycopg://user@host/db")
    if "://" not in url:
        return f"sqlite:///{url}"
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseURLError(f"cannot parse database URL {url!r}: {exc}") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise DatabaseURLError(f"{url!r} is an in-memory SQLite database: everything stored in it vanishes when the "
                               "command ends; give a file, e.g. sqlite:///atomscreen.db")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise DatabaseURLError(
            f"unsupported database backend {parsed.get_backend_name()!r} in {url!r}; "
            "allowed: sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
        )
    return parsed.render_as_string(hide_password=False)


def resolve_url(cli_url: str | None = None, campaign_url: str | None = None) -> str:
    """The database URL by precedence: --db, $ATOMSCREEN_DB, campaign ``database:``, default."""
    if cli_url is not None and not cli_url.strip():
        raise DatabaseURLError("--db is empty; give a URL such as sqlite:///atomscreen.db, or leave the option out")
    for candidate in (cli_url, os.environ.get(ENV_VAR), campaign_url):
        if candidate:
            return normalize_url(candidate)
    return DEFAULT_URL


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other backends and in-memory databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _sqlite_connect(dbapi_connection, _record) -> None:
    # Let SQLAlchemy, not pysqlite, emit BEGIN (see _sqlite_begin), so DDL is
    # transactional too and a failed migration or write leaves nothing behind.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection) -> None:
    # IMMEDIATE: the write lock is taken at the start, where SQLite waits for it (busy_timeout). A deferred
    # transaction that reads first and then writes gets SQLITE_BUSY at once when another connection holds the lock:
    # SQLite cannot wait there without risking a deadlock.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode, foreign keys and a busy timeout; pooled connections are checked
    before use (a PostgreSQL restart drops them)."""
    url = normalize_url(url)
    kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One session and one transaction: committed on success, rolled back on any error."""
    with session_factory(engine).begin() as session:
        yield session


class DatabaseUnavailable(AtomscreenError):
    """The database stayed locked or unreachable for the whole retry budget."""


# errors a wait can cure: another writer's lock, a restart, a dropped connection (not: disk full, a bad query)
_TRANSIENT = re.compile(r"database is locked|database table is locked|could not connect|connection refused|"
                        r"connection failed|terminating connection|server closed the connection|"
                        r"the database system is (starting up|shutting down|in recovery mode)|"
                        r"connection (is )?closed|consuming input failed|no connection to the server", re.I)


def is_transient(exc: BaseException) -> bool:
    """A database error that waiting and trying again may cure."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return False
    return bool(exc.connection_invalidated or _TRANSIENT.search(str(exc.orig or exc)))


def retry(call: Callable[[], T], what: str, *, budget_s: float = 120.0, first_wait_s: float = 0.5,
          log: Callable[[str], None] = lambda message: None) -> T:
    """``call()``, again after waits of 0.5, 1, 2, ... 8 s while it fails with a transient database error, for at
    most ``budget_s``; then :class:`DatabaseUnavailable`, naming ``what`` was being done and the last error. ``call``
    must be one whole transaction (a failed attempt leaves nothing behind)."""
    start, wait = time.monotonic(), first_wait_s
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            waited, reason = time.monotonic() - start, str(getattr(exc, "orig", None) or exc).strip()
            if waited + wait > budget_s:
                raise DatabaseUnavailable(f"{what}: the database was unavailable for {waited:.0f} s ({reason})"
                                          ) from None
            log(f"{what}: database unavailable ({reason[:80]}); trying again in {wait:g} s")
            time.sleep(wait)
            wait = min(2 * wait, 8.0)

