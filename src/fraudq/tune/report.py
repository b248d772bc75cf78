"""What tune shows and writes: a line per candidate, tune.json, tune.md, the terminal table, the winner's
fraudq_threshold.json (compare's fitted threshold, on the validation rows), and the test-set report of the winner
beside the reference recipe's."""

from __future__ import annotations

from pathlib import Path

from fraudq.atomic import atomic_write_json, atomic_write_text
from fraudq.eval.results import read_results
from fraudq.tune.sizing import FORMULA


def _num(value, digits=4, signed=False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def verdict(cand) -> str:
    if cand.status == "pruned":
        return f"pruned: {cand.pruned_by}"
    return "accepted" if cand.accepted else "rejected: " + "; ".join(cand.reasons)


def progress_line(index: int, total: int, cand, remaining: int, best, nearest) -> str:
    head = f"[{index}/{total}] {cand.id:<28}"
    if cand.status == "pruned":
        body = f"pruned ({cand.pruned_by})"
    else:
        val = cand.outcome["val"]
        did = f"ran in {cand.outcome['seconds']:.1f} s" if cand.status == "ran" else "skipped (finished earlier)"
        body = (f"{did}, {cand.outcome['engine']} engine: {cand.bits:.3f} bits/weight, "
                f"{val['flips']} flips ({val['flip_rate']:.1%}), dF1 {val['delta_f1']:+.4f}, "
                f"McNemar p {val['mcnemar_p']:.3f}: {verdict(cand)}")
    lead = f"best so far {best.id} ({best.bits:.3f} bits)" if best else (
        f"none accepted yet (nearest {nearest.id})" if nearest else "none accepted yet")
    return f"{head} {body}; {remaining} remaining; {lead}"


def pareto(pool) -> set[str]:
    """Finished candidates no other beats on both average bits and flips."""
    done = [c for c in pool if c.finished]
    return {c.id for c in done if not any(o.bits <= c.bits and o.flips <= c.flips and (o.bits, o.flips) != (c.bits, c.flips)
                                          for o in done)}


def entry(cand, front: set[str], budget: float) -> dict:
    outcome = cand.outcome or {}
    size = outcome.get("size") or {}
    return {"id": cand.id, "recipe": cand.recipe.to_dict(), "reference": cand.reference,
            "engine": outcome.get("engine"), "status": cand.status, "pruned_by": cand.pruned_by,
            "quantized": outcome.get("quantized", False), "evaluated": outcome.get("evaluated", False),
            "estimated_avg_bits": cand.estimate["avg_bits"], "avg_bits": size.get("avg_bits"),
            "size_bytes": size.get("size_bytes"), "quantized_bits": size.get("quantized_bits"),
            "disk_bytes": outcome.get("disk_bytes"), "kept_8bit_layers": cand.kept_layers,
            "dynamic": outcome.get("dynamic"), "val": outcome.get("val"), "accepted": cand.accepted,
            "rejected_because": cand.reasons if cand.finished else None,
            "within_budget": cand.bits <= budget, "pareto": cand.id in front, "seconds": outcome.get("seconds"),
            "checkpoint": outcome.get("checkpoint")}


def fitted_threshold(cfg, baseline, chosen_val, tuned: Path, say) -> dict | None:
    """compare's fitted threshold for the winner (the highest margin threshold whose validation recall reaches the
    baseline's), fitted on the validation rows and written beside the winner as fraudq_threshold.json, which
    `fraudq eval --threshold fitted` reads."""
    from fraudq.report.compare import build_table
    from fraudq.thresholds import write_fitted

    result, preds = chosen_val
    loaded = [("original", *baseline), ("tuned", {**result, "model": str(tuned)}, preds)]
    table = build_table(loaded, cfg.seed)
    fitted = table.get("fitted")
    if not fitted:
        return None
    files = write_fitted(table, loaded, cfg, say)
    model = next(m for m in fitted["models"] if m["name"] == "tuned")
    return {"threshold": model["threshold"], "baseline_recall": fitted["target_recall"],
            "recall": model["on_fit"]["recall"], "precision": model["on_fit"]["precision"],
            "rows": fitted["fit_rows"], "file": str(files[0]) if files else None,
            "rule": "fraud when margin > threshold; fitted on the validation rows"}


def table(pool, front) -> tuple[list[str], list[list[str]]]:
    header = ["candidate", "engine", "avg bits", "size MB", "flips", "dF1", "dAUC", "McNemar p", "Pareto", "verdict"]
    rows = []
    for cand in sorted(pool, key=lambda c: (c.bits, c.id)):
        val = (cand.outcome or {}).get("val") or {}
        size = ((cand.outcome or {}).get("size") or cand.estimate)["size_bytes"]
        rows.append([cand.id + (" (reference)" if cand.reference else ""), (cand.outcome or {}).get("engine") or "–",
                     f"{cand.bits:.3f}" + ("" if cand.finished else " (est.)"), f"{size / 1e6:.2f}",
                     f"{val['flips']} ({val['flip_rate']:.1%})" if val else "–",
                     _num(val.get("delta_f1"), signed=True), _num(val.get("delta_auc"), signed=True),
                     _num(val.get("mcnemar_p"), 3), "*" if cand.id in front else "", verdict(cand)])
    return header, rows


def log_table(header, rows, title: str, say) -> None:
    from rich.console import Console
    from rich.table import Table

    view = Table(title=title)
    for column in header:
        view.add_column(column, justify="left" if column in ("candidate", "verdict", "engine") else "right")
    for cells in rows:
        view.add_row(*cells)
    console = Console(width=220, record=True)
    with console.capture() as capture:
        console.print(view)
    say(capture.get().rstrip())


def markdown(summary: dict, header, rows, plot: Path | None) -> str:
    chosen = summary["chosen"]
    split = summary["validation"]["split"]
    lines = [f"# fraudq tune ({summary['candidates_total']} candidates, {summary['space']} list)", "",
             f"- model: {summary['model']}", f"- validation: {summary['validation']['path']} "
             f"({summary['validation']['rows']} rows)"
             + (f" split off the calibration data {split['from']}, seed {split['seed']}" if split else ""),
             f"- budget: {summary['budget_bits']:g} average bits per weight", f"- rule: {summary['rule']['text']}",
             f"- chosen: {chosen or 'none passes; nearest ' + str(summary['nearest'])}", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in rows]
    lines += ["", f"Average bits per weight: {summary['formula']}", ""]
    if summary.get("threshold"):
        t = summary["threshold"]
        lines += [f"Threshold restoring the baseline's validation recall ({t['baseline_recall']:.4f}): "
                  f"{t['threshold']:+.4f} (recall {t['recall']:.4f}, precision {t['precision']:.4f}), written to "
                  f"{t['file']} for `fraudq eval --threshold fitted`.", ""]
    if summary.get("test"):
        lines += ["Test set (reports the winner beside the reference recipe; it never chose): "
                  "[test/compare.md](test/compare.md)", ""]
    if plot:
        lines += [f"![tune Pareto]({plot.name})"]
    return "\n".join(lines) + "\n"


def test_report(cfg, runner, reference, chosen, tuned: Path | None, say) -> dict:
    """The baseline, the reference recipe and the winner on the test set: compare.json / compare.md, with each
    model's threshold fitted on the validation rows, so the test figures at those thresholds are held out."""
    from fraudq.report.compare import build_table
    from fraudq.report.render import log_table as log_compare
    from fraudq.report.render import to_markdown

    test_dir = runner.tune_dir / "test"
    models = [("original", Path(cfg.model), runner.baseline_path),
              ("reference", Path(reference.outcome["checkpoint"]), runner.tune_dir / reference.id / "val.json")]
    if tuned is not None and chosen.id != reference.id:
        models.append(("tuned", tuned, runner.tune_dir / chosen.id / "val.json"))
    loaded, fit = [], []
    for name, path, val in models:
        out = test_dir / f"{name}.json"
        runner.evaluate(path, out, f"test-{name}", data=Path(cfg.test_data))
        loaded.append((name, *read_results(out)))
        fit.append((name, *read_results(val)))
    compare = build_table(loaded, cfg.seed, fit=fit, fit_data=str(runner.val.path))
    atomic_write_json(test_dir / "compare.json", compare)
    atomic_write_text(test_dir / "compare.md", to_markdown(compare, test_dir))
    say(f"test set {cfg.test_data}: reference {reference.id}" + (f", tuned {chosen.id}" if chosen else ""))
    log_compare(compare, say)
    return {"data": str(cfg.test_data), "compare_json": str(test_dir / "compare.json"),
            "compare_md": str(test_dir / "compare.md"), "reference": reference.id,
            "tuned": chosen.id if chosen else None, "models": [m["name"] for m in compare["models"]]}


def write_all(cfg, space: str, val, baseline, search, chosen, tuned, test, tune_dir: Path, say) -> dict:
    from fraudq.tune.plot import pareto_plot

    pool = search.pool
    front = pareto(pool)
    nearest = None if chosen else search.nearest()
    base_result = baseline[0]
    summary = {
        "model": cfg.model, "space": space, "candidates_total": len(pool),
        "validation": {"path": str(val.path), "rows": val.rows, "split": val.split},
        "test_data": cfg.test_data or None, "budget_bits": cfg.tune_budget_bits,
        "rule": {"max_flip_rate": cfg.tune_max_flip_rate, "alpha": cfg.tune_alpha,
                 "max_delta_f1": cfg.tune_max_delta_f1,
                 "text": f"flips <= {cfg.tune_max_flip_rate:.2%} of rows, McNemar p >= {cfg.tune_alpha:g}, "
                         f"|dF1| <= {cfg.tune_max_delta_f1:g}; then fewest average bits within the budget, "
                         "ties by fewer flips"},
        "formula": FORMULA,
        "baseline": {k: base_result.get(k) for k in ("f1", "precision", "recall", "auc", "rows")},
        "candidates": [entry(c, front, cfg.tune_budget_bits) for c in pool],
        "chosen": chosen.id if chosen else None, "chosen_recipe": chosen.recipe.to_dict() if chosen else None,
        "nearest": nearest.id if nearest else None, "tuned_dir": str(tuned) if tuned else None,
        "threshold": fitted_threshold(cfg, baseline, read_results(tune_dir / chosen.id / "val.json"), tuned, say)
        if chosen else None,
        "test": test,
    }
    header, rows = table(pool, front)
    plot = pareto_plot(pool, front, chosen, cfg.tune_budget_bits, tune_dir / "tune_pareto.png")
    summary["plot"] = str(plot) if plot else None
    atomic_write_json(tune_dir / "tune.json", summary)
    atomic_write_text(tune_dir / "tune.md", markdown(summary, header, rows, plot))
    log_table(header, rows, f"fraudq tune: {val.rows} validation rows, budget {cfg.tune_budget_bits:g} bits", say)
    if chosen:
        say(f"chosen: {chosen.id} ({chosen.bits:.3f} bits per weight, {chosen.flips} flips on validation), "
            f"written to {tuned}")
    else:
        say(f"no candidate passes the rule within {cfg.tune_budget_bits:g} bits; nearest: "
            f"{nearest.id if nearest else 'none'}" + (f" ({verdict(nearest)})" if nearest else ""))
    ran = sum(c.status == "ran" for c in pool)
    skipped = sum(c.status == "skipped" for c in pool)
    pruned = sum(c.status == "pruned" for c in pool)
    say(f"ran {ran}, skipped {skipped} finished earlier, pruned {pruned}; report: {tune_dir / 'tune.md'}")
    return summary
