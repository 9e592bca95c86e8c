"""Guarded generation: the guard reads the prompt's hidden states during generation's own prefill.

For each batch, forward hooks on the guard's layers copy the hidden state at every row's guard
position (``t_inst``, in left-padded coordinates) while ``generate`` processes the prompt. The guard
score therefore costs no extra forward pass. Under the ``block`` policy a stopping criterion ends
harmful rows right after the prefill, so a batch of blocked prompts costs one forward only.

Policies:

* ``block``: harmful prompts get ``response=None`` and ``blocked=True``.
* ``flag``: the response is kept and ``flagged=True`` for harmful prompts.
* ``allow``: responses are returned unchanged (scores are still reported).

Over-refusal repair (``repair=True``): prompts the guard judges harmless but whose answer the refusal
judge calls a refusal are answered again with the refusal direction ablated; both answers are returned.

Example:
    >>> replies = guarded_generate(lm, guard, ["How do I bake bread?"], policy="block")   # doctest: +SKIP
    >>> replies[0].blocked, replies[0].response[:20]                                      # doctest: +SKIP
    (False, 'Baking bread is a fu')
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.hooks import RemovableHandle

from latentguard.batching import length_batches, pad_batch
from latentguard.generation import decode_until_stop, generate_from_positions, greedy_batch, stop_token_ids
from latentguard.guard.fit import LatentGuard
from latentguard.guard.score import (
    check,
    guard_layers_available,
    normalized_prompts,
    results_from_states,
    templated,
    validate_prompts,
)
from latentguard.guard.types import GuardedReply, Policy, Verdict
from latentguard.hooks import residual_hook
from latentguard.models import LoadedModel
from latentguard.prefix import build_prefix_cache
from latentguard.steering import steer

if TYPE_CHECKING:
    from latentguard.directions import Directions

logger = logging.getLogger(__name__)


class RefusalJudge(Protocol):
    """Anything with ``judge(responses, instructions)`` returning objects with a ``.refused`` flag."""

    def judge(self, responses: Sequence[str], instructions: Sequence[str]) -> Sequence[Any]:
        """One verdict per response."""
        ...


class _PrefillCapture:
    """Hooks that copy the guard's hidden states at one position per row during the prefill.

    The first call of a hooked layer whose sequence length is the prompt width is the prefill; later
    calls (decoding steps, one token each) are ignored. The buffer belongs to one ``generate`` call.
    """

    def __init__(self, lm: LoadedModel, layers: Sequence[int], gather: torch.Tensor, width: int) -> None:
        self.lm = lm
        self.layers = list(layers)
        self.gather = gather
        self.width = width
        self.states: dict[int, torch.Tensor] = {}
        self.handles: list[RemovableHandle] = []

    def _reader(self, index: int) -> Callable[[torch.Tensor, Any], None]:
        def read(hidden: torch.Tensor, _kwargs: Any) -> None:
            if index in self.states or hidden.ndim != 3 or hidden.shape[1] != self.width:
                return
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            sel = hidden[rows, self.gather.to(hidden.device)]
            self.states[index] = sel.detach().to("cpu", torch.float32)

        return read

    def register(self) -> None:
        """Attach the hooks (after any hooks already present, e.g. steering, so they see its effect)."""
        for i in sorted(set(self.layers)):
            self.handles.append(residual_hook(self.lm, i, self._reader(i)))

    def remove(self) -> None:
        """Detach exactly this capture's hooks (idempotent)."""
        while self.handles:
            self.handles.pop().remove()

    @property
    def complete(self) -> bool:
        """Whether every layer has been captured."""
        return all(i in self.states for i in self.layers)

    def stacked(self) -> torch.Tensor:
        """``[b, len(layers), d]`` float32 on CPU.

        Raises:
            RuntimeError: If the prefill did not reach a hooked layer.
        """
        missing = [i for i in self.layers if i not in self.states]
        if missing:
            raise RuntimeError(f"the prefill did not pass through guard layers {missing}")
        return torch.stack([self.states[i] for i in self.layers], dim=1)


class _BlockAfterPrefill:
    """Stopping criterion ending harmful rows right after the prefill (``block`` policy).

    Blocked rows' text is discarded anyway; once every row of a batch is blocked, generation stops.
    """

    def __init__(self, capture: _PrefillCapture, guard: LatentGuard) -> None:
        self.capture = capture
        self.guard = guard
        self._done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self._done is None:
            if not self.capture.complete:
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            score, _ = self.guard.score_activations(self.capture.stacked(), self.guard.layers)
            self._done = score > self.guard.threshold
        return self._done.to(input_ids.device)


