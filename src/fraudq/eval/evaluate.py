"""`evaluate_model`: labelled rows -> prompts -> batches -> a Scorer -> the results and predictions files."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from fraudq import prompts
from fraudq.batching import make_batches
from fraudq.checkpoint import ModelInfo, fingerprint, inspect_model, load_model, load_tokenizer
from fraudq.config import PROMPT_KEYS, Config, eval_batch_rows
from fraudq.data import Dataset, read_jsonl
from fraudq.errors import BadInput
from fraudq.eval import packed
from fraudq.eval.kernels import attention_backends, check_choice, fused_kernels
from fraudq.eval.results import format_result, predictions_text, write_results
from fraudq.eval.scoring import Scorer, SharedPrefix, parse_answer, run_batches, shared_prefix_tokens
from fraudq.report.metrics import confusion, rates, roc_auc
from fraudq.runtime import compute_dtype, dir_size, dtype_name, keep_cuda_allocator, peak_memory, resolve_device


@dataclass
class Prompts:
    """The rows' prompt token ids (answer prefix included in score mode), and how many were cut to fit."""

    ids: list[list[int]]
    candidates: list[list[int]]
    truncated: int
    texts: list[str]  # the prompts as text, answer prefix included in score mode


def read_rows(cfg: Config, data: str, skip_invalid: bool, log) -> Dataset:
    dataset = read_jsonl(data, need_label=True, skip_invalid=skip_invalid)
    if dataset.format != "labelled":
        raise BadInput(f"{data} is a chat-format file; eval needs labelled rows (instruction, input, label)")
    if dataset.skipped:
        log(f"skipped {dataset.skipped} invalid rows of {data} (--skip-invalid)")
    if cfg.limit:
        dataset.rows = dataset.rows[: cfg.limit]
    return dataset


def build_prompts(cfg: Config, info: ModelInfo, tokenizer, rows, log) -> Prompts:
    """Every row through the checkpoint's chat template; rows past the model's context keep their head and
    tail (template, instruction, generation prompt), losing the middle of the dialogue."""
    conversations = [prompts.eval_messages(r.instruction if r.instruction is not None else cfg.instruction, r.input)
                     for r in rows]
    suffix = cfg.answer_prefix if cfg.mode == "score" else ""
    texts = [text + suffix for text in prompts.render_untrusted(tokenizer, conversations, add_generation_prompt=True,
                                                                 source=str(info.path))]
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    candidates = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in (cfg.true_word, cfg.false_word)]
    if not all(candidates):
        raise BadInput("true_word and false_word must each be at least one token")
    text_config = info.config.get("text_config", info.config)
    extra = max(map(len, candidates)) if cfg.mode == "score" else cfg.max_new_tokens
    room = int(text_config.get("max_position_embeddings") or 0) - extra
    truncated = 0
    if room > 0:
        head = room // 2
        for index, ids in enumerate(prompt_ids):
            if len(ids) > room:
                prompt_ids[index] = ids[:head] + ids[len(ids) - (room - head):]
                truncated += 1
    if truncated:
        log(f"{truncated} rows are longer than the model's context of {room + extra} tokens; "
            "each kept its first and last tokens")
    return Prompts(prompt_ids, candidates, truncated, texts)


def warm_up(scorer: Scorer, prompt_ids: list[list[int]], device: str) -> None:
    """Before the clock: Triton kernels compile and autotune on first use (seconds, once per process), which would
    otherwise be charged to whichever model's rate pays it first."""
    if scorer.mode == "score":
        # Rows of 16 and 17 tokens past the prefix: Triton compiles a kernel again for an integer argument
        # (a batch's token count) that is a multiple of 16, so both kinds of count are warmed.
        shared = len(scorer.prefix.tokens) if scorer.prefix else 0
        longest = max(prompt_ids, key=len)
        for own in (16, 17):
            scorer([longest[: shared + own]])
    else:
        scorer([min(prompt_ids, key=len)])
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@dataclass
class Run:
    """What one runtime gave: per-row outputs (margins or answers) and how it ran."""

    outputs: dict
    wall_s: float
    load_s: float
    warmup_s: float
    batching: dict | None = None
    kernel: str | None = None
    fused: str | None = None
    vllm: dict | None = None


