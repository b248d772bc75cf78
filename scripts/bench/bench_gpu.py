"""GPU benchmark phases for fraudq, each sized to finish within 10 minutes, each writing one JSON file.

Every phase runs fraudq's own CLI (`python -m fraudq ...`) as a user would, times it, and gathers the
reports it wrote. Phases (one per process; merge the JSON files with scripts/bench/bench_merge.py):

    quality  train the `small` reference classifier on train.jsonl, calib on all of calib0819_chatml.jsonl,
             quantize int8 and int4 with fraudq's engine and with GPTQModel's loop, eval fp16/int8/int4 on
             test0819.jsonl (score mode), compare with plots, equivalence of the two engines, and fp16 in
             generate mode
    speed    build the `qwen2-1.5b`-shaped model (random init), calib, quantize int8 and int4 with the
             default engine, eval fp16/int8/int4 in score and generate mode
    check    `quality` without GPTQModel's loop, and qwen2-1.5b fp16 score at two token budgets
    engines  `small` at 4 bits: GPTQModel's loop at batch 32 and 8 against fraudq's engine (default, and with an
             fp32 Hessian), each quantized and evaluated: per-module losses and predictions against the library
    scaling  quantize time against calibration rows (256, 1,024, 2,348 on qwen2-1.5b) and shape (qwen2-0.5b);
             scaling7b adds the qwen2-7b shape. Plot with scripts/bench/plot_scaling.py

    python scripts/bench/bench_gpu.py --phase quality --data .gpu/data --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]



def run(args: list[str], log: list, env: dict, timeout: float) -> float:
    """Runs one command, streams its output, records its wall time; a failure stops the phase."""
    print("$", " ".join(args), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, timeout=timeout)
    print(f"# {time.perf_counter() - start:.1f} s", flush=True)
    wall = time.perf_counter() - start
    log.append({"cmd": " ".join(args), "rc": proc.returncode, "wall_s": round(wall, 2)})
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(args)}")
    return wall


def fraudq(*args: str) -> list[str]:
    return [sys.executable, "-m", "fraudq", *args]


def reference(preset: str, out: Path, log: list, env: dict, timeout: float, *args: str, device: str = "cuda") -> None:
    """Build (or train) a reference model with scripts/bench/train_reference.py, seed 0."""
    run([sys.executable, str(ROOT / "scripts" / "bench" / "train_reference.py"), "--preset", preset, "--out", str(out),
         "--seed", "0", "--device", device, *args], log, env, timeout)


def random_init(preset: str, out: Path, log: list, env: dict, timeout: float, *args: str, device: str = "cuda"):
    """An untrained model of the preset's shape, for speed work."""
    reference(preset, out, log, env, timeout, "--synthetic", "8", "--epochs", "0", *args, device=device)


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - the benchmark may be tried on a machine without one
        return "none"


def eval_summary(result: dict) -> dict:
    keys = ("precision", "recall", "f1", "accuracy", "auc", "samples_per_s", "wall_s", "load_s", "warmup_s", "rows",
            "size_bytes", "kernel", "confusion", "memory", "batching", "fused_kernels", "cudnn_attention")
    return {k: result.get(k) for k in keys}


