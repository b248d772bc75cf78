"""GPTQ with GPTQModel's math and checkpoint format, written atomically with a report beside the checkpoint.

Two engines: fraudq's batched scheduler (engine.py, the default) or GPTQModel's own loop.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from fraudq.atomic import atomic_dir, atomic_write_json, check_target, check_writable, hold
from fraudq.calib import read_calibration, tokenizer_fingerprint
from fraudq.config import QUANT_KEYS, Config
from fraudq.console import shown, terminal
from fraudq.errors import BadInput
from fraudq.checkpoint import inspect_model, load_tokenizer
from fraudq.quant import gptqmodel_api
from fraudq.quant.engine import quantize_layers
from fraudq.runtime import dir_size, peak_memory, resolve_device

VALID_BITS = (2, 3, 4, 8)


def linear_in_features(config: dict) -> dict[str, int]:
    """The input widths of the linear layers GPTQ quantizes in a Llama/Qwen2-style block."""
    text = config.get("text_config", config)
    hidden = text["hidden_size"]
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or hidden // heads
    return {"hidden_size": hidden, "o_proj (heads x head_dim)": heads * head_dim,
            "intermediate_size": text["intermediate_size"]}


def validate_settings(cfg: Config, bits: int, model_config: dict) -> None:
    """What the config alone cannot check: the bit width, and the group size against this model's widths."""
    if bits not in VALID_BITS:
        raise BadInput(f"--bits must be one of {', '.join(map(str, VALID_BITS))}, got {bits}")
    if cfg.group_size == -1:
        return
    try:
        widths = linear_in_features(model_config)
    except KeyError as exc:
        raise BadInput(f"the model's config.json lacks {exc}; fraudq quantizes Qwen2/Llama-style models") from None
    for name, width in widths.items():
        if width % cfg.group_size:
            raise BadInput(f"--group-size {cfg.group_size} does not divide {name} {width}; use -1 or a divisor")


