"""Score-mode throughput on CPU: fraudq's own runtime against vLLM, same checkpoint, same rows, one process.

    python scripts/bench/vllm_cpu.py --model runs/int4 --data test.jsonl --out docs/bench/vllm-cpu.json

Order: fraudq's runtime, vLLM with its default CPU binding (on x86 it keeps one core for its scheduler and runs
the model on the rest), vLLM bound to every core (--bind-all), fraudq's runtime again, so that a neighbour's
load on shared cores shows up as a gap between the two fraudq runs (each run records the 1-minute load average
before and after it). Rates exclude load and warm-up on both sides (the results' samples_per_s). Needs
`pip install 'fraudq[vllm]'` (see .ci/vllm).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path


def fraudq_run(cfg, model: str, data: str, scratch: Path, name: str) -> tuple[dict, list[float]]:
    from fraudq.eval.evaluate import evaluate_model
    from fraudq.eval.results import predictions_path

    out = scratch / f"{name}.json"
    result = evaluate_model(cfg, model, data, out, log=lambda *_: None)
    scores = [json.loads(line)["score"] for line in predictions_path(out).read_text().splitlines() if line]
    return result, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="GPTQ checkpoint vLLM can serve on CPU (4-bit)")
    parser.add_argument("--data", required=True, help="labelled JSONL")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the numbers")
    parser.add_argument("--bind-all", action="store_true", help="also run vLLM bound to every core")
    args = parser.parse_args()

    from fraudq import prompts
    from fraudq.config import build_config
    from fraudq.data import read_jsonl
    from fraudq.eval.vllm_runtime import score_with_vllm
    from fraudq.checkpoint import inspect_model, load_tokenizer
    from fraudq.runtime import setup_environment

    setup_environment()
    cfg = build_config(None, overrides={"device": "cpu"})
    rows = read_jsonl(args.data, need_label=True).rows
    tokenizer = load_tokenizer(inspect_model(args.model))
    texts = [prompts.eval_prompt(tokenizer, r.instruction if r.instruction is not None else cfg.instruction, r.input)
             for r in rows]
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        load_before = os.getloadavg()[0]
        first, hf_scores = fraudq_run(cfg, args.model, args.data, Path(scratch), "first")
        runs.append({"runtime": "fraudq", "samples_per_s": first["samples_per_s"], "wall_s": first["wall_s"],
                     "load_s": first["load_s"], "warmup_s": first["warmup_s"], "kernel": first["kernel"],
                     "loadavg_1min": [load_before, os.getloadavg()[0]]})
        binds = [None, "all"] if args.bind_all else [None]
        for bind in binds:
            if bind == "all":
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{os.cpu_count() - 1}"
            report: dict = {}
            load_before = os.getloadavg()[0]
            margins = score_with_vllm(args.model, texts, cfg.true_word, cfg.false_word, cfg.answer_prefix,
                                      report=report)
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
            report.update({
                "omp_bind": "auto" if bind is None else f"0-{os.cpu_count() - 1}",
                "flipped_vs_fraudq": sum((m > 0) != (h > 0) for m, h in zip(margins, hf_scores)),
                "max_abs_margin_diff": max(abs(m - h) for m, h in zip(margins, hf_scores)),
                "flipped_rows_fraudq_margins": [h for m, h in zip(margins, hf_scores) if (m > 0) != (h > 0)],
                "loadavg_1min": [load_before, os.getloadavg()[0]],
            })
            runs.append(report)
        load_before = os.getloadavg()[0]
        second, _ = fraudq_run(cfg, args.model, args.data, Path(scratch), "second")
        runs.append({"runtime": "fraudq", "samples_per_s": second["samples_per_s"], "wall_s": second["wall_s"],
                     "load_s": second["load_s"], "warmup_s": second["warmup_s"], "kernel": second["kernel"],
                     "loadavg_1min": [load_before, os.getloadavg()[0]]})
    fraudq_rate = (runs[0]["samples_per_s"] + runs[-1]["samples_per_s"]) / 2
    commit = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    summary = {
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
        "command": "python scripts/bench/vllm_cpu.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k.replace('_', '-')}"
            for k, v in vars(args).items() if v not in (False, None)),
        "model": args.model,
        "rows": len(rows),
        "runs": runs,
        "vllm_over_fraudq": [round(r["samples_per_s"] / fraudq_rate, 2) for r in runs if r["runtime"] == "vllm"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
