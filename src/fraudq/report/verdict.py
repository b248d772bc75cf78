"""The plain-language end of compare: one or two lines per model, every word taken from the table's numbers."""

from __future__ import annotations


def points(delta: float) -> str:
    return f"{delta * 100 + 0.0:+.1f} pt"  # + 0.0: no "-0.0"


def interval(ci: dict) -> str:
    return f"{points(ci['delta'])} [{ci['lo'] * 100 + 0.0:+.1f}, {ci['hi'] * 100 + 0.0:+.1f}]"


def _contains_zero(ci: dict) -> bool:
    return ci["lo"] <= 0 <= ci["hi"]


def changes(flips: dict, rows: int) -> str:
    if not flips["total"]:
        return "no answer changed"
    return (f"{flips['total']:,} of {rows:,} answers changed ({flips['fraud_to_ok']} fraud→ok, "
            f"{flips['ok_to_fraud']} ok→fraud; McNemar p {flips['mcnemar_p']:.2g})")


def auc_phrase(ci: dict | None) -> str | None:
    if ci is None or ci.get("resamples") == 0:
        return None
    if _contains_zero(ci):
        return f"AUC unchanged within its CI ({interval(ci)})"
    return f"AUC {'rose' if ci['delta'] > 0 else 'fell'} {interval(ci)}"


def threshold_phrase(table: dict, name: str) -> str | None:
    fitted = table.get("fitted")
    if not fitted:
        return None
    by_name = {m["name"]: m for m in fitted["models"]}
    model, base, base_name = by_name[name], by_name[fitted["baseline"]], fitted["baseline"]
    moved = "stayed at" if model["threshold"] == base["threshold"] else "moved to"
    where = f"the threshold {moved} T = {model['threshold']:.4g} ({base_name}: {base['threshold']:.4g})"
    if fitted["same_rows"]:
        return f"{where}, fitted on these rows, so optimistic"
    return (f"held out, {where}, fitted on {fitted['fit_data']}, gives recall {model['on_rows']['recall']:.4f} "
            f"here and precision {interval(model['bootstrap']['precision'])} against {base_name} at its T")


def model_verdict(table: dict, row: dict) -> str:
    paired = row["vs_baseline"]
    boot = paired["bootstrap"]
    parts = [changes(paired["flips"], table["rows"])]
    parts.append(auc_phrase(boot.get("auc")))
    if "precision_at_recall" in boot:
        parts.append(f"at {table['baseline']}'s recall {table['targets']['recall']:.4f} precision "
                     f"{interval(boot['precision_at_recall'])}")
        parts.append(threshold_phrase(table, row["name"]))
    else:
        parts.append(f"F1 {interval(boot['f1'])}")
    return f"{row['name']}: " + "; ".join(p for p in parts if p) + "."


def verdict_lines(table: dict) -> list[str]:
    return [model_verdict(table, row) for row in table["models"] if row.get("vs_baseline")]
