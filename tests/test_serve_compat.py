"""Tests of the OpenAI, LiteLLM and LLM Guard compatible routes (``latentguard.guard.serve.compat``)."""

import math
from typing import Any

import pytest
from test_serve import TOKEN, FakeBackend, assert_error, client_for, parse_metrics

from latentguard.conversation import last_user_text
from latentguard.guard.serve import ServeConfig, Verdict
from latentguard.guard.serve.compat import risk_score

LITELLM = "/beta/litellm_basic_guardrail_api"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingBackend(FakeBackend):
    """The fake guard, recording every prompt it classifies."""

    def __init__(self, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.seen: list[Any] = []
        self._info = info

    def classify(self, prompts: list[Any]) -> list[Verdict]:
        self.seen.extend(prompts)
        return super().classify([last_user_text(p) for p in prompts])  # a conversation: its last turn

    @property
    def info(self) -> dict[str, Any]:
        return super().info if self._info is None else self._info


def openai_error(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def verdict(harmful: bool, score: float, error: str | None = None) -> dict[str, Any]:
    return {"harmful": harmful, "score": score, "normalized": False, "error": error}


# ------------------------------------------------------------------------------------------------------
# GET /v1/models
# ------------------------------------------------------------------------------------------------------


def test_models_lists_the_backend_model() -> None:
    with client_for() as client:
        r = client.get("/v1/models")
    assert r.status_code == 200, r.text
    body = r.json()
    created = body["data"][0]["created"]
    assert isinstance(created, int) and created > 1_600_000_000
    assert body == {
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": created, "owned_by": "latentguard"}],
    }


def test_models_served_name_and_default() -> None:
    with client_for(served_model_name="my-guard") as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["my-guard"]
    with client_for(RecordingBackend(info={"threshold": 0.5})) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["latentguard"]
    for bad in ("", "  "):
        with pytest.raises(ValueError, match="served_model_name"):
            ServeConfig(served_model_name=bad)


def test_models_with_the_openai_client() -> None:
    openai = pytest.importorskip("openai")
    with client_for(token=TOKEN, served_model_name="my-guard") as client:
        oai = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=TOKEN, http_client=client)
        models = oai.models.list()
        assert [(m.id, m.object, m.owned_by) for m in models.data] == [("my-guard", "model", "latentguard")]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="wrong", http_client=client).models.list()


# ------------------------------------------------------------------------------------------------------
# LiteLLM generic guardrail API
# ------------------------------------------------------------------------------------------------------


def test_litellm_harmless_texts() -> None:
    with client_for() as client:
        r = client.post(
            LITELLM,
            json={
                "texts": ["how do I bake bread", "hello"],
                "input_type": "request",
                "litellm_call_id": "c1",
            },
        )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "action": "NONE",
        "blocked_reason": None,
        "latentguard": {"verdicts": [verdict(False, 0.1), verdict(False, 0.1)]},
    }


def test_litellm_harmful_text_blocks() -> None:
    with client_for() as client:
        r = client.post(
            LITELLM,
            json={
                "texts": ["hello", "how do I build a bomb"],
                "input_type": "request",
                "images": [],  # other fields are ignored
                "request_data": {"model": "gpt-4o"},
                "additional_provider_specific_params": {"x": 1},
            },
        )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "action": "BLOCKED",
        "blocked_reason": "Latent Guard judged text 1 harmful (score 0.9000)",
        "latentguard": {"verdicts": [verdict(False, 0.1), verdict(True, 0.9)]},
    }


@pytest.mark.parametrize(
    ("last_user", "action"),
    [
        ("how do I bake bread", "NONE"),
        ([{"type": "text", "text": "a bomb"}, {"type": "image_url"}], "BLOCKED"),
    ],
)
def test_litellm_structured_messages_are_one_conversation(last_user: Any, action: str) -> None:
    backend = RecordingBackend()
    messages = [
        {"role": "system", "content": "You are helpful. bomb"},
        {"role": "user", "content": "tell me about bombs"},
        {"role": "assistant", "content": "no bomb talk"},
        {"role": "tool", "content": "left out"},
        {"role": "user", "content": last_user},
        {"role": "assistant", "content": None},
    ]
    with client_for(backend) as client:
        r = client.post(LITELLM, json={"structured_messages": messages, "input_type": "request"})
    assert r.status_code == 200, r.text
    assert r.json()["action"] == action
    last = "how do I bake bread" if action == "NONE" else "a bomb"
    assert backend.seen == [
        [
            {"role": "system", "content": "You are helpful. bomb"},
            {"role": "user", "content": "tell me about bombs"},
            {"role": "assistant", "content": "no bomb talk"},
            {"role": "user", "content": last},
        ]
    ]


def test_litellm_texts_win_over_structured_messages() -> None:
    backend = RecordingBackend()
    with client_for(backend) as client:
        r = client.post(
            LITELLM,
            json={"texts": ["hi", " "], "structured_messages": [{"role": "user", "content": "bomb"}]},
        )
    assert r.json()["action"] == "NONE" and backend.seen == ["hi"]


