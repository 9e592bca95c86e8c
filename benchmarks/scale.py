"""Ray engine overhead against the local engine at equal threads, plus a paper estimate at 70B scale.

On this machine, with the embedded default model, extracts N prompts (all layers, t_inst and
t_post_inst, no cache) three ways, ``--repeats`` times in alternation:

* local engine, 2 torch threads (the model is loaded and warmed in this process);
* Ray engine, 2 workers x 1 thread;
* Ray engine, 1 worker x 2 threads.

The local Ray cluster (2 CPUs, loopback) is started once; its start-up is reported on its own.
``ray_s`` is the engine call, end to end: worker processes start, import torch, load their replica,
compute, and ship the chunks back. ``busy_s`` is the longest per-worker sum of chunk compute times
(what the workers spent on the prompts). Ratios are Ray / local:

* ``overhead_end_to_end`` = ray_s / (local load + local extract);
* ``overhead_compute`` = busy_s / local extract.

It then prints a PAPER ESTIMATE (arithmetic from stated assumptions, not a measurement) for 100k
prompts through a Llama-2-70B-shaped model on 8 GPUs. Last line: ``ray_overhead_ratio=<float>``
(median end-to-end ratio at 1 worker x 2 threads).

    python benchmarks/scale.py [--n 128] [--chunk-size 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from _common import emit, shared_instructions

from latentguard.activations import ExtractConfig, extract
from latentguard.data import builtin
from latentguard.models import ModelRef, load
from latentguard.ray_engine import ChunkReport, EngineConfig, ray_cluster
from latentguard.ray_engine import extract as ray_extract


@dataclass
class Run:
    """One timed extraction."""

    label: str
    seconds: float
    busy: float
    ratio_end_to_end: float
    ratio_compute: float
    max_abs_diff: float


def instructions(n: int) -> tuple[list[str], str]:
    insts = shared_instructions("harmless_alpaca_val", n)
    if insts is not None and len(insts) >= n:
        return insts[:n], "shared/harmless_alpaca_val"
    pool = [e.instruction for name in ("harmless", "xstest_like", "harmful") for e in builtin(name)]
    return [
        pool[i % len(pool)] + ("" if i < len(pool) else f" ({i // len(pool)})") for i in range(n)
    ], "builtin"


def paper_estimate() -> None:
    """Arithmetic for 100k prompts, a 70B model (Llama-2-70B shape) and 8 H100-class GPUs."""
    n_prompts, tokens, params = 100_000, 100, 70e9
    layers, d_model, d_ff, positions = 80, 8192, 28672, 2
    peak, mfu, gpus, gpu_mem = 1000e12, 0.40, 8, 80e9
    effective = peak * mfu
    total_tokens = n_prompts * tokens
    dense_flops = 2 * params * total_tokens
    attn_flops = n_prompts * layers * 4 * tokens**2 * d_model
    flops = dense_flops + attn_flops
    weights_bf16 = params * 2
    per_replica_gpus = 2  # 140 GB of weights do not fit one 80 GB GPU
    replicas = gpus // per_replica_gpus
    act_bf16 = n_prompts * (layers + 1) * positions * d_model * 2
    act_fp32 = act_bf16 * 2
    chunk_fp32 = 128 * (layers + 1) * positions * d_model * 4
    t_ideal = flops / (effective * gpus)
    t_naive_pipeline = flops / (
        effective * replicas
    )  # device_map="auto": one GPU of a replica busy at a time
    t_load = weights_bf16 / 2e9  # per replica, 2 GB/s from local NVMe, replicas in parallel
    t_write = act_fp32 / 2e9
    t_ship = act_fp32 / 1.25e9  # every chunk to one driver over 10 Gbit/s
    batch_tokens = 32 * tokens
    emit("=" * 100)
    emit("PAPER ESTIMATE (arithmetic from the assumptions below, not a measurement)")
    emit(
        f"assumptions: {n_prompts:,} prompts x ~{tokens} tokens (templated), Llama-2-70B shape "
        f"({layers} layers, d={d_model}, d_ff={d_ff}, {params / 1e9:.0f}e9 params), bf16, {gpus} H100-class GPUs "
        f"({gpu_mem / 1e9:.0f} GB, {peak / 1e12:.0f} TFLOP/s dense bf16 peak, {mfu:.0%} MFU -> "
        f"{effective / 1e12:.0f} TFLOP/s effective each), prefill only (no LM head, no generation)"
    )
    emit(
        f"FLOPs: 2 x params x tokens = 2 x {params:.0e} x {total_tokens:.0e} = {dense_flops:.2e}; "
        f"attention scores {attn_flops:.1e} ({attn_flops / dense_flops:.1%}); total {flops:.2e}"
    )
    emit(
        f"weights: {weights_bf16 / 1e9:.0f} GB in bf16 -> one replica per {per_replica_gpus} GPUs "
        f"({per_replica_gpus * gpu_mem / 1e9:.0f} GB; {replicas} replicas = --workers {replicas} "
        f"--gpus-per-worker {per_replica_gpus} --device-map auto), or 1 GPU per replica with --load-in-bits 8 "
        f"(70 GB, tight; bitsandbytes int8 matmuls are slower); per-forward activations at batch 32 x {tokens} "
        f"tokens: {batch_tokens * d_ff * 2 / 1e6:.0f} MB for the MLP, no KV cache"
    )
    emit(
        f"activations stored: {n_prompts:,} x {layers + 1} layers x {positions} positions x {d_model} x 2 bytes "
        f"= {act_bf16 / 1e9:.0f} GB in bf16; latentguard stores float32: {act_fp32 / 1e9:.0f} GB "
        f"({chunk_fp32 / 1e9:.2f} GB per 128-prompt cache chunk). A driver cannot hold that in memory: "
        f"extract a subset of --layers, or read the chunk cache the workers write"
    )
    emit(
        f"time: compute {t_ideal / 60:.0f} min if all {gpus} GPUs work at once (tensor parallel; latentguard has none); "
        f"{t_naive_pipeline / 60:.0f} min with device_map='auto' ({replicas} replicas, layers split over "
        f"{per_replica_gpus} GPUs that run in turn); + ~{t_load / 60:.1f} min loading weights (2 GB/s)"
    )
    emit(
        f"data movement: writing {act_fp32 / 1e9:.0f} GB of float32 chunks at 2 GB/s takes {t_write / 60:.0f} min "
        f"(overlaps compute); shipping them all to one driver over 10 Gbit/s takes {t_ship / 60:.0f} min, "
        f"as long as the compute: at this scale keep the chunks on shared storage or store fewer layers"
    )
    emit("=" * 100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--chunk-size", type=int, default=16, help="prompts per chunk (Ray task)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2, help="total threads, the same for every engine")
    args = ap.parse_args()
    insts, source = instructions(args.n)
    cfg = ExtractConfig(
        batch_size=args.batch_size, chunk_size=args.chunk_size, use_cache=False, progress=False
    )
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load(args.model)
    t_load = time.perf_counter() - t0
    extract(lm, insts[: args.batch_size], cfg)  # warm-up
    emit(
        f"model={args.model} n={len(insts)} source={source} batch={args.batch_size} chunk={args.chunk_size} "
        f"threads={args.threads} cores={os.cpu_count()} loadavg_start={os.getloadavg()[0]:.2f}"
    )
    layouts = [
        ("ray 2 workers x 1 thread", 2, max(1, args.threads // 2)),
        ("ray 1 worker x 2 threads", 1, args.threads),
    ]
    runs: dict[str, list[Run]] = defaultdict(list)
    t0 = time.perf_counter()
    with ray_cluster(EngineConfig(workers=2, threads=max(1, args.threads // 2), progress=False)):
        emit(f"ray cluster start: {time.perf_counter() - t0:.1f} s (once, not in the ratios)")
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            ref = extract(lm, insts, cfg)
            t_local = time.perf_counter() - t0
            runs["local"].append(Run("local", t_local, t_local, 1.0, 1.0, 0.0))
            emit(f"[{rep}] local {args.threads} threads: extract {t_local:.2f} s (+ load {t_load:.2f} s)")
            for label, workers, threads in layouts:
                reports: list[ChunkReport] = []
                engine = EngineConfig(workers=workers, threads=threads, progress=False)
                t0 = time.perf_counter()
                got = ray_extract(ModelRef(args.model), insts, cfg, engine, on_chunk=reports.append)
                t_ray = time.perf_counter() - t0
                per_worker: dict[str, float] = defaultdict(float)
                for r in reports:
                    per_worker[r.worker] += r.seconds
                busy = max(per_worker.values())
                diff = float((got.activations - ref.activations).abs().max())
                run = Run(label, t_ray, busy, t_ray / (t_load + t_local), busy / t_local, diff)
                runs[label].append(run)
                emit(
                    f"[{rep}] {label}: {t_ray:.2f} s end to end, workers busy {busy:.2f} s "
                    f"(per worker: {', '.join(f'{v:.2f}' for v in per_worker.values())}); "
                    f"ratio end-to-end {run.ratio_end_to_end:.3f}, compute {run.ratio_compute:.3f}; "
                    f"max|diff| vs local {diff:.2e}"
                )
    emit(f"loadavg_end={os.getloadavg()[0]:.2f} (other jobs on this machine make the timings noisy)")
    for label, _, _ in layouts:
        rs = runs[label]
        emit(
            f"summary {label}: median end-to-end ratio {statistics.median(r.ratio_end_to_end for r in rs):.3f}, "
            f"median compute ratio {statistics.median(r.ratio_compute for r in rs):.3f}, "
            f"max|diff| {max(r.max_abs_diff for r in rs):.2e}"
        )
    paper_estimate()
    emit(f"ray_overhead_ratio={statistics.median(r.ratio_end_to_end for r in runs[layouts[1][0]]):.3f}")


if __name__ == "__main__":
    main()
