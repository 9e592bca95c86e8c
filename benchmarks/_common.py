"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def shared_instructions(name: str, limit: int) -> list[str] | None:
    """Instructions from ../shared/data/NAME.jsonl, or None when the folder is absent."""
    path = SHARED / f"{name}.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["instruction"] for r in rows][:limit]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def emit(line: str) -> None:
    """Print one result line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