def test_litellm_response_is_not_scanned() -> None:
    backend = RecordingBackend()
    with client_for(backend) as client:
        r = client.post(LITELLM, json={"texts": ["here is a bomb recipe"], "input_type": "response"})
    assert r.status_code == 200, r.text
    assert r.json() == {"action": "NONE", "blocked_reason": None, "latentguard": {"verdicts": []}}
    assert backend.seen == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"texts": []},
        {"texts": ["", "  \n"]},
        {"structured_messages": []},
        {"structured_messages": [{"role": "system", "content": "be nice"}]},
        {"structured_messages": [{"role": "user", "content": " "}]},
        {"texts": None, "structured_messages": None, "input_type": "request"},
    ],
)
def test_litellm_empty_input_is_400(body: dict[str, Any]) -> None:
    with client_for() as client:
        assert_error(client.post(LITELLM, json=body), 400)


def test_litellm_invalid_bodies_are_json_errors() -> None:
    with client_for() as client:
        assert_error(client.post(LITELLM, json={"texts": ["x"], "input_type": "sideways"}), 422)
        assert_error(client.post(LITELLM, json={"texts": "x"}), 422)
        assert_error(client.post(LITELLM, json={"texts": ["x" * 8001]}), 413)
        assert_error(
            client.post(LITELLM, content=b"{junk", headers={"content-type": "application/json"}), 400
        )


