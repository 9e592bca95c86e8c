"""Tests of the Latent Guard HTTP service (``latentguard.guard.serve``) against a fake backend."""

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from latentguard.guard import serve
from latentguard.guard.serve import (
    ClassifyResult,
    GenerateResult,
    ServeConfig,
    TokenFileError,
    create_app,
    read_token_file,
)

TOKEN = "s3cret-token_0123456789"


class FakeBackend:
    """A guard that calls a prompt harmful iff it contains "bomb".

    Prompts containing ``fault`` make the whole backend call raise; prompts containing ``SLOW`` block the
    call until ``release`` is set (or 5 s pass).
    """

    def __init__(self, delay_s: float = 0.0, fault: str | None = "FAULT") -> None:
        self.delay_s = delay_s
        self.fault = fault
        self.batch_sizes: list[int] = []
        self.generate_calls: list[tuple[list[str], int, str]] = []
        self.release = threading.Event()
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def _check(self, prompts: list[str]) -> None:
        self.threads.add(threading.current_thread().name)
        if any("SLOW" in p for p in prompts):
            self.release.wait(5.0)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fault is not None and any(self.fault in p for p in prompts):
            raise RuntimeError("injected fault: /secret/path/model.bin exploded")

    def classify(self, prompts: list[str]) -> list[ClassifyResult]:
        with self._lock:
            self.batch_sizes.append(len(prompts))
        self._check(prompts)
        out = []
        for p in prompts:
            harmful = "bomb" in p
            score = 0.9 if harmful else 0.1
            out.append(ClassifyResult(harmful=harmful, score=score, layer_scores={10: score, 12: score / 2}))
        return out

    def generate(self, prompts: list[str], max_new_tokens: int, policy: str) -> list[GenerateResult]:
        with self._lock:
            self.generate_calls.append((list(prompts), max_new_tokens, policy))
        self._check(prompts)
        out = []
        for p in prompts:
            harmful = "bomb" in p
            blocked = harmful and policy == "block"
            out.append(
                GenerateResult(
                    harmful=harmful,
                    score=0.9 if harmful else 0.1,
                    blocked=blocked,
                    response=None if blocked else f"answer to {p}",
                    flagged=harmful and policy == "flag",
                )
            )
        return out

    @property
    def info(self) -> dict[str, Any]:
        return {"model": "fake-model", "threshold": 0.5, "layers": [10, 12]}


@contextlib.contextmanager
def client_for(
    backend: Any | None = None, *, raise_server_exceptions: bool = True, **config: Any
) -> Iterator[TestClient]:
    """A TestClient with the app's lifespan running (so the batcher exists)."""
    app = create_app(backend if backend is not None else FakeBackend(), ServeConfig(**config))
    with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
        yield client


def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body


# ------------------------------------------------------------------------------------------------------
# Happy paths
# ------------------------------------------------------------------------------------------------------


def test_classify_happy_path_keeps_order() -> None:
    with client_for() as client:
        prompts = ["how do I build a bomb", "how do I bake bread", "bomb recipe", "hello"]
        r = client.post("/v1/classify", json={"prompts": prompts})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["harmful"] for x in results] == [True, False, True, False]
    assert [x["score"] for x in results] == [0.9, 0.1, 0.9, 0.1]
    assert results[0]["layer_scores"] == {"10": 0.9, "12": 0.45}
    assert all(x["error"] is None for x in results)


@pytest.mark.parametrize(
    ("policy", "blocked", "flagged", "has_response"),
    [("block", True, False, False), ("flag", False, True, True), ("allow", False, False, True)],
)
def test_generate_policies(policy: str, blocked: bool, flagged: bool, has_response: bool) -> None:
    backend = FakeBackend()
    with client_for(backend) as client:
        r = client.post(
            "/v1/generate",
            json={"prompts": ["a bomb please", "bread please"], "policy": policy, "max_new_tokens": 7},
        )
    assert r.status_code == 200, r.text
    harmful, benign = r.json()["results"]
    assert harmful["harmful"] is True and harmful["blocked"] is blocked and harmful["flagged"] is flagged
    assert (harmful["response"] is not None) is has_response
    assert harmful["repaired_response"] is None and harmful["error"] is None
    assert benign == {
        "harmful": False,
        "score": 0.1,
        "blocked": False,
        "flagged": False,
        "response": "answer to bread please",
        "repaired_response": None,
        "error": None,
        "normalized": False,
    }
    assert backend.generate_calls == [(["a bomb please", "bread please"], 7, policy)]


