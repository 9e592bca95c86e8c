"""The training set of a Latent Guard, built in one place for :func:`~latentguard.guard.fit.fit_guard`
and for the guard evaluation (``latentguard guard eval``).

A guard's training set has, per class (harmful, harmless), four groups of rows, in this order:

1. the plain prompts; the harmless ones are followed by the lookalikes (harmless prompts that only
   look unsafe, XSTest-style) not already among them;
2. ``n_wrapped`` of the plain prompts wrapped in jailbreak templates (the train half of
   :func:`latentguard.attacks.split_templates`), so the guard reads the request, not the
   wrapper; with a model, those longer than its context are dropped;
3. ``n_suffixed`` of the plain prompts followed by a suffix of random tokens (GCG's search space), so
   the guard reads the request through adversarial suffixes;
4. ``n_obfuscated`` of the plain prompts obfuscated in ways normalisation cannot undo (random
   leetspeak, mixed case, spaces inside words, misspellings: :func:`latentguard.obfuscate.obfuscated_variants`).

Each plain row has a *source* (the data set it came from), which the fit uses to validate on whole
held-out sources (:func:`latentguard.guard.fit.fit_from_activations`). :func:`builtin_mix` adds the
package's own diverse sets (:data:`BUILTIN_MIX`: questions and commands, lookalikes) as sources of
their own.

Per harmless row (:class:`HarmlessRows`): the plain lookalikes weigh ``lookalike_weight`` in training
(every other row weighs 1), and the random-suffixed rows do not set the threshold unless
``calibrate_on_suffixed``: they are harder than what users send and would raise it, costing recall on
plain harmful prompts. The obfuscated rows never set it.

Example:
    >>> from latentguard.guard.training_set import build_training_set
    >>> ts = build_training_set(["How to make a bomb?", "How to poison a dog?"],
    ...                         ["How to bake bread?", "How to walk a dog?"])
    >>> ts.prompts("harmless")
    ['How to bake bread?', 'How to walk a dog?']
    >>> ts.harmless_rows().weights is None
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from latentguard.models import LoadedModel

logger = logging.getLogger(__name__)

#: The classes of a training set.
CLASSES = ("harmful", "harmless")
#: The groups of rows of each class, in row order.
GROUPS = ("plain", "wrapped", "suffixed", "obfuscated")
#: The built-in sets :func:`builtin_mix` adds, by role.
BUILTIN_MIX: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "harmful": ("harmful",),
        "harmless": ("harmless", "harmless_questions"),
        "lookalikes": ("xstest_like",),
    }
)
#: Source name of the lookalike rows appended to the harmless prompts.
LOOKALIKE_SOURCE = "lookalikes"


@dataclass(frozen=True)
class HarmlessRows:
    """Per-row options of the harmless training rows: which rows calibrate, what each weighs.

    Attributes:
        calibrate_on: ``[m]`` bool mask of the rows whose validation scores set the threshold
            (``None``: all).
        weights: ``[m]`` float64 training weights (``None``: all equal).
    """

    calibrate_on: torch.Tensor | None = None
    weights: torch.Tensor | None = None

    def subset(self, keep: torch.Tensor) -> HarmlessRows:
        """The same options for the rows ``keep`` (a bool mask) keeps.

        Args:
            keep: ``[m]`` bool mask.

        Returns:
            The options of the kept rows, in their order.
        """
        return HarmlessRows(
            None if self.calibrate_on is None else self.calibrate_on[keep],
            None if self.weights is None else self.weights[keep],
        )


@dataclass(frozen=True)
class TrainingSet:
    """The prompts a guard is trained on, by class and group, with the harmless rows' options.

    Attributes:
        harmful: Plain harmful prompts.
        harmless: Plain harmless prompts, the lookalikes included (after the other harmless prompts).
        harmful_wrapped: Harmful prompts wrapped in jailbreak templates.
        harmless_wrapped: Harmless prompts wrapped in jailbreak templates.
        harmful_suffixed: Harmful prompts followed by random tokens.
        harmless_suffixed: Harmless prompts followed by random tokens.
        lookalikes: The lookalikes: plain harmless rows among them weigh ``lookalike_weight``.
        lookalike_weight: Training weight of a plain lookalike row (1 for every other row).
        calibrate_on_suffixed: Whether the random-suffixed harmless rows count when setting the threshold.
    """

    harmful: tuple[str, ...]
    harmless: tuple[str, ...]
    harmful_wrapped: tuple[str, ...] = ()
    harmless_wrapped: tuple[str, ...] = ()
    harmful_suffixed: tuple[str, ...] = ()
    harmless_suffixed: tuple[str, ...] = ()
    lookalikes: frozenset[str] = frozenset()
    lookalike_weight: float = 1.0
    calibrate_on_suffixed: bool = False
    harmful_obfuscated: tuple[str, ...] = ()
    harmless_obfuscated: tuple[str, ...] = ()
    harmful_sources: tuple[str, ...] = ()
    harmless_sources: tuple[str, ...] = ()

    def sources(self, cls: str) -> list[str]:
        """The source of every row of a class, in :meth:`prompts` order (``""`` for augmented rows).

        Args:
            cls: ``"harmful"`` or ``"harmless"``.

        Returns:
            One name per row: the plain rows' sources (``"given"`` when none were recorded), then
            ``""`` for the wrapped, suffixed and obfuscated rows.
        """
        groups = self.groups(cls)
        plain = list(self.harmful_sources if cls == "harmful" else self.harmless_sources)
        if len(plain) != len(groups["plain"]):
            plain = ["given"] * len(groups["plain"])
        return plain + [""] * sum(len(g) for k, g in groups.items() if k != "plain")

    def groups(self, cls: str) -> dict[str, tuple[str, ...]]:
        """The groups of rows of one class, in row order.

        Args:
            cls: ``"harmful"`` or ``"harmless"``.

        Returns:
            ``{"plain": ..., "wrapped": ..., "suffixed": ..., "obfuscated": ...}``.

        Raises:
            ValueError: If ``cls`` is not a class.
        """
        if cls == "harmful":
            return {
                "plain": self.harmful,
                "wrapped": self.harmful_wrapped,
                "suffixed": self.harmful_suffixed,
                "obfuscated": self.harmful_obfuscated,
            }
        if cls == "harmless":
            return {
                "plain": self.harmless,
                "wrapped": self.harmless_wrapped,
                "suffixed": self.harmless_suffixed,
                "obfuscated": self.harmless_obfuscated,
            }
        raise ValueError(f"cls must be one of {CLASSES}, got {cls!r}")

    def prompts(self, cls: str) -> list[str]:
        """Every training prompt of a class, in row order (plain, wrapped, suffixed, obfuscated).

        Args:
            cls: ``"harmful"`` or ``"harmless"``.

        Returns:
            The prompts, one per training row.
        """
        return [p for group in self.groups(cls).values() for p in group]

    def n_lookalike_rows(self) -> int:
        """Number of plain harmless rows that are lookalikes."""
        return sum(p in self.lookalikes for p in self.harmless)

    def harmless_rows(self) -> HarmlessRows:
        """Calibration mask and training weights of the harmless rows (in :meth:`prompts` order).

        Returns:
            ``calibrate_on`` leaves out the random-suffixed rows (unless ``calibrate_on_suffixed``)
            and the obfuscated ones (``None`` when no row is left out); ``weights`` are
            ``lookalike_weight`` on the plain lookalike rows and 1 elsewhere (``None`` when there are
            no lookalikes or the weight is 1).
        """
        n_first = len(self.harmless) + len(self.harmless_wrapped)
        n_suffixed = len(self.harmless_suffixed)
        n = n_first + n_suffixed + len(self.harmless_obfuscated)
        calibrate = None
        leave_suffixed = bool(self.harmless_suffixed) and not self.calibrate_on_suffixed
        if leave_suffixed or self.harmless_obfuscated:
            idx = torch.arange(n)
            calibrate = idx < (n_first if leave_suffixed else n_first + n_suffixed)
        weights = None
        if self.lookalikes and self.lookalike_weight != 1.0:
            weights = torch.ones(n, dtype=torch.float64)
            for i, p in enumerate(self.harmless):
                if p in self.lookalikes:
                    weights[i] = self.lookalike_weight
        return HarmlessRows(calibrate, weights)


def prompts_that_fit(lm: LoadedModel, prompts: Sequence[str]) -> list[str]:
    """The prompts whose templated form fits the model's context (long jailbreak templates may not).

    Args:
        lm: The model.
        prompts: Instructions.

    Returns:
        Those that fit, in order (the others are logged and skipped).
    """
    from latentguard.positions import PromptTooLongError, locate, model_max_length

    limit = model_max_length(lm.model, lm.tokenizer)
    keep = []
    for p in prompts:
        try:
            locate(lm.tokenizer, p, max_length=limit)
        except PromptTooLongError:
            continue
        keep.append(p)
    if len(keep) < len(prompts):
        logger.info(
            "%d of %d prompts are longer than the context; skipped",
            len(prompts) - len(keep),
            len(prompts),
        )
    return keep


def _check_prompts(harmful: Sequence[str], harmless: Sequence[str]) -> None:
    if len(harmful) < 2 or len(harmless) < 2:
        raise ValueError(
            f"need at least 2 harmful and 2 harmless prompts, got {len(harmful)} and {len(harmless)}"
        )
    for name, group in (("harmful", harmful), ("harmless", harmless)):
        for i, p in enumerate(group):
            if not isinstance(p, str):
                raise TypeError(
                    f"{name} prompt #{i} is {type(p).__name__}, not str (pass the instruction text)"
                )


def build_training_set(
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    lookalikes: Sequence[str] = (),
    n_wrapped: int = 0,
    n_suffixed: int = 0,
    seed: int = 0,
    lookalike_weight: float = 1.0,
    calibrate_on_suffixed: bool = False,
    lm: LoadedModel | None = None,
    use_shared: bool = True,
    wrap_added_lookalikes: bool = True,
    n_obfuscated: int = 0,
    harmful_sources: Sequence[str] | None = None,
    harmless_sources: Sequence[str] | None = None,
) -> TrainingSet:
    """Build a guard's training set: plain, template-wrapped and random-suffixed prompts per class.

    Args:
        harmful: Plain harmful instructions.
        harmless: Plain harmless instructions.
        lookalikes: Harmless instructions that only look unsafe; those not in ``harmless`` are
            appended to it (once each), and every plain harmless row among them weighs
            ``lookalike_weight``.
        n_wrapped: Prompts of each class also wrapped in a jailbreak template (0: none).
        n_suffixed: Prompts of each class also followed by random tokens (0: none); needs ``lm``.
        seed: Seed of the samples and of the suffixes.
        lookalike_weight: Training weight of the plain lookalike rows.
        calibrate_on_suffixed: Let the random-suffixed harmless rows set the threshold too.
        lm: The model (its tokenizer draws the suffixes; wrapped prompts longer than its context are
            dropped). ``None``: no context check, and ``n_suffixed`` must be 0.
        use_shared: Also draw the jailbreak templates from the shared data folder.
        wrap_added_lookalikes: Whether the wrapped harmless prompts are sampled from ``harmless`` with
            the appended lookalikes (``True``) or from ``harmless`` as given (``False``).
        n_obfuscated: Prompts of each class also obfuscated (0: none).
        harmful_sources: The source of each harmful prompt (default: all ``"given"``).
        harmless_sources: The source of each harmless prompt; the appended lookalikes get
            :data:`LOOKALIKE_SOURCE`.

    Returns:
        The :class:`TrainingSet`.

    Raises:
        ValueError: Fewer than 2 prompts of a class, negative counts, a lookalike weight that is not
            a positive number, or ``n_suffixed`` without ``lm``.
        TypeError: A prompt that is not a string.
    """
    if n_wrapped < 0 or n_suffixed < 0 or n_obfuscated < 0:
        raise ValueError(
            f"n_wrapped, n_suffixed and n_obfuscated must be >= 0, got {n_wrapped}, {n_suffixed}, {n_obfuscated}"
        )
    for name, src, rows in (("harmful", harmful_sources, harmful), ("harmless", harmless_sources, harmless)):
        if src is not None and len(src) != len(rows):
            raise ValueError(f"{name}_sources has {len(src)} names for {len(rows)} prompts")
    if not (lookalike_weight > 0 and math.isfinite(lookalike_weight)):
        raise ValueError(f"lookalike_weight must be a positive number, got {lookalike_weight}")
    if n_suffixed and lm is None:
        raise ValueError("random-suffixed prompts need the model (lm)")
    plain = set(harmless)
    given = list(harmless)
    merged = given + [p for p in dict.fromkeys(lookalikes) if p not in plain]
    _check_prompts(harmful, merged)
    wrapped: dict[str, list[str]] = {"harmful": [], "harmless": []}
    suffixed: dict[str, list[str]] = {"harmful": [], "harmless": []}
    if n_wrapped:
        from latentguard.attacks import wrapped_training_prompts

        sources = {"harmful": list(harmful), "harmless": merged if wrap_added_lookalikes else given}
        for cls, source in sources.items():
            got = wrapped_training_prompts(source, n_wrapped, seed=seed, use_shared=use_shared)
            wrapped[cls] = prompts_that_fit(lm, got) if lm is not None else got
    if n_suffixed:
        from latentguard.attacks import random_suffix_prompts

        assert lm is not None
        for cls, source in (("harmful", list(harmful)), ("harmless", merged)):
            suffixed[cls] = random_suffix_prompts(lm, source, n_suffixed, seed=seed)
    obfuscated: dict[str, list[str]] = {"harmful": [], "harmless": []}
    if n_obfuscated:
        from latentguard.obfuscate import obfuscated_variants

        for k, (cls, source) in enumerate((("harmful", list(harmful)), ("harmless", merged))):
            obfuscated[cls] = obfuscated_variants(source, n_obfuscated, seed=seed * 2 + k)
    added = len(merged) - len(given)
    return TrainingSet(
        harmful_obfuscated=tuple(obfuscated["harmful"]),
        harmless_obfuscated=tuple(obfuscated["harmless"]),
        harmful_sources=tuple(harmful_sources if harmful_sources is not None else ["given"] * len(harmful)),
        harmless_sources=tuple(
            [*(harmless_sources if harmless_sources is not None else ["given"] * len(given))]
            + [LOOKALIKE_SOURCE] * added
        ),
        harmful=tuple(harmful),
        harmless=tuple(merged),
        harmful_wrapped=tuple(wrapped["harmful"]),
        harmless_wrapped=tuple(wrapped["harmless"]),
        harmful_suffixed=tuple(suffixed["harmful"]),
        harmless_suffixed=tuple(suffixed["harmless"]),
        lookalikes=frozenset(lookalikes),
        lookalike_weight=lookalike_weight,
        calibrate_on_suffixed=calibrate_on_suffixed,
    )


def builtin_mix(
    harmful: Sequence[str],
    harmless: Sequence[str],
    lookalikes: Sequence[str] = (),
    harmful_sources: Sequence[str] | None = None,
    harmless_sources: Sequence[str] | None = None,
) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """The given prompts plus the built-in sets of :data:`BUILTIN_MIX`, each a source of its own.

    A user's data is often one style per class (imperative one-liners against everyday requests); the
    built-in sets add questions and commands of every CatQA category, harmless requests phrased like
    harmful ones and lookalikes, so the guard cannot separate the classes by form alone. Prompts
    already given are not repeated.

    Args:
        harmful: Harmful prompts.
        harmless: Harmless prompts.
        lookalikes: Harmless prompts that only look unsafe.
        harmful_sources: Source of each harmful prompt (default ``"given"``).
        harmless_sources: Source of each harmless prompt (default ``"given"``).

    Returns:
        ``(harmful, harmless, lookalikes, harmful_sources, harmless_sources)``.
    """
    from latentguard.data import builtin

    h = list(harmful)
    hs = list(harmful_sources) if harmful_sources is not None else ["given"] * len(h)
    s = list(harmless)
    ss = list(harmless_sources) if harmless_sources is not None else ["given"] * len(s)
    seen = set(h) | set(s)
    for name in BUILTIN_MIX["harmful"]:
        for ex in builtin(name):
            if ex.instruction not in seen:
                h.append(ex.instruction)
                hs.append(f"builtin:{name}")
                seen.add(ex.instruction)
    for name in BUILTIN_MIX["harmless"]:
        for ex in builtin(name):
            if ex.instruction not in seen:
                s.append(ex.instruction)
                ss.append(f"builtin:{name}")
                seen.add(ex.instruction)
    looks = list(
        dict.fromkeys(
            [*lookalikes, *(ex.instruction for n in BUILTIN_MIX["lookalikes"] for ex in builtin(n))]
        )
    )
    return h, s, looks, hs, ss
