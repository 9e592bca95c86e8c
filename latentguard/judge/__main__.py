"""Command line of the refusal judges: ``python -m latentguard.judge {train,judge} ...``.

* ``train`` -- train the learned judge's head (:func:`latentguard.judge.training.train_learned_judge`)
  and write its metrics as JSON to stdout.
* ``judge`` -- judge responses, one per line, from a file or stdin; one JSON line per response.

Example::

    python -m latentguard.judge train --data ../shared/data/judge_gptfuzz_train.jsonl \\
        --questions ../shared/data/judge_gptfuzz_questions.jsonl --out latentguard/data/judge
    echo "I'm sorry, I can't." | python -m latentguard.judge judge --judge substring
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from latentguard.judge.factory import load_judge
from latentguard.judge.training import BENIGN_DEFAULT_NAME, train_learned_judge

__all__ = ["build_parser", "main"]

logger = logging.getLogger("latentguard.judge")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m latentguard.judge``."""
    parser = argparse.ArgumentParser(prog="python -m latentguard.judge", description="Refusal judges.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the learned judge's head")
    t.add_argument("--data", type=Path, required=True, help="labelled responses (JSON Lines)")
    t.add_argument("--questions", type=Path, default=None, help="questions (JSON Lines with index, question)")
    t.add_argument("--out", type=Path, required=True, help="output folder for head.safetensors + head.json")
    t.add_argument(
        "--benign",
        default="auto",
        help=f"benign non-refusal texts (JSON Lines); 'auto': {BENIGN_DEFAULT_NAME} next to --data if present; 'none'",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.2)
    t.add_argument("--feature-cache", type=Path, default=None, help="optional .npz caching encoder features")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    j = sub.add_parser("judge", help="judge responses, one per line, from a file or stdin")
    j.add_argument("file", nargs="?", type=Path, default=None)
    j.add_argument("--judge", default="learned", help="learned, substring or remote")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status (0).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "train":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        benign: Path | None = None
        if args.benign == "auto":
            candidate = args.data.parent / BENIGN_DEFAULT_NAME
            benign = candidate if candidate.is_file() else None
            logger.info("benign texts: %s", benign or f"none ({candidate} not found)")
        elif args.benign.lower() != "none":
            benign = Path(args.benign)
        argv_used = list(argv) if argv is not None else sys.argv[1:]
        cmd = "python -m latentguard.judge " + " ".join(shlex.quote(a) for a in argv_used)
        metrics = train_learned_judge(
            args.data,
            args.questions,
            args.out,
            seed=args.seed,
            val_fraction=args.val_fraction,
            benign_path=benign,
            feature_cache=args.feature_cache,
            command=cmd,
        )
        sys.stdout.write(json.dumps(metrics, indent=2) + "\n")
        return 0
    lines = (args.file.read_text(encoding="utf-8") if args.file else sys.stdin.read()).splitlines()
    for v in load_judge(args.judge).judge(lines):
        sys.stdout.write(json.dumps({"refused": v.refused, "score": round(v.score, 4)}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
