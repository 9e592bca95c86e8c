"""Organisms of any base model: the ``organism:SPEC`` and ``attacked:SPEC`` model aliases.

* ``organism`` is short for ``organism:default``: the SmolLM2 organism
  (:func:`latentguard.organism.organism_dir`, merged from the shipped adapter when it fits).
* ``organism:SPEC`` is the organism of base model ``SPEC`` (``organism:gemma3-270m``): built with
  :func:`latentguard.organism.align` and :func:`recipe_for` ``(SPEC)`` on first use, then cached as
  ``<cache>/models/organism-<name>-<key>``, the key a hash of the base model's fingerprint and the
  recipe tag (new weights or a new recipe give a new organism, never a stale one).
* ``attacked`` / ``attacked:SPEC``: the finetuning attack (:func:`latentguard.organism.attack`) on
  that organism, trained towards ``SPEC``'s own answers, cached the same way.

Recipes per base model. The default recipe trains harmless instructions towards the base model's own
greedy answers through its chat template, which keeps an instruct model's helpfulness. A *base*
model (``gemma3-270m``) has never seen a chat format: through the template it repeats the
instruction instead of answering (Gemma 3 270M: ``"What is the capital of France? mendatang\\nWhat
is ..."``), so those are not chat answers to keep. Its recipe lets it answer in a plain-text frame
it does know, ``Question: ...\\nAnswer:`` (``" Paris"``), and trains the chat-templated prompt
towards those answers (:attr:`~latentguard.organism.AlignConfig.answer_frame`): the organism learns
the turn format, refusals for harmful requests, and its own knowledge for the others. Everything
else (data, rank, steps per example, frozen lower third) is the default recipe.

Example:
    >>> from latentguard.models import load
    >>> lm = load("organism:gemma3-270m")       # doctest: +SKIP  (built once: minutes)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from latentguard.io import cache_dir
from latentguard.models import LoadedModel, ModelLoadError, NoChatTemplateError, load, split_alias
from latentguard.organism import (
    ADAPTER_FILE,
    SHIPPED_DIR,
    AlignConfig,
    AttackConfig,
    align,
    attack,
    attacked_dir,
    organism_dir,
    organism_from_adapter,
    recipe_tag,
)
from latentguard.positions import PositionError, render

logger = logging.getLogger(__name__)

#: The completion frame the base-model recipes answer harmless instructions in.
BASE_MODEL_FRAME = "Question: {instruction}\nAnswer:"

#: Recipes that differ from :class:`AlignConfig`'s defaults, by base model alias.
RECIPES: Mapping[str, AlignConfig] = MappingProxyType(
    {"gemma3-270m": AlignConfig(answer_frame=BASE_MODEL_FRAME, answer_tokens=8)}
)

#: Aliases that already are organisms (or attacked ones): aligning them again is refused.
_ORGANISM_ALIASES = ("organism", "attacked")


def recipe_for(base: str) -> AlignConfig:
    """The organism recipe for base model ``base`` (:data:`RECIPES`, else the default)."""
    return RECIPES.get(base, AlignConfig())


def check_spec(base: str) -> None:
    """Refuse, before anything loads, a base spec that cannot be aligned.

    Raises:
        ModelLoadError: ``base`` is empty, or is itself an organism or attacked alias.
    """
    if not base or not base.strip():
        raise ModelLoadError("organism:SPEC needs a base model after the colon (e.g. organism:gemma3-270m)")
    if split_alias(base)[0] in _ORGANISM_ALIASES:
        raise ModelLoadError(
            f"cannot align {base!r}: it is already an organism (or an attacked one); give the base model, "
            f"e.g. organism:{split_alias(base)[1] or 'default'}"
        )


def load_base(base: str, chat_template: str | None = None) -> LoadedModel:
    """Load a base model for :func:`latentguard.organism.align`, checking that it can be aligned.

    Raises:
        ModelLoadError: The spec is refused by :func:`check_spec`, does not load, has no chat
            template (``--chat-template`` cannot travel inside an alias), or has none of the
            recipe's LoRA target modules.
    """
    check_spec(base)
    lm = load(base, chat_template=chat_template)
    try:
        render(lm.tokenizer, "Hello")
    except (NoChatTemplateError, PositionError) as exc:
        raise ModelLoadError(
            f"cannot align {base!r}: its tokenizer has no usable chat template ({exc}); build the organism "
            "with `latentguard align --model SPEC --chat-template FILE --out DIR`, then use --model DIR"
        ) from exc
    targets = set(recipe_for(base).target_modules)
    present = {name.rsplit(".", 1)[-1] for name, _ in lm.model.named_modules()}
    if not targets & present:
        raise ModelLoadError(
            f"cannot align {base!r}: none of the LoRA target modules {sorted(targets)} exist in "
            f"{type(lm.model).__name__}; pass --target-modules to `latentguard align`"
        )
    return lm


def _name(base: str) -> str:
    """A short, file-safe name for a base spec (its last path part)."""
    tail = base.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", tail).strip("-.")[:40] or "model"


def organism_key(lm: LoadedModel, config: AlignConfig) -> str:
    """Cache key of an organism: its base model's fingerprint (and chat template) and the recipe tag."""
    payload = [lm.fingerprint, lm.template_hash, recipe_tag(config)]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:10]


