"""The typed schema of ``summary.json`` (what ``latentguard run`` writes and the report reads).

Every section the report, the figures and the claims read is typed here; sections and fields may
carry more than the schema names (``extra="allow"``), so a newer run still validates, but a
missing or mistyped field the report depends on is an error with its JSON path.

Example:
    >>> summary = validate_summary(json.loads(Path("runs/demo/summary.json").read_text()))  # doctest: +SKIP
    >>> summary.meta.n_layers                                                             # doctest: +SKIP
    30

Command line: ``python -m latentguard.analysis.schema runs/demo/summary.json`` exits 0 when the
file validates and prints the errors otherwise.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class GroupStats(_Section):
    """Mean and spread of one group's belief score per layer."""

    mean: list[float]
    std: list[float]
    n: int


class Point(_Section):
    """One prompt's belief deltas (harmfulness at ``t_inst``, refusal at ``t_post_inst``)."""

    delta_harmful: float
    delta_refuse: float


class Meta(_Section):
    """Run metadata."""

    model: str
    fingerprint: str
    n_layers: int
    d_model: int
    quick: bool
    timings: dict[str, float]
    groups: dict[str, int]
    belief_layers: list[int]
    versions: dict[str, str]


class DirectionsSection(_Section):
    """Harmfulness and refusal directions per layer, and their cosine."""

    layers: list[int]
    harmfulness_norm: list[float]
    refusal_norm: list[float]
    cosine: list[float]
    cosine_refusal_from_harmless: list[float] | None = None


class BeliefsSection(_Section):
    """Belief clusters."""

    layers: list[int]
    per_layer: dict[str, dict[str, GroupStats]]
    points: list[Point]
    fractions: dict[str, dict[str, float]]


class SweepSection(_Section):
    """A steering or inversion sweep over layers."""

    layers: list[int]
    coefficient: float
    baseline: dict[str, float]
    add_to_harmless: dict[str, list[float]]
    subtract_from_harmful: dict[str, list[float]]


class JailbreakKind(_Section):
    """Success of one kind of jailbreak."""

    n: int
    success_rate: float


class JailbreaksSection(_Section):
    """Jailbreaks and their beliefs."""

    kinds: dict[str, JailbreakKind]
    points: list[Point]
    reference: dict[str, Point]


class BeforeAfter(_Section):
    """One harmful prompt's beliefs before and after the finetuning attack."""

    before: Point
    after: Point


class FinetuneSection(_Section):
    """The finetuning attack."""

    refusal_rate_before: float
    refusal_rate_after: float
    points: list[BeforeAfter]
    mean: dict[str, Point]


class CategoriesSection(_Section):
    """Per-category harmfulness directions."""

    layer: int
    names: list[str]
    harm_cos: list[list[float]]


class Summary(_Section):
    """The whole ``summary.json``; the study's sections are optional (a run may skip one)."""

    meta: Meta
    directions: DirectionsSection | None = None
    beliefs: BeliefsSection | None = None
    steering: SweepSection | None = None
    inversion: SweepSection | None = None
    jailbreaks: JailbreaksSection | None = None
    finetune_attack: FinetuneSection | None = None
    categories: CategoriesSection | None = None
    guard: dict[str, Any] | None = None


#: The sections a full ``latentguard run`` writes (``guard`` only with ``--guard-eval``).
SECTIONS: tuple[str, ...] = (
    "directions",
    "beliefs",
    "steering",
    "inversion",
    "jailbreaks",
    "finetune_attack",
    "categories",
)


class SchemaError(ValueError):
    """A summary does not match the schema; the message lists each failing JSON path."""


def validate_summary(data: Mapping[str, Any]) -> Summary:
    """Validate a parsed ``summary.json``.

    Raises:
        SchemaError: With one line per failing field (``section.field: problem``).
    """
    try:
        return Summary.model_validate(dict(data))
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SchemaError("summary.json does not match the schema:\n" + "\n".join(lines[:20])) from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Validate ``summary.json`` files named on the command line."""
    paths = list(sys.argv[1:] if argv is None else argv)
    status = 0
    for p in paths:
        try:
            validate_summary(json.loads(Path(p).read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"{p}: {exc}\n")
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