def test_generate_defaults_and_cap() -> None:
    backend = FakeBackend()
    with client_for(backend) as client:
        assert client.post("/v1/generate", json={"prompts": ["hi"]}).status_code == 200
    with client_for(backend, max_new_tokens_limit=64) as client:
        assert client.post("/v1/generate", json={"prompts": ["hi"]}).status_code == 200
    assert [(c[1], c[2]) for c in backend.generate_calls] == [(128, "block"), (64, "block")]


def test_backend_runs_in_one_dedicated_thread() -> None:
    backend = FakeBackend()
    with client_for(backend) as client:
        for _ in range(3):
            client.post("/v1/classify", json={"prompts": ["x"]})
            client.post("/v1/generate", json={"prompts": ["x"]})
    assert len(backend.threads) == 1
    assert next(iter(backend.threads)).startswith("latentguard-backend")


def test_health_and_readiness() -> None:
    with client_for() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "backend": {"model": "fake-model", "threshold": 0.5, "layers": [10, 12]},
    }


def test_not_started_app_answers_503_but_is_alive() -> None:
    app = create_app(FakeBackend(), ServeConfig())
    client = TestClient(app)  # no "with": the lifespan (and so the batcher) never starts
    assert client.get("/healthz").status_code == 200
    assert_error(client.get("/readyz"), 503)
    assert_error(client.post("/v1/classify", json={"prompts": ["hi"]}), 503)
    assert_error(client.post("/v1/generate", json={"prompts": ["hi"]}), 503)


def test_readyz_with_odd_or_failing_info() -> None:
    class OddInfo(FakeBackend):
        @property
        def info(self) -> dict[Any, Any]:
            return {"threshold": math.nan, "path": Path("/m"), "obj": object(), 3: (1, 2)}

    class BrokenInfo(FakeBackend):
        @property
        def info(self) -> dict[str, Any]:
            raise RuntimeError("no info")

    with client_for(OddInfo()) as client:
        r = client.get("/readyz")
    assert r.status_code == 200
    backend = r.json()["backend"]
    assert backend["threshold"] == "nan" and backend["path"] == "/m" and backend["3"] == [1, 2]
    with client_for(BrokenInfo()) as client:
        assert_error(client.get("/readyz"), 503)


# ------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------

SMALL: dict[str, Any] = {"max_prompts": 4, "max_chars": 50, "max_new_tokens_limit": 100}

BAD_JSON_CASES: list[tuple[str, Any, int]] = [
    ("/v1/classify", {"prompts": []}, 422),
    ("/v1/classify", {"prompts": ["a"] * 5}, 413),
    ("/v1/classify", {"prompts": ["ok", "x" * 51]}, 413),
    ("/v1/classify", {"prompts": ["ok", "   \n\t"]}, 422),
    ("/v1/classify", {"prompts": [""]}, 422),
    ("/v1/classify", {"prompts": "not a list"}, 422),
    ("/v1/classify", {"prompts": [1, 2]}, 422),
    ("/v1/classify", {"prompts": [None]}, 422),
    ("/v1/classify", {"prompts": [["nested"]]}, 422),
    ("/v1/classify", {}, 422),
    ("/v1/classify", {"prompts": ["ok"], "extra": 1}, 422),
    ("/v1/classify", ["ok"], 422),
    ("/v1/classify", "ok", 422),
    ("/v1/classify", None, 422),
    ("/v1/generate", {"prompts": []}, 422),
    ("/v1/generate", {"prompts": ["a"] * 5}, 413),
    ("/v1/generate", {"prompts": ["x" * 51]}, 413),
    ("/v1/generate", {"prompts": [" "]}, 422),
    ("/v1/generate", {"prompts": ["ok"], "max_new_tokens": 0}, 422),
    ("/v1/generate", {"prompts": ["ok"], "max_new_tokens": -5}, 422),
    ("/v1/generate", {"prompts": ["ok"], "max_new_tokens": 101}, 422),
    ("/v1/generate", {"prompts": ["ok"], "max_new_tokens": 10**40}, 422),
    ("/v1/generate", {"prompts": ["ok"], "max_new_tokens": "12"}, 422),
    ("/v1/generate", {"prompts": ["ok"], "max_new_tokens": 12.5}, 422),
    ("/v1/generate", {"prompts": ["ok"], "max_new_tokens": True}, 422),
    ("/v1/generate", {"prompts": ["ok"], "policy": "yolo"}, 422),
    ("/v1/generate", {"prompts": ["ok"], "policy": "BLOCK"}, 422),
    ("/v1/generate", {"prompts": ["ok"], "policy": None}, 422),
]


@pytest.mark.parametrize(("path", "body", "status"), BAD_JSON_CASES)
def test_bad_json_bodies(path: str, body: Any, status: int) -> None:
    backend = FakeBackend()
    with client_for(backend, **SMALL) as client:
        r = client.post(path, json=body)
    payload = assert_error(r, status)
    if status == 422 and "detail" in payload:
        assert isinstance(payload["detail"], list)
        assert all({"loc", "msg", "type"} <= set(d) for d in payload["detail"])
    assert backend.batch_sizes == [] and backend.generate_calls == []


