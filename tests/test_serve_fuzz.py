"""Fuzzing every POST route of the OpenAPI schema with seeded random bodies: never a 5xx.

Bodies are built from each route's own schema (its property names, valid examples mutated one field at a
time, wrong types, deep nesting, odd unicode and numbers) without extra dependencies.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from test_serve import FakeBackend, client_for

VALID: dict[str, dict[str, Any]] = {
    "/v1/classify": {"prompts": ["hello"]},
    "/v1/generate": {"prompts": ["hello"], "max_new_tokens": 4, "policy": "flag"},
    "/v1/chat/completions": {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 1,
        "stop": ["x"],
        "stream": False,
        "n": 1,
        "latentguard": {"policy": "allow"},
    },
    "/v1/moderations": {"input": ["hi", "a bomb"], "model": "m"},
    "/beta/litellm_basic_guardrail_api": {
        "texts": ["hi"],
        "structured_messages": [{"role": "user", "content": "hi"}],
        "input_type": "request",
        "litellm_call_id": "c",
    },
    "/analyze/prompt": {"prompt": "hi", "scanners_suppress": ["x"]},
    "/scan/prompt": {"prompt": "hi"},
}


def odd_value(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [
        None,
        True,
        0,
        -1,
        2**63,
        -(2**70),
        1e308,
        -0.0,
        "",
        " ",
        "\x00",
        "\ud800",
        "ünï 😀 \u202e",
        "NaN",
        "x" * rng.choice([1, 100, 9000]),
        "block",
        "user",
    ]
    if depth < 3:
        choices += [
            [odd_value(rng, depth + 1) for _ in range(rng.randint(0, 3))],
            {rng.choice(["role", "content", "type", "text", "policy", "a"]): odd_value(rng, depth + 1)},
            [
                {
                    "role": rng.choice(["user", "assistant", "system", "tool", 3]),
                    "content": odd_value(rng, depth + 1),
                }
            ],
        ]
    return rng.choice(choices)


def bodies(route: str, rng: random.Random, n: int) -> list[Any]:
    valid = VALID[route]
    out: list[Any] = [valid, {}, [], "x", 3, None]
    for _ in range(n):
        body = dict(valid)
        for key in rng.sample(list(valid), min(len(valid), rng.choice([1, 1, 1, 2, len(valid)]))):
            if rng.random() < 0.2:
                body.pop(key)
            else:
                body[key] = odd_value(rng)
        if rng.random() < 0.2:
            body[rng.choice(["extra", "n", "stream", "policy"])] = odd_value(rng)
        out.append(body)
    return out


@pytest.mark.parametrize("route", list(VALID))
def test_fuzzed_bodies_never_get_a_5xx(route: str) -> None:
    rng = random.Random(route)
    with client_for(FakeBackend(fault=None), raise_server_exceptions=False) as client:
        schema = client.get("/openapi.json").json()
        assert "post" in schema["paths"][route]
        for body in bodies(route, rng, 80):
            raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
            r = client.post(route, content=raw, headers={"content-type": "application/json"})
            assert r.status_code < 500, (route, body, r.status_code, r.text[:300])
            assert r.headers["content-type"].startswith(("application/json", "text/event-stream")), r.text
        for raw in (b"", b"{", b"\xff\xfe", b"[" * 5000, b'{"a": NaN}'):
            r = client.post(route, content=raw, headers={"content-type": "application/json"})
            assert r.status_code < 500, (route, raw[:20], r.status_code)


def test_every_post_route_is_fuzzed() -> None:
    with client_for() as client:
        schema = client.get("/openapi.json").json()
    assert {p for p, ops in schema["paths"].items() if "post" in ops} == set(VALID)