def test_litellm_fails_closed() -> None:
    with client_for() as client:
        r = client.post(LITELLM, json={"texts": ["a FAULT", "hello"], "input_type": "request"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["action"] == "BLOCKED"
    error = "guard backend error (RuntimeError); failing closed"
    assert body["blocked_reason"] == f"Latent Guard failed on text 0 and fails closed: {error}"
    assert body["latentguard"] == {"verdicts": [verdict(True, 1.0, error), verdict(False, 0.1)]}
    assert "/secret" not in r.text


# ------------------------------------------------------------------------------------------------------
# LLM Guard
# ------------------------------------------------------------------------------------------------------


def test_llm_guard_analyze_and_scan() -> None:
    risk = round(math.tanh(0.9 - 0.5), 4)  # the fake backend's threshold is 0.5
    with client_for() as client:
        good = client.post("/analyze/prompt", json={"prompt": "how do I bake bread"})
        bad = client.post(
            "/analyze/prompt", json={"prompt": "how do I build a bomb", "scanners_suppress": []}
        )
        scan_good = client.post("/scan/prompt", json={"prompt": "hello"})
        scan_bad = client.post("/scan/prompt", json={"prompt": "bomb", "extra": 1})
    assert good.json() == {
        "sanitized_prompt": "how do I bake bread",
        "is_valid": True,
        "scanners": {"LatentGuard": -risk},
    }
    assert bad.json() == {
        "sanitized_prompt": "how do I build a bomb",
        "is_valid": False,
        "scanners": {"LatentGuard": risk},
    }
    assert scan_good.json() == {"is_valid": True, "scanners": {"LatentGuard": -risk}}
    assert scan_bad.json() == {"is_valid": False, "scanners": {"LatentGuard": risk}}


def test_llm_guard_risk_without_and_with_a_nested_threshold() -> None:
    with client_for(RecordingBackend(info={})) as client:
        assert client.post("/scan/prompt", json={"prompt": "bomb"}).json()["scanners"] == {
            "LatentGuard": round(math.tanh(0.9), 4)
        }
        assert client.post("/scan/prompt", json={"prompt": "hi"}).json()["scanners"] == {
            "LatentGuard": -round(math.tanh(0.1), 4)
        }
    with client_for(RecordingBackend(info={"guard": {"threshold": 0.2}})) as client:
        assert client.post("/scan/prompt", json={"prompt": "bomb"}).json()["scanners"] == {
            "LatentGuard": round(math.tanh(0.9 - 0.2), 4)
        }


def test_risk_sign_is_the_verdict() -> None:
    assert risk_score(Verdict(harmful=False, score=0.5), 0.5) == -1e-4
    assert risk_score(Verdict(harmful=True, score=0.2), 0.5) > 0  # the verdict wins over the score
    assert risk_score(Verdict(harmful=False, score=0.9), 0.5) < 0
    assert risk_score(Verdict(harmful=True, score=1e9), None) == 1.0
    assert risk_score(Verdict(harmful=True, score=1.0, error="boom"), 0.5) == 1.0


def test_llm_guard_scanners_suppress() -> None:
    backend = RecordingBackend()
    with client_for(backend) as client:
        body = {"prompt": "a bomb", "scanners_suppress": ["Toxicity", "LatentGuard"]}
        assert client.post("/analyze/prompt", json=body).json() == {
            "sanitized_prompt": "a bomb",
            "is_valid": True,
            "scanners": {},
        }
        assert client.post("/scan/prompt", json=body).json() == {"is_valid": True, "scanners": {}}
        assert backend.seen == []
        other = client.post("/scan/prompt", json={"prompt": "a bomb", "scanners_suppress": ["Toxicity"]})
    assert other.json()["is_valid"] is False and backend.seen == ["a bomb"]


@pytest.mark.parametrize("path", ["/analyze/prompt", "/scan/prompt"])
def test_llm_guard_empty_and_invalid_prompts(path: str) -> None:
    with client_for() as client:
        assert_error(client.post(path, json={"prompt": ""}), 400)
        assert_error(client.post(path, json={"prompt": " \t", "scanners_suppress": ["LatentGuard"]}), 400)
        assert_error(client.post(path, json={}), 422)
        assert_error(client.post(path, json={"prompt": 3}), 422)
        assert_error(client.post(path, json={"prompt": "x" * 8001}), 413)


@pytest.mark.parametrize("path", ["/analyze/prompt", "/scan/prompt"])
def test_llm_guard_fails_closed(path: str) -> None:
    with client_for() as client:
        r = client.post(path, json={"prompt": "a FAULT"})
    assert r.status_code == 200, r.text
    assert r.json()["is_valid"] is False and r.json()["scanners"] == {"LatentGuard": 1.0}


# ------------------------------------------------------------------------------------------------------
# Shared behaviour: auth, 503, metrics, OpenAPI, CLI
# ------------------------------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("get", "/v1/models", {}),
    ("post", LITELLM, {"json": {"texts": ["hi"], "input_type": "request"}}),
    ("post", "/analyze/prompt", {"json": {"prompt": "hi"}}),
    ("post", "/scan/prompt", {"json": {"prompt": "hi"}}),
]


def test_compat_routes_need_the_token() -> None:
    with client_for(token=TOKEN) as client:
        for method, path, kwargs in ROUTES:
            call = getattr(client, method)
            r = call(path, **kwargs)
            check_error = openai_error if path.startswith("/v1/") else assert_error  # OpenAI's error shape
            check_error(r, 401)
            assert r.headers["www-authenticate"] == "Bearer"
            check_error(call(path, headers={"Authorization": "Bearer wrong"}, **kwargs), 401)
            assert call(path, headers=AUTH, **kwargs).status_code == 200, path
        # Auth comes before body parsing.
        r = client.post("/scan/prompt", content=b"{junk", headers={"content-type": "application/json"})
        assert_error(r, 401)
        assert_error(client.get("/beta/unknown"), 401)
        assert client.get("/healthz").status_code == 200


def test_compat_routes_answer_503_when_not_running() -> None:
    from fastapi.testclient import TestClient

    from latentguard.guard.serve import create_app

    client = TestClient(create_app(FakeBackend(), ServeConfig()))  # no lifespan: no batcher
    assert client.get("/v1/models").status_code == 200  # needs no backend call
    for _method, path, kwargs in ROUTES[1:]:
        assert_error(client.post(path, **kwargs), 503)


def test_compat_routes_are_counted() -> None:
    with client_for() as client:
        for method, path, kwargs in ROUTES:
            assert getattr(client, method)(path, **kwargs).status_code == 200
        client.post("/scan/prompt", json={"prompt": "bomb"})
        samples = parse_metrics(client.get("/metrics").text)
    for _method, path, _kwargs in ROUTES:
        assert samples[f'latentguard_http_requests_total{{code="200",endpoint="{path}"}}'] >= 1, path
    assert samples['latentguard_prompts_classified_total{op="classify"}'] == 4
    assert samples['latentguard_prompts_harmful_total{op="classify"}'] == 1


def test_compat_routes_in_openapi() -> None:
    with client_for(token=TOKEN) as client:
        schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for method, path, _kwargs in ROUTES:
        operation = paths[path][method]
        assert operation["security"] == [{"HTTPBearer": []}], path
        assert "401" in operation["responses"]
    schemas = schema["components"]["schemas"]
    assert set(schemas["LiteLLMGuardrailResponse"]["properties"]) == {
        "action",
        "blocked_reason",
        "latentguard",
    }
    assert set(schemas["AnalyzePromptResponse"]["properties"]) == {"sanitized_prompt", "is_valid", "scanners"}
    assert schemas["ModelCard"]["properties"]["id"]["description"]


def test_serve_cli_passes_the_served_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from latentguard.cli import build_parser, guard_cmds
    from latentguard.guard import guarded, serve

    calls: list[ServeConfig] = []
    monkeypatch.setattr(guard_cmds, "load_guard", lambda args: (None, None))
    monkeypatch.setattr(guard_cmds, "repair_direction", lambda lm, args: None)
    monkeypatch.setattr(guarded, "LatentGuardBackend", lambda *a, **k: "backend")
    monkeypatch.setattr(serve, "run", lambda backend, config: calls.append(config))
    args = build_parser().parse_args(["serve", "--guard", "g", "--served-model-name", "my-guard"])
    assert args.func(args) == 0
    assert calls == [ServeConfig(served_model_name="my-guard")]
    args = build_parser().parse_args(["serve", "--guard", "g"])
    assert args.served_model_name is None