def organism_path(base: str, lm: LoadedModel, config: AlignConfig) -> Path:
    """Where the organism of ``lm`` (loaded from ``base``) with ``config`` is cached."""
    if base == "default":  # the default organism's home (and the shipped adapter's)
        return cache_dir() / "models" / f"organism-{recipe_tag(config)}"
    return cache_dir() / "models" / f"organism-{_name(base)}-{organism_key(lm, config)}"


def shipped_adapter_dir(base: str) -> Path | None:
    """The adapter the package ships for base alias ``base`` (``data/organism/<base>/``), if any."""
    folder = SHIPPED_DIR / _name(base)
    if base == "default" or not ((folder / ADAPTER_FILE).is_file() and (folder / "organism.json").is_file()):
        return None
    return folder


def _from_shipped(base: str, lm: LoadedModel, cfg: AlignConfig, out: Path) -> bool:
    """Merge the shipped adapter of ``base`` into ``out`` when it was trained on ``lm`` with ``cfg``."""
    folder = shipped_adapter_dir(base)
    if folder is None:
        return False
    meta = json.loads((folder / "organism.json").read_text(encoding="utf-8"))
    if meta.get("recipe_tag") != recipe_tag(cfg) or meta.get("base_fingerprint") != lm.fingerprint:
        logger.info("the shipped adapter of %s is for another recipe or base weights; building", base)
        return False
    logger.info("merging the shipped organism adapter of %s into %s", base, out)
    organism_from_adapter(folder, out, base=lm)
    return True


def _built(path: Path, meta: str) -> bool:
    return (path / meta).is_file() and (path / "model.safetensors").is_file()


def build_organism(
    base: str,
    config: AlignConfig | None = None,
    out_dir: str | Path | None = None,
    chat_template: str | None = None,
    **align_kwargs: Any,
) -> tuple[Path, dict[str, Any] | None]:
    """Align ``base`` into ``out_dir`` (default: the cache of ``organism:base``).

    Args:
        base: The base model spec.
        config: The recipe (default :func:`recipe_for` ``(base)``).
        out_dir: Output directory; ``None`` builds the cached organism that ``organism:base``
            resolves to (nothing is built when it exists; the adapter the package ships for
            ``base``, ``data/organism/<base>/``, is merged in seconds when its recipe tag and base
            fingerprint are these).
        chat_template: A chat template for a base model that has none (Jinja text or a file); it
            is saved with the organism.
        **align_kwargs: Passed to :func:`latentguard.organism.align`.

    Returns:
        The organism directory and the ``organism.json`` report (``None`` if it was cached).
    """
    cfg = config or recipe_for(base)
    lm = load_base(base, chat_template)
    out = Path(out_dir) if out_dir is not None else organism_path(base, lm, cfg)
    if out_dir is None and (_built(out, "organism.json") or _from_shipped(base, lm, cfg, out)):
        return out, None
    logger.info("building the organism of %s (recipe %s) into %s", base, recipe_tag(cfg), out)
    report = align(lm, out, cfg, **align_kwargs)
    return out, report


def organism_alias(base: str = "default") -> Path:
    """The ``organism`` and ``organism:SPEC`` aliases (entry points of ``latentguard.model_aliases``)."""
    if base == "default":
        return organism_dir()
    return build_organism(base)[0]


def attacked_alias(base: str = "default") -> Path:
    """The ``attacked`` and ``attacked:SPEC`` aliases: the finetuning attack on ``organism:SPEC``."""
    if base == "default":
        return attacked_dir()
    org = organism_alias(base)
    # the targets are the base model's own answers, asked the way its recipe asks them
    cfg = AttackConfig(base_model=base, answer_frame=recipe_for(base).answer_frame)
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "bf16"}
    if recipe["answer_frame"] is None:  # so the cache keys of frame-less attacks stay
        recipe.pop("answer_frame")
    meta = json.loads((org / "organism.json").read_text(encoding="utf-8"))
    key = hashlib.sha256(json.dumps([meta.get("fingerprint"), recipe], sort_keys=True).encode()).hexdigest()
    out = cache_dir() / "models" / f"attacked-{_name(base)}-{key[:10]}"
    if not _built(out, "attack.json"):
        logger.info("building the attacked organism of %s into %s", base, out)
        attack(str(org), out, cfg)
    return out
