"""Fault injection for tests of the Ray engine: kill a worker process mid-run.

Not part of the engine's configuration (:class:`~latentguard.ray_engine.cluster.EngineConfig`
carries no test knobs): a test builds a :class:`Faults` and passes it to a driver function, e.g.
``extract(model, prompts, cfg, engine, faults=Faults(crash_once=str(tmp / "crash-once")))``. The
driver hands it to every worker, which calls :meth:`Faults.before_chunk` before each chunk.

Example:
    >>> from latentguard.ray_engine.faults import Faults
    >>> Faults().before_chunk("host:1", 0)   # no fault configured: does nothing
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

__all__ = ["Faults"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Faults:
    """Faults to inject into Ray workers (tests only; serialisable, so Ray ships it to every worker).

    Attributes:
        crash_once: A marker file. The first chunk to find it missing creates it and kills its worker
            process (exercises Ray's restart and retry); later chunks find it and run normally.
    """

    crash_once: str | None = None

    def before_chunk(self, worker_id: str, chunk: int) -> None:
        """Inject the configured faults before a worker computes ``chunk``.

        Args:
            worker_id: ``host:pid`` of the worker process (written into the marker file).
            chunk: The chunk index about to be computed.
        """
        if not self.crash_once:
            return
        try:
            fd = os.open(self.crash_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{worker_id} chunk {chunk}\n".encode())
        os.close(fd)
        logger.warning("crash_once: worker %s exits on chunk %d", worker_id, chunk)
        os._exit(1)
