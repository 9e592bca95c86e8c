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

Example:
    >>> from latentguard.ray_engine import EngineConfig, ModelRef, extract
    >>> acts = extract(ModelRef("default"), ["How do I bake bread?"] * 64,
    ...                engine=EngineConfig(workers=2))                        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latentguard.activations import ActivationSet, ExtractConfig
    from latentguard.generation import GenerationConfig
    from latentguard.guard.score import GuardResult
    from latentguard.judge import Judgement
    from latentguard.models import LoadedModel

logger = logging.getLogger(__name__)

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

INSTALL_HINT = "the Ray engine needs Ray: pip install 'latentguard[ray]'"


class RayEngineError(RuntimeError):
    """A Ray engine run failed (a worker raised, or chunks were lost or duplicated)."""


class RayNotInstalledError(RayEngineError, ImportError):
    """Ray is not installed (``pip install 'latentguard[ray]'``)."""


def _import_ray() -> Any:
    """Import ``ray`` and ``ray.data``, or raise :class:`RayNotInstalledError`."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayNotInstalledError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """Torch threads per worker when none are given: the cores divided among the workers (>= 1)."""
    return max(1, available_cores() // max(1, workers))


@dataclass(frozen=True)
class ModelRef:
    """How a worker loads its model replica: a spec and the options of :func:`latentguard.models.load`.

    Attributes:
        spec: A Hugging Face id, a local directory, a ``.gguf`` file, or an alias (``default``...).
            It must resolve on every worker (same path or a shared file system).
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``auto``.
        device: ``cpu`` or ``cuda``; on a GPU worker Ray makes its GPU ``cuda:0``.
        device_map: ``"auto"`` or an explicit map, to spread one replica over the worker's devices.
        max_memory: Per-device caps for ``device_map``.
        load_in_bits: 8 or 4 (bitsandbytes, CUDA only).
        chat_template: Jinja text or a file replacing the tokenizer's template.
        layers_path: Dotted path to the decoder layers (unknown architectures).
    """

    spec: str = "default"
    dtype: str | None = None
    device: str | None = None
    device_map: str | dict[str, Any] | None = None
    max_memory: dict[Any, str] | None = None
    load_in_bits: int | None = None
    chat_template: str | None = None
    layers_path: str | None = None

    def load(self) -> LoadedModel:
        """Load the model (on the worker)."""
        from latentguard.models import load

        return load(
            self.spec,
            dtype=self.dtype,
            device=self.device,
            device_map=self.device_map,
            max_memory=self.max_memory,
            load_in_bits=self.load_in_bits,
            chat_template=self.chat_template,
            layers_path=self.layers_path,
        )

    def load_tokenizer(self) -> Any:
        """Load only the tokenizer (on the driver, to template and sort prompts)."""
        from latentguard.models import load_tokenizer

        return load_tokenizer(self.spec, chat_template=self.chat_template)


@dataclass(frozen=True)
class EngineConfig:
    """Options of the Ray engine (each documented in ``help``)."""

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
    crash_once: str | None = field(
        default=None,
        metadata={
            "help": "testing: a marker file; the first chunk to find it missing creates it and kills its "
            "worker process (exercises Ray's restart and retry)"
        },
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


@dataclass(frozen=True)
class Generated:
    """Responses from :func:`generate`, with refusal verdicts when a judge was named."""

    responses: list[str]
    verdicts: list[Judgement] | None
    judge_name: str | None


@dataclass(frozen=True)
class Judged:
    """Verdicts from :func:`judge` and the name of the judge that produced them."""

    verdicts: list[Judgement]
    judge_name: str


# --------------------------------------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------------------------------------


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
    ray = _import_ray()
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


# --------------------------------------------------------------------------------------------------------
# Worker (one per actor; holds one model replica)
# --------------------------------------------------------------------------------------------------------


def _was_restarted() -> bool:
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # older Ray, or not in an actor: unknown means "no"
        return False


class _Worker:
    """A Ray Data actor: loads what its task needs once, then computes one chunk per call."""

    def __init__(
        self,
        task: str,
        model: ModelRef | None,
        options: dict[str, Any],
        threads: int,
        cache_root: str | None,
        crash_once: str | None,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        if cache_root:
            os.environ["LATENTGUARD_CACHE"] = cache_root
        self.task = task
        self.options = options
        self.crash_once = crash_once
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.restarted = _was_restarted()
        t0 = time.perf_counter()
        self.lm = model.load() if model is not None else None
        self.guard: Any = None
        self.judge: Any = None
        if task == "check":
            from latentguard.guard.fit import LatentGuard

            self.guard = LatentGuard.load(options["guard"], self.lm)
        if options.get("judge"):
            from latentguard.judge import load_judge

            self.judge = load_judge(options["judge"])
        self.load_seconds = time.perf_counter() - t0
        if self.restarted:
            logger.warning("worker %s restarted (task %s); its chunks are retried", self.worker_id, task)

    def _maybe_crash(self, chunk: int) -> None:
        if not self.crash_once:
            return
        try:
            fd = os.open(self.crash_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{self.worker_id} chunk {chunk}\n".encode())
        os.close(fd)
        logger.warning("crash_once: worker %s exits on chunk %d", self.worker_id, chunk)
        os._exit(1)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Compute every chunk of a Ray Data batch (one chunk with ``batch_size=1``)."""
        import numpy as np

        out: dict[str, list[Any]] = {
            k: [] for k in ("chunk", "result", "meta", "worker", "seconds", "restarted")
        }
        for chunk, payload in zip(batch["chunk"], batch["payload"], strict=True):
            ci = int(chunk)
            self._maybe_crash(ci)
            t0 = time.perf_counter()
            try:
                result, meta = self._run(ci, json.loads(str(payload)))
            except Exception:
                logger.exception("worker %s: %s chunk %d failed", self.worker_id, self.task, ci)
                raise
            out["chunk"].append(ci)
            out["result"].append(result)
            out["meta"].append(json.dumps(meta))
            out["worker"].append(self.worker_id)
            out["seconds"].append(time.perf_counter() - t0)
            out["restarted"].append(self.restarted)
        return {
            "chunk": np.asarray(out["chunk"], dtype=np.int64),
            "result": np.asarray(out["result"], dtype=object),
            "meta": np.asarray(out["meta"], dtype=object),
            "worker": np.asarray(out["worker"], dtype=object),
            "seconds": np.asarray(out["seconds"], dtype=np.float64),
            "restarted": np.asarray(out["restarted"], dtype=bool),
        }

    def _run(self, chunk: int, payload: list[Any]) -> tuple[Any, dict[str, Any]]:
        if self.task == "extract":
            return self._extract(chunk, payload)
        if self.task == "generate":
            return self._generate(payload)
        if self.task == "check":
            return self._check(payload)
        if self.task == "judge":
            return self._judge(payload)
        raise ValueError(f"unknown task {self.task!r}")

    def _extract(self, chunk: int, instructions: list[str]) -> tuple[bytes, dict[str, Any]]:
        from safetensors.torch import save as save_bytes

        from latentguard.activations import (
            _atomic_save_tensors,
            cache_key_for_hash,
            chunk_path,
            compute_chunk,
            load_chunk,
        )
        from latentguard.positions import locate_for

        lm = self.lm
        assert lm is not None
        cfg: ExtractConfig = self.options["config"]
        layers = list(cfg.layers) if cfg.layers is not None else list(range(lm.n_layers + 1))
        key = cache_key_for_hash(lm, self.options["prompts_hash"], cfg, layers)
        path = chunk_path(key, chunk)
        shape_tail = (len(layers), len(cfg.positions), lm.d_model)
        acts = load_chunk(path, len(instructions), shape_tail) if cfg.use_cache else None
        from_cache = acts is not None
        if acts is None:
            prompts = locate_for(lm, instructions, question=cfg.question, system=cfg.system)
            acts = compute_chunk(lm, prompts, cfg, layers)
            if cfg.use_cache:
                _atomic_save_tensors({"activations": acts}, path, metadata={"key": key, "chunk": str(chunk)})
        meta = {
            "fingerprint": lm.fingerprint,
            "template_hash": lm.template_hash,
            "model_dtype": str(lm.dtype).replace("torch.", ""),
            "n_layers": lm.n_layers,
            "layers": layers,
            "cache_key": key,
            "from_cache": len(instructions) if from_cache else 0,
        }
        return save_bytes({"activations": acts.contiguous()}), meta

    def _generate(self, instructions: list[str]) -> tuple[str, dict[str, Any]]:
        from latentguard.generation import generate as local_generate

        assert self.lm is not None
        responses = local_generate(self.lm, instructions, self.options["config"])
        rows: list[dict[str, Any]] = [{"response": r} for r in responses]
        if self.judge is not None:
            for row, v in zip(rows, self.judge.judge(responses, instructions), strict=True):
                row.update(refused=v.refused, score=v.score)
        return json.dumps(rows), {"judge": getattr(self.judge, "name", None)}

    def _check(self, prompts: list[str]) -> tuple[str, dict[str, Any]]:
        from latentguard.guard.score import check as local_check

        assert self.lm is not None
        results = local_check(self.lm, self.guard, prompts, batch_size=self.options["batch_size"])
        rows = [
            {
                "harmful": r.harmful,
                "score": r.score,
                "layer_scores": [[k, v] for k, v in r.layer_scores.items()],
            }
            for r in results
        ]
        return json.dumps(rows), {}

    def _judge(self, pairs: list[list[Any]]) -> tuple[str, dict[str, Any]]:
        responses = [str(p[0]) for p in pairs]
        instructions = [str(p[1]) for p in pairs] if all(p[1] is not None for p in pairs) else None
        verdicts = self.judge.judge(responses, instructions)
        return json.dumps([{"refused": v.refused, "score": v.score} for v in verdicts]), {
            "judge": self.judge.name
        }


