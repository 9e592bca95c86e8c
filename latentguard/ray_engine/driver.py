"""The Ray engine's driver: cut work into chunks, run them on an actor pool, put results back in order.

Each chunk is one row of a Ray Data dataset; ``map_batches`` runs the rows on a fixed pool of
actors (one :mod:`~latentguard.ray_engine.workers` class per task). Results are put back in input
order by chunk index, and the driver checks that every chunk came back exactly once. Progress is
logged per chunk (worker, seconds, cache hits).

Example:
    >>> from latentguard.ray_engine.driver import judge
    >>> judge("substring", ["Sure.", "I can't help."]).verdicts        # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from latentguard.ray_engine.cluster import EngineConfig, RayEngineError, import_ray, ray_cluster
from latentguard.ray_engine.workers import (
    CheckWorker,
    ChunkWorker,
    ExtractWorker,
    GenerateWorker,
    JudgeWorker,
)

if TYPE_CHECKING:
    from latentguard.activations import ActivationSet, ExtractConfig
    from latentguard.generation import GenerationConfig
    from latentguard.guard.score import GuardResult
    from latentguard.judge import Judgement
    from latentguard.models import ModelRef
    from latentguard.ray_engine.faults import Faults

__all__ = ["ChunkReport", "Generated", "Judged", "check", "extract", "generate", "judge"]

logger = logging.getLogger(__name__)


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
    worker: type[ChunkWorker],
    model: ModelRef | None,
    options: dict[str, Any],
    payloads: Sequence[Any],
    engine: EngineConfig,
    sizes: Sequence[int],
    on_chunk: Callable[[ChunkReport], None] | None = None,
    faults: Faults | None = None,
) -> list[_ChunkOut]:
    """Run ``payloads`` (one per chunk) through a pool of ``worker`` actors; results in chunk order,
    each exactly once.

    Raises:
        RayEngineError: If the run fails or a chunk is lost or duplicated.
        RayNotInstalledError: If Ray is missing.
    """
    ray = import_ray()
    task = worker.task
    n = len(payloads)
    threads = engine.threads_per_worker
    with ray_cluster(engine) as cluster:
        from latentguard.io import cache_dir

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
                    worker,
                    batch_size=1,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(
                        size=workers, max_tasks_in_flight_per_actor=engine.tasks_per_worker
                    ),
                    fn_constructor_kwargs={
                        "model": model,
                        "options": options,
                        "threads": threads,
                        "cache_root": str(cache_dir()) if cluster["local"] else None,
                        "faults": faults,
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
    faults: Faults | None = None,
) -> ActivationSet:
    """:func:`latentguard.activations.extract` on Ray: one chunk of the cache per task.

    Args:
        model: The model each worker loads.
        instructions: User instructions.
        config: Extraction options (``chunk_size`` is the unit of work and of the cache).
        engine: Ray engine options.
        on_chunk: Called on the driver with a :class:`ChunkReport` as each chunk comes back.
        faults: Testing only: faults to inject into the workers.

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
    outs = _run_chunks(
        ExtractWorker, model, options, chunks, engine, [len(c) for c in chunks], on_chunk, faults
    )
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
    from latentguard.batching import length_batches
    from latentguard.positions import locate_many

    prompts = locate_many(model.load_tokenizer(), list(instructions), question=question, system=system)
    return length_batches([len(p) for p in prompts], per_chunk)


def generate(
    model: ModelRef,
    instructions: Sequence[str],
    config: GenerationConfig | None = None,
    engine: EngineConfig | None = None,
    *,
    judge: str | None = None,
    faults: Faults | None = None,
) -> Generated:
    """:func:`latentguard.generation.generate` on Ray, optionally judged on the workers too.

    Args:
        model: The model each worker loads.
        instructions: User instructions.
        config: Generation options; each chunk is ``engine.rows_per_task`` prompts (default one
            ``config.batch_size`` batch of the length-sorted prompts, as the local engine batches them).
        engine: Ray engine options.
        judge: A judge name for :func:`latentguard.judge.load_judge`, or ``None``.
        faults: Testing only: faults to inject into the workers.

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
    outs = _run_chunks(
        GenerateWorker, model, options, payloads, engine, [len(b) for b in batches], faults=faults
    )
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
    faults: Faults | None = None,
) -> list[GuardResult]:
    """:func:`latentguard.guard.score.check` on Ray.

    Args:
        model: The model each worker loads (the one the guard was fitted on).
        guard: Path of a saved guard, readable on every worker.
        prompts: User instructions.
        engine: Ray engine options.
        batch_size: Prompts per forward; each chunk is ``engine.rows_per_task`` prompts (default one batch).
        faults: Testing only: faults to inject into the workers.

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
    outs = _run_chunks(
        CheckWorker, model, options, payloads, engine, [len(b) for b in batches], faults=faults
    )
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
    *,
    faults: Faults | None = None,
) -> Judged:
    """:func:`latentguard.judge.load_judge` ``(name).judge(...)`` on Ray, in chunks of responses.

    Args:
        name: Judge name (``learned``, ``substring``...).
        responses: Model responses.
        instructions: The instructions they answer (same length), or ``None``.
        engine: Ray engine options; ``rows_per_task`` defaults to 64 (the learned judge's batch).
        faults: Testing only: faults to inject into the workers.

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
    outs = _run_chunks(
        JudgeWorker, None, {"judge": name}, payloads, engine, [len(p) for p in payloads], faults=faults
    )
    verdicts = [
        Judgement(refused=bool(r["refused"]), score=float(r["score"]))
        for o in outs
        for r in json.loads(str(o.result))
    ]
    return Judged(verdicts, str(outs[0].meta.get("judge") or name))