def run_hf(cfg: Config, info: ModelInfo, tokenizer, built: Prompts, device: str, log, progress, wrap_scorer) -> Run:
    """fraudq's own runtime: transformers with packed rows, the shared prefix and fused kernels."""
    import torch

    batch_size = eval_batch_rows(cfg.eval_batch_size)
    token_budget = cfg.token_budget if cfg.mode == "score" else cfg.generate_token_budget
    prompt_ids = built.ids
    start = time.perf_counter()
    model = load_model(info, device, cfg.backend, cfg.trust_remote_code, cfg.dtype)
    with fused_kernels(model, cfg.fused_kernels, device) as fused, attention_backends(device, cfg.cudnn_attention):
        kernel = packed.enable(model) if cfg.mode == "score" and cfg.pack_rows else None
        load_s = time.perf_counter() - start
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        extra = max(map(len, built.candidates)) if cfg.mode == "score" else cfg.max_new_tokens
        shared = shared_prefix_tokens(prompt_ids) if cfg.mode == "score" and cfg.share_prefix else []
        batches = make_batches([len(p) - len(shared) + extra for p in prompt_ids], batch_size, token_budget,
                               padded=not kernel)
        scorer = Scorer(model, tokenizer, device, cfg.mode, built.candidates, cfg.max_new_tokens, kernel)
        start = time.perf_counter()
        scorer.prefix = SharedPrefix(model, shared, device) if shared else None
        warm_up(scorer, prompt_ids, device)
        warmup_s = time.perf_counter() - start
        run = wrap_scorer(scorer) if wrap_scorer else scorer

        def work(indices: list[int]):
            values = run([prompt_ids[i] for i in indices])
            if progress:
                progress(len(indices))
            return values

        start = time.perf_counter()
        done = run_batches(batches, work, log)
        if cfg.mode == "score":
            # One device-to-host copy for the whole run (see Scorer.score).
            outputs = dict(zip([i for batch, _ in done for i in batch], torch.cat([v for _, v in done]).tolist()))
        else:
            outputs = {i: answer for batch, answers in done for i, answer in zip(batch, answers)}
        wall_s = time.perf_counter() - start

    batching = {"batch_size": cfg.eval_batch_size, "token_budget": token_budget, "batches": len(batches),
                "shared_prefix_tokens": len(shared), "packed_rows": kernel}
    return Run(outputs, wall_s, load_s, warmup_s, batching, getattr(model, "fraudq_kernel", None), fused)


def run_vllm(cfg: Config, info: ModelInfo, built: Prompts) -> Run:
    """The same prompts through vLLM (eval/vllm_runtime.py), for the runtime a checkpoint is deployed on."""
    from fraudq.eval import vllm_runtime
    from fraudq.runtime import default_stop_signals

    report: dict = {}
    common = {"tensor_parallel_size": cfg.tensor_parallel_size, "data_parallel_size": cfg.data_parallel_size,
              "report": report}
    with default_stop_signals():
        if cfg.mode == "score":
            values = vllm_runtime.score_with_vllm(info.path, built.texts, cfg.true_word, cfg.false_word, "", **common)
        else:
            values = vllm_runtime.generate_with_vllm(info.path, built.texts, cfg.max_new_tokens, **common)
    return Run(dict(enumerate(values)), report.get("wall_s") or 0.0, report.get("load_s") or 0.0,
               report.get("warmup_s") or 0.0, vllm=report)


