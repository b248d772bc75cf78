"""The only module that imports GPTQModel: every use of it, its internals included, in one place.

fraudq is held to GPTQModel 7.5.0's math and checkpoint format. Each function below names what it reaches
into, and tests/quant/test_gptqmodel_api.py exercises each one, so a GPTQModel upgrade breaks there first.
This module never calls back into fraudq.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

VERSION = "7.5.0"


def check_version() -> None:
    import gptqmodel

    if gptqmodel.__version__ != VERSION:
        raise RuntimeError(f"fraudq is held to GPTQModel {VERSION}; found {gptqmodel.__version__}: "
                           f"pip install gptqmodel=={VERSION}")


def version() -> str:
    import gptqmodel

    return gptqmodel.__version__


def quantize_config(bits: int, group_size: int, damp: float, desc_act: bool, sym: bool, true_sequential: bool,
                    static_groups: bool, device: str, gpu_packer: bool, *, mse: float = 0.0,
                    act_group_aware: bool = False, dynamic: dict | None = None):
    """GPTQModel's QuantizeConfig. `mse` > 0 turns on its scale search (the norm of the error it minimises over
    shrunk ranges, 2.4 in the GPTQ paper); `act_group_aware` its group-aware reordering (needs desc_act off and a
    group size); `dynamic` its per-module overrides: {"+:regex": {"bits": 8}} changes a module's settings,
    {"-:regex": {}} leaves it unquantized (fp16 in the checkpoint)."""
    from gptqmodel import QuantizeConfig

    check_version()
    config = QuantizeConfig(
        bits=bits,
        group_size=group_size,
        damp_percent=damp,
        desc_act=desc_act,
        sym=sym,
        true_sequential=true_sequential,
        static_groups=static_groups,
        act_group_aware=act_group_aware,  # off: plain GPTQ order; GPTQModel's own default would reorder groups
        mse=mse,
        dynamic={key: dict(value) for key, value in dynamic.items()} if dynamic else None,
        offload_to_disk=False,  # keeps the run in memory and no temp path lands in the saved config
        device=device,
    )
    if gpu_packer:
        config.pack_impl = "gpu"  # GPTQModel's own GPU packer; create + CPU pack took ~38 s on the 1.5B model
    return config


@contextlib.contextmanager
def logs_in(folder: Path):
    """GPTQModel writes per-module logs under ./logs of the current folder (looper.loop_processor's
    private _PROJECT_LOG_DIR); point it at `folder` for the duration, then restore it."""
    from gptqmodel.looper import loop_processor

    previous = loop_processor._PROJECT_LOG_DIR
    loop_processor._PROJECT_LOG_DIR = Path(folder)
    try:
        yield
    finally:
        loop_processor._PROJECT_LOG_DIR = previous


def load_for_quantization(path: Path, config, trust_remote_code: bool):
    from gptqmodel import GPTQModel

    return GPTQModel.load(str(path), config, trust_remote_code=trust_remote_code)


def quantize_with_library_loop(model, token_ids: list[list[int]], batch_size: int, tokenizer):
    """GPTQModel's own calibration loop; returns its per-module log."""
    calibration = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in token_ids]
    return model.quantize(calibration, batch_size=batch_size, tokenizer=tokenizer)


def quantize_with_driver(model, driver, first_row: list[int], tokenizer) -> None:
    """Runs GPTQModel's `quantize` with its calibration loop (the private `_quantize_with_calibration`)
    replaced by `driver()`, which quantizes the layers itself. Going through `quantize` keeps the library's own
    kernel selection and bookkeeping; its calibration check needs one row, which the driver never reads."""
    from gptqmodel.quantization.config import METHOD

    def replacement(**_ignored):
        driver()
        model.quantized = True  # what the library's loop sets when it finishes
        model.quantize_config.method = METHOD.GPTQ
        return {}

    model._quantize_with_calibration = replacement
    model.quantize([{"input_ids": first_row}], tokenizer=tokenizer)


def stage_timings(model) -> dict:
    """GPTQModel's own per-stage clock (the private quant_region_timer._stats), summed over modules."""
    timer = getattr(model, "quant_region_timer", None)
    stats = getattr(timer, "_stats", None) or {}
    return {region: {"total_s": round(float(stat["total"]), 3), "count": int(stat["count"])}
            for region, stat in stats.items() if stat.get("count")}


def save(model, folder: Path) -> None:
    model.save(str(folder))


def load_quantized(path: Path, device: str, kernel: str, dtype, trust_remote_code: bool):
    """A GPTQ checkpoint on `device` through the named kernel (never the automatic choice, which downloads)."""
    from gptqmodel import BACKEND, GPTQModel

    check_version()
    return GPTQModel.load(str(path), device=device, backend=BACKEND(kernel), dtype=dtype,
                          trust_remote_code=trust_remote_code).model


# --- the math the fast engine shares with GPTQModel's loop ---

def quantizer(config, name: str):
    from gptqmodel.quantization.quantizer import Quantizer

    q = Quantizer(qcfg=config, name=name)
    q.configure(perchannel=True)
    return q


def quantize_columns(w, scale, zero, maxq: int, groupwise: bool):
    from gptqmodel.quantization.quantizer import quantize

    return quantize(w, scale, zero, maxq, groupwise)


def hessian_inverse(config, name: str, H):
    """GPTQ.hessian_inverse (damping and Cholesky), called unbound: it reads only qcfg, name and region_timer."""
    from gptqmodel.quantization.gptq import GPTQ

    return GPTQ.hessian_inverse(SimpleNamespace(qcfg=config, name=name, region_timer=None), H)


def layer_subsets(gptq_model, config) -> list[list[str]]:
    """The true-sequential subsets of one decoder layer, in the library's order."""
    return gptq_model.simple_layer_modules(gptq_model.model.config, config)


def layers_prefix(gptq_model) -> str:
    return gptq_model.extract_layers_node()[0]


def pack_linear(gptq_model, full_name: str, linear, scale, zero, g_idx, config, lock) -> None:
    """Replaces `linear` by the library's quantized module and packs Q, scales and zeros into it."""
    from gptqmodel.quantization.config import resolve_quant_format
    from gptqmodel.utils.model import create_quant_module, pack_module

    hf_model = gptq_model.model
    create_quant_module(name=full_name, linear_cls=gptq_model.qlinear_kernel, bits=config.runtime_bits,
                        desc_act=config.desc_act, dynamic=config.dynamic, group_size=config.group_size,
                        module=hf_model, submodule=linear, sym=config.sym, device=config.device,
                        lm_head_name=gptq_model.lm_head, pack_dtype=config.pack_dtype,
                        format=resolve_quant_format(config.format, config.method), register_buffers=False)
    qmodule = hf_model.get_submodule(full_name)
    pack_module(name=full_name, qModules={full_name: qmodule}, q_scales=scale, q_zeros=zero, q_g_idx=g_idx,
                layers={full_name: linear}, quant_linear_cls=gptq_model.qlinear_kernel, lock=lock,
                quantize_config=config)