def test_limit_errors_are_descriptive() -> None:
    with client_for(**SMALL) as client:
        assert (
            "too many prompts"
            in assert_error(client.post("/v1/classify", json={"prompts": ["a"] * 5}), 413)["error"]
        )
        body = assert_error(client.post("/v1/classify", json={"prompts": ["a", "b" * 60]}), 413)
        assert "prompt 1" in body["error"] and "b" * 10 not in body["error"]
        body = assert_error(client.post("/v1/generate", json={"prompts": ["a"], "policy": "yolo"}), 422)
        assert body["detail"][0]["loc"] == ["body", "policy"]


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{bad json", "application/json", 400),
        (b'{"prompts": ["ok"]', "application/json", 400),
        (b'{"prompts": ["\xff\xfe"]}', "application/json", 400),
        (b"\xff\xfe\x00\x01", "application/json", 400),
        (b"", "application/json", 422),
        (b'{"prompts": ["ok"]}', "text/plain", 422),
        (b'{"prompts": ["ok"]}', "application/x-www-form-urlencoded", 422),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
        (b'{"prompts": ["ok"], "max_new_tokens": 1' + b"0" * 5000 + b"}", "application/json", 400),
    ],
)
def test_undecodable_bodies(content: bytes, content_type: str, status: int) -> None:
    with client_for() as client:
        for path in ("/v1/classify", "/v1/generate"):
            r = client.post(path, content=content, headers={"content-type": content_type})
            assert_error(r, status)


def test_lone_surrogates_do_not_break_json_responses() -> None:
    with client_for() as client:
        # A prompt with a lone surrogate is a valid JSON string: it is classified normally.
        r = client.post(
            "/v1/classify",
            content=b'{"prompts": ["a \\ud800 bomb"]}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 200 and r.json()["results"][0]["harmful"] is True
        # An unknown field named with a lone surrogate is echoed (escaped) in the error location.
        r = client.post(
            "/v1/classify",
            content=b'{"prompts": ["x"], "\\udfff": 1}',
            headers={"content-type": "application/json"},
        )
        assert_error(r, 422)


def test_oversized_body_is_rejected_before_parsing() -> None:
    with client_for(max_prompts=2, max_chars=10) as client:
        limit = 65536 + 2 * (12 * 10 + 64)
        big = b'{"prompts": ["' + b"a" * (limit + 10) + b'"]}'
        assert (
            "larger than"
            in assert_error(
                client.post("/v1/classify", content=big, headers={"content-type": "application/json"}), 413
            )["error"]
        )

        def chunks() -> Iterator[bytes]:  # no content-length: chunked transfer
            yield b'{"prompts": ["'
            for _ in range(100):
                yield b"a" * 1000
            yield b'"]}'

        assert_error(
            client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"}), 413
        )
        assert client.post("/v1/classify", json={"prompts": ["fine"]}).status_code == 200


def test_unknown_routes_and_methods_are_json() -> None:
    with client_for() as client:
        assert_error(client.get("/nope"), 404)
        assert_error(client.get("/v1/classify"), 405)
        assert_error(client.put("/v1/generate", json={}), 405)


def test_still_serves_after_a_sequence_of_bad_requests() -> None:
    with client_for(**SMALL) as client:
        for path, body, status in BAD_JSON_CASES:
            assert client.post(path, json=body).status_code == status
        for raw in (b"{", b"\xff", b"[]", b"null"):
            assert (
                client.post(
                    "/v1/classify", content=raw, headers={"content-type": "application/json"}
                ).status_code
                < 500
            )
        r = client.post("/v1/classify", json={"prompts": ["bomb", "bread"]})
        assert r.status_code == 200
        assert [x["harmful"] for x in r.json()["results"]] == [True, False]
        assert client.post("/v1/generate", json={"prompts": ["bread"]}).status_code == 200


def test_fuzz_bodies_never_get_5xx() -> None:
    rng = random.Random(1234)
    junk_values: list[Any] = [
        None,
        True,
        0,
        -1,
        10**30,
        1e308,
        -1e308,
        "",
        " ",
        "bomb",
        [],
        {},
        [[[]]],
        {"a": {"b": {"c": []}}},
        ["ok", 1, None],
        "\u0000",
        "\ud800",
        "x" * 60,
    ]

    def random_body() -> tuple[bytes, str]:
        kind = rng.randrange(6)
        if kind == 0:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))), "application/json"
        if kind == 1:
            obj = {
                rng.choice(["prompts", "max_new_tokens", "policy", "x"]): rng.choice(junk_values)
                for _ in range(3)
            }
            return json.dumps(obj).encode(), "application/json"
        if kind == 2:
            obj = {
                "prompts": [rng.choice(junk_values) for _ in range(rng.randrange(0, 6))],
                "max_new_tokens": rng.choice([1, 0, -1, 10**20, 2**63, 99, "9", 1.5]),
                "policy": rng.choice(["block", "flag", "allow", "", "nope", 3]),
            }
            return json.dumps(obj).encode(), "application/json"
        if kind == 3:
            good = json.dumps({"prompts": ["a bomb", "bread"]}).encode()
            cut = rng.randrange(len(good))
            return good[:cut] + bytes([rng.randrange(256)]) + good[cut + 1 :], "application/json"
        if kind == 4:
            depth = rng.randrange(1, 5000)
            return b'{"prompts": ' + b"[" * depth + b"]" * depth + b"}", "application/json"
        return b'{"prompts": ["\xc3\x28", "\xed\xa0\x80"]}', rng.choice(
            ["application/json", "text/plain", ""]
        )

    statuses: list[int] = []
    with client_for(**SMALL) as client:
        for _ in range(100):
            content, content_type = random_body()
            headers = {"content-type": content_type} if content_type else {}
            for path in ("/v1/classify", "/v1/generate"):
                r = client.post(path, content=content, headers=headers)
                statuses.append(r.status_code)
                assert r.status_code < 500, (path, content[:200], r.text)
                r.json()  # always JSON
        assert client.post("/v1/classify", json={"prompts": ["bomb"]}).json()["results"][0]["harmful"] is True
    assert any(s >= 400 for s in statuses)


