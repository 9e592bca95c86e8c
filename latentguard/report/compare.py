"""Several runs side by side: the claims table with one column per model, and each model's guard table.

``latentguard compare RUN_DIR RUN_DIR...`` reads each run's ``summary.json`` (and its guard
evaluation: the summary's ``guard`` section, else a ``guard_eval.json`` in the run folder), checks
the paper's claims on each (:func:`latentguard.report.claims.evaluate_claims`) and writes
``compare.md``, ``compare.html`` (self-contained) and ``compare.json``. The paper's column says what
the paper reports; an "agree" column says whether every measured model got the same verdict.

Example:
    >>> comp = compare_runs(["runs/smollm2", "runs/gemma"])      # doctest: +SKIP
    >>> comp.save("runs/compare")                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from latentguard.analysis.study import guard_section
from latentguard.io import ArtifactError, atomic_write_text
from latentguard.report.claims import NOT_MEASURED, Claim, evaluate_claims
from latentguard.report.html import STYLE, esc, rows_table, verdict_badge

__all__ = ["PAPER", "Comparison", "RunColumn", "compare_runs", "load_run"]

logger = logging.getLogger(__name__)

#: What the paper reports for each claim (Zhao et al., NeurIPS 2025), paraphrased; the paper's models
#: are 7-9B chat models, so its column is a finding, not a number to match.
PAPER: Final[Mapping[str, str]] = MappingProxyType(
    {
        "a": "holds: the harmfulness direction (t_inst) and the refusal direction (t_post_inst) are distinct",
        "b": "holds: accepted-harmful (jailbroken or compliant) prompts still sit on the harmful side at t_inst",
        "c": "holds: refused-harmless prompts look harmless at t_inst and refused at t_post_inst",
        "d": "holds: steering along the harmfulness direction flips the harmfulness judgement; refusal does not",
        "e": "holds: adding either direction to harmless prompts induces refusal",
        "f": "holds: jailbreaks mainly suppress the refusal signal, not the harmfulness belief",
        "g": "holds: finetuning attacks remove refusal while the harmfulness belief stays",
        "h": "holds: per-category harmfulness directions are closely aligned",
        "i": "holds: Latent Guard is more robust to jailbreaks than the model's own refusal",
    }
)


@dataclass(frozen=True)
class RunColumn:
    """One run of the comparison.

    Attributes:
        label: Column heading (the model spec unless given).
        path: The run folder.
        model: ``meta.model`` of the summary.
        groups: Behaviour-group sizes (``meta.groups``).
        claims: The evaluated claims (a)-(i).
        guard: The guard evaluation's table (``columns``/``rows``...), or ``None`` when not measured.
    """

    label: str
    path: str
    model: str
    groups: dict[str, Any]
    claims: list[Claim]
    guard: dict[str, Any] | None = None


@dataclass(frozen=True)
class Comparison:
    """Runs side by side (see :func:`compare_runs`).

    Attributes:
        runs: One :class:`RunColumn` per run, in the order given.
        paper: The paper's findings by claim id (:data:`PAPER`).
    """

    runs: list[RunColumn]
    paper: dict[str, str] = field(default_factory=lambda: dict(PAPER))

    def agreement(self, cid: str) -> str:
        """``"agree"``, ``"differ"`` or ``"-"`` (fewer than two runs measured claim ``cid``)."""
        verdicts = [
            c.verdict for r in self.runs for c in r.claims if c.id == cid and c.verdict != NOT_MEASURED
        ]
        if len(verdicts) < 2:
            return "-"
        return "agree" if len(set(verdicts)) == 1 else "differ"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (:meth:`from_dict` reads it back)."""
        return {
            "format": "latentguard-compare/1",
            "paper": self.paper,
            "runs": [asdict(r) for r in self.runs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        """Read a :meth:`to_dict` result.

        Raises:
            ArtifactError: When ``data`` is not a comparison.
        """
        if data.get("format") != "latentguard-compare/1":
            raise ArtifactError("not a latentguard comparison (format 'latentguard-compare/1' expected)")
        runs = [
            RunColumn(**{**r, "claims": [Claim(**c) for c in r["claims"]]})  # type: ignore[arg-type]
            for r in data["runs"]
        ]
        return cls(runs=runs, paper=dict(data.get("paper") or PAPER))

    def markdown(self) -> str:
        """The comparison as Markdown: a claims table (one column per model) and the guard tables."""
        heads = ["paper's claim", "paper", *(r.label for r in self.runs), "models agree"]
        lines = [
            "# latentguard: models side by side",
            "",
            "| " + " | ".join(heads) + " |",
            "|" + "---|" * len(heads),
        ]
        for cid, text in _claim_texts(self.runs):
            cells = [f"({cid}) {text}", self.paper.get(cid, "-").split(":", 1)[0]]
            for r in self.runs:
                c = _claim(r, cid)
                cells.append(f"**{c.verdict}**: {c.measurement}" if c else NOT_MEASURED)
            cells.append(self.agreement(cid))
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
        lines += ["", "## Behaviour groups", ""]
        names = sorted({g for r in self.runs for g in r.groups})
        lines += [
            "| group | " + " | ".join(r.label for r in self.runs) + " |",
            "|" + "---|" * (len(self.runs) + 1),
        ]
        lines += [
            f"| {g} | " + " | ".join(str(r.groups.get(g, "-")) for r in self.runs) + " |" for g in names
        ]
        for r in self.runs:
            lines += ["", f"## Guard table: {r.label}", ""]
            lines += _guard_markdown(r.guard)
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """The comparison as one self-contained HTML page."""
        head = "".join(f"<th>{esc(h)}</th>" for h in ("id", "paper's claim", "paper"))
        head += "".join(f"<th>{esc(r.label)}</th>" for r in self.runs) + "<th>models agree</th>"
        body = []
        for cid, text in _claim_texts(self.runs):
            cells = [f"<td>({esc(cid)})</td><td>{esc(text)}</td><td>{esc(self.paper.get(cid, '-'))}</td>"]
            for r in self.runs:
                c = _claim(r, cid)
                cells.append(
                    f"<td>{verdict_badge(c.verdict)}<br>{esc(c.measurement)}</td>"
                    if c
                    else f"<td>{verdict_badge(NOT_MEASURED)}</td>"
                )
            cells.append(f"<td>{esc(self.agreement(cid))}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        runs = "".join(f"<li><b>{esc(r.label)}</b>: {esc(r.model)} ({esc(r.path)})</li>" for r in self.runs)
        parts = [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            f"<title>latentguard: models side by side</title><style>{STYLE}</style></head><body>",
            "<h1>latentguard: models side by side</h1>",
            "<p class='sub'>The claims of \u201cLLMs Encode Harmfulness and Refusal Separately\u201d (Zhao et al., "
            "NeurIPS 2025) checked on each run with the same thresholds (latentguard.report.claims).</p>",
            f"<ul>{runs}</ul>",
            f"<h2 id='claims'>Claims</h2><table><tr>{head}</tr>{''.join(body)}</table>",
        ]
        for r in self.runs:
            parts.append(f"<h2>Guard table: {esc(r.label)}</h2>")
            parts.append(
                rows_table(r.guard)
                if r.guard and r.guard.get("rows")
                else "<p class='muted'>No guard evaluation for this run.</p>"
            )
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``compare.md``, ``compare.html`` and ``compare.json`` under ``out_dir``.

        Returns:
            The path of ``compare.html``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "compare.md", self.markdown())
        atomic_write_text(out / "compare.json", json.dumps(self.to_dict(), indent=1, ensure_ascii=False))
        page = out / "compare.html"
        atomic_write_text(page, self.html())
        logger.info("wrote %s (%d runs)", page, len(self.runs))
        return page

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Comparison:
        """Read ``compare.json`` (or a folder holding it)."""
        p = Path(path)
        p = p / "compare.json" if p.is_dir() else p
        return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))


