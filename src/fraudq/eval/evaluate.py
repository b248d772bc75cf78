"""Evaluating a classifier checkpoint on labelled dialogues: score mode or the seed's generate mode."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from pathlib import Path

from fraudq import prompts
from fraudq.eval import packed
from fraudq.atomic import atomic_write_json, atomic_write_text
from fraudq.batching import make_batches
from fraudq.config import Config
from fraudq.data import read_jsonl
from fraudq.errors import BadInput
from fraudq.eval.kernels import apply_fused_kernels, attention_backends, check_choice
from fraudq.report.metrics import confusion, rates, roc_auc
from fraudq.checkpoint import fingerprint, inspect_model, load_model, load_tokenizer
from fraudq.runtime import dir_size, keep_cuda_allocator, peak_memory, resolve_device

MODES = ("score", "generate")
# Keys of the config that change what an eval measures; compare refuses to mix results that differ here.
PROMPT_KEYS = ("mode", "instruction", "answer_prefix", "true_word", "false_word", "max_new_tokens", "limit")


def predictions_path(results_path: Path) -> Path:
    return results_path.with_name(results_path.stem + ".predictions.jsonl")


def parse_answer(text: str) -> bool | None:
    """The seed's JSON answer, tolerating a ```json fence; None when it is not a clear true/false."""
    fenced = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", text, flags=re.S)
    body = fenced.group(1) if fenced else text
    match = re.search(r"\{.*?\}", body, flags=re.S)
    if not match:
        return None
    try:
        value = json.loads(match.group(0)).get("is_fraud")
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def parse_batch_size(value: str) -> int | None:
    """None means automatic: batches filled up to the token budget."""
    if str(value).lower() == "auto":
        return None
    try:
        size = int(value)
    except ValueError:
        raise BadInput(f"--batch-size must be a positive integer or 'auto', got {value!r}") from None
    if size < 1:
        raise BadInput(f"--batch-size must be a positive integer or 'auto', got {value!r}")
    return size


def left_pad(sequences: list[list[int]], pad_id: int, device: str):
    """Left padding puts every row's last token at the end, so logits_to_keep can cut the lm_head work."""
    import torch

    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


# Below this many shared tokens the saving is small next to the per-batch cache copy (a chosen bound, not measured).
SHARED_PREFIX_MIN_TOKENS = 16


def shared_prefix_tokens(prompt_ids: list[list[int]]) -> list[int]:
    """The longest token prefix of every prompt, or [] when it is too short to be worth sharing."""
    # Each row keeps at least one token of its own, so its logits come from its own forward.
    tokens = list(os.path.commonprefix(prompt_ids))[: min(map(len, prompt_ids)) - 1]
    return tokens if len(tokens) >= SHARED_PREFIX_MIN_TOKENS else []


class SharedPrefix:
    """The prompt tokens every row starts with (chat template, system prompt, instruction), run once.

    Score mode then feeds each batch only the rows' own tokens, attending to this prefix's keys and values
    through a KV cache: on the anti-fraud test set, 44 of the ~160 tokens of every prompt.
    """

    def __init__(self, model, tokens: list[int], device: str):
        import torch

        self.tokens = tokens
        self.config = model.config
        with torch.inference_mode():
            cache = model(input_ids=torch.tensor([tokens], device=device), use_cache=True).past_key_values
        self.layers = [(keys, values) for keys, values, *_ in cache]

    @functools.cached_property
    def packed_layers(self):
        """The same keys and values as (tokens, kv heads, head_dim), the layout of a packed batch."""
        return [(keys[0].transpose(0, 1).contiguous(), values[0].transpose(0, 1).contiguous())
                for keys, values in self.layers]

    def strip(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        return [ids[len(self.tokens):] for ids in prompt_ids]

    def cache_for(self, rows: int):
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                            for k, v in self.layers], config=self.config)


def forward_logits(model, sequences: list[list[int]], keep: int, pad_id: int, device: str,
                   prefix: SharedPrefix | None = None, packing: str | None = None):
    """The model's logits at the last `keep` positions of each row: (rows, keep, vocab).

    With `prefix`, `sequences` are the rows after it. With `packing` (the kernel packed.enable chose), the rows
    run as one sequence; otherwise left padding sits between the prefix and each row's own tokens, where the
    attention mask hides it.
    """
    import torch

    if packing:
        batch = packed.PackedBatch(sequences, keep, device, prefix.packed_layers if prefix else None,
                                   len(prefix.tokens) if prefix else 0, packing)
        with torch.inference_mode(), packed.attention(model):
            logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                           logits_to_keep=batch.kept, packed=batch).logits
        return logits.view(len(sequences), keep, -1)
    ids, mask, positions = left_pad(sequences, pad_id, device)
    if prefix is None:
        # No KV cache: filling one for a single forward cost 3x the forward itself at 16k tokens (H100).
        extra = {"use_cache": False}
    else:
        mask = torch.cat([mask.new_ones((len(sequences), len(prefix.tokens))), mask], dim=1)
        positions = positions + len(prefix.tokens)
        extra = {"use_cache": True, "past_key_values": prefix.cache_for(len(sequences))}
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep,
                     **extra).logits


