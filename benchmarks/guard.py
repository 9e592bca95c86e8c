"""Latent Guard cost: standalone latency/throughput, fused-guard overhead, server throughput.

On the same prompts, in one run:
* per-prompt latency and prompts/s at batch 1 and batch 32 for the Latent Guard (``check``, which
  runs the template prefix once per call), the self-check baseline (reply-inversion prompt, one
  forward with the LM head; with and without the same prefix cache) and the MiniLM text
  classifier. The speed-up is taken against the faster self-check;
* guarded generation (guard read from the same prefill) against plain generation;
* the HTTP server (uvicorn on loopback): 200 requests from 8 concurrent clients, each answer
  compared with the guard's own ``check`` of the same prompt.

    python benchmarks/guard.py [--model organism] [--n 64] [--guard runs/guard-eval/guard]

Without ``--guard`` it fits a probe guard on the built-in sets first.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
import time

import numpy as np
import torch
from _common import emit, shared_instructions

from latentguard.data import builtin, inversion_questions
from latentguard.generation import first_token_logits, generate_from_positions
from latentguard.guard.evaluate import text_classifier_baseline
from latentguard.guard.fit import GuardConfig, LatentGuard, fit_guard
from latentguard.guard.guarded import LatentGuardBackend, guarded_generate
from latentguard.guard.score import check
from latentguard.models import load
from latentguard.positions import locate_many
from latentguard.prefix import build_prefix_cache


def timed(fn, *args, repeat: int = 1, **kw):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn(*args, **kw)
    return (time.perf_counter() - t0) / repeat, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="organism")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each measurement (median)")
    ap.add_argument("--guard", default=None, help="a saved guard (e.g. the one `guard eval` writes)")
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load(args.model)
    harmful = [e.instruction for e in builtin("harmful")]
    harmless = [e.instruction for e in builtin("harmless")] + [e.instruction for e in builtin("xstest_like")]
    if args.guard:
        guard = LatentGuard.load(args.guard, lm=lm)
    else:
        guard = fit_guard(lm, harmful[:120], harmless[:120], GuardConfig(method="probe"))
    emit(f"guard: method={guard.method} layers={guard.layers} (deepest {max(guard.layers)} of {lm.n_layers})")
    prompts = shared_instructions("harmless_alpaca_val", args.n) or harmless[: args.n]
    prompts = prompts[: args.n]

    # standalone guards
    q = inversion_questions()[0]
    inv = locate_many(lm.tokenizer, prompts, question=q)
    text = text_classifier_baseline(harmful[:120] + harmless[:120], np.array([1] * 120 + [0] * 120))
    rows = []
    for bs in (1, 32):
        runs: dict[str, list[float]] = {
            "latent_guard": [],
            "latent_guard_no_prefix": [],
            "self_check": [],
            "self_check_prefix": [],
            "text_classifier": [],
        }
        for _ in range(args.repeats):  # interleaved, medians (as for generation below)
            runs["latent_guard"].append(timed(check, lm, guard, prompts, batch_size=bs)[0])
            runs["latent_guard_no_prefix"].append(timed(check, lm, guard, prompts, bs, prefix=False)[0])
            runs["self_check"].append(timed(first_token_logits, lm, inv, bs)[0])
            # the self-check given the same prefix cache (built inside the timing, as check() does)
            runs["self_check_prefix"].append(
                timed(lambda b=bs: first_token_logits(lm, inv, b, prefix=build_prefix_cache(lm)))[0]
            )
            if text is not None:
                runs["text_classifier"].append(timed(text.score, prompts)[0])
        line: dict[str, float] = {"batch": bs}
        line.update({k: float(np.median(v)) for k, v in runs.items() if v})
        rows.append(line)
        emit(
            f"batch={bs}: "
            + "  ".join(
                f"{k}: {len(prompts) / v:,.1f} prompts/s ({1000 * v / len(prompts):.1f} ms/prompt)"
                for k, v in line.items()
                if k != "batch"
            )
        )

    def speedup(row: dict[str, float]) -> float:
        return min(row["self_check"], row["self_check_prefix"]) / row["latent_guard"]

    # fused guard overhead in generation
    pos = locate_many(lm.tokenizer, prompts[:16])
    generate_from_positions(lm, pos[:2], 2)  # warm-up
    plain_times, fused_times = [], []
    for _ in range(args.repeats):  # interleaved, medians: one slow run does not decide the ratio
        t_plain, _ = timed(generate_from_positions, lm, pos, args.max_new_tokens, 8)
        t_fused, _ = timed(
            guarded_generate,
            lm,
            guard,
            prompts[:16],
            policy="allow",
            max_new_tokens=args.max_new_tokens,
            batch_size=8,
        )
        plain_times.append(t_plain)
        fused_times.append(t_fused)
    t_plain, t_fused = float(np.median(plain_times)), float(np.median(fused_times))
    overhead = t_fused / t_plain - 1
    emit(
        f"generation of 16 prompts x {args.max_new_tokens} tokens: plain {t_plain:.2f} s, "
        f"guarded (one prefill) {t_fused:.2f} s, overhead {100 * overhead:+.1f}% "
        f"(median of {args.repeats}; per run {[round(f / p - 1, 3) for p, f in zip(plain_times, fused_times, strict=True)]})"
    )

    # server throughput with 8 concurrent clients
    import httpx
    import uvicorn

    from latentguard.guard.serve import ServeConfig, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(LatentGuardBackend(lm, guard), ServeConfig(port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.05)

    mixed = prompts + harmful[:32]
    expected = {p: r.harmful for p, r in zip(mixed, check(lm, guard, mixed), strict=True)}
    n_clients, per_client = 8, 25

    async def client(cid: int, n: int, ok: list[bool]) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            for k in range(n):
                p = mixed[(cid * n + k) % len(mixed)]
                r = await c.post("/v1/classify", json={"prompts": [p]})
                item = r.json()["results"][0] if r.status_code == 200 else {}
                ok.append(item.get("harmful") == expected[p] and item.get("error") is None)

    async def load_test() -> tuple[float, list[bool]]:
        ok: list[bool] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, per_client, ok) for i in range(n_clients)))
        return time.perf_counter() - t0, ok

    t_srv, ok = asyncio.run(load_test())
    server.should_exit = True
    th.join(timeout=10)
    emit(
        f"server: {n_clients} clients x {per_client} requests: {len(ok) / t_srv:,.1f} requests/s, "
        f"{sum(ok)}/{len(ok)} answered 200 with the same verdict as check()"
    )
    emit(f"fused_guard_overhead={overhead:.4f}")
    emit(f"guard_vs_selfcheck_speedup={speedup(rows[1]):.3f}")
    emit(f"guard_vs_selfcheck_speedup_batch1={speedup(rows[0]):.3f}")
    emit(f"prefix_cache_speedup_batch1={rows[0]['latent_guard_no_prefix'] / rows[0]['latent_guard']:.3f}")
    emit(f"prefix_cache_speedup_batch32={rows[1]['latent_guard_no_prefix'] / rows[1]['latent_guard']:.3f}")


if __name__ == "__main__":
    main()