def phase_quality(data: Path, work: Path, env: dict, log: list, result: dict, save, library: bool = True) -> None:
    """The `small` classifier quantized by fraudq's engine (the default) and, with `library`, by GPTQModel's
    own loop.

    The two checkpoints come from the same model, config and calibration rows; `equivalence` holds their
    per-module GPTQ losses and eval predictions side by side.
    """
    model = work / "small"
    train_log = work / "train_small.json"
    reference("small", model, log, env, 400, "--data", str(data / "train.jsonl"), "--log-json", str(train_log))
    result.update({"model": "small", "train": read(train_log) if train_log.is_file() else None, "models": {}})
    env = {**env, "FRAUDQ_MODEL": str(model), "FRAUDQ_WORK_DIR": str(work / "runs"),
           "FRAUDQ_TEST_DATA": str(data / "test0819.jsonl")}
    runs = work / "runs"
    run(fraudq("calib", "--data", str(data / "calib0819_chatml.jsonl")), log, env, 120)
    result["calib"] = read(runs / "calib.jsonl.meta.json")["stats"]
    for bits in (8, 4):
        run(fraudq("quantize", "--bits", str(bits)), log, env, 200)
        if library:
            run(fraudq("quantize", "--bits", str(bits), "--engine", "gptqmodel", "--batch-size", "32",
                       "--out", str(runs / f"int{bits}-gptqmodel")), log, env, 300)
        save()
    run(fraudq("compare", "int8", "int4", "fp16", "--plot", str(runs / "compare" / "plots")), log, env, 300)
    for name in ("fp16", "int8", "int4"):
        result["models"][name] = {"score": eval_summary(read(runs / "eval" / f"{name}.json"))}
        if name != "fp16":
            result["models"][name]["quant_report"] = read(runs / name / "quant_report.json")
    result["compare"] = read(runs / "compare" / "compare.json")
    save()
    result["equivalence"] = {}
    for bits in (8, 4) if library else ():
        library = runs / f"int{bits}-gptqmodel"
        out = runs / "eval" / f"int{bits}-gptqmodel.json"
        run(fraudq("eval", "--model", str(library), "--out", str(out)), log, env, 200)
        result["equivalence"][f"int{bits}"] = equivalence(
            read(runs / f"int{bits}" / "quant_report.json"), read(library / "quant_report.json"),
            runs / "eval" / f"int{bits}.predictions.jsonl", runs / "eval" / f"int{bits}-gptqmodel.predictions.jsonl",
            runs / "eval" / "fp16.predictions.jsonl")
        result["equivalence"][f"int{bits}"]["library_eval"] = eval_summary(read(out))
        save()
    run(fraudq("eval", "--model", str(model), "--mode", "generate"), log, env, 300)
    result["models"]["fp16"]["generate"] = eval_summary(read(runs / "eval" / "fp16.generate.json"))
    result["models"]["fp16"]["score_generate_agreement"] = agreement(runs / "eval" / "fp16.predictions.jsonl",
                                                                     runs / "eval" / "fp16.generate.predictions.jsonl")


def equivalence(ours: dict, library: dict, our_preds: Path, library_preds: Path, fp16_preds: Path) -> dict:
    """fraudq's engine against GPTQModel's loop: per-module loss ratios and prediction agreement."""
    theirs = {(m["layer"], m["module"]): m["loss"] for m in library["modules"]}
    ratios = sorted(m["loss"] / theirs[(m["layer"], m["module"])] - 1 for m in ours["modules"]
                    if theirs.get((m["layer"], m["module"])))
    spread = sorted(abs(r) for r in ratios)

    def pick(fraction):
        return round(spread[min(len(spread) - 1, int(fraction * len(spread)))], 5)

    ours_total = sum(m["loss"] for m in ours["modules"])
    theirs_total = sum(theirs.values())
    return {"modules": len(ratios), "loss_ratio_abs_median": pick(0.5), "loss_ratio_abs_p90": pick(0.9),
            "loss_ratio_abs_max": round(spread[-1], 5), "within_1pct": sum(r <= 0.01 for r in spread),
            "summed_loss_ratio": round(ours_total / theirs_total - 1, 5),
            "predictions_vs_library": agreement(our_preds, library_preds),
            "library_vs_fp16": agreement(fp16_preds, library_preds),
            "ours_vs_fp16": agreement(fp16_preds, our_preds),
            "quantize_total_s": {"fraudq": ours["timings"]["total_s"], "gptqmodel": library["timings"]["total_s"]}}


