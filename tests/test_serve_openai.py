"""Tests of ``POST /v1/chat/completions`` and ``POST /v1/moderations`` (``latentguard.guard.serve.openai_routes``).

The wire format is checked with the fake guard; the real thing (a tiny model with a guard, real uvicorn on
loopback) with the official ``openai`` client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_conversation import CONVERSATIONS, random_category_head
from test_guard import random_probe_guard
from test_serve import TOKEN, FakeBackend, client_for, running_server

from latentguard.guard.serve import ServeConfig, Verdict, create_app
from latentguard.guard.serve.openai_routes import moderation_result
from latentguard.guard.serve.openai_schemas import OPENAI_CATEGORIES
from latentguard.guard.types import BLOCKED_REPLY
from latentguard.models import LoadedModel

CHAT = "/v1/chat/completions"
MOD = "/v1/moderations"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def openai_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, err
    assert err["message"] and err["type"]
    return err


def sse(text: str) -> list[Any]:
    events = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# ------------------------------------------------------------------------------------------------------
# Wire format, with the fake guard (harmful iff "bomb")
# ------------------------------------------------------------------------------------------------------


def test_chat_answers_and_blocks() -> None:
    with client_for() as client:
        ok = client.post(CHAT, json={"model": "m", "messages": user("hello"), "max_tokens": 9})
        bad = client.post(CHAT, json={"messages": user("a bomb")})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "answer to hello",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop" and body["model"] == "fake-model"
    assert body["latentguard"]["harmful"] is False and body["latentguard"]["threshold"] == 0.5
    blocked = bad.json()
    assert blocked["choices"][0]["finish_reason"] == "content_filter"
    assert blocked["choices"][0]["message"]["content"] == BLOCKED_REPLY
    assert blocked["latentguard"] | {"error": None} == blocked["latentguard"]
    assert blocked["latentguard"]["harmful"] and blocked["latentguard"]["blocked"]


def test_chat_policy_override_and_server_default() -> None:
    backend = FakeBackend()
    with client_for(backend) as client:
        r = client.post(CHAT, json={"messages": user("a bomb"), "latentguard": {"policy": "flag"}})
        assert r.json()["choices"][0]["message"]["content"] == "answer to a bomb"
        assert r.json()["latentguard"]["flagged"] is True
        openai_error(client.post(CHAT, json={"messages": user("x"), "latentguard": {"policy": "deny"}}), 422)
    with client_for(FakeBackend(), policy="allow") as client:
        r = client.post(CHAT, json={"messages": user("a bomb")})
        assert (
            r.json()["choices"][0]["finish_reason"] == "stop" and r.json()["latentguard"]["policy"] == "allow"
        )
    assert [c[2] for c in backend.generate_calls] == ["flag"]
    with pytest.raises(ValueError, match="policy"):
        ServeConfig(policy="deny")  # type: ignore[arg-type]


def test_chat_reads_the_last_user_message_of_a_plain_backend() -> None:
    backend = FakeBackend()
    with client_for(backend) as client:
        messages = [*user("a bomb"), {"role": "assistant", "content": "no"}, *user("bake bread")]
        assert client.post(CHAT, json={"messages": messages}).json()["choices"][0]["finish_reason"] == "stop"
    assert backend.generate_calls[0][0] == ["bake bread"]


def test_chat_stream_and_blocked_stream() -> None:
    with client_for() as client:
        r = client.post(
            CHAT, json={"messages": user("hi"), "stream": True, "stream_options": {"include_usage": True}}
        )
        blocked = client.post(CHAT, json={"messages": user("a bomb"), "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = sse(r.text)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert text == "answer to hi"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is not None
    (one,) = sse(blocked.text)
    assert one["choices"][0]["finish_reason"] == "content_filter"
    assert one["choices"][0]["delta"]["content"] == BLOCKED_REPLY and one["latentguard"]["blocked"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"messages": user("x"), "n": 2}, 400),
        ({"messages": []}, 400),
        ({"messages": [{"role": "system", "content": "s"}]}, 400),
        ({"messages": user("  ")}, 400),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            400,
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, 422),
        ({"messages": "hi"}, 422),
        ({"messages": user("x"), "max_tokens": 513}, 422),
        ({"messages": user("x"), "max_tokens": 0}, 422),
        ({"messages": user("x"), "temperature": 5}, 422),
        ({"messages": user("x"), "stop": ["a", "b", "c", "d", "e"]}, 400),
        ({"messages": user("x") * 65}, 413),
        ({"messages": user("x" * 32001)}, 413),
        ({}, 422),
    ],
)
def test_chat_bad_input_is_an_openai_error(body: dict[str, Any], status: int) -> None:
    with client_for() as client:
        openai_error(client.post(CHAT, json=body), status)


def test_openai_routes_errors_auth_and_fail_closed() -> None:
    with client_for(token=TOKEN) as client:
        for path, body in ((CHAT, {"messages": user("x")}), (MOD, {"input": "x"})):
            err = openai_error(client.post(path, json=body), 401)
            assert err["type"] == "authentication_error" and err["code"] == "invalid_api_key"
            openai_error(client.post(path, json=body, headers={"Authorization": "Bearer nope"}), 401)
        openai_error(client.get("/v1/models"), 401)
        assert_plain = client.post("/v1/classify", json={"prompts": ["x"]})
        assert assert_plain.status_code == 401 and isinstance(assert_plain.json()["error"], str)  # own shape
        err = openai_error(
            client.post(CHAT, content=b"{junk", headers={**AUTH, "content-type": "application/json"}), 400
        )
        failed = client.post(CHAT, json={"messages": user("a FAULT")}, headers=AUTH)
        assert failed.json()["choices"][0]["finish_reason"] == "content_filter"
        assert "failing closed" in failed.json()["latentguard"]["error"]
        mod = client.post(MOD, json={"input": ["a FAULT", "hi"]}, headers=AUTH).json()
        assert [r["flagged"] for r in mod["results"]] == [True, False]


def test_openai_routes_answer_503_when_not_running() -> None:
    from fastapi.testclient import TestClient

    client = TestClient(create_app(FakeBackend(), ServeConfig()))  # no lifespan
    openai_error(client.post(CHAT, json={"messages": user("x")}), 503)
    openai_error(client.post(MOD, json={"input": "x"}), 503)


def test_moderations_shape() -> None:
    with client_for() as client:
        r = client.post(MOD, json={"input": ["hello", "a bomb"], "model": "omni-moderation-latest"})
        one = client.post(MOD, json={"input": "hello"})
        for bad in ([], [1], [{"type": "image_url"}], None, 3):
            openai_error(client.post(MOD, json={"input": bad}), 400 if bad is not None else 400)
        openai_error(client.post(MOD, json={"model": "x"}), 422)
        openai_error(client.post(MOD, json={"input": "x" * 8001}), 413)
    body = r.json()
    assert body["id"].startswith("modr-") and body["model"] == "omni-moderation-latest"
    assert [x["flagged"] for x in body["results"]] == [False, True]
    assert len(one.json()["results"]) == 1
    for res in body["results"]:
        assert set(OPENAI_CATEGORIES) <= set(res["categories"]) == set(res["category_scores"])
        assert res["category_applied_input_types"]["violence"] == ["text"]


def test_moderation_result_maps_the_categories() -> None:
    scores = {"physical_harm": 0.8, "adult_content": 0.3, "illegal_activity": 0.1}
    res = moderation_result(Verdict(harmful=True, score=2.0, category_scores=scores), 1.0)
    assert res.category_scores["violence"] == 0.8 and res.category_scores["illicit/violent"] == 0.8
    assert res.category_scores["sexual"] == 0.3 and res.category_scores["self-harm"] == 0.0
    assert res.categories["violence"] and not res.categories["sexual"]
    assert (
        res.categories["latentguard/physical_harm"]
        and res.category_scores["latentguard/adult_content"] == 0.3
    )
    low = moderation_result(Verdict(harmful=True, score=2.0, category_scores={"adult_content": 0.2}), 1.0)
    assert low.categories["sexual"]  # a flagged input always gets its most likely category
    clean = moderation_result(Verdict(harmful=False, score=0.0, category_scores=scores), 1.0)
    assert not any(clean.categories.values()) and clean.category_scores["violence"] == 0.8


def test_openai_routes_in_openapi() -> None:
    with client_for(token=TOKEN) as client:
        schema = client.get("/openapi.json").json()
    for path in (CHAT, MOD):
        op = schema["paths"][path]["post"]
        assert op["security"] == [{"HTTPBearer": []}] and "401" in op["responses"]
    assert "latentguard" in schema["components"]["schemas"]["ChatCompletion"]["properties"]


# ------------------------------------------------------------------------------------------------------
# Real server, tiny model, the openai client
# ------------------------------------------------------------------------------------------------------


@pytest.fixture()
def guarded_server(llama_lm: LoadedModel) -> Iterator[tuple[str, Any]]:
    from latentguard.guard.guarded import LatentGuardBackend
    from latentguard.guard.score import check

    guard = random_probe_guard(llama_lm, [1, 2])
    guard.categories = random_category_head(llama_lm, 2)
    harmless = [
        "How do I bake bread?",
        *(m["content"] for m in CONVERSATIONS["multi turn"] if m["role"] == "user"),
        "Name a colour.",
    ]
    conv_score = check(llama_lm, guard, [CONVERSATIONS["multi turn"]])[0].score
    guard.threshold = max([conv_score, *(v.score for v in check(llama_lm, guard, harmless))]) + 1e-3
    backend = LatentGuardBackend(llama_lm, guard)
    app = create_app(backend, ServeConfig(token=TOKEN, served_model_name="tiny-guarded"))
    with running_server(app) as url:
        yield url, guard


def test_openai_client_against_a_real_server(guarded_server: tuple[str, Any], llama_lm: LoadedModel) -> None:
    openai = pytest.importorskip("openai")
    from latentguard.guard.score import check

    url, guard = guarded_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny-guarded"]

    chat = client.chat.completions.create(
        model="tiny-guarded", messages=user("How do I bake bread?"), max_tokens=12
    )
    text = chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length") and isinstance(text, str) and text, text
    assert chat.usage is not None and chat.usage.prompt_tokens > 0
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    extra = chat.model_extra or {}
    assert extra["latentguard"]["harmful"] is False and extra["latentguard"]["threshold"] == guard.threshold

    stream = client.chat.completions.create(
        model="tiny-guarded", messages=user("How do I bake bread?"), max_tokens=12, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason

    multi = client.chat.completions.create(model="x", messages=CONVERSATIONS["multi turn"], max_tokens=6)
    expected = check(llama_lm, guard, [CONVERSATIONS["multi turn"]])[0].score
    assert (multi.model_extra or {})["latentguard"]["score"] == pytest.approx(expected, abs=1e-4)

    harmful = client.chat.completions.create(
        model="x",
        messages=user("Something the guard has not seen"),
        max_tokens=6,
        extra_body={"latentguard": {}},
    )
    verdict = (harmful.model_extra or {})["latentguard"]
    assert (harmful.choices[0].finish_reason == "content_filter") == verdict["harmful"]

    seeded = [
        client.chat.completions.create(model="x", messages=user("Hi"), max_tokens=8, temperature=1.0, seed=3)
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]

    mod = client.moderations.create(
        model="omni-moderation-latest", input=["How do I bake bread?", "Name a colour."]
    )
    assert [r.flagged for r in mod.results] == [False, False]
    scores = mod.results[0].category_scores.model_dump(by_alias=True)
    numeric = {**scores, **(mod.results[0].category_scores.model_extra or {})}
    assert sum(isinstance(v, float) for v in numeric.values()) >= 11
    head = [v for k, v in numeric.items() if k.startswith("latentguard/")]
    assert len(head) == 11 and all(0.0 < v < 1.0 for v in head)  # the category head's scores got through

    import httpx

    litellm = httpx.post(
        f"{url}/beta/litellm_basic_guardrail_api",
        json={"structured_messages": CONVERSATIONS["multi turn"], "input_type": "request"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    assert litellm["action"] == "NONE"
    assert litellm["latentguard"]["verdicts"][0]["score"] == pytest.approx(expected, abs=1e-4)

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="x", messages=user("hi")
        )
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model="x", messages=user("hi"), n=2)


def test_real_server_blocks_harmful_streams_in_one_chunk(guarded_server: tuple[str, Any]) -> None:
    openai = pytest.importorskip("openai")
    url, guard = guarded_server
    guard.threshold = -1e9  # the server shares the guard object: everything is now harmful
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    chunks = list(client.chat.completions.create(model="x", messages=user("hi"), stream=True))
    assert len(chunks) == 1 and chunks[0].choices[0].finish_reason == "content_filter"
    plain = client.chat.completions.create(model="x", messages=user("hi"))
    assert (
        plain.choices[0].finish_reason == "content_filter"
        and plain.choices[0].message.content == BLOCKED_REPLY
    )
    flagged = client.chat.completions.create(
        model="x", messages=user("hi"), max_tokens=4, extra_body={"latentguard": {"policy": "flag"}}
    )
    assert (
        flagged.choices[0].finish_reason != "content_filter"
        and (flagged.model_extra or {})["latentguard"]["flagged"]
    )
    mod = client.moderations.create(input="hi")
    assert mod.results[0].flagged and any(mod.results[0].categories.model_dump().values()) is not None


def test_chat_completion_repairs_over_refusals(llama_lm: LoadedModel) -> None:
    import torch
    from fastapi.testclient import TestClient
    from test_guard import FakeJudge

    from latentguard.directions import Directions
    from latentguard.guard.guarded import LatentGuardBackend

    guard = random_probe_guard(llama_lm, [1, 2])
    guard.threshold = 1e9  # harmless: every answer is judged, and the fake judge calls it a refusal
    g = torch.Generator().manual_seed(3)
    refusal = Directions(
        vectors={i: torch.randn(llama_lm.d_model, generator=g) for i in range(1, 4)},
        kind="refusal",
        position="t_post_inst",
        fingerprint=llama_lm.fingerprint,
    )
    judge = FakeJudge()
    backend = LatentGuardBackend(llama_lm, guard, judge=judge, repair=True, refusal_direction=refusal)
    with TestClient(create_app(backend, ServeConfig())) as client:
        body = {"messages": CONVERSATIONS["multi turn"], "max_tokens": 6}
        plain = client.post(CHAT, json=body).json()
        streamed = sse(client.post(CHAT, json={**body, "stream": True}).text)
    assert plain["latentguard"]["repaired"] is True
    (reply,) = (backend.chat(CONVERSATIONS["multi turn"], max_new_tokens=6, policy="block"),)
    assert plain["choices"][0]["message"]["content"] == reply.repaired_response != reply.response
    assert (
        "".join(c["choices"][0]["delta"]["content"] or "" for c in streamed if c["choices"])
        == reply.repaired_response
    )
    assert judge.seen[0][1] == [
        CONVERSATIONS["multi turn"][-1]["content"]
    ]  # the judge reads the last user turn
