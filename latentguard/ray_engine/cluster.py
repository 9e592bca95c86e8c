"""Starting or joining a Ray cluster, and the resources each worker gets.

:class:`EngineConfig` holds the engine's options (workers, threads, address, GPUs, retries, chunking);
:func:`ray_cluster` connects for the duration of a block: to an existing connection of this process,
to ``EngineConfig.address``, or to a local cluster on 127.0.0.1 (no dashboard, ``workers * threads``
CPUs) that it starts and shuts down.

Example:
    >>> from latentguard.ray_engine.cluster import EngineConfig, ray_cluster
    >>> with ray_cluster(EngineConfig(workers=2, threads=1)) as info:     # doctest: +SKIP
    ...     info
    {'local': True, 'started': True}
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "INSTALL_HINT",
    "EngineConfig",
    "RayEngineError",
    "RayNotInstalledError",
    "available_cores",
    "default_threads",
    "import_ray",
    "ray_cluster",
]

INSTALL_HINT = "the Ray engine needs Ray: pip install 'latentguard[ray]'"


class RayEngineError(RuntimeError):
    """A Ray engine run failed (a worker raised, or chunks were lost or duplicated)."""


class RayNotInstalledError(RayEngineError, ImportError):
    """Ray is not installed (``pip install 'latentguard[ray]'``)."""


def import_ray() -> Any:
    """Import ``ray`` and ``ray.data``.

    Returns:
        The ``ray`` module.

    Raises:
        RayNotInstalledError: If Ray is missing.
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayNotInstalledError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


def available_cores() -> int:
    """CPU cores this process may run on.

    Returns:
        The size of the process's CPU affinity set (the machine's CPU count where that is unknown).
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """Torch threads per worker when none are given: the cores divided among the workers (>= 1).

    Args:
        workers: Number of workers sharing this machine's cores.

    Returns:
        Threads per worker, at least 1.
    """
    return max(1, available_cores() // max(1, workers))


@dataclass(frozen=True)
class EngineConfig:
    """Options of the Ray engine (each documented in ``help``).

    Test-only fault injection (killing a worker mid-run) is not an option here: tests pass a
    :class:`latentguard.ray_engine.faults.Faults` to the driver functions instead.
    """

    workers: int = field(default=2, metadata={"help": "actors, each holding one model replica"})
    threads: int | None = field(
        default=None, metadata={"help": "torch threads (and Ray CPUs) per worker; None = cores / workers"}
    )
    address: str | None = field(
        default=None, metadata={"help": "Ray cluster to connect to; None = start a local one on 127.0.0.1"}
    )
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs reserved per worker (0 = CPU)"})
    max_retries: int = field(
        default=3, metadata={"help": "restarts of a dead worker, and retries of its chunks"}
    )
    tasks_per_worker: int = field(
        default=1,
        metadata={"help": "chunks queued per worker: 1 balances uneven chunks best, 2 hides scheduling gaps"},
    )
    rows_per_task: int | None = field(
        default=None,
        metadata={"help": "prompts per chunk for generate/check/judge; None = one local batch"},
    )
    progress: bool = field(
        default=False, metadata={"help": "Ray Data's own progress bars (chunks are logged either way)"}
    )

    def __post_init__(self) -> None:
        """Check the settings.

        Raises:
            ValueError: If a setting is out of range.
        """
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.gpus_per_worker < 0 or self.max_retries < 0:
            raise ValueError("gpus_per_worker and max_retries must be >= 0")
        if self.tasks_per_worker < 1:
            raise ValueError(f"tasks_per_worker must be >= 1, got {self.tasks_per_worker}")
        if self.rows_per_task is not None and self.rows_per_task < 1:
            raise ValueError(f"rows_per_task must be >= 1, got {self.rows_per_task}")

    @property
    def threads_per_worker(self) -> int:
        """The torch thread count of each worker."""
        return self.threads if self.threads is not None else default_threads(self.workers)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """While starting a local cluster, keep Ray from swapping 127.0.0.1 for the machine's public address.

    Ray replaces a loopback ``_node_ip_address`` with a routable one unless multi-node clusters are
    disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ``ray`` is imported). With the node
    address on loopback, Ray's servers listen on 127.0.0.1 only. The environment variable reaches the
    processes ``ray.init`` spawns; the driver's already-imported constant is switched for the call.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # layout changed: Ray picks the address; ray_cluster warns if it is not loopback
        yield
        return
    env_key = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old_env = os.environ.get(env_key)
    old_flag = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[env_key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(env_key, None)
        else:
            os.environ[env_key] = old_env
        if old_flag is not None:
            ray_constants.ENABLE_RAY_CLUSTER = old_flag


@contextlib.contextmanager
def ray_cluster(engine: EngineConfig | None = None) -> Iterator[dict[str, Any]]:
    """Be connected to a Ray cluster for the duration of the block.

    Uses an existing connection of this process if there is one (and leaves it open); else connects
    to ``engine.address``, or starts a local cluster on 127.0.0.1 with ``workers * threads`` CPUs and
    no dashboard, and shuts it down (or disconnects) on exit.

    Yields:
        ``{"local": bool, "started": bool}``: whether the cluster runs on this machine (so workers
        share the driver's cache folder), and whether this call started the connection.

    Raises:
        RayNotInstalledError: If Ray is missing.
    """
    engine = engine or EngineConfig()
    ray = import_ray()
    if ray.is_initialized():
        yield {"local": engine.address is None, "started": False}
        return
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    t0 = time.perf_counter()
    if engine.address:
        ray.init(address=engine.address, **common)
        logger.info("connected to the Ray cluster at %s in %.1fs", engine.address, time.perf_counter() - t0)
        local = False
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        num_cpus = engine.workers * engine.threads_per_worker
        with _loopback_only():
            ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **common)
        node_ip = ray.util.get_node_ip_address()
        if node_ip != "127.0.0.1":
            logger.warning("this Ray version put the local cluster on %s, not on loopback only", node_ip)
        logger.info(
            "started a local Ray cluster on %s (%d CPUs) in %.1fs",
            node_ip,
            num_cpus,
            time.perf_counter() - t0,
        )
        local = True
    try:
        yield {"local": local, "started": True}
    finally:
        ray.shutdown()
        logger.info("%s the Ray cluster", "disconnected from" if engine.address else "shut down")