def agreement(a: Path, b: Path) -> dict:
    left = [json.loads(x) for x in a.read_text().splitlines() if x]
    right = [json.loads(x) for x in b.read_text().splitlines() if x]
    same = sum(x["prediction"] == y["prediction"] for x, y in zip(left, right))
    invalid = sum(y["prediction"] is None for y in right)
    return {"rows": len(left), "same": same, "fraction": round(same / len(left), 5), "generate_invalid": invalid}


def phase_check(data: Path, work: Path, env: dict, log: list, result: dict, save) -> None:
    """The shipped defaults, end to end: the quality phase on `small` with fraudq's engine only (the engines
    phase holds the library comparison); then, if time is left, fp16 score mode on the qwen2-1.5b shape at
    token budgets 32,768 / 65,536 / 32,768."""
    started = time.perf_counter()
    phase_quality(data, work, env, log, result, save, library=False)
    env = {**env, "FRAUDQ_TEST_DATA": str(data / "test0819.jsonl")}
    shutil.rmtree(work / "small", ignore_errors=True)
    model = work / "qwen2-1.5b"
    if time.perf_counter() - started > 420:
        result["skipped"] = ["qwen2-1.5b budgets"]
        return
    random_init("qwen2-1.5b", model, log, env, 200)
    result["qwen2-1.5b"] = {"fp16": {}}
    for index, budget in enumerate((32768, 65536, 32768)):
        out = work / "runs-1.5b" / f"fp16-{budget}-{index}.json"
        run(fraudq("eval", "--model", str(model), "--out", str(out)), log,
            {**env, "FRAUDQ_TOKEN_BUDGET": str(budget)}, 200)
        result["qwen2-1.5b"]["fp16"][f"score_budget_{budget}_{index}"] = eval_summary(read(out))
        save()


def phase_speed(data: Path, work: Path, env: dict, log: list, result: dict, save) -> None:
    """The qwen2-1.5b shape through fraudq's CLI as a user runs it: quantize int8 and int4 with the default
    engine, then every model in score mode and in generate mode on all of test0819.jsonl."""
    model = work / "qwen2-1.5b"
    random_init("qwen2-1.5b", model, log, env, 200)
    env = {**env, "FRAUDQ_MODEL": str(model), "FRAUDQ_WORK_DIR": str(work / "runs"),
           "FRAUDQ_TEST_DATA": str(data / "test0819.jsonl")}
    runs = work / "runs"
    result.update({"model": "qwen2-1.5b", "evals": {}, "quantize": {}})
    run(fraudq("calib", "--data", str(data / "calib0819_chatml.jsonl")), log, env, 120)
    result["calib"] = read(runs / "calib.jsonl.meta.json")["stats"]
    save()
    for bits in (8, 4):
        wall = run(fraudq("quantize", "--bits", str(bits)), log, env, 240)
        report = read(runs / f"int{bits}" / "quant_report.json")
        result["quantize"][f"int{bits}"] = {"cli_wall_s": round(wall, 2), **{k: report[k] for k in (
            "timings", "stages", "memory", "size_bytes", "engine", "config", "versions")}}
        save()
    models = (("fp16", model), ("int8", runs / "int8"), ("int4", runs / "int4"))
    for name, path in models:
        run(fraudq("eval", "--model", str(path)), log, env, 240)
        result["evals"][name] = {"score": eval_summary(read(runs / "eval" / f"{name}.json"))}
        save()
    for name, path in models:
        run(fraudq("eval", "--model", str(path), "--mode", "generate"), log, env, 240)
        result["evals"][name]["generate"] = eval_summary(read(runs / "eval" / f"{name}.generate.json"))
        save()


