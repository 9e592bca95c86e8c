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


def _load_model(args: argparse.Namespace) -> Any:
    from latentguard.models import load

    return load(
        args.model,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        load_in_bits=args.load_in_bits,
        chat_template=args.chat_template,
        layers_path=args.layers_path,
    )


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
    lm = _load_model(args)
    cfg = ExtractConfig(
        positions=tuple(p.strip() for p in args.positions.split(",") if p.strip()),
        layers=tuple(int(x) for x in args.layers.split(",")) if args.layers else None,
        batch_size=args.batch_size,
        padding_side=args.padding_side,
        system=args.system,
        use_cache=not args.no_cache,
        progress=not args.quiet,
    )
    acts = extract(lm, insts, cfg)
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
    p.add_argument("--padding-side", choices=("left", "right"), default="left")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--no-cache", action="store_true")
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
    ) as exc:
        logger.error("%s", exc)
        sys.stderr.write(f"latentguard: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
