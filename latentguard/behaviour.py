"""Behaviour groups: what the model does with harmful and harmless instructions.

Four groups, from generation + a refusal judge:

* ``refused_harmful`` and ``accepted_harmless`` -- the model behaves as intended;
* ``accepted_harmful`` and ``refused_harmless`` -- the misbehaving groups the paper uses to tell
  which concept (harmfulness or refusal) each token position encodes.

Example:
    >>> groups = label(lm, harmful, harmless)                      # doctest: +SKIP
    >>> groups.counts()                                            # doctest: +SKIP
    {'refused_harmful': 200, 'accepted_harmless': 115, 'refused_harmless': 5, 'accepted_harmful': 20}
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentguard.data import Example
from latentguard.generation import GenerationConfig, generate
from latentguard.io import ArtifactError, atomic_write_text
from latentguard.models import LoadedModel

GROUPS = ("refused_harmful", "accepted_harmless", "refused_harmless", "accepted_harmful")


@dataclass
class BehaviourGroups:
    """Rows (instruction, response, refused, score, category, harmful) split into the four groups."""

    rows: dict[str, list[dict[str, Any]]]
    fingerprint: str
    judge: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for g in GROUPS:
            self.rows.setdefault(g, [])
        unknown = set(self.rows) - set(GROUPS)
        if unknown:
            raise ArtifactError(f"unknown behaviour groups {sorted(unknown)}")

    def counts(self) -> dict[str, int]:
        """Size of each group."""
        return {g: len(self.rows[g]) for g in GROUPS}

    def instructions(self, group: str) -> list[str]:
        """The instructions of one group."""
        return [r["instruction"] for r in self.rows[group]]

    def refusal_rate(self, harmful: bool) -> float:
        """Refusal rate on the harmful (or harmless) instructions."""
        ref = len(self.rows["refused_harmful" if harmful else "refused_harmless"])
        acc = len(self.rows["accepted_harmful" if harmful else "accepted_harmless"])
        return ref / max(1, ref + acc)

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """One JSONL file per group plus ``groups.json`` with counts and metadata."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for g in GROUPS:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows[g])
            atomic_write_text(out / f"{g}.jsonl", text)
        summary = {
            "counts": self.counts(),
            "fingerprint": self.fingerprint,
            "judge": self.judge,
            "meta": self.meta,
        }
        atomic_write_text(out / "groups.json", json.dumps(summary, indent=1))
        return out

    @classmethod
    def load(cls, in_dir: str | os.PathLike[str]) -> BehaviourGroups:
        """Read what :meth:`save` wrote."""
        d = Path(in_dir)
        try:
            summary = json.loads((d / "groups.json").read_text(encoding="utf-8"))
            rows = {
                g: [
                    json.loads(line)
                    for line in (d / f"{g}.jsonl").read_text(encoding="utf-8").splitlines()
                    if line
                ]
                for g in GROUPS
            }
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"cannot read behaviour groups in {d}: {exc}") from exc
        return cls(
            rows=rows,
            fingerprint=summary["fingerprint"],
            judge=summary["judge"],
            meta=summary.get("meta", {}),
        )


def label(
    lm: LoadedModel,
    harmful: Sequence[Example],
    harmless: Sequence[Example],
    *,
    judge: Any = None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    progress: bool = True,
) -> BehaviourGroups:
    """Generate answers for both sets, judge refusals, and split into the four groups."""
    from latentguard.judge import load_judge

    j = judge if judge is not None else load_judge()
    rows: dict[str, list[dict[str, Any]]] = {g: [] for g in GROUPS}
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    for is_harmful, items in ((True, harmful), (False, harmless)):
        if not items:
            continue
        insts = [e.instruction for e in items]
        responses = generate(lm, insts, cfg)
        for e, resp, v in zip(items, responses, j.judge(responses, insts), strict=True):
            group = ("refused_" if v.refused else "accepted_") + ("harmful" if is_harmful else "harmless")
            rows[group].append(
                {
                    "instruction": e.instruction,
                    "response": resp,
                    "refused": bool(v.refused),
                    "score": float(v.score),
                    "category": e.category,
                    "harmful": is_harmful,
                }
            )
    return BehaviourGroups(rows=rows, fingerprint=lm.fingerprint, judge=j.name, meta={"model": lm.spec})
