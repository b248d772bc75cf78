"""Packed score batches (fraudq/packed.py): a batch's rows as one sequence must score every row exactly as the
padded path does. On CPU attention runs row by row; CUDA's variable-length kernel is checked against that same
per-row code when it is first used (and measured on the GPU: docs/BENCHMARKS.md)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from fraudq import packed
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
                     *flags)
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
    # The model is left as loaded: packed attention is switched on for packed forwards only.
    assert packed_result["confusion"] == padded_result["confusion"]
