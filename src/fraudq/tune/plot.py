"""tune_pareto.png: average bits per weight against validation flips and dF1, one point per finished candidate."""

from __future__ import annotations

from pathlib import Path

from fraudq.report.plots import COLORS, DPI, plt

STYLES = {  # verdict: (label, colour, marker)
    "accepted": ("accepted", COLORS[2], "o"),
    "rejected": ("rejected", COLORS[5], "X"),
}


def _points(ax, done, value, front, chosen) -> None:
    for key, (label, color, marker) in STYLES.items():
        group = [c for c in done if (c.accepted is True) == (key == "accepted")]
        if group:
            ax.scatter([c.bits for c in group], [value(c) for c in group], marker=marker, color=color, s=60,
                       edgecolors="black", linewidths=0.6, label=label, zorder=3)
    reference = [c for c in done if c.reference]
    if reference:
        ax.scatter([reference[0].bits], [value(reference[0])], marker="s", facecolors="none", edgecolors="black",
                   s=180, linewidths=1.4, label=f"reference {reference[0].id}", zorder=4)
    if chosen is not None:
        ax.scatter([chosen.bits], [value(chosen)], marker="*", color=COLORS[0], s=320, edgecolors="black",
                   label=f"chosen {chosen.id}", zorder=5)
    for index, c in enumerate(sorted(done, key=lambda c: (c.bits, c.id))):
        # Neighbours of nearly equal size would print over each other: stagger the labels.
        ax.annotate(c.id, (c.bits, value(c)), textcoords="offset points", xytext=(5, 4 + 9 * (index % 4)),
                    fontsize=6, color="0.3")


def pareto_plot(pool, front: set[str], chosen, budget: float, path: Path) -> Path | None:
    done = [c for c in pool if c.finished]
    if not done:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 4.8))
    _points(left, done, lambda c: c.flips, front, chosen)
    edge = sorted((c for c in done if c.id in front), key=lambda c: c.bits)
    left.step([c.bits for c in edge], [c.flips for c in edge], where="post", color="0.4", linestyle="--",
              linewidth=1.0, label="Pareto front", zorder=2)
    left.set_ylabel("validation flips against the baseline (rows)")
    left.set_title("Average bits vs flips")
    _points(right, done, lambda c: c.outcome["val"]["delta_f1"], front, chosen)
    right.axhline(0.0, color="0.3", linewidth=0.8)
    right.set_ylabel("F1 - baseline F1 on validation")
    right.set_title("Average bits vs dF1")
    for ax in (left, right):
        ax.axvline(budget, color="0.2", linestyle=":", linewidth=1.2, label=f"budget {budget:g} bits")
        ax.set_xlabel("average bits per weight (scales, zeros, unquantized parameters included)")
        ax.grid(alpha=0.3)
    left.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