def evaluate_model(cfg: Config, model_path: str, data: str, out: Path, skip_invalid: bool = False, log=print,
                   progress=None, model_fingerprint: str | None = None, wrap_scorer=None,
                   threshold_source: dict | None = None) -> dict:
    """Evaluates one checkpoint and writes `out` and its predictions file.

    `model_fingerprint` is the checkpoint's, when the caller has just computed it; `wrap_scorer(scorer)` may
    return a stand-in that calls it (tests inject out-of-memory errors and interrupts there); `threshold_source`
    says where cfg.threshold came from (default: the config), for the results file.
    """
    dataset = read_rows(cfg, data, skip_invalid, log)
    rows = dataset.rows
    info = inspect_model(model_path, cfg.trust_remote_code, cfg.allow_pickle)
    device = resolve_device(cfg.device, "eval")
    check_choice(cfg.fused_kernels, device)
    if device.startswith("cuda"):
        keep_cuda_allocator()
    tokenizer = load_tokenizer(info, cfg.trust_remote_code)
    built = build_prompts(cfg, info, tokenizer, rows, log)

    if cfg.runtime == "vllm":
        run = run_vllm(cfg, info, built)
    else:
        run = run_hf(cfg, info, tokenizer, built, device, log, progress, wrap_scorer)
    scores, preds, answers = _predictions(cfg, run.outputs, len(rows))
    result = {
        **_provenance(cfg, info, dataset, built, run, device, model_fingerprint, threshold_source),
        **_measurements(cfg, info, run, device, [r.label for r in rows], preds, scores),
    }
    write_results(out, result, predictions_text(rows, preds, scores, answers))
    log(format_result(result, out))
    return result


def _predictions(cfg: Config, outputs: dict, row_count: int) -> tuple[list, list[bool], list]:
    """(scores, predictions, answers) in row order: margins in score mode, parsed answers in generate mode."""
    if cfg.mode == "score":
        scores = [outputs[i] for i in range(row_count)]
        return scores, [s > cfg.threshold for s in scores], [None] * row_count
    answers = [outputs[i] for i in range(row_count)]
    return [None] * row_count, [parse_answer(a) for a in answers], answers


def _provenance(cfg: Config, info: ModelInfo, dataset: Dataset, built: Prompts, run: Run, device: str,
                model_fingerprint: str | None, threshold_source: dict | None) -> dict:
    """The results file's first half: what was evaluated, on which data, with which settings."""
    return {
        "model": str(info.path),
        "model_fingerprint": model_fingerprint or fingerprint(info),
        "quantization": info.quant,
        "runtime": cfg.runtime,
        "kernel": run.kernel,
        "dtype": dtype_name(compute_dtype(device, info.quant is not None, cfg.dtype)),
        "dtype_setting": cfg.dtype,
        "data": str(dataset.path),
        "data_sha256": dataset.sha256,
        "rows": len(dataset.rows),
        "skipped_invalid": dataset.skipped,
        "truncated_rows": built.truncated,
        "eval_config": {k: getattr(cfg, k) for k in PROMPT_KEYS},
        "threshold": cfg.threshold if cfg.mode == "score" else None,
        "threshold_source": (threshold_source or {"from": "config"}) if cfg.mode == "score" else None,
    }


def _measurements(cfg: Config, info: ModelInfo, run: Run, device: str, labels: list, preds: list[bool],
                  scores: list) -> dict:
    """The results file's second half: how the run went, its quality, speed, memory and the checkpoint's size."""
    counts = confusion(labels, preds)
    return {
        "batching": run.batching,
        "device": device,
        "fused_kernels": run.fused,
        "cudnn_attention": cfg.cudnn_attention if device.startswith("cuda") else None,
        "cuda_allocator": os.environ.get("PYTORCH_ALLOC_CONF") if device.startswith("cuda") else None,
        "confusion": counts,
        **rates(counts),
        "auc": roc_auc(labels, scores) if cfg.mode == "score" else None,
        "samples_per_s": round(len(labels) / run.wall_s, 2) if run.wall_s > 0 else None,
        "wall_s": round(run.wall_s, 3),
        "load_s": round(run.load_s, 3),
        "warmup_s": round(run.warmup_s, 3),
        **({"vllm": run.vllm} if run.vllm else {}),
        "memory": peak_memory(device),
        "size_bytes": dir_size(info.path),
    }
