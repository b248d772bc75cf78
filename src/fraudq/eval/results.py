"""An eval's two files: the results JSON and the per-row predictions it names by hash."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from fraudq.atomic import atomic_write_json, atomic_write_text, check_target, hold
from fraudq.console import shown
from fraudq.errors import BadInput


def predictions_path(results_path: Path) -> Path:
    return results_path.with_name(results_path.stem + ".predictions.jsonl")


def predictions_text(rows, preds, scores, answers) -> str:
    lines = [json.dumps({"id": r.id, "label": r.label, "prediction": p, "score": s,
                         **({"answer": a} if a is not None and p is None else {})}, ensure_ascii=False)
             for r, p, s, a in zip(rows, preds, scores, answers)]
    return "\n".join(lines) + "\n"


def write_results(out: Path, result: dict, predictions: str) -> None:
    """Predictions first, then the results that name them by hash; if the second write fails, the first is
    removed, so neither appears unless both do. A pair from two runs is refused by read_results."""
    result["predictions_file"] = predictions_path(out).name
    result["predictions_sha256"] = hashlib.sha256(predictions.encode("utf-8")).hexdigest()
    atomic_write_text(predictions_path(out), predictions)
    try:
        atomic_write_json(out, result)
    except BaseException:
        with contextlib.suppress(OSError):
            predictions_path(out).unlink()
        raise


def read_results(path: Path) -> tuple[dict, list[dict]]:
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        preds_file = path.with_name(result["predictions_file"])
        predictions_bytes = preds_file.read_bytes()
        expected = result.get("predictions_sha256")  # absent in results written before it was recorded
        if expected is not None and expected != hashlib.sha256(predictions_bytes).hexdigest():
            raise ValueError("predictions do not match the results")
        predictions = [json.loads(line) for line in predictions_bytes.decode("utf-8").splitlines() if line]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise BadInput(f"eval results {path} are missing or damaged; rerun 'fraudq eval'") from None
    return result, predictions


def is_results_file(path: Path) -> bool:
    """An earlier fraudq results file, which eval may replace without --force."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(result, dict) and {"model_fingerprint", "predictions_file", "confusion"} <= result.keys()


@contextlib.contextmanager
def claim_results(out: Path, force: bool, reads=()):
    """Before any work: refuses an `out` that is an input of the run (`reads`), lies in a model folder, is a
    folder, or is a file no fraudq eval wrote (unless `force`); then holds `out` until the results are written."""
    out = Path(out)
    check_target(out, reads=reads, names=(predictions_path(out).name,) if out.name else ())
    check_target(predictions_path(out), reads=reads)  # written too: it must not be an input either
    with hold(out):
        if not force:
            _refuse_foreign(out)
        yield


def _refuse_foreign(out: Path) -> None:
    preds = predictions_path(out)
    if out.exists() and not is_results_file(out):
        raise BadInput(f"{out} exists and is not a fraudq results file; pass --force to replace it")
    if preds.exists() and not out.exists():
        raise BadInput(f"{preds} exists and belongs to no results file; pass --force to replace it")


def format_result(result: dict, out: Path) -> str:
    c = result["confusion"]
    auc = f", AUC {result['auc']:.4f}" if result["auc"] is not None else ""
    invalid = f", {c['invalid']} invalid answers (scored wrong)" if c["invalid"] else ""
    threshold = ""
    if result.get("threshold") is not None:
        source = (result.get("threshold_source") or {}).get("from", "config")
        threshold = f"; fraud when margin > {result['threshold']:g} ({source})"
    dtype = f" in {result['dtype']}" if result.get("dtype") else ""
    return (f"{result['rows']} rows: tn {c['tn']} fp {c['fp']} fn {c['fn']} tp {c['tp']}{invalid}; "
            f"precision {result['precision']:.4f}, recall {result['recall']:.4f}, F1 {result['f1']:.4f}{auc}\n"
            f"accuracy {result['accuracy']:.4f}; {result['samples_per_s']} rows/s{dtype}{threshold}\n"
            f"written to {shown(out)}")

