"""`fraudq compare`: current results for the named models (evaluating stale ones), then the report.

gather evaluates a model whose stored result is missing or stale (workspace.stale_reasons); with --fit-data it
does the same on the fitting file, into results of their own (<name>.fit.json), and the thresholds fitted there
are reported on the test rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fraudq.atomic import atomic_write_json, atomic_write_text, check_target, hold
from fraudq.checkpoint import fingerprint, inspect_model
from fraudq.config import Config
from fraudq.console import row_progress, shown
from fraudq.data import file_sha256
from fraudq.errors import BadInput
from fraudq.eval.evaluate import evaluate_model
from fraudq.eval.results import claim_results, read_results
from fraudq.report.compare import Loaded, build_table, check_comparable, pick_baseline, write_compare_plots
from fraudq.report.deployment import deployment_check, deployment_lines
from fraudq.report.render import log_examples, log_table, log_verdict, to_markdown
from fraudq.thresholds import write_fitted
from fraudq.workspace import Entry, resolve, stale_reasons

NEEDS_DATA = "compare needs the test data: pass --data FILE.jsonl or set test_data in the config"


def recorded_data(entries: list[Entry], log) -> str | None:
    """The data file every stored result records, when they agree and the file still has that hash."""
    recorded = set()
    for entry in entries:
        try:
            result, _ = read_results(entry.results_path)
        except BadInput:
            continue
        recorded.add((result.get("data"), result.get("data_sha256")))
    if len(recorded) != 1:
        return None
    data, sha = recorded.pop()
    if not data or not Path(data).is_file() or file_sha256(Path(data)) != sha:
        return None
    log(f"test data: {shown(data)}, which every results file records (unchanged since)")
    return data


def _tagged(entry: Entry, tag: str) -> Entry:
    if entry.model_path is None:
        raise BadInput(f"--fit-data evaluates models: name a model or folder, not the results file "
                       f"{entry.results_path}")
    path = entry.results_path
    return dataclasses.replace(entry, results_path=path.with_name(f"{path.stem}.{tag}.json"))


def gather(cfg: Config, names: list[str], data: str | None, log=print, tag: str | None = None) -> list[Loaded]:
    """The named models' current results on `data`, evaluating those whose stored result is missing or stale."""
    if not names:
        raise BadInput("name at least one model to compare, e.g. 'fraudq compare int8 int4 fp16'")
    if len(set(names)) != len(names):
        raise BadInput("each model may be named once")
    entries = [resolve(cfg, n) for n in names]
    if tag:
        entries = [_tagged(e, tag) for e in entries]
    needs_eval = [e for e in entries if e.model_path is not None]
    if needs_eval and not data:
        data = recorded_data(entries, log)
        if not data:
            raise BadInput(NEEDS_DATA)
    data_sha = file_sha256(Path(data)) if needs_eval and Path(data).is_file() else None
    loaded = []
    for entry in entries:
        if entry.model_path is not None:
            model_fingerprint = fingerprint(inspect_model(entry.model_path, cfg.trust_remote_code, cfg.allow_pickle))
            reasons = stale_reasons(cfg, entry, data_sha, model_fingerprint)
            if reasons:
                log(f"evaluating {entry.name} on {shown(data)}: no current result ({', '.join(reasons)})")
                # results under work_dir/eval are compare's own cache: replaced without --force
                with claim_results(entry.results_path, True, (data, entry.model_path)), \
                        row_progress(f"eval {entry.name}") as progress:
                    evaluate_model(cfg, str(entry.model_path), data, entry.results_path, log=log,
                                   progress=progress, model_fingerprint=model_fingerprint)
        result, predictions = read_results(entry.results_path)
        loaded.append((entry.name, result, predictions))
    check_comparable(loaded)
    return loaded


def served_in_vllm(cfg: Config, names: list[str], loaded: list[Loaded]) -> list[dict]:
    """For every model with a current vLLM result on the same data (`fraudq eval --runtime vllm`), the check."""
    vllm_cfg = dataclasses.replace(cfg, runtime="vllm")
    checks = []
    for name, (loaded_name, result, predictions) in zip(names, loaded):
        entry = resolve(vllm_cfg, name)
        if entry.model_path is None or not entry.results_path.is_file():
            continue
        try:
            served, served_preds = read_results(entry.results_path)
        except BadInput:
            continue
        if (served.get("model_fingerprint"), served.get("data_sha256")) == (
                result.get("model_fingerprint"), result.get("data_sha256")):
            checks.append(deployment_check(loaded_name, predictions, served_preds))
    return checks


def compare_models(cfg: Config, names: list[str], data: str | None, out_dir: Path, examples: int = 0,
                   plot_dir: Path | None = None, log=print, fit_data: str | None = None) -> dict:
    """`fraudq compare`: compare.json, compare.md, the tables, the threshold files and the verdict."""
    for folder in filter(None, (out_dir, plot_dir)):
        check_target(folder, kind="folder", reads=(data, fit_data))
    with hold(out_dir, inside=True):
        return _compare(cfg, names, data, Path(out_dir), examples, plot_dir, log, fit_data)


def _compare(cfg: Config, names: list[str], data: str | None, out_dir: Path, examples: int,
             plot_dir: Path | None, log, fit_data: str | None) -> dict:
    loaded = gather(cfg, names, data, log)
    fit = gather(cfg, names, fit_data, log, tag="fit") if fit_data else None
    table = build_table(loaded, cfg.seed, fit=fit, fit_data=fit_data)
    table["deployment"] = served_in_vllm(cfg, names, loaded)
    if plot_dir is not None:
        table["plots"] = [str(p) for p in write_compare_plots(loaded, table["models"], table["baseline"], plot_dir)]
    markdown = to_markdown(table, out_dir)
    if table["deployment"]:
        markdown += "\n## Deployment check (vLLM)\n\n" + "".join(f"- {line}\n" for line in deployment_lines(table["deployment"]))
    atomic_write_json(out_dir / "compare.json", table)
    atomic_write_text(out_dir / "compare.md", markdown)
    log_table(table, log)
    if examples:
        log_examples(loaded, pick_baseline(loaded), examples, data or loaded[0][1].get("data"), log)
    if table["deployment"]:
        log("deployment check (the same checkpoint under vLLM):\n" +
            "\n".join("  " + line for line in deployment_lines(table["deployment"])))
    for path in write_fitted(table, loaded, cfg, log):
        log(f"fitted threshold: {shown(path)}")
    log(f"written to {shown(out_dir / 'compare.json')} and {shown(out_dir / 'compare.md')}")
    log_verdict(table, log)
    return table
