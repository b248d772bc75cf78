"""`fraudq run`: calib -> quantize 8 and 4 -> eval fp16/int8/int4 (score mode) -> compare, resumable.

Each stage is skipped when the hashes of its inputs match the ones recorded beside its artifact:

  calib          <calib file>.stamp.json   model fingerprint, calib data sha256, calib settings
  quantize-intN  <work_dir>/intN.stamp.json model fingerprint, calib file sha256, bits + GPTQ settings
  eval-NAME      the results JSON itself   model fingerprint, test data sha256, eval config (as compare checks)
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

from fraudq.atomic import atomic_write_json, atomic_write_text, check_target, hold
from fraudq.calib import build_calibration, meta_path
from fraudq.checkpoint import fingerprint, inspect_model
from fraudq.config import CALIB_KEYS, QUANT_KEYS, Config
from fraudq.console import stage_log
from fraudq.data import file_sha256, read_jsonl
from fraudq.errors import BadInput
from fraudq.eval.evaluate import evaluate_model
from fraudq.eval.results import claim_results, predictions_path, read_results
from fraudq.quant.quantize import quantize_model
from fraudq.report.compare import Loaded, build_table, check_comparable, pick_baseline, write_compare_plots
from fraudq.report.render import log_examples, log_table, to_markdown
from fraudq.workspace import Hashes, resolve, stale_reasons, stamp_reasons, write_stamp

BITS = (8, 4)
MODELS = ("fp16", *(f"int{b}" for b in BITS))
STAGES = ("calib", *(f"quantize-int{b}" for b in BITS), *(f"eval-{m}" for m in MODELS), "compare")


def gather(cfg: Config, names: list[str], data: str | None, log=print) -> list[Loaded]:
    """The named models' current results, evaluating those whose stored result is missing or stale."""
    if not names:
        raise BadInput("name at least one model to compare, e.g. 'fraudq compare int8 int4 fp16'")
    if len(set(names)) != len(names):
        raise BadInput("each model may be named once")
    entries = [resolve(cfg, n) for n in names]
    needs_eval = [e for e in entries if e.model_path is not None]
    if needs_eval and not data:
        raise BadInput("compare needs the test data: pass --data FILE.jsonl or set test_data in the config")
    data_sha = file_sha256(Path(data)) if needs_eval and Path(data).is_file() else None
    loaded = []
    for entry in entries:
        if entry.model_path is not None:
            model_fingerprint = fingerprint(inspect_model(entry.model_path, cfg.trust_remote_code, cfg.allow_pickle))
            if stale_reasons(cfg, entry, data_sha, model_fingerprint):
                log(f"evaluating {entry.name} ({entry.model_path}): no current result")
                # results under work_dir/eval are compare's own cache: replaced without --force
                with claim_results(entry.results_path, force=True, reads=(data, entry.model_path)):
                    evaluate_model(cfg, str(entry.model_path), data, entry.results_path, log=log,
                                   model_fingerprint=model_fingerprint)
        result, predictions = read_results(entry.results_path)
        loaded.append((entry.name, result, predictions))
    check_comparable(loaded)
    return loaded




def compare_models(cfg: Config, names: list[str], data: str | None, out_dir: Path, examples: int = 0,
                   plot_dir: Path | None = None, log=print) -> dict:
    """`fraudq compare`: current results for every named model, then compare.json, compare.md and the table."""
    for folder in filter(None, (out_dir, plot_dir)):
        check_target(folder, kind="folder", reads=(data,))
    with hold(out_dir, inside=True):
        return _compare(cfg, names, data, Path(out_dir), examples, plot_dir, log)


def _compare(cfg: Config, names: list[str], data: str | None, out_dir: Path, examples: int,
             plot_dir: Path | None, log) -> dict:
    loaded = gather(cfg, names, data, log)
    table = build_table(loaded, cfg.seed)
    if plot_dir is not None:
        table["plots"] = [str(p) for p in write_compare_plots(loaded, table["models"], table["baseline"], plot_dir)]
    atomic_write_json(out_dir / "compare.json", table)
    atomic_write_text(out_dir / "compare.md", to_markdown(table, out_dir))
    log_table(table, log)
    if examples:
        log_examples(loaded, pick_baseline(loaded), examples, data, log)
    log(f"written to {out_dir / 'compare.json'} and {out_dir / 'compare.md'}")
    return table


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
        return {"results": results, "config": {"seed": cfg.seed, "plots": True}}

    def compare_output():
        return hashes.file(compare_dir / "compare.json")

    def run_compare(log, _progress):
        inputs = compare_inputs()
        compare_models(cfg, list(MODELS), cfg.test_data, compare_dir, examples=examples,
                       plot_dir=compare_dir / "plots", log=log)
        hashes.forget(compare_dir / "compare.json")
        write_stamp(compare_dir, "compare", inputs, compare_output())

    stages.append(Stage("compare", compare_dir, lambda: stamp_reasons(compare_dir, compare_inputs(), compare_output),
                        run_compare))
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
                say(f"{prefix} failed; library output is in {log_file}")
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
    say(f"skipped {len(skipped)} of {len(stages)} stages" + (f" ({', '.join(skipped)})" if skipped else "")
        + f"; ran {len(ran)}" + (f" ({', '.join(ran)})" if ran else ""))
    say(f"report: {compare_dir / 'compare.md'} (plots in {compare_dir / 'plots'}); logs: {logs}")
    return {"ran": ran, "skipped": skipped, "table": table, "compare_dir": str(compare_dir)}
