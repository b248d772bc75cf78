"""The comparison as people read it: compact terminal tables, Markdown with every column, flipped examples.

The terminal gets two tables that fit 80-120 columns (quality, cost), the changes with their intervals, the
fitted thresholds and a verdict; compare.md and compare.json keep everything.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path

from fraudq.data import read_jsonl
from fraudq.report.verdict import verdict_lines

MAX_WIDTH, MIN_WIDTH = 120, 80


def width() -> int:
    return max(MIN_WIDTH, min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns))


def _fmt(value, digits=4, signed=False):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value + 0.0:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def _flips(row) -> str:
    flips = (row.get("vs_baseline") or {}).get("flips")
    return f"{flips['total']} ({flips['fraud_to_ok']}/{flips['ok_to_fraud']})" if flips else "–"


def _mcnemar(row) -> str:
    flips = (row.get("vs_baseline") or {}).get("flips")
    return _fmt(flips["mcnemar_p"], 3) if flips else "–"


def _delta(key):
    return lambda row, _t: _fmt(((row.get("vs_baseline") or {}).get("delta") or {}).get(key), signed=True)


def _smaller(row, table) -> str:
    base = next(m for m in table["models"] if m["name"] == table["baseline"])
    if not row["size_bytes"] or not base["size_bytes"]:
        return "–"
    return f"{base['size_bytes'] / row['size_bytes']:.2f}x"


def _get(key, digits=4):
    return lambda row, _t: _fmt(row.get(key), digits)


QUALITY = [("P", _get("precision")), ("R", _get("recall")), ("F1", _get("f1")), ("AUC", _get("auc")),
           ("flips (→ok/→fraud)", lambda r, _t: _flips(r)), ("McNemar p", lambda r, _t: _mcnemar(r)),
           ("P@R", _get("precision_at_recall")), ("R@P", _get("recall_at_precision"))]
COST = [("size MB", lambda r, _t: _fmt(r["size_bytes"] / 1e6, 1) if r["size_bytes"] else "–"),
        ("smaller", _smaller), ("rows/s", _get("samples_per_s", 1)), ("peak GB", _get("peak_memory_gb", 2))]
EVERYTHING = [*QUALITY[:4], ("accuracy", _get("accuracy")), ("PR-AUC", _get("pr_auc")), *QUALITY[4:],
              ("Brier", _get("brier")), ("ECE", _get("ece")), ("ΔP", _delta("precision")), ("ΔR", _delta("recall")),
              ("ΔF1", _delta("f1")), ("ΔAUC", _delta("auc")), ("ΔP@R", _delta("precision_at_recall")),
              ("ΔR@P", _delta("recall_at_precision")), ("ΔBrier", _delta("brier")), ("ΔECE", _delta("ece")), *COST]
FITTED = [("T", lambda m, _t: f"{m['threshold']:.4g}"), ("P", lambda m, _t: _fmt(m["on_rows"]["precision"])),
          ("R", lambda m, _t: _fmt(m["on_rows"]["recall"])), ("F1", lambda m, _t: _fmt(m["on_rows"]["f1"])),
          ("flips", lambda m, _t: _flips({"vs_baseline": m})),
          ("McNemar p", lambda m, _t: _mcnemar({"vs_baseline": m})),
          ("ΔP", lambda m, _t: _fmt(m["bootstrap"]["precision"]["delta"], signed=True) if "bootstrap" in m else "–"),
          ("rows at T", lambda m, _t: str(m["on_rows"]["at_threshold"]))]


def _cells(columns, items, table, names) -> tuple[list[str], list[list[str]]]:
    header = ["model", *(title for title, _ in columns)]
    return header, [[name, *(cell(item, table) for _, cell in columns)] for name, item in zip(names, items)]


def _labels(table) -> list[str]:
    return [row.get("label", row["name"]) for row in table["models"]]


def captions(table: dict) -> dict[str, str]:
    t, base = table.get("targets") or {}, table["baseline"]
    fitted = table.get("fitted")
    out = {
        "quality": (f"Quality on {table['rows']:,} rows. P@R: precision at {base}'s recall {_fmt(t.get('recall'))}; "
                    f"R@P: recall at its precision {_fmt(t.get('precision'))}; both read off each model's own PR "
                    f"curve, {base}'s included. flips and McNemar p: answers changed against {base}."),
        "cost": "Cost: size on disk, smaller than the baseline by, eval rows per second, peak memory.",
    }
    if fitted:
        rows = "these rows" if fitted["same_rows"] else f"{fitted['fit_rows']:,} rows of {fitted['fit_data']}"
        out["fitted"] = (f"Threshold restoring {base}'s recall {fitted['target_recall']:.4f} (fraud when margin > T), "
                         f"fitted on {rows} for every model, {base}'s included; flips and ΔP against {base} at its T.")
        if fitted["same_rows"]:
            out["warning"] = ("warning: the thresholds were fitted and are reported on the same rows, so recall is "
                              "restored by construction and precision is optimistic; --fit-data FILE holds them out")
    return out


def change_lines(table: dict) -> list[tuple[str, list[str]]]:
    lines = []
    for row in table["models"]:
        paired = row.get("vs_baseline") or {}
        parts = [f"{SHORT.get(key, key)} {v['delta'] + 0.0:+.4f} [{v['lo'] + 0.0:+.4f}, {v['hi'] + 0.0:+.4f}]"
                 for key, v in paired.get("bootstrap", {}).items()]
        if paired.get("delta", {}).get("ece") is not None:
            parts.append(f"ECE {paired['delta']['ece'] + 0.0:+.4f}")
        shift = paired.get("margin_shift")
        if shift:
            parts.append(f"margin shift mean {shift['mean'] + 0.0:+.4f}, median {shift['median'] + 0.0:+.4f}")
        if parts:
            lines.append((f"{row['name']}:", parts))
    return lines


def _packed(head: str, parts: list[str], cols: int, indent: str = "  ", hang: str = "    ") -> str:
    """head then parts joined by '; ', broken between parts (never inside one) to fit cols."""
    lines, line = [], f"{indent}{head}"
    for part in parts:
        piece = f" {part};"
        if len(line) + len(piece) > cols and line.strip() != head:
            lines.append(line)
            line = indent + hang[:-1]
        line += piece
    lines.append(line.rstrip(";"))
    return "\n".join(lines)


SHORT = {"precision": "P", "recall": "R", "f1": "F1", "precision_at_recall": "P@R", "recall_at_precision": "R@P",
         "auc": "AUC", "brier": "Brier"}
CHANGES_TITLE = ("Change against the baseline, with 95% bootstrap intervals (1,000 paired resamples); Brier and ECE "
                 "score sigmoid(margin) as P(fraud); margin = log P(true) - log P(false), > 0 = toward fraud:")


def _md_table(header, body) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in body)]


def to_markdown(table: dict, out_dir: Path) -> str:
    caption = captions(table)
    lines = [f"# fraudq compare ({table['rows']} rows, baseline {table['baseline']})", "", caption["quality"], ""]
    lines += _md_table(*_cells(EVERYTHING, table["models"], table, _labels(table)))
    lines += ["", CHANGES_TITLE, "", *(f"- {head} " + "; ".join(parts) for head, parts in change_lines(table))]
    if table.get("fitted"):
        fitted = table["fitted"]["models"]
        lines += ["", caption["fitted"], *(["", caption["warning"]] if "warning" in caption else []), ""]
        lines += _md_table(*_cells(FITTED, fitted, table, [m["name"] for m in fitted]))
    lines += ["", *(f"- {note}" for note in table.get("notes", []))]
    lines += ["", "## Verdict", "", *(f"- {line}" for line in verdict_lines(table))]
    for plot in table.get("plots", []):
        rel = Path(plot).resolve()
        try:
            rel = rel.relative_to(out_dir.resolve())
        except ValueError:
            pass
        lines += ["", f"![{Path(plot).stem}]({rel})"]
    return "\n".join(lines) + "\n"


def _wrapped(text: str, cols: int, indent: str = "", hang: str = "  ") -> str:
    # An interval "[-0.8, +0.2]" is never broken: its spaces are held by no-break spaces while wrapping.
    held = re.sub(r"(?:[+-]\d+\.\d pt )?\[[^\]]*\]", lambda m: m.group(0).replace(" ", "\xa0"), text)
    lines = textwrap.wrap(held, cols, initial_indent=indent, subsequent_indent=indent + hang, break_on_hyphens=False)
    return "\n".join(lines).replace("\xa0", " ")


def _rich(header, body, cols: int) -> str:
    from rich.console import Console
    from rich.table import Table

    view = Table()
    for column in header:
        view.add_column(column, justify="left" if column == "model" else "right")
    for cells in body:
        view.add_row(*cells)
    console = Console(width=cols, record=True)
    with console.capture() as capture:
        console.print(view)
    return capture.get().rstrip()


def log_table(table: dict, log) -> None:
    cols = width()
    caption = captions(table)
    parts = [_wrapped(caption["quality"], cols), _rich(*_cells(QUALITY, table["models"], table, _labels(table)), cols),
             _wrapped(caption["cost"], cols), _rich(*_cells(COST, table["models"], table, _labels(table)), cols)]
    changes = change_lines(table)
    if changes:
        parts.append("\n".join([_wrapped(CHANGES_TITLE, cols),
                                *(_packed(head, items, cols) for head, items in changes)]))
    if table.get("fitted"):
        fitted = table["fitted"]["models"]
        names = [m["name"] for m in fitted]
        parts += [_wrapped(caption["fitted"], cols), _rich(*_cells(FITTED, fitted, table, names), cols)]
        if "warning" in caption:
            parts.append(_wrapped(caption["warning"], cols))
    parts += [_wrapped("note: " + note, cols) for note in table.get("notes", [])]
    log("\n".join(parts))


def log_verdict(table: dict, log) -> None:
    cols = width()
    log("\n".join(["verdict:", *(_wrapped(line, cols, "  ", "    ") for line in verdict_lines(table))]))


def log_examples(loaded, base_index: int, count: int, data: str | None, log) -> None:
    """Prints flipped rows with a dialogue excerpt: shown on the terminal only, never written to a file."""
    from rich.cells import cell_len

    texts = {}
    if data and Path(data).is_file():
        texts = {r.id: r.input for r in read_jsonl(data, need_label=True, skip_invalid=True).rows}
    base_name, _, base_preds = loaded[base_index]
    cols = width()
    for name, _, preds in loaded:
        if name == base_name:
            continue
        flipped = [(b, o) for b, o in zip(base_preds, preds) if b["prediction"] != o["prediction"]][:count]
        log(f"\n{len(flipped)} flipped rows of {name} against {base_name}:")
        for b, o in flipped:
            head = (f"  id {b['id']} label {b['label']}: {base_name} {b['prediction']} ({_fmt(b['score'], 3)}), "
                    f"{name} {o['prediction']} ({_fmt(o['score'], 3)})  ")
            excerpt = ""
            # Cut by terminal cells: a Chinese character takes two.
            for char in " ".join(texts.get(b["id"], "").split()):
                if cell_len(head + excerpt + char) > cols:
                    break
                excerpt += char
            log((head + excerpt).rstrip())