# --------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkReport:
    """What the driver learns about one finished chunk (passed to ``on_chunk``).

    Attributes:
        chunk: Chunk index (input order).
        rows: Prompts (or responses) in the chunk.
        worker: ``host:pid`` of the worker process that computed it.
        seconds: Time the worker spent on it (compute, or reading the cache).
        from_cache: Rows served from the activation cache (extract only).
        restarted: Whether the worker had been restarted (a failed batch was retried).
    """

    chunk: int
    rows: int
    worker: str
    seconds: float
    from_cache: int = 0
    restarted: bool = False


@dataclass(frozen=True)
class _ChunkOut:
    report: ChunkReport
    result: Any
    meta: dict[str, Any]


def _retry_args(map_batches: Any, max_retries: int) -> dict[str, Any]:
    """Actor restart/retry options, where this Ray version still takes them as keyword arguments."""
    params = inspect.signature(map_batches).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        logger.info("this Ray version sets actor retries itself (max_restarts=-1)")
        return {}
    return {"max_restarts": max_retries, "max_task_retries": max_retries}


def _run_chunks(
    task: str,
    model: ModelRef | None,
    options: dict[str, Any],
    payloads: Sequence[Any],
    engine: EngineConfig,
    sizes: Sequence[int],
    on_chunk: Callable[[ChunkReport], None] | None = None,
) -> list[_ChunkOut]:
    """Run ``payloads`` (one per chunk) through an actor pool; results in chunk order, each exactly once.

    Raises:
        RayEngineError: If the run fails or a chunk is lost or duplicated.
        RayNotInstalledError: If Ray is missing.
    """
    ray = _import_ray()
    n = len(payloads)
    threads = engine.threads_per_worker
    with ray_cluster(engine) as cluster:
        from latentguard.models import cache_dir

        if cluster["local"] and model is not None:
            from latentguard.models import resolve_spec

            resolve_spec(model.spec)  # builds an alias's cached model once, before workers race for it
        workers = min(engine.workers, n)
        if workers < engine.workers:
            logger.warning(
                "%s: only %d chunk(s) for %d workers; use smaller chunks to use them all",
                task,
                n,
                engine.workers,
            )
        ctx = ray.data.DataContext.get_current()
        old_bars = ctx.enable_progress_bars
        ctx.enable_progress_bars = engine.progress
        rows = [{"chunk": i, "payload": json.dumps(p)} for i, p in enumerate(payloads)]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, n))
        resources: dict[str, Any] = {"num_cpus": threads}
        if engine.gpus_per_worker:
            resources["num_gpus"] = engine.gpus_per_worker
        results: dict[int, _ChunkOut] = {}
        done_rows = 0
        t0 = time.perf_counter()
        logger.info("%s: %d chunk(s) on %d worker(s) x %d thread(s)", task, n, workers, threads)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
                mapped = ds.map_batches(
                    _Worker,
                    batch_size=1,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(
                        size=workers, max_tasks_in_flight_per_actor=engine.tasks_per_worker
                    ),
                    fn_constructor_kwargs={
                        "task": task,
                        "model": model,
                        "options": options,
                        "threads": threads,
                        "cache_root": str(cache_dir()) if cluster["local"] else None,
                        "crash_once": engine.crash_once,
                    },
                    **resources,
                    **_retry_args(ds.map_batches, engine.max_retries),
                )
            for row in mapped.iter_rows():
                ci = int(row["chunk"])
                if ci in results:
                    raise RayEngineError(f"{task}: chunk {ci} came back twice")
                meta = json.loads(str(row["meta"]))
                report = ChunkReport(
                    chunk=ci,
                    rows=sizes[ci],
                    worker=str(row["worker"]),
                    seconds=float(row["seconds"]),
                    from_cache=int(meta.get("from_cache", 0)),
                    restarted=bool(row["restarted"]),
                )
                results[ci] = _ChunkOut(report=report, result=row["result"], meta=meta)
                done_rows += sizes[ci]
                logger.info(
                    "%s: chunk %d/%d (%d rows%s) done by %s in %.2fs%s; %d/%d rows after %.1fs",
                    task,
                    ci + 1,
                    n,
                    sizes[ci],
                    ", from cache" if report.from_cache else "",
                    report.worker,
                    report.seconds,
                    " on a restarted worker (its failed chunks were retried)" if report.restarted else "",
                    done_rows,
                    sum(sizes),
                    time.perf_counter() - t0,
                )
                if on_chunk is not None:
                    on_chunk(report)
        except RayEngineError:
            raise
        except Exception as exc:
            logger.error("%s: the Ray run failed after %d/%d chunk(s): %s", task, len(results), n, exc)
            raise RayEngineError(f"{task} on Ray failed: {exc}") from exc
        finally:
            ctx.enable_progress_bars = old_bars
    missing = sorted(set(range(n)) - set(results))
    if missing:
        raise RayEngineError(f"{task}: chunks {missing} never came back")
    return [results[i] for i in range(n)]


