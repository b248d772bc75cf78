"""The demo's reference classifier: a Qwen2 trained from random init, so tests and the demo need no model hub.

`tiny` trains on CPU in seconds. The benchmark scripts define larger presets (scripts/bench/presets.py) and
train them with the same `train_reference`.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from fraudq.atomic import atomic_dir
from fraudq.demo.training import length_batches, optimizer_and_schedule, run_steps
from fraudq.prompts import (
    EVAL_JOINER,
    QWEN2_CHAT_TEMPLATE,
    answer_text,
    eval_prompt,
    render,
    training_messages,
    user_text,
)

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
# Qwen2's split regex (single digits, unlike GPT-4's 1-3). Words keep their leading space, so ' true'
# is one pre-token whether it follows '{"is_fraud":' in the same string or is encoded alone.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)
TINY_VOCAB_SIZE = 3000
# Byte-level characters per token (a CJK character is three): stops the BPE from turning whole
# template sentences into single tokens, so the tiny model has to read, as Qwen2 does.
MAX_TOKEN_CHARS = 9

PRESETS: dict[str, dict] = {
    "tiny": {
        "tokenizer": "tiny",
        "model": dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        ),
        "device": "cpu",
        "save_dtype": torch.float32,
        "lr": 3e-3,  # 6e-3 diverges
        "batch_size": 16,
        # Accuracy jumps from chance to ~0.99 around step 90 on 600 rows; 5 epochs is ~190 steps.
        "epochs": 5.0,
    },
}


def _wrap(backend: Tokenizer) -> transformers.PreTrainedTokenizerFast:
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = QWEN2_CHAT_TEMPLATE
    return tok


def _set_pipeline(backend: Tokenizer) -> None:
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)


def build_tokenizer(kind: str, texts: list[str] | None = None) -> transformers.PreTrainedTokenizerFast:
    if kind == "tiny":
        if not texts:
            raise ValueError("the tiny tokenizer is trained on texts; pass some")
        backend = Tokenizer(models.BPE(fuse_unk=False))
        _set_pipeline(backend)
        trainer = trainers.BpeTrainer(
            vocab_size=TINY_VOCAB_SIZE,
            min_frequency=2,
            special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            max_token_length=MAX_TOKEN_CHARS,
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return _wrap(backend)
    raise ValueError(f"unknown tokenizer kind {kind!r}; the demo builds 'tiny' only")


def _tiny_corpus(rows: list[dict]) -> list[str]:
    # The chat scaffolding and both answers must be in the corpus so they become whole tokens.
    fixed = ["You are a helpful assistant.", "system\n", "user\n", "assistant\n", answer_text(True), answer_text(False)]
    texts = [user_text(r["instruction"], r["input"], EVAL_JOINER) + "\n" + answer_text(r["label"]) for r in rows]
    return texts + fixed * max(10, len(rows) // 20)


def _model_config(preset: dict, tok) -> transformers.Qwen2Config:
    vocab = preset.get("vocab_size") or 128 * math.ceil(len(tok) / 128)
    return transformers.Qwen2Config(
        vocab_size=vocab,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        hidden_act="silu",
        use_sliding_window=False,
        bos_token_id=tok.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tok.convert_tokens_to_ids(IM_END),
        pad_token_id=tok.convert_tokens_to_ids(ENDOFTEXT),
        **preset["model"],
    )


def _encode(tok, rows: list[dict], max_len: int) -> list[tuple[list[int], int]]:
    """(ids, answer_start) per row; trains on the answer and <|im_end|>, not the newline after it."""
    out = []
    for row in rows:
        dialogue = row["input"]
        while True:
            prompt = eval_prompt(tok, row["instruction"], dialogue)
            messages = training_messages(row["instruction"], dialogue, row["label"])
            full = render(tok, messages, add_generation_prompt=False)
            if not full.startswith(prompt):
                raise RuntimeError("training text does not start with the eval prompt; prompts.py changed?")
            answer = full[len(prompt) :]
            answer = answer[: answer.index(IM_END) + len(IM_END)]
            p_ids = tok(prompt, add_special_tokens=False).input_ids
            a_ids = tok(answer, add_special_tokens=False).input_ids
            excess = len(p_ids) + len(a_ids) - max_len
            if excess <= 0 or not dialogue:
                break
            # One character can be several byte-level tokens, so cut and measure again.
            dialogue = dialogue[: max(0, len(dialogue) - max(excess, 1))]
        out.append((p_ids + a_ids, len(p_ids)))
    return out


def _save_atomic(model, tok, out_dir: Path, dtype: torch.dtype) -> None:
    model = model.to(device="cpu", dtype=dtype)
    model.generation_config = transformers.GenerationConfig(
        bos_token_id=tok.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=[tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids(ENDOFTEXT)],
        pad_token_id=tok.convert_tokens_to_ids(ENDOFTEXT),
        do_sample=False,
    )
    with atomic_dir(out_dir, force=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # transformers 5 writes only "dtype"; tools written for 4.x read "torch_dtype".
        config_path = Path(tmp) / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["torch_dtype"] = config["dtype"]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # safetensors creates its file 0600; a checkpoint is meant to be shared like the other files.
        mode = 0o666 & ~_umask()
        for path in Path(tmp).iterdir():
            path.chmod(mode)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _pick_device(preset: dict, device: str | None) -> str:
    if device:
        return device
    if preset["device"] == "cuda" and not torch.cuda.is_available():
        return "cpu"
    return preset["device"]


def _resolve_preset(preset: str | dict, layers: int | None) -> tuple[dict, str]:
    """The preset's spec and its name."""
    if isinstance(preset, dict):  # a preset defined elsewhere (the benchmark scripts' Qwen2 shapes)
        spec, name = preset, preset["name"]
    elif preset in PRESETS:
        spec, name = PRESETS[preset], preset
    else:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    if layers:  # a slice of the preset's shape: same widths, fewer layers, for quick speed sweeps
        spec = {**spec, "model": {**spec["model"], "num_hidden_layers": layers}}
    return spec, name


