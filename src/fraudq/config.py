"""Every setting of every subcommand, with one precedence rule.

Precedence: CLI flag > FRAUDQ_<KEY> environment variable > --config FILE (TOML) > the defaults below.
`configs/default.toml` mirrors these defaults with comments; a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fraudq.errors import BadInput

DEFAULT_INSTRUCTION = (
    "\n下面是一段对话文本, 请分析对话内容是否有诈骗风险，以json格式输出你的判断结果(is_fraud: true/false)。\n"
)


@dataclass
class Config:
    # [paths]
    model: str = ""
    work_dir: str = "runs"
    calib_data: str = ""
    test_data: str = ""
    calib_file: str = ""  # default: <work_dir>/calib.jsonl
    # [calib]
    calib_n: int = 0  # 0 = all rows
    max_len: int = 1024
    seed: int = 42
    # [quantize]
    group_size: int = 128
    damp: float = 0.01
    desc_act: bool = False
    sym: bool = True
    true_sequential: bool = True
    static_groups: bool = False
    quant_batch_size: int = 1
    engine: str = "fraudq"  # fraudq: the batched scheduler around GPTQModel's math; gptqmodel: the library's own loop
    quant_batch_tokens: int = 16384  # fraudq engine: padded calibration tokens per forward
    hessian_tf32: bool = True  # fraudq engine on CUDA: X^T X on TF32 tensor cores (fp16 inputs are exact in TF32)
    # fraudq engine: tokens per X^T X product (longer TF32 chains bias the Hessian: docs/BENCHMARKS.md);
    # 0 = one product per calibration batch
    hessian_chunk_tokens: int = 1024
    device: str = "auto"  # quantize: a GPU, unless --device cpu; eval and load: the GPU if there is one
    backend: str = "auto"  # GPTQModel kernel for loading quantized models: auto, torch, triton, marlin
    # [eval]
    mode: str = "score"
    eval_batch_size: str = "auto"
    token_budget: int = 65536  # tokens per batch when eval_batch_size is "auto"
    generate_token_budget: int = 262144  # the same for generate mode, whose decode steps cost the same at any batch
    share_prefix: bool = True  # score mode: run the prompt prefix all rows share once, reuse its keys and values
    pack_rows: bool = True  # score mode: a batch's rows as one sequence, no padding (models that allow it)
    fused_kernels: str = "auto"  # on CUDA: liger-kernel's RMSNorm and SwiGLU kernels; auto, liger or off
    cudnn_attention: bool = False  # on CUDA: allow cuDNN attention, which builds a plan for every new batch shape
    limit: int = 0  # 0 = all rows
    runtime: str = "hf"  # hf: fraudq's own (transformers); vllm: vLLM, the engine checkpoints are served with
    tensor_parallel_size: int = 1  # runtime vllm: GPUs one engine spreads over
    data_parallel_size: int = 1  # runtime vllm: engines, each on its own GPUs, splitting the rows
    threshold: float = 0.0  # score mode: a row is fraud when its margin log P(true) - log P(false) exceeds this
    # unquantized models' compute dtype; auto = what GPTQ kernels compute in (bf16 on CPU, fp16 on CUDA), so the
    # baseline and the quantized models round alike
    dtype: str = "auto"
    instruction: str = DEFAULT_INSTRUCTION
    answer_prefix: str = '{"is_fraud":'
    true_word: str = " true"
    false_word: str = " false"
    max_new_tokens: int = 16
    # [tune]
    tune_val_data: str = ""  # labelled JSONL that chooses; empty = a seeded part of calib_data, kept out of calibration
    tune_val_fraction: float = 0.2  # the part split off when tune_val_data is empty
    tune_budget_bits: float = 0.0  # most average bits per weight (fraudq tune --budget-bits; must be given)
    tune_bits: str = "4,8"  # bit widths searched, e.g. "3,4,8"
    tune_space: str = "auto"  # candidates: auto (cpu without a GPU, else full), cpu, full, or a TOML file
    tune_max_flip_rate: float = 0.01  # accepted: validation answers changed against the baseline, at most this share
    tune_max_delta_f1: float = 0.005  # accepted: |F1 - baseline F1| at most this
    tune_alpha: float = 0.05  # accepted: McNemar p at least this (not significantly different)
    tune_sensitivity_rows: int = 256  # validation rows that rank the layers for mixed precision
    tune_prune: bool = True  # skip candidates the results so far rule out
    # [trust]
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir)

    @property
    def calib_path(self) -> Path:
        return Path(self.calib_file) if self.calib_file else self.work_path / "calib.jsonl"

    def quant_dir(self, bits: int) -> Path:
        return self.work_path / f"int{bits}"

    def eval_results_path(self, name: str) -> Path:
        suffix = ("" if self.mode == "score" else f".{self.mode}") + ("" if self.runtime == "hf" else f".{self.runtime}")
        return self.work_path / "eval" / f"{name}{suffix}.json"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_TYPES = {f.name: f.type for f in fields(Config)}

# Keys that change what a stage produces: recorded beside its output, and compared to judge it stale.
CALIB_KEYS = ("calib_n", "max_len", "seed", "instruction")
QUANT_KEYS = ("group_size", "damp", "desc_act", "sym", "true_sequential", "static_groups", "quant_batch_size",
              "engine", "quant_batch_tokens", "hessian_tf32", "hessian_chunk_tokens")
# compare refuses to mix results that differ here.
PROMPT_KEYS = ("mode", "instruction", "answer_prefix", "true_word", "false_word", "max_new_tokens", "limit")

# The flag that sets each key, where it differs from --key-with-dashes; messages name what the user typed.
FLAGS = {"calib_n": "--n", "quant_batch_size": "--batch-size", "eval_batch_size": "--batch-size",
         "quant_batch_tokens": "--batch-tokens", "tune_val_data": "--val-data", "tune_val_fraction": "--val-fraction",
         "tune_budget_bits": "--budget-bits", "tune_bits": "--bits", "tune_space": "--candidates",
         "tune_max_flip_rate": "--max-flip-rate", "tune_max_delta_f1": "--max-delta-f1", "tune_alpha": "--alpha",
         "tune_sensitivity_rows": "--sensitivity-rows", "tune_prune": "--prune"}
# Keys set only in a config file or a FRAUDQ_ variable: messages name the key itself.
NO_FLAG = ("hessian_chunk_tokens", "hessian_tf32", "token_budget", "generate_token_budget", "cudnn_attention")
CHOICES = {
    "mode": ("score", "generate"),
    "runtime": ("hf", "vllm"),
    "engine": ("fraudq", "gptqmodel"),
    "fused_kernels": ("auto", "liger", "off"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "backend": ("auto", "torch", "triton", "marlin", "exllama_v2", "torch_int8"),
}
# (lowest, highest) allowed, inclusive; None = unbounded. damp is checked apart: it is open at both ends.
RANGES = {
    "calib_n": (0, None), "max_len": (1, None), "quant_batch_size": (1, None), "quant_batch_tokens": (1, None),
    "hessian_chunk_tokens": (0, None), "token_budget": (1, None), "generate_token_budget": (1, None),
    "limit": (0, None), "max_new_tokens": (1, None), "tensor_parallel_size": (1, None), "data_parallel_size": (1, None),
    "tune_max_flip_rate": (0, 1), "tune_max_delta_f1": (0, 1), "tune_alpha": (0, 1), "tune_sensitivity_rows": (1, None),
}


def flag(key: str) -> str:
    if key in NO_FLAG:
        return key
    return FLAGS.get(key, "--" + key.replace("_", "-"))


def eval_batch_rows(value: str) -> int | None:
    """eval_batch_size as rows per batch; None means automatic: batches filled up to the token budget."""
    if str(value).lower() == "auto":
        return None
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise BadInput(f"--batch-size must be a positive integer or 'auto', got {value!r}")
    return size


def validate(cfg: "Config") -> None:
    """Every allowed value and range, checked once when the config is built, whatever set it."""
    for key, allowed in CHOICES.items():
        value = getattr(cfg, key)
        if key == "backend":
            value = value.removeprefix("gptq_")
        if value not in allowed:
            raise BadInput(f"{flag(key)} must be one of {', '.join(allowed)}, got {getattr(cfg, key)!r}")
    for key, (low, high) in RANGES.items():
        value = getattr(cfg, key)
        if (low is not None and value < low) or (high is not None and value > high):
            bound = ("0 or positive" if low == 0 else f"at least {low}") if high is None else f"between {low} and {high}"
            raise BadInput(f"{flag(key)} must be {bound}, got {value}")
    if not 0 < cfg.damp < 1:
        raise BadInput(f"--damp must be between 0 and 1 (exclusive), got {cfg.damp}")
    if cfg.group_size != -1 and cfg.group_size <= 0:
        raise BadInput(f"--group-size must be -1 or a positive divisor of the layer widths, got {cfg.group_size}")
    if cfg.engine == "fraudq" and (cfg.desc_act or cfg.static_groups):
        raise BadInput("--desc-act and --static-groups need --engine gptqmodel; fraudq's engine does plain GPTQ order")
    if not 0 < cfg.tune_val_fraction < 1:
        raise BadInput(f"--val-fraction must be between 0 and 1 (exclusive), got {cfg.tune_val_fraction}")
    if cfg.threshold != cfg.threshold or abs(cfg.threshold) == float("inf"):
        raise BadInput(f"--threshold must be a finite number, got {cfg.threshold}")
    eval_batch_rows(cfg.eval_batch_size)
# Settings that run or unpickle code from a checkpoint: only a flag on the command line turns them on, so a
# config file shared in a repository, or a variable exported once, can never do it for everyone.
FLAG_ONLY = {"trust_remote_code": "--trust-remote-code", "allow_pickle": "--allow-pickle"}


def _refuse_flag_only(key: str, value: Any, source: str) -> None:
    if key in FLAG_ONLY and value:
        raise BadInput(f"{source}: {key} can be turned on only with the {FLAG_ONLY[key]} flag, "
                       "never from a config file or the environment")


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = FIELD_TYPES[key]
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise BadInput(f"{source}: {key} must be a {kind}, got {value!r}") from None


def _flatten_toml(data: dict, source: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten_toml(value, source))
        elif key in FIELD_TYPES:
            flat[key] = _coerce(key, value, source)
            _refuse_flag_only(key, flat[key], source)
        else:
            raise BadInput(f"{source}: unknown setting '{key}'; run 'fraudq config' to list them")
    return flat


def toml_value(value) -> str:
    """One setting written as a TOML value, for config files fraudq writes (the demo's, the tests')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def load_toml(path: Path, what: str, hint: str = "") -> dict[str, Any]:
    """A TOML file as a dict; a missing or invalid one is one line naming `what` it was meant to be."""
    if not path.is_file():
        raise BadInput(f"{what} {path} does not exist{hint}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{what} {path} is not valid TOML: {exc}") from None


def read_toml(path: Path) -> dict[str, Any]:
    return _flatten_toml(load_toml(path, "config file"), str(path))


def from_env(environ: dict[str, str]) -> dict[str, Any]:
    values = {}
    for key in FIELD_TYPES:
        env_key = "FRAUDQ_" + key.upper()
        if env_key in environ:
            values[key] = _coerce(key, environ[env_key], env_key)
            _refuse_flag_only(key, values[key], env_key)
    return values


def build_config(
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Defaults, then the TOML file, then FRAUDQ_* variables, then CLI flags (None = not given)."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(read_toml(Path(config_file)))
    values.update(from_env(dict(os.environ) if environ is None else environ))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value, flag(key))
    cfg = Config(**values)
    validate(cfg)
    return cfg