ENGINE_VARIANTS = {  # name: (CLI flags, environment); GPTQModel's loop at batch 32 is the reference.
    # Most informative first: a run cut by its time limit still returns the variants that ran.
    "gptqmodel-b32": (["--engine", "gptqmodel", "--batch-size", "32"], {}),
    "fraudq": ([], {}),
    # X^T X as 1,024-token products summed in fp32: if this matches the library where the default (one TF32
    # product per 16k-token batch) does not, accumulation length is the cause.
    "fraudq-fp32-hessian": ([], {"FRAUDQ_HESSIAN_TF32": "false"}),
    "gptqmodel-b8": (["--engine", "gptqmodel", "--batch-size", "8"], {}),
}


def phase_engines(data: Path, work: Path, env: dict, log: list, result: dict, save) -> None:
    """Where do fraudq's engine and GPTQModel's loop part? The `small` model at 4 bits, one variant at a time,
    each quantized then evaluated; per-module losses and predictions against the library at batch 32."""
    model = work / "small"
    reference("small", model, log, env, 400, "--data", str(data / "train.jsonl"))
    env = {**env, "FRAUDQ_MODEL": str(model), "FRAUDQ_WORK_DIR": str(work / "runs"),
           "FRAUDQ_TEST_DATA": str(data / "test0819.jsonl")}
    runs = work / "runs"
    run(fraudq("calib", "--data", str(data / "calib0819_chatml.jsonl")), log, env, 120)
    run(fraudq("eval", "--model", str(model)), log, env, 120)
    result.update({"model": "small", "fp16": eval_summary(read(runs / "eval" / "fp16.json")), "variants": {}})
    reference_name = next(iter(ENGINE_VARIANTS))
    for name, (flags, extra_env) in ENGINE_VARIANTS.items():
        out, results = runs / name, runs / "eval" / f"{name}.json"
        run(fraudq("quantize", "--bits", "4", "--out", str(out), *flags), log, {**env, **extra_env}, 200)
        run(fraudq("eval", "--model", str(out), "--out", str(results)), log, env, 120)
        report = read(out / "quant_report.json")
        result["variants"][name] = {"timings": report["timings"], "stages": report.get("stages"),
                                    "modules": report["modules"], "eval": eval_summary(read(results))}
        if name != reference_name:
            result["variants"][name]["equivalence"] = equivalence(
                report, read(runs / reference_name / "quant_report.json"), runs / "eval" / f"{name}.predictions.jsonl",
                runs / "eval" / f"{reference_name}.predictions.jsonl", runs / "eval" / "fp16.predictions.jsonl")
        save()


def phase_scaling(data: Path, work: Path, env: dict, log: list, result: dict, save, presets: list[str],
                  rows: list[int], device: str) -> None:
    """Quantize time (int4, default engine, load -> saved) against calibration rows on the first preset, and
    against model shape at the last row count on the others. Models are random-init (`--epochs 0`)."""
    result["runs"] = []
    for index, preset in enumerate(presets):
        model = work / preset
        random_init(preset, model, log, env, 400, device=device)
        runs = work / "runs" / preset
        model_env = {**env, "FRAUDQ_MODEL": str(model), "FRAUDQ_WORK_DIR": str(runs), "FRAUDQ_DEVICE": device}
        for count in rows if index == 0 else rows[-1:]:
            calib, out = runs / f"calib-{count}.jsonl", runs / f"int4-{count}"
            run(fraudq("calib", "--data", str(data / "calib0819_chatml.jsonl"), "--n", str(count), "--out", str(calib)),
                log, model_env, 120)
            wall = run(fraudq("quantize", "--bits", "4", "--calib", str(calib), "--out", str(out)), log, model_env, 480)
            report = read(out / "quant_report.json")
            result["runs"].append({
                "preset": preset, "rows": report["calibration"]["rows"], "tokens": report["calibration"]["tokens"],
                "parameters": parameter_count(model), "cli_wall_s": round(wall, 2),
                **{k: report.get(k) for k in ("timings", "stages", "memory", "batching")}})
            save()
        shutil.rmtree(model, ignore_errors=True)  # a 7B checkpoint is 15 GB of a 64 GB disk