def extract(
    model: ModelRef,
    instructions: Sequence[str],
    config: ExtractConfig | None = None,
    engine: EngineConfig | None = None,
    *,
    on_chunk: Callable[[ChunkReport], None] | None = None,
) -> ActivationSet:
    """:func:`latentguard.activations.extract` on Ray: one chunk of the cache per task.

    Args:
        model: The model each worker loads.
        instructions: User instructions.
        config: Extraction options (``chunk_size`` is the unit of work and of the cache).
        engine: Ray engine options.
        on_chunk: Called on the driver with a :class:`ChunkReport` as each chunk comes back.

    Returns:
        The same :class:`~latentguard.activations.ActivationSet` as the local engine, rows in input order.

    Raises:
        ValueError: If there are no instructions.
        RayEngineError: If the run fails, or workers disagree on the model.
    """
    from safetensors.torch import load as load_bytes

    from latentguard.activations import ActivationSet, ExtractConfig, prompt_hash
    from latentguard.positions import locate_many

    cfg = config or ExtractConfig()
    engine = engine or EngineConfig()
    if not instructions:
        raise ValueError("no instructions to extract")
    first = locate_many(
        model.load_tokenizer(), list(instructions[:1]), question=cfg.question, system=cfg.system
    )
    for name in cfg.positions:
        first[0].index(name)  # bad names fail here, before any worker starts
    insts = list(instructions)
    chunks = [insts[s : s + cfg.chunk_size] for s in range(0, len(insts), cfg.chunk_size)]
    options = {"config": replace(cfg, progress=False), "prompts_hash": prompt_hash(insts)}
    outs = _run_chunks("extract", model, options, chunks, engine, [len(c) for c in chunks], on_chunk)
    metas = [o.meta for o in outs]
    if len({m["fingerprint"] for m in metas}) != 1:
        raise RayEngineError(f"workers loaded different models: {sorted({m['fingerprint'] for m in metas})}")
    import torch

    acts = torch.cat([load_bytes(bytes(o.result))["activations"] for o in outs], dim=0)
    meta0 = metas[0]
    n_cached = sum(int(m["from_cache"]) for m in metas)
    if n_cached:
        logger.info(
            "served %d/%d prompts from the activation cache %s", n_cached, len(insts), meta0["cache_key"]
        )
    return ActivationSet(
        activations=acts,
        positions=tuple(cfg.positions),
        layers=list(meta0["layers"]),
        instructions=insts,
        fingerprint=str(meta0["fingerprint"]),
        meta={
            "model": model.spec,
            "template_hash": meta0["template_hash"],
            "model_dtype": meta0["model_dtype"],
            "question": cfg.question,
            "system": cfg.system,
            "n_layers": meta0["n_layers"],
            "cache_key": meta0["cache_key"],
            "n_from_cache": n_cached,
        },
    )


