"""The Ray engine: extraction, generation, judging and guard checks on a Ray cluster.

Work is cut into chunks of prompts; each chunk is one row of a Ray Data dataset, and
``map_batches`` runs the rows on a fixed pool of actors. Every actor loads its own model replica
from a :class:`ModelRef` (a spec plus load options; a model is never pickled), sets its torch
thread count, and computes chunks with the same functions as the local engine, so results equal
the local engine's (within floating-point tolerance; with the same chunks and threads they are
bitwise equal):

* :func:`extract` -- chunks are the local engine's cache chunks (``ExtractConfig.chunk_size``
  prompts, in input order). Each actor reads and writes the same content-addressed chunk cache as
  :func:`latentguard.activations.extract` (on a local cluster, the driver's cache folder), so a
  killed run resumes and the two engines share cached chunks. Returns the same
  :class:`~latentguard.activations.ActivationSet` (``save`` writes the same files).
* :func:`generate` and :func:`check` -- the driver templates every prompt and sorts by length as
  the local engine does, so each chunk is exactly one of the local engine's batches.
* :func:`judge` -- chunks of responses in input order.

Results are put back in input order by chunk index, and the driver checks that every chunk came
back exactly once. Progress is logged per chunk (worker, seconds, cache hits). A worker process
that dies (killed, out of memory) is restarted by Ray and its chunks are retried
(``max_restarts``/``max_task_retries`` on the actors); an exception raised by the code itself is
logged and fails the run with :class:`RayEngineError`.

With no address, a local cluster bound to 127.0.0.1 (no dashboard, ``workers * threads`` CPUs) is
started for the call and shut down afterwards; with an address (``"auto"``, ``"ray://host:10001"``,
``"host:6379"``) the driver connects to that cluster and only disconnects. If Ray is already
initialised in this process, that connection is used and left alone.

Ray is an optional dependency: ``pip install 'latentguard[ray]'``.

Modules: :mod:`~latentguard.ray_engine.cluster` (starting or joining Ray, :class:`EngineConfig`),
:mod:`~latentguard.ray_engine.workers` (one actor class per task),
:mod:`~latentguard.ray_engine.driver` (the functions below), and
:mod:`~latentguard.ray_engine.faults` (fault injection for tests). :class:`ModelRef` lives in
:mod:`latentguard.models` and is re-exported here (importing this package does not import torch).

Example:
    >>> from latentguard.models import ModelRef
    >>> from latentguard.ray_engine import EngineConfig, extract
    >>> acts = extract(ModelRef("default"), ["How do I bake bread?"] * 64,
    ...                engine=EngineConfig(workers=2))                        # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from latentguard.ray_engine.cluster import (
    EngineConfig,
    RayEngineError,
    RayNotInstalledError,
    default_threads,
    ray_cluster,
)
from latentguard.ray_engine.driver import ChunkReport, Generated, Judged, check, extract, generate, judge

if TYPE_CHECKING:
    from latentguard.models import ModelRef

__all__ = [
    "ChunkReport",
    "EngineConfig",
    "Generated",
    "Judged",
    "ModelRef",
    "RayEngineError",
    "RayNotInstalledError",
    "check",
    "default_threads",
    "extract",
    "generate",
    "judge",
    "ray_cluster",
]


def __getattr__(name: str) -> Any:
    """Re-export :class:`latentguard.models.ModelRef` on first use, so importing the engine stays light.

    Args:
        name: The attribute looked up.

    Returns:
        :class:`latentguard.models.ModelRef` for ``"ModelRef"``.

    Raises:
        AttributeError: For any other name.
    """
    if name == "ModelRef":
        from latentguard.models import ModelRef

        return ModelRef
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
