"""``latentguard`` command line: thin commands over the Python API.

Each command parses its arguments, calls one API function, and prints JSON or a short table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("latentguard")

Handler = Callable[[argparse.Namespace], int]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="default", help="HF id, local dir, .gguf file, 'default' or 'organism'")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto (default: fp32 on CPU)")
    g.add_argument("--device", default=None, help="cpu | cuda | cuda:N")
    g.add_argument("--device-map", default=None, help="e.g. 'auto' to spread a big model over devices")
    g.add_argument(
        "--load-in-bits", type=int, choices=(4, 8), default=None, help="bitsandbytes quantised loading"
    )
    g.add_argument(
        "--chat-template", default=None, help="Jinja text or file replacing the tokenizer's template"
    )
    g.add_argument(
        "--layers-path", default=None, help="dotted path to the decoder layers (unknown architectures)"
    )
    g.add_argument("--system", default=None, help="system prompt (default: the template's own)")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="run here, or on Ray (latentguard[ray])"
    )
    g.add_argument("--workers", type=int, default=2, help="Ray workers, each with its own model replica")
    g.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: start one on 127.0.0.1)"
    )
    g.add_argument(
        "--threads", type=int, default=None, help="torch threads (per Ray worker; default cores / workers)"
    )
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs reserved per Ray worker")


def _engine(args: argparse.Namespace) -> Any:
    """The Ray engine's config for ``--engine ray``; ``None`` (after applying ``--threads``) for local."""
    if args.engine == "local":
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        return None
    from latentguard.ray_engine import EngineConfig

    return EngineConfig(
        workers=args.workers,
        threads=args.threads,
        address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker,
    )


def _model_ref(args: argparse.Namespace) -> Any:
    from latentguard.ray_engine import ModelRef

    return ModelRef(
        spec=args.model,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        load_in_bits=args.load_in_bits,
        chat_template=args.chat_template,
        layers_path=args.layers_path,
    )


def _load_model(args: argparse.Namespace) -> Any:
    # the same options a Ray worker loads its replica with (ray_engine imports ray lazily)
    return _model_ref(args).load()


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def _instructions(spec: str, limit: int | None = None) -> list[str]:
    from latentguard.data import load_any

    return [e.instruction for e in load_any(spec, limit=limit)]


def cmd_positions(args: argparse.Namespace) -> int:
    from latentguard.models import load_tokenizer
    from latentguard.positions import locate

    tok = load_tokenizer(args.model, chat_template=args.chat_template)
    pos = locate(tok, args.prompt, question=args.question, system=args.system)
    _print_json(pos.to_json())
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from latentguard.activations import ExtractConfig, extract

    insts = _instructions(args.data, args.limit)  # bad data fails before the model loads
    engine = _engine(args)
    cfg = ExtractConfig(
        positions=tuple(p.strip() for p in args.positions.split(",") if p.strip()),
        layers=tuple(int(x) for x in args.layers.split(",")) if args.layers else None,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        padding_side=args.padding_side,
        system=args.system,
        use_cache=not args.no_cache,
        progress=not args.quiet,
    )
    if engine is None:
        acts = extract(_load_model(args), insts, cfg)
    else:
        from latentguard import ray_engine

        acts = ray_engine.extract(_model_ref(args), insts, cfg, engine)
    out = acts.save(args.out)
    _print_json(
        {"out": str(out), "shape": list(acts.activations.shape), "from_cache": acts.meta["n_from_cache"]}
    )
    return 0


