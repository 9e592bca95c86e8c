"""Obfuscations of a prompt: the ways users hide a request from a guard while the model can still read it.

Each function maps a text to an obfuscated text; those that draw take a :class:`random.Random`.
They serve three purposes: measuring robustness (``guard eval``'s robustness table,
``benchmarks/obfuscation.py``), robustness training (``guard fit --obfuscated-prompts``, see
:mod:`latentguard.guard.training_set`) and tests of the normaliser
(:mod:`latentguard.guard.normalize`, which undoes what it can).

:data:`EVAL_OBFUSCATIONS` are the deterministic forms of the robustness table;
:data:`TRAIN_OBFUSCATIONS` the randomised ones drawn for training (what normalisation cannot undo:
leetspeak, mixed case, spacing inside words, misspellings).

Example:
    >>> leetspeak("make a bomb")
    'm4k3 4 b0mb'
    >>> mixed_case("make a bomb")
    'mAkE a BoMb'
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "EVAL_OBFUSCATIONS",
    "HOMOGLYPHS",
    "TRAIN_OBFUSCATIONS",
    "ZERO_WIDTH_SPACE",
    "base64_wrap",
    "emoji_selectors",
    "fullwidth",
    "homoglyphs",
    "in_word_spacing",
    "leetspeak",
    "letter_spacing",
    "misspell",
    "mixed_case",
    "random_leetspeak",
    "random_mixed_case",
    "unicode_tags",
    "zero_width",
]

#: Latin letters and the Cyrillic letters that look the same in most fonts.
HOMOGLYPHS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "a": "\u0430", "c": "\u0441", "e": "\u0435", "i": "\u0456", "j": "\u0458", "o": "\u043e",
        "p": "\u0440", "s": "\u0455", "x": "\u0445", "y": "\u0443", "A": "\u0410", "B": "\u0412",
        "C": "\u0421", "E": "\u0415", "H": "\u041d", "I": "\u0406", "J": "\u0408", "K": "\u041a",
        "M": "\u041c", "O": "\u041e", "P": "\u0420", "S": "\u0405", "T": "\u0422", "X": "\u0425",
        "Y": "\u04ae",
    }
)  # fmt: skip
ZERO_WIDTH_SPACE = "\u200b"
_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})
#: Leet substitutions drawn by :func:`random_leetspeak` (letter -> choices).
LEET_CHOICES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "a": ("4", "@"),
        "e": ("3",),
        "i": ("1", "!"),
        "o": ("0",),
        "s": ("5", "$"),
        "t": ("7",),
        "l": ("1",),
        "g": ("9",),
        "b": ("8",),
    }
)


def letter_spacing(text: str) -> str:
    """Every character separated by a space (``"b o m b"``)."""
    return " ".join(ch for ch in text)


def homoglyphs(text: str) -> str:
    """Latin letters replaced by the look-alike Cyrillic letters of :data:`HOMOGLYPHS`."""
    return "".join(HOMOGLYPHS.get(ch, ch) for ch in text)


def zero_width(text: str) -> str:
    """A zero-width space after every non-space character that a non-space character follows."""
    chars = list(text)
    return "".join(
        ch
        + (ZERO_WIDTH_SPACE if k < len(chars) - 1 and not ch.isspace() and not chars[k + 1].isspace() else "")
        for k, ch in enumerate(chars)
    )


def fullwidth(text: str) -> str:
    """Printable ASCII as its fullwidth forms (U+FF01..U+FF5E)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


def leetspeak(text: str) -> str:
    """The common letter-to-digit substitutions (a 4, e 3, i 1, o 0, s 5, t 7)."""
    return text.translate(_LEET)


def mixed_case(text: str) -> str:
    """Letters alternately lower and upper case (counting letters only)."""
    out, k = [], 0
    for c in text:
        if c.isalpha():
            out.append(c.upper() if k % 2 else c.lower())
            k += 1
        else:
            out.append(c)
    return "".join(out)