def score_batch(model, prompt_ids: list[list[int]], candidates: list[list[int]], pad_id: int, device: str,
                prefix: SharedPrefix | None = None, packing: str | None = None):
    """log P(true words) - log P(false words) after the answer prefix, summed over each word's tokens.

    Returns a tensor on the model's device: converting per batch would stop the CPU from queueing the next
    batch while the GPU works.
    """
    import torch

    rows = prefix.strip(prompt_ids) if prefix else prompt_ids
    if all(len(cand) == 1 for cand in candidates):
        # The usual case (" true" / " false" are one token each): one forward pass serves both words, and the
        # log-softmax's normaliser is the same for both, so the difference of the two logits is the score.
        last = forward_logits(model, rows, 1, pad_id, device, prefix, packing)[:, -1, :]
        return last[:, candidates[0][0]].float() - last[:, candidates[1][0]].float()
    totals = []
    for cand in candidates:
        logits = forward_logits(model, [p + cand for p in rows], len(cand) + 1, pad_id, device, prefix, packing)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        # Position j of the kept window predicts cand[j]; the window's last position predicts past the word.
        picked = logprobs[:, : len(cand), :].gather(-1, _column(cand, len(rows), logprobs.device))
        totals.append(picked.squeeze(-1).sum(-1))
    return totals[0] - totals[1]


def _column(cand: list[int], rows: int, device):
    import torch

    return torch.tensor(cand, device=device).view(1, -1, 1).expand(rows, -1, -1)


