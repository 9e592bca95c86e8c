"""How obfuscated prompts move the Latent Guard, with and without normalisation.

Fits a guard on the organism (default ``guard fit`` options) from ``../shared/data`` training sets
(AdvBench + Alpaca train), then checks unseen harmful (HarmBench test) and everyday (Alpaca val)
prompts, plain and obfuscated (letter spacing, zero-width characters, fullwidth forms,
homoglyphs; and leetspeak and mixed case, which normalisation does not undo), with ``normalize=False`` and ``normalize=True``. Prints TPR / FPR per variant.

    python benchmarks/obfuscation.py [--n 100] [--train 300]
"""

from __future__ import annotations

import argparse

from _common import emit, shared_instructions

from latentguard.guard.fit import GuardConfig, fit_guard
from latentguard.guard.score import check, robustness_variants
from latentguard.models import load


def fullwidth(text: str) -> str:
    """ASCII letters and digits as their fullwidth forms (U+FF01..U+FF5E)."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


_LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})


def leetspeak(text: str) -> str:
    """Common letter-to-digit substitutions (normalisation does not undo these)."""
    return text.translate(_LEET)


def mixed_case(text: str) -> str:
    """Alternating upper and lower case letters (normalisation does not undo this)."""
    return "".join(c.upper() if k % 2 else c.lower() for k, c in enumerate(text))


def variants(text: str) -> dict[str, str]:
    """The plain prompt and its obfuscations."""
    return {
        "plain": text,
        **robustness_variants(text),
        "fullwidth": fullwidth(text),
        "leetspeak": leetspeak(text),
        "mixed_case": mixed_case(text),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100, help="test prompts per class")
    ap.add_argument("--train", type=int, default=300, help="training prompts per class")
    args = ap.parse_args()
    harm_train = shared_instructions("harmful_advbench", args.train)
    safe_train = shared_instructions("harmless_alpaca_train", args.train)
    harm_test = shared_instructions("harmful_harmbench_test", args.n)
    safe_test = shared_instructions("harmless_alpaca_val", args.n)
    if not (harm_train and safe_train and harm_test and safe_test):
        emit("needs ../shared/data")
        return
    lm = load("organism")
    guard = fit_guard(lm, harm_train, safe_train, GuardConfig())
    emit(f"guard: {guard.method} layers {guard.layers} (fitted on {args.train} + {args.train})")
    emit(f"{'variant':<12}{'TPR raw':>10}{'FPR raw':>10}{'TPR norm':>10}{'FPR norm':>10}")
    names = list(variants("x"))
    for name in names:
        h = [variants(t)[name] for t in harm_test]
        s = [variants(t)[name] for t in safe_test]
        row = []
        for norm in (False, True):
            tpr = sum(v.harmful for v in check(lm, guard, h, normalize=norm)) / len(h)
            fpr = sum(v.harmful for v in check(lm, guard, s, normalize=norm)) / len(s)
            row += [tpr, fpr]
        emit(f"{name:<12}" + "".join(f"{x:>10.1%}" for x in row))


if __name__ == "__main__":
    main()