def cmd_directions(args: argparse.Namespace) -> int:
    from latentguard.activations import ExtractConfig, extract
    from latentguard.directions import cosine_per_layer, harmfulness_direction, refusal_direction

    groups = {
        k: _instructions(v, args.limit)
        for k, v in {
            "harmful": args.harmful,
            "harmless": args.harmless,
            "refused": args.refused,
            "accepted": args.accepted,
        }.items()
        if v
    }
    lm = _load_model(args)
    cfg = ExtractConfig(system=args.system, progress=not args.quiet, batch_size=args.batch_size)
    harmful = extract(lm, groups["harmful"], cfg)
    harmless = extract(lm, groups["harmless"], cfg)
    out = Path(args.out)
    harm = harmfulness_direction(harmful, harmless)
    harm.save(out / "harmfulness")
    report: dict[str, Any] = {"harmfulness": str(out / "harmfulness.safetensors"), "norms": harm.norms()}
    if args.refused and args.accepted:
        refused = extract(lm, groups["refused"], cfg)
        accepted = extract(lm, groups["accepted"], cfg)
    else:
        logger.warning("no --refused/--accepted given: using harmful/harmless as refused/accepted")
        refused, accepted = harmful, harmless
    ref = refusal_direction(refused, accepted)
    ref.save(out / "refusal")
    cos = cosine_per_layer(harm, ref)
    (out / "cosines.json").write_text(json.dumps(cos, indent=1), encoding="utf-8")
    report.update(
        {"refusal": str(out / "refusal.safetensors"), "cosine": {str(k): round(v, 4) for k, v in cos.items()}}
    )
    _print_json(report)
    return 0


