"""Latent Guard cost: standalone latency/throughput, fused-guard overhead, server throughput.

On the same prompts, in one run:
* per-prompt latency and prompts/s at batch 1 and batch 32 for the Latent Guard (``check``, which
  runs the template prefix once per call), the self-check baseline (reply-inversion prompt, one
  forward with the LM head; with and without the same prefix cache) and the MiniLM text
  classifier. The speed-up is taken against the faster self-check;
* guarded generation (guard read from the same prefill) against plain generation, as the median
  of paired runs in alternating order;
* the HTTP server (uvicorn on loopback): 200 requests from 8 concurrent clients, each answer
  compared with the guard's own ``check`` of the same prompt;
* chat completions (``chat``): the latency of ``POST /v1/chat/completions`` with the guard fused
  against the same server with the guard off (``--no-guard``; paired requests in alternating order,
  policy ``allow`` so both generate the same tokens), ``/v1/moderations`` against ``/v1/classify``
  throughput with 8 concurrent clients, and the time to the first streamed token against the total.

* the audit log's cost (``audit``): classify throughput of the same server, 8 concurrent clients,
  without the audit log, with ``--audit-db sqlite:///...`` and with PostgreSQL
  (``--audit-postgres URL``, default ``$LATENTGUARD_TEST_POSTGRES_URL``), in rounds whose order
  rotates; the cost is the median throughput ratio.

    python benchmarks/guard.py [--model organism] [--n 64] [--guard runs/guard-eval/guard]
        [--parts standalone,fused,server,chat,audit] [--audit-rounds 5] [--audit-postgres URL]

Without ``--guard`` it fits a probe guard on the built-in sets first.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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


def standalone(
    lm: Any, guard: Any, prompts: list[str], train: tuple[list[str], list[str]], repeats: int
) -> None:
    """prompts/s at batch 1 and 32: the Latent Guard, the self-check and the text classifier."""
    harmful, harmless = train
    inv = locate_many(lm.tokenizer, prompts, question=inversion_questions()[0])
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
        for _ in range(repeats):  # interleaved, medians
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

    def speedup(row: dict[str, float]) -> float:  # against the faster of the two self-checks
        return min(row["self_check"], row["self_check_prefix"]) / row["latent_guard"]

    emit(f"guard_vs_selfcheck_speedup={speedup(rows[1]):.3f}")
    emit(f"guard_vs_selfcheck_speedup_batch1={speedup(rows[0]):.3f}")
    emit(f"prefix_cache_speedup_batch1={rows[0]['latent_guard_no_prefix'] / rows[0]['latent_guard']:.3f}")
    emit(f"prefix_cache_speedup_batch32={rows[1]['latent_guard_no_prefix'] / rows[1]['latent_guard']:.3f}")


def fused(lm: Any, guard: Any, prompts: list[str], max_new_tokens: int, repeats: int) -> None:
    """Guarded generation (the guard read from the same prefill) against plain generation."""
    pos = locate_many(lm.tokenizer, prompts[:16])
    generate_from_positions(lm, pos[:2], 2)  # warm-up
    plain_times, fused_times = [], []

    def plain_run() -> float:
        return float(timed(generate_from_positions, lm, pos, max_new_tokens, 8)[0])

    def fused_run() -> float:
        return float(
            timed(
                guarded_generate,
                lm,
                guard,
                prompts[:16],
                policy="allow",
                max_new_tokens=max_new_tokens,
                batch_size=8,
            )[0]
        )

    for r in range(repeats):
        # pairs in alternating order (ABBA), so a drift in CPU speed does not favour either side
        if r % 2 == 0:
            plain_times.append(plain_run())
            fused_times.append(fused_run())
        else:
            fused_times.append(fused_run())
            plain_times.append(plain_run())
    ratios = [f / p - 1 for p, f in zip(plain_times, fused_times, strict=True)]
    overhead = float(np.median(ratios))
    emit(
        f"generation of 16 prompts x {max_new_tokens} tokens: plain {np.median(plain_times):.2f} s, "
        f"guarded (one prefill) {np.median(fused_times):.2f} s, overhead {100 * overhead:+.1f}% "
        f"(median of {len(ratios)} paired runs, ABBA order; per pair {[round(x, 3) for x in ratios]})"
    )
    # The wall-clock ratio is noisy (single runs vary by +-10% here); the guard's own work inside one
    # fused call, by profiler, is the deterministic part of the overhead.
    prof = cProfile.Profile()
    prof.enable()
    t0 = time.perf_counter()
    guarded_generate(lm, guard, prompts[:16], policy="allow", max_new_tokens=max_new_tokens, batch_size=8)
    total = time.perf_counter() - t0
    prof.disable()
    guard_work = sum(
        ct
        for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in pstats.Stats(prof).stats.items()  # type: ignore[attr-defined]
        if (file.endswith("guarded.py") and name in ("hook", "_post", "register", "remove", "stacked"))
        or (file.endswith("score.py") and name in ("results_from_states", "templated"))
    )
    emit(
        f"guard work inside one fused call (profiled: capture hooks, scoring, templating): "
        f"{1000 * guard_work:.1f} ms of {total:.2f} s = {100 * guard_work / total:.2f}%"
    )
    emit(f"fused_guard_overhead={overhead:.4f}")
    emit(f"fused_guard_work_fraction={guard_work / total:.5f}")


def server(lm: Any, guard: Any, mixed: list[str]) -> None:
    """The HTTP server (uvicorn on loopback): 200 requests from 8 concurrent clients."""
    import httpx
    import uvicorn

    from latentguard.guard.serve import ServeConfig, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(LatentGuardBackend(lm, guard), ServeConfig(port=port))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)

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
    srv.should_exit = True
    th.join(timeout=10)
    emit(
        f"server: {n_clients} clients x {per_client} requests: {len(ok) / t_srv:,.1f} requests/s, "
        f"{sum(ok)}/{len(ok)} answered 200 with the same verdict as check()"
    )


def start_server(app: Any) -> tuple[str, Any]:
    """Run ``app`` with uvicorn on a free loopback port; returns its URL and a function that stops it."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)

    def stop() -> None:
        srv.should_exit = True
        th.join(timeout=10)

    return f"http://127.0.0.1:{port}", stop


