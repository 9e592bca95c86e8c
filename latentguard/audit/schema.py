"""The audit log's tables, its schema version, and the migration of older versions.

Two tables, in SQLAlchemy Core:

* ``latentguard_schema``: one row, the schema ``version`` (:data:`SCHEMA_VERSION`).
* ``latentguard_decisions``: one row per decision (one prompt of one request); ``(request_id, item)`` is
  unique, so a decision can never be recorded twice.

History of the version:

* 1: the first layout, without ``client`` (the token hash), ``latency_ms`` and ``error``.
* 2: adds them (the current version).

:func:`prepare` creates the tables in an empty database, migrates an older version (adding the columns
with Alembic's operations, no hand-written DDL) and refuses a newer one.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = [
    "SCHEMA_VERSION",
    "SchemaVersionError",
    "decisions",
    "metadata",
    "prepare",
    "schema_version",
    "version_table",
]

#: The schema version this code writes.
SCHEMA_VERSION = 2

metadata = sa.MetaData()

version_table = sa.Table(
    "latentguard_schema",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER keys only

decisions = sa.Table(
    "latentguard_decisions",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("item", sa.Integer, nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("route", sa.String(128), nullable=False),
    sa.Column("client", sa.String(64)),
    sa.Column("prompt_sha256", sa.String(64), nullable=False),
    sa.Column("prompt", sa.Text),
    sa.Column("score", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("harmful", sa.Boolean, nullable=False),
    sa.Column("policy", sa.String(16)),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("guard_id", sa.String(64)),
    sa.Column("model_fingerprint", sa.String(128)),
    sa.Column("latency_ms", sa.Float),
    sa.Column("error", sa.Text),
    sa.UniqueConstraint("request_id", "item", name="uq_latentguard_decisions_request_item"),
)

#: Columns added by each version (the migration from ``version - 1``).
_ADDED: dict[int, tuple[str, ...]] = {2: ("client", "latency_ms", "error")}


class SchemaVersionError(Exception):
    """The database holds a schema this code cannot use (newer, or unrecognised)."""


def schema_version(conn: Connection) -> int | None:
    """The database's schema version.

    Args:
        conn: A connection.

    Returns:
        The version, or ``None`` when the database holds no audit tables.

    Raises:
        SchemaVersionError: If the decisions table exists without a version.
    """
    inspector = sa.inspect(conn)
    if not inspector.has_table(version_table.name):
        if inspector.has_table(decisions.name):
            raise SchemaVersionError(f"table {decisions.name} exists without a schema version")
        return None
    version = conn.execute(sa.select(sa.func.max(version_table.c.version))).scalar()
    if version is None:
        raise SchemaVersionError(f"table {version_table.name} is empty")
    return int(version)


def _migrate(conn: Connection, found: int) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    ops = Operations(MigrationContext.configure(conn))
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for name in _ADDED.get(version, ()):
            column = decisions.c[name]
            ops.add_column(decisions.name, sa.Column(name, column.type, nullable=True))
    conn.execute(version_table.update().values(version=SCHEMA_VERSION))


def prepare(conn: Connection, *, create: bool = True) -> int | None:
    """Make the database hold the current schema: create, migrate, or refuse.

    Runs inside the caller's transaction; it ends with a write (the version row), so a read-only
    database fails here rather than on the first decision.

    Args:
        conn: A connection in a transaction.
        create: Create the tables in a database without them (else that is an error).

    Returns:
        The version found (``None`` for a new database).

    Raises:
        SchemaVersionError: If the database's schema is newer than :data:`SCHEMA_VERSION`, or it holds
            no audit log and ``create`` is false.
    """
    found = schema_version(conn)
    if found is None and not create:
        raise SchemaVersionError("it holds no audit log (no latentguard tables)")
    if found is None:
        metadata.create_all(conn)
        conn.execute(version_table.insert().values(version=SCHEMA_VERSION))
        return None
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the audit database has schema version {found}, newer than this latentguard's "
            f"{SCHEMA_VERSION}: upgrade latentguard, or use another database"
        )
    if found < SCHEMA_VERSION:
        _migrate(conn, found)
    else:
        conn.execute(version_table.update().values(version=SCHEMA_VERSION))  # the write check
    return found
