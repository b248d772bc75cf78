"""The eval speed-ups' switches (fraudq/eval/kernels.py). Their speed is a GPU measurement (docs/BENCHMARKS.md); here:
who gets them, what the results file says, and the one-line errors."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from conftest import one_line_error, run_cli
from fraudq.errors import BadInput
from fraudq.eval.kernels import apply_fused_kernels, attention_backends


def test_cpu_eval_records_no_speedups(project, tmp_path):
    out = tmp_path / "e.json"
    result = run_cli("eval", "--model", project.model, "--config", project.config, "--limit", "4", "--out", out)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["fused_kernels"] is None and written["cudnn_attention"] is None


@pytest.mark.parametrize("value, needle", [("liger", "needs a CUDA device"), ("fast", "must be one of auto, liger, off")])
def test_bad_fused_kernels_choice_fails_before_anything_is_written(project, tmp_path, value, needle):
    out = tmp_path / "e.json"
    result = run_cli("eval", "--model", project.model, "--config", project.config, "--limit", "4", "--out", out,
                     "--fused-kernels", value)
    one_line_error(result, needle)
    assert list(tmp_path.iterdir()) == []


class _Config:
    model_type = "qwen2"


class _Model:
    config = _Config()


@pytest.fixture
def fake_liger(monkeypatch):
    """liger-kernel cannot import without Triton (CPU CI): a stand-in module records what fraudq asks of it."""
    calls = []

    def apply_qwen2(rope=True, cross_entropy=False, fused_linear_cross_entropy=True, rms_norm=True, swiglu=True,
                    model=None):
        calls.append(dict(rope=rope, cross_entropy=cross_entropy, fused_linear_cross_entropy=fused_linear_cross_entropy,
                          rms_norm=rms_norm, swiglu=swiglu, model=model))

    module = types.ModuleType("liger_kernel.transformers.monkey_patch")
    module.MODEL_TYPE_TO_APPLY_LIGER_FN = {"qwen2": apply_qwen2}
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", module)
    return calls


def test_auto_patches_the_instance_for_inference_only(fake_liger):
    model = _Model()
    assert apply_fused_kernels(model, "auto", "cuda:0") == "liger"
    # Its loss kernel would replace forward(), which eval needs for logits_to_keep; its rotary kernel would
    # recompile for every batch size.
    assert fake_liger == [dict(rope=False, cross_entropy=False, fused_linear_cross_entropy=False, rms_norm=True,
                               swiglu=True, model=model)]


def test_off_and_cpu_leave_the_model_alone(fake_liger):
    assert apply_fused_kernels(_Model(), "off", "cuda:0") is None
    assert apply_fused_kernels(_Model(), "auto", "cpu") is None
    assert fake_liger == []


def test_unknown_architecture_auto_skips_liger_refuses(fake_liger):
    model = _Model()
    model.config = types.SimpleNamespace(model_type="gpt2")
    assert apply_fused_kernels(model, "auto", "cuda") is None
    with pytest.raises(BadInput, match="no kernels for model type 'gpt2'"):
        apply_fused_kernels(model, "liger", "cuda")


def test_missing_liger_auto_skips_liger_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import raises ImportError
    assert apply_fused_kernels(_Model(), "auto", "cuda") is None
    with pytest.raises(BadInput, match=r"pip install 'fraudq\[gpu\]'"):
        apply_fused_kernels(_Model(), "liger", "cuda")


def test_attention_without_cudnn_on_cuda_only():
    assert torch.backends.cuda.cudnn_sdp_enabled()
    with attention_backends("cuda", cudnn_attention=False):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled()
    for device, allowed in (("cuda", True), ("cpu", False)):
        with attention_backends(device, cudnn_attention=allowed):
            assert torch.backends.cuda.cudnn_sdp_enabled()


def test_rotary_kernel_serves_one_sequence_forwards_only(fake_liger, monkeypatch):
    """Packed score batches are one sequence; padded batches and decode steps keep the model's own code, since
    liger's rotary kernel compiles once per batch size."""
    modeling = types.ModuleType("fake_modeling")
    modeling.apply_rotary_pos_emb = lambda q, k, cos, sin, *args, **kwargs: ("own", q.shape[0])
    rope = types.ModuleType("liger_kernel.transformers.rope")
    rope.liger_rotary_pos_emb = lambda q, k, cos, sin, *args, **kwargs: ("liger", q.shape[0])
    monkeypatch.setitem(sys.modules, "fake_modeling", modeling)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.rope", rope)
    model = type("Qwen2ForCausalLM", (), {"__module__": "fake_modeling", "config": _Config()})()
    for _ in range(2):  # a second eval in the same process must not wrap the wrapper
        assert apply_fused_kernels(model, "auto", "cuda:0") == "liger"

    def rotate(rows):
        return modeling.apply_rotary_pos_emb(torch.zeros(rows, 2, 5, 8), torch.zeros(rows, 1, 5, 8),
                                             torch.zeros(rows, 5, 8), torch.zeros(rows, 5, 8))

    assert rotate(1) == ("liger", 1)
    assert rotate(3) == ("own", 3)
    assert modeling.apply_rotary_pos_emb.fraudq_single_sequence
