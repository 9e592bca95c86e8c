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

A prompt may be a conversation (:mod:`latentguard.conversation`): the guard reads ``t_inst`` of its last
user message in the same prefill. :class:`~latentguard.generation.Sampling` switches to seeded sampling
and stop strings; ``on_verdict`` / ``on_text`` stream one prompt's verdict (right after the prefill,
before any text) and its answer.

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
from latentguard.conversation import Conversation, Prompt, last_user_text
from latentguard.generation import (
    Completion,
    Sampling,
    StopStrings,
    TextStream,
    complete_from_positions,
    finish,
    generate_batch,
    stop_token_ids,
)
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


class _GuardedStream:
    """Streamer: reports the verdict once the prefill is read, then streams text unless it is blocked."""

    def __init__(
        self,
        capture: _PrefillCapture,
        guard: LatentGuard,
        policy: Policy,
        text: TextStream | None,
        on_verdict: Callable[[Verdict], None] | None,
    ) -> None:
        self.capture = capture
        self.guard = guard
        self.policy = policy
        self.text = text
        self.on_verdict = on_verdict
        self.calls = 0
        self.blocked = False

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:  # the first new token: the prefill has run
            verdict = results_from_states(self.guard, self.capture.stacked())[0]
            self.blocked = self.policy is Policy.BLOCK and verdict.harmful
            if self.on_verdict is not None:
                self.on_verdict(verdict)
        if self.text is not None and not self.blocked:
            self.text.put(value)

    def end(self) -> None:
        if self.text is not None and not self.blocked:
            self.text.end()


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
    prompts: Sequence[Prompt],
    *,
    policy: Policy | str = Policy.BLOCK,
    max_new_tokens: int = 64,
    judge: RefusalJudge | None = None,
    repair: bool = False,
    refusal_direction: Directions | None = None,
    repair_layers: Sequence[int] | None = None,
    batch_size: int = 8,
    normalize: bool = True,
    sampling: Sampling | None = None,
    on_verdict: Callable[[Verdict], None] | None = None,
    on_text: Callable[[str], None] | None = None,
) -> list[GuardedReply]:
    """Generate answers while the guard reads the prompt's hidden states from the same prefill.

    Args:
        lm: The model.
        guard: A fitted guard for ``lm``.
        prompts: User instructions or conversations (templated with ``lm``'s chat template; a
            conversation is guarded at its last user message).
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
        sampling: Greedy when ``None`` or at temperature 0; else seeded sampling. Its stop strings
            end the answer early.
        on_verdict: Streaming (one prompt only): called with the verdict right after the prefill,
            before any text.
        on_text: Streaming (one prompt only): called with each piece of the answer as it is generated
            (nothing when blocked); the pieces join to :attr:`GuardedReply.response`.

    Returns:
        One :class:`GuardedReply` per prompt, in input order.

    Raises:
        ValueError: On an empty prompt, an unknown policy, a repair without judge or direction, or
            streaming more than one prompt.
    """
    policy = Policy.parse(policy)
    _check_args(max_new_tokens, batch_size)
    repair_vecs = _repair_vectors(lm, refusal_direction, repair_layers) if repair else None
    if repair and judge is None:
        raise ValueError("repair=True needs a refusal judge (judge=...)")
    streaming = on_verdict is not None or on_text is not None
    if streaming and len(prompts) != 1:
        raise ValueError("streaming (on_verdict / on_text) takes exactly one prompt")
    if not prompts:
        return []
    guard_layers_available(lm, guard)
    validate_prompts(prompts)
    norm_texts, changed = normalized_prompts(prompts, normalize)
    positions = templated(lm, norm_texts)
    from transformers import StoppingCriteriaList

    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    stops = stop_token_ids(lm)
    stop_strings = sampling.stop if sampling is not None else ()
    n = len(positions)
    verdicts: list[Verdict | None] = [None] * n
    done: list[Completion | None] = [None] * n
    for idx in length_batches([len(p) for p in positions], batch_size):
        batch = pad_batch([positions[i].input_ids for i in idx], pad_id, "left")
        gather = (
            torch.tensor([positions[i].index(guard.position) for i in idx], dtype=torch.long) + batch.offsets
        )
        width = batch.input_ids.shape[1]
        capture = _PrefillCapture(lm, guard.layers, gather, width)
        criteria: list[Any] = [_BlockAfterPrefill(capture, guard)] if policy is Policy.BLOCK else []
        if stop_strings:
            criteria.append(StopStrings(lm, stop_strings, width, stops))
        kwargs: dict[str, Any] = {"stopping_criteria": StoppingCriteriaList(criteria)}
        if streaming:
            text = TextStream(lm, stops, on_text, stop_strings) if on_text is not None else None
            kwargs["streamer"] = _GuardedStream(capture, guard, policy, text, on_verdict)
        try:
            capture.register()
            new = generate_batch(lm, batch, max_new_tokens, stops, sampling, **kwargs)
        finally:
            capture.remove()
        results = results_from_states(guard, capture.stacked())
        for row, i in enumerate(idx):
            verdicts[i] = results[row]
            done[i] = finish(lm, new[row].tolist(), stops, stop_strings, max_new_tokens)
    final = [v for v in verdicts if v is not None]
    answers = [c for c in done if c is not None]
    assert len(final) == n and len(answers) == n
    texts = [c.text for c in answers]

    blocked = [policy is Policy.BLOCK and v.harmful for v in final]
    refused: list[bool | None] = [None] * n
    if judge is not None:
        judged = [i for i in range(n) if not blocked[i]]
        if judged:
            out = judge.judge([texts[i] for i in judged], [last_user_text(prompts[i]) for i in judged])
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
                again = complete_from_positions(
                    lm, [positions[i] for i in todo], max_new_tokens, batch_size, sampling
                )
            for i, completion in zip(todo, again, strict=True):
                repaired[i] = completion.text
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
            finish_reason="content_filter" if blocked[i] else answers[i].finish_reason,
            prompt_tokens=len(positions[i]),
            completion_tokens=0 if blocked[i] else answers[i].tokens,
            category_scores=dict(v.category_scores),
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
        guard_enabled: bool = True,
    ) -> None:
        """Wrap a model and its guard.

        Args:
            lm: The model.
            normalize: Normalise prompts before the guard and the model read them (default on).
            guard_enabled: ``False`` answers :meth:`chat` without the guard's hooks (a baseline for
                measuring the guard's overhead; every verdict is then harmless with score 0.0).
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
        self.guard_enabled = guard_enabled
        # the template prefix's keys/values, computed once for every classify request
        self.prefix = build_prefix_cache(lm)

    def classify(self, prompts: list[Prompt]) -> list[Verdict]:
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

    def chat(
        self,
        messages: Conversation,
        *,
        max_new_tokens: int,
        policy: Policy | str,
        sampling: Sampling | None = None,
        on_verdict: Callable[[Verdict], None] | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GuardedReply:
        """Answer one conversation under the guard, in one prefill (see :func:`guarded_generate`).

        With repair on, the answer is streamed only once it is final (repaired or not), so ``on_text``
        gets it in one piece after generation; the verdict still comes right after the prefill.

        Args:
            messages: The conversation (the guard reads its last user message).
            max_new_tokens: Generation budget.
            policy: The guard policy.
            sampling: Temperature, top-p, seed and stop strings (greedy when ``None``).
            on_verdict: Called with the verdict right after the prefill.
            on_text: Called with each piece of the answer.

        Returns:
            The reply.
        """
        if not self.guard_enabled:
            return self._chat_unguarded(messages, max_new_tokens, sampling, on_verdict, on_text)
        (reply,) = guarded_generate(
            self.lm,
            self.guard,
            [messages],
            policy=policy,
            max_new_tokens=max_new_tokens,
            judge=self.judge,
            repair=self.repair,
            refusal_direction=self.refusal_direction,
            repair_layers=self.repair_layers,
            batch_size=1,
            normalize=self.normalize,
            sampling=sampling,
            on_verdict=on_verdict,
            on_text=None if self.repair else on_text,
        )
        text = reply.repaired_response or reply.response
        if self.repair and on_text is not None and text:
            on_text(text)
        return reply

    def _chat_unguarded(
        self,
        messages: Conversation,
        max_new_tokens: int,
        sampling: Sampling | None,
        on_verdict: Callable[[Verdict], None] | None,
        on_text: Callable[[str], None] | None,
    ) -> GuardedReply:
        texts, changed = normalized_prompts([messages], self.normalize)
        positions = templated(self.lm, texts)
        if on_verdict is not None:
            on_verdict(Verdict(harmful=False, score=0.0))
        (done,) = complete_from_positions(self.lm, positions, max_new_tokens, 1, sampling, on_text=on_text)
        return GuardedReply(
            harmful=False,
            score=0.0,
            blocked=False,
            flagged=False,
            response=done.text,
            normalized=changed[0],
            finish_reason=done.finish_reason,
            prompt_tokens=len(positions[0]),
            completion_tokens=done.tokens,
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
            "guard_enabled": self.guard_enabled,
        }
