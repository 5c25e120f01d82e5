"""The two costs behind long-prompt generation, measured on SmolLM2-135M-Instruct (fp32):

1. prefill: prompts of `width` random tokens prefilled as one left-padded batch
   (`PrefixCache.prefill` without its one-at-a-time path) against one at a time, in tokens/s;
2. decode: one greedy step of `rows` rows over a 1,000-token cache, with transformers'
   concatenating DynamicLayer against ftlab's GrowingLayer (`ftlab.eval.backends.kv_cache.growing`),
   in ms per step, and whether the logits are bitwise the same.

The numbers behind `SOLO_PREFILL_TOKENS` and `growing` (benchmarks/lmeval_tasks.md):

    OMP_NUM_THREADS=2 uv run python benchmarks/kv_cache_steps.py --out benchmarks/kv_cache_steps.results.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def prefill_rates(model, widths, budget: int) -> list[dict]:
    import torch

    from ftlab.eval.backends import kv_cache

    def forward(ids, mask, pos, cache):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        return out.logits[:, -1].argmax(-1), out.past_key_values

    rng = random.Random(0)
    prefix, cpu, rows_out = kv_cache.PrefixCache(), torch.device("cpu"), []
    for width in widths:
        rows = max(1, min(16, budget // width))
        seqs = [[rng.randint(100, 40000) for _ in range(width - rng.randint(0, width // 10))] for _ in range(rows)]
        tokens = sum(map(len, seqs))
        saved, kv_cache.SOLO_PREFILL_TOKENS = kv_cache.SOLO_PREFILL_TOKENS, 10**9  # the padded batch
        try:
            t0 = time.perf_counter()
            batched = prefix.prefill(model, seqs, 0, cpu, forward)[0]
            together = time.perf_counter() - t0
        finally:
            kv_cache.SOLO_PREFILL_TOKENS = saved
        t0 = time.perf_counter()
        alone = [prefix.prefill(model, [s], 0, cpu, forward)[0] for s in seqs]
        one_by_one = time.perf_counter() - t0
        rows_out.append({"width": width, "rows": rows, "tokens": tokens,
                         "batched_tok_s": round(tokens / together), "alone_tok_s": round(tokens / one_by_one),
                         "same_next_tokens": batched.tolist() == torch.cat(alone).tolist()})
        print(f"prefill width {width}: {rows_out[-1]}", flush=True)
    return rows_out


def decode_steps(model, rows_list, context: int, steps: int) -> list[dict]:
    import torch
    from transformers.cache_utils import DynamicCache

    from ftlab.eval.backends.kv_cache import growing

    out = []
    with torch.inference_mode():
        shapes = [(layer.keys.shape[1], layer.keys.shape[3])
                  for layer in model(input_ids=torch.tensor([[5, 6]]), use_cache=True).past_key_values.layers]
        for rows in rows_list:
            gen = torch.Generator().manual_seed(rows)
            base = [torch.randn(rows, h, context, d, generator=gen) for h, d in shapes]
            result = {}
            for kind in ("concatenating", "growing"):
                cache = DynamicCache(config=model.config)
                for i, k in enumerate(base):
                    cache.update(k.clone(), 0.5 * k, i)
                if kind == "growing":
                    growing(cache)
                last, pos = torch.full((rows,), 5), torch.full((rows,), context)
                mask = torch.ones(rows, context, dtype=torch.long)
                logits, t0 = [], None
                for s in range(steps + 3):
                    if s == 3:  # after warm-up
                        t0 = time.perf_counter()
                    mask = torch.cat([mask, mask.new_ones(rows, 1)], 1)
                    o = model(input_ids=last[:, None], attention_mask=mask, position_ids=pos[:, None],
                              past_key_values=cache, use_cache=True, logits_to_keep=1)
                    logits.append(o.logits[:, -1])
                    last, pos = o.logits[:, -1].argmax(-1), pos + 1
                result[kind] = ((time.perf_counter() - t0) / steps * 1000, torch.stack(logits))
            out.append({"rows": rows, "context": context, "steps": steps,
                        "concatenating_ms": round(result["concatenating"][0], 1),
                        "growing_ms": round(result["growing"][0], 1),
                        "bitwise_same_logits": torch.equal(result["concatenating"][1], result["growing"][1])})
            print(f"decode rows {rows}: {out[-1]}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--widths", default="128,256,512,1000")
    ap.add_argument("--rows", default="1,4,16")
    ap.add_argument("--context", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from ftlab.console import setup
    from ftlab.eval.backends.sizing import PREFILL_TOKEN_BUDGET
    from ftlab.models.sources import load_model

    setup(quiet=True)
    model, _, _ = load_model(args.model, dtype="fp32")
    model.eval()
    with torch.inference_mode():
        prefill = prefill_rates(model, [int(w) for w in args.widths.split(",")], PREFILL_TOKEN_BUDGET)
    decode = decode_steps(model, [int(r) for r in args.rows.split(",")], args.context, args.steps)
    doc = {"model": args.model, "dtype": "fp32", "threads": torch.get_num_threads(), "prefill": prefill,
           "decode": decode}
    text = json.dumps(doc, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