def _versions() -> dict:
    import torch
    import transformers

    import fraudq

    return {"fraudq": fraudq.__version__, "gptqmodel": gptqmodel_api.version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def vocab_size(config: dict) -> int | None:
    return config.get("text_config", config).get("vocab_size")


# Settings of GPTQModel's QuantizeConfig beyond the Config keys, passed as quantize_model's `extra` (fraudq tune).
EXTRA_KEYS = ("mse", "act_group_aware", "dynamic")


def quantize_model(cfg: Config, bits: int, calib_path: Path, out: Path, force: bool = False, log=print,
                   extra: dict | None = None) -> dict:
    """Every check first (settings, output, calibration against this model), then GPTQ under a claim on `out`.

    `extra`: any of EXTRA_KEYS; act_group_aware and dynamic need engine gptqmodel.
    """
    extra = dict(extra or {})
    if set(extra) - set(EXTRA_KEYS):
        raise BadInput(f"unknown quantize settings {sorted(set(extra) - set(EXTRA_KEYS))}")
    if cfg.engine == "fraudq" and (extra.get("act_group_aware") or extra.get("dynamic")):
        raise BadInput("act_group_aware and dynamic need engine gptqmodel; fraudq's engine does plain GPTQ order")
    check_target(out, kind="checkpoint", reads=(cfg.model, calib_path))
    info = inspect_model(cfg.model, cfg.trust_remote_code, cfg.allow_pickle)
    if info.quant is not None:
        raise BadInput(f"{info.path} is already quantized ({info.quant['bits']}-bit); quantize the original model")
    validate_settings(cfg, bits, info.config)
    device = "cuda" if cfg.device == "auto" else cfg.device
    device = resolve_device(device, "quantize")
    with hold(out):
        check_writable(out, force)
        token_ids, calib_meta = read_calibration(calib_path, vocab_size(info.config))
        tokenizer = load_tokenizer(info, cfg.trust_remote_code)
        if calib_meta.get("tokenizer_sha256") != tokenizer_fingerprint(tokenizer):
            raise BadInput(f"{calib_path} was tokenized with another tokenizer; "
                           f"rebuild it with 'fraudq calib --model {info.path}'")
        report = _quantize(cfg, info, bits, device, calib_path, token_ids, calib_meta, tokenizer, out, force, extra)
    log(f"quantized {shown(info.path)} to {bits}-bit in {report['timings']['total_s']:.1f} s; "
        f"size {report['size_bytes']['before'] / 1e6:.1f} MB -> {report['size_bytes']['after'] / 1e6:.1f} MB; "
        f"written to {shown(out)}")
    return report


def _quantize(cfg: Config, info, bits: int, device: str, calib_path: Path, token_ids, calib_meta, tokenizer,
              out: Path, force: bool, extra: dict) -> dict:
    import torch

    quant_config = gptqmodel_api.quantize_config(
        bits, cfg.group_size, cfg.damp, cfg.desc_act, cfg.sym, cfg.true_sequential, cfg.static_groups, device,
        gpu_packer=cfg.engine == "fraudq" and device.startswith("cuda"), **extra)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    timings = {}
    with atomic_dir(out, force) as tmp, tempfile.TemporaryDirectory() as scratch, gptqmodel_api.logs_in(scratch):
        start = time.perf_counter()
        model = gptqmodel_api.load_for_quantization(info.path, quant_config, cfg.trust_remote_code)
        timings["load_s"] = time.perf_counter() - start
        start = time.perf_counter()
        if cfg.engine == "fraudq":
            engine_result = run_fast_engine(model, token_ids, cfg, device, tokenizer)
        else:
            quant_log = gptqmodel_api.quantize_with_library_loop(model, token_ids, cfg.quant_batch_size, tokenizer)
            engine_result = {"stages": gptqmodel_api.stage_timings(model), "modules": module_rows(quant_log),
                             "batching": None}
        timings["quantize_s"] = time.perf_counter() - start
        start = time.perf_counter()
        gptqmodel_api.save(model, tmp)
        tokenizer.save_pretrained(str(tmp))
        # GPTQModel sets do_sample=True on every model it loads, and saves that: a greedy original would sample
        # under plain transformers' generate() once quantized. The original's generation settings are kept.
        if (info.path / "generation_config.json").is_file():
            shutil.copyfile(info.path / "generation_config.json", tmp / "generation_config.json")
        timings["save_s"] = time.perf_counter() - start
        timings["total_s"] = sum(timings.values())
        report = {
            "bits": bits,
            "model": str(info.path),
            "calibration": {"path": str(calib_path), "rows": len(token_ids),
                            "tokens": sum(map(len, token_ids)), "data_sha256": calib_meta.get("data_sha256")},
            "config": {**{k: getattr(cfg, k) for k in QUANT_KEYS}, **extra},
            "device": device,
            "versions": _versions(),
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "memory": peak_memory(device),
            "size_bytes": {"before": dir_size(info.path), "after": dir_size(tmp)},
            "engine": cfg.engine,
            "batching": engine_result["batching"],
            "stages": engine_result["stages"],
            "modules": engine_result["modules"],
        }
        atomic_write_json(tmp / "quant_report.json", report)
    return report


def run_fast_engine(model, token_ids, cfg: Config, device: str, tokenizer) -> dict:
    """fraudq's batched scheduler (engine.py) in place of GPTQModel's calibration loop."""
    from tqdm import tqdm

    result = {}

    def driver():
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        with tqdm(desc="GPTQ layers", unit="layer", leave=False, file=terminal(), disable=None) as bar:
            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)

            result.update(quantize_layers(model, token_ids, model.quantize_config, device, cfg.quant_batch_tokens,
                                          cfg.hessian_tf32, pad_id, progress=progress,
                                          chunk_tokens=cfg.hessian_chunk_tokens))

    gptqmodel_api.quantize_with_driver(model, driver, token_ids[0], tokenizer)
    return result


def module_rows(quant_log) -> list[dict]:
    """GPTQModel's per-module log rows with numbers parsed, under stable key names."""
    rows = quant_log.get("gptq", []) if isinstance(quant_log, dict) else list(quant_log or [])
    parsed = []
    for row in rows:
        parsed.append({
            "layer": int(row.get("layer", -1)),
            "module": row.get("module"),
            "loss": _number(row.get("loss")),
            "samples": _number(row.get("samples")),
            "damp": _number(row.get("damp")),
            "time_s": _number(row.get("time")),
            "fwd_time_s": _number(row.get("fwd_time")),
        })
    return parsed


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read_report(path: Path) -> dict | None:
    report = path / "quant_report.json"
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
