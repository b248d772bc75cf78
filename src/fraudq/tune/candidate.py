"""One candidate: quantize, evaluate on the validation set, compare with the baseline; resumable.

<work_dir>/tune/<candidate-id>/checkpoint/            the GPTQ checkpoint, stamped like `fraudq run`'s quantize
<work_dir>/tune/<candidate-id>/checkpoint.stamp.json  model fingerprint, calibration sha256, every GPTQ setting
<work_dir>/tune/<candidate-id>/val.json               eval results (their own stamp) + val.predictions.jsonl
<work_dir>/tune/logs/<candidate-id>.log               library output

Mixed precision needs the layers ranked by how much they move the label margin: each layer is quantized alone
(every other layer left unquantized through GPTQModel's negative `dynamic` matches) and scored on the first
tune_sensitivity_rows validation rows; the ranking is kept in <work_dir>/tune/sensitivity/<recipe-id>.json.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from fraudq.atomic import atomic_write_json
from fraudq.config import PROMPT_KEYS, QUANT_KEYS, Config
from fraudq.console import stage_log
from fraudq.eval.evaluate import evaluate_model
from fraudq.eval.results import predictions_path, read_results
from fraudq.quant.quantize import quantize_model
from fraudq.report import stats
from fraudq.runtime import dir_size
from fraudq.tune import sizing
from fraudq.tune.inputs import Validation, calib_file
from fraudq.tune.space import Recipe, keep_8bit_dynamic, only_layer_dynamic, quant_settings
from fraudq.workspace import Entry, Hashes, stale_reasons, stamp_reasons, write_stamp


def versus(base: tuple[dict, list[dict]], other: tuple[dict, list[dict]]) -> dict:
    """The validation numbers a candidate is judged by, against the baseline on the same rows."""
    (base_result, base_preds), (result, preds) = base, other
    labels = [p["label"] for p in base_preds]
    flips = stats.flips(labels, [p["prediction"] for p in base_preds], [p["prediction"] for p in preds])
    delta_auc = None if result["auc"] is None or base_result["auc"] is None else result["auc"] - base_result["auc"]
    return {"rows": len(preds), "flips": flips["total"], "flip_rate": flips["total"] / len(preds),
            "fraud_to_ok": flips["fraud_to_ok"], "ok_to_fraud": flips["ok_to_fraud"], "mcnemar_p": flips["mcnemar_p"],
            "f1": result["f1"], "delta_f1": result["f1"] - base_result["f1"], "auc": result["auc"],
            "delta_auc": delta_auc, "precision": result["precision"], "recall": result["recall"]}


class Runner:
    def __init__(self, cfg: Config, tune_dir: Path, val: Validation, hashes: Hashes, log):
        self.cfg = dataclasses.replace(cfg, mode="score", limit=0)  # margins, AUC and flips need scores
        self.tune_dir, self.val, self.hashes, self.log = tune_dir, val, hashes, log
        self.baseline_path = tune_dir / "baseline" / "val.json"

    def _log_file(self, name: str) -> Path:
        return self.tune_dir / "logs" / f"{name}.log"

    def quantize(self, recipe: Recipe, folder: Path, dynamic: dict | None, log_name: str) -> bool:
        """Quantizes into folder/checkpoint unless its stamp vouches for these inputs; True when it ran."""
        checkpoint = folder / "checkpoint"
        calib = calib_file(self.cfg, recipe, self.val.calib_source, self.tune_dir, self.hashes, self.log)
        qcfg, extra = quant_settings(recipe, self.cfg, dynamic)
        inputs = {"model": self.hashes.model(Path(self.cfg.model)), "calib": self.hashes.file(calib),
                  "config": {"bits": recipe.bits, **{k: getattr(qcfg, k) for k in QUANT_KEYS}, **extra}}
        if not stamp_reasons(checkpoint, inputs, lambda: self.hashes.model(checkpoint)):
            return False
        with stage_log(self._log_file(log_name), append=True):
            quantize_model(qcfg, recipe.bits, calib, checkpoint, force=True, log=print, extra=extra)
        self.hashes.forget(checkpoint)
        write_stamp(checkpoint, "tune-quantize", inputs, self.hashes.model(checkpoint))
        return True

    def evaluate(self, model: Path, out: Path, log_name: str, limit: int = 0, data: Path | None = None) -> bool:
        """Scores `model` on the validation rows (or `data`) unless a current result is stored; True when it ran."""
        cfg = dataclasses.replace(self.cfg, limit=limit)
        data = Path(data or self.val.path)
        fingerprint = self.hashes.model(model)
        if not stale_reasons(cfg, Entry(log_name, model, out), self.hashes.file(data), fingerprint):
            return False
        with stage_log(self._log_file(log_name), append=True):
            evaluate_model(cfg, str(model), str(data), out, log=print, model_fingerprint=fingerprint)
        self.hashes.forget(out)
        self.hashes.forget(predictions_path(out))
        return True

    def baseline(self) -> tuple[dict, list[dict]]:
        ran = self.evaluate(Path(self.cfg.model), self.baseline_path, "baseline")
        result = read_results(self.baseline_path)
        self.log(f"baseline on {self.val.rows} validation rows ({'scored' if ran else 'stored result'}): "
                 f"F1 {result[0]['f1']:.4f}, recall {result[0]['recall']:.4f}, AUC {result[0]['auc'] or 0:.4f}")
        return result

    def run(self, recipe: Recipe, dynamic: dict | None) -> dict:
        folder = self.tune_dir / recipe.id
        started = time.perf_counter()
        quantized = self.quantize(recipe, folder, dynamic, recipe.id)
        evaluated = self.evaluate(folder / "checkpoint", folder / "val.json", recipe.id)
        qcfg, _ = quant_settings(recipe, self.cfg, dynamic)
        return {"quantized": quantized, "evaluated": evaluated, "seconds": round(time.perf_counter() - started, 2),
                "engine": qcfg.engine, "dynamic": dynamic, "checkpoint": str(folder / "checkpoint"),
                "size": sizing.measure(folder / "checkpoint"), "disk_bytes": dir_size(folder / "checkpoint"),
                "val": versus(read_results(self.baseline_path), read_results(folder / "val.json"))}

    def sensitivity(self, recipe: Recipe, layers: int) -> list[dict]:
        """Layers by mean |margin change| when quantized alone with `recipe`, most sensitive first."""
        base = dataclasses.replace(recipe, keep_8bit=0)
        record = self.tune_dir / "sensitivity" / f"{base.id}.json"
        rows = min(self.cfg.tune_sensitivity_rows, self.val.rows)
        calib = calib_file(self.cfg, base, self.val.calib_source, self.tune_dir, self.hashes, self.log)
        inputs = {"model": self.hashes.model(Path(self.cfg.model)), "calib": self.hashes.file(calib),
                  "recipe": base.to_dict(), "val": self.hashes.file(self.val.path), "rows": rows,
                  "eval": {k: getattr(self.cfg, k) for k in PROMPT_KEYS if k != "limit"}}
        if not stamp_reasons(record, inputs, lambda: self.hashes.file(record)):
            return json.loads(record.read_text(encoding="utf-8"))["ranking"]
        self.log(f"ranking {layers} layers for mixed precision: each quantized alone as {base.id}, "
                 f"scored on {rows} validation rows")
        base_scores = [p["score"] for p in read_results(self.baseline_path)[1][:rows]]
        ranking = []
        for layer in range(layers):
            probe = record.with_suffix("") / f"layer-{layer}"
            self.quantize(base, probe, only_layer_dynamic(layer, layers), f"sensitivity-{base.id}")
            self.evaluate(probe / "checkpoint", probe / "val.json", f"sensitivity-{base.id}", limit=rows)
            scores = [p["score"] for p in read_results(probe / "val.json")[1]]
            change = sum(abs(a - b) for a, b in zip(scores, base_scores)) / rows
            ranking.append({"layer": layer, "mean_abs_margin_change": round(change, 6)})
            self.log(f"    layer {layer}: mean |margin change| {change:.4f}")
        ranking.sort(key=lambda r: (-r["mean_abs_margin_change"], r["layer"]))
        atomic_write_json(record, {"recipe": base.id, "rows": rows, "ranking": ranking})
        self.hashes.forget(record)
        write_stamp(record, "tune-sensitivity", inputs, self.hashes.file(record))
        shutil.rmtree(record.with_suffix(""), ignore_errors=True)  # the probes' checkpoints: the ranking is kept
        return ranking

    def dynamic_for(self, recipe: Recipe, layers: int) -> tuple[dict | None, list[int]]:
        if not recipe.keep_8bit:
            return None, []
        kept = [r["layer"] for r in self.sensitivity(recipe, layers)[: recipe.keep_8bit]]
        return keep_8bit_dynamic(kept), kept
