"""Which calls in a score-mode eval make the CPU wait for the GPU? fraudq's own `evaluate_model`, with
torch.cuda.set_sync_debug_mode("warn") around the batches (not the warm-up, not the final copy of the scores),
recording the Python stack of every synchronising call, deduplicated. Waits inside the CUDA driver
(page-locked allocations, module loads) are not reported by that mode; a clean list points there.

    PYTHONPATH=src python scripts/bench/probes/eval_syncs.py --model DIR --data test0819.jsonl --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
import warnings
from pathlib import Path

import torch

import fraudq.eval.evaluate as evaluate
from fraudq.config import Config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--pack-rows", default="true")
    args = parser.parse_args()
    stacks: dict[str, int] = {}

    def record(message, category, filename, lineno, file=None, line=None):
        stack = "".join(traceback.format_stack(limit=16)[:-2])
        key = f"{message}\n{stack}"
        stacks[key] = stacks.get(key, 0) + 1

    warnings.showwarning = record
    warnings.simplefilter("always")
    real = evaluate.run_batches

    def debugged(*a, **k):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            return real(*a, **k)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    evaluate.run_batches = debugged
    cfg = Config(device="cuda", limit=args.limit, pack_rows=args.pack_rows == "true")
    start = time.perf_counter()
    result = evaluate.evaluate_model(cfg, args.model, args.data, args.out.with_suffix(".eval.json"),
                                     log=lambda *_: None)
    summary = {"samples_per_s": result["samples_per_s"], "batches": result["batching"]["batches"],
               "packed_rows": result["batching"]["packed_rows"], "call_s": round(time.perf_counter() - start, 2),
               "syncs": [{"count": n, "where": s} for s, n in sorted(stacks.items(), key=lambda kv: -kv[1])]}
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "syncs"}), len(summary["syncs"]), "sync sites")
    for item in summary["syncs"][:8]:
        print(item["count"], item["where"][-1500:])


if __name__ == "__main__":
    main()
