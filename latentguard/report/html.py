"""One self-contained ``report.html`` for a run: metadata, figures, claims and the guard table.

Figures are inlined as base64 ``data:`` URIs and the style sheet is inline, so the file has no
external reference (no CSS, JS, fonts or images to fetch) and reads offline. All text taken from the
summary is escaped with :func:`html.escape`.

Example:
    >>> build_report("runs/x/summary.json", Path("runs/x/report"))   # doctest: +SKIP
    PosixPath('runs/x/report/report.html')
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from latentguard.io import atomic_write_text
from latentguard.report.claims import VERDICTS, Claim, evaluate_claims
from latentguard.report.figures import GROUPS, Figure, make_figures

logger = logging.getLogger(__name__)

_MIME: Final[Mapping[str, str]] = MappingProxyType(
    {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
)
_VERDICT_CLASS: Final[Mapping[str, str]] = MappingProxyType({v: "v-" + v.replace(" ", "-") for v in VERDICTS})

__all__ = [
    "STYLE",
    "build_report",
    "cell",
    "esc",
    "render_html",
    "rows_table",
    "verdict_badge",
    "write_report",
]

STYLE: Final = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1180px; padding: 1.2em 1.6em 3em; color: #1c1c1c; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 0.2em 0 0.4em; }
.sub { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #d6d6d6; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv { margin: 0; font-size: 0.95em; }
table.kv td, table.kv th { border: none; padding: 0.05em 0.8em 0.05em 0; }
figure { margin: 1.2em 0 2em; padding: 0.8em; border: 1px solid #e2e2e2; border-radius: 6px; background: #fcfcfc; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { margin-top: 0.5em; font-size: 0.95em; }
figcaption b { color: #333; }
.verdict { font-weight: 600; padding: 0.1em 0.5em; border-radius: 4px; white-space: nowrap; }
.v-holds { background: #d4edda; color: #155724; }
.v-partly { background: #fff3cd; color: #7a5a00; }
.v-does-not-hold { background: #f8d7da; color: #721c24; }
.v-not-measured { background: #e2e3e5; color: #41464b; }
nav ul { columns: 3; padding-left: 1.2em; }
.muted { color: #777; }
"""


def esc(value: Any) -> str:
    """Escaped text of any value."""
    return html.escape(str(value), quote=True)


def verdict_badge(verdict: str) -> str:
    """A claim's verdict as a coloured ``<span>`` (classes from :data:`STYLE`)."""
    return f"<span class='verdict {_VERDICT_CLASS.get(verdict, 'v-not-measured')}'>{esc(verdict)}</span>"


