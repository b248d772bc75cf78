"""Side-by-side of several evaluated models against a baseline, with paired statistics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fraudq.report import stats
from fraudq.atomic import atomic_write_json, atomic_write_text
from fraudq.config import Config
from fraudq.data import file_sha256, read_jsonl
from fraudq.errors import BadInput
from fraudq.eval.evaluate import PROMPT_KEYS, evaluate_model, read_results
from fraudq.report.metrics import average_precision
from fraudq.checkpoint import fingerprint, inspect_model

ORIGINAL_NAMES = ("fp16", "bf16", "fp32", "original")
METRICS = ("precision", "recall", "f1", "accuracy", "auc")


@dataclass
class Entry:
    name: str
    model_path: Path | None  # None when the name is a results file given directly
    results_path: Path


def known_names(cfg: Config) -> list[str]:
    names = ["fp16"] if cfg.model else []
    names += sorted(p.name for p in cfg.work_path.glob("int*") if (p / "config.json").is_file())
    return names


def results_name(cfg: Config, model: str) -> str:
    """The name `compare` knows a model folder by, so `eval --model runs/int8` feeds `compare int8`."""
    target = Path(model).resolve()
    if cfg.model and Path(cfg.model).resolve() == target:
        return "fp16"
    for bits in (2, 3, 4, 8):
        if cfg.quant_dir(bits).resolve() == target:
            return f"int{bits}"
    return target.name


def resolve(cfg: Config, name: str) -> Entry:
    """fp16 is the configured model, intN what `quantize --bits N` wrote; anything else is a path."""
    if name in ORIGINAL_NAMES and cfg.model:
        return Entry(name, Path(cfg.model), cfg.eval_results_path(name))
    if re.fullmatch(r"int[2348]", name) and (cfg.quant_dir(int(name[3:])) / "config.json").is_file():
        return Entry(name, cfg.quant_dir(int(name[3:])), cfg.eval_results_path(name))
    path = Path(name)
    if path.is_file() and path.suffix == ".json":
        return Entry(path.stem, None, path)
    if path.is_dir() and (path / "config.json").is_file():
        label = path.name or str(path)
        return Entry(label, path, cfg.eval_results_path(label))
    known = ", ".join(known_names(cfg)) or "none yet (run 'fraudq quantize' or set model)"
    raise BadInput(f"no checkpoint or results for '{name}'; known names: {known}; or give a model folder path")


def stale_reasons(cfg: Config, entry: Entry, data_sha: str, model_fingerprint: str | None = None) -> list[str]:
    """Why a stored eval result is not this model's on this data and eval config; [] when it is.

    A result records the hashes of its inputs, so it is its own stamp; `fraudq run` asks this too.
    """
    if not entry.results_path.is_file():
        return ["no result"]
    try:
        result, _ = read_results(entry.results_path)
    except BadInput:  # damaged or half-replaced: evaluate again rather than stop
        return ["result damaged"]
    if model_fingerprint is None:
        model_fingerprint = fingerprint(inspect_model(entry.model_path, cfg.trust_remote_code, cfg.allow_pickle))
    same = {"model": result.get("model_fingerprint") == model_fingerprint,
            "data": result.get("data_sha256") == data_sha,
            "eval config": result.get("eval_config") == {k: getattr(cfg, k) for k in PROMPT_KEYS}}
    return [f"{what} changed" for what, ok in same.items() if not ok]


def gather(cfg: Config, names: list[str], data: str | None, log=print) -> list[tuple[Entry, dict, list[dict]]]:
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
        if entry.model_path is not None and stale_reasons(cfg, entry, data_sha):
            log(f"evaluating {entry.name} ({entry.model_path}): no current result")
            evaluate_model(cfg, str(entry.model_path), data, entry.results_path, log=log)
        result, predictions = read_results(entry.results_path)
        loaded.append((entry, result, predictions))
    check_comparable(loaded)
    return loaded


def check_comparable(loaded) -> None:
    """Results on other data or another prompt are not comparable: refuse rather than mislead."""
    first_entry, first, first_preds = loaded[0]
    for entry, result, preds in loaded[1:]:
        if result.get("data_sha256") != first.get("data_sha256"):
            raise BadInput(f"{entry.name} was evaluated on other data than {first_entry.name}; rerun eval on one file")
        if result.get("eval_config") != first.get("eval_config"):
            raise BadInput(f"{entry.name} was evaluated with another eval config than {first_entry.name}; rerun eval")
        if [p["id"] for p in preds] != [p["id"] for p in first_preds]:
            raise BadInput(f"{entry.name} and {first_entry.name} cover different rows; rerun eval with the same --limit")


def pick_baseline(loaded) -> int:
    for index, (_, result, _) in enumerate(loaded):
        if result.get("quantization") is None:
            return index
    return 0


def model_row(entry: Entry, result: dict, predictions: list[dict]) -> dict:
    labels = [p["label"] for p in predictions]
    scores = [p["score"] for p in predictions]
    has_scores = all(s is not None for s in scores)
    return {
        "name": entry.name,
        "model": result["model"],
        "bits": (result.get("quantization") or {}).get("bits"),
        **{k: result.get(k) for k in METRICS},
        "pr_auc": average_precision(labels, scores) if has_scores else None,
        "confusion": result["confusion"],
        "size_bytes": result.get("size_bytes"),
        "samples_per_s": result.get("samples_per_s"),
        "peak_memory_gb": (result.get("memory") or {}).get("peak_gpu_gb", (result.get("memory") or {}).get("peak_rss_gb")),
        "kernel": result.get("kernel"),
    }


def paired_row(base_preds: list[dict], other_preds: list[dict], base: dict, row: dict, seed: int) -> dict:
    labels = [p["label"] for p in base_preds]
    base_y = [p["prediction"] for p in base_preds]
    other_y = [p["prediction"] for p in other_preds]
    paired = {
        "delta": {k: _diff(row[k], base[k]) for k in METRICS + ("pr_auc",)},
        "flips": stats.flips(labels, base_y, other_y),
        "bootstrap": stats.bootstrap_deltas(labels, base_y, other_y, n_resamples=1000, seed=seed),
    }
    base_scores = [p["score"] for p in base_preds]
    other_scores = [p["score"] for p in other_preds]
    if None not in base_scores and None not in other_scores:
        paired["margin_shift"] = stats.margin_shift(base_scores, other_scores)
        paired["at_matched_recall"] = stats.precision_at_recall(labels, other_scores, base["recall"])
    return paired


def _diff(value, base):
    return None if value is None or base is None else value - base


def compare(cfg: Config, names: list[str], data: str | None, out_dir: Path, examples: int = 0,
            plot_dir: Path | None = None, log=print) -> dict:
    loaded = gather(cfg, names, data, log)
    base_index = pick_baseline(loaded)
    base_entry, _, base_preds = loaded[base_index]
    rows = [model_row(*item) for item in loaded]
    for row, (entry, _, preds) in zip(rows, loaded):
        if entry is not base_entry:
            row["vs_baseline"] = paired_row(base_preds, preds, rows[base_index], row, cfg.seed)
    table = {"baseline": base_entry.name, "data_sha256": loaded[0][1].get("data_sha256"),
             "eval_config": loaded[0][1].get("eval_config"), "rows": len(base_preds), "models": rows}
    if plot_dir is not None:
        table["plots"] = [str(p) for p in write_compare_plots(loaded, rows, base_entry.name, plot_dir)]
    atomic_write_json(out_dir / "compare.json", table)
    atomic_write_text(out_dir / "compare.md", to_markdown(table, out_dir))
    log_table(table, log)
    if examples:
        log_examples(loaded, base_index, examples, data, log)
    log(f"written to {out_dir / 'compare.json'} and {out_dir / 'compare.md'}")
    return table


def write_compare_plots(loaded, rows, baseline: str, plot_dir: Path) -> list[Path]:
    from fraudq.report.plots import write_plots

    models = []
    for row, (_, _, preds) in zip(rows, loaded):
        labels = [p["label"] for p in preds]
        scores = [p["score"] for p in preds]
        predictions = [p["prediction"] for p in preds]
        models.append({"name": row["name"], "labels": labels, "preds": predictions,
                       "scores": scores if None not in scores else None,
                       "precision": row["precision"], "recall": row["recall"], "f1": row["f1"],
                       "size_bytes": row["size_bytes"], "ci": stats.bootstrap_metric_ci(labels, predictions)})
    return write_plots(models, baseline, plot_dir)


def _fmt(value, digits=4, signed=False):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def table_rows(table: dict) -> tuple[list[str], list[list[str]]]:
    header = ["model", "precision", "recall", "F1", "accuracy", "AUC", "PR-AUC", "size MB", "rows/s",
              "peak GB", "ΔP", "ΔR", "ΔF1", "flips (fraud→ok / ok→fraud)", "McNemar p", "P @ base recall"]
    body = []
    for row in table["models"]:
        paired = row.get("vs_baseline")
        delta = paired["delta"] if paired else {}
        flips = paired["flips"] if paired else None
        matched = (paired or {}).get("at_matched_recall")
        body.append([
            row["name"] + (" (baseline)" if not paired else ""),
            *(_fmt(row[k]) for k in ("precision", "recall", "f1", "accuracy", "auc", "pr_auc")),
            _fmt(row["size_bytes"] / 1e6, 1) if row["size_bytes"] else "–",
            _fmt(row["samples_per_s"], 1), _fmt(row["peak_memory_gb"], 2),
            *(_fmt(delta.get(k), signed=True) for k in ("precision", "recall", "f1")),
            f"{flips['total']} ({flips['fraud_to_ok']} / {flips['ok_to_fraud']})" if flips else "–",
            _fmt(flips["mcnemar_p"], 3) if flips else "–",
            _fmt(matched["precision"]) if matched else "–",
        ])
    return header, body


INTERVALS_TITLE = ("Change against the baseline, with 95% bootstrap intervals (1,000 paired resamples), "
                   "and the shift of the score margin row by row (log P(true) - log P(false); > 0 = toward fraud):")


def interval_lines(table: dict) -> list[str]:
    lines = []
    for row in table["models"]:
        paired = row.get("vs_baseline") or {}
        parts = [f"{k} {v['delta']:+.4f} [{v['lo']:+.4f}, {v['hi']:+.4f}]" for k, v in paired.get("bootstrap", {}).items()]
        shift = paired.get("margin_shift")
        if shift:
            parts.append(f"margin shift mean {shift['mean'] + 0.0:+.4f}, median {shift['median'] + 0.0:+.4f}")
        if parts:
            lines.append(f"{row['name']}: " + "; ".join(parts))
    return lines


def to_markdown(table: dict, out_dir: Path) -> str:
    header, body = table_rows(table)
    lines = [f"# fraudq compare ({table['rows']} rows, baseline {table['baseline']})", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += ["", INTERVALS_TITLE, ""]
    lines += [f"- {line}" for line in interval_lines(table)]
    for plot in table.get("plots", []):
        rel = Path(plot).resolve()
        try:
            rel = rel.relative_to(out_dir.resolve())
        except ValueError:
            pass
        lines += ["", f"![{Path(plot).stem}]({rel})"]
    return "\n".join(lines) + "\n"


def log_table(table: dict, log) -> None:
    from rich.console import Console
    from rich.table import Table

    header, body = table_rows(table)
    view = Table(title=f"fraudq compare: {table['rows']} rows, baseline {table['baseline']}")
    for column in header:
        view.add_column(column, justify="left" if column == "model" else "right")
    for cells in body:
        view.add_row(*cells)
    console = Console(width=220, record=True)
    with console.capture() as capture:
        console.print(view)
    lines = interval_lines(table)
    log(capture.get().rstrip() + ("\n" + INTERVALS_TITLE + "\n" + "\n".join("  " + line for line in lines) if lines else ""))


def log_examples(loaded, base_index: int, count: int, data: str | None, log) -> None:
    """Prints flipped rows with a dialogue excerpt: shown on the terminal only, never written to a file."""
    texts = {}
    if data and Path(data).is_file():
        texts = {r.id: r.input for r in read_jsonl(data, need_label=True, skip_invalid=True).rows}
    base_entry, _, base_preds = loaded[base_index]
    for entry, _, preds in loaded:
        if entry is base_entry:
            continue
        flipped = [(b, o) for b, o in zip(base_preds, preds) if b["prediction"] != o["prediction"]][:count]
        log(f"\n{len(flipped)} flipped rows of {entry.name} against {base_entry.name}:")
        for b, o in flipped:
            excerpt = " ".join(texts.get(b["id"], "").split())[:80]
            log(f"  id {b['id']} label {b['label']}: {base_entry.name} {b['prediction']} ({_fmt(b['score'], 3)}), "
                f"{entry.name} {o['prediction']} ({_fmt(o['score'], 3)})  {excerpt}")
