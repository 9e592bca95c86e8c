"""``organism:SPEC`` / ``attacked:SPEC``: resolution, caching, per-base recipes, and refused specs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from latentguard import organism_aliases as oa
from latentguard.models import LoadedModel, ModelLoadError, load, resolve_spec, save_model_dir, split_alias
from latentguard.organism import AlignConfig, base_answers, cut_framed_answer, recipe_tag, shipped_organism
from latentguard.organism_aliases import BASE_MODEL_FRAME, organism_path, recipe_for

TINY = AlignConfig(extra_shared=False, epochs=0.1, answer_tokens=2, max_response_tokens=4)


def test_split_alias() -> None:
    assert split_alias("organism") == ("organism", None)
    assert split_alias("organism:gemma3-270m") == ("organism", "gemma3-270m")
    assert split_alias("attacked:organism:x") == ("attacked", "organism:x")


def test_resolution_passes_the_base_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oa, "build_organism", lambda base, *a, **k: (tmp_path / f"org-{base}", None))
    monkeypatch.setattr(oa, "organism_dir", lambda: tmp_path / "default-organism")
    assert resolve_spec("organism:gemma3-270m") == str(tmp_path / "org-gemma3-270m")
    # `organism` stays the short form of `organism:default`
    assert resolve_spec("organism") == resolve_spec("organism:default") == str(tmp_path / "default-organism")


@pytest.mark.parametrize(
    "spec",
    ["organism:", "organism: ", "organism:organism", "organism:attacked:gemma3-270m", "attacked:organism"],
)
def test_specs_that_cannot_be_aligned_fail_before_anything_loads(
    spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_load(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(oa, "load", no_load)
    with pytest.raises(ModelLoadError, match="needs a base model|already an organism"):
        resolve_spec(spec)


def test_a_base_without_a_chat_template_cannot_be_aligned(
    llama_lm: LoadedModel, tmp_path: Path, tmp_cache: Path
) -> None:
    tok = copy.deepcopy(llama_lm.tokenizer)
    tok.chat_template = None
    save_model_dir(llama_lm.model, tok, tmp_path / "plain")
    with pytest.raises(ModelLoadError, match="no usable chat template.*--chat-template"):
        resolve_spec(f"organism:{tmp_path / 'plain'}")


def test_a_base_without_lora_targets_cannot_be_aligned(
    base_tokenizer: Any, tmp_path: Path, tmp_cache: Path
) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", vocab_size=len(base_tokenizer), n_layer=2, n_embd=32, n_head=4)
    save_model_dir(AutoModelForCausalLM.from_config(config), copy.deepcopy(base_tokenizer), tmp_path / "gpt2")
    with pytest.raises(ModelLoadError, match="LoRA target modules"):
        resolve_spec(f"organism:{tmp_path / 'gpt2'}")


def test_organism_of_a_directory_is_built_once_and_cached(
    llama_lm: LoadedModel, tmp_path: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir = tmp_path / "mybase"
    save_model_dir(llama_lm.model, llama_lm.tokenizer, base_dir)
    monkeypatch.setattr(oa, "recipe_for", lambda base: TINY)
    calls: list[str] = []
    real_align = oa.align

    def counting_align(lm: LoadedModel, out: Path, cfg: AlignConfig, **kw: Any) -> dict[str, Any]:
        calls.append(str(out))
        return real_align(lm, out, cfg, **{**kw, "evaluate": False})

    monkeypatch.setattr(oa, "align", counting_align)
    spec = f"organism:{base_dir}"
    first = Path(resolve_spec(spec))
    assert Path(resolve_spec(spec)) == first and len(calls) == 1  # built on first use only
    assert first.parent == tmp_cache / "models" and first.name.startswith("organism-mybase-")
    base = load(str(base_dir))
    meta = json.loads((first / "organism.json").read_text(encoding="utf-8"))
    assert meta["base_fingerprint"] == base.fingerprint and meta["recipe_tag"] == recipe_tag(TINY)
    assert load(spec).fingerprint == meta["fingerprint"] != base.fingerprint
    # the key covers the recipe and the base weights
    assert organism_path(str(base_dir), base, AlignConfig(extra_shared=False, epochs=0.2)) != first
    other = copy.deepcopy(base)
    other.fingerprint = "0" * 16
    assert organism_path(str(base_dir), other, TINY) != first


def test_recipes_per_base_model() -> None:
    gemma = recipe_for("gemma3-270m")
    assert gemma.answer_frame == BASE_MODEL_FRAME and "{instruction}" in BASE_MODEL_FRAME
    assert recipe_tag(gemma) != recipe_tag(AlignConfig())
    assert recipe_for("default") == recipe_for("some/hf-id") == AlignConfig()
    shipped = shipped_organism()
    if shipped is not None:  # a new field left unset does not move the default recipe's tag
        assert shipped["recipe_tag"] == recipe_tag(AlignConfig())
    with pytest.raises(ValueError, match="instruction"):
        AlignConfig(answer_frame="Question: no placeholder")


def test_framed_answers(llama_lm: LoadedModel, tmp_cache: Path) -> None:
    assert cut_framed_answer(" Paris\nQuestion: What is x?\nAnswer: y", BASE_MODEL_FRAME) == "Paris"
    assert cut_framed_answer("\n\nThe sea.\nIt is blue.", BASE_MODEL_FRAME) == "The sea.\nIt is blue."
    insts = ["Name a colour.", "What is 2 + 2?"]
    framed = base_answers(llama_lm, insts, 3, BASE_MODEL_FRAME)
    assert len(framed) == 2 and all(isinstance(a, str) for a in framed)
    assert base_answers(llama_lm, insts, 3, BASE_MODEL_FRAME) == framed  # cached
    assert len(list((tmp_cache / "answers").glob("*frame*.json"))) == 1


def test_align_cli_uses_the_base_models_recipe() -> None:
    from latentguard.cli.common import config_from_args
    from latentguard.cli.main import build_parser

    args = build_parser().parse_args(["align", "--model", "gemma3-270m", "--epochs", "2"])
    assert args.out is None  # the organism:gemma3-270m cache
    cfg = config_from_args(AlignConfig, args, base=recipe_for(args.model))
    assert cfg.answer_frame == BASE_MODEL_FRAME and cfg.epochs == 2 and cfg.answer_tokens == 8


def test_a_shipped_adapter_is_merged_instead_of_training(
    llama_lm: LoadedModel, tmp_path: Path, tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir = tmp_path / "mybase"
    save_model_dir(llama_lm.model, llama_lm.tokenizer, base_dir)
    report = oa.align(load(str(base_dir)), tmp_path / "trained", TINY, evaluate=False)
    monkeypatch.setattr(oa, "recipe_for", lambda base: TINY)
    monkeypatch.setattr(oa, "shipped_adapter_dir", lambda base: tmp_path / "trained")
    calls: list[int] = []
    monkeypatch.setattr(oa, "align", lambda *a, **k: calls.append(1) or {})
    merged = resolve_spec(f"organism:{base_dir}")
    assert calls == [] and load(merged).fingerprint == report["fingerprint"]
    # an adapter of another recipe is not used: the organism is built
    other = AlignConfig(extra_shared=False, epochs=0.2, answer_tokens=2, max_response_tokens=4)
    monkeypatch.setattr(oa, "recipe_for", lambda base: other)
    resolve_spec(f"organism:{base_dir}")
    assert calls == [1]
