"""Merge the JSON files of scripts/bench/bench_gpu.py's phases into one docs/bench/YYYY-MM-DD-<card>.json.

    python scripts/bench/bench_merge.py quality.json speed.json --out docs/bench/DATE-CARD.json

Older files in docs/bench/ were merged from phases since retired (speed8, speed4, levers, fusion); their keys
are kept as they were written.

Speed figures (quantize_s, peak_gpu_gb, eval_*_sps, size_bytes) come from the `qwen2-1.5b` phases,
quality figures (precision, recall, f1, auc, flips) from the `small` phase. A figure a phase did not
measure is null. An existing output file is never overwritten: later runs add new files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAMES = ("fp16", "int8", "int4")


def load(paths: list[Path]) -> dict[str, dict]:
    phases = {}
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        key = data.get("phase") or path.stem  # probes write no phase key: named by their file
        # The same phase run several times: fusion, fusion-2, ...
        phases[key if key not in phases else f"{key}-{sum(k.startswith(key) for k in phases) + 1}"] = data
    return phases


def quant_report(sources: list[dict], name: str, bits: str) -> dict | None:
    """The `speed` phase keeps both reports under "quantize"; the retired speed8/speed4 phases kept one each."""
    for phase in sources:
        if name in phase.get("quantize", {}):
            return phase["quantize"][name]
        if phase["phase"] == f"speed{bits}" and "quant_report" in phase:
            return phase["quant_report"]
    return None


def speed_figures(phases: dict, name: str) -> dict:
    bits = None if name == "fp16" else name[3:]
    sources = [p for key, p in phases.items() if key.startswith("speed")]
    evals = next((p["evals"][name] for p in sources if name in p.get("evals", {})), {})
    report = quant_report(sources, name, bits) if bits else None
    score, generate = evals.get("score") or {}, evals.get("generate") or {}
    peaks = [x for x in ((report or {}).get("memory", {}).get("peak_gpu_gb"),
                         (score.get("memory") or {}).get("peak_gpu_gb"),
                         (generate.get("memory") or {}).get("peak_gpu_gb")) if x is not None]
    return {
        "quantize_s": report["timings"]["total_s"] if report else None,
        "peak_gpu_gb": max(peaks) if peaks else None,
        "peak_gpu_gb_quantize": (report or {}).get("memory", {}).get("peak_gpu_gb"),
        "eval_score_sps": score.get("samples_per_s"),
        "eval_generate_sps": generate.get("samples_per_s"),
        "eval_generate_rows": generate.get("rows"),
        "size_bytes": score.get("size_bytes") or ((report or {}).get("size_bytes") or {}).get("after"),
        "kernel": score.get("kernel") or (None if name == "fp16" else "gptq_triton"),
        "engine": (report or {}).get("engine", "gptqmodel" if report else None),
        "quantize_stages": (report or {}).get("stages"),
    }


def quality_source(phases: dict) -> dict:
    """`quality`, or `check` (the same on `small`, without GPTQModel's loop)."""
    return phases.get("quality") or phases.get("check") or {}


def quality_figures(phases: dict, name: str) -> dict:
    quality = quality_source(phases)
    if not quality:
        return {}
    row = next(m for m in quality["compare"]["models"] if m["name"] == name)
    paired = row.get("vs_baseline") or {}
    small = quality["models"][name]
    return {
        "precision": row["precision"], "recall": row["recall"], "f1": row["f1"], "auc": row["auc"],
        "pr_auc": row["pr_auc"], "accuracy": row["accuracy"], "confusion": row["confusion"],
        "flips": (paired.get("flips") or {}).get("total", 0),
        "flips_detail": paired.get("flips"),
        "small_quantize_s": (small.get("quant_report") or {}).get("timings", {}).get("total_s"),
        "small_size_bytes": row["size_bytes"],
        "small_eval_score_sps": row["samples_per_s"],
        "small_engine_equivalence": (quality.get("equivalence") or {}).get(name),
    }


def merge(phases: dict) -> dict:
    first = next(iter(phases.values()))
    models = {}
    for name in NAMES:
        models[name] = {**speed_figures(phases, name), **quality_figures(phases, name)}
    quality = quality_source(phases)
    speed_fp16 = (phases.get("speed") or {}).get("evals", {}).get("fp16", {})
    return {
        "card": first["card"],
        "date": first["date"],
        "command": "; ".join(f"scripts/bench/bench_gpu.sh {p} $OUT" for p in phases)
                   + "; python scripts/bench/bench_merge.py <phase json files> --out <this file>",
        "speed_model": "qwen2-1.5b (random init, Qwen2-1.5B-Instruct shape)",
        "quality_model": "small (8 layers, hidden 512, trained on train.jsonl)",
        "calibration": next((p.get("calib") for p in phases.values() if p.get("calib")), None),
        "score_generate_agreement_fp16_small": (quality.get("models", {}).get("fp16") or {}).get(
            "score_generate_agreement"),
        "phases": {k: {"ok": p.get("ok"), "error": p.get("error"), "phase_wall_s": p.get("phase_wall_s"),
                       "steps": p.get("steps")} for k, p in phases.items()},
        "models": models,
        "engines": engine_variants(phases.get("engines")),
        "share_prefix": {"eval_score_sps_off": (speed_fp16.get("score_no_share_prefix") or {}).get("samples_per_s"),
                         "agreement_on_off": speed_fp16.get("share_prefix_agreement")} if speed_fp16 else None,
        "qwen2_1_5b_check": (phases.get("check") or {}).get("qwen2-1.5b"),
        "eval_levers": eval_levers((phases.get("speed") or {}).get("evals", {}), quality),
        "fusion_probe": (phases.get("fusion") or {}).get("fusion"),
        "fusion_probe_calls": {key: p.get("fusion") for key, p in phases.items() if key.startswith("fusion-")} or None,
        "sync_probe": phases.get("syncs"),
        "scaling": [run for key in ("scaling", "scaling7b") for run in (phases.get(key) or {}).get("runs", [])] or None,
        "hessian_precision": (phases.get("hessian_precision") or {}).get("runs"),
    }


LEVER_KEYS = ("samples_per_s", "wall_s", "warmup_s", "fused_kernels", "cudnn_attention", "batching", "f1", "auc")
LEVERS = ("score_before_levers", "score_no_fused", "generate_before_levers", "score_padded", "score_gptqmodel_alloc",
          "score_budget_65536", "score_repeat_kv", "score_budget_32768")


def eval_levers(speed_evals: dict, quality: dict) -> dict | None:
    """Eval levers against the default path, each pair measured in one run (in files from retired phases)."""
    runs = {f"qwen2-1.5b/{name}/{key}": {**{k: row[key].get(k) for k in LEVER_KEYS},
                                         "default_samples_per_s": (row.get("score") or {}).get("samples_per_s"),
                                         "agreement_with_default": row.get(f"{key}_agreement")}
            for name, row in speed_evals.items() for key in LEVERS if key in row}
    for name, row in (quality.get("models") or {}).items():
        if "score_before_levers" in row:
            runs[f"small/{name}/score_before_levers"] = {
                **{k: row["score_before_levers"].get(k) for k in LEVER_KEYS},
                "default_samples_per_s": row["score"]["samples_per_s"],
                "agreement_with_default": row.get("before_levers_agreement")}
    return runs or None


def engine_variants(engines: dict | None) -> dict | None:
    """The `engines` phase: down_proj loss and damp per layer for each variant, next to the library at batch 32."""
    if not engines:
        return None
    return {name: {"quantize_total_s": v["timings"]["total_s"], "stages": v.get("stages"),
                   "eval": v.get("eval"), "equivalence": v.get("equivalence"),
                   "down_proj": [{"layer": m["layer"], "loss": m["loss"], "damp": m["damp"]}
                                 for m in v["modules"] if m["module"] == "mlp.down_proj"]}
            for name, v in engines.get("variants", {}).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase_files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists():
        print(f"bench_merge: {args.out} exists; benchmark files are never overwritten", file=sys.stderr)
        return 2
    merged = merge(load(args.phase_files))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for name, m in merged["models"].items():
        print(name, {k: m.get(k) for k in ("quantize_s", "eval_score_sps", "eval_generate_sps", "size_bytes",
                                          "precision", "recall", "f1", "auc", "flips", "kernel")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
