"""Group commit: rows from concurrent requests are committed together, and each caller waits for its commit.

:class:`GroupCommitWriter` runs on the event loop of the server. ``await writer.write(rows)`` queues
rows and returns once they are committed (or raises if the commit failed). A worker task takes
everything queued since the last commit and commits it in one transaction, in its own database thread;
while one commit runs, the next group forms. The classify micro-batcher releases a whole batch of
requests at once, so their rows share one commit: throughput holds, and every answered decision is on
disk before its response.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy.exc import DataError, IntegrityError

from latentguard.audit.store import AuditRow, AuditStore

logger = logging.getLogger(__name__)

__all__ = ["AuditWriteError", "GroupCommitWriter"]


class AuditWriteError(Exception):
    """Rows could not be committed to the audit database."""


@dataclass
class _Queued:
    rows: Sequence[AuditRow]
    future: asyncio.Future[None]


class GroupCommitWriter:
    """Commits queued rows in groups, in one database thread. Start and stop it on the serving loop."""

    def __init__(
        self,
        store: AuditStore,
        *,
        max_rows: int = 4096,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        """Create a stopped writer.

        Args:
            store: The audit database.
            max_rows: Most rows per commit.
            on_commit: Called with (rows, seconds) after each successful commit.
        """
        self._store = store
        self._max_rows = max_rows
        self._on_commit = on_commit
        self._queue: collections.deque[_Queued] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @property
    def running(self) -> bool:
        """Whether the writer accepts rows."""
        return self._task is not None and not self._task.done() and not self._closing

    def start(self) -> None:
        """Start the worker task and the database thread."""
        if self._task is not None:
            raise RuntimeError("writer already started")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentguard-audit")
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="latentguard-audit-writer")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(AuditWriteError("the audit log is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def write(self, rows: Sequence[AuditRow]) -> None:
        """Queue rows and wait until they are committed.

        Args:
            rows: The rows.

        Raises:
            AuditWriteError: If the writer is not running or the commit failed.
        """
        if not rows:
            return
        if not self.running or self._wakeup is None:
            raise AuditWriteError("the audit log is not running")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(rows, future))
        self._wakeup.set()
        await future

    def _take(self) -> list[_Queued]:
        group: list[_Queued] = []
        n = 0
        while self._queue and (not group or n + len(self._queue[0].rows) <= self._max_rows):
            item = self._queue.popleft()
            if item.future.done():  # the caller gave up (timeout); its rows are not written
                continue
            group.append(item)
            n += len(item.rows)
        return group

    async def _commit(self, group: list[_Queued]) -> None:
        loop = asyncio.get_running_loop()
        rows = [row for item in group for row in item.rows]
        started = loop.time()
        try:
            await loop.run_in_executor(self._executor, self._store.insert, rows)
        except (IntegrityError, DataError) as exc:
            if len(group) > 1:  # a row-level problem: commit the others, fail only the culprit
                logger.warning(
                    "Audit commit of %d requests failed (%s); retrying one by one", len(group), exc
                )
                for item in group:
                    await self._commit([item])
                return
            self._fail(group, exc)
            return
        except Exception as exc:
            self._fail(group, exc)
            return
        if self._on_commit is not None:
            self._on_commit(len(rows), loop.time() - started)
        for item in group:
            if not item.future.done():
                item.future.set_result(None)

    @staticmethod
    def _fail(group: list[_Queued], exc: Exception) -> None:
        inner = getattr(exc, "orig", None) or exc
        first = (str(inner).strip().splitlines() or [type(inner).__name__])[0]
        error = AuditWriteError(f"{type(inner).__name__}: {first}")
        for item in group:
            if not item.future.done():
                item.future.set_exception(error)

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await asyncio.sleep(0)  # let requests released together by the batcher join this group
            group = self._take()
            if group:
                await self._commit(group)