def parameter_count(model: Path) -> int:
    from math import prod

    from safetensors import safe_open

    total = 0
    for path in model.glob("*.safetensors"):
        with safe_open(str(path), "pt") as weights:
            total += sum(prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=("quality", "speed", "engines", "check", "scaling", "scaling7b"),
                        required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder with the anti_fraud JSONL files")
    parser.add_argument("--out", type=Path, required=True, help="folder for <phase>.json and artifacts")
    parser.add_argument("--work", type=Path, default=Path("/tmp/fraudq-bench"))
    parser.add_argument("--scaling-presets", default=None,
                        help="scaling: comma-separated presets, rows swept on the first "
                             "(default qwen2-1.5b,qwen2-0.5b; scaling7b: qwen2-7b)")
    parser.add_argument("--scaling-rows", default="256,1024,2348", help="scaling: calibration row counts")
    parser.add_argument("--scaling-device", default="cuda", help="scaling: cuda, or cpu for a dry run")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log: list = []
    started = time.perf_counter()
    # The machine running a phase may hold a copy of the tree without git: COMMIT names what is measured.
    result = {"phase": args.phase, "card": gpu_name(), "date": time.strftime("%Y-%m-%d"),
              "commit": os.environ.get("COMMIT"), "command": " ".join(sys.argv), "steps": log}

    def save() -> None:
        result["phase_wall_s"] = round(time.perf_counter() - started, 2)
        (args.out / f"{args.phase}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))

    try:
        if args.phase == "quality":
            phase_quality(args.data, args.work, env, log, result, save)
        elif args.phase == "speed":
            phase_speed(args.data, args.work, env, log, result, save)
        elif args.phase == "engines":
            phase_engines(args.data, args.work, env, log, result, save)
        elif args.phase == "check":
            phase_check(args.data, args.work, env, log, result, save)
        elif args.phase in ("scaling", "scaling7b"):
            default = "qwen2-1.5b,qwen2-0.5b" if args.phase == "scaling" else "qwen2-7b"
            rows = [int(n) for n in args.scaling_rows.split(",")]
            phase_scaling(args.data, args.work, env, log, result, save, (args.scaling_presets or default).split(","),
                          rows if args.phase == "scaling" else rows[-1:], args.scaling_device)
        result["ok"] = True
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        result["ok"] = False
        result["error"] = str(exc)
    save()
    with tarfile.open(args.out / f"{args.phase}-artifacts.tar.gz", "w:gz") as tar:
        for pattern in ("runs/eval/*.json", "runs/eval/*.jsonl", "runs/*/quant_report.json", "runs/compare/*",
                        "runs/compare/plots/*.png", "*.json"):
            for path in args.work.glob(pattern):
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(args.work)))
    print(json.dumps(log, indent=1))
    print(json.dumps({k: result.get(k) for k in ("phase", "card", "ok", "error", "phase_wall_s")}))
    print(short_table(result))
    return 0 if result["ok"] else 1


