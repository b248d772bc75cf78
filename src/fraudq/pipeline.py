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
import textwrap
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
    return [_calib_stage(cfg, hashes), *(_quantize_stage(cfg, hashes, bits) for bits in BITS),
            *(_eval_stage(cfg, hashes, name) for name in MODELS), _compare_stage(cfg, hashes, examples)]


def _calib_stage(cfg: Config, hashes: Hashes) -> Stage:
    calib = cfg.calib_path

    def inputs():
        return {"model": hashes.model(Path(cfg.model)), "calib_data": hashes.file(Path(cfg.calib_data)),
                "config": {k: getattr(cfg, k) for k in CALIB_KEYS}}

    def output():
        return hashes.file(calib) if meta_path(calib).is_file() else None

    def run(log, _progress):
        recorded = inputs()
        build_calibration(cfg, cfg.calib_data, calib, force=True, log=log)
        hashes.forget(calib)
        write_stamp(calib, "calib", recorded, output())

    return Stage("calib", calib, lambda: stamp_reasons(calib, inputs(), output), run)


def _quantize_stage(cfg: Config, hashes: Hashes, bits: int) -> Stage:
    calib, out = cfg.calib_path, cfg.quant_dir(bits)

    def inputs():
        return {"model": hashes.model(Path(cfg.model)), "calib": hashes.file(calib),
                "config": {"bits": bits, **{k: getattr(cfg, k) for k in QUANT_KEYS}}}

    def run(log, _progress):
        recorded = inputs()
        quantize_model(cfg, bits, calib, out, force=True, log=log)
        hashes.forget(out)
        write_stamp(out, f"quantize-int{bits}", recorded, hashes.model(out))

    return Stage(f"quantize-int{bits}", out, lambda: stamp_reasons(out, inputs(), lambda: hashes.model(out)), run)


def _eval_stage(cfg: Config, hashes: Hashes, name: str) -> Stage:
    def reasons():
        entry = resolve(cfg, name)
        return stale_reasons(cfg, entry, hashes.file(Path(cfg.test_data)), hashes.model(entry.model_path))

    def run(log, progress):
        entry = resolve(cfg, name)
        with claim_results(entry.results_path, force=True, reads=(cfg.test_data, entry.model_path)):
            evaluate_model(cfg, str(entry.model_path), cfg.test_data, entry.results_path, log=log,
                           progress=progress, model_fingerprint=hashes.model(entry.model_path))
        hashes.forget(entry.results_path)
        hashes.forget(predictions_path(entry.results_path))

    return Stage(f"eval-{name}", cfg.eval_results_path(name), reasons, run)


def _compare_stage(cfg: Config, hashes: Hashes, examples: int) -> Stage:
    compare_dir = cfg.work_path / "compare"

    def inputs():
        results = {}
        for name in MODELS:
            path = cfg.eval_results_path(name)
            results[name] = [hashes.file(path), hashes.file(predictions_path(path))]
        # "report" names the layout of compare.json: a stored report of an older layout is rebuilt.
        return {"results": results, "config": {"seed": cfg.seed, "plots": True, "report": 2}}

    def output():
        return hashes.file(compare_dir / "compare.json")

    def run(log, _progress):
        recorded = inputs()
        compare_models(cfg, list(MODELS), cfg.test_data, compare_dir, examples=examples,
                       plot_dir=compare_dir / "plots", log=log)
        hashes.forget(compare_dir / "compare.json")
        write_stamp(compare_dir, "compare", recorded, output())

    def reasons():
        # compare writes the fitted thresholds beside int8/ and int4/; a requantized folder has lost its own.
        stale = stamp_reasons(compare_dir, inputs(), output)
        if stale or "fitted" not in json.loads((compare_dir / "compare.json").read_text(encoding="utf-8")):
            return stale
        missing = [f"int{b}" for b in BITS if not threshold_file(cfg.quant_dir(b)).is_file()]
        return [f"threshold file missing in {', '.join(missing)}"] if missing else []

    return Stage("compare", compare_dir, reasons, run)


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

    def report(line: str) -> None:  # vLLM's refusals are long: wrapped to fit the terminal like the rest
        say(textwrap.fill(f"deployment check in vLLM: {line}", 118, subsequent_indent="    "))

    if importlib.util.find_spec("vllm") is None:
        report("skipped, vLLM is not installed (pip install 'fraudq[vllm]'; docs/VLLM.md)")
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
            report(f"{name} skipped: {exc}")
            continue
        (_, own), (_, theirs) = read_results(entry.results_path), read_results(served.results_path)
        checks.append(deployment_check(name, own, theirs))
    for line in deployment_lines(checks):
        report(line)
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

    stages = build_stages(cfg, Hashes(cfg), examples)
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
            if reasons:
                _run_stage(stage, prefix, reasons, logs / f"{stage.name}.log", total_rows, err, say)
                ran.append(stage.name)
            else:
                skipped.append(stage.name)
                say(f"{prefix} skipped: inputs unchanged")
            bar.update(1)
    finally:
        bar.close()
    return _report(cfg, examples, len(stages), ran, skipped, logs, say)


def _run_stage(stage: Stage, prefix: str, reasons: list[str], log_file: Path, total_rows: int, err, say) -> None:
    """Runs one stale stage with library output going to `log_file`, then says why it ran, how long it took and
    what it logged."""
    from tqdm import tqdm

    messages: list[str] = []
    rows_bar = None
    if stage.name.startswith("eval-"):
        rows_bar = tqdm(total=total_rows, desc=stage.name, unit="row", file=err, disable=None,
                        leave=False, position=1, bar_format="           {desc:<14} {n_fmt}/{total_fmt} rows "
                        "|{bar:20}| {elapsed}<{remaining}, {rate_fmt}")
    started = time.perf_counter()
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
    say(f"{prefix} ran ({'; '.join(reasons)}) in {time.perf_counter() - started:.1f} s")
    for message in messages:
        say(message if stage.name == "compare" else "    " + message.replace("\n", "\n    "))


def _report(cfg: Config, examples: int, stage_count: int, ran: list[str], skipped: list[str], logs: Path, say) -> dict:
    compare_dir = cfg.work_path / "compare"
    table = json.loads((compare_dir / "compare.json").read_text(encoding="utf-8"))
    if "compare" in skipped:  # the table is the point of the run: show the stored one
        log_table(table, say)
        if examples:
            loaded = gather(cfg, list(MODELS), cfg.test_data, say)
            log_examples(loaded, pick_baseline(loaded), examples, cfg.test_data, say)
        log_verdict(table, say)
    say(f"skipped {len(skipped)} of {stage_count} stages" + (f" ({', '.join(skipped)})" if skipped else "")
        + f"; ran {len(ran)}" + (f" ({', '.join(ran)})" if ran else ""))
    deployment_in_vllm(cfg, say, logs)
    say(f"report: {shown(compare_dir / 'compare.md')} (plots in {shown(compare_dir / 'plots')})")
    say(f"logs: {shown(logs)}")
    return {"ran": ran, "skipped": skipped, "table": table, "compare_dir": str(compare_dir)}
