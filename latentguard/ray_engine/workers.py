"""Ray Data actors, one class per task: each loads what its task needs once, then computes chunks.

Every worker process loads its own model replica from a :class:`~latentguard.models.ModelRef`, sets
its torch thread count (it is the entry point of its process), and computes chunks with the same
functions as the local engine. The driver (:mod:`latentguard.ray_engine.driver`) picks the class:

* :class:`ExtractWorker` -- one chunk of the activation cache (reads and writes the shared cache).
* :class:`GenerateWorker` -- one local-engine batch of responses, judged when a judge is named.
* :class:`CheckWorker` -- one batch of guard verdicts.
* :class:`JudgeWorker` -- one chunk of refusal verdicts.

A chunk's result is bytes (extract) or JSON text, plus a small JSON-able ``meta`` dict.

Example:
    >>> import ray.data                                                           # doctest: +SKIP
    >>> ray.data.from_items(rows).map_batches(JudgeWorker, batch_size=1,
    ...     fn_constructor_kwargs={"model": None, "options": {"judge": "substring"},
    ...                            "threads": 1, "cache_root": None})             # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from latentguard.activations import ExtractConfig
    from latentguard.models import LoadedModel, ModelRef
    from latentguard.ray_engine.faults import Faults

__all__ = ["CheckWorker", "ChunkWorker", "ExtractWorker", "GenerateWorker", "JudgeWorker"]

logger = logging.getLogger(__name__)


def _was_restarted() -> bool:
    try:
        import ray

        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # older Ray, or not in an actor: unknown means "no"
        return False


class ChunkWorker:
    """Base of the Ray Data actors: process set-up, the batch loop, and per-chunk bookkeeping.

    Subclasses name their ``task``, load what it needs in :meth:`_setup`, and compute one chunk in
    :meth:`run_chunk`.

    Args:
        model: The model replica to load, or ``None`` (a task that needs no model).
        options: Task options (configs, guard path, judge name...).
        threads: Torch threads of this worker process.
        cache_root: The driver's cache folder (a local cluster shares it), or ``None``.
        faults: Faults to inject (tests only), or ``None``.
    """

    task: ClassVar[str] = ""

    def __init__(
        self,
        model: ModelRef | None,
        options: dict[str, Any],
        threads: int,
        cache_root: str | None,
        faults: Faults | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        if cache_root:
            os.environ["LATENTGUARD_CACHE"] = cache_root
        self.options = options
        self.faults = faults
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.restarted = _was_restarted()
        t0 = time.perf_counter()
        self.lm: LoadedModel | None = model.load() if model is not None else None
        self._setup()
        self.load_seconds = time.perf_counter() - t0
        if self.restarted:
            logger.warning("worker %s restarted (task %s); its chunks are retried", self.worker_id, self.task)

    def _setup(self) -> None:
        """Load what the task needs besides the model (once per worker process)."""

    def _model(self) -> LoadedModel:
        if self.lm is None:
            raise RuntimeError(f"the {self.task} worker was started without a model")
        return self.lm

    def run_chunk(self, chunk: int, payload: list[Any]) -> tuple[Any, dict[str, Any]]:
        """Compute one chunk.

        Args:
            chunk: The chunk index (input order).
            payload: The chunk's rows, as the driver sent them (JSON-decoded).

        Returns:
            The chunk's result (bytes or JSON text) and its ``meta`` dict.
        """
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Compute every chunk of a Ray Data batch (one chunk with ``batch_size=1``).

        Args:
            batch: Columns ``chunk`` and ``payload`` (JSON text).

        Returns:
            Columns ``chunk``, ``result``, ``meta`` (JSON text), ``worker``, ``seconds``, ``restarted``.
        """
        import numpy as np

        out: dict[str, list[Any]] = {
            k: [] for k in ("chunk", "result", "meta", "worker", "seconds", "restarted")
        }
        for chunk, payload in zip(batch["chunk"], batch["payload"], strict=True):
            ci = int(chunk)
            if self.faults is not None:
                self.faults.before_chunk(self.worker_id, ci)
            t0 = time.perf_counter()
            try:
                result, meta = self.run_chunk(ci, json.loads(str(payload)))
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


