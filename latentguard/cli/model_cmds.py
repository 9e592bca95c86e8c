"""Commands on one model: ``positions``, ``extract``, ``directions``, ``generate``, ``judge``, ``label``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from latentguard.cli.common import (
    add_engine_args,
    add_messages_arg,
    add_model_args,
    engine_config,
    instructions,
    load_model,
    model_ref,
    print_json,
    prompt_arg,
    prompts,
    write_jsonl,
)

logger = logging.getLogger("latentguard")


def cmd_positions(args: argparse.Namespace) -> int:
    from latentguard.models import load_tokenizer
    from latentguard.positions import locate

    prompt = prompt_arg(args)
    if prompt is None:
        raise ValueError("give --prompt TEXT or --messages JSON")
    tok = load_tokenizer(args.model, chat_template=args.chat_template)
    pos = locate(tok, prompt, question=args.question, system=args.system)
    print_json(pos.to_json())
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from latentguard.activations import ExtractConfig, extract

    insts = prompts(args.data, args.limit)  # bad data fails before the model loads
    engine = engine_config(args)
    if engine is not None and not all(isinstance(p, str) for p in insts):
        raise ValueError("rows with 'messages' (conversations) need --engine local")
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
        acts = extract(load_model(args), insts, cfg)
    else:
        from latentguard import ray_engine

        acts = ray_engine.extract(model_ref(args), insts, cfg, engine)
    out = acts.save(args.out)
    print_json(
        {"out": str(out), "shape": list(acts.activations.shape), "from_cache": acts.meta["n_from_cache"]}
    )
    return 0


def cmd_directions(args: argparse.Namespace) -> int:
    from latentguard.activations import ExtractConfig, extract
    from latentguard.directions import cosine_per_layer, harmfulness_direction, refusal_direction

    groups = {
        k: instructions(v, args.limit)
        for k, v in {
            "harmful": args.harmful,
            "harmless": args.harmless,
            "refused": args.refused,
            "accepted": args.accepted,
        }.items()
        if v
    }
    lm = load_model(args)
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
    print_json(report)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from latentguard.data import load_any
    from latentguard.generation import GenerationConfig, generate
    from latentguard.judge import load_judge

    examples = load_any(args.data, limit=args.limit)
    engine = engine_config(args)
    insts = [e.instruction for e in examples]
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        system=args.system,
        progress=not args.quiet,
    )
    if engine is None:
        responses = generate(load_model(args), insts, cfg)
        verdicts = load_judge(args.judge).judge(responses, insts)
    else:
        from latentguard import ray_engine

        done = ray_engine.generate(model_ref(args), insts, cfg, engine, judge=args.judge)
        responses, verdicts = done.responses, done.verdicts or []
    rows = [
        {**e.meta, "instruction": e.instruction, "response": r, "refused": v.refused, "score": v.score}
        for e, r, v in zip(examples, responses, verdicts, strict=True)
    ]
    write_jsonl(args.out, rows)
    print_json({"out": args.out, "n": len(rows), "refusal_rate": sum(r["refused"] for r in rows) / len(rows)})
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from latentguard.data import read_jsonl_rows
    from latentguard.judge import load_judge

    rows = read_jsonl_rows(args.data, ["response"])
    engine = engine_config(args)
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
    write_jsonl(args.out, out)
    print_json(
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
    lm = load_model(args)
    groups = label(
        lm,
        harmful,
        harmless,
        judge=load_judge(args.judge),
        max_new_tokens=args.max_new_tokens,
        progress=not args.quiet,
    )
    groups.save(args.out)
    print_json({"out": args.out, "counts": groups.counts()})
    return 0


def register(sub: Any) -> None:
    """Add this group's subcommands to the top-level subparsers."""
    p = sub.add_parser("positions", help="print t_inst / t_post_inst of a prompt as JSON")
    p.add_argument("--model", default="default")
    p.add_argument("--chat-template", default=None)
    p.add_argument("--system", default=None)
    p.add_argument("--prompt", default=None)
    add_messages_arg(p)
    p.add_argument("--question", default=None, help="appended question (reply-inversion form)")
    p.set_defaults(func=cmd_positions)

    p = sub.add_parser(
        "extract", help="hidden states at named positions -> activations.safetensors + meta.json"
    )
    add_model_args(p)
    p.add_argument(
        "--data",
        required=True,
        help="JSONL/CSV file, builtin:NAME, shared:NAME or hf:NAME (rows: 'instruction' or 'messages')",
    )
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
    add_engine_args(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("directions", help="harmfulness and refusal directions per layer, and their cosine")
    add_model_args(p)
    p.add_argument("--harmful", default="builtin:harmful")
    p.add_argument("--harmless", default="builtin:harmless")
    p.add_argument("--refused", default=None, help="instructions the model refused")
    p.add_argument("--accepted", default=None, help="instructions the model accepted")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=cmd_directions)

    p = sub.add_parser("generate", help="batched greedy generation + refusal judgement -> JSONL")
    add_model_args(p)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--judge", default="learned", choices=("learned", "substring"))
    p.add_argument("--limit", type=int, default=None)
    add_engine_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("judge", help="add refused/score to rows with a 'response' field")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--judge", default="learned", choices=("learned", "substring"))
    add_engine_args(p)
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("label", help="behaviour groups: refused/accepted x harmful/harmless")
    add_model_args(p)
    p.add_argument("--harmful", default="builtin:harmful")
    p.add_argument("--harmless", default="builtin:harmless")
    p.add_argument("--out", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--judge", default="learned", choices=("learned", "substring"))
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(func=cmd_label)
