"""The audit log: every decision the guard server answers, on record in a real database.

* :mod:`~latentguard.audit.schema`: the tables, the schema version and the migration of older versions.
* :mod:`~latentguard.audit.store`: :func:`open_store` (SQLite in WAL mode, or PostgreSQL through
  psycopg) and :class:`AuditRow`.
* :mod:`~latentguard.audit.writer`: :class:`GroupCommitWriter`, one commit for the rows of many
  concurrent requests, awaited before each response.
* :mod:`~latentguard.audit.query`: rows, statistics, the dashboard's series, pruning;
  :mod:`~latentguard.audit.export`: JSON Lines and CSV files; :mod:`~latentguard.audit.times`: ``30d``,
  ``2026-12-01T08:00Z``.

The server side (recording decisions from routes, the dashboard) is :mod:`latentguard.guard.serve.audit`
and :mod:`latentguard.guard.serve.dashboard`; the commands are ``latentguard audit export|stats|prune``.
"""

from latentguard.audit.export import export
from latentguard.audit.query import dashboard_data, prune, select_rows, stats
from latentguard.audit.schema import SCHEMA_VERSION, SchemaVersionError
from latentguard.audit.store import AuditRow, AuditStore, AuditStoreError, open_store, prompt_sha256
from latentguard.audit.times import parse_duration, parse_time
from latentguard.audit.writer import AuditWriteError, GroupCommitWriter

__all__ = [
    "SCHEMA_VERSION",
    "AuditRow",
    "AuditStore",
    "AuditStoreError",
    "AuditWriteError",
    "GroupCommitWriter",
    "SchemaVersionError",
    "dashboard_data",
    "export",
    "open_store",
    "parse_duration",
    "parse_time",
    "prompt_sha256",
    "prune",
    "select_rows",
    "stats",
]
