"""Micro-batching of classify prompts from concurrent requests (:class:`ClassifyBatcher`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from latentguard.conversation import Prompt
from latentguard.guard.serve.backend import GuardBackend, classify_isolating, fail_closed_verdict
from latentguard.guard.serve.errors import ServiceUnavailable
from latentguard.guard.serve.metrics import ServeMetrics
from latentguard.guard.types import Verdict

logger = logging.getLogger(__name__)

__all__ = ["ClassifyBatcher"]


@dataclass
class _Pending:
    prompt: Prompt
    future: asyncio.Future[Verdict]
    enqueued_at: float


class ClassifyBatcher:
    """Collects classify prompts from concurrent requests into backend batches.

    A batch is dispatched when it holds ``max_size`` prompts or when its oldest prompt has waited
    ``max_wait_s``. Batches run one at a time in the backend executor; prompts arriving meanwhile form the
    next batch. Must be started and stopped from the event loop that serves requests.
    """

    def __init__(
        self,
        backend: GuardBackend,
        executor: ThreadPoolExecutor,
        metrics: ServeMetrics,
        *,
        max_size: int,
        max_wait_s: float,
    ) -> None:
        """Create a stopped batcher.

        Args:
            backend: The guard backend.
            executor: Single-thread executor for backend calls.
            metrics: Metrics to update.
            max_size: Most prompts per backend call.
            max_wait_s: Longest a prompt waits for its batch to fill, in seconds.
        """
        self._backend = backend
        self._executor = executor
        self._metrics = metrics
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """Whether the batcher accepts prompts."""
        return self._task is not None and not self._task.done() and not self._closed

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="latentguard-classify-batcher")

    async def stop(self) -> None:
        """Stop the worker; queued and in-flight prompts fail with 503."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(ServiceUnavailable("the guard is shutting down"))

    async def classify(self, prompts: Sequence[Prompt]) -> list[Verdict]:
        """Queue prompts and wait for their verdicts.

        Args:
            prompts: Prompts to classify.

        Returns:
            One verdict per prompt, in order.

        Raises:
            ServiceUnavailable: If the batcher is not running or stops before answering.
        """
        if not self.running or self._wakeup is None:
            raise ServiceUnavailable("the guard is not running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Pending(p, loop.create_future(), now) for p in prompts]
        self._pending.extend(items)
        self._wakeup.set()
        return list(await asyncio.gather(*(item.future for item in items)))

    async def _next_batch(self) -> list[_Pending]:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            while self._pending and self._pending[0].future.done():  # cancelled (timed-out) requests
                self._pending.popleft()
            if self._pending:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._pending[0].enqueued_at + self._max_wait_s
        while len(self._pending) < self._max_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        batch: list[_Pending] = []
        while self._pending and len(batch) < self._max_size:
            item = self._pending.popleft()
            if not item.future.done():
                batch.append(item)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                self._metrics.observe_batch(len(batch))
                started = time.perf_counter()
                outcomes = await loop.run_in_executor(
                    self._executor, classify_isolating, self._backend, [item.prompt for item in batch]
                )
                self._metrics.observe_backend_call("classify", time.perf_counter() - started)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(ServiceUnavailable("the guard is shutting down"))
                raise
            except Exception as exc:
                logger.exception("Classify batch failed outside the backend; failing closed")
                outcomes = [fail_closed_verdict(exc) for _ in batch]
            for item, outcome in zip(batch, outcomes, strict=True):
                if not item.future.done():
                    item.future.set_result(outcome)