# ------------------------------------------------------------------------------------------------------
# Fail closed
# ------------------------------------------------------------------------------------------------------


def test_classify_fails_closed_and_isolates_the_faulty_prompt(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend()
    with caplog.at_level(logging.ERROR, logger="latentguard.guard.serve"), client_for(backend) as client:
        r = client.post("/v1/classify", json={"prompts": ["bread", "FAULT bread", "bomb", "soup"]})
    assert r.status_code == 200
    results = r.json()["results"]
    assert results[1]["harmful"] is True and results[1]["score"] == 1.0
    assert "RuntimeError" in results[1]["error"] and "/secret" not in results[1]["error"]
    assert [(x["harmful"], x["error"]) for i, x in enumerate(results) if i != 1] == [
        (False, None),
        (True, None),
        (False, None),
    ]
    failures = [rec for rec in caplog.records if rec.exc_info is not None]
    exc_info = failures[0].exc_info if failures else None
    assert exc_info is not None and "injected fault" in str(exc_info[1])


def test_classify_fails_closed_when_everything_fails() -> None:
    with client_for(FakeBackend(fault="")) as client:  # "" is in every prompt
        r = client.post("/v1/classify", json={"prompts": ["bread", "soup"]})
    assert r.status_code == 200
    assert all(x["harmful"] is True and x["score"] == 1.0 and x["error"] for x in r.json()["results"])


class ContractBreaker(FakeBackend):
    """Returns malformed results for some prompts."""

    def classify(self, prompts: list[str]) -> list[ClassifyResult]:
        out = super().classify(prompts)
        not_a_bool: Any = None
        broken = {
            "NAN": ClassifyResult(harmful=False, score=math.nan),
            "NONE": ClassifyResult(harmful=not_a_bool, score=0.0),
        }
        for marker, result in broken.items():
            out = [result if marker in p else r for p, r in zip(prompts, out, strict=True)]
        if any("SHORT" in p for p in prompts):
            out = out[:-1]
        return out

    def generate(self, prompts: list[str], max_new_tokens: int, policy: str) -> list[GenerateResult]:
        if any("LEAK" in p for p in prompts):  # harmful, but not blocked under "block"
            return [GenerateResult(harmful=True, score=0.9, blocked=False, response="leak", flagged=False)]
        if any("INF" in p for p in prompts):
            return [GenerateResult(harmful=False, score=math.inf, blocked=False, response="x", flagged=False)]
        return super().generate(prompts, max_new_tokens, policy)


@pytest.mark.parametrize("bad", ["NAN", "NONE", "SHORT"])
def test_invalid_backend_results_fail_closed(bad: str) -> None:
    with client_for(ContractBreaker()) as client:
        r = client.post("/v1/classify", json={"prompts": ["bread", f"{bad} soup"]})
    assert r.status_code == 200
    first, second = r.json()["results"]
    assert second["harmful"] is True and second["score"] == 1.0 and second["error"]
    if bad != "SHORT":  # a short result list is blamed on the batch, then isolated to single prompts
        assert first == {
            "harmful": False,
            "score": 0.1,
            "layer_scores": {"10": 0.1, "12": 0.05},
            "error": None,
            "normalized": False,
        }


def test_generate_fails_closed() -> None:
    with client_for() as client:
        r = client.post("/v1/generate", json={"prompts": ["bread", "FAULT"], "policy": "allow"})
    assert r.status_code == 200
    for x in r.json()["results"]:
        assert x["harmful"] is True and x["blocked"] is True and x["response"] is None
        assert x["score"] == 1.0 and "RuntimeError" in x["error"]


def test_generate_enforces_block_policy_and_validates_results() -> None:
    with client_for(ContractBreaker()) as client:
        leak = client.post("/v1/generate", json={"prompts": ["LEAK"], "policy": "block"}).json()["results"][0]
        assert leak["blocked"] is True and leak["response"] is None and leak["error"] is None
        allowed = client.post("/v1/generate", json={"prompts": ["LEAK"], "policy": "allow"}).json()[
            "results"
        ][0]
        assert allowed["blocked"] is False and allowed["response"] == "leak"
        inf = client.post("/v1/generate", json={"prompts": ["INF"], "policy": "allow"}).json()["results"][0]
        assert inf["blocked"] is True and inf["response"] is None and inf["error"]


def test_timeout_returns_503_and_service_recovers() -> None:
    backend = FakeBackend()
    with client_for(backend, request_timeout_s=0.2) as client:
        assert_error(client.post("/v1/classify", json={"prompts": ["SLOW"]}), 503)
        assert (
            "timed out" in assert_error(client.post("/v1/generate", json={"prompts": ["SLOW"]}), 503)["error"]
        )
        backend.release.set()
        r = client.post("/v1/classify", json={"prompts": ["bomb"]})
        assert r.status_code == 200 and r.json()["results"][0]["harmful"] is True
        metrics = client.get("/metrics").text
    assert 'latentguard_request_errors_total{kind="timeout"} 2' in metrics


def test_batcher_shutdown_answers_503() -> None:
    backend = FakeBackend()
    with client_for(backend, request_timeout_s=5.0) as client:
        answers: list[Any] = []
        thread = threading.Thread(
            target=lambda: answers.append(client.post("/v1/classify", json={"prompts": ["SLOW"]}))
        )
        thread.start()
        deadline = time.monotonic() + 5
        while not backend.batch_sizes and time.monotonic() < deadline:  # the SLOW batch is in the backend
            time.sleep(0.01)
        state = client.app.state.latentguard  # type: ignore[attr-defined]
        client.portal.call(state.batcher.stop)  # type: ignore[union-attr]
        backend.release.set()
        thread.join(5)
        assert "shutting down" in assert_error(answers[0], 503)["error"]
        assert_error(client.post("/v1/classify", json={"prompts": ["bread"]}), 503)
        assert_error(client.get("/readyz"), 503)
        assert client.get("/healthz").status_code == 200


def test_batcher_stop_fails_queued_prompts() -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        executor = ThreadPoolExecutor(max_workers=1)
        batcher = serve.ClassifyBatcher(
            backend, executor, serve.ServeMetrics(8), max_size=8, max_wait_s=0.001
        )
        batcher.start()
        assert batcher.running
        in_flight = asyncio.ensure_future(batcher.classify(["SLOW"]))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.classify(["bread"]))
        await asyncio.sleep(0.01)
        await batcher.stop()
        backend.release.set()
        assert not batcher.running
        for fut in (in_flight, queued):
            with pytest.raises(serve.ServiceUnavailable):
                await fut
        with pytest.raises(serve.ServiceUnavailable):
            await batcher.classify(["late"])
        executor.shutdown(wait=True)
        assert backend.batch_sizes == [1]

    asyncio.run(scenario())