def chat(lm: Any, guard: Any, prompts: list[str], max_new_tokens: int, repeats: int) -> None:
    """Chat completions: guard fused vs off, moderations vs classify (8 clients), time to first token."""
    import httpx

    from latentguard.guard.serve import ServeConfig, create_app
    from latentguard.guard.types import Policy

    config = ServeConfig(
        policy=Policy.ALLOW, max_new_tokens_limit=max(512, max_new_tokens), request_timeout_s=600
    )
    on_url, stop_on = start_server(create_app(LatentGuardBackend(lm, guard), config))
    off_url, stop_off = start_server(create_app(LatentGuardBackend(lm, guard, guard_enabled=False), config))
    body = {"model": "m", "max_tokens": max_new_tokens, "temperature": 0}
    try:
        with httpx.Client(timeout=300) as c:

            def ask(url: str, p: str) -> tuple[float, dict[str, Any]]:
                t0 = time.perf_counter()
                r = c.post(
                    f"{url}/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": p}]}
                )
                return time.perf_counter() - t0, r.json()

            ask(on_url, prompts[0]), ask(off_url, prompts[0])  # warm-up
            ratios, same, t_on, t_off = [], 0, [], []
            for k in range(repeats):
                for i, p in enumerate(prompts):
                    first, second = (on_url, off_url) if (i + k) % 2 == 0 else (off_url, on_url)
                    a, ra = ask(first, p)
                    b, rb = ask(second, p)
                    on, off = (a, b) if first == on_url else (b, a)
                    r_on, r_off = (ra, rb) if first == on_url else (rb, ra)
                    ratios.append(on / off)
                    t_on.append(on)
                    t_off.append(off)
                    same += (
                        r_on["choices"][0]["message"]["content"] == r_off["choices"][0]["message"]["content"]
                    )
            overhead = float(np.median(ratios)) - 1
            emit(
                f"chat completions, {len(ratios)} paired requests of {max_new_tokens} tokens: median "
                f"{1000 * np.median(t_on):.0f} ms with the guard fused, {1000 * np.median(t_off):.0f} ms with "
                f"--no-guard; overhead {100 * overhead:+.2f}% (median of paired ratios); {same}/{len(ratios)} "
                "identical answers"
            )
            emit(f"chat_guard_overhead={overhead:.4f}")

            ttft, total = [], []
            for p in prompts:
                t0 = time.perf_counter()
                first_at = None
                payload = {**body, "stream": True, "messages": [{"role": "user", "content": p}]}
                with c.stream("POST", f"{on_url}/v1/chat/completions", json=payload) as r:
                    for line in r.iter_lines():
                        if first_at is None and line.startswith("data: {") and '"content": "' in line:
                            first_at = time.perf_counter() - t0
                total.append(time.perf_counter() - t0)
                ttft.append(first_at if first_at is not None else total[-1])
            emit(
                f"streaming: median time to first token {1000 * np.median(ttft):.0f} ms of "
                f"{1000 * np.median(total):.0f} ms total ({100 * np.median(ttft) / np.median(total):.1f}%)"
            )

        n_clients, per_client = 8, 25

        async def run(path: str, key: str) -> float:
            async def client(cid: int) -> None:
                async with httpx.AsyncClient(base_url=on_url, timeout=300) as ac:
                    for k in range(per_client):
                        p = prompts[(cid * per_client + k) % len(prompts)]
                        r = await ac.post(path, json={key: [p]})
                        assert r.status_code == 200, r.text

            t0 = time.perf_counter()
            await asyncio.gather(*(client(i) for i in range(n_clients)))
            return n_clients * per_client / (time.perf_counter() - t0)

        mod = asyncio.run(run("/v1/moderations", "input"))
        cls = asyncio.run(run("/v1/classify", "prompts"))
        emit(
            f"moderations: {n_clients} clients x {per_client} requests: {mod:,.1f} requests/s against "
            f"{cls:,.1f} for /v1/classify ({mod / cls:.2f}x)"
        )
    finally:
        stop_on()
        stop_off()