def _untrained(spec: dict, rows: list[dict], seed: int, name: str, log):
    """The preset's tokenizer and its model at random init, seeded."""
    tok = build_tokenizer("tiny", _tiny_corpus(rows)) if spec["tokenizer"] == "tiny" else spec["tokenizer"]()
    config = _model_config(spec, tok)
    tok.model_max_length = config.max_position_embeddings
    torch.manual_seed(seed)
    # Built on CPU in float32 so the initial weights are the same whatever device trains them.
    model = transformers.Qwen2ForCausalLM(config)
    log(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, vocab {config.vocab_size}")
    return tok, model


def _train(model, tok, rows: list[dict], spec: dict, epochs: float, seed: int, device: str, max_len: int,
           log) -> tuple[int, list[dict]]:
    """Trains `model` in place on `rows`' answers; returns the step count and the loss history."""
    model.to(device)
    model.train()
    encoded = _encode(tok, rows, max_len)
    batches = length_batches([len(e[0]) for e in encoded], spec["batch_size"])
    steps = max(1, math.ceil(epochs * len(batches)))
    opt, sched = optimizer_and_schedule(model, spec["lr"], steps)
    train_started = time.perf_counter()
    history = run_steps(model, opt, sched, encoded, batches, steps, random.Random(seed), device, tok.pad_token_id, log)
    log(f"trained {steps} steps in {time.perf_counter() - train_started:.1f}s on {device}")
    model.eval()
    return steps, history


def train_reference(
    preset: str | dict,
    rows: list[dict],
    out_dir: Path,
    seed: int = 0,
    epochs: float | None = None,
    device: str | None = None,
    max_len: int = 512,
    log=print,
    layers: int | None = None,
) -> dict:
    spec, name = _resolve_preset(preset, layers)
    epochs = spec["epochs"] if epochs is None else float(epochs)
    device = _pick_device(spec, device)
    started = time.perf_counter()
    tok, model = _untrained(spec, rows, seed, name, log)
    steps, history = 0, []
    if epochs > 0 and rows:
        steps, history = _train(model, tok, rows, spec, epochs, seed, device, max_len, log)

    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if steps and device.startswith("cuda") else None
    _save_atomic(model, tok, Path(out_dir), spec["save_dtype"])
    wall = time.perf_counter() - started
    log(f"saved {out_dir} ({wall:.1f}s)")
    return {
        "preset": name,
        "seed": seed,
        "epochs": epochs,
        "device": device,
        "rows": len(rows),
        "steps": steps,
        "loss_history": history,
        "wall_seconds": round(wall, 2),
        "peak_gpu_gib": None if peak_gb is None else round(peak_gb, 2),
        "out_dir": str(out_dir),
    }
