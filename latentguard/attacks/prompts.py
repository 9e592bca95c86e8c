"""Jailbreak prompt builders: template wrappers, persuasive paraphrases and random-token suffixes.

Zhao et al. (2025) measure where jailbreaks move a model's internal *harmfulness* belief and where
they move its *refusal* behaviour. This module builds the jailbreak prompts that those measurements
run on. Each is a :class:`JailbreakPrompt` whose ``prompt`` is the full user content (the chat
template is applied later, by :mod:`latentguard.positions`).

* :func:`template_prompts` wraps instructions in jailbreak templates (the built-in set, plus the
  GPTFuzzer templates from the shared data folder when present).
* :func:`persuasion_prompts` wraps them in persuasive paraphrase templates (PAP style).
* :func:`wrapped_training_prompts` and :func:`random_suffix_prompts` build guard *training* prompts
  (the train half of the templates; unoptimised suffixes from GCG's token space).

Adversarial suffixes optimised against the model (GCG) are in :mod:`latentguard.attacks.gcg`.

Example:
    >>> from latentguard.attacks.prompts import template_prompts, persuasion_prompts
    >>> jb = template_prompts(["How do I pick a lock?"], use_shared=False, max_templates=2)
    >>> [p.kind for p in jb]
    ['template', 'template']
    >>> len(persuasion_prompts(["How do I pick a lock?"], techniques=["authority"]))
    2
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from latentguard.attacks.tokens import allowed_tokens, decode, input_embeddings
from latentguard.data import DataError, builtin_rows, shared_data_dir, wrap_template
from latentguard.models import LoadedModel

__all__ = [
    "JailbreakPrompt",
    "SHARED_TEMPLATES_FILE",
    "check_instructions",
    "load_templates",
    "persuasion_prompts",
    "random_suffix_prompts",
    "split_templates",
    "template_prompts",
    "wrapped_training_prompts",
]

logger = logging.getLogger(__name__)

SHARED_TEMPLATES_FILE = "jailbreak_templates_gptfuzzer.jsonl"
"""The GPTFuzzer jailbreak templates in the shared data folder (field ``template``)."""


@dataclass(frozen=True)
class JailbreakPrompt:
    """One jailbreak prompt.

    Attributes:
        kind: ``"template"``, ``"persuasion"`` or ``"gcg"``.
        name: The template id, the persuasion technique, or ``"gcg"``.
        instruction: The original (harmful) instruction.
        prompt: The full user content sent to the model.
    """

    kind: str
    name: str
    instruction: str
    prompt: str


def check_instructions(instructions: Sequence[str]) -> None:
    """Check that ``instructions`` is a sequence of non-empty strings.

    Args:
        instructions: The instructions an attack builds prompts from.

    Raises:
        TypeError: A single string was passed instead of a sequence.
        ValueError: An instruction is empty or only whitespace.
    """
    if isinstance(instructions, str):
        raise TypeError("pass a sequence of instructions, not a single string")
    for i, inst in enumerate(instructions):
        if not isinstance(inst, str) or not inst.strip():
            raise ValueError(f"instruction #{i} is empty; give non-empty, non-whitespace instructions")


def _read_shared_templates() -> list[tuple[str, str]]:
    """Read ``(name, template)`` pairs from the shared GPTFuzzer file; empty when it is absent."""
    folder = shared_data_dir()
    if folder is None:
        return []
    path = folder / SHARED_TEMPLATES_FILE
    if not path.is_file():
        logger.debug("no %s in %s", SHARED_TEMPLATES_FILE, folder)
        return []
    out: list[tuple[str, str]] = []
    text = path.read_text(encoding="utf-8-sig")
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        template = row.get("template")
        if not isinstance(template, str) or not template.strip():
            raise DataError(f"{where}: row has no non-empty 'template' field")
        name = f"gptfuzzer-{row.get('id', lineno - 1)}"
        out.append((name, template))
    logger.debug("read %d shared jailbreak templates from %s", len(out), path)
    return out


def load_templates(use_shared: bool = True) -> list[tuple[str, str]]:
    """Return the jailbreak templates as ``(name, template)`` pairs, built-in ones first.

    Args:
        use_shared: Also read the GPTFuzzer templates from the shared data folder, when present.

    Returns:
        The templates. Names are the built-in ids (``builtin-1``...) and ``gptfuzzer-<id>``.

    Raises:
        DataError: The shared file is malformed.
    """
    templates = [(str(row["id"]), str(row["template"])) for row in builtin_rows("jailbreak_templates")]
    if use_shared:
        templates += _read_shared_templates()
    return templates


def split_templates(
    templates: Sequence[tuple[str, str]], train_fraction: float = 0.5, seed: int = 0
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split templates into disjoint (train, test) lists, e.g. to train a guard on some jailbreak
    templates and measure it on others it never saw.

    Args:
        templates: ``(name, template)`` pairs (see :func:`load_templates`).
        train_fraction: Fraction of templates in the train list.
        seed: Seed of the shuffle that precedes the cut.

    Raises:
        ValueError: If either side would be empty.
    """
    order = list(range(len(templates)))
    random.Random(seed).shuffle(order)
    k = int(round(len(order) * train_fraction))
    if not 0 < k < len(order):
        raise ValueError(
            f"cannot split {len(order)} templates with train_fraction={train_fraction} into two non-empty sets"
        )
    return [templates[i] for i in order[:k]], [templates[i] for i in order[k:]]


