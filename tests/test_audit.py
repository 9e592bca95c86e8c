"""The audit log: store, schema versions, queries and commands, and the server recording decisions."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from audit_db import audit_database, postgres_url_or_skip, reset_postgres  # noqa: F401  (audit_database: the db_url fixture)
from fastapi import Request
from test_serve import TOKEN, FakeBackend, client_for, parse_metrics, running_server

from latentguard.audit import (
    SCHEMA_VERSION,
    AuditRow,
    AuditStoreError,
    dashboard_data,
    export,
    open_store,
    parse_duration,
    parse_time,
    prompt_sha256,
    prune,
    select_rows,
    stats,
)
from latentguard.audit.schema import decisions, version_table
from latentguard.audit.store import normalize_url
from latentguard.cli.main import main
from latentguard.guard.serve import ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[1]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def row(
    i: int, *, ts: datetime | None = None, score: float = 0.1, harmful: bool = False, **kw: Any
) -> AuditRow:
    fields: dict[str, Any] = dict(
        request_id=f"req{i:04d}",
        item=0,
        ts=ts or datetime.now(timezone.utc),
        route="/v1/classify",
        client=None,
        prompt_sha256=prompt_sha256(f"prompt {i}"),
        prompt=None,
        score=score,
        threshold=0.5,
        harmful=harmful,
        policy=None,
        action="flag" if harmful else "allow",
        guard_id="g1",
        model_fingerprint="fp1",
        latency_ms=float(i),
        error=None,
    )
    fields.update(kw)
    return AuditRow(**fields)


def audit_client(url: str, backend: Any | None = None, **config: Any) -> Any:
    return client_for(backend, audit_db=url, **config)


# ------------------------------------------------------------------------------------------------------
# Store, schema, queries
# ------------------------------------------------------------------------------------------------------


def test_url_forms() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("/tmp/a.db").render_as_string() == "sqlite:////tmp/a.db"
    assert normalize_url("sqlite:///rel.db").database == "rel.db"
    with pytest.raises(AuditStoreError):
        normalize_url("postgresql://u@h:port/db")


def test_sqlite_is_wal_and_durable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    store.insert([row(1)])
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()


def test_insert_query_export_stats_prune(db_url: str, tmp_path: Path) -> None:
    store = open_store(db_url)
    now = datetime.now(timezone.utc)
    rows = [
        row(0, ts=now - timedelta(days=40), score=0.9, harmful=True),
        row(1, ts=now - timedelta(hours=2), score=0.52, harmful=True, prompt="kept text"),
        row(2, ts=now - timedelta(minutes=5), score=0.47),
        row(3, ts=now, score=0.1, error="guard backend error"),
    ]
    store.insert(rows)
    with pytest.raises(sa.exc.IntegrityError):  # (request_id, item) is unique: never twice
        store.insert([row(2)])
    got = list(select_rows(store))
    assert [r["request_id"] for r in got] == ["req0000", "req0001", "req0002", "req0003"]
    assert got[1]["prompt"] == "kept text" and got[0]["prompt"] is None
    assert got[0]["ts"].endswith("Z")
    assert [r["request_id"] for r in select_rows(store, flagged=True)] == ["req0000", "req0001"]
    recent = select_rows(store, since=now - timedelta(hours=3), until=now - timedelta(minutes=1))
    assert [r["request_id"] for r in recent] == ["req0001", "req0002"]

    s = stats(store)
    assert (s["decisions"], s["flagged"], s["errors"]) == (4, 2, 1)
    assert s["flag_rate"] == 0.5
    assert s["near_threshold"] == {"within_0.01": 0, "within_0.05": 2, "within_0.1": 2}
    assert sum(h["decisions"] for h in s["per_hour"]) == 4 and len(s["per_hour"]) >= 3
    assert s["score_quantiles"]["p50"] == 0.47 and s["by_route"] == {"/v1/classify": 4}
    json.dumps(s, allow_nan=False)

    n = export(store, tmp_path / "all.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert n == 4 and [x["request_id"] for x in lines] == ["req0000", "req0001", "req0002", "req0003"]
    assert export(store, tmp_path / "flagged.csv", flagged=True) == 2
    with (tmp_path / "flagged.csv").open() as fh:
        assert [r["score"] for r in csv.DictReader(fh)] == ["0.9", "0.52"]
    with pytest.raises(ValueError):
        export(store, tmp_path / "x.txt")

    data = dashboard_data(store, hours=3, bucket_s=600)
    assert data["decisions"] == 3 and data["threshold"] == 0.5
    assert sum(data["histogram"]["counts"]) == 3
    assert [r["request_id"] for r in data["recent_flagged"]] == ["req0001", "req0000"]

    assert prune(store, parse_duration("30d")) == 1
    assert [r["request_id"] for r in select_rows(store)] == ["req0001", "req0002", "req0003"]
    store.close()


def test_times_and_durations() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_time("2026-12-01T08:00Z") == datetime(2026, 12, 1, 8, tzinfo=timezone.utc)
    assert parse_time("2026-12-01T09:00+01:00") == datetime(2026, 12, 1, 8, tzinfo=timezone.utc)
    assert parse_time("2026-12-01") == datetime(2026, 12, 1, tzinfo=timezone.utc)
    now = datetime(2026, 12, 2, tzinfo=timezone.utc)
    assert parse_time("24h", now=now) == datetime(2026, 12, 1, tzinfo=timezone.utc)
    for bad in ("yesterday", "30x", ""):
        with pytest.raises(ValueError):
            parse_time(bad) if bad != "30x" else parse_duration(bad)


V1 = sa.MetaData()
V1_DECISIONS = sa.Table(
    decisions.name,
    V1,
    *(
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in decisions.columns
        if c.name not in ("client", "latency_ms", "error")
    ),
)
V1_VERSION = sa.Table(version_table.name, V1, sa.Column("version", sa.Integer, nullable=False))


def _set_up_version(url: str, version: int) -> None:
    engine = sa.create_engine(normalize_url(url))
    with engine.begin() as conn:
        V1.create_all(conn)
        conn.execute(V1_VERSION.insert().values(version=version))
        if version == 1:
            conn.execute(
                V1_DECISIONS.insert().values(
                    request_id="old",
                    item=0,
                    ts=datetime(2026, 1, 1, tzinfo=timezone.utc),
                    route="/v1/classify",
                    prompt_sha256="0" * 64,
                    harmful=True,
                    action="flag",
                )
            )
    engine.dispose()


def test_older_schema_is_migrated(db_url: str) -> None:
    _set_up_version(db_url, 1)
    store = open_store(db_url)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(version_table.c.version)).scalar() == SCHEMA_VERSION
    store.insert([row(5, latency_ms=3.0, client="abc", error="e")])
    got = list(select_rows(store))
    assert [r["request_id"] for r in got] == ["old", "req0005"]
    assert got[0]["latency_ms"] is None and got[1]["latency_ms"] == 3.0 and got[1]["client"] == "abc"
    store.close()
    open_store(db_url).close()  # a second open finds the current version


def test_newer_schema_is_refused(db_url: str) -> None:
    _set_up_version(db_url, SCHEMA_VERSION + 1)
    with pytest.raises(AuditStoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than"):
        open_store(db_url)


def _serve_exit(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``latentguard serve`` with an audit URL, as a process (the model is never reached)."""
    args = ["serve", "--guard", str(tmp_path / "no-guard"), "--model", "no-model", "--audit-db", url]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "latentguard.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def _bad_urls(tmp_path: Path) -> list[str]:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    urls = [
        f"sqlite:///{tmp_path / 'missing' / 'audit.db'}",  # unreachable: no such folder
        "sqlite:////proc/latentguard-audit.db",  # unwritable, even for root
        f"sqlite:///{garbage}",
        "postgresql://nobody:secret-pw@127.0.0.1:9/none",  # nothing listens on port 9
    ]
    newer = tmp_path / "newer.db"
    _set_up_version(f"sqlite:///{newer}", SCHEMA_VERSION + 1)
    return [*urls, f"sqlite:///{newer}"]