def _claim(run: RunColumn, cid: str) -> Claim | None:
    return next((c for c in run.claims if c.id == cid), None)


def _claim_texts(runs: Sequence[RunColumn]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for r in runs:
        for c in r.claims:
            seen.setdefault(c.id, c.claim)
    return sorted(seen.items())


def _guard_markdown(guard: Mapping[str, Any] | None) -> list[str]:
    if not guard or not guard.get("rows"):
        return ["No guard evaluation for this run."]
    cols = [str(c) for c in guard.get("columns") or ()]
    lines = ["| guard | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for row in guard["rows"]:
        if not isinstance(row, Mapping):
            continue
        vals = list(row.get("values") or []) + [None] * len(cols)
        text = [
            f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v)) for v in vals[: len(cols)]
        ]
        lines.append(f"| {row.get('name', '')} | " + " | ".join(text) + " |")
    return lines


def load_run(path: str | os.PathLike[str], label: str | None = None) -> RunColumn:
    """One run folder (or its ``summary.json``) as a :class:`RunColumn`.

    Args:
        path: A run folder holding ``summary.json``, or the file itself.
        label: Column heading; default ``meta.model``.

    Raises:
        ArtifactError: When the summary is missing, unreadable or not a run summary.
        ValueError: When the run folder's ``guard_eval.json`` cannot be read or was measured on
            another model.
    """
    p = Path(path)
    summary_path = p / "summary.json" if p.is_dir() else p
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read the run summary {summary_path}: {exc}") from exc
    if not isinstance(summary, dict) or not isinstance(summary.get("meta"), dict):
        raise ArtifactError(f"{summary_path} is not a latentguard run summary (no 'meta' section)")
    meta = summary["meta"]
    section = summary.get("guard")
    guard = section.get("table") if isinstance(section, dict) else None
    sidecar = summary_path.parent / "guard_eval.json"
    if not isinstance(guard, dict) and sidecar.is_file():
        # the sidecar stands in for `run --guard-eval`: claim (i) reads it too
        summary = {**summary, "guard": guard_section(str(sidecar), str(meta.get("fingerprint", "")))}
        guard = summary["guard"]["table"]
    model = str(meta.get("model", "unknown model"))
    return RunColumn(
        label=label or model,
        path=str(summary_path.parent),
        model=model,
        groups=dict(meta.get("groups") or {}),
        claims=evaluate_claims(summary),
        guard=guard if isinstance(guard, dict) else None,
    )


def compare_runs(paths: Sequence[str | os.PathLike[str]], labels: Sequence[str] | None = None) -> Comparison:
    """Load runs and put them side by side.

    Args:
        paths: Run folders (or ``summary.json`` files), at least one.
        labels: Column headings, one per run; default each run's model spec.

    Raises:
        ValueError: For no runs, a label count that does not match, or a run that cannot be read.
    """
    if not paths:
        raise ValueError("compare needs at least one run folder")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} runs")
    return Comparison(runs=[load_run(p, labels[i] if labels else None) for i, p in enumerate(paths)])