def _write_jsonl(path: str, rows: Sequence[dict[str, Any]]) -> None:
    from latentguard.activations import _atomic_write_text

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def cmd_generate(args: argparse.Namespace) -> int:
    from latentguard.data import load_any
    from latentguard.generation import GenerationConfig, generate
    from latentguard.judge import load_judge

    examples = load_any(args.data, limit=args.limit)
    engine = _engine(args)
    insts = [e.instruction for e in examples]
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        system=args.system,
        progress=not args.quiet,
    )
    if engine is None:
        responses = generate(_load_model(args), insts, cfg)
        verdicts = load_judge(args.judge).judge(responses, insts)
    else:
        from latentguard import ray_engine

        done = ray_engine.generate(_model_ref(args), insts, cfg, engine, judge=args.judge)
        responses, verdicts = done.responses, done.verdicts or []
    rows = [
        {**e.meta, "instruction": e.instruction, "response": r, "refused": v.refused, "score": v.score}
        for e, r, v in zip(examples, responses, verdicts, strict=True)
    ]
    _write_jsonl(args.out, rows)
    _print_json(
        {"out": args.out, "n": len(rows), "refusal_rate": sum(r["refused"] for r in rows) / len(rows)}
    )
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from latentguard.data import read_jsonl_rows
    from latentguard.judge import load_judge

    rows = read_jsonl_rows(args.data, ["response"])
    engine = _engine(args)
    insts = [str(r.get("instruction", "")) for r in rows] if all("instruction" in r for r in rows) else None
    responses = [str(r["response"]) for r in rows]
    if engine is None:
        judge = load_judge(args.judge)
        verdicts, judge_name = judge.judge(responses, insts), judge.name
    else:
        from latentguard import ray_engine

        judged = ray_engine.judge(args.judge, responses, insts, engine)
        verdicts, judge_name = judged.verdicts, judged.judge_name
    out = [{**r, "refused": v.refused, "score": v.score} for r, v in zip(rows, verdicts, strict=True)]
    _write_jsonl(args.out, out)
    _print_json(
        {
            "out": args.out,
            "n": len(out),
            "judge": judge_name,
            "refusal_rate": sum(r["refused"] for r in out) / len(out),
        }
    )
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from latentguard.behaviour import label
    from latentguard.data import load_any
    from latentguard.judge import load_judge

    harmful = load_any(args.harmful, limit=args.limit)
    harmless = load_any(args.harmless, limit=args.limit)
    lm = _load_model(args)
    groups = label(
        lm,
        harmful,
        harmless,
        judge=load_judge(args.judge),
        max_new_tokens=args.max_new_tokens,
        progress=not args.quiet,
    )
    groups.save(args.out)
    _print_json({"out": args.out, "counts": groups.counts()})
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from latentguard.organism import AlignConfig, align

    given = {
        "epochs": args.epochs,
        "lr": args.lr,
        "lora_r": args.lora_r,
        "frozen_fraction": args.frozen_fraction,
        "bf16": args.bf16,
    }
    cfg = AlignConfig(
        seed=args.seed,
        extra_shared=not args.builtin_only,
        **{k: v for k, v in given.items() if v is not None},
    )
    report = align(
        args.model, args.out, cfg, harmful=args.harmful, harmless=args.harmless, evaluate=not args.no_eval
    )
    _print_json(
        {k: report[k] for k in ("fingerprint", "steps", "seconds", "heldout") if k in report}
        | {"out": args.out}
    )
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from latentguard.organism import AttackConfig, attack

    report = attack(
        args.model, args.out, AttackConfig(seed=args.seed, steps=args.steps), harmful=args.harmful
    )
    _print_json(
        {k: report[k] for k in ("n_examples", "loss_first", "loss_last", "seconds")} | {"out": args.out}
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from latentguard.analysis.study import StudyConfig, run_study

    cfg = StudyConfig(
        quick=args.quick,
        seed=args.seed,
        use_shared=not args.builtin_only,
        attack=not args.no_attack,
        coefficient=args.coefficient,
        guard_eval=args.guard_eval,
    )
    summary = run_study(args.model, args.out, cfg, progress=None if args.quiet else logger.info)
    _print_json(
        {
            "out": args.out,
            "report": str(Path(args.out) / "report.html"),
            "groups": summary["meta"]["groups"],
            "timings": summary["meta"]["timings"],
        }
    )
    return 0


def cmd_guard_fit(args: argparse.Namespace) -> int:
    from latentguard.guard.fit import GuardConfig, fit_guard

    harmful = _instructions(args.harmful, args.limit)
    harmless = _instructions(args.harmless, args.limit)
    lookalikes = _instructions(args.lookalikes, args.limit) if args.lookalikes else []
    lm = _load_model(args)
    layers = tuple(int(x) for x in args.layers.split(",")) if args.layers else None
    cfg = GuardConfig(
        method=args.method,
        layers=layers,
        position=args.position,
        target_fpr=args.target_fpr,
        seed=args.seed,
        progress=not args.quiet,
        wrap_templates=args.wrap_templates,
        suffix_prompts=args.suffix_prompts,
        probe_window=args.probe_window,
        lookalike_weight=args.lookalike_weight,
    )
    guard = fit_guard(lm, harmful, harmless, cfg, lookalikes=lookalikes)
    path = guard.save(args.out)
    _print_json({"out": str(path), **guard.summary()})
    return 0


def _load_guard(args: argparse.Namespace) -> tuple[Any, Any]:
    from latentguard.guard.fit import LatentGuard

    _guard_model(args)
    lm = _load_model(args)
    return lm, LatentGuard.load(args.guard, lm)


def _guard_model(args: argparse.Namespace) -> None:
    """Fill in ``args.model`` from the guard's JSON when ``--model`` was not given."""
    import json as _json

    meta_path = Path(args.guard)
    meta_file = meta_path if meta_path.suffix == ".json" else meta_path.with_suffix(".json")
    if meta_path.is_dir():
        meta_file = meta_path / "guard.json"
    if args.model is None:
        try:
            args.model = _json.loads(meta_file.read_text(encoding="utf-8")).get("model") or "organism"
        except (OSError, ValueError):
            args.model = "organism"


def cmd_guard_check(args: argparse.Namespace) -> int:
    from latentguard.guard.score import GuardResult, check

    engine = _engine(args)

    def run(prompts: list[str], batch_size: int = 16) -> list[GuardResult]:
        if engine is None:
            lm, guard = _load_guard(args)
            return check(lm, guard, prompts, batch_size=batch_size)
        from latentguard import ray_engine

        _guard_model(args)
        return ray_engine.check(_model_ref(args), args.guard, prompts, engine, batch_size=batch_size)

    if args.prompt is not None:
        res = run([args.prompt])[0]
        _print_json({"harmful": res.harmful, "score": res.score, "layer_scores": res.layer_scores})
        return 0
    if not (args.data and args.out):
        raise ValueError("give --prompt TEXT, or --data FILE and --out FILE")
    from latentguard.data import load_any

    examples = load_any(args.data)
    results = run([e.instruction for e in examples], batch_size=args.batch_size)
    rows = [
        {
            **e.meta,
            "instruction": e.instruction,
            "harmful": r.harmful,
            "score": r.score,
            "layer_scores": r.layer_scores,
        }
        for e, r in zip(examples, results, strict=True)
    ]
    _write_jsonl(args.out, rows)
    _print_json({"out": args.out, "n": len(rows), "flagged": sum(r["harmful"] for r in rows)})
    return 0


def _repair_direction(lm: Any, args: argparse.Namespace) -> Any:
    if not getattr(args, "refusal_direction", None):
        return None
    from latentguard.directions import Directions

    return Directions.load(args.refusal_direction, expect_fingerprint=lm.fingerprint)


def cmd_guard_chat(args: argparse.Namespace) -> int:
    from latentguard.guard.guarded import guarded_generate
    from latentguard.judge import load_judge

    lm, guard = _load_guard(args)
    direction = _repair_direction(lm, args)
    judge = load_judge() if direction is not None else None
    prompts = [args.prompt] if args.prompt else None
    while True:
        if prompts is None:
            try:
                line = input("you> ")
            except EOFError:
                return 0
            if not line.strip():
                continue
            batch = [line]
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
        )[0]
        _print_json(
            {
                "harmful": reply.harmful,
                "score": reply.score,
                "blocked": reply.blocked,
                "flagged": reply.flagged,
                "response": reply.response,
                "refused": reply.refused,
                "repaired_response": reply.repaired_response,
            }
        )
        if prompts is not None:
            return 0


