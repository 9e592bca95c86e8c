"""The model organism and the study: ``align``, ``attack``, ``run``, ``compare``."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from latentguard.cli.common import (
    add_config_options,
    config_from_args,
    print_json,
)

logger = logging.getLogger("latentguard")


def cmd_align(args: argparse.Namespace) -> int:
    from latentguard.organism import AlignConfig
    from latentguard.organism_aliases import build_organism, recipe_for

    # the base model's recipe (latentguard.organism_aliases.RECIPES), with the flags given on top
    cfg = config_from_args(
        AlignConfig, args, base=recipe_for(args.model), extra_shared=False if args.builtin_only else None
    )
    out, report = build_organism(
        args.model,
        cfg,
        args.out,
        chat_template=args.chat_template,
        harmful=args.harmful,
        harmless=args.harmless,
        evaluate=not args.no_eval,
    )
    if report is None:
        print_json({"out": str(out), "cached": True})
        return 0
    print_json(
        {k: report[k] for k in ("fingerprint", "steps", "seconds", "precision", "heldout") if k in report}
        | {"out": str(out)}
    )
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from latentguard.organism import AttackConfig, attack

    report = attack(args.model, args.out, config_from_args(AttackConfig, args), harmful=args.harmful)
    print_json(
        {k: report[k] for k in ("n_examples", "loss_first", "loss_last", "seconds")} | {"out": args.out}
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from latentguard.analysis.study import StudyConfig, run_study

    cfg = config_from_args(
        StudyConfig,
        args,
        size="quick" if args.quick else None,
        use_shared=False if args.builtin_only else None,
    )
    summary = run_study(args.model, args.out, cfg, progress=None if args.quiet else logger.info)
    from latentguard.analysis.study import STAGE_DESCRIPTIONS
    from latentguard.io import atomic_write_text
    from latentguard.report.html import build_report

    logger.info("stage report: %s ...", STAGE_DESCRIPTIONS["report"])
    t0 = time.perf_counter()
    build_report(summary, Path(args.out))
    summary["meta"]["timings"]["report"] = round(time.perf_counter() - t0, 1)
    summary["meta"]["timings"]["total"] = round(
        summary["meta"]["timings"]["total"] + summary["meta"]["timings"]["report"], 1
    )
    atomic_write_text(Path(args.out) / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False))
    print_json(
        {
            "out": args.out,
            "report": str(Path(args.out) / "report.html"),
            "groups": summary["meta"]["groups"],
            "timings": summary["meta"]["timings"],
        }
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from latentguard.report.compare import compare_runs

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    page = compare_runs(args.runs, labels).save(args.out)
    print_json({"html": str(page), "markdown": str(page.with_suffix(".md")), "runs": len(args.runs)})
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands to the top-level subparsers."""
    from latentguard.analysis.study import StudyConfig
    from latentguard.organism import AlignConfig, AttackConfig

    p = sub.add_parser("align", help="safety-tune a model with LoRA (the model organism)")
    p.add_argument("--model", default="default", help="base model (its recipe: latentguard.organism_aliases)")
    p.add_argument(
        "--out", default=None, help="output dir (default: the cache that --model organism:MODEL resolves to)"
    )
    p.add_argument(
        "--chat-template", default=None, help="Jinja text or file for a base model without a chat template"
    )
    p.add_argument("--harmful", default=None, help="extra harmful instructions (trained to refusals)")
    p.add_argument("--harmless", default=None, help="extra harmless instructions (trained to own answers)")
    p.add_argument("--builtin-only", action="store_true", help="do not add ../shared/data training rows")
    p.add_argument("--no-eval", action="store_true", help="skip held-out refusal rates")
    add_config_options(p, AlignConfig, skip=("extra_shared",))
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("attack", help="finetuning attack: LoRA steps towards compliant answers")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--harmful", default=None)
    add_config_options(p, AttackConfig)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("run", help="the whole study: summary.json, figures, report.html")
    p.add_argument("--model", default="organism")
    p.add_argument("--out", default="runs/study")
    p.add_argument("--quick", action="store_true", help="the same as --size quick")
    p.add_argument("--builtin-only", action="store_true", help="the same as --no-use-shared")
    add_config_options(p, StudyConfig)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="runs side by side: claims per model and each guard table")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by `latentguard run`")
    p.add_argument("--out", default="runs/compare", help="writes compare.md, compare.html, compare.json")
    p.add_argument("--labels", default=None, help="comma-separated column headings (default: model specs)")
    p.set_defaults(func=cmd_compare)