def _local_batches(
    model: ModelRef, instructions: Sequence[str], per_chunk: int, question: str | None, system: str | None
) -> list[list[int]]:
    """Indices of the local engine's batches: templated, sorted longest first, ``per_chunk`` at a time."""
    from latentguard.positions import locate_many

    prompts = locate_many(model.load_tokenizer(), list(instructions), question=question, system=system)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    return [order[s : s + per_chunk] for s in range(0, len(order), per_chunk)]


def generate(
    model: ModelRef,
    instructions: Sequence[str],
    config: GenerationConfig | None = None,
    engine: EngineConfig | None = None,
    *,
    judge: str | None = None,
) -> Generated:
    """:func:`latentguard.generation.generate` on Ray, optionally judged on the workers too.

    Args:
        model: The model each worker loads.
        instructions: User instructions.
        config: Generation options; each chunk is ``engine.rows_per_task`` prompts (default one
            ``config.batch_size`` batch of the length-sorted prompts, as the local engine batches them).
        engine: Ray engine options.
        judge: A judge name for :func:`latentguard.judge.load_judge`, or ``None``.

    Returns:
        Responses (and verdicts) in input order.
    """
    from latentguard.generation import GenerationConfig

    cfg = config or GenerationConfig()
    engine = engine or EngineConfig()
    if not instructions:
        return Generated([], [] if judge else None, judge)
    per_chunk = engine.rows_per_task or cfg.batch_size
    batches = _local_batches(model, instructions, per_chunk, cfg.question, cfg.system)
    payloads = [[instructions[i] for i in b] for b in batches]
    options = {"config": replace(cfg, progress=False), "judge": judge}
    outs = _run_chunks("generate", model, options, payloads, engine, [len(b) for b in batches])
    rows: list[dict[str, Any]] = [{}] * len(instructions)
    for b, o in zip(batches, outs, strict=True):
        for i, r in zip(b, json.loads(str(o.result)), strict=True):
            rows[i] = r
    if judge is None:
        return Generated([r["response"] for r in rows], None, None)
    from latentguard.judge import Judgement

    verdicts = [Judgement(refused=bool(r["refused"]), score=float(r["score"])) for r in rows]
    return Generated([r["response"] for r in rows], verdicts, outs[0].meta.get("judge"))


