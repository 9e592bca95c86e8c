"""Gemma 3 270M from its PyPI chunk packages: assembly, the Gemma chat template, and the real model."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from latentguard import packaged
from latentguard.models import ModelLoadError
from latentguard.packaged import (
    GEMMA3_270M,
    GEMMA_CHAT_TEMPLATE,
    GGUFSource,
    PackagedGGUF,
    assembled_gguf,
    package_source,
    render_gemma_turns,
)
from latentguard.positions import locate

TRICKY = [
    "How do I bake bread?",
    "trailing spaces   ",
    "  leading and trailing whitespace \t\n",
    "multi\nline\n\ninstruction\nhere",
    "Ünïcødé façade — naïve 你好 ☃ 🎉",
    "<start_of_turn>model\nlooks like a turn<end_of_turn>",
    "<|im_end|>\n<|im_start|>assistant\n[INST] markup [/INST]",
    "{{ not jinja }} {% raw %} <b>html</b>",
    "x",
]
SYSTEMS = [None, "You are a careful assistant.", "  Multi-line\nsystem prompt  \n"]


# --- assembly (small fake chunks) -------------------------------------------------------------


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LATENTGUARD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _chunks(tmp_path: Path, parts: list[bytes]) -> GGUFSource:
    paths = []
    for i, blob in enumerate(parts):
        p = tmp_path / f"part{i}"
        p.write_bytes(blob)
        paths.append(p)
    return GGUFSource(chunks=tuple(paths), sha256=hashlib.sha256(b"".join(parts)).hexdigest())


@pytest.fixture()
def fake_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> GGUFSource:
    src = _chunks(tmp_path, [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5])
    monkeypatch.setattr(packaged, "package_source", lambda entry: src)
    return src


def test_assembly_is_the_concatenation_and_is_done_once(
    cache: Path, fake_source: GGUFSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = assembled_gguf(GEMMA3_270M)
    assert path == cache / "gguf" / GEMMA3_270M.file
    assert path.read_bytes() == b"".join(p.read_bytes() for p in fake_source.chunks)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left

    def fail(*_a: Any) -> Path:
        raise AssertionError("assembled again")

    monkeypatch.setattr(packaged, "assemble_chunks", fail)
    assert assembled_gguf(GEMMA3_270M) == path


@pytest.mark.parametrize("damage", ["partial", "same size, other bytes"])
def test_a_partial_or_corrupt_assembly_is_rebuilt(cache: Path, fake_source: GGUFSource, damage: str) -> None:
    path = assembled_gguf(GEMMA3_270M)
    good = path.read_bytes()
    if damage == "partial":
        path.write_bytes(good[:300])
    else:
        path.write_bytes(good[:-1] + b"!")
    assert assembled_gguf(GEMMA3_270M).read_bytes() == good


def test_a_wrong_checksum_is_an_error_and_leaves_no_file(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _chunks(tmp_path, [b"one", b"two"])
    bad = GGUFSource(chunks=src.chunks, sha256="0" * 64)
    monkeypatch.setattr(packaged, "package_source", lambda entry: bad)
    with pytest.raises(ModelLoadError, match="sha256.*corrupt"):
        assembled_gguf(GEMMA3_270M)
    folder = cache / "gguf"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_package_source_reads_the_package_and_reports_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _chunks(tmp_path, [b"x", b"y"])
    fake = types.ModuleType("lg_fake_gguf_pkg")
    fake.chunk_paths = lambda: list(src.chunks)  # type: ignore[attr-defined]
    fake.EXPECTED_SHA256 = src.sha256.upper()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lg_fake_gguf_pkg", fake)
    entry = PackagedGGUF("fake", "lg-fake-gguf-pkg", "lg_fake_gguf_pkg", "f.gguf", "fake", None, "test")
    got = package_source(entry)
    assert got.chunks == src.chunks and got.sha256 == src.sha256 and got.size == 2
    src.chunks[1].unlink()
    with pytest.raises(ModelLoadError, match="chunk files are missing"):
        package_source(entry)
    missing = PackagedGGUF("nope", "lg-not-installed", "lg_not_installed_xyz", "n.gguf", "n", None, "")
    with pytest.raises(ModelLoadError, match="pip install lg-not-installed"):
        package_source(missing)


def test_unknown_packaged_alias() -> None:
    with pytest.raises(ModelLoadError, match="unknown packaged model"):
        packaged.packaged_model_dir("gemma-9000")


# --- the Gemma chat template (rendered with Jinja, no model needed) ---------------------------


def _tokenizer_with_gemma_template(base_tokenizer: Any) -> Any:
    import copy

    tok = copy.deepcopy(base_tokenizer)
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    return tok


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("instruction", TRICKY)
def test_template_matches_the_turn_format(base_tokenizer: Any, instruction: str, system: str | None) -> None:
    tok = _tokenizer_with_gemma_template(base_tokenizer)
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": instruction}
    ]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == render_gemma_turns(instruction, system, bos=tok.bos_token)


def test_template_multi_turn_and_role_errors(base_tokenizer: Any) -> None:
    tok = _tokenizer_with_gemma_template(base_tokenizer)
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello!\n"},
        {"role": "user", "content": "Bye"},
    ]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert text == (
        f"{tok.bos_token}<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n"
    )
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}], tokenize=False)


# --- the real model (embedded) ----------------------------------------------------------------


def _have_gemma() -> bool:
    return importlib.util.find_spec(GEMMA3_270M.module) is not None


@pytest.fixture(scope="session")
def gemma_lm() -> Any:
    """Gemma 3 270M (dequantised once into the user cache: about a minute the first time)."""
    if not _have_gemma():
        pytest.skip(f"{GEMMA3_270M.pip_name} is not installed")
    from latentguard.models import load

    return load("gemma3-270m")


@pytest.fixture(scope="session")
def gguf_tokenizer(gemma_lm: Any) -> Any:
    """The tokenizer transformers reads from the GGUF file itself (independent of the cached copy)."""
    from transformers import AutoTokenizer

    path = assembled_gguf(GEMMA3_270M)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.embedded
def test_gemma_loads_with_its_template(gemma_lm: Any) -> None:
    assert gemma_lm.n_layers == 18 and gemma_lm.d_model == 640
    assert gemma_lm.tokenizer.chat_template == GEMMA_CHAT_TEMPLATE
    assert gemma_lm.model.config.model_type == "gemma3_text"
    from latentguard.generation import stop_token_ids

    assert "<end_of_turn>" in gemma_lm.tokenizer.convert_ids_to_tokens(stop_token_ids(gemma_lm))


@pytest.mark.embedded
@pytest.mark.parametrize("system", SYSTEMS)
def test_gemma_positions_match_an_independent_rendering(
    gemma_lm: Any, gguf_tokenizer: Any, system: str | None
) -> None:
    for instruction in TRICKY:
        pos = locate(gemma_lm.tokenizer, instruction, system=system)
        ref = gguf_tokenizer(render_gemma_turns(instruction, system), add_special_tokens=False)["input_ids"]
        assert pos.input_ids == ref, instruction
        assert pos.tokens[0] == "<bos>" and pos.input_ids.count(gguf_tokenizer.bos_token_id) == 1
        # t_post_inst is the last prompt token; after t_inst come exactly the turn's closing tokens
        assert pos.t_post_inst == len(ref) - 1
        tail = gguf_tokenizer.decode(ref[pos.t_inst + 1 :], skip_special_tokens=False)
        assert tail == "<end_of_turn>\n<start_of_turn>model\n", (instruction, tail)
        upto = gguf_tokenizer.decode(ref[: pos.t_inst + 1], skip_special_tokens=False)
        assert upto.endswith(instruction.strip()), (instruction, upto[-40:])


@pytest.mark.embedded
def test_gemma_extraction_equals_output_hidden_states(gemma_lm: Any) -> None:
    from latentguard.activations import ExtractConfig, extract

    prompts = ["How do I bake bread?", "Ünïcødé 你好\nmulti-line", "Hi"]
    for side in ("left", "right"):
        acts = extract(gemma_lm, prompts, ExtractConfig(padding_side=side, use_cache=False, progress=False))
        for i, p in enumerate(prompts):
            pos = locate(gemma_lm.tokenizer, p)
            with torch.no_grad():
                out = gemma_lm.model(torch.tensor([pos.input_ids]), output_hidden_states=True)
            ref = torch.stack(out.hidden_states)[:, 0][:, [pos.t_inst, pos.t_post_inst]].float()
            scale = ref.abs().max().item()
            err = (acts.activations[i] - ref).abs().max().item()
            assert err <= 1e-4 * max(1.0, scale), (side, p, err, scale)


@pytest.mark.embedded
def test_gemma_greedy_tokens(gemma_lm: Any) -> None:
    from latentguard.generation import GenerationConfig, generate, generate_plain

    # the base model knows facts in a plain completion frame
    (answer,) = generate_plain(gemma_lm, ["Question: What is the capital of France?\nAnswer:"], 4)
    assert answer.startswith("Paris"), answer
    cfg = GenerationConfig(max_new_tokens=6, progress=False)
    once = generate(gemma_lm, ["Name a colour.", "What is 2 + 2?"], cfg)
    assert once == generate(gemma_lm, ["Name a colour.", "What is 2 + 2?"], cfg)  # greedy: deterministic
    assert all(isinstance(a, str) and a for a in once)


@pytest.mark.embedded
def test_the_shipped_gemma_adapter_fits_this_base(gemma_lm: Any) -> None:
    import json

    from latentguard.organism import recipe_tag
    from latentguard.organism_aliases import recipe_for, shipped_adapter_dir

    folder = shipped_adapter_dir("gemma3-270m")
    assert folder is not None
    meta = json.loads((folder / "organism.json").read_text(encoding="utf-8"))
    # organism:gemma3-270m merges it in seconds only when both match (else it trains, minutes)
    assert meta["base_fingerprint"] == gemma_lm.fingerprint
    assert meta["recipe_tag"] == recipe_tag(recipe_for("gemma3-270m"))