def _throughput(
    lm: Any, guard: Any, prompts: list[str], audit_db: str | None, n_clients: int, per_client: int
) -> tuple[float, dict[str, float]]:
    """Classify requests/s of one fresh server (8 clients, one prompt per request), with or without audit."""
    import httpx
    import uvicorn

    from latentguard.guard.serve import ServeConfig, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(LatentGuardBackend(lm, guard), ServeConfig(port=port, audit_db=audit_db))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)

    async def client(cid: int, c: httpx.AsyncClient, ok: list[bool]) -> None:
        for k in range(per_client):
            r = await c.post(
                "/v1/classify", json={"prompts": [prompts[(cid * per_client + k) % len(prompts)]]}
            )
            ok.append(r.status_code == 200 and bool(r.headers.get("x-request-id")))

    async def load_test() -> tuple[float, list[bool], str]:
        ok: list[bool] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            await c.post("/v1/classify", json={"prompts": [prompts[0]]})  # warm-up
            t0 = time.perf_counter()
            await asyncio.gather(*(client(i, c, ok) for i in range(n_clients)))
            elapsed = time.perf_counter() - t0
            return elapsed, ok, (await c.get("/metrics")).text

    elapsed, ok, metrics_text = asyncio.run(load_test())
    audit = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in metrics_text.splitlines()
        if line.startswith(("latentguard_audit_rows_total ", "latentguard_audit_commit_duration_seconds_"))
    }
    srv.should_exit = True
    th.join(timeout=10)
    if not all(ok):
        raise RuntimeError(f"{len(ok) - sum(ok)} of {len(ok)} requests failed (audit_db={audit_db})")
    return len(ok) / elapsed, audit