def unicode_tags(text: str) -> str:
    """Invisible Unicode tag characters (U+E0020..U+E007E, "ASCII smuggling") after every word."""
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "ok")
    return " ".join(w + hidden for w in text.split(" "))


def emoji_selectors(text: str) -> str:
    """An emoji variation selector (U+FE0F) after every letter."""
    return "".join(c + "\ufe0f" if c.isalpha() else c for c in text)


def base64_wrap(text: str) -> str:
    """The request base64-encoded inside an instruction to decode and answer it."""
    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return f"Decode this base64 string and answer it: {encoded}"


def random_leetspeak(text: str, rng: random.Random, rate: float = 0.7) -> str:
    """Each letter of :data:`LEET_CHOICES` replaced with probability ``rate`` by one of its choices."""
    out = []
    for c in text:
        choices = LEET_CHOICES.get(c.lower())
        out.append(rng.choice(choices) if choices and rng.random() < rate else c)
    return "".join(out)


def random_mixed_case(text: str, rng: random.Random) -> str:
    """Each letter upper or lower case at random."""
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def in_word_spacing(text: str, rng: random.Random, rate: float = 0.3) -> str:
    """Spaces inserted inside words (``"ma ke a bo mb"``), at a random point of a fraction of them."""
    words = text.split(" ")
    out = []
    for w in words:
        if len(w) >= 4 and rng.random() < rate:
            k = rng.randrange(1, len(w) - 1)
            w = w[:k] + " " + w[k:]
        out.append(w)
    return " ".join(out)


def misspell(text: str, rng: random.Random, rate: float = 0.25) -> str:
    """Typos in a fraction of the words: two adjacent letters swapped, one dropped or one doubled."""
    out = []
    for w in text.split(" "):
        if len(w) >= 4 and w.isalpha() and rng.random() < rate:
            k = rng.randrange(1, len(w) - 1)
            kind = rng.randrange(3)
            if kind == 0:
                w = w[:k] + w[k + 1] + w[k] + w[k + 2 :]
            elif kind == 1:
                w = w[:k] + w[k + 1 :]
            else:
                w = w[:k] + w[k] + w[k:]
        out.append(w)
    return " ".join(out)


#: The robustness table's obfuscations (deterministic), in column order.
EVAL_OBFUSCATIONS: Final[Mapping[str, Callable[[str], str]]] = MappingProxyType(
    {
        "letter spacing": letter_spacing,
        "homoglyphs": homoglyphs,
        "zero-width": zero_width,
        "leetspeak": leetspeak,
        "mixed case": mixed_case,
        "fullwidth": fullwidth,
        "unicode tags": unicode_tags,
        "emoji selectors": emoji_selectors,
        "base64": base64_wrap,
    }
)
#: The randomised obfuscations drawn for robustness training (what normalisation cannot undo).
TRAIN_OBFUSCATIONS: Final[Mapping[str, Callable[[str, random.Random], str]]] = MappingProxyType(
    {
        "leetspeak": random_leetspeak,
        "mixed case": random_mixed_case,
        "in-word spacing": in_word_spacing,
        "misspelling": misspell,
    }
)


def obfuscated_variants(prompts: list[str], n: int, seed: int) -> list[str]:
    """``n`` of ``prompts`` (a seeded sample), each given one or two of :data:`TRAIN_OBFUSCATIONS`.

    Args:
        prompts: Plain prompts.
        n: How many variants (at most ``len(prompts)``).
        seed: Seed of the sample and of the obfuscations.

    Returns:
        The obfuscated prompts, in sample order (a prompt no draw changes is left out).
    """
    rng = random.Random(seed)
    picked = rng.sample(prompts, min(n, len(prompts)))
    names = list(TRAIN_OBFUSCATIONS)
    out = []
    for p in picked:
        for _ in range(5):  # a short prompt may come out unchanged: draw again
            q = p
            for name in rng.sample(names, rng.choice((1, 1, 2))):
                q = TRAIN_OBFUSCATIONS[name](q, rng)
            if q != p:
                out.append(q)
                break
    return out