def test_startup_with_a_bad_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for url in _bad_urls(tmp_path):
        with pytest.raises(AuditStoreError):
            open_store(url)
    results = [_serve_exit(url, tmp_path) for url in _bad_urls(tmp_path)[::2]]  # a process each: slow
    for result in results:
        assert result.returncode == 2, result.stderr
        lines = [x for x in result.stderr.splitlines() if x.startswith("latentguard: error:")]
        assert len(lines) == 1 and "audit database" in lines[0], result.stderr
        assert "Traceback" not in result.stderr and "secret-pw" not in result.stderr
    assert "newer than" in results[-1].stderr


def test_startup_with_a_read_only_postgres_is_exit_2(tmp_path: Path) -> None:
    url = postgres_url_or_skip()
    read_only = url + ("&" if "?" in url else "?") + "options=-c%20default_transaction_read_only%3Don"
    with pytest.raises(AuditStoreError, match="read-only"):
        open_store(read_only)
    result = _serve_exit(read_only, tmp_path)
    assert result.returncode == 2 and "read-only transaction" in result.stderr


def test_audit_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    store = open_store(url)
    now = datetime.now(timezone.utc)
    store.insert([row(i, ts=now - timedelta(days=i * 10), score=0.2 * i, harmful=i > 2) for i in range(5)])
    store.close()
    assert main(["audit", "stats", "--db", url]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["decisions"] == 5 and s["flagged"] == 2
    out = tmp_path / "f.jsonl"
    assert main(["audit", "export", "--db", url, "--out", str(out), "--flagged", "--since", "35d"]) == 0
    assert json.loads(capsys.readouterr().out)["decisions"] == 1
    assert [json.loads(x)["request_id"] for x in out.read_text().splitlines()] == ["req0003"]
    assert main(["audit", "prune", "--db", url, "--older-than", "25d"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == 2
    with pytest.raises(SystemExit):
        main(["audit", "prune", "--db", url, "--older-than", "soon"])
    assert main(["audit", "stats", "--db", f"sqlite:///{tmp_path / 'no' / 'x.db'}"]) == 2
    assert main(["audit", "stats", "--db", f"sqlite:///{tmp_path / 'typo.db'}"]) == 2
    assert not (tmp_path / "typo.db").exists()  # the commands create nothing
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------------
# The server records its decisions
# ------------------------------------------------------------------------------------------------------


def test_every_decision_route_is_recorded(db_url: str) -> None:
    with audit_client(db_url, token=TOKEN) as client:
        classify = client.post("/v1/classify", json={"prompts": ["a bomb", "bread"]}, headers=AUTH)
        generate = client.post(
            "/v1/generate", json={"prompts": ["bomb now", "tea"], "policy": "block"}, headers=AUTH
        )
        scan = client.post("/scan/prompt", json={"prompt": "bomb?"}, headers=AUTH)
        analyze = client.post("/analyze/prompt", json={"prompt": "hello"}, headers=AUTH)
        litellm = client.post(
            "/beta/litellm_basic_guardrail_api",
            json={"texts": ["bomb", "x"], "input_type": "request"},
            headers=AUTH,
        )
        skipped = client.post(
            "/beta/litellm_basic_guardrail_api",
            json={"texts": ["bomb"], "input_type": "response"},
            headers=AUTH,
        )
        health = client.get("/healthz")
    responses = [classify, generate, scan, analyze, litellm]
    assert all(r.status_code == 200 for r in [*responses, skipped]), [r.text for r in responses]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == 5 and all(len(i) == 32 for i in ids) and health.headers["x-request-id"]
    store = open_store(db_url)
    rows = list(select_rows(store))
    store.close()
    assert [(r["request_id"], r["item"]) for r in rows] == [
        (ids[0], 0), (ids[0], 1), (ids[1], 0), (ids[1], 1), (ids[2], 0), (ids[3], 0), (ids[4], 0), (ids[4], 1)
    ]  # fmt: skip
    assert [r["route"] for r in rows[::2]] == [
        "/v1/classify",
        "/v1/generate",
        "/scan/prompt",
        "/beta/litellm_basic_guardrail_api",
    ]
    assert [r["action"] for r in rows] == [
        "flag",
        "allow",
        "block",
        "allow",
        "flag",
        "allow",
        "block",
        "allow",
    ]
    assert rows[2]["policy"] == "block" and rows[0]["policy"] is None
    assert all(r["prompt"] is None for r in rows)  # text only with --audit-store-text
    assert rows[0]["prompt_sha256"] == prompt_sha256("a bomb")
    assert {r["client"] for r in rows} == {__import__("hashlib").sha256(TOKEN.encode()).hexdigest()[:16]}
    assert all(TOKEN not in json.dumps(r) for r in rows)
    assert all(r["threshold"] == 0.5 and r["latency_ms"] > 0 for r in rows)


def test_store_text_and_odd_text(db_url: str) -> None:
    url = db_url
    with audit_client(url, audit_store_text=True) as client:
        body = json.dumps({"prompts": ["bomb \ud800 lone", "nul \x00 char"]})  # ASCII, escapes kept
        r = client.post("/v1/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    store = open_store(url)
    rows = list(select_rows(store))
    store.close()
    assert [x["prompt"] for x in rows] == ["bomb \ufffd lone", "nul \ufffd char"]
    assert rows[0]["prompt_sha256"] == prompt_sha256("bomb \ud800 lone")


def test_guard_id_and_fingerprint_come_from_the_backend(tmp_path: Path) -> None:
    class Described(FakeBackend):
        @property
        def info(self) -> dict[str, Any]:
            return {"model": "m", "fingerprint": "fp-123", "guard": {"method": "probe", "threshold": 0.25}}

    url = f"sqlite:///{tmp_path / 'a.db'}"
    with audit_client(url, Described()) as client:
        assert client.post("/v1/classify", json={"prompts": ["x"]}).status_code == 200
    store = open_store(url)
    (got,) = select_rows(store)
    store.close()
    assert got["model_fingerprint"] == "fp-123" and got["threshold"] == 0.25 and len(got["guard_id"]) == 16


def test_failed_closed_verdicts_are_recorded_with_their_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with audit_client(url) as client:
        assert client.post("/v1/classify", json={"prompts": ["FAULT here"]}).status_code == 200
    store = open_store(url)
    (got,) = select_rows(store)
    store.close()
    assert got["harmful"] is True and got["score"] == 1.0 and "failing closed" in got["error"]


def test_without_audit_db_nothing_is_recorded_but_ids_are_returned() -> None:
    with client_for() as client:
        r = client.post("/v1/classify", json={"prompts": ["x"]})
        assert r.status_code == 200 and len(r.headers["x-request-id"]) == 32
        assert client.get("/dashboard").status_code == 404
        assert "latentguard_audit" not in client.get("/metrics").text


def _lock_sqlite(path: Path) -> sqlite3.Connection:
    """Hold the database's write lock from another connection (the database is 'gone' for writers)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_sqlite_failure_at_runtime(tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "a.db"
    with audit_client(f"sqlite:///{path}?timeout=0.2", audit_failure=mode) as client:
        assert client.post("/v1/classify", json={"prompts": ["before"]}).status_code == 200
        lock = _lock_sqlite(path)
        r = client.post("/v1/classify", json={"prompts": ["during"]})
        lock.rollback() if lock.in_transaction else None
        lock.close()
        after = client.post("/v1/classify", json={"prompts": ["after"]})
        metrics = parse_metrics(client.get("/metrics").text)
    if mode == "closed":
        assert r.status_code == 503 and "audit log is unavailable" in r.json()["error"]
    else:
        assert r.status_code == 200 and "NOT on record" in caplog.text
    assert after.status_code == 200
    assert metrics[f'latentguard_audit_failures_total{{mode="{mode}"}}'] == 1
    assert metrics["latentguard_audit_rows_total"] == 2
    store = open_store(f"sqlite:///{path}")
    assert len(list(select_rows(store))) == 2
    store.close()


def _admin(url: str) -> sa.Engine:
    return sa.create_engine(normalize_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["closed", "open"])
def test_postgres_going_away_at_runtime(mode: str) -> None:
    url = postgres_url_or_skip()
    database = normalize_url(url).database
    admin = _admin(url)
    refuse = sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    allow = sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    kick = sa.text(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
    )
    reset_postgres(url)
    try:
        with audit_client(url, audit_failure=mode) as client:
            assert client.post("/v1/classify", json={"prompts": ["before"]}).status_code == 200
            with admin.connect() as conn:
                conn.execute(refuse)
                conn.execute(kick, {"db": database})
            r = client.post("/v1/classify", json={"prompts": ["during"]})
            with admin.connect() as conn:
                conn.execute(allow)
            after = client.post("/v1/classify", json={"prompts": ["after"]})
            metrics = parse_metrics(client.get("/metrics").text)
    finally:
        with admin.connect() as conn:
            conn.execute(allow)
        admin.dispose()
    assert r.status_code == (503 if mode == "closed" else 200), r.text
    assert after.status_code == 200
    assert metrics[f'latentguard_audit_failures_total{{mode="{mode}"}}'] == 1
    store = open_store(url)
    assert [x["prompt_sha256"] for x in select_rows(store)] == [
        prompt_sha256("before"),
        prompt_sha256("after"),
    ]
    store.close()


def test_concurrent_requests_share_commits(db_url: str) -> None:
    """Many concurrent requests: every 200 is on record once, in far fewer commits than requests."""
    app = create_app(FakeBackend(delay_s=0.01), ServeConfig(audit_db=db_url, batch_max_wait_ms=20))

    async def fire(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            return list(
                await asyncio.gather(
                    *(c.post("/v1/classify", json={"prompts": [f"p{i}"]}) for i in range(64))
                )
            )

    with running_server(app) as base:
        responses = asyncio.run(fire(base))
        metrics = parse_metrics(httpx.get(f"{base}/metrics").text)
    assert all(r.status_code == 200 for r in responses)
    store = open_store(db_url)
    recorded = [r["request_id"] for r in select_rows(store)]
    store.close()
    assert sorted(recorded) == sorted(r.headers["x-request-id"] for r in responses)
    assert metrics["latentguard_audit_commit_duration_seconds_count"] <= 32


def test_serve_config_validates_audit_settings() -> None:
    with pytest.raises(ValueError, match="audit_failure"):
        ServeConfig(audit_failure="maybe")
    with pytest.raises(ValueError, match="audit_db"):
        ServeConfig(audit_db=" ")
    assert "secret" not in repr(ServeConfig(audit_db="postgresql://u:secret@h/db"))


def test_factory_reads_the_audit_settings() -> None:
    from latentguard.guard.factory import serve_config_from_env

    cfg = serve_config_from_env(
        {
            "LATENTGUARD_AUDIT_DB": "sqlite:///a.db",
            "LATENTGUARD_AUDIT_STORE_TEXT": "1",
            "LATENTGUARD_AUDIT_FAILURE": "open",
        }
    )
    assert (cfg.audit_db, cfg.audit_store_text, cfg.audit_failure) == ("sqlite:///a.db", True, "open")
    assert serve_config_from_env({}).audit_db is None


def test_any_route_is_wired_with_one_record_call(tmp_path: Path) -> None:
    """How a new decision route (e.g. /v1/example) puts its decisions on record: one call."""
    from latentguard.guard.serve import audit

    url = f"sqlite:///{tmp_path / 'a.db'}"
    app = create_app(FakeBackend(), ServeConfig(audit_db=url))

    @app.post("/v1/example")
    async def moderations(request: Request) -> dict[str, Any]:
        decision = audit.Decision(prompt="some text", score=0.7, harmful=True, action="flag")
        rid = await audit.record(request, route="/v1/example", decisions=[decision])
        return {"id": f"ex-{rid}", "same": rid == audit.request_id(request)}

    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        r = client.post("/v1/example")
    assert r.status_code == 200 and r.json() == {"id": f"ex-{r.headers['x-request-id']}", "same": True}
    store = open_store(url)
    (got,) = select_rows(store)
    store.close()
    assert (got["route"], got["request_id"], got["action"]) == (
        "/v1/example",
        r.headers["x-request-id"],
        "flag",
    )


def test_openai_routes_are_recorded_and_their_ids_carry_the_request_id(db_url: str) -> None:
    with audit_client(db_url, token=TOKEN) as client:
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "a bomb please"}]},
            headers=AUTH,
        )
        stream = client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "tea"}], "stream": True},
            headers=AUTH,
        )
        mod = client.post("/v1/moderations", json={"input": ["bomb", "bread"]}, headers=AUTH)
    assert [r.status_code for r in (chat, stream, mod)] == [200, 200, 200], [chat.text, mod.text]
    ids = [r.headers["x-request-id"] for r in (chat, stream, mod)]
    assert chat.json()["id"] == f"chatcmpl-{ids[0]}" and mod.json()["id"] == f"modr-{ids[2]}"
    store = open_store(db_url)
    rows = list(select_rows(store))
    store.close()
    assert [(r["request_id"], r["route"], r["action"]) for r in rows] == [
        (ids[0], "/v1/chat/completions", "block"),
        (ids[1], "/v1/chat/completions", "allow"),
        (ids[2], "/v1/moderations", "flag"),
        (ids[2], "/v1/moderations", "allow"),
    ]
    assert rows[0]["policy"] == "block" and all(r["prompt"] is None for r in rows)
