"""Stable machine keys of the guard-evaluation table's rows, and their display names.

Every row of ``guard_eval.json`` (the main table, ``after_attack`` and ``seed_spread``) stores its
``key`` next to its display ``name``; readers find rows by key (:func:`row_key`). Files written before
rows had keys are read through their display names, which have not changed.

Example:
    >>> row_key({"key": "latent_guard", "name": "anything"})
    'latent_guard'
    >>> row_key({"name": "model's own refusal"})
    'model_refusal'
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

LATENT_GUARD: Final = "latent_guard"
REFUSAL_DIRECTION_GUARD: Final = "refusal_direction_guard"
REFUSAL_BEHAVIOUR_GUARD: Final = "refusal_behaviour_guard"
MODEL_REFUSAL: Final = "model_refusal"
SELF_CHECK: Final = "self_check"
TEXT_CLASSIFIER: Final = "text_classifier"
ATTACKED_ORIGINAL_GUARD: Final = "latent_guard_original_on_attacked"
ATTACKED_REFITTED_GUARD: Final = "latent_guard_refitted_on_attacked"
ATTACKED_MODEL_REFUSAL: Final = "attacked_model_refusal"
SMALL_DATA_GUARD: Final = "latent_guard_small_data"
NORMALISED_GUARD: Final = "latent_guard_normalised"

#: Display name of each row key (the names the table has always shown).
ROW_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        LATENT_GUARD: "Latent Guard (t_inst)",
        REFUSAL_DIRECTION_GUARD: "refusal-direction guard (t_post_inst)",
        REFUSAL_BEHAVIOUR_GUARD: "refusal-direction guard, refused vs accepted labels (t_post_inst)",
        MODEL_REFUSAL: "model's own refusal",
        SELF_CHECK: "self-check (reply inversion)",
        TEXT_CLASSIFIER: "text classifier (MiniLM + LR)",
        ATTACKED_ORIGINAL_GUARD: "Latent Guard, original fit, on attacked model",
        ATTACKED_REFITTED_GUARD: "Latent Guard, refitted on attacked model",
        ATTACKED_MODEL_REFUSAL: "attacked model's own refusal",
        SMALL_DATA_GUARD: "Latent Guard, guard fit defaults on 200 AdvBench + 200 Alpaca (small data)",
        NORMALISED_GUARD: "Latent Guard (t_inst), input normalised",
    }
)

#: Row key of each display name, for ``guard_eval.json`` files written before rows had keys.
KEYS_BY_NAME: Final[Mapping[str, str]] = MappingProxyType({name: key for key, name in ROW_NAMES.items()})


def row_key(row: Mapping[str, Any]) -> str | None:
    """The machine key of a table row: its ``key``, else the key of its display name.

    Args:
        row: A row of ``guard_eval.json``.

    Returns:
        The key, or ``None`` for a row with neither a key nor a known name.
    """
    key = row.get("key")
    if isinstance(key, str) and key:
        return key
    return KEYS_BY_NAME.get(str(row.get("name", "")))


def find_row(rows: Any, key: str) -> Mapping[str, Any] | None:
    """The first row of ``rows`` whose :func:`row_key` is ``key``.

    Args:
        rows: The rows of a table (non-mapping entries are skipped).
        key: A row key, e.g. :data:`LATENT_GUARD`.

    Returns:
        The row, or ``None``.
    """
    return next((r for r in rows or () if isinstance(r, Mapping) and row_key(r) == key), None)