def test_catch_all_handler_returns_json_500() -> None:
    app = create_app(FakeBackend(), ServeConfig())

    @app.get("/boom")
    async def boom() -> None:
        raise ZeroDivisionError("internal")

    with TestClient(app, raise_server_exceptions=False) as client:
        body = assert_error(client.get("/boom"), 500)
        assert body == {"error": "internal server error"}
        assert client.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------------------------------
# Auth
# ------------------------------------------------------------------------------------------------------


def test_bearer_token_protects_api_and_metrics() -> None:
    with client_for(token=TOKEN) as client:
        for method, path, kwargs in [
            ("post", "/v1/classify", {"json": {"prompts": ["bomb"]}}),
            ("post", "/v1/generate", {"json": {"prompts": ["bomb"]}}),
            ("get", "/metrics", {}),
        ]:
            call = getattr(client, method)
            r = call(path, **kwargs)
            assert_error(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"
            for bad in (
                "Bearer wrong",
                f"Basic {TOKEN}",
                f"Bearer {TOKEN}x",
                "Bearer",
                f"bearer{TOKEN}",
                "Bearer é".encode(),
            ):
                assert_error(call(path, headers={"Authorization": bad}, **kwargs), 401)
            ok = call(path, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)
            assert ok.status_code == 200, ok.text
        # Auth comes before body parsing and size checks.
        r = client.post("/v1/classify", content=b"{junk", headers={"content-type": "application/json"})
        assert_error(r, 401)
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert_error(client.get("/v1/unknown"), 401)


def test_no_token_means_open_api() -> None:
    with client_for() as client:
        assert client.get("/metrics").status_code == 200
        assert (
            client.post(
                "/v1/classify", json={"prompts": ["x"]}, headers={"Authorization": "Bearer x"}
            ).status_code
            == 200
        )


def test_read_token_file(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(f"  {TOKEN}\n\n", encoding="utf-8")
    good.chmod(0o600)
    assert read_token_file(good) == TOKEN
    assert read_token_file(str(good)) == TOKEN
    empty = tmp_path / "empty"
    empty.write_text(" \n\t\n", encoding="utf-8")
    with pytest.raises(TokenFileError, match="empty"):
        read_token_file(empty)
    with pytest.raises(TokenFileError, match="cannot read"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(TokenFileError, match="cannot read"):
        read_token_file(tmp_path)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TokenFileError, match="UTF-8"):
        read_token_file(binary)
    spaced = tmp_path / "spaced"
    spaced.write_text("two words\n", encoding="utf-8")
    with pytest.raises(TokenFileError, match="visible ASCII"):
        read_token_file(spaced)
    assert issubclass(TokenFileError, ValueError)


# ------------------------------------------------------------------------------------------------------
# Config, metrics, OpenAPI, run()
# ------------------------------------------------------------------------------------------------------


def test_config_defaults_help_and_validation() -> None:
    config = ServeConfig()
    assert config.host == "127.0.0.1" and config.token is None
    assert TOKEN not in repr(ServeConfig(token=TOKEN))
    for f in fields(ServeConfig):
        assert isinstance(f.metadata.get("help"), str) and f.metadata["help"], f.name
    for bad in (
        {"port": 70000},
        {"max_prompts": 0},
        {"max_chars": -1},
        {"batch_max_size": 0},
        {"max_new_tokens_limit": 0},
        {"batch_max_wait_ms": -1.0},
        {"batch_max_wait_ms": math.nan},
        {"request_timeout_s": 0.0},
        {"token": ""},
        {"token": "has space"},
        {"host": ""},
    ):
        with pytest.raises(ValueError):
            ServeConfig(**bad)


METRIC_LINE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? '
    r"(?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))$"
)


LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def canonical(series: str) -> str:
    """``name{labels}`` with the labels sorted by name (the text format does not order labels)."""
    name, brace, labels = series.partition("{")
    if not brace:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(LABEL.findall(labels))) + "}"