def _check_args(max_new_tokens: int, batch_size: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _repair_vectors(
    lm: LoadedModel, refusal_direction: Directions | None, repair_layers: Sequence[int] | None
) -> dict[int, torch.Tensor]:
    if refusal_direction is None:
        raise ValueError("repair=True needs refusal_direction (a latentguard.directions.Directions)")
    layers = list(repair_layers) if repair_layers is not None else refusal_direction.layers
    missing = [i for i in layers if i not in refusal_direction.vectors]
    if missing:
        raise ValueError(f"the refusal direction has no vector at repair layers {missing}")
    if not layers:
        raise ValueError("repair_layers is empty")
    if refusal_direction.fingerprint and refusal_direction.fingerprint != lm.fingerprint:
        logger.warning(
            "refusal direction comes from model %s, applied to %s",
            refusal_direction.fingerprint,
            lm.fingerprint,
        )
    return {i: refusal_direction.vectors[i] for i in layers}


def guarded_generate(
    lm: LoadedModel,
    guard: LatentGuard,
    prompts: Sequence[str],
    *,
    policy: Policy | str = Policy.BLOCK,
    max_new_tokens: int = 64,
    judge: RefusalJudge | None = None,
    repair: bool = False,
    refusal_direction: Directions | None = None,
    repair_layers: Sequence[int] | None = None,
    batch_size: int = 8,
    normalize: bool = True,
) -> list[GuardedReply]:
    """Generate greedy answers while the guard reads the prompt's hidden states from the same prefill.

    Args:
        lm: The model.
        guard: A fitted guard for ``lm``.
        prompts: User instructions (templated with ``lm``'s chat template).
        policy: A :class:`~latentguard.guard.types.Policy`, or its name: ``"block"``, ``"flag"``
            or ``"allow"``.
        max_new_tokens: Generation budget per prompt.
        judge: Optional refusal judge; its verdicts fill :attr:`GuardedReply.refused`.
        repair: Regenerate refusals of prompts the guard calls harmless, with the refusal direction
            ablated (needs ``judge`` and ``refusal_direction``).
        refusal_direction: The refusal direction per layer (:mod:`latentguard.directions`).
        repair_layers: Layers at which it is ablated; default all layers it has.
        batch_size: Prompts per ``generate`` call.
        normalize: Normalise each prompt once, before templating
            (:mod:`latentguard.guard.normalize`): the guard and the model read the same normalised
            prompt in one prefill, and :attr:`GuardedReply.normalized` says where it changed.

    Returns:
        One :class:`GuardedReply` per prompt, in input order.

    Raises:
        ValueError: On an empty prompt, an unknown policy, or a repair without judge or direction.
    """
    policy = Policy.parse(policy)
    _check_args(max_new_tokens, batch_size)
    repair_vecs = _repair_vectors(lm, refusal_direction, repair_layers) if repair else None
    if repair and judge is None:
        raise ValueError("repair=True needs a refusal judge (judge=...)")
    if not prompts:
        return []
    guard_layers_available(lm, guard)
    validate_prompts(prompts)
    norm_texts, changed = normalized_prompts(prompts, normalize)
    positions = templated(lm, norm_texts)
    from transformers import StoppingCriteriaList

    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    stops = stop_token_ids(lm)
    n = len(positions)
    verdicts: list[Verdict | None] = [None] * n
    texts: list[str] = [""] * n
    for idx in length_batches([len(p) for p in positions], batch_size):
        batch = pad_batch([positions[i].input_ids for i in idx], pad_id, "left")
        gather = (
            torch.tensor([positions[i].index(guard.position) for i in idx], dtype=torch.long) + batch.offsets
        )
        capture = _PrefillCapture(lm, guard.layers, gather, batch.input_ids.shape[1])
        criteria = StoppingCriteriaList(
            [_BlockAfterPrefill(capture, guard)] if policy is Policy.BLOCK else []
        )
        try:
            capture.register()
            new = greedy_batch(lm, batch, max_new_tokens, stops, stopping_criteria=criteria)
        finally:
            capture.remove()
        results = results_from_states(guard, capture.stacked())
        for row, i in enumerate(idx):
            verdicts[i] = results[row]
            texts[i] = decode_until_stop(lm, new[row].tolist(), stops)
    final = [v for v in verdicts if v is not None]
    assert len(final) == n

    blocked = [policy is Policy.BLOCK and v.harmful for v in final]
    refused: list[bool | None] = [None] * n
    if judge is not None:
        judged = [i for i in range(n) if not blocked[i]]
        if judged:
            out = judge.judge([texts[i] for i in judged], [prompts[i] for i in judged])
            if len(out) != len(judged):
                raise RuntimeError(f"the judge returned {len(out)} verdicts for {len(judged)} responses")
            for i, v in zip(judged, out, strict=True):
                refused[i] = bool(v.refused)
    repaired: list[str | None] = [None] * n
    if repair_vecs is not None:
        todo = [i for i in range(n) if not final[i].harmful and refused[i]]
        if todo:
            logger.info("repairing %d over-refusals with the refusal direction ablated", len(todo))
            with steer(lm, repair_vecs, mode="ablate"):
                again = generate_from_positions(lm, [positions[i] for i in todo], max_new_tokens, batch_size)
            for i, text in zip(todo, again, strict=True):
                repaired[i] = text
    return [
        GuardedReply(
            harmful=v.harmful,
            score=v.score,
            blocked=blocked[i],
            flagged=policy is Policy.FLAG and v.harmful,
            response=None if blocked[i] else texts[i],
            refused=refused[i],
            repaired_response=repaired[i],
            normalized=changed[i],
        )
        for i, v in enumerate(final)
    ]


class LatentGuardBackend:
    """Serves a Latent Guard over HTTP (implements :class:`latentguard.guard.serve.GuardBackend`).

    Example:
        >>> from latentguard.guard.serve import ServeConfig, run
        >>> run(LatentGuardBackend(lm, guard), ServeConfig(port=8000))      # doctest: +SKIP
    """

    def __init__(
        self,
        lm: LoadedModel,
        guard: LatentGuard,
        *,
        batch_size: int = 16,
        generate_batch_size: int = 8,
        judge: RefusalJudge | None = None,
        repair: bool = False,
        refusal_direction: Directions | None = None,
        repair_layers: Sequence[int] | None = None,
        normalize: bool = True,
    ) -> None:
        """Wrap a model and its guard.

        Args:
            repair_layers: Layers of the ablation (default: all of the direction's).
            normalize: Normalise prompts before the guard and the model read them (default on).
            guard: Its fitted guard.
            batch_size: Prompts per classify forward.
            generate_batch_size: Prompts per ``generate`` call.
            judge: Optional refusal judge (needed for ``repair``).
            repair: Repair over-refusals of harmless prompts (see :func:`guarded_generate`).
            refusal_direction: Needed for ``repair``.
            repair_layers: Layers of the ablation (default: all of the direction's).

        Raises:
            ValueError: If the guard cannot read ``lm`` or the repair settings are incomplete.
        """
        guard_layers_available(lm, guard)
        if repair:
            _repair_vectors(lm, refusal_direction, repair_layers)
            if judge is None:
                raise ValueError("repair=True needs a refusal judge (judge=...)")
        self.lm = lm
        self.guard = guard
        self.batch_size = batch_size
        self.generate_batch_size = generate_batch_size
        self.judge = judge
        self.repair = repair
        self.refusal_direction = refusal_direction
        self.repair_layers = list(repair_layers) if repair_layers is not None else None
        self.normalize = normalize
        # the template prefix's keys/values, computed once for every classify request
        self.prefix = build_prefix_cache(lm)

    def classify(self, prompts: list[str]) -> list[Verdict]:
        """Classify a batch of prompts with :func:`latentguard.guard.score.check`."""
        return check(
            self.lm,
            self.guard,
            prompts,
            batch_size=self.batch_size,
            prefix=self.prefix,
            normalize=self.normalize,
        )

    def generate(self, prompts: list[str], max_new_tokens: int, policy: Policy | str) -> list[GuardedReply]:
        """Guarded generation with :func:`guarded_generate`."""
        return guarded_generate(
            self.lm,
            self.guard,
            prompts,
            policy=policy,
            max_new_tokens=max_new_tokens,
            judge=self.judge,
            repair=self.repair,
            refusal_direction=self.refusal_direction,
            repair_layers=self.repair_layers,
            batch_size=self.generate_batch_size,
            normalize=self.normalize,
        )

    @property
    def info(self) -> dict[str, Any]:
        """Model name and fingerprint, guard method, layers, position, threshold and key metrics."""
        return {
            "model": self.lm.spec,
            "fingerprint": self.lm.fingerprint,
            "guard": self.guard.summary(),
            "guard_matches_model": self.guard.fingerprint == self.lm.fingerprint,
            "repair": self.repair,
        }
