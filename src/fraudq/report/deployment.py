"""The deployment check: one checkpoint's answers under fraudq's runtime against vLLM's, row by row."""

from __future__ import annotations

def deployment_check(name: str, own: list[dict], served: list[dict]) -> dict:
    """Flips and the largest margin difference between the two runtimes' predictions of the same rows."""
    if [p["id"] for p in own] != [p["id"] for p in served]:
        return {"name": name, "comparable": False}
    flips = sum(a["prediction"] != b["prediction"] for a, b in zip(own, served))
    diffs = [abs(a["score"] - b["score"]) for a, b in zip(own, served)
             if a.get("score") is not None and b.get("score") is not None]
    largest = max(diffs) if diffs else None
    verdict = ("serves unchanged in vLLM" if flips == 0 else
               f"{flips} of {len(own)} answers differ in vLLM")
    return {"name": name, "comparable": True, "rows": len(own), "flips": flips,
            "largest_margin_difference": largest, "verdict": verdict}


def deployment_lines(checks: list[dict]) -> list[str]:
    lines = []
    for check in checks:
        if not check.get("comparable"):
            lines.append(f"{check['name']}: the vLLM results cover other rows; rerun both evals with the same --limit")
            continue
        largest = check["largest_margin_difference"]
        tail = f"; largest margin difference {largest:.4f}" if largest is not None else ""
        lines.append(f"{check['name']}: {check['verdict']} ({check['flips']} of {check['rows']} rows flipped{tail})")
    return lines