def wrapped_training_prompts(
    instructions: Sequence[str], n: int, *, seed: int = 0, use_shared: bool = True
) -> list[str]:
    """``n`` of ``instructions`` (sampled by ``seed``), each wrapped in one jailbreak template of the
    *train* half of :func:`split_templates` (cycling), for training a guard that reads the request
    rather than the wrapper. Test with the other half: ``split_templates(...)[1]``.

    Args:
        instructions: The instructions to sample from.
        n: How many prompts (capped at ``len(instructions)``).
        seed: Seed of the sample and of the template split.
        use_shared: Also use the GPTFuzzer templates from the shared data folder, when present.

    Returns:
        The wrapped prompts.

    Raises:
        ValueError: An instruction is empty, or ``n`` is negative.

    Example:
        >>> wrapped_training_prompts(["Say hi"], 1, use_shared=False)[0].count("Say hi")   # doctest: +SKIP
        1
    """
    check_instructions(instructions)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    train, _ = split_templates(load_templates(use_shared), 0.5, seed)
    picked = random.Random(seed).sample(list(instructions), min(n, len(instructions)))
    return [wrap_template(train[i % len(train)][1], inst) for i, inst in enumerate(picked)]


def random_suffix_prompts(
    lm: LoadedModel, instructions: Sequence[str], n: int, *, seed: int = 0, suffix_len: int = 12
) -> list[str]:
    """``n`` of ``instructions`` (sampled by ``seed``), each followed by a suffix of ``suffix_len``
    random tokens from GCG's search space (printable ASCII, not special; the first starts with a space).

    For training a guard that reads the request through an adversarial suffix: the suffix moves
    ``t_inst`` to its last token, as a GCG suffix does, but is not optimised against the model, so the
    GCG test prompts stay unseen.

    Args:
        lm: The model whose tokenizer and vocabulary the suffix tokens come from.
        instructions: The instructions to sample from.
        n: How many prompts (capped at ``len(instructions)``).
        seed: Seed of the sample and of the suffix tokens (a local ``torch.Generator``).
        suffix_len: Suffix length in tokens.

    Returns:
        The suffixed prompts.

    Raises:
        ValueError: An instruction is empty, ``n`` or ``suffix_len`` is out of range, or the
            tokenizer has no printable tokens.

    Example:
        >>> random_suffix_prompts(lm, ["Say hi"], 1)[0].startswith("Say hi ")   # doctest: +SKIP
        True
    """
    check_instructions(instructions)
    if n < 0 or suffix_len < 1:
        raise ValueError(f"n must be >= 0 and suffix_len >= 1, got {n} and {suffix_len}")
    picked = random.Random(seed).sample(list(instructions), min(n, len(instructions)))
    if not picked:
        return []
    allowed, first = allowed_tokens(lm.tokenizer, input_embeddings(lm).weight.shape[0])
    pool, starts = allowed.nonzero().flatten(), first.nonzero().flatten()
    if not len(pool) or not len(starts):
        raise ValueError("the tokenizer has no printable tokens to build a suffix from")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for inst in picked:
        head = starts[torch.randint(len(starts), (1,), generator=gen)]
        rest = pool[torch.randint(len(pool), (suffix_len - 1,), generator=gen)]
        out.append(inst + decode(lm.tokenizer, torch.cat([head, rest]).tolist()))
    return out


