"""Eval-speed probe: one model load, fraudq's own batching and scoring code, several settings timed in turn.

Each setting is timed per batch (synchronised), so the first batch's warm-up shows apart from the steady
rate. It answers "which token budget and which kernel", not "how fast is `fraudq eval`": the CLI's own
figures come from bench_gpu.py. Writes one JSON file.

    python scripts/probes/probe_eval.py --model DIR [--backend torch,triton] --data test0819.jsonl --out probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fraudq import prompts
from fraudq.config import Config
from fraudq.data import read_jsonl
from fraudq.evaluate import generate_batch, make_batches, score_batch
from fraudq.modelio import inspect_model, load_model, load_tokenizer


def timed_batches(batches, work) -> dict:
    times = []
    for batch in batches:
        start = time.perf_counter()
        work(batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    rows = sum(map(len, batches))
    steady = sum(times[1:]) / max(1, sum(map(len, batches[1:]))) if len(batches) > 1 else None
    return {"rows": rows, "batches": len(batches), "wall_s": round(sum(times), 3),
            "rows_per_s": round(rows / sum(times), 1), "first_batch_s": round(times[0], 3),
            "steady_rows_per_s": round(1 / steady, 1) if steady else None,
            "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--backend", default="auto", help="comma-separated kernels for GPTQ models")
    parser.add_argument("--data", required=True)
    parser.add_argument("--budgets", default="16384,65536")
    parser.add_argument("--generate-budgets", default="")
    parser.add_argument("--generate-limit", type=int, default=1024)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = Config()
    info = inspect_model(args.model)
    tokenizer = load_tokenizer(info)
    rows = read_jsonl(args.data, need_label=True).rows
    base = [prompts.eval_prompt(tokenizer, r.instruction or cfg.instruction, r.input) for r in rows]
    score_ids = tokenizer([t + cfg.answer_prefix for t in base], add_special_tokens=False)["input_ids"]
    gen_ids = tokenizer(base[: args.generate_limit], add_special_tokens=False)["input_ids"]
    candidates = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in (cfg.true_word, cfg.false_word)]
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    backends = args.backend.split(",") if info.quant else ["fp16"]
    for backend in backends:
        start = time.perf_counter()
        model = load_model(info, "cuda", "auto" if backend == "fp16" else backend)
        load_s = round(time.perf_counter() - start, 2)
        for budget in map(int, filter(None, args.budgets.split(","))):
            torch.cuda.reset_peak_memory_stats()
            batches = make_batches([len(p) + 1 for p in score_ids], None, budget)
            key = f"{Path(args.model).name}/{backend}/score@{budget}"
            results[key] = {"load_s": load_s, **timed_batches(
                batches, lambda b: score_batch(model, [score_ids[i] for i in b], candidates,
                                               tokenizer.pad_token_id, "cuda"))}
            print(key, results[key], flush=True)
            args.out.write_text(json.dumps(results, indent=1))
        for budget in map(int, filter(None, args.generate_budgets.split(","))):
            torch.cuda.reset_peak_memory_stats()
            batches = make_batches([len(p) + cfg.max_new_tokens for p in gen_ids], None, budget)
            key = f"{Path(args.model).name}/{backend}/generate@{budget}"
            results[key] = timed_batches(
                batches, lambda b: generate_batch(model, tokenizer, [gen_ids[i] for i in b], cfg.max_new_tokens,
                                                  "cuda"))
            print(key, results[key], flush=True)
            args.out.write_text(json.dumps(results, indent=1))
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
