"""Latent Guard: ``guard fit|check|chat|eval`` and ``serve`` (its audit-log options: :mod:`.audit_cmds`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from latentguard.cli.audit_cmds import add_audit_server_args
from latentguard.cli.common import (
    add_config_options,
    add_engine_args,
    add_messages_arg,
    add_model_args,
    config_from_args,
    engine_config,
    load_model,
    model_ref,
    print_json,
    prompt_arg,
    sourced_instructions,
    write_jsonl,
)

logger = logging.getLogger("latentguard")


def cmd_guard_fit(args: argparse.Namespace) -> int:
    from latentguard.guard.fit import GuardConfig, fit_guard

    harmful, harmful_sources = sourced_instructions(args.harmful, args.limit)
    harmless, harmless_sources = sourced_instructions(args.harmless, args.limit)
    lookalikes = sourced_instructions(args.lookalikes, args.limit)[0] if args.lookalikes else []
    lm = load_model(args)
    cfg = config_from_args(GuardConfig, args, progress=not args.quiet)
    categorised = category_rows(args.categories, args.limit) if args.categories else []
    guard = fit_guard(
        lm,
        harmful,
        harmless,
        cfg,
        lookalikes=lookalikes,
        harmful_sources=harmful_sources,
        harmless_sources=harmless_sources,
    )
    extra: dict[str, Any] = {}
    if categorised:
        from latentguard.guard.categories import fit_categories

        guard.categories = fit_categories(
            lm,
            categorised,
            harmless,
            position=guard.position,
            layer=guard.layers[len(guard.layers) // 2],
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            progress=cfg.progress,
        )
        extra["category_head"] = {"layer": guard.categories.layer, **guard.categories.metrics}
    path = guard.save(args.out)
    print_json({"out": str(path), **guard.summary(), **extra})
    return 0


def category_rows(spec: str, limit: int | None) -> list[tuple[str, str]]:
    """``(instruction, category)`` of the rows of ``spec`` that have a category (``guard fit --categories``).

    Raises:
        DataError: If no row has a category.
    """
    from latentguard.data import DataError, load_any

    rows = [(e.instruction, e.category) for e in load_any(spec) if e.category]
    if not rows:
        raise DataError(f"{spec}: no row has a 'category' field")
    if limit is None:
        return rows
    per: dict[str, int] = {}
    kept = []
    for inst, cat in rows:  # up to `limit` rows per category
        per[cat] = per.get(cat, 0) + 1
        if per[cat] <= limit:
            kept.append((inst, cat))
    return kept


def load_guard(args: argparse.Namespace) -> tuple[Any, Any]:
    from latentguard.guard.fit import LatentGuard

    guard_model(args)
    lm = load_model(args)
    return lm, LatentGuard.load(args.guard, lm)


def guard_model(args: argparse.Namespace) -> None:
    """Fill in ``args.model`` from the guard's JSON when ``--model`` was not given.

    Raises:
        ArtifactError: The guard's JSON cannot be read or names no model (never a silent fallback
            to some other model).
    """
    from latentguard.io import ArtifactError

    if args.model is not None:
        return
    meta_path = Path(args.guard)
    meta_file = meta_path if meta_path.suffix == ".json" else meta_path.with_suffix(".json")
    if meta_path.is_dir():
        meta_file = meta_path / "guard.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read the guard {args.guard} ({meta_file}): {exc}") from exc
    model = meta.get("model") if isinstance(meta, dict) else None
    if not model:
        raise ArtifactError(f"the guard {meta_file} names no model; pass --model")
    args.model = str(model)


def cmd_guard_check(args: argparse.Namespace) -> int:
    from latentguard.guard.score import GuardResult, check

    engine = engine_config(args)

    def run(prompts: list[Any], batch_size: int = 16) -> list[GuardResult]:
        if engine is None:
            lm, guard = load_guard(args)
            return check(lm, guard, prompts, batch_size=batch_size, normalize=not args.no_normalize)
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("conversations ('messages') need --engine local")
        from latentguard import ray_engine

        guard_model(args)
        return ray_engine.check(model_ref(args), args.guard, prompts, engine, batch_size=batch_size)

    one = prompt_arg(args)
    if one is not None:
        res = run([one])[0]
        print_json(
            {
                "harmful": res.harmful,
                "score": res.score,
                "normalized": res.normalized,
                "layer_scores": res.layer_scores,
            }
        )
        return 0
    if not (args.data and args.out):
        raise ValueError("give --prompt TEXT (or --messages JSON), or --data FILE and --out FILE")
    from latentguard.data import load_any

    examples = load_any(args.data)
    results = run([e.prompt for e in examples], batch_size=args.batch_size)
    rows = [
        {
            **e.meta,
            **({"messages": e.messages} if e.messages is not None else {}),
            "instruction": e.instruction,
            "harmful": r.harmful,
            "score": r.score,
            "normalized": r.normalized,
            "layer_scores": r.layer_scores,
        }
        for e, r in zip(examples, results, strict=True)
    ]
    write_jsonl(args.out, rows)
    print_json({"out": args.out, "n": len(rows), "flagged": sum(r["harmful"] for r in rows)})
    return 0


def repair_direction(lm: Any, args: argparse.Namespace) -> Any:
    if not getattr(args, "refusal_direction", None):
        return None
    from latentguard.directions import Directions

    return Directions.load(args.refusal_direction, expect_fingerprint=lm.fingerprint)


def cmd_guard_chat(args: argparse.Namespace) -> int:
    from latentguard.guard.guarded import guarded_generate
    from latentguard.guard.types import BLOCKED_REPLY
    from latentguard.judge import load_judge

    one = prompt_arg(args)
    lm, guard = load_guard(args)
    direction = repair_direction(lm, args)
    judge = load_judge() if direction is not None else None
    prompts = [one] if one is not None else None
    history: list[dict[str, str]] = []
    while True:
        if prompts is None:
            try:
                line = input("you> ")
            except EOFError:
                return 0
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            batch: list[Any] = [list(history)]  # the guard reads the last turn in the whole conversation
        else:
            batch = prompts
        reply = guarded_generate(
            lm,
            guard,
            batch,
            policy=args.policy,
            max_new_tokens=args.max_new_tokens,
            judge=judge,
            repair=direction is not None,
            refusal_direction=direction,
            normalize=not args.no_normalize,
        )[0]
        print_json(
            {
                "harmful": reply.harmful,
                "score": reply.score,
                "blocked": reply.blocked,
                "flagged": reply.flagged,
                "response": reply.response,
                "refused": reply.refused,
                "repaired_response": reply.repaired_response,
                "normalized": reply.normalized,
            }
        )
        if prompts is not None:
            return 0
        answer = reply.repaired_response or reply.response
        history.append({"role": "assistant", "content": answer if answer is not None else BLOCKED_REPLY})


def cmd_guard_eval(args: argparse.Namespace) -> int:
    from latentguard.experiments.guard_eval.config import EvalConfig
    from latentguard.experiments.guard_eval.format import (
        format_categories,
        format_comparison,
        format_conversations,
        format_lookalike_comparison,
        format_repair,
        format_robustness,
        format_seed_spread,
        format_table,
    )
    from latentguard.experiments.guard_eval.run import evaluate_guards
    from latentguard.io import atomic_write_text
    from latentguard.judge import load_judge
    from latentguard.models import load

    lm = load_model(args)
    attacked = load(args.attacked) if args.attacked else None
    cfg = config_from_args(EvalConfig, args, use_shared=False if args.builtin_only else None)
    out = Path(args.out)
    table = evaluate_guards(
        lm,
        load_judge(),
        cfg,
        attacked=attacked,
        progress=None if args.quiet else logger.info,
        guard_out=out / "guard",
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "guard_eval.json", json.dumps(table, indent=1))
    text = format_table(table)
    if table.get("comparison"):
        text += "\n\nThe Latent Guard against each other guard, prompt by prompt (exact McNemar test):\n\n"
        text += format_comparison(table["comparison"])
    if table.get("xstest_auroc_comparison"):
        text += (
            "\n\nHarmful vs XSTest-style test prompts, threshold-free (paired bootstrap over prompts):\n\n"
        )
        text += format_lookalike_comparison(table["xstest_auroc_comparison"])
    if "seed_spread" in table:
        text += "\n\nRefitted with other train/validation splits. " + format_seed_spread(
            table["seed_spread"], table["columns"]
        )
    if "robustness" in table:
        rob = table["robustness"]
        text += (
            f"\n\nObfuscated prompts ({rob['n_harmful']} harmful / {rob['n_everyday']} everyday test prompts; "
            "TPR on harmful, FPR on everyday):\n\n" + format_robustness(rob)
        )
    if "conversations" in table:
        n_h, n_s = table["conversations"]["n"]
        text += (
            f"\n\nConversations ({n_h} + {n_s} two-turn conversations from the test sets; the guard reads the "
            "last user turn in context):\n\n" + format_conversations(table["conversations"])
        )
    if "categories" in table:
        text += (
            f"\n\nPer-category head (/v1/moderations; CatQA, layer {table['categories']['layer']}), held-out "
            "accuracy of the arg-max category:\n\n" + format_categories(table["categories"])
        )
    if "after_attack" in table:
        text += "\n\nAfter the finetuning attack:\n\n" + format_table(table["after_attack"])
    if "repair" in table:
        text += (
            "\n\nOver-refusal repair (Latent Guard says harmless + the answer is a refusal -> answer again "
        )
        text += "with the refusal direction ablated):\n\n" + format_repair(table["repair"])
    atomic_write_text(out / "guard_eval.md", text + "\n")
    sys.stdout.write(text + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from latentguard.guard.guarded import LatentGuardBackend
    from latentguard.guard.serve import ServeConfig, read_token_file, run
    from latentguard.judge import load_judge

    if args.audit_db is not None:  # an unusable audit database fails before the model loads
        from latentguard.audit import open_store

        open_store(args.audit_db).close()
    lm, guard = load_guard(args)
    token = read_token_file(args.token_file) if args.token_file else None
    direction = repair_direction(lm, args)
    backend = LatentGuardBackend(
        lm,
        guard,
        judge=load_judge() if direction is not None else None,
        repair=direction is not None,
        refusal_direction=direction,
        normalize=not args.no_normalize,
        guard_enabled=not args.no_guard,
    )
    config = ServeConfig(
        host=args.host,
        port=args.port,
        token=token,
        served_model_name=args.served_model_name,
        audit_db=args.audit_db,
        audit_store_text=args.audit_store_text,
        audit_failure=args.audit_failure,
        policy=args.policy,
    )
    run(backend, config)
    return 0


def register(sub: Any) -> None:
    """Add ``guard`` (fit, check, chat, eval) and ``serve`` to the top-level subparsers."""
    from latentguard.experiments.guard_eval.config import EvalConfig
    from latentguard.guard.fit import GuardConfig
    from latentguard.guard.types import POLICIES

    guard = sub.add_parser("guard", help="Latent Guard: fit, check, chat, eval").add_subparsers(
        dest="guard_command", required=True
    )
    p = guard.add_parser("fit", help="fit a guard from the model's own t_inst hidden states")
    add_model_args(p)
    p.add_argument(
        "--harmful",
        default="builtin:harmful",
        help="harmful prompts: one data spec or several, comma-separated (each is a source for validation)",
    )
    p.add_argument("--harmless", default="builtin:harmless", help="harmless prompts, as --harmful")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--lookalikes",
        default=None,
        help="more harmless prompts that only look unsafe, weighted in training (builtin:xstest_like is "
        "mixed in unless --no-builtin-mix)",
    )
    p.add_argument(
        "--categories",
        default=None,
        help="rows with a 'category' field (e.g. shared:harmful_catqa): fit the per-category head that "
        "/v1/moderations reports (stored in the guard)",
    )
    add_config_options(p, GuardConfig, skip=("progress",))
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=cmd_guard_fit)

    def guard_model_args(p: argparse.ArgumentParser) -> None:
        add_model_args(p)
        p.set_defaults(model=None)
        p.add_argument("--guard", required=True, help="guard artifact (from guard fit)")
        p.add_argument(
            "--no-normalize",
            action="store_true",
            help="read prompts as given (default: NFKC, invisible characters removed, look-alike letters "
            "folded and letter spacing collapsed before the guard reads them)",
        )

    p = guard.add_parser("check", help="classify prompts (or conversations) with a guard")
    guard_model_args(p)
    p.add_argument("--prompt", default=None)
    add_messages_arg(p)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    add_engine_args(p)
    p.set_defaults(func=cmd_guard_check)

    p = guard.add_parser(
        "chat", help="guarded generation (interactive, with the conversation as context, without --prompt)"
    )
    guard_model_args(p)
    p.add_argument("--prompt", default=None)
    add_messages_arg(p)
    p.add_argument("--policy", choices=POLICIES, default="block")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--refusal-direction", default=None, help="enables over-refusal repair")
    p.set_defaults(func=cmd_guard_chat)

    p = guard.add_parser("eval", help="compare Latent Guard with other guards (paper Table 1 style)")
    add_model_args(p)
    p.set_defaults(model="organism")
    p.add_argument(
        "--attacked", default=None, help="attacked model (e.g. 'attacked') for the robustness rows"
    )
    p.add_argument("--out", default="runs/guard-eval")
    add_config_options(
        p, EvalConfig, skip=("use_shared",), flags={"n_gcg": "gcg", "n_train_suffixed": "train-suffixed"}
    )
    p.add_argument("--builtin-only", action="store_true")
    p.set_defaults(func=cmd_guard_eval)

    p = sub.add_parser("serve", help="serve a guard over HTTP (FastAPI + uvicorn)")
    guard_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default=None, help="file holding the bearer token")
    p.add_argument(
        "--served-model-name",
        default=None,
        help="model id listed by GET /v1/models (default: the model spec)",
    )
    p.add_argument("--refusal-direction", default=None, help="enables over-refusal repair")
    add_audit_server_args(p)
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default="block",
        help="chat completions' policy for harmful input (a request may override it: "
        '{"latentguard": {"policy": ...}})',
    )
    p.add_argument(
        "--no-guard",
        action="store_true",
        help="answer chat completions without the guard's hooks (a baseline for benchmarks; every verdict "
        "is harmless)",
    )
    p.set_defaults(func=cmd_serve)