def generate_batch(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, device: str) -> list[str]:
    import torch

    ids, mask, _ = left_pad(prompt_ids, tokenizer.pad_token_id, device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_batches(batches: list[list[int]], work, log) -> list[tuple[list[int], object]]:
    """Runs `work(indices)` per batch, returning (indices, values) pairs; on out-of-memory it halves the batch."""
    results = []
    pending = list(reversed(batches))
    while pending:
        batch = pending.pop()
        try:
            values = work(batch)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled; everything else is re-raised
            if not is_out_of_memory(exc) or len(batch) == 1:
                raise
            half = len(batch) // 2
            log(f"out of memory on a batch of {len(batch)} rows; retrying as {half} + {len(batch) - half}")
            _empty_cache()
            pending.extend([batch[half:], batch[:half]])
            continue
        results.append((batch, values))
    return results


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_model(cfg: Config, model_path: str, data: str, out: Path, skip_invalid: bool = False,
                   log=print, progress=None) -> dict:
    if cfg.mode not in MODES:
        raise BadInput(f"--mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    if cfg.limit < 0:
        raise BadInput(f"--limit must be 0 (all rows) or positive, got {cfg.limit}")
    batch_size = parse_batch_size(cfg.eval_batch_size)
    for key in ("token_budget", "generate_token_budget"):
        if getattr(cfg, key) < 1:
            raise BadInput(f"{key} must be positive, got {getattr(cfg, key)}")
    token_budget = cfg.token_budget if cfg.mode == "score" else cfg.generate_token_budget
    dataset = read_jsonl(data, need_label=True, skip_invalid=skip_invalid)
    if dataset.format != "labelled":
        raise BadInput(f"{data} is a chat-format file; eval needs labelled rows (instruction, input, label)")
    if dataset.skipped:
        log(f"skipped {dataset.skipped} invalid rows of {data} (--skip-invalid)")
    rows = dataset.rows[: cfg.limit] if cfg.limit else dataset.rows
    info = inspect_model(model_path, cfg.trust_remote_code, cfg.allow_pickle)
    device = resolve_device(cfg.device, "eval")
    check_choice(cfg.fused_kernels, device)
    if device.startswith("cuda"):
        keep_cuda_allocator()
    tokenizer = load_tokenizer(info, cfg.trust_remote_code)

    suffix = cfg.answer_prefix if cfg.mode == "score" else ""
    conversations = [prompts.eval_messages(r.instruction if r.instruction is not None else cfg.instruction, r.input)
                     for r in rows]
    texts = [text + suffix for text in prompts.render_untrusted(tokenizer, conversations, add_generation_prompt=True,
                                                                 source=str(info.path))]
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    candidates = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in (cfg.true_word, cfg.false_word)]
    if not all(candidates):
        raise BadInput("true_word and false_word must each be at least one token")

    import torch

    start = time.perf_counter()
    model = load_model(info, device, cfg.backend, cfg.trust_remote_code)
    fused = apply_fused_kernels(model, cfg.fused_kernels, device)
    packing = packed.enable(model) if cfg.mode == "score" and cfg.pack_rows else None
    load_s = time.perf_counter() - start
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    extra = max(map(len, candidates)) if cfg.mode == "score" else cfg.max_new_tokens
    shared = shared_prefix_tokens(prompt_ids) if cfg.mode == "score" and cfg.share_prefix else []
    batches = make_batches([len(p) - len(shared) + extra for p in prompt_ids], batch_size, token_budget,
                           padded=not packing)

    def predict(chunk: list[list[int]]):
        if cfg.mode == "score":
            return score_batch(model, chunk, candidates, tokenizer.pad_token_id, device, prefix, packing)
        return generate_batch(model, tokenizer, chunk, cfg.max_new_tokens, device)

    def work(indices: list[int]):
        values = predict([prompt_ids[i] for i in indices])
        if progress:
            progress(len(indices))
        return values

    # Before the clock, the shared prefix's one forward and a row or two: Triton kernels compile and autotune on
    # first use (seconds, once per process), which would otherwise be charged to whichever model's rate pays it
    # first. Reported as warmup_s.
    with attention_backends(device, cfg.cudnn_attention):
        start = time.perf_counter()
        prefix = SharedPrefix(model, shared, device) if shared else None
        if cfg.mode == "score":
            # Rows of 16 and 17 tokens past the prefix: Triton compiles a kernel again for an integer argument
            # (a batch's token count) that is a multiple of 16, so both kinds of count are warmed.
            longest = max(prompt_ids, key=len)
            for own in (16, 17):
                predict([longest[: len(shared) + own]])
        else:
            predict([min(prompt_ids, key=len)])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        done = run_batches(batches, work, log)
        if cfg.mode == "score":
            # One device-to-host copy for the whole run (see score_batch).
            outputs = dict(zip([i for batch, _ in done for i in batch], torch.cat([v for _, v in done]).tolist()))
        else:
            outputs = {i: answer for batch, answers in done for i, answer in zip(batch, answers)}
    wall_s = time.perf_counter() - start

    labels = [r.label for r in rows]
    if cfg.mode == "score":
        scores = [outputs[i] for i in range(len(rows))]
        preds = [s > 0 for s in scores]
        answers = [None] * len(rows)
    else:
        answers = [outputs[i] for i in range(len(rows))]
        preds = [parse_answer(a) for a in answers]
        scores = [None] * len(rows)
    counts = confusion(labels, preds)
    metrics = rates(counts)
    result = {
        "model": str(info.path),
        "model_fingerprint": fingerprint(info),
        "quantization": info.quant,
        "kernel": getattr(model, "fraudq_kernel", None),
        "data": str(dataset.path),
        "data_sha256": dataset.sha256,
        "rows": len(rows),
        "skipped_invalid": dataset.skipped,
        "eval_config": {k: getattr(cfg, k) for k in PROMPT_KEYS},
        "batching": {"batch_size": cfg.eval_batch_size, "token_budget": token_budget, "batches": len(batches),
                     "shared_prefix_tokens": len(prefix.tokens) if prefix else 0, "packed_rows": packing},
        "device": device,
        "fused_kernels": fused,
        "cudnn_attention": cfg.cudnn_attention if device.startswith("cuda") else None,
        "cuda_allocator": os.environ.get("PYTORCH_ALLOC_CONF") if device.startswith("cuda") else None,
        "confusion": counts,
        **metrics,
        "auc": roc_auc(labels, scores) if cfg.mode == "score" else None,
        "samples_per_s": round(len(rows) / wall_s, 2) if wall_s > 0 else None,
        "wall_s": round(wall_s, 3),
        "load_s": round(load_s, 3),
        "warmup_s": round(warmup_s, 3),
        "memory": peak_memory(device),
        "size_bytes": dir_size(info.path),
        "predictions_file": predictions_path(out).name,
    }
    lines = [json.dumps({"id": r.id, "label": r.label, "prediction": p, "score": s,
                         **({"answer": a} if a is not None and p is None else {})}, ensure_ascii=False)
             for r, p, s, a in zip(rows, preds, scores, answers)]
    predictions_text = "\n".join(lines) + "\n"
    # Two files, two renames: the results name the exact predictions they belong to, so a run interrupted
    # between the renames leaves a pair that read_results refuses instead of one that silently mixes runs.
    result["predictions_sha256"] = hashlib.sha256(predictions_text.encode("utf-8")).hexdigest()
    atomic_write_text(predictions_path(out), predictions_text)
    atomic_write_json(out, result)
    log(format_result(result, out))
    return result


def format_result(result: dict, out: Path) -> str:
    c = result["confusion"]
    auc = f", AUC {result['auc']:.4f}" if result["auc"] is not None else ""
    invalid = f", {c['invalid']} invalid answers (scored wrong)" if c["invalid"] else ""
    return (f"{result['rows']} rows: tn {c['tn']} fp {c['fp']} fn {c['fn']} tp {c['tp']}{invalid}; "
            f"precision {result['precision']:.4f}, recall {result['recall']:.4f}, F1 {result['f1']:.4f}, "
            f"accuracy {result['accuracy']:.4f}{auc}; {result['samples_per_s']} rows/s; written to {out}")


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
