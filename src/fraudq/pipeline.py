"""`fraudq run`: calib -> quantize 8 and 4 -> eval fp16/int8/int4 (score mode) -> compare, resumable.

Each stage is skipped when the hashes of its inputs match the ones recorded beside its artifact:

  calib          <calib file>.stamp.json   model fingerprint, calib data sha256, calib settings
  quantize-intN  <work_dir>/intN.stamp.json model fingerprint, calib file sha256, bits + GPTQ settings
  eval-NAME      the results JSON itself   model fingerprint, test data sha256, eval config, dtype, threshold
  compare        <work_dir>/compare.stamp.json  sha256 of every eval result it reads, seed

A stamp also records the hash of the artifact it vouches for, so an artifact replaced or edited by hand
is rebuilt. Nothing here looks at timestamps. `--force STAGE` reruns that stage; a stage downstream of it
then reruns only if the rerun changed its artifact's bytes (quantizing twice on CPU gives identical bytes).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from fraudq.atomic import check_target, hold
from fraudq.calib import build_calibration, meta_path
from fraudq.checkpoint import fingerprint, inspect_model
from fraudq.comparison import compare_models, gather
from fraudq.config import CALIB_KEYS, QUANT_KEYS, Config
from fraudq.console import shown, stage_log
from fraudq.data import file_sha256, read_jsonl
from fraudq.errors import BadInput
from fraudq.eval.evaluate import evaluate_model
from fraudq.eval.results import claim_results, predictions_path, read_results
from fraudq.quant.quantize import quantize_model
from fraudq.report.compare import pick_baseline
from fraudq.report.deployment import deployment_check, deployment_lines
from fraudq.report.render import log_examples, log_table, log_verdict
from fraudq.thresholds import threshold_file
from fraudq.workspace import Hashes, resolve, stale_reasons, stamp_reasons, write_stamp

BITS = (8, 4)
MODELS = ("fp16", *(f"int{b}" for b in BITS))
STAGES = ("calib", *(f"quantize-int{b}" for b in BITS), *(f"eval-{m}" for m in MODELS), "compare")


@dataclasses.dataclass
class Stage:
    name: str
    artifact: Path
    reasons: Callable[[], list[str]]  # [] = current
    run: Callable[[Callable, Callable | None], None]  # (log, progress) -> None; writes artifact and stamp


def _count_rows(cfg: Config) -> int:
    rows = len(read_jsonl(cfg.test_data, need_label=True).rows)
    return min(rows, cfg.limit) if cfg.limit else rows


def build_stages(cfg: Config, hashes: Hashes, examples: int) -> list[Stage]:
    model = Path(cfg.model)
    calib = cfg.calib_path
    compare_dir = cfg.work_path / "compare"

    def calib_inputs():
        return {"model": hashes.model(model), "calib_data": hashes.file(Path(cfg.calib_data)),
                "config": {k: getattr(cfg, k) for k in CALIB_KEYS}}

    def calib_output():
        return hashes.file(calib) if meta_path(calib).is_file() else None

    def run_calib(log, _progress):
        inputs = calib_inputs()
        build_calibration(cfg, cfg.calib_data, calib, force=True, log=log)
        hashes.forget(calib)
        write_stamp(calib, "calib", inputs, calib_output())

    stages = [Stage("calib", calib, lambda: stamp_reasons(calib, calib_inputs(), calib_output), run_calib)]

    for bits in BITS:
        out = cfg.quant_dir(bits)

        def quant_inputs(bits=bits):
            return {"model": hashes.model(model), "calib": hashes.file(calib),
                    "config": {"bits": bits, **{k: getattr(cfg, k) for k in QUANT_KEYS}}}

        def run_quant(log, _progress, bits=bits, out=out):
            inputs = quant_inputs(bits)
            quantize_model(cfg, bits, calib, out, force=True, log=log)
            hashes.forget(out)
            write_stamp(out, f"quantize-int{bits}", inputs, hashes.model(out))

        stages.append(Stage(f"quantize-int{bits}", out,
                            lambda bits=bits, out=out: stamp_reasons(out, quant_inputs(bits), lambda: hashes.model(out)),
                            run_quant))

    for name in MODELS:
        def entry(name=name):
            return resolve(cfg, name)

        def eval_reasons(name=name):
            current = entry(name)
            return stale_reasons(cfg, current, hashes.file(Path(cfg.test_data)), hashes.model(current.model_path))

        def run_eval(log, progress, name=name):
            current = entry(name)
            with claim_results(current.results_path, force=True, reads=(cfg.test_data, current.model_path)):
                evaluate_model(cfg, str(current.model_path), cfg.test_data, current.results_path, log=log,
                               progress=progress, model_fingerprint=hashes.model(current.model_path))
            hashes.forget(current.results_path)
            hashes.forget(predictions_path(current.results_path))

        stages.append(Stage(f"eval-{name}", cfg.eval_results_path(name), eval_reasons, run_eval))

    def compare_inputs():
        results = {}
        for name in MODELS:
            path = cfg.eval_results_path(name)
            results[name] = [hashes.file(path), hashes.file(predictions_path(path))]
        # "report" names the layout of compare.json: a stored report of an older layout is rebuilt.
        return {"results": results, "config": {"seed": cfg.seed, "plots": True, "report": 2}}

    def compare_output():
        return hashes.file(compare_dir / "compare.json")

    def run_compare(log, _progress):
        inputs = compare_inputs()
        compare_models(cfg, list(MODELS), cfg.test_data, compare_dir, examples=examples,
                       plot_dir=compare_dir / "plots", log=log)
        hashes.forget(compare_dir / "compare.json")
        write_stamp(compare_dir, "compare", inputs, compare_output())

    def compare_reasons():
        # compare writes the fitted thresholds beside int8/ and int4/; a requantized folder has lost its own.
        reasons = stamp_reasons(compare_dir, compare_inputs(), compare_output)
        if reasons or "fitted" not in json.loads((compare_dir / "compare.json").read_text(encoding="utf-8")):
            return reasons
        missing = [f"int{b}" for b in BITS if not threshold_file(cfg.quant_dir(b)).is_file()]
        return [f"threshold file missing in {', '.join(missing)}"] if missing else []

    stages.append(Stage("compare", compare_dir, compare_reasons, run_compare))
    return stages


def parse_force(force: Sequence[str]) -> set[str]:
    chosen = set()
    for name in force:
        if name == "all":
            chosen.update(STAGES)
        elif name in STAGES:
            chosen.add(name)
        else:
            raise BadInput(f"--force: unknown stage {name!r}; stages: {', '.join(STAGES)} (or all)")
    return chosen


def check_inputs(cfg: Config) -> None:
    for key, what in (("model", "--model"), ("calib_data", "--calib-data"), ("test_data", "--test-data")):
        if not getattr(cfg, key):
            raise BadInput(f"missing {what} (or {key} in the config)")
    inspect_model(cfg.model, cfg.trust_remote_code, cfg.allow_pickle)
    for key in ("calib_data", "test_data"):
        if not Path(getattr(cfg, key)).is_file():
            raise BadInput(f"{key} {getattr(cfg, key)} does not exist")


def deployment_in_vllm(cfg: Config, say, logs: Path) -> list[dict]:
    """Each quantized checkpoint evaluated again under vLLM, where it is installed, and checked row by row."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        say("deployment check in vLLM: skipped, vLLM is not installed (pip install 'fraudq[vllm]'; docs/VLLM.md)")
        return []
    served_cfg = dataclasses.replace(cfg, runtime="vllm")
    checks = []
    for name in MODELS[1:]:
        entry, served = resolve(cfg, name), resolve(served_cfg, name)
        try:
            with stage_log(logs / f"vllm-{name}.log"):
                fingerprint_now = fingerprint(inspect_model(entry.model_path))
                if stale_reasons(served_cfg, served, file_sha256(Path(cfg.test_data)), fingerprint_now):
                    evaluate_model(served_cfg, str(served.model_path), cfg.test_data, served.results_path,
                                   log=lambda *_: None, model_fingerprint=fingerprint_now)
        except BadInput as exc:  # a checkpoint this platform's vLLM cannot serve
            say(f"deployment check in vLLM: {name} skipped: {exc}")
            continue
        (_, own), (_, theirs) = read_results(entry.results_path), read_results(served.results_path)
        checks.append(deployment_check(name, own, theirs))
    for line in deployment_lines(checks):
        say(f"deployment check in vLLM: {line}")
    return checks


