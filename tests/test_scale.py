"""Scaling out: the Ray engine against the local engine (2 workers on loopback), a worker killed
mid-run, big-model loading options on CPU (device maps, disk offload, bfloat16, 8/4-bit errors), and
the multi-worker serving factory."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_model

from latentguard.activations import ExtractConfig, extract
from latentguard.generation import GenerationConfig, generate
from latentguard.guard.fit import LatentGuard
from latentguard.guard.score import check
from latentguard.judge import load_judge
from latentguard.models import LoadedModel, ModelLoadError, ModelRef, load, save_model_dir
from latentguard.positions import locate

PROMPTS = [
    f"Tell me fact number {i} about {'the old harbour ' * (i % 4)}bread."
    if i % 3
    else f"Hi {i}, how are you?"
    for i in range(24)
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, base_tokenizer: Any) -> Path:
    """A 3-layer llama with the SmolLM2 tokenizer, saved as a model directory ``load()`` reads."""
    model = tiny_model("llama", len(base_tokenizer))
    return save_model_dir(model, base_tokenizer, tmp_path_factory.mktemp("scale") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> LoadedModel:
    return load(str(tiny_dir))


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    """A local 2-worker Ray cluster on 127.0.0.1, started and stopped here."""
    ray = pytest.importorskip("ray")
    from latentguard.ray_engine import EngineConfig, ray_cluster

    cfg = EngineConfig(workers=2, threads=1)
    with ray_cluster(cfg) as info:
        assert info == {"local": True, "started": True}
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        yield cfg
    assert not ray.is_initialized()


def centroid_guard(lm: LoadedModel, layers: list[int]) -> LatentGuard:
    g = torch.Generator().manual_seed(0)
    return LatentGuard(
        method="centroid",
        layers=layers,
        position="t_inst",
        threshold=0.0,
        centroids_harmful={i: torch.randn(lm.d_model, generator=g, dtype=torch.float64) for i in layers},
        centroids_harmless={i: torch.randn(lm.d_model, generator=g, dtype=torch.float64) for i in layers},
        fingerprint=lm.fingerprint,
        template_hash=lm.template_hash,
        model=lm.spec,
    )


# --------------------------------------------------------------------------- the Ray engine


@dataclass
class KilledRun:
    """One Ray extraction during which a worker died on its first chunk, and what it left behind."""

    result: Any
    reference: Any
    marker: Path
    messages: list[str]
    cache: Path
    config: ExtractConfig


@pytest.fixture(scope="module")
def killed_run(
    engine: Any, tiny: LoadedModel, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> KilledRun:
    """Extract on 2 Ray workers, one of which exits on its first chunk (Ray restarts it and retries)."""
    from latentguard import ray_engine
    from latentguard.ray_engine.faults import Faults

    tmp = tmp_path_factory.mktemp("killed")
    cfg = ExtractConfig(batch_size=4, chunk_size=4, progress=False)
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.INFO)
    log = logging.getLogger("latentguard.ray_engine")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LATENTGUARD_CACHE", str(tmp / "cache"))
            reference = extract(tiny, PROMPTS, replace(cfg, use_cache=False))
            result = ray_engine.extract(
                ModelRef(str(tiny_dir)),
                PROMPTS,
                cfg,
                engine,
                faults=Faults(crash_once=str(tmp / "crash-once")),
            )
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
    return KilledRun(result, reference, tmp / "crash-once", messages, tmp / "cache", cfg)


@pytest.mark.slow
def test_ray_extract_equals_local_and_shares_the_cache(
    killed_run: KilledRun, tiny: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    got, ref = killed_run.result, killed_run.reference
    assert got.instructions == PROMPTS and got.layers == ref.layers and got.fingerprint == ref.fingerprint
    torch.testing.assert_close(got.activations, ref.activations, atol=1e-5, rtol=1e-5)
    assert got.meta == ref.meta  # same cache key, model facts, n_from_cache=0
    got.save(tmp_path / "ray")
    ref.save(tmp_path / "local")
    assert json.loads((tmp_path / "ray" / "meta.json").read_text()) == json.loads(
        (tmp_path / "local" / "meta.json").read_text()
    )
    # the workers wrote the local engine's chunk cache: a local run now reads every chunk
    monkeypatch.setenv("LATENTGUARD_CACHE", str(killed_run.cache))
    again = extract(tiny, PROMPTS, killed_run.config)
    assert again.meta["n_from_cache"] == len(PROMPTS)
    torch.testing.assert_close(again.activations, got.activations, atol=0, rtol=0)


@pytest.mark.slow
def test_killed_worker_loses_and_duplicates_nothing(killed_run: KilledRun) -> None:
    assert killed_run.marker.is_file()  # a worker really died, on its first chunk
    got = killed_run.result
    assert got.instructions == PROMPTS and got.activations.shape[0] == len(PROMPTS)
    # every row is there once, in input order (all prompts differ, so a lost or doubled row shows)
    torch.testing.assert_close(got.activations, killed_run.reference.activations, atol=1e-5, rtol=1e-5)
    done = [m for m in killed_run.messages if "rows after" in m]
    assert len(done) == len(PROMPTS) // killed_run.config.chunk_size  # each chunk reported once
    assert any("restarted worker" in m for m in done)


@pytest.mark.slow
def test_ray_generate_and_guard_check_equal_local(
    engine: Any, tiny: LoadedModel, tiny_dir: Path, tmp_cache: Path, tmp_path: Path
) -> None:
    from latentguard import ray_engine

    ref_model = ModelRef(str(tiny_dir))
    prompts = PROMPTS[:10]
    gcfg = GenerationConfig(max_new_tokens=6, batch_size=4, progress=False)
    want = generate(tiny, prompts, gcfg)
    got = ray_engine.generate(ref_model, prompts, gcfg, engine, judge="substring")
    assert got.responses == want
    assert got.judge_name == "substring"
    assert got.verdicts == load_judge("substring").judge(want, prompts)

    guard = centroid_guard(tiny, [1, 2])
    path = guard.save(tmp_path / "guard")
    local = check(tiny, guard, PROMPTS, batch_size=4)
    remote = ray_engine.check(ref_model, path, PROMPTS, engine, batch_size=4)
    assert [r.harmful for r in remote] == [r.harmful for r in local]
    for a, b in zip(remote, local, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        assert a.layer_scores.keys() == b.layer_scores.keys()


@pytest.mark.slow
def test_cli_judge_on_ray(engine: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latentguard.cli import main

    rows = [
        {"instruction": f"q{i}", "response": "I'm sorry, I can't help." if i % 2 else f"Sure, step {i}."}
        for i in range(7)
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["-q", "judge", "--data", str(data), "--judge", "substring"]
    assert main([*base, "--out", str(tmp_path / "local.jsonl")]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "ray.jsonl"), "--engine", "ray", "--workers", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)  # stdout is only the summary, Ray logs go elsewhere
    assert summary["judge"] == "substring" and summary["n"] == 7
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()


def test_missing_ray_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from latentguard import ray_engine
    from latentguard.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ray_engine.RayNotInstalledError, match=r"pip install 'latentguard\[ray\]'"):
        ray_engine.ray_cluster().__enter__()
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"response": "Sure."}) + "\n")
    argv = ["-q", "judge", "--data", str(data), "--out", str(tmp_path / "o.jsonl"), "--engine", "ray"]
    assert main(argv) == 2
    assert "latentguard[ray]" in capsys.readouterr().err


def test_engine_config_checks() -> None:
    from latentguard.ray_engine import EngineConfig, default_threads

    assert EngineConfig(workers=2, threads=3).threads_per_worker == 3
    assert EngineConfig(workers=1).threads_per_worker == default_threads(1) >= 1
    for bad in (
        {"workers": 0},
        {"threads": 0},
        {"max_retries": -1},
        {"rows_per_task": 0},
        {"tasks_per_worker": 0},
    ):
        with pytest.raises(ValueError):
            EngineConfig(**bad)


def test_engine_config_has_no_test_knobs() -> None:
    """Fault injection lives in ``ray_engine.faults``, not in the public engine options."""
    from dataclasses import fields

    from latentguard import models, ray_engine
    from latentguard.ray_engine import EngineConfig
    from latentguard.ray_engine.faults import Faults

    names = {f.name for f in fields(EngineConfig)}
    assert names == {
        "workers",
        "threads",
        "address",
        "gpus_per_worker",
        "max_retries",
        "tasks_per_worker",
        "rows_per_task",
        "progress",
    }
    assert not names & {f.name for f in fields(Faults)}
    assert not any("crash" in n or "kill" in n or "fault" in n for n in names)
    with pytest.raises(TypeError):
        EngineConfig(crash_once="marker")  # type: ignore[call-arg]
    assert ray_engine.ModelRef is models.ModelRef  # moved to latentguard.models, still re-exported


# --------------------------------------------------------------------------- big models on one node


def reference_states(lm: LoadedModel, prompt: str) -> torch.Tensor:
    """Unbatched ``output_hidden_states`` at t_inst and t_post_inst: ``[layers+1, 2, d]``."""
    pos = locate(lm.tokenizer, prompt)
    with torch.no_grad():
        out = lm.model(torch.tensor([pos.input_ids], device=lm.device), output_hidden_states=True)
    hs = torch.stack(out.hidden_states)[:, 0]
    return hs[:, [pos.t_inst, pos.t_post_inst]].float().cpu()


def test_layers_on_different_devices_keep_the_hooks_exact(tiny: LoadedModel, tiny_dir: Path) -> None:
    """Layers 1-2 offloaded by accelerate (weights on ``meta``, streamed in by hooks) vs all on CPU."""
    device_map = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    split = load(str(tiny_dir), device_map=device_map, dtype="float32")
    assert getattr(split.model, "hf_device_map", {}).get("model.layers.1") == "disk"
    assert next(split.layers[1].parameters()).device.type == "meta"
    assert split.fingerprint == tiny.fingerprint  # offloaded weights are read for the fingerprint
    cfg = ExtractConfig(batch_size=3, use_cache=False, progress=False)
    got = extract(split, PROMPTS[:5], cfg)
    want = extract(tiny, PROMPTS[:5], cfg)
    torch.testing.assert_close(got.activations, want.activations, atol=1e-5, rtol=1e-5)
    for i, p in enumerate(PROMPTS[:5]):
        torch.testing.assert_close(got.activations[i], reference_states(split, p), atol=1e-5, rtol=1e-5)


def test_device_map_auto_with_max_memory(tiny: LoadedModel, tiny_dir: Path) -> None:
    """``device_map="auto"`` under a CPU memory cap too small for the model: accelerate offloads to disk
    (embeddings included) and extraction still matches."""
    capped = load(str(tiny_dir), device_map="auto", max_memory={"cpu": "1MB"}, dtype="float32")
    assert "disk" in set(getattr(capped.model, "hf_device_map", {}).values())
    assert capped.device == torch.device("cpu")  # where input ids go, though the embedding is offloaded
    cfg = ExtractConfig(batch_size=2, use_cache=False, progress=False)
    torch.testing.assert_close(
        extract(capped, PROMPTS[:3], cfg).activations,
        extract(tiny, PROMPTS[:3], cfg).activations,
        atol=1e-5,
        rtol=1e-5,
    )


def test_bfloat16_load(tiny: LoadedModel, tiny_dir: Path) -> None:
    half = load(str(tiny_dir), dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    cfg = ExtractConfig(batch_size=4, use_cache=False, progress=False)
    got = extract(half, PROMPTS[:4], cfg)
    assert got.activations.dtype == torch.float32 and got.meta["model_dtype"] == "bfloat16"
    want = extract(tiny, PROMPTS[:4], cfg).activations
    cos = torch.nn.functional.cosine_similarity(got.activations, want, dim=-1)
    assert cos.min() > 0.98


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
@pytest.mark.parametrize("bits", [8, 4])
def test_load_in_bits_without_cuda_is_a_clear_error(tiny_dir: Path, bits: int) -> None:
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        load(str(tiny_dir), load_in_bits=bits)


# --------------------------------------------------------------------------- serving with several workers


def test_serving_app_factory_builds_from_env(tiny: LoadedModel, tiny_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from latentguard.guard.factory import app_from_env, serve_config_from_env

    guard = centroid_guard(tiny, [2, 3])
    guard.model = str(tiny_dir)
    path = guard.save(tmp_path / "guard")
    env = {
        "LATENTGUARD_GUARD": str(path),
        "LATENTGUARD_THREADS": str(torch.get_num_threads()),
        "LATENTGUARD_SERVE_MAX_PROMPTS": "3",
        "LATENTGUARD_SERVE_BATCH_MAX_WAIT_MS": "1.5",
    }
    cfg = serve_config_from_env(env)
    assert cfg.max_prompts == 3 and cfg.batch_max_wait_ms == 1.5 and cfg.token is None
    with TestClient(app_from_env(env)) as client:
        r = client.post("/v1/classify", json={"prompts": PROMPTS[:3]})
        assert r.status_code == 200
        want = check(tiny, guard, PROMPTS[:3])
        got = r.json()["results"]
        assert [x["harmful"] for x in got] == [w.harmful for w in want]
        assert [x["score"] for x in got] == pytest.approx([w.score for w in want], abs=1e-6)
        assert client.post("/v1/classify", json={"prompts": PROMPTS[:4]}).status_code == 413
        assert client.get("/readyz").json()["backend"]["fingerprint"] == tiny.fingerprint
    with pytest.raises(ValueError, match="LATENTGUARD_GUARD"):
        app_from_env({})
    with pytest.raises(ValueError, match="not a number"):
        serve_config_from_env({"LATENTGUARD_SERVE_MAX_CHARS": "lots"})
