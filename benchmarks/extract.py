"""Extraction throughput against a plain ``model(**batch)`` forward on the same batches.

Runs on the embedded default model (or ``--model gemma3-270m``, whose 262k-wide LM head the extraction
skips) with 512 instructions from ../shared/data/harmless_alpaca_val.jsonl
(or the built-in sets when that folder is absent). Last line: ``extract_vs_forward_speedup=<float>``.

    python benchmarks/extract.py [--model default] [--n 512] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import emit, peak_rss_mib, shared_instructions

from latentguard.activations import ExtractConfig, extract, pad_batch
from latentguard.data import builtin
from latentguard.models import load
from latentguard.positions import locate_many


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    torch.manual_seed(0)
    insts = shared_instructions("harmless_alpaca_val", args.n)
    source = "shared/harmless_alpaca_val"
    if insts is None:
        insts = [e.instruction for name in ("harmless", "xstest_like", "harmful") for e in builtin(name)][
            : args.n
        ]
        source = "builtin"
    lm = load(args.model)
    prompts = locate_many(lm.tokenizer, insts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    batches = [order[s : s + args.batch_size] for s in range(0, len(order), args.batch_size)]
    n_tokens = sum(len(p) for p in prompts)
    emit(
        f"model={args.model} n={len(insts)} source={source} prompt_tokens={n_tokens} batch={args.batch_size}"
    )

    # warm-up both paths once
    with torch.inference_mode():
        b = pad_batch([prompts[i].input_ids for i in batches[-1]], lm.tokenizer.pad_token_id)
        lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)

    t0 = time.perf_counter()
    with torch.inference_mode():
        for idx in batches:
            b = pad_batch([prompts[i].input_ids for i in idx], lm.tokenizer.pad_token_id)
            lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
    t_forward = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LATENTGUARD_CACHE"] = tmp
        cfg = ExtractConfig(batch_size=args.batch_size, chunk_size=len(insts), progress=False)
        t0 = time.perf_counter()
        acts = extract(lm, insts, cfg)
        t_extract = time.perf_counter() - t0
        cached_bytes = sum(f.stat().st_size for f in Path(tmp).rglob("*.safetensors"))
        t0 = time.perf_counter()
        extract(lm, insts, cfg)
        t_cached = time.perf_counter() - t0

    emit(f"plain_forward: {n_tokens / t_forward:,.0f} prompt tok/s ({t_forward:.2f} s)")
    emit(
        f"extract (all {lm.n_layers + 1} layers x 2 positions): {n_tokens / t_extract:,.0f} prompt tok/s ({t_extract:.2f} s)"
    )
    emit(f"extract, second identical call (cache): {t_cached:.3f} s")
    emit(
        f"activation shape={list(acts.activations.shape)} bytes_per_cached_example={cached_bytes / len(insts):,.0f}"
    )
    emit(f"peak_rss_mib={peak_rss_mib():.0f}")
    emit(f"extract_vs_forward_speedup={t_forward / t_extract:.3f}")


if __name__ == "__main__":
    main()
