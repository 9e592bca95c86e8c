"""The audit database: opening it (:func:`open_store`), and writing decisions in one commit each batch.

URL forms (SQLAlchemy URLs):

* ``sqlite:///path/audit.db`` (a bare path means the same): a file in WAL mode with
  ``synchronous=FULL``, so a committed row survives the process being killed. ``?timeout=S`` sets how
  long a writer waits for a lock (default 5 s).
* ``postgresql://user@host/db``: a PostgreSQL server, through psycopg 3 (``postgresql+psycopg://``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from latentguard.audit.schema import SchemaVersionError, decisions, prepare

logger = logging.getLogger(__name__)

__all__ = [
    "AuditRow",
    "AuditStore",
    "AuditStoreError",
    "clean_text",
    "display_url",
    "normalize_url",
    "open_store",
    "prompt_sha256",
]


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL (PostgreSQL refuses it) and lone surrogates


class AuditStoreError(Exception):
    """The audit database cannot be opened, used or written (one-line message, no password)."""


@dataclass(frozen=True, kw_only=True)
class AuditRow:
    """One recorded decision (a row of ``latentguard_decisions``).

    Attributes:
        request_id: The request's id (the ``X-Request-ID`` of its response).
        item: The prompt's position in the request.
        ts: When the decision was made (UTC).
        route: The route that answered, e.g. ``/v1/classify``.
        client: Hash of the client's bearer token, or ``None``.
        prompt_sha256: SHA-256 of the prompt (UTF-8).
        prompt: The prompt text (only with ``--audit-store-text``).
        score: The guard score.
        threshold: The guard's threshold.
        harmful: The verdict.
        policy: The generation policy, when there is one.
        action: What the server did: ``allow``, ``flag`` or ``block``.
        guard_id: Id of the guard (hash of its description).
        model_fingerprint: The model's fingerprint.
        latency_ms: Time from the request's arrival to the decision.
        error: Set when the guard failed and the decision failed closed.
    """

    request_id: str
    item: int
    ts: datetime
    route: str
    client: str | None
    prompt_sha256: str
    prompt: str | None
    score: float | None
    threshold: float | None
    harmful: bool
    policy: str | None
    action: str
    guard_id: str | None
    model_fingerprint: str | None
    latency_ms: float | None
    error: str | None


def prompt_sha256(prompt: str) -> str:
    """SHA-256 (hex) of a prompt's UTF-8 bytes (lone surrogates as they were sent).

    Args:
        prompt: The prompt.

    Returns:
        64 hex digits.
    """
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()


def clean_text(text: str) -> str:
    """Text any database stores: lone surrogates and NUL become U+FFFD.

    Args:
        text: The text.

    Returns:
        The storable text.
    """
    return _UNSTORABLE.sub("\ufffd", text)


def normalize_url(url: str) -> URL:
    """The SQLAlchemy URL of an audit database.

    Args:
        url: ``sqlite:///path``, ``postgresql://...`` (psycopg 3 is used), another SQLAlchemy URL, or a
            bare file path (SQLite).

    Returns:
        The URL.

    Raises:
        AuditStoreError: If the URL cannot be parsed.
    """
    text = url.strip()
    if "://" not in text:
        text = f"sqlite:///{text}"
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError) as exc:
        raise AuditStoreError(f"not a database URL: {url!r}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def display_url(url: URL) -> str:
    """``url`` without its password, for messages."""
    return url.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if not database or database == ":memory:":
            raise AuditStoreError("the audit database must be a file (sqlite:///path/audit.db)")
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise AuditStoreError(f"folder {parent} does not exist")
        timeout = float(url.query.get("timeout", 5.0))  # type: ignore[arg-type]
        engine = sa.create_engine(
            url.difference_update_query(["timeout"]),
            connect_args={"check_same_thread": False, "timeout": timeout},
        )
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


class AuditStore:
    """An open audit database. Thread safe: each call uses its own pooled connection.

    Attributes:
        url: The database URL.
        engine: The SQLAlchemy engine.
    """

    def __init__(self, url: URL, engine: Engine) -> None:
        """Wrap an engine whose database holds the current schema (see :func:`open_store`).

        Args:
            url: The database URL.
            engine: Its engine.
        """
        self.url = url
        self.engine = engine

    @property
    def name(self) -> str:
        """The URL without password."""
        return display_url(self.url)

    def insert(self, rows: Sequence[AuditRow]) -> None:
        """Insert rows and commit them, all in one transaction.

        Args:
            rows: The rows.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: If the database fails; nothing is committed.
        """
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(decisions.insert(), [asdict(r) for r in rows])

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return text[0] if text else type(inner).__name__


def open_store(url: str, *, create: bool = True) -> AuditStore:
    """Open (and if needed create or migrate) an audit database, checking that it can be written.

    Args:
        url: The database URL (see the module docs).
        create: Create the audit log in a database without one (the server); without it such a
            database is an error (the ``audit`` commands, so a mistyped path creates nothing).

    Returns:
        The store.

    Raises:
        AuditStoreError: If the database is unreachable, unwritable, or holds a newer schema.
    """
    parsed = normalize_url(url)
    name = display_url(parsed)
    try:
        if not create and parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
            raise AuditStoreError(f"no such file: {parsed.database}")
        engine = _engine(parsed)
    except AuditStoreError as exc:
        raise AuditStoreError(f"audit database {name} is not usable: {exc}") from exc
    except (SQLAlchemyError, ImportError, ValueError) as exc:  # e.g. a bad ?timeout=
        raise AuditStoreError(f"audit database {name} is not usable: {_first_line(exc)}") from exc
    try:
        with engine.begin() as conn:
            found = prepare(conn, create=create)
    except SchemaVersionError as exc:
        engine.dispose()
        raise AuditStoreError(f"audit database {name}: {exc}") from exc
    except (SQLAlchemyError, OSError) as exc:
        engine.dispose()
        raise AuditStoreError(f"audit database {name} is not usable: {_first_line(exc)}") from exc
    if found is None:
        logger.info("Created the audit log in %s", name)
    else:
        logger.info("Appending to the audit log in %s (schema version %d found)", name, found)
    return AuditStore(parsed, engine)