def cmd_guard_eval(args: argparse.Namespace) -> int:
    from latentguard.activations import _atomic_write_text
    from latentguard.experiments.guard_eval.config import EvalConfig
    from latentguard.experiments.guard_eval.format import (
        format_comparison,
        format_lookalike_comparison,
        format_repair,
        format_seed_spread,
        format_table,
    )
    from latentguard.experiments.guard_eval.run import evaluate_guards
    from latentguard.judge import load_judge
    from latentguard.models import load

    lm = _load_model(args)
    attacked = load(args.attacked) if args.attacked else None
    cfg = EvalConfig(
        quick=args.quick,
        seed=args.seed,
        use_shared=not args.builtin_only,
        method=args.method,
        seeds=args.seeds,
        n_gcg=args.gcg,
        n_train_suffixed=args.train_suffixed,
        lookalike_weight=args.lookalike_weight,
        gcg_steps=args.gcg_steps,
    )
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
    _atomic_write_text(out / "guard_eval.json", json.dumps(table, indent=1))
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
    if "after_attack" in table:
        text += "\n\nAfter the finetuning attack:\n\n" + format_table(table["after_attack"])
    if "repair" in table:
        text += (
            "\n\nOver-refusal repair (Latent Guard says harmless + the answer is a refusal -> answer again "
        )
        text += "with the refusal direction ablated):\n\n" + format_repair(table["repair"])
    _atomic_write_text(out / "guard_eval.md", text + "\n")
    sys.stdout.write(text + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from latentguard.guard.guarded import LatentGuardBackend
    from latentguard.guard.serve import ServeConfig, read_token_file, run
    from latentguard.judge import load_judge

    lm, guard = _load_guard(args)
    token = read_token_file(args.token_file) if args.token_file else None
    direction = _repair_direction(lm, args)
    backend = LatentGuardBackend(
        lm,
        guard,
        judge=load_judge() if direction is not None else None,
        repair=direction is not None,
        refusal_direction=direction,
    )
    run(backend, ServeConfig(host=args.host, port=args.port, token=token))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="latentguard",
        description="Separate what a chat LLM believes is harmful from what it refuses; guard with the belief.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("positions", help="print t_inst / t_post_inst of a prompt as JSON")
    p.add_argument("--model", default="default")
    p.add_argument("--chat-template", default=None)
    p.add_argument("--system", default=None)
    p.add_argument("--prompt", required=True)
    p.add_argument("--question", default=None, help="appended question (reply-inversion form)")
    p.set_defaults(func=cmd_positions)

    p = sub.add_parser(
        "extract", help="hidden states at named positions -> activations.safetensors + meta.json"
    )
    _add_model_args(p)
    p.add_argument("--data", required=True, help="JSONL/CSV file, builtin:NAME, shared:NAME or hf:NAME")
    p.add_argument("--out", required=True)
    p.add_argument("--positions", default="t_inst,t_post_inst")
    p.add_argument("--layers", default=None, help="comma-separated hidden-state indices (default all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--chunk-size", type=int, default=128, help="prompts per cached chunk (the Ray engine's unit of work)"
    )
    p.add_argument("--padding-side", choices=("left", "right"), default="left")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--no-cache", action="store_true")
    _add_engine_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("directions", help="harmfulness and refusal directions per layer, and their cosine")
    _add_model_args(p)
    p.add_argument("--harmful", default="builtin:harmful")
    p.add_argument("--harmless", default="builtin:harmless")
    p.add_argument("--refused", default=None, help="instructions the model refused")
    p.add_argument("--accepted", default=None, help="instructions the model accepted")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=cmd_directions)

    p = sub.add_parser("generate", help="batched greedy generation + refusal judgement -> JSONL")
    _add_model_args(p)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--judge", default="learned", choices=("learned", "substring"))
    p.add_argument("--limit", type=int, default=None)
    _add_engine_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("judge", help="add refused/score to rows with a 'response' field")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--judge", default="learned", choices=("learned", "substring"))
    _add_engine_args(p)
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("label", help="behaviour groups: refused/accepted x harmful/harmless")
    _add_model_args(p)
    p.add_argument("--harmful", default="builtin:harmful")
    p.add_argument("--harmless", default="builtin:harmless")
    p.add_argument("--out", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--judge", default="learned", choices=("learned", "substring"))
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("align", help="safety-tune a model with LoRA (the model organism)")
    p.add_argument("--model", default="default")
    p.add_argument("--out", required=True)
    p.add_argument("--harmful", default=None, help="extra harmful instructions (trained to refusals)")
    p.add_argument("--harmless", default=None, help="extra harmless instructions (trained to own answers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=None, help="default: AlignConfig's")
    p.add_argument("--lr", type=float, default=None, help="default: AlignConfig's")
    p.add_argument("--lora-r", type=int, default=None, help="default: AlignConfig's")
    p.add_argument(
        "--frozen-fraction", type=float, default=None, help="lowest fraction of blocks without adapters"
    )
    p.add_argument(
        "--bf16", action=argparse.BooleanOptionalAction, default=None, help="bfloat16 autocast training"
    )
    p.add_argument("--builtin-only", action="store_true", help="do not add ../shared/data training rows")
    p.add_argument("--no-eval", action="store_true", help="skip held-out refusal rates")
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("attack", help="finetuning attack: LoRA steps towards compliant answers")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--harmful", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=24)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("run", help="the whole study: summary.json, figures, report.html")
    p.add_argument("--model", default="organism")
    p.add_argument("--out", default="runs/study")
    p.add_argument("--quick", action="store_true", help="small sets, coarse sweeps (CI)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--coefficient", type=float, default=1.0)
    p.add_argument("--builtin-only", action="store_true")
    p.add_argument("--no-attack", action="store_true")
    p.add_argument(
        "--guard-eval", default=None, help="guard_eval.json from `guard eval` to include in the report"
    )
    p.set_defaults(func=cmd_run)

    guard = sub.add_parser("guard", help="Latent Guard: fit, check, chat, eval").add_subparsers(
        dest="guard_command", required=True
    )
    p = guard.add_parser("fit", help="fit a guard from the model's own t_inst hidden states")
    _add_model_args(p)
    p.add_argument("--harmful", default="builtin:harmful")
    p.add_argument("--harmless", default="builtin:harmless")
    p.add_argument("--out", required=True)
    p.add_argument("--method", choices=("auto", "centroid", "probe"), default="auto")
    p.add_argument("--layers", default=None, help="candidate layers (default all)")
    p.add_argument("--position", default="t_inst")
    p.add_argument("--target-fpr", type=float, default=0.05)
    p.add_argument(
        "--probe-window",
        type=int,
        default=5,
        help="probe: average per-layer probe logits over this many adjacent layers (1 = one layer)",
    )
    p.add_argument(
        "--wrap-templates",
        type=int,
        default=0,
        help="also train on N prompts per class wrapped in jailbreak templates (recommended: 160)",
    )
    p.add_argument(
        "--suffix-prompts",
        type=int,
        default=0,
        help="also train on N prompts per class followed by random-token suffixes (against GCG suffixes; "
        "they train the guard but do not set its threshold)",
    )
    p.add_argument(
        "--lookalikes",
        default=None,
        help="more harmless prompts that only look unsafe, weighted in training (e.g. builtin:xstest_like)",
    )
    p.add_argument(
        "--lookalike-weight", type=float, default=3.0, help="training weight of the --lookalikes prompts"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=cmd_guard_fit)

    def guard_model_args(p: argparse.ArgumentParser) -> None:
        _add_model_args(p)
        p.set_defaults(model=None)
        p.add_argument("--guard", required=True, help="guard artifact (from guard fit)")

    p = guard.add_parser("check", help="classify prompts with a guard")
    guard_model_args(p)
    p.add_argument("--prompt", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    _add_engine_args(p)
    p.set_defaults(func=cmd_guard_check)

    p = guard.add_parser("chat", help="guarded generation (interactive without --prompt)")
    guard_model_args(p)
    p.add_argument("--prompt", default=None)
    p.add_argument("--policy", choices=("block", "flag", "allow"), default="block")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--refusal-direction", default=None, help="enables over-refusal repair")
    p.set_defaults(func=cmd_guard_chat)

    p = guard.add_parser("eval", help="compare Latent Guard with other guards (paper Table 1 style)")
    _add_model_args(p)
    p.set_defaults(model="organism")
    p.add_argument(
        "--attacked", default=None, help="attacked model (e.g. 'attacked') for the robustness rows"
    )
    p.add_argument("--out", default="runs/guard-eval")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--method", choices=("auto", "centroid", "probe"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds",
        type=int,
        default=5,
        help="refit both activation guards with this many split seeds and report the spread (1 = off)",
    )
    p.add_argument(
        "--gcg", type=int, default=8, help="harmful test prompts attacked with GCG suffixes (0: none)"
    )
    p.add_argument("--gcg-steps", type=int, default=20, help="GCG steps per prompt (results are cached)")
    p.add_argument(
        "--train-suffixed",
        type=int,
        default=60,
        help="training prompts per class also given random-token suffixes (against GCG suffixes; "
        "they train the activation guards but do not set their thresholds)",
    )
    p.add_argument(
        "--lookalike-weight",
        type=float,
        default=3.0,
        help="training weight of the harmless lookalikes (XSTest-style prompts) in the activation guards",
    )
    p.add_argument("--builtin-only", action="store_true")
    p.set_defaults(func=cmd_guard_eval)

    p = sub.add_parser("serve", help="serve a guard over HTTP (FastAPI + uvicorn)")
    guard_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token-file", default=None, help="file holding the bearer token")
    p.add_argument("--refusal-direction", default=None, help="enables over-refusal repair")
    p.set_defaults(func=cmd_serve)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``latentguard`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from latentguard.activations import ArtifactError
    from latentguard.data import DataError
    from latentguard.models import ModelLoadError, NoChatTemplateError
    from latentguard.positions import PositionError
    from latentguard.ray_engine import RayEngineError

    handler: Handler = args.func
    try:
        return handler(args)
    except (
        DataError,
        ModelLoadError,
        NoChatTemplateError,
        PositionError,
        ArtifactError,
        FileNotFoundError,
        RayEngineError,
    ) as exc:
        logger.error("%s", exc)
        sys.stderr.write(f"latentguard: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
