"""The audit log against real server processes and a real browser: kill -9, restart, the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from audit_db import audit_database  # noqa: F401  (the db_url fixture)
from test_report import _browser_or_skip
from test_serve import TOKEN, FakeBackend, running_server

from latentguard.audit import AuditRow, open_store, prompt_sha256
from latentguard.guard.serve import ServeConfig, create_app

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CANARY = "zebra-canary"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server_process(url: str, delay: float = 0.0) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A guard server process (fake backend) with an audit log; yields it and its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "serve_fake.py"), "--port", str(port), "--audit-db", url]
        + ["--delay", str(delay)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server exited"
            assert time.monotonic() < deadline, "server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def _classify(client: httpx.AsyncClient, i: int) -> tuple[int, str | None]:
    try:
        r = await client.post("/v1/classify", json={"prompts": [f"{CANARY}-{i}: how do I bake bread"]})
    except httpx.HTTPError:
        return -1, None
    return r.status_code, r.headers.get("x-request-id")


async def _wave(
    base: str, ids: range, kill: subprocess.Popen[bytes] | None = None, after: int = 0
) -> list[Any]:
    """Fire requests concurrently; with ``kill``, a stream of them, and SIGKILL that process once ``after``
    have been answered."""
    limits = httpx.Limits(max_connections=len(ids), max_keepalive_connections=len(ids))
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        if kill is None:
            tasks = [asyncio.create_task(_classify(client, i)) for i in ids]
            return list(await asyncio.gather(*tasks))
        # a steady stream, so that whatever the machine's load, requests are in flight at the kill
        tasks = []
        for i in ids:
            tasks.append(asyncio.create_task(_classify(client, i)))
            await asyncio.sleep(0.004)
            if kill.poll() is None and sum(t.done() for t in tasks) >= after:
                os.kill(kill.pid, signal.SIGKILL)
        while kill.poll() is None and sum(t.done() for t in tasks) < after:
            await asyncio.sleep(0.001)
        if kill.poll() is None:
            os.kill(kill.pid, signal.SIGKILL)
        return list(await asyncio.gather(*tasks))


def _export(url: str, out: Path) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "latentguard.cli", "-q", "audit", "export", "--db", url, "--out", str(out)]
    subprocess.run(cmd, check=True, env=ENV, capture_output=True, timeout=120)
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_decision_and_restart_appends(db_url: str, tmp_path: Path) -> None:
    with server_process(db_url, delay=0.05) as (proc, base):
        first = asyncio.run(_wave(base, range(100)))
        assert all(status == 200 and rid for status, rid in first), Counter(s for s, _ in first)
        second = asyncio.run(_wave(base, range(100, 500), kill=proc, after=60))
        assert proc.wait(10) == -signal.SIGKILL
    acked = [rid for status, rid in first + second if status == 200]
    lost = [status for status, _ in second if status != 200]
    assert len(acked) >= 160 and lost, "the kill should have caught requests in flight"
    rows = _export(db_url, tmp_path / "after-kill.jsonl")
    counts = Counter(r["request_id"] for r in rows)
    assert all(counts[rid] == 1 for rid in acked), "an acknowledged decision is missing or twice"
    assert max(counts.values()) == 1
    assert all(r["prompt"] is None for r in rows)
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///"))
        for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            assert not f.exists() or CANARY.encode() not in f.read_bytes(), f"prompt text in {f.name}"

    with server_process(db_url) as (proc, base):
        third = asyncio.run(_wave(base, range(1000, 1020)))
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert all(status == 200 for status, _ in third)
    again = _export(db_url, tmp_path / "after-restart.jsonl")
    assert again[: len(rows)] == rows  # appended, nothing rewritten
    assert len(again) == len(rows) + 20
    assert {rid for _, rid in third} <= {r["request_id"] for r in again}


# ------------------------------------------------------------------------------------------------------
# The dashboard in headless Chromium
# ------------------------------------------------------------------------------------------------------


def _seed(url: str) -> None:
    """An hour of decisions: scores spread around the threshold, some flagged, with latencies."""
    store = open_store(url)
    now = datetime.now(timezone.utc)
    rows = []
    for i in range(120):
        score = (i * 37 % 100) / 100
        rows.append(
            AuditRow(
                request_id=f"seed{i}",
                item=0,
                ts=now - timedelta(minutes=59 - i // 2),
                route="/v1/classify",
                client=None,
                prompt_sha256=prompt_sha256(f"seed {i}"),
                prompt=None,
                score=score,
                threshold=0.5,
                harmful=score > 0.5,
                policy=None,
                action="flag" if score > 0.5 else "allow",
                guard_id="g",
                model_fingerprint="f",
                latency_ms=5.0 + i % 17,
                error=None,
            )
        )
    store.insert(rows)
    store.close()


def _chrome(tmp_path: Path) -> Any:
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    try:
        return webdriver.Chrome(service=Service(driver_path), options=options)
    except Exception as exc:  # an environment problem, not a dashboard bug
        pytest.skip(f"headless chromium did not start: {exc}")


def _wait(browser: Any, script: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = browser.execute_script(script)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.1)


@pytest.mark.browser
def test_dashboard_renders_charts_from_a_real_audit_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    _seed(url)
    app = create_app(FakeBackend(), ServeConfig(audit_db=url, token=TOKEN))
    browser = _chrome(tmp_path)
    try:
        with running_server(app) as base:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            for prompt in ("a bomb please", "bread please", "bomb again"):
                assert (
                    httpx.post(f"{base}/v1/classify", json={"prompts": [prompt]}, headers=auth).status_code
                    == 200
                )
            assert httpx.get(f"{base}/dashboard/data").status_code == 401
            assert httpx.get(f"{base}/dashboard").status_code == 401  # the login form

            browser.get(f"{base}/dashboard")
            from selenium.webdriver.common.by import By

            browser.find_element(By.ID, "token").send_keys(TOKEN)
            browser.find_element(By.ID, "login").click()
            _wait(browser, "return document.body.dataset.refreshes >= 1")
            rendered = browser.execute_script(
                "return ['chart-flag-rate', 'chart-scores', 'chart-latency'].map("
                "id => document.getElementById(id).dataset.rendered);"
            )
            shapes = browser.execute_script(
                "const q = s => document.querySelectorAll(s).length; return {"
                "flag_points: q('#chart-flag-rate circle.point'), flag_lines: q('#chart-flag-rate polyline'),"
                "bars: q('#chart-scores rect.bar'), threshold: q('#chart-scores #threshold-line'),"
                "latency_lines: q('#chart-latency polyline'), rows: q('#flagged tbody tr'),"
                "hidden: q('#flagged td.hidden')};"
            )
            foreign = browser.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
                ".filter(n => !n.startsWith(location.origin));"
            )
            cookie = browser.get_cookie("latentguard_dashboard")
            before = shapes["rows"]
            with httpx.Client(base_url=base, headers=auth) as c:
                assert c.post("/v1/classify", json={"prompts": ["late bomb"]}).status_code == 200
            refreshed = _wait(
                browser,
                "return Number(document.body.dataset.refreshes) >= 2 && "
                "document.querySelector('#flagged tbody tr td:nth-child(3)').textContent === '0.900' && "
                "document.getElementById('summary').textContent.includes('124');",
                timeout=15,
            )
    finally:
        browser.quit()
    assert all(r not in (None, "empty", "0") for r in rendered), rendered
    assert shapes["flag_points"] >= 30 and shapes["flag_lines"] == 1
    assert shapes["bars"] >= 10 and shapes["threshold"] == 1
    assert shapes["latency_lines"] == 3
    assert before == 20 and shapes["hidden"] == 20  # the text was not stored
    assert foreign == []  # nothing from the internet
    assert cookie is not None and cookie["httpOnly"] and TOKEN not in cookie["value"]
    assert refreshed


def test_dashboard_login_and_assets() -> None:
    app = create_app(FakeBackend(), ServeConfig(audit_db=None, token=TOKEN))
    with running_server(app) as base:
        assert httpx.get(f"{base}/dashboard").status_code == 404  # no audit log


def test_dashboard_token_handling(tmp_path: Path) -> None:
    app = create_app(FakeBackend(), ServeConfig(audit_db=f"sqlite:///{tmp_path / 'a.db'}", token=TOKEN))
    with running_server(app) as base, httpx.Client(base_url=base) as c:
        assert c.get("/dashboard/static/dashboard.js").status_code == 200
        assert c.get("/dashboard/static/other.js").status_code == 404
        wrong = c.post("/dashboard/login", data={"token": "nope"})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text
        ok = c.post("/dashboard/login", data={"token": TOKEN}, follow_redirects=False)
        assert ok.status_code == 303 and TOKEN not in ok.headers["set-cookie"]
        assert c.get("/dashboard/data?hours=2&bucket=300").json()["decisions"] == 0  # the cookie works
        assert c.get("/dashboard/data?hours=nan").status_code == 422
        with httpx.Client(base_url=base) as fresh:
            assert (
                fresh.get("/dashboard/data", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            )
            fresh.cookies.set("latentguard_dashboard", "forged")
            assert fresh.get("/dashboard/data").status_code == 401
