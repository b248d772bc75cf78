"""Packed score batches (fraudq/packed.py): a batch's rows as one sequence must score every row exactly as the
padded path does. On CPU attention runs row by row; CUDA's variable-length kernel is checked against that same
per-row code when it is first used (and measured on the GPU: docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import run_cli
from fraudq.eval import packed
from fraudq.batching import make_batches


def test_packed_batch_layout():
    """Two rows after a 2-token prefix: positions continue the prefix, keys are prefix + the row's own."""
    layers = [(torch.zeros(2, 1, 4), torch.zeros(2, 1, 4))]
    batch = packed.PackedBatch([[11, 12], [13, 14, 15]], keep=1, device="cpu", prefix_layers=layers, prefix_len=2)
    assert batch.input_ids.tolist() == [[11, 12, 13, 14, 15]]
    assert batch.position_ids.tolist() == [[2, 3, 2, 3, 4]]
    assert batch.kept.tolist() == [1, 4]
    # Indices into cat(prefix keys, packed keys): prefix 0-1, row one's keys 2-3, row two's 4-6.
    assert batch.key_index.tolist() == [0, 1, 2, 3, 0, 1, 4, 5, 6]
    assert batch.cu_q.tolist() == [0, 2, 5] and batch.cu_k.tolist() == [0, 4, 9]
    assert (batch.max_q, batch.max_k) == (3, 5)
    two = packed.PackedBatch([[11, 12], [13, 14, 15]], keep=2, device="cpu")
    assert two.kept.tolist() == [0, 1, 3, 4] and two.key_index is None


def test_the_kernel_check_rejects_a_wrong_causal_alignment_or_scale():
    """CUDA's variable-length kernel is used only if it matches the per-row reference. Here stand-ins play the
    kernel: the reference itself passes; causal aligned to the top left (rows would miss the prefix's last keys
    and see too few of their own) and an ignored softmax scale both fail."""
    from torch.nn.attention.bias import causal_upper_left

    def right(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        return packed._per_row(q, k, v, cu_q.tolist(), cu_k.tolist(), scale)

    def unscaled(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        return right(q, k, v, cu_q, cu_k, max_q, max_k, None)

    def top_left(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        out = torch.empty_like(q)
        starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
        for q0, q1, k0, k1 in zip(starts_q, starts_q[1:], starts_k, starts_k[1:]):
            rows = [t.transpose(0, 1).unsqueeze(0) for t in (q[q0:q1], k[k0:k1], v[k0:k1])]
            out[q0:q1] = torch.nn.functional.scaled_dot_product_attention(
                *rows, attn_mask=causal_upper_left(q1 - q0, k1 - k0), scale=scale, enable_gqa=True)[0].transpose(0, 1)
        return out

    shape = ("cpu", torch.float32, 4, 2, 16, 0.3)  # 0.3, not 16 ** -0.5: a kernel that ignores it must fail
    assert packed._matches_reference(right, *shape)
    assert not packed._matches_reference(unscaled, *shape)
    assert not packed._matches_reference(top_left, *shape)


def test_grouped_key_value_heads_are_read_as_they_are_where_the_kernel_allows(monkeypatch):
    """The kernel is first tried with grouped key/value heads as they are; a torch whose function refuses them falls
    back to copied heads, and a kernel wrong both ways to the per-row reference. Stand-ins play torch's
    varlen_attn, called through fraudq's own wrapper."""
    import torch.nn.attention.varlen as varlen

    def right(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), enable_gqa=False, scale=None):
        assert window_size == (-1, 0)
        return packed._per_row(q, k, v, cu_q.tolist(), cu_k.tolist(), scale)

    def refuses_grouped(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), scale=None):
        if k.shape[1] != q.shape[1]:
            raise ValueError("Expect query and key/value to have the same number of heads")
        return right(q, k, v, cu_q, cu_k, max_q, max_k, window_size=window_size, scale=scale)

    def wrong(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), enable_gqa=False, scale=None):
        return right(q, k, v, cu_q, cu_k, max_q, max_k, window_size=window_size, scale=scale) + 1

    shape = ("cpu", torch.float32, 4, 2, 16, 0.25)
    for stand_in, kernel in ((right, "varlen"), (refuses_grouped, "varlen-repeat-kv"), (wrong, "per-row")):
        monkeypatch.setattr(varlen, "varlen_attn", stand_in)
        packed._varlen.cache_clear()
        assert packed._first_varlen_kernel(*shape) == kernel
    packed._varlen.cache_clear()


def test_packed_budget_counts_tokens_not_padding():
    lengths = [4, 1, 1, 1]
    assert make_batches(lengths, None, 6) == [[0], [1, 2, 3]]  # padded: rows x longest row
    assert make_batches(lengths, None, 6, padded=False) == [[0, 1, 2], [3]]


def test_sliding_window_models_are_not_packed():
    """Packed attention has no sliding window, so such a model keeps the padded path."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    def tiny(**extra):
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, **extra))

    assert packed.unsupported_reason(tiny()) is None
    sliding = tiny(use_sliding_window=True, sliding_window=8, max_window_layers=0)
    assert "sliding-window" in packed.unsupported_reason(sliding)
    assert packed.enable(sliding) is None
    assert sliding.config._attn_implementation == "sdpa"


def _eval(project, tmp_path, name, *flags):
    out = tmp_path / f"{name}.json"
    result = run_cli("eval", "--model", project.model, "--config", project.config, "--limit", "40", "--out", out,
                     "--dtype", "float32", *flags)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / f"{name}.predictions.jsonl").read_text().splitlines()]
    return json.loads(out.read_text()), rows


@pytest.mark.parametrize("share", ["--share-prefix", "--no-share-prefix"])
def test_packed_eval_scores_every_row_as_the_padded_eval(project, tmp_path, share):
    packed_result, packed_rows = _eval(project, tmp_path, "packed", share)
    padded_result, padded_rows = _eval(project, tmp_path, "padded", share, "--no-pack-rows")
    assert packed_result["batching"]["packed_rows"] == "per-row"
    assert padded_result["batching"]["packed_rows"] is None
    assert [r["score"] for r in packed_rows] == pytest.approx([r["score"] for r in padded_rows], abs=1e-4)
    assert [r["prediction"] for r in packed_rows] == [r["prediction"] for r in padded_rows]
    assert packed_result["confusion"] == padded_result["confusion"]


@pytest.mark.parametrize("environ, expected", [
    ({}, "expandable_segments:False"),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64"}, "max_split_size_mb:64"),
    ({"PYTORCH_ALLOC_CONF": "expandable_segments:True"}, "expandable_segments:True"),
])
def test_eval_keeps_the_users_cuda_allocator_or_the_default(monkeypatch, environ, expected):
    """GPTQModel sets its own allocator settings on import unless PYTORCH_ALLOC_CONF is set; eval sets it first
    (the defaults, or what the user set under either name), so GPTQModel's never apply."""
    from fraudq.runtime import keep_cuda_allocator

    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    keep_cuda_allocator()
    assert os.environ["PYTORCH_ALLOC_CONF"] == expected
