"""What every refusal judge shares: the verdict type, the :class:`Judge` protocol, batch checks.

Example:
    >>> check_batch(["I can't.", "Sure."], ["q1", "q2"])
    ["I can't.", 'Sure.']
    >>> normalise("I CAN\u2019T")
    "i can't"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Judge", "Judgement", "check_batch", "normalise"]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\uff07": "'", "\u00b4": "'"})


@dataclass(frozen=True)
class Judgement:
    """The verdict on one response.

    Attributes:
        refused: Whether the response is judged a refusal.
        score: Probability-like score in ``[0, 1]`` that the response is a refusal.
    """

    refused: bool
    score: float


@runtime_checkable
class Judge(Protocol):
    """Anything that decides, for a batch of responses, whether each one refused."""

    name: str

    def judge(self, responses: Sequence[str], instructions: Sequence[str] | None = None) -> list[Judgement]:
        """Judge a batch of responses.

        Args:
            responses: The model's responses.
            instructions: The instructions that produced them (same length), when known.

        Returns:
            One :class:`Judgement` per response, in order.
        """
        ...


def normalise(text: str) -> str:
    """Lower-case ``text`` and fold typographic apostrophes (’ ‘ ʼ ＇ ´) to ``'``.

    Args:
        text: Any text.

    Returns:
        The folded, lower-cased text.
    """
    return text.translate(_APOSTROPHES).lower()


def check_batch(responses: Sequence[str], instructions: Sequence[str] | None) -> list[str]:
    """Validate a batch and return the responses as a list.

    Args:
        responses: The responses to judge.
        instructions: Their instructions, or ``None``.

    Returns:
        ``responses`` as a list.

    Raises:
        TypeError: If ``responses`` (or ``instructions``) is a single string rather than a sequence
            of strings.
        ValueError: If ``instructions`` is given with a different length.
    """
    if isinstance(responses, str):
        raise TypeError("responses must be a sequence of strings, not a single string")
    out = list(responses)
    if instructions is not None:
        if isinstance(instructions, str):
            raise TypeError("instructions must be a sequence of strings, not a single string")
        if len(instructions) != len(out):
            raise ValueError(f"got {len(out)} responses but {len(instructions)} instructions")
    return out