def check(
    model: ModelRef,
    guard: str | os.PathLike[str],
    prompts: Sequence[str],
    engine: EngineConfig | None = None,
    *,
    batch_size: int = 16,
) -> list[GuardResult]:
    """:func:`latentguard.guard.score.check` on Ray.

    Args:
        model: The model each worker loads (the one the guard was fitted on).
        guard: Path of a saved guard, readable on every worker.
        prompts: User instructions.
        engine: Ray engine options.
        batch_size: Prompts per forward; each chunk is ``engine.rows_per_task`` prompts (default one batch).

    Returns:
        One verdict per prompt, in input order.
    """
    from latentguard.guard.score import GuardResult, validate_prompts

    engine = engine or EngineConfig()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    validate_prompts(prompts)
    batches = _local_batches(model, prompts, engine.rows_per_task or batch_size, None, None)
    payloads = [[prompts[i] for i in b] for b in batches]
    options = {"guard": os.fspath(guard), "batch_size": batch_size}
    outs = _run_chunks("check", model, options, payloads, engine, [len(b) for b in batches])
    results: list[GuardResult | None] = [None] * len(prompts)
    for b, o in zip(batches, outs, strict=True):
        for i, r in zip(b, json.loads(str(o.result)), strict=True):
            results[i] = GuardResult(
                harmful=bool(r["harmful"]),
                score=float(r["score"]),
                layer_scores={int(k): float(v) for k, v in r["layer_scores"]},
            )
    return [r for r in results if r is not None]


def judge(
    name: str,
    responses: Sequence[str],
    instructions: Sequence[str] | None = None,
    engine: EngineConfig | None = None,
) -> Judged:
    """:func:`latentguard.judge.load_judge` ``(name).judge(...)`` on Ray, in chunks of responses.

    Args:
        name: Judge name (``learned``, ``substring``...).
        responses: Model responses.
        instructions: The instructions they answer (same length), or ``None``.
        engine: Ray engine options; ``rows_per_task`` defaults to 64 (the learned judge's batch).

    Returns:
        Verdicts in input order, and the judge's name (``learned`` may fall back to ``substring``).
    """
    from latentguard.judge import Judgement

    engine = engine or EngineConfig()
    if instructions is not None and len(instructions) != len(responses):
        raise ValueError(f"{len(responses)} responses but {len(instructions)} instructions")
    if not responses:
        return Judged([], name)
    per_chunk = engine.rows_per_task or 64
    pairs = [[r, instructions[i] if instructions is not None else None] for i, r in enumerate(responses)]
    payloads = [pairs[s : s + per_chunk] for s in range(0, len(pairs), per_chunk)]
    outs = _run_chunks("judge", None, {"judge": name}, payloads, engine, [len(p) for p in payloads])
    verdicts = [
        Judgement(refused=bool(r["refused"]), score=float(r["score"]))
        for o in outs
        for r in json.loads(str(o.result))
    ]
    return Judged(verdicts, str(outs[0].meta.get("judge") or name))
