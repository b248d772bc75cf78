"""The comparison as people read it: a terminal table, Markdown, and flipped examples."""

from __future__ import annotations

from pathlib import Path

from fraudq.data import read_jsonl


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
    base_name, _, base_preds = loaded[base_index]
    for name, _, preds in loaded:
        if name == base_name:
            continue
        flipped = [(b, o) for b, o in zip(base_preds, preds) if b["prediction"] != o["prediction"]][:count]
        log(f"\n{len(flipped)} flipped rows of {name} against {base_name}:")
        for b, o in flipped:
            excerpt = " ".join(texts.get(b["id"], "").split())[:80]
            log(f"  id {b['id']} label {b['label']}: {base_name} {b['prediction']} ({_fmt(b['score'], 3)}), "
                f"{name} {o['prediction']} ({_fmt(o['score'], 3)})  {excerpt}")
