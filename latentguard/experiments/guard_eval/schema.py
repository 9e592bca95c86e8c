"""The typed schema of ``guard_eval.json`` (what ``latentguard guard eval`` writes).

The table the report and the claims read is typed; other keys may be present
(``extra="allow"``). Rows carry stable keys (:mod:`latentguard.experiments.guard_eval.rows`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class Row(_Section):
    """One guard's row: a stable key, a display name, one value (or ``None``) per column."""

    key: str
    name: str
    values: list[float | str | None]


class Table(_Section):
    """Columns and rows; every row has one value per column."""

    columns: list[str]
    rows: list[Row]

    @model_validator(mode="after")
    def _widths(self) -> Table:
        for row in self.rows:
            if len(row.values) != len(self.columns):
                raise ValueError(
                    f"row {row.key!r} has {len(row.values)} values for {len(self.columns)} columns"
                )
        return self


class GuardEval(Table):
    """The whole ``guard_eval.json``."""

    config: dict[str, Any]
    data: dict[str, Any]
    after_attack: Table | None = None


def validate_guard_eval(data: Mapping[str, Any]) -> GuardEval:
    """Validate a parsed ``guard_eval.json``.

    Raises:
        ValueError: With one line per failing field.
    """
    try:
        return GuardEval.model_validate(dict(data))
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ValueError("guard_eval.json does not match the schema:\n" + "\n".join(lines[:20])) from exc
