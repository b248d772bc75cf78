"""Local checkpoints (fp16/bf16/fp32 or GPTQ): inspect without loading, load, fingerprint, describe."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from fraudq.errors import BadInput, NeedsFlag
from fraudq.runtime import compute_dtype, dir_size, resolve_device

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "qwen.tiktoken")
# What turns a dialogue into the token ids a model sees: its vocabulary, merges, settings and chat template.
PROMPT_FILES = (*TOKENIZER_FILES, "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "chat_template.jinja", "chat_template.json")


@dataclass
class ModelInfo:
    path: Path
    config: dict
    quant: dict | None  # bits, group_size, desc_act, sym, checkpoint_format
    weight_files: list[Path]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path} is not valid JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} is not a JSON object; the checkpoint is damaged")
    return data


def quant_config_of(path: Path, config: dict) -> dict | None:
    """GPTQ settings from config.json (fraudq, GPTQModel, optimum) or quantize_config.json (auto-gptq v1)."""
    raw = config.get("quantization_config")
    if raw is None and (path / "quantize_config.json").is_file():
        raw = _read_json(path / "quantize_config.json")
    if raw is None:
        return None
    return {
        "bits": raw.get("bits"),
        "group_size": raw.get("group_size"),
        "desc_act": raw.get("desc_act"),
        "sym": raw.get("sym"),
        "checkpoint_format": raw.get("checkpoint_format", "gptq"),
        "quant_method": raw.get("quant_method", "gptq"),
    }


def inspect_model(
    model: str | Path, trust_remote_code: bool = False, allow_pickle: bool = False
) -> ModelInfo:
    """Every check that can be made without loading weights; each failure is one line."""
    path = Path(model)
    if not path.exists():
        raise BadInput(f"model {model} does not exist; fraudq reads local folders only, never a hub")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise BadInput(f"{model} is not a model folder (no config.json)")
    config = _read_json(path / "config.json")
    if not config.get("model_type"):
        raise BadInput(f"{model} is not a model folder (config.json has no model_type)")
    for name in ("config.json", "tokenizer_config.json"):
        custom = config if name == "config.json" else (
            _read_json(path / name) if (path / name).is_file() else {})
        if custom.get("auto_map") and not trust_remote_code:
            raise NeedsFlag(f"{model} asks to run custom code from the checkpoint (auto_map in {name})",
                            "trust_remote_code", "pass --trust-remote-code only if you trust its author",
                            "this command never runs checkpoint code")
    safetensors = safetensors_files(path)
    if safetensors:
        check_claimed_sizes(path, config, safetensors)
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not safetensors:
        if pickles and not allow_pickle:
            raise NeedsFlag(f"{model} has only pickle weights ({pickles[0].name}), which can run code when loaded",
                            "allow_pickle", "convert them to safetensors or pass --allow-pickle",
                            "convert them to safetensors")
        if not pickles:
            raise BadInput(f"{model} has no weight files (*.safetensors)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise BadInput(f"{model} has no tokenizer files (tokenizer.json); save the tokenizer beside the model")
    return ModelInfo(path=path, config=config, quant=quant_config_of(path, config), weight_files=safetensors or pickles)


SAFETENSORS_INDEX = "model.safetensors.index.json"
# A safetensors header is a few hundred KB even for 70B models; a larger one is refused before it is read.
MAX_HEADER_BYTES = 64 << 20


def _regular_file(file: Path, model: Path) -> Path:
    """Weights are read from regular files only: a link to a FIFO or a device would block or read forever."""
    try:
        mode = os.stat(file).st_mode
    except OSError as exc:
        raise BadInput(f"{model}: cannot read {file.name} ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        target = f" (a link to {os.path.realpath(file)})" if file.is_symlink() else ""
        raise BadInput(f"{model}: {file.name}{target} is not a regular file; weights are read only from regular files")
    return file


def safetensors_files(path: Path) -> list[Path]:
    """Exactly the weight files the loader opens: the index's shards when there is an index, else *.safetensors."""
    index = path / SAFETENSORS_INDEX
    if not index.is_file():
        return [_regular_file(f, path) for f in sorted(path.glob("*.safetensors"))]
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise BadInput(f"{index} has no weight_map; the checkpoint is damaged")
    shards = []
    for name in sorted(set(map(str, weight_map.values()))):
        if Path(name).name != name or name in ("", ".", ".."):
            raise BadInput(f"{index} names a shard outside the model folder ({name}); shards must sit beside it")
        if not (path / name).exists():
            raise BadInput(f"{path}: shard {name}, named in {SAFETENSORS_INDEX}, is missing")
        shards.append(_regular_file(path / name, path))
    return shards


