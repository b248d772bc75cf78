"""Comparison plots, written as PNG files; never opens a window.

Every series differs by hatch, line style or marker as well as colour, so the plots
still read when printed in grayscale or seen by colour-blind readers.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs over SSH and in CI with no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fraudq.report.metrics import average_precision, pr_curve  # noqa: E402

DPI = 120
# Okabe-Ito colours, ordered so neighbours also differ in lightness.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000"]
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
METRIC_STYLE = {  # metric: (label, colour, hatch)
    "precision": ("precision", "#0072B2", ""),
    "recall": ("recall", "#E69F00", "///"),
    "f1": ("F1", "#009E73", "xxx"),
}


def _style(i: int, table: list):
    return table[i % len(table)]


def _signed(value: float) -> str:
    return f"{round(float(value), 3) + 0.0:+.3f}"  # + 0.0 turns -0.0 into 0.0: no "-0.000"


def _label(model: dict, baseline: str) -> str:
    return f"{model['name']} (baseline)" if model["name"] == baseline else model["name"]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _metrics_plot(models: list[dict], baseline: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(models) + 2), 4.8))
    x = np.arange(len(models))
    width = 0.26
    for j, (key, (label, color, hatch)) in enumerate(METRIC_STYLE.items()):
        values = np.array([m[key] for m in models], dtype=float)
        cis = [(m.get("ci") or {}).get(key) for m in models]
        # Error bars are distances from the bar top; a missing CI draws none.
        yerr = np.array(
            [[max(0.0, v - ci[0]), max(0.0, ci[1] - v)] if ci else [0.0, 0.0] for v, ci in zip(values, cis)]
        ).T
        pos = x + (j - 1) * width
        ax.bar(pos, values, width, yerr=yerr, capsize=3, label=label, color=color, hatch=hatch, edgecolor="black")
        for p, v, top in zip(pos, values, values + yerr[1]):
            ax.text(p, top + 0.015, f"{v:.3f}", ha="center", va="bottom", rotation=90, fontsize=8)
    ax.set_xticks(x, [_label(m, baseline).replace(" (", "\n(") for m in models])
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score (fraction, 0 to 1)")
    ax.set_xlabel("model")
    ax.set_title("Precision, recall and F1 per model (error bars: bootstrap CI)")
    ax.legend(loc="upper center", ncol=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _pr_plot(models: list[dict], baseline: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for i, m in enumerate(models):
        if m.get("scores") is None:
            continue
        precision, recall, _ = pr_curve(m["labels"], m["scores"])
        ap = average_precision(m["labels"], m["scores"])
        ap_text = "n/a" if ap is None else f"{ap:.3f}"
        color, ls, marker = _style(i, COLORS), _style(i, LINESTYLES), _style(i, MARKERS)
        ax.plot(recall, precision, color=color, linestyle=ls, linewidth=1.8,
                label=f"{_label(m, baseline)}, AP {ap_text}")
        # The model's own yes/no answers give one point: where it actually operates on this curve.
        ax.plot(m["recall"], m["precision"], marker=marker, color=color, markeredgecolor="black",
                markersize=8, linestyle="none", label=f"{m['name']} operating point")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(top=1.02)
    ax.set_xlabel("recall (fraction of fraud rows flagged)")
    ax.set_ylabel("precision (fraction of flagged rows that are fraud)")
    ax.set_title("Precision-recall curves (threshold swept over scores)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _size_plot(models: list[dict], baseline: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    sized = [(i, m) for i, m in enumerate(models) if m.get("size_bytes") is not None]
    # GB for real checkpoints, MB for the small test models, so the axis never reads 0.0012.
    largest = max((m["size_bytes"] for _, m in sized), default=0)
    scale, unit = (1e9, "GB, 10^9 bytes") if largest >= 1e9 else (1e6, "MB, 10^6 bytes")
    for i, m in sized:
        size = m["size_bytes"] / scale
        # Size and F1 go in the legend, not beside the points: quantized models sit too close to label.
        ax.plot(size, m["f1"], marker=_style(i, MARKERS), color=_style(i, COLORS), markeredgecolor="black",
                markersize=10, linestyle="none", label=f"{_label(m, baseline)}: {size:.3g}, F1 {m['f1']:.3f}")
    f1s = [m["f1"] for _, m in sized] or [0.0]
    low, high = max(0.0, min(f1s) - 0.05), min(1.0, max(f1s)) + 0.03  # F1 cannot pass 1: no axis above it
    ax.set_ylim(max(0.0, min(low, high - 0.12)), high)
    ax.set_yticks([t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= 1.0 + 1e-9])
    ax.margins(x=0.25)
    ax.set_xlim(left=0)
    ax.set_xlabel(f"size on disk ({unit})")
    ax.set_ylabel("F1 (fraction, 0 to 1)")
    ax.set_title("Model size vs F1")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _margins_plot(base: dict, others: list[dict], path: Path) -> Path:
    fig, axes = plt.subplots(len(others), 1, figsize=(6.4, 2.6 * len(others) + 0.8), sharex=True, squeeze=False)
    all_scores = np.concatenate([np.asarray(base["scores"], float), *(np.asarray(m["scores"], float) for _, m in others)])
    bins = np.histogram_bin_edges(all_scores, bins=50)
    for ax, (i, m) in zip(axes[:, 0], others):
        ax.hist(base["scores"], bins=bins, histtype="stepfilled", color="0.82", edgecolor="0.55",
                label=f"{base['name']} (baseline)")
        # A dark outline over a light fill keeps contrast when printed in grayscale; the line
        # style still matches this model's PR curve.
        shift = np.asarray(m["scores"], float) - np.asarray(base["scores"], float)
        ax.hist(m["scores"], bins=bins, histtype="step", color="black", linewidth=1.6,
                linestyle=_style(i, LINESTYLES),
                label=f"{m['name']} (shift: mean {_signed(shift.mean())}, median {_signed(np.median(shift))})")
        if bins[0] <= 0.0 <= bins[-1]:
            ax.axvline(0.0, color="0.3", linewidth=0.8)  # the decision threshold: right of it = fraud
        ax.set_ylim(top=ax.get_ylim()[1] * 1.45)  # headroom so the legend covers no bars
        ax.set_ylabel("rows (count)")
        ax.legend(loc="upper center", ncol=1, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("score margin: log P(true) - log P(false), nats (> 0 = fraud)")
    axes[0, 0].set_title("Score distributions vs the baseline")
    return _save(fig, path)


def write_plots(models: list[dict], baseline: str, out_dir: Path) -> list[Path]:
    """Write the comparison PNGs into out_dir and return their paths.

    Models with scores None (generate mode) are left out of the curve plots; a curve plot
    with nothing to draw is not written, so the list can be shorter than four.
    """
    by_name = {m["name"]: m for m in models}
    if baseline not in by_name:
        raise ValueError(f"baseline {baseline!r} is not among the models {sorted(by_name)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_metrics_plot(models, baseline, out_dir / "metrics.png")]
    if any(m.get("scores") is not None for m in models):
        written.append(_pr_plot(models, baseline, out_dir / "pr_curves.png"))
    written.append(_size_plot(models, baseline, out_dir / "size_vs_f1.png"))
    base = by_name[baseline]
    others = [(i, m) for i, m in enumerate(models) if m["name"] != baseline and m.get("scores") is not None]
    if base.get("scores") is not None and others:
        written.append(_margins_plot(base, others, out_dir / "margins.png"))
    return written
