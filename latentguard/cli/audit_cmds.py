"""``latentguard audit export|stats|prune``: the server's decisions on record (``serve --audit-db``)."""

from __future__ import annotations

import argparse
from typing import Any

from latentguard.cli.common import print_json


def _time(text: str) -> Any:
    from latentguard.audit import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> Any:
    from latentguard.audit import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _out_file(text: str) -> str:
    if not text.lower().endswith((".jsonl", ".csv")):
        raise argparse.ArgumentTypeError(f"export to a .jsonl or .csv file, not {text!r}")
    return text


def _open(args: argparse.Namespace) -> Any:
    from latentguard.audit import open_store

    return open_store(args.db, create=False)


def cmd_audit_export(args: argparse.Namespace) -> int:
    from latentguard.audit import export

    store = _open(args)
    try:
        n = export(store, args.out, since=args.since, until=args.until, flagged=args.flagged)
    finally:
        store.close()
    print_json({"out": args.out, "decisions": n})
    return 0


def cmd_audit_stats(args: argparse.Namespace) -> int:
    from latentguard.audit import stats

    store = _open(args)
    try:
        out = stats(store, since=args.since)
    finally:
        store.close()
    print_json(out)
    return 0


def cmd_audit_prune(args: argparse.Namespace) -> int:
    from latentguard.audit import prune

    store = _open(args)
    try:
        deleted = prune(store, args.older_than)
    finally:
        store.close()
    print_json({"deleted": deleted, "older_than_s": args.older_than.total_seconds()})
    return 0


def add_audit_server_args(p: argparse.ArgumentParser) -> None:
    """The ``serve`` options of the audit log."""
    p.add_argument(
        "--audit-db",
        default=None,
        metavar="URL",
        help="record every decision in this database before answering: sqlite:///path/audit.db (WAL) or "
        "postgresql://user@host/db",
    )
    p.add_argument(
        "--audit-store-text",
        action="store_true",
        help="also store the prompt text (default: only its SHA-256)",
    )
    p.add_argument(
        "--audit-failure",
        choices=("closed", "open"),
        default="closed",
        help="if the audit database fails while serving: 'closed' answers 503 (default), 'open' answers "
        "and logs the decision as lost",
    )


def register(sub: Any) -> None:
    """Add ``audit`` (export, stats, prune) to the top-level subparsers."""
    audit = sub.add_parser("audit", help="the guard server's audit log: export, stats, prune").add_subparsers(
        dest="audit_command", required=True
    )
    when = "ISO 8601 time (UTC unless an offset is given) or a duration ago (24h, 7d)"
    p = audit.add_parser("export", help="write recorded decisions to a .jsonl or .csv file")
    p.add_argument("--db", required=True, metavar="URL", help="the audit database (as serve --audit-db)")
    p.add_argument("--out", required=True, type=_out_file, help="output file: .jsonl or .csv")
    p.add_argument("--since", type=_time, default=None, help=f"only decisions at or after this {when}")
    p.add_argument("--until", type=_time, default=None, help=f"only decisions before this {when}")
    p.add_argument("--flagged", action="store_true", help="only decisions judged harmful")
    p.set_defaults(func=cmd_audit_export)

    p = audit.add_parser(
        "stats", help="counts, flag rate per hour, score quantiles, near-threshold counts (JSON)"
    )
    p.add_argument("--db", required=True, metavar="URL")
    p.add_argument("--since", type=_time, default=None, help=f"only decisions at or after this {when}")
    p.set_defaults(func=cmd_audit_stats)

    p = audit.add_parser("prune", help="delete decisions older than a duration")
    p.add_argument("--db", required=True, metavar="URL")
    p.add_argument("--older-than", type=_duration, required=True, help="e.g. 30d, 12h, 2w")
    p.set_defaults(func=cmd_audit_prune)
