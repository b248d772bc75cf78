"""Plot quantize time against calibration rows and against model size from bench_gpu.py's scaling phases.

    python scripts/bench/plot_scaling.py scaling.json [scaling7b.json] --out docs/img

Writes scaling_rows.png (the first preset of the `scaling` phase, one point per row count, with the straight
line through the origin and the smallest run: growing no faster than that line is growing at most linearly)
and scaling_shape.png (every preset at the largest row count: time and peak GPU memory against its parameter
count).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_runs(paths: list[Path]) -> list[dict]:
    runs = []
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        for run in data.get("runs", []):
            runs.append({**run, "card": data.get("card"), "date": data.get("date")})
    return runs


def save(fig, path: Path, *axes) -> Path:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rows(runs: list[dict], out: Path) -> Path | None:
    preset = runs[0]["preset"]
    points = sorted((r["rows"], r["timings"]["total_s"], r["timings"]["quantize_s"]) for r in runs
                    if r["preset"] == preset)
    if len(points) < 2:
        return None
    rows = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(rows, [p[1] for p in points], "o-", color="#0072B2", label="load → saved")
    ax.plot(rows, [p[2] for p in points], "s--", color="#E69F00", label="quantize stage only")
    slope = points[0][1] / points[0][0]
    ax.plot([0, rows[-1]], [0, slope * rows[-1]], ":", color="#555555", label="linear through the smallest run")
    ax.set_xlabel("calibration rows")
    ax.set_ylabel("seconds")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title(f"fraudq quantize int4, {preset}\n{runs[0]['card']}, {runs[0]['date']}", fontsize=10)
    return save(fig, out / "scaling_rows.png", ax)


def plot_shape(runs: list[dict], out: Path) -> Path | None:
    """Time and peak GPU memory against parameter count, side by side."""
    most = max(r["rows"] for r in runs)
    points = sorted((r["parameters"] / 1e9, r["timings"]["total_s"], r["memory"].get("peak_gpu_gb"), r["preset"])
                    for r in runs if r["rows"] == most)
    if len(points) < 2:
        return None
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(10, 4.2))
    params = [p[0] for p in points]
    ax.plot(params, [p[1] for p in points], "o-", color="#0072B2", label="load → saved")
    mem.plot(params, [p[2] for p in points], "s-", color="#D55E00", label="peak GPU memory")
    for x, seconds, gigabytes, preset in points:
        ax.annotate(f"{preset}: {seconds:.0f} s", (x, seconds), textcoords="offset points", xytext=(6, -12))
        mem.annotate(f"{preset}: {gigabytes:.2f} GB", (x, gigabytes), textcoords="offset points", xytext=(6, -12))
    for axis, label in ((ax, "seconds"), (mem, "GB")):
        axis.set_xlabel("parameters (billions)")
        axis.set_ylabel(label)
        axis.set_xlim(0, points[-1][0] * 1.35)  # room for the last label
        axis.set_ylim(bottom=0)
    fig.suptitle(f"fraudq quantize int4, {most} calibration rows; random-init weights\n"
                 f"{runs[0]['card']}, {runs[0]['date']}", fontsize=10)
    return save(fig, out / "scaling_shape.png", ax, mem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase_files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = load_runs(args.phase_files)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in (plot_rows(runs, args.out), plot_shape(runs, args.out)):
        if path:
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
