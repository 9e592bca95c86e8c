"""Audit-database fixtures shared by the audit tests: a SQLite file, and PostgreSQL when one is given.

PostgreSQL runs when ``LATENTGUARD_TEST_POSTGRES_URL`` names a database the tests may empty
(``.ci/postgres start`` prints one); otherwise those cases skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from latentguard.audit.schema import metadata
from latentguard.audit.store import normalize_url

PG_URL = os.environ.get("LATENTGUARD_TEST_POSTGRES_URL")


def reset_postgres(url: str) -> None:
    """Drop the audit tables."""
    engine = sa.create_engine(normalize_url(url))
    try:
        metadata.drop_all(engine)
    finally:
        engine.dispose()


def postgres_url_or_skip() -> str:
    if not PG_URL:
        pytest.skip("set LATENTGUARD_TEST_POSTGRES_URL (e.g. from .ci/postgres start) to test PostgreSQL")
    return PG_URL


@pytest.fixture(name="db_url", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def audit_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty audit database: a SQLite file, then the PostgreSQL test database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    url = postgres_url_or_skip()
    reset_postgres(url)
    yield url
    reset_postgres(url)
