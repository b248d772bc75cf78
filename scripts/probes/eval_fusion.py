"""Probe for the score-mode eval targets: fraudq's own `evaluate_model`, with the loaded model changed per
variant, so timing, warm-up and batching are exactly what `fraudq eval` does.

    eager    the model as `fraudq eval` runs it
    rmsnorm  every RMSNorm through torch.nn.functional.rms_norm (one kernel instead of HF's fp32 round trips)
    compile  each decoder layer compiled with torch.compile(dynamic=True) ("regional" compilation: one layer
             graph reused 28 times, so the cold start is one layer's); the compile lands in warmup_s, except
             that the warm-up's single row specialises the first graph to batch 1, so the first batch of
             more rows recompiles inside the clock (seen in a CPU dry run with the `tiny` preset)

For each variant and token budget: rows/s, warm-up, peak memory, and scores against the eager run at the first
budget (max |difference|, same predictions). Not run on a GPU yet (third session: no device time left).

    PYTHONPATH=src python scripts/probes/eval_fusion.py --model DIR --data test0819.jsonl --out OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import fraudq.evaluate as evaluate
from fraudq.config import Config


def fuse_rmsnorm(model) -> None:
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = lambda x, w=module.weight, eps=module.variance_epsilon: torch.nn.functional.rms_norm(
                x, w.shape, w, eps)


def compile_layers(model) -> None:
    for layer in model.model.layers:
        layer.compile(dynamic=True)


VARIANTS = {"eager": lambda model: None, "rmsnorm": fuse_rmsnorm, "compile": compile_layers}


def scores(path: Path) -> list[dict]:
    return [json.loads(line) for line in evaluate.predictions_path(path).read_text().splitlines() if line]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="eager,rmsnorm,compile")
    parser.add_argument("--budgets", default="32768,65536")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    real_load = evaluate.load_model
    summary, baseline = {}, None
    for variant in args.variants.split(","):
        def load(*a, change=VARIANTS[variant], **k):
            model = real_load(*a, **k)
            change(model)
            return model

        evaluate.load_model = load
        for budget in map(int, args.budgets.split(",")):
            cfg = Config(token_budget=budget, device=args.device, limit=args.limit)
            out = args.out / f"{variant}-{budget}.json"
            result = evaluate.evaluate_model(cfg, args.model, args.data, out, log=lambda *_: None)
            row = {k: result[k] for k in ("samples_per_s", "wall_s", "warmup_s", "memory", "batching")}
            baseline = baseline or scores(out)
            mine = scores(out)
            row["max_abs_score_diff_vs_first"] = max(abs(a["score"] - b["score"]) for a, b in zip(mine, baseline))
            row["same_predictions_vs_first"] = sum(a["prediction"] == b["prediction"] for a, b in zip(mine, baseline))
            summary[f"{variant}@{budget}"] = row
            print(f"{variant}@{budget}", json.dumps(row), flush=True)
            (args.out / "eval_fusion.json").write_text(json.dumps(summary, indent=2))
    evaluate.load_model = real_load


if __name__ == "__main__":
    main()