def _num(value: Any) -> str:
    """A compact, escaped rendering of a number (or any other value)."""
    if isinstance(value, bool) or value is None:
        return esc("n/a" if value is None else value)
    if isinstance(value, int):
        return esc(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return esc(f"{value:.4g}")
    return esc(value)


def cell(value: Any) -> str:
    """A table cell; mappings become nested key/value tables, lists comma-separated."""
    if isinstance(value, Mapping):
        if not value:
            return "<td class='muted'>none</td>"
        return f"<td>{_kv_table(value)}</td>"
    if isinstance(value, (list, tuple)):
        return f"<td>{', '.join(_num(v) for v in value) or 'none'}</td>"
    cls = " class='num'" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    return f"<td{cls}>{_num(value)}</td>"


def _kv_table(values: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in values.items())
    return f"<table class='kv'>{rows}</table>"


def _meta_section(meta: Mapping[str, Any]) -> str:
    if not meta:
        return "<p class='muted'>No run metadata (meta section missing).</p>"
    order = [
        "model",
        "fingerprint",
        "n_layers",
        "d_model",
        "quick",
        "belief_layers",
        "data",
        "seeds",
        "versions",
        "timings",
    ]
    keys = [k for k in order if k in meta] + [k for k in meta if k not in order and k != "groups"]
    rows = []
    for key in keys:
        value = meta[key]
        if key == "timings" and isinstance(value, Mapping):
            secs = [
                float(v) for v in value.values() if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            value = {
                k: (f"{v:.1f} s" if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                for k, v in value.items()
            }
            if secs and "total" not in value:
                value["total"] = f"{sum(secs):.1f} s (sum)"
        rows.append(f"<tr><th>{esc(key)}</th>{cell(value)}</tr>")
    return f"<table>{''.join(rows)}</table>"


def _groups_section(meta: Mapping[str, Any]) -> str:
    groups = meta.get("groups") if isinstance(meta.get("groups"), Mapping) else None
    if not groups:
        return "<p class='muted'>No behaviour groups recorded.</p>"
    names = [g for g in GROUPS if g in groups] + [g for g in groups if g not in GROUPS]
    counts = {g: groups[g] for g in names}
    total = sum(v for v in counts.values() if isinstance(v, (int, float)) and not isinstance(v, bool))
    rows = []
    for g in names:
        n = counts[g]
        share = (
            f"{n / total:.0%}" if total and isinstance(n, (int, float)) and not isinstance(n, bool) else "n/a"
        )
        rows.append(
            f"<tr><td>{esc(g.replace('_', '-'))}</td><td class='num'>{_num(n)}</td><td class='num'>{esc(share)}</td></tr>"
        )
    rows.append(f"<tr><th>total</th><td class='num'>{_num(total)}</td><td></td></tr>")
    return f"<table><tr><th>group</th><th>prompts</th><th>share</th></tr>{''.join(rows)}</table>"


def _figure_html(fig: Figure) -> str:
    mime = _MIME.get(fig.path.suffix.lower())
    head = f"<h3>{esc(fig.title)}</h3>"
    caption = f"<figcaption><b>Reading:</b> {esc(fig.reading)}</figcaption>"
    if mime is None or not fig.path.is_file():
        note = "not found" if not fig.path.is_file() else f"format {fig.path.suffix} cannot be inlined"
        body = f"<p class='muted'>Image {esc(fig.path.name)}: {esc(note)}.</p>"
    else:
        data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
        body = f"<img src='data:{mime};base64,{data}' alt='{esc(fig.title)}'>"
    return f"<figure id='fig-{esc(fig.key)}'>{head}{body}{caption}</figure>"


def _claims_section(claims: Sequence[Claim]) -> str:
    if not claims:
        return "<p class='muted'>No claims evaluated.</p>"
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
    tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    rows = "".join(
        f"<tr><td>({esc(c.id)})</td><td>{esc(c.claim)}</td><td>{esc(c.measurement)}</td>"
        f"<td>{verdict_badge(c.verdict)}</td></tr>"
        for c in claims
    )
    return (
        f"<p>{esc(tally)}. Verdicts are computed from this run's numbers with the thresholds given in each "
        "measurement (see latentguard.report.claims).</p>"
        f"<table><tr><th>id</th><th>the paper's claim</th><th>this run</th><th>verdict</th></tr>{rows}</table>"
    )


def rows_table(table: Mapping[str, Any]) -> str:
    columns = [str(c) for c in table.get("columns") or ()]
    head = "<tr><th>guard</th>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"
    body = []
    for row in table.get("rows") or ():
        if not isinstance(row, Mapping):
            continue
        values = list(row.get("values") or [])
        values += [None] * (len(columns) - len(values))
        body.append(f"<tr><th>{esc(row.get('name', ''))}</th>{''.join(cell(v) for v in values)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _spread_table(spread: Mapping[str, Any], columns: Sequence[str]) -> str:
    head = "<tr><th>guard</th>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"
    body = []
    for row in spread.get("rows") or ():
        if not isinstance(row, Mapping):
            continue
        cells = []
        for j in range(len(columns)):
            vals = [
                float(v[j])
                for v in row.get("values_by_seed") or ()
                if isinstance(v, Sequence) and len(v) > j and isinstance(v[j], (int, float))
            ]
            text = f"{sum(vals) / len(vals):.3f} [{min(vals):.3f}, {max(vals):.3f}]" if vals else "-"
            cells.append(f"<td>{esc(text)}</td>")
        body.append(f"<tr><th>{esc(row.get('name', ''))}</th>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _pair(a: Any, b: Any) -> str:
    def one(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    return f"{one(a)} / {one(b)}"


def _guard_section(guard: Any) -> str | None:
    table = guard.get("table") if isinstance(guard, Mapping) else None
    if not isinstance(table, Mapping) or not table.get("rows"):
        return None
    parts = [rows_table(table)]
    after = table.get("after_attack")
    if isinstance(after, Mapping) and after.get("rows"):
        parts += ["<h3>After the finetuning attack</h3>", rows_table(after)]
    spread = table.get("seed_spread")
    if isinstance(spread, Mapping) and spread.get("rows"):
        parts += [
            "<h3>Other train/validation splits</h3><p>Both activation guards refitted with split seeds "
            f"{esc(spread.get('seeds'))}: mean [min, max] of each column.</p>",
            _spread_table(spread, [str(c) for c in table.get("columns") or ()]),
        ]
    comparison = table.get("comparison")
    if isinstance(comparison, Sequence) and comparison:
        ccols = ("n", "ours", "theirs", "only_ours_correct", "only_theirs_correct", "p")
        head = (
            "<tr><th>other guard</th><th>column</th><th>n</th><th>Latent Guard</th><th>other</th>"
            "<th>only Latent Guard right</th><th>only other right</th><th>McNemar p</th></tr>"
        )
        body = [
            f"<tr><th>{esc(c.get('other', ''))}</th><td>{esc(c.get('column', ''))}</td>"
            + "".join(cell(c.get(k)) for k in ccols)
            + "</tr>"
            for c in comparison
            if isinstance(c, Mapping)
        ]
        parts += [
            "<h3>Prompt by prompt</h3><p>The Latent Guard against each other guard on the same prompts, "
            "with an exact McNemar test on the prompts only one of them gets right.</p>",
            f"<table>{head}{''.join(body)}</table>",
        ]
    rob = table.get("robustness")
    if isinstance(rob, Mapping) and rob.get("rows"):
        rrows = [r for r in rob["rows"] if isinstance(r, Mapping)]
        head = "<tr><th>obfuscation</th>" + "".join(
            f"<th>{esc(r.get('name', ''))}<br>TPR / FPR</th>" for r in rrows
        )
        body = []
        for ob in rob.get("obfuscations") or ():
            cells = "".join(
                f"<td>{esc(_pair(r.get('tpr', {}).get(ob), r.get('fpr', {}).get(ob)))}</td>" for r in rrows
            )
            body.append(f"<tr><th>{esc(ob)}</th>{cells}</tr>")
        parts += [
            "<h3>Obfuscated prompts</h3><p>Harmful and everyday test prompts, obfuscated (see "
            "latentguard.obfuscate): TPR on the harmful ones, FPR on the everyday ones. The normaliser "
            "runs by default in guard check, the server and guarded generation.</p>",
            f"<table>{head}</tr>{''.join(body)}</table>",
        ]
    conv = table.get("conversations")
    if isinstance(conv, Mapping) and conv.get("rows"):
        body = [
            f"<tr><th>{esc(r.get('name', ''))}</th>{cell(r.get('tpr_harmful_after_harmless'))}"
            f"{cell(r.get('fpr_harmless_after_harmful'))}</tr>"
            for r in conv["rows"]
            if isinstance(r, Mapping)
        ]
        parts += [
            "<h3>Conversations</h3><p>Two-turn conversations from the test sets; the guard reads the last "
            "user turn in context.</p><table><tr><th>guard</th><th>TPR harmful last turn after harmless "
            "history</th><th>FPR harmless follow-up after a harmful turn</th></tr>"
            + "".join(body)
            + "</table>",
        ]
    repair = table.get("repair")
    if isinstance(repair, Mapping) and repair:
        cols = ("n", "refusal_before", "refusal_after", "guard_flags")
        head = "<tr><th>prompts</th>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>"
        body = [
            f"<tr><th>{esc(name)}</th>{''.join(cell(e.get(c)) for c in cols)}</tr>"
            for name, e in repair.items()
            if isinstance(e, Mapping)
        ]
        parts += [
            "<h3>Over-refusal repair</h3><p>Prompts the guard calls harmless whose answer is a refusal are "
            "answered again with the refusal direction ablated.</p>",
            f"<table>{head}{''.join(body)}</table>",
        ]
    return "".join(parts)


def render_html(
    summary: Mapping[str, Any],
    figures: Sequence[Figure],
    claims: Sequence[Claim],
) -> str:
    """The report as one HTML string (figures read from their paths and inlined).

    Args:
        summary: The parsed ``summary.json``.
        figures: Figures to inline, in order.
        claims: Evaluated claims.

    Returns:
        A complete, self-contained HTML document.
    """
    meta = summary.get("meta") if isinstance(summary.get("meta"), Mapping) else {}
    assert isinstance(meta, Mapping)
    model = meta.get("model", "unknown model")
    toc = ["<li><a href='#run'>Run</a></li>", "<li><a href='#groups'>Behaviour groups</a></li>"]
    toc += [f"<li><a href='#fig-{esc(f.key)}'>{esc(f.title)}</a></li>" for f in figures]
    toc.append("<li><a href='#claims'>Claims</a></li>")
    guard = _guard_section(summary.get("guard"))
    if guard is not None:
        toc.append("<li><a href='#guard'>Guard comparison</a></li>")
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>latentguard report: {esc(model)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>latentguard run report: {esc(model)}</h1>",
        "<p class='sub'>Reproduction of \u201cLLMs Encode Harmfulness and Refusal Separately\u201d "
        "(Zhao, Huang, Wu, Bau, Shi; NeurIPS 2025; arXiv 2507.11878).</p>",
        f"<nav><ul>{''.join(toc)}</ul></nav>",
        "<h2 id='run'>Run</h2>",
        _meta_section(meta),
        "<h2 id='groups'>Behaviour groups</h2>",
        _groups_section(meta),
        "<h2 id='figures'>Figures</h2>",
    ]
    parts += [_figure_html(f) for f in figures] or [
        "<p class='muted'>No figure: every section is missing.</p>"
    ]
    parts += ["<h2 id='claims'>Claims</h2>", _claims_section(claims)]
    if guard is not None:
        parts += ["<h2 id='guard'>Guard comparison</h2>", guard]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    summary: Mapping[str, Any],
    out_dir: Path,
    figures: list[Figure] | None = None,
    claims: list[Claim] | None = None,
) -> Path:
    """Write ``out_dir/report.html``, self-contained.

    Args:
        summary: The parsed ``summary.json``.
        out_dir: Output folder (created).
        figures: Figures to inline; ``None`` draws them (PNG) under ``out_dir/figures``.
        claims: Evaluated claims; ``None`` evaluates them.

    Returns:
        The path of ``report.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if figures is None:
        figures = make_figures(summary, out_dir / "figures", fmt="png")
    if claims is None:
        claims = evaluate_claims(summary)
    path = out_dir / "report.html"
    atomic_write_text(path, render_html(summary, figures, claims))
    logger.info("wrote %s (%d figures, %d claims)", path, len(figures), len(claims))
    return path


def build_report(summary: str | os.PathLike[str] | Mapping[str, Any], out_dir: Path) -> Path:
    """Figures, claims and ``report.html`` in one call.

    Args:
        summary: A ``summary.json`` path or the parsed summary.
        out_dir: Output folder: ``report.html`` and ``figures/*.png``.

    Returns:
        The path of ``report.html``.
    """
    if isinstance(summary, Mapping):
        data: Mapping[str, Any] = summary
    else:
        data = json.loads(Path(summary).read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise ValueError(f"{summary}: summary.json must hold a JSON object")
    out_dir = Path(out_dir)
    figures = make_figures(data, out_dir / "figures", fmt="png")
    claims = evaluate_claims(data)
    return write_report(data, out_dir, figures=figures, claims=claims)