class Samples(dict[str, float]):
    """Sample values keyed by series; looking up ``name{b="1",a="2"}`` finds ``name{a="2",b="1"}``."""

    def __getitem__(self, series: str) -> float:
        return super().__getitem__(canonical(series))

    def __contains__(self, series: object) -> bool:
        return isinstance(series, str) and super().__contains__(canonical(series))


def parse_metrics(text: str) -> Samples:
    samples = Samples()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or line.startswith(("# HELP ", "# TYPE ")), line
            continue
        m = METRIC_LINE.match(line)
        assert m, f"unparseable metrics line: {line!r}"
        series = canonical(line.rsplit(" ", 1)[0])
        assert series not in samples, f"duplicate series: {line!r}"
        samples[series] = float(m.group("value"))
    return samples


def test_metrics_text_format() -> None:
    with client_for() as client:
        client.post("/v1/classify", json={"prompts": ["bomb", "bread", "FAULT"]})
        client.post("/v1/classify", json={"prompts": []})
        client.post("/v1/generate", json={"prompts": ["bomb", "bread"]})
        client.get("/nothing-here")
        r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_metrics(r.text)
    assert samples['latentguard_http_requests_total{endpoint="/v1/classify",code="200"}'] == 1
    assert samples['latentguard_http_requests_total{endpoint="/v1/classify",code="422"}'] == 1
    assert samples['latentguard_http_requests_total{endpoint="/v1/generate",code="200"}'] == 1
    assert samples['latentguard_http_requests_total{endpoint="other",code="404"}'] == 1
    assert samples['latentguard_prompts_classified_total{op="classify"}'] == 2
    assert samples['latentguard_prompts_harmful_total{op="classify"}'] == 1
    assert samples['latentguard_backend_errors_total{op="classify"}'] == 1
    assert samples['latentguard_prompts_classified_total{op="generate"}'] == 2
    assert samples['latentguard_prompts_harmful_total{op="generate"}'] == 1
    assert samples['latentguard_generations_blocked_total{policy="block"}'] == 1
    assert samples['latentguard_classify_batch_size_bucket{le="+Inf"}'] >= 1
    assert (
        samples["latentguard_classify_batch_size_count"]
        == samples['latentguard_classify_batch_size_bucket{le="+Inf"}']
    )
    assert samples['latentguard_http_request_duration_seconds_count{endpoint="/v1/classify"}'] == 2
    assert 'latentguard_http_request_duration_seconds{endpoint="/v1/classify",quantile="0.99"}' in samples
    assert "# TYPE latentguard_classify_batch_size histogram" in r.text
    assert "# TYPE latentguard_http_request_duration_seconds summary" in r.text


