"""Writing recorded decisions to a JSON Lines or CSV file (``latentguard audit export``)."""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime
from pathlib import Path

from latentguard.audit.query import COLUMNS, select_rows
from latentguard.audit.store import AuditStore

__all__ = ["export"]


def export(
    store: AuditStore,
    out: str | os.PathLike[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    flagged: bool = False,
) -> int:
    """Write decisions, oldest first, as JSON Lines (``.jsonl``) or CSV (``.csv``, with a header).

    The file is written under a temporary name and renamed when complete.

    Args:
        store: The audit database.
        out: The output path; its suffix picks the format.
        since: Only decisions at or after this time.
        until: Only decisions before this time.
        flagged: Only decisions judged harmful.

    Returns:
        How many decisions were written.

    Raises:
        ValueError: If the suffix is neither ``.jsonl`` nor ``.csv``.
    """
    path = Path(out)
    kind = path.suffix.lower()
    if kind not in (".jsonl", ".csv"):
        raise ValueError(f"export to a .jsonl or .csv file, not {path.name!r}")
    rows = select_rows(store, since=since, until=until, flagged=flagged)
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        if kind == ".csv":
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
                n += 1
        else:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    os.replace(tmp, path)
    return n