def audit_cost(lm: Any, guard: Any, prompts: list[str], rounds: int, postgres: str | None) -> None:
    """Classify throughput without and with the audit log (SQLite, PostgreSQL), in rotating order."""
    tmp = Path(tempfile.mkdtemp(prefix="latentguard-audit-bench-"))
    configs: dict[str, str | None] = {"none": None, "sqlite": f"sqlite:///{tmp / 'audit.db'}"}
    if postgres:
        configs["postgres"] = postgres
    else:
        emit("audit: no PostgreSQL URL (--audit-postgres or LATENTGUARD_TEST_POSTGRES_URL); SQLite only")
    n_clients, per_client = 8, 25
    runs: dict[str, list[float]] = {k: [] for k in configs}
    commits: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
    names = list(configs)
    _throughput(lm, guard, prompts, None, n_clients, 4)  # warm-up (first forwards, allocator)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            rate, audit = _throughput(lm, guard, prompts, configs[name], n_clients, per_client)
            runs[name].append(rate)
            commits[name].append(audit)
    base = float(np.median(runs["none"]))
    emit(
        f"audit: {n_clients} clients x {per_client} classify requests, {rounds} rounds (rotating order), "
        f"median requests/s: "
        + ", ".join(f"{k} {np.median(v):,.1f} (runs {[round(x, 1) for x in v]})" for k, v in runs.items())
    )
    for name in names[1:]:
        rows = sum(a.get("latentguard_audit_rows_total", 0.0) for a in commits[name])
        n_commits = sum(a.get("latentguard_audit_commit_duration_seconds_count", 0.0) for a in commits[name])
        seconds = sum(a.get("latentguard_audit_commit_duration_seconds_sum", 0.0) for a in commits[name])
        emit(
            f"audit {name}: {rows:.0f} rows in {n_commits:.0f} commits ({rows / max(n_commits, 1):.1f} rows per "
            f"commit), {1000 * seconds / max(n_commits, 1):.2f} ms per commit, "
            f"{1000 * seconds / max(rows, 1):.3f} ms of commit per decision"
        )
        # the cost per round (against that round's no-audit run) and of the medians
        paired = [a / b for a, b in zip(runs[name], runs["none"], strict=True)]
        emit(
            f"audit_{name}_throughput_ratio={np.median(runs[name]) / base:.3f} "
            f"(median of per-round ratios {np.median(paired):.3f}; cost {100 * (1 - np.median(runs[name]) / base):+.1f}%)"
        )


PARTS = ("standalone", "fused", "server", "chat", "audit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="organism")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each standalone measurement")
    ap.add_argument(
        "--generation-repeats", type=int, default=11, help="paired plain/fused generation runs (median ratio)"
    )
    ap.add_argument("--guard", default=None, help="a saved guard (e.g. the one `guard eval` writes)")
    ap.add_argument("--chat-n", type=int, default=16, help="prompts of the chat-completions part")
    ap.add_argument("--chat-repeats", type=int, default=2, help="rounds of paired chat requests")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--audit-rounds", type=int, default=5, help="rounds of the audit-cost measurement")
    ap.add_argument(
        "--audit-postgres",
        default=os.environ.get("LATENTGUARD_TEST_POSTGRES_URL"),
        help="PostgreSQL URL for the audit-cost measurement (default $LATENTGUARD_TEST_POSTGRES_URL)",
    )
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    torch.manual_seed(0)
    lm = load(args.model)
    harmful = [e.instruction for e in builtin("harmful")]
    harmless = [e.instruction for e in builtin("harmless")] + [e.instruction for e in builtin("xstest_like")]
    if args.guard:
        guard = LatentGuard.load(args.guard, lm=lm)
    else:
        guard = fit_guard(lm, harmful[:120], harmless[:120], GuardConfig.only_given(method="probe"))
    emit(f"guard: method={guard.method} layers={guard.layers} (deepest {max(guard.layers)} of {lm.n_layers})")
    prompts = shared_instructions("harmless_alpaca_val", args.n) or harmless[: args.n]
    prompts = prompts[: args.n]
    if "standalone" in parts:
        standalone(lm, guard, prompts, (harmful, harmless), args.repeats)
    if "fused" in parts:
        fused(lm, guard, prompts, args.max_new_tokens, args.generation_repeats)
    if "server" in parts:
        server(lm, guard, prompts + harmful[:32])
    if "chat" in parts:
        chat(lm, guard, prompts[: args.chat_n], args.max_new_tokens, args.chat_repeats)
    if "audit" in parts:
        audit_cost(lm, guard, prompts + harmful[:32], args.audit_rounds, args.audit_postgres)


if __name__ == "__main__":
    main()