def test_metrics_registries_are_per_app() -> None:
    with client_for() as a, client_for() as b:
        a.post("/v1/classify", json={"prompts": ["x"]})
        assert (
            parse_metrics(a.get("/metrics").text)['latentguard_prompts_classified_total{op="classify"}'] == 1
        )
        assert (
            parse_metrics(b.get("/metrics").text)['latentguard_prompts_classified_total{op="classify"}'] == 0
        )


#: Every metric family ``/metrics`` exposes: its type and the label names of its samples.
EXPECTED_METRICS: dict[str, tuple[str, set[tuple[str, ...]]]] = {
    "latentguard_http_requests": ("counter", {("code", "endpoint")}),
    "latentguard_http_request_duration_seconds": ("summary", {("endpoint",), ("endpoint", "quantile")}),
    "latentguard_prompts_classified": ("counter", {("op",)}),
    "latentguard_prompts_harmful": ("counter", {("op",)}),
    "latentguard_generations_blocked": ("counter", {("policy",)}),
    "latentguard_backend_errors": ("counter", {("op",)}),
    "latentguard_request_errors": ("counter", {("kind",)}),
    "latentguard_classify_batch_size": ("histogram", {(), ("le",)}),
    "latentguard_backend_call_duration_seconds": ("summary", {("op",), ("op", "quantile")}),
}


def test_metrics_are_rendered_by_prometheus_client() -> None:
    import prometheus_client
    from prometheus_client.parser import text_string_to_metric_families

    with client_for() as client:
        client.post("/v1/classify", json={"prompts": ["bomb", "FAULT"]})
        client.post("/v1/generate", json={"prompts": ["bomb"], "policy": "flag"})
        client.get("/nothing-here")
        text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == set(EXPECTED_METRICS)
    for name, (kind, label_sets) in EXPECTED_METRICS.items():
        family = families[name]
        assert family.type == kind, name
        assert {tuple(sorted(s.labels)) for s in family.samples} == label_sets, name
        suffixes = {"counter": {"_total"}, "histogram": {"_bucket", "_count", "_sum"}}
        expected = {name + s for s in suffixes.get(kind, {"", "_count", "_sum"})}
        assert {s.name for s in family.samples} == expected, name  # no *_created series
    blocked = families["latentguard_generations_blocked"].samples
    assert [(s.labels, s.value) for s in blocked] == [({"policy": "flag"}, 0.0)]
    requests = {
        (s.labels["endpoint"], s.labels["code"]): s.value
        for s in families["latentguard_http_requests"].samples
    }
    assert requests == {("/v1/classify", "200"): 1, ("/v1/generate", "200"): 1, ("other", "404"): 1}
    quantiles = {
        s.labels.get("quantile") for s in families["latentguard_http_request_duration_seconds"].samples
    }
    assert quantiles == {None, "0.5", "0.9", "0.99"}
    # Each app has its own registry; the library's global default registry is left alone.
    registry = serve.ServeMetrics(8).registry
    assert isinstance(registry, prometheus_client.CollectorRegistry)
    assert registry is not prometheus_client.REGISTRY
    default_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("latentguard_") for name in default_names)