class ExtractWorker(ChunkWorker):
    """Hidden states of one chunk of the activation cache (options ``config``, ``prompts_hash``)."""

    task: ClassVar[str] = "extract"

    def run_chunk(self, chunk: int, payload: list[Any]) -> tuple[bytes, dict[str, Any]]:
        """Read the chunk from the cache, or compute and cache it.

        Args:
            chunk: The chunk index (its file in the cache).
            payload: The chunk's instructions.

        Returns:
            The activations as safetensors bytes, and the model facts plus ``from_cache``.
        """
        from safetensors.torch import save as save_bytes

        from latentguard.activations import (
            cache_key_for_hash,
            chunk_path,
            compute_chunk,
            load_chunk,
        )
        from latentguard.io import atomic_save_tensors
        from latentguard.positions import locate_for

        lm = self._model()
        instructions = [str(p) for p in payload]
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
                atomic_save_tensors({"activations": acts}, path, metadata={"key": key, "chunk": str(chunk)})
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


class GenerateWorker(ChunkWorker):
    """Responses to one batch of instructions (options ``config``, ``judge``: a name or ``None``)."""

    task: ClassVar[str] = "generate"

    def _setup(self) -> None:
        self.judge: Any = None
        if self.options.get("judge"):
            from latentguard.judge import load_judge

            self.judge = load_judge(self.options["judge"])

    def run_chunk(self, chunk: int, payload: list[Any]) -> tuple[str, dict[str, Any]]:
        """Generate (and judge) the responses of one batch.

        Args:
            chunk: The chunk index (unused: generation does not depend on it).
            payload: The batch's instructions.

        Returns:
            JSON rows ``{"response"[, "refused", "score"]}``, and the judge's name.
        """
        from latentguard.generation import generate as local_generate

        instructions = [str(p) for p in payload]
        responses = local_generate(self._model(), instructions, self.options["config"])
        rows: list[dict[str, Any]] = [{"response": r} for r in responses]
        if self.judge is not None:
            for row, v in zip(rows, self.judge.judge(responses, instructions), strict=True):
                row.update(refused=v.refused, score=v.score)
        return json.dumps(rows), {"judge": getattr(self.judge, "name", None)}


class CheckWorker(ChunkWorker):
    """Guard verdicts on one batch of prompts (options ``guard``: a saved guard's path, ``batch_size``)."""

    task: ClassVar[str] = "check"

    def _setup(self) -> None:
        from latentguard.guard.fit import LatentGuard

        self.guard = LatentGuard.load(self.options["guard"], self.lm)

    def run_chunk(self, chunk: int, payload: list[Any]) -> tuple[str, dict[str, Any]]:
        """Check one batch of prompts with the guard.

        Args:
            chunk: The chunk index (unused).
            payload: The batch's prompts.

        Returns:
            JSON rows ``{"harmful", "score", "layer_scores": [[layer, score], ...]}``, and ``{}``.
        """
        from latentguard.guard.score import check as local_check

        prompts = [str(p) for p in payload]
        results = local_check(self._model(), self.guard, prompts, batch_size=self.options["batch_size"])
        rows = [
            {
                "harmful": r.harmful,
                "score": r.score,
                "layer_scores": [[k, v] for k, v in r.layer_scores.items()],
            }
            for r in results
        ]
        return json.dumps(rows), {}


class JudgeWorker(ChunkWorker):
    """Refusal verdicts on one chunk of responses (option ``judge``: a judge name; no model)."""

    task: ClassVar[str] = "judge"

    def _setup(self) -> None:
        from latentguard.judge import load_judge

        self.judge: Any = load_judge(self.options["judge"])

    def run_chunk(self, chunk: int, payload: list[Any]) -> tuple[str, dict[str, Any]]:
        """Judge one chunk of ``[response, instruction or None]`` pairs.

        Args:
            chunk: The chunk index (unused).
            payload: The chunk's ``[response, instruction]`` pairs.

        Returns:
            JSON rows ``{"refused", "score"}``, and the judge's name.
        """
        responses = [str(p[0]) for p in payload]
        instructions = [str(p[1]) for p in payload] if all(p[1] is not None for p in payload) else None
        verdicts = self.judge.judge(responses, instructions)
        return json.dumps([{"refused": v.refused, "score": v.score} for v in verdicts]), {
            "judge": self.judge.name
        }
