"""The ``latentguard`` entry point: global options, the command groups, and errors as one line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from latentguard.cli import audit_cmds, guard_cmds, model_cmds, study_cmds
from latentguard.cli.common import Handler

logger = logging.getLogger("latentguard")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="latentguard",
        description="Separate what a chat LLM believes is harmful from what it refuses; guard with the belief.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch CPU threads for this process (default: torch's, one per core)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    model_cmds.register(sub)
    study_cmds.register(sub)
    guard_cmds.register(sub)
    audit_cmds.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``latentguard`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)  # the entry point owns process state, not the library
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from latentguard.audit import AuditStoreError
    from latentguard.data import DataError
    from latentguard.io import ArtifactError
    from latentguard.models import ModelLoadError, NoChatTemplateError
    from latentguard.positions import PositionError
    from latentguard.ray_engine import RayEngineError

    handler: Handler = args.func
    try:
        return handler(args)
    except (
        AuditStoreError,
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