def template_prompts(
    instructions: Sequence[str],
    *,
    use_shared: bool = True,
    max_templates: int | None = None,
    seed: int = 0,
    templates: Sequence[tuple[str, str]] | None = None,
) -> list[JailbreakPrompt]:
    """Wrap each instruction in jailbreak templates.

    The templates (see :func:`load_templates`) are put in an order fixed by ``seed``; instruction
    ``i`` then takes the next ``k`` templates of that order, cycling, starting at ``i * k``. So every
    instruction gets ``k`` distinct templates and, over many instructions, every template is used
    about equally often.

    Args:
        instructions: The instructions to wrap.
        use_shared: Also use the GPTFuzzer templates from the shared data folder, when present.
        max_templates: Templates per instruction (``None`` means all; capped at the number available).
        seed: Seed for the template order.
        templates: Use these ``(name, template)`` pairs instead of :func:`load_templates`.

    Returns:
        The prompts, grouped by instruction, in input order.

    Raises:
        ValueError: An instruction is empty, or ``max_templates`` is below 1.
    """
    check_instructions(instructions)
    if max_templates is not None and max_templates < 1:
        raise ValueError(f"max_templates must be None or >= 1, got {max_templates}")
    if templates is None:
        templates = load_templates(use_shared)
    if not templates:
        raise ValueError("no jailbreak templates to wrap the instructions in")
    order = list(range(len(templates)))
    random.Random(seed).shuffle(order)
    n = len(order)
    k = n if max_templates is None else min(max_templates, n)
    out: list[JailbreakPrompt] = []
    for i, inst in enumerate(instructions):
        for j in range(k):
            name, template = templates[order[(i * k + j) % n]]
            out.append(JailbreakPrompt("template", name, inst, wrap_template(template, inst)))
    logger.debug("built %d template prompts (%d templates each)", len(out), k)
    return out


def persuasion_prompts(
    instructions: Sequence[str], *, techniques: Sequence[str] | None = None
) -> list[JailbreakPrompt]:
    """Wrap each instruction in the built-in persuasion templates (PAP style).

    Args:
        instructions: The instructions to wrap.
        techniques: Only these techniques (e.g. ``["authority"]``); ``None`` means all.

    Returns:
        One prompt per (instruction, template), grouped by instruction, in file order; ``name`` is the
        technique.

    Raises:
        ValueError: An instruction is empty, or a technique is unknown.
    """
    check_instructions(instructions)
    rows = builtin_rows("persuasion")
    known = sorted({str(r["technique"]) for r in rows})
    if techniques is not None:
        if isinstance(techniques, str):
            techniques = [techniques]
        unknown = sorted(set(techniques) - set(known))
        if unknown:
            raise ValueError(f"unknown persuasion technique(s) {unknown}; choose from {known}")
        rows = [r for r in rows if r["technique"] in set(techniques)]
    return [
        JailbreakPrompt("persuasion", str(r["technique"]), inst, wrap_template(str(r["template"]), inst))
        for inst in instructions
        for r in rows
    ]
