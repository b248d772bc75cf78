"""Each use fraudq makes of GPTQModel, through quant/gptqmodel_api.py, checked against what it must do.

The uses that need a whole model (load_for_quantization, quantize_with_driver, quantize_with_library_loop,
stage_timings, pack_linear, save, load_quantized) run end to end in the last test, on the tiny model.
"""

from __future__ import annotations

import json

import pytest
import torch

from fraudq.quant import gptqmodel_api


def test_version_is_the_pinned_one(monkeypatch):
    import gptqmodel

    gptqmodel_api.check_version()
    monkeypatch.setattr(gptqmodel, "__version__", "9.9.9")
    with pytest.raises(RuntimeError, match="held to GPTQModel 7.5.0"):
        gptqmodel_api.check_version()


def test_quantize_config_carries_every_setting():
    config = gptqmodel_api.quantize_config(4, 64, 0.02, False, False, True, False, "cpu", gpu_packer=False)
    assert (config.bits, config.group_size, config.damp_percent, config.sym, config.true_sequential) == (
        4, 64, 0.02, False, True)
    assert config.act_group_aware is False and config.offload_to_disk is False
    assert gptqmodel_api.quantize_config(8, 128, 0.01, False, True, True, False, "cuda", True).pack_impl == "gpu"


def test_logs_go_where_asked_and_the_setting_is_restored(tmp_path):
    from gptqmodel.looper import loop_processor

    before = loop_processor._PROJECT_LOG_DIR
    with gptqmodel_api.logs_in(tmp_path):
        assert loop_processor._PROJECT_LOG_DIR == tmp_path
    assert loop_processor._PROJECT_LOG_DIR == before


def test_hessian_inverse_is_the_upper_cholesky_factor_of_the_damped_inverse():
    config = gptqmodel_api.quantize_config(4, 32, 0.01, False, True, True, False, "cpu", gpu_packer=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=gen)
    H = 2 / 256 * x.T @ x
    Hinv, damp = gptqmodel_api.hessian_inverse(config, "t", H.clone())
    damped = H + damp * torch.diag(H).mean() * torch.eye(64)
    assert torch.allclose(Hinv.T @ Hinv, torch.linalg.inv(damped), rtol=1e-3, atol=1e-4)
    assert torch.equal(Hinv, torch.triu(Hinv))


@pytest.mark.parametrize("sym", [True, False])
def test_quantized_columns_lie_on_the_quantizer_grid(sym):
    config = gptqmodel_api.quantize_config(4, -1, 0.01, False, sym, True, False, "cpu", gpu_packer=False)
    quantizer = gptqmodel_api.quantizer(config, "t")
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    quantizer.find_params(w, weight=True)
    maxq = int(quantizer.maxq.item())
    q = gptqmodel_api.quantize_columns(w, quantizer.scale, quantizer.zero, maxq,
                                       quantizer.requires_groupwise_processing())
    levels = q / quantizer.scale + quantizer.zero
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.min() >= -1e-4 and levels.max() <= maxq + 1e-4
    assert (w - q).abs().max() <= quantizer.scale.max() / 2 + 1e-5


def test_whole_model_uses_through_the_cli(quantized, tmp_path):
    """Both engines on the tiny model: the driver hook, the library's loop and its clock, packing, saving, and
    loading back through the named kernel."""
    from conftest import run_cli
    from fraudq.checkpoint import inspect_model

    out = tmp_path / "lib4"
    result = run_cli("quantize", "--bits", "4", "--engine", "gptqmodel", "--config", quantized.config, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "quant_report.json").read_text())
    assert isinstance(report["stages"], dict)  # stage_timings: the library's clock, as far as it kept one
    assert all(v["count"] > 0 and v["total_s"] >= 0 for v in report["stages"].values())
    assert report["modules"] and all(m["loss"] is not None for m in report["modules"])  # the library's log
    fast = json.loads((quantized.work / "int4" / "quant_report.json").read_text())
    assert fast["engine"] == "fraudq" and fast["modules"]  # quantize_with_driver ran the scheduler
    for folder in (out, quantized.work / "int4"):
        model = gptqmodel_api.load_quantized(inspect_model(folder).path, "cpu", "gptq_torch", torch.bfloat16, False)
        q_proj = model.model.layers[0].self_attn.q_proj
        assert type(q_proj).__name__ == "TorchLinear" and q_proj.qweight.dtype == torch.int32  # pack_linear's module