def test_result_schemas_mirror_the_result_types() -> None:
    from latentguard.guard.serve.schemas import ClassifyItem, GenerateItem
    from latentguard.guard.types import GuardedReply, Verdict

    assert ClassifyResult is Verdict and GenerateResult is GuardedReply
    # the chat-completion and moderation fields are on the OpenAI routes' wire forms (openai_schemas)
    openai_only = {"category_scores", "finish_reason", "prompt_tokens", "completion_tokens"}
    assert list(ClassifyItem.model_fields) == [f.name for f in fields(Verdict) if f.name not in openai_only]
    assert list(GenerateItem.model_fields) == [
        "harmful",
        "score",
        "blocked",
        "flagged",
        "response",
        "repaired_response",
        "error",
        "normalized",
    ]
    assert set(GenerateItem.model_fields) == {f.name for f in fields(GuardedReply)} - {
        "refused",
        *openai_only,
    }
    verdict = Verdict(harmful=True, score=0.75, layer_scores={3: 0.5})
    assert ClassifyItem.from_result(verdict).model_dump_json() == (
        '{"harmful":true,"score":0.75,"layer_scores":{"3":0.5},"error":null,"normalized":false}'
    )
    reply = GuardedReply(harmful=False, score=0.25, blocked=False, flagged=False, response="hi", refused=True)
    assert GenerateItem.from_result(reply).model_dump_json() == (
        '{"harmful":false,"score":0.25,"blocked":false,"flagged":false,"response":"hi",'
        '"repaired_response":null,"error":null,"normalized":false}'
    )


def test_openapi_schema() -> None:
    with client_for() as client:
        schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/classify", "/v1/generate", "/healthz", "/readyz", "/metrics"):
        assert path in paths
    schemas = schema["components"]["schemas"]
    assert schemas["ClassifyRequest"]["properties"]["prompts"]["description"]
    assert set(schemas["GenerateRequest"]["properties"]["policy"]["enum"]) == {"block", "flag", "allow"}
    assert schemas["GenerateItem"]["properties"]["blocked"]["description"]
    assert "413" in paths["/v1/classify"]["post"]["responses"]
    assert schemas["ErrorResponse"]["properties"]["error"]["description"]


def test_run_uses_config_and_warns_on_open_public_bind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    serve.run(FakeBackend(), ServeConfig(port=9123))
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 9123
    assert isinstance(calls[0]["app"], FastAPI)
    with caplog.at_level(logging.WARNING, logger="latentguard.guard.serve"):
        serve.run(FakeBackend(), ServeConfig(host="0.0.0.0"))
    assert any("without a bearer token" in rec.getMessage() for rec in caplog.records)


# ------------------------------------------------------------------------------------------------------
# Real server: concurrency and micro-batching
# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        assert not thread.is_alive()


def test_concurrent_requests_are_micro_batched() -> None:
    backend = FakeBackend(delay_s=0.002)
    app = create_app(backend, ServeConfig(batch_max_size=16, batch_max_wait_ms=5.0))
    n = 200

    def prompts_for(i: int) -> list[str]:
        base = [f"request {i} about a bomb" if i % 3 == 0 else f"request {i} about bread"]
        if i % 50 == 7:
            base.append(f"request {i} FAULT")
        if i % 4 == 1:
            base.append(f"request {i} second bomb")
        return base

    async def fire(base_url: str) -> list[tuple[int, list[str], httpx.Response]]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=15) as client:

            async def one(i: int) -> tuple[int, list[str], httpx.Response]:
                prompts = prompts_for(i)
                return i, prompts, await client.post("/v1/classify", json={"prompts": prompts})

            return await asyncio.gather(*(one(i) for i in range(n)))

    started = time.monotonic()
    with running_server(app) as base_url:
        answers = asyncio.run(fire(base_url))
        assert httpx.get(f"{base_url}/readyz").status_code == 200
        metrics = parse_metrics(httpx.get(f"{base_url}/metrics").text)
    assert time.monotonic() - started < 20
    assert len(answers) == n
    for _i, prompts, r in answers:
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(prompts)
        for prompt, result in zip(prompts, results, strict=True):
            if "FAULT" in prompt:
                assert result["harmful"] is True and result["error"]
            else:  # a faulty prompt in the same batch must not affect other requests
                assert result["error"] is None
                assert result["harmful"] is ("bomb" in prompt)
    assert max(backend.batch_sizes) > 1
    assert max(backend.batch_sizes) <= 16
    assert metrics['latentguard_http_requests_total{endpoint="/v1/classify",code="200"}'] == n


class NormalizingBackend(FakeBackend):
    """Marks prompts holding a zero-width space as normalised (as the real backend's check() does)."""

    def classify(self, prompts: list[str]) -> list[ClassifyResult]:
        out = super().classify(prompts)
        return [replace(r, normalized="\u200b" in p) for p, r in zip(prompts, out, strict=True)]


def test_classify_reports_whether_the_prompt_was_normalised() -> None:
    with client_for(NormalizingBackend()) as client:
        r = client.post("/v1/classify", json={"prompts": ["b\u200bomb please", "bread please"]})
    assert r.status_code == 200, r.text
    assert [x["normalized"] for x in r.json()["results"]] == [True, False]