def safetensors_header(file: Path) -> dict:
    """The JSON header of one safetensors file, checked against the bytes the file holds."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            raise BadInput(f"{file} is not a valid safetensors file (header length); the checkpoint is damaged")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            raise BadInput(f"{file} is not a valid safetensors file (header); the checkpoint is damaged") from None
    if not isinstance(header, dict):
        raise BadInput(f"{file} is not a valid safetensors file (header); the checkpoint is damaged")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise BadInput(f"{file}: tensor {name} lies past the end of the file; the checkpoint is truncated or damaged")
    return header


def check_claimed_sizes(path: Path, config: dict, files: list[Path]) -> None:
    """config.json's sizes must match what the weights hold, before anything is built from them."""
    layers: set[int] = set()
    embedding = None
    for file in files:
        for name, entry in safetensors_header(file).items():
            match = re.search(r"\.layers\.(\d+)\.", name)
            if match:
                layers.add(int(match.group(1)))
            if name.endswith("embed_tokens.weight") and isinstance(entry, dict):
                embedding = entry.get("shape")
    text = config.get("text_config", config)
    claims = {"num_hidden_layers": (text.get("num_hidden_layers"), len(layers) if layers else None)}
    if isinstance(embedding, list) and len(embedding) == 2:
        claims["vocab_size"] = (text.get("vocab_size"), embedding[0])
        claims["hidden_size"] = (text.get("hidden_size"), embedding[1])
    for key, (claimed, held) in claims.items():
        if held is not None and claimed is not None and claimed != held:
            raise BadInput(f"{path}/config.json claims {key} {claimed} but the weights hold {held}; "
                           "the checkpoint is damaged")


def load_tokenizer(info: ModelInfo, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(info.path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # noqa: BLE001 - the Rust tokenizer raises plain Exception on a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"cannot load the tokenizer of {info.path}: {first}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise BadInput(f"the tokenizer of {info.path} has no chat template; add one to tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(info: ModelInfo, device: str, backend: str = "auto", trust_remote_code: bool = False,
               dtype: str = "auto"):
    """Returns an eval-mode torch model placed wholly on `device`, computing in runtime.compute_dtype's choice.

    GPTQ checkpoints go through GPTQModel with an explicit kernel, never device_map="auto":
    that offload path raises "Found modules on cpu/disk" when memory is tight.
    """
    chosen_dtype = compute_dtype(device, info.quant is not None, dtype)
    if info.quant is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            str(info.path),
            dtype=chosen_dtype,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            use_safetensors=info.weight_files[0].suffix == ".safetensors",
        ).to(device)
        return model.eval()
    from fraudq.quant import gptqmodel_api

    chosen = kernel_for(info.quant, device, backend)
    model = gptqmodel_api.load_quantized(info.path, device, chosen, chosen_dtype, trust_remote_code)
    model.fraudq_kernel = chosen
    return model.eval()


KERNELS = ("torch", "triton", "marlin", "exllama_v2", "torch_int8")


def kernel_for(quant: dict, device: str, backend: str) -> str:
    """GPTQModel's automatic choice downloads CUTLASS on the GPU box, so fraudq always names one."""
    if backend == "auto":
        backend = "triton" if device.startswith("cuda") else "torch"
    name = backend.removeprefix("gptq_")
    if name not in KERNELS:
        raise BadInput(f"unknown backend {backend!r}; use one of auto, {', '.join(KERNELS)}")
    return "gptq_" + name


def fingerprint(info: ModelInfo) -> str:
    """sha256 over the files the weight loader opens (config, index, the shards it names) and the tokenizer's
    files (a new chat template changes every prompt): names the exact model an eval result belongs to; a file
    neither opens does not change it."""
    digest = hashlib.sha256()
    index = [info.path / SAFETENSORS_INDEX] if (info.path / SAFETENSORS_INDEX).is_file() else []
    prompt_files = [info.path / name for name in PROMPT_FILES if (info.path / name).is_file()]
    for file in [info.path / "config.json", *index, *info.weight_files, *prompt_files]:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def summary(info: ModelInfo, model, tokenizer, device: str) -> dict:
    config = info.config
    text = config.get("text_config", config)
    param_count = sum(p.numel() for p in model.parameters())
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()})
    return {
        "path": str(info.path),
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "parameters": param_count,
        "layers": text.get("num_hidden_layers"),
        "hidden_size": text.get("hidden_size"),
        "vocab_size": text.get("vocab_size"),
        "dtype": config.get("torch_dtype") or config.get("dtype") or "/".join(dtypes),
        "loaded_dtypes": dtypes,
        "device": device,
        "size_bytes": dir_size(info.path),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "quantization": info.quant,
        "kernel": getattr(model, "fraudq_kernel", None),
    }


def describe(cfg, model: str) -> dict:
    """What `fraudq load` prints: the checkpoint loaded for real, then summarised."""
    info = inspect_model(model, cfg.trust_remote_code, cfg.allow_pickle)
    device = resolve_device(cfg.device, "load")
    tokenizer = load_tokenizer(info, cfg.trust_remote_code)
    loaded = load_model(info, device, cfg.backend, cfg.trust_remote_code)
    return summary(info, loaded, tokenizer, device)