def run_pipeline(cfg: Config, force: Sequence[str] = (), examples: int = 0, out=None, err=None) -> dict:
    """Runs every stale stage in order; returns {"ran": [...], "skipped": [...], "table": compare.json}.

    out and err (default: sys.stdout / sys.stderr) get the stage lines and the progress bars; library
    output goes to <work_dir>/logs/<stage>.log.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    cfg = dataclasses.replace(cfg, mode="score")  # AUC, PR curves and margins need scores
    forced = parse_force(force)
    check_inputs(cfg)
    check_target(cfg.work_path, kind="folder", reads=(cfg.model, cfg.calib_data, cfg.test_data))
    with hold(cfg.work_path, inside=True):
        return _run_stages(cfg, forced, examples, out, err)


def _run_stages(cfg: Config, forced: set[str], examples: int, out, err) -> dict:
    from tqdm import tqdm

    hashes = Hashes(cfg)
    stages = build_stages(cfg, hashes, examples)
    total_rows = _count_rows(cfg)
    logs = cfg.work_path / "logs"
    ran, skipped = [], []

    def say(message: str) -> None:
        tqdm.write(message, file=out)

    bar = tqdm(total=len(stages), desc="", unit="stage", file=err, disable=None,
               bar_format="fraudq run {desc:<14} {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed}")
    try:
        for index, stage in enumerate(stages, start=1):
            bar.set_description_str(stage.name)
            prefix = f"[{index}/{len(stages)}] {stage.name:<14}"
            reasons = ["forced"] if stage.name in forced else stage.reasons()
            if not reasons:
                skipped.append(stage.name)
                say(f"{prefix} skipped: inputs unchanged")
                bar.update(1)
                continue
            messages: list[str] = []
            rows_bar = None
            if stage.name.startswith("eval-"):
                rows_bar = tqdm(total=total_rows, desc=stage.name, unit="row", file=err, disable=None,
                                leave=False, position=1, bar_format="           {desc:<14} {n_fmt}/{total_fmt} rows "
                                "|{bar:20}| {elapsed}<{remaining}, {rate_fmt}")
            started = time.perf_counter()
            log_file = logs / f"{stage.name}.log"
            try:
                with stage_log(log_file):
                    stage.run(messages.append, rows_bar.update if rows_bar else None)
            except BadInput:
                raise
            except BaseException:
                say(f"{prefix} failed; library output is in {shown(log_file)}")
                raise
            finally:
                if rows_bar is not None:
                    rows_bar.close()
            ran.append(stage.name)
            say(f"{prefix} ran ({'; '.join(reasons)}) in {time.perf_counter() - started:.1f} s")
            for message in messages:
                say(message if stage.name == "compare" else "    " + message.replace("\n", "\n    "))
            bar.update(1)
    finally:
        bar.close()

    compare_dir = cfg.work_path / "compare"
    table = json.loads((compare_dir / "compare.json").read_text(encoding="utf-8"))
    if "compare" in skipped:  # the table is the point of the run: show the stored one
        log_table(table, say)
        if examples:
            loaded = gather(cfg, list(MODELS), cfg.test_data, say)
            log_examples(loaded, pick_baseline(loaded), examples, cfg.test_data, say)
        log_verdict(table, say)
    say(f"skipped {len(skipped)} of {len(stages)} stages" + (f" ({', '.join(skipped)})" if skipped else "")
        + f"; ran {len(ran)}" + (f" ({', '.join(ran)})" if ran else ""))
    deployment_in_vllm(cfg, say, logs)
    say(f"report: {shown(compare_dir / 'compare.md')} (plots in {shown(compare_dir / 'plots')})")
    say(f"logs: {shown(logs)}")
    return {"ran": ran, "skipped": skipped, "table": table, "compare_dir": str(compare_dir)}