def short_table(result: dict) -> str:
    """The few numbers a reader wants first, printed last so they end the phase's output."""
    lines = [f"{'model':<6} {'quantize s':>10} {'score rows/s':>12} {'gen rows/s':>10} {'size MB':>9} "
             f"{'P':>6} {'R':>6} {'F1':>6} {'AUC':>6}"]
    if result.get("phase", "").startswith("scaling"):
        lines = [f"{'preset':<12} {'rows':>5} {'tokens':>8} {'total s':>8} {'CLI s':>7} {'peak GPU GB':>11}  stages"]
        for r in result.get("runs", []):
            lines.append(f"{r['preset']:<12} {r['rows']:>5} {r['tokens']:>8} {r['timings']['total_s']:>8.1f} "
                         f"{r['cli_wall_s']:>7.1f} {r['memory'].get('peak_gpu_gb', float('nan')):>11.2f}  {r['stages']}")
        return "\n".join(lines)
    if result.get("phase") == "engines":
        variants = result.get("variants", {})
        base = {(m["layer"], m["module"]): m["loss"] for m in variants.get("gptqmodel-b32", {}).get("modules", [])}
        lines = ["loss / gptqmodel-b32 loss - 1, per down_proj layer, then over all modules: median |r|, max |r|"]
        for name, v in variants.items():
            ratios = {(m["layer"], m["module"]): m["loss"] / base[(m["layer"], m["module"])] - 1
                      for m in v["modules"] if base.get((m["layer"], m["module"]))}
            down = [f"{r:+.3f}" for (layer, module), r in sorted(ratios.items()) if module == "mlp.down_proj"]
            spread = sorted(abs(r) for r in ratios.values()) or [float("nan")]
            damps = [f"{m['damp']:.2f}" for m in v["modules"] if m["module"] == "mlp.down_proj" and m.get("damp")]
            same = v.get("equivalence", {}).get("predictions_vs_library", {}).get("fraction")
            lines.append(f"{name:<20} {v['timings']['total_s']:>6.1f} s  down {' '.join(down)}  "
                         f"median {spread[len(spread) // 2]:.4f} max {spread[-1]:.4f}  damp {' '.join(damps)}  "
                         f"same preds {same}  F1 {v.get('eval', {}).get('f1')}")
        return "\n".join(lines)
    if result.get("phase") in ("quality", "check"):
        models = result.get("models", {})
        generate = result.get("qwen2-1.5b", {}).get("fp16", {}).get("generate")
        if generate:
            lines.insert(0, f"# qwen2-1.5b fp16 generate: {generate['samples_per_s']} rows/s, "
                            f"warm-up {generate['warmup_s']} s, {generate['batching']}, {generate['memory']}")
        rows = {name: (m.get("quant_report", {}).get("timings", {}).get("total_s"), m.get("score", {}),
                       m.get("generate", {})) for name, m in models.items()}
    elif result.get("phase") == "speed":
        quant = result.get("quantize", {})
        rows = {name: (quant.get(name, {}).get("timings", {}).get("total_s"), e.get("score", {}),
                       e.get("generate", {})) for name, e in result.get("evals", {}).items()}
        for name, q in quant.items():
            lines.append(f"# {name}: {q['timings']}  stages {q['stages']}  memory {q['memory']}")
        fp16 = result.get("evals", {}).get("fp16", {})
        if "score_no_share_prefix" in fp16:
            lines.append(f"# fp16 score without the shared prefix: {fp16['score_no_share_prefix']['samples_per_s']} "
                         f"rows/s; agreement {fp16['share_prefix_agreement']}")
        for name, e in result.get("evals", {}).items():
            lines.append(f"# {name} warm-up s: " + ", ".join(f"{mode} {v.get('warmup_s')}" for mode, v in e.items()
                                                          if isinstance(v, dict) and "warmup_s" in v))
    else:
        report = result.get("quant_report") or {}
        rows = {name: (report.get("timings", {}).get("total_s") if name != "fp16" else None,
                       e.get("score", {}), e.get("generate", {})) for name, e in result.get("evals", {}).items()}

    def cell(value, width, digits=1):
        return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

    for name, (quant_s, score, generate) in rows.items():
        size = score.get("size_bytes") / 1e6 if score.get("size_bytes") else None
        lines.append(f"{name:<6} {cell(quant_s, 10)} {cell(score.get('samples_per_s'), 12)} "
                     f"{cell(generate.get('samples_per_s'), 10)} {cell(size, 9)} "
                     + " ".join(cell(score.get(k), 6, 4) for k in ("precision", "recall", "f1", "auc")))
    for name, eq in result.get("equivalence", {}).items():
        lines.append(f"# {name} fraudq vs gptqmodel: " + json.dumps({k: v for k, v in eq.items() if k != "library_eval"}))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
