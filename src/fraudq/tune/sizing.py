"""Average bits per weight: measured on a checkpoint's safetensors headers, or estimated before quantizing.

    avg bits = (sum over quantized modules of  qweight + qzeros bits (as packed, b bits a value)
                                             + 16 x scales (fp16, one per group and output channel)
                + 16 x every other parameter (embeddings, norms, biases, modules left unquantized))
               / (number of parameters of the model)

A module of I inputs, O outputs, b bits and group g (g = -1: one group of I) costs I*O*b + (I/g)*O*(16 + b)
bits: 4-bit group 128 is 4 + 20/128 = 4.16 bits a weight. g_idx (one int32 per input column, in every GPTQ
checkpoint whatever the recipe) is left out. Unquantized parameters count 16 bits whatever their stored dtype,
so the original model is 16.0. The estimate applies the same formula to the original model's shapes, taking
the 7 linear modules of each Llama/Qwen2 block as the ones GPTQ quantizes; tune checks it against the
measurement (tune.json records both).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from fraudq.checkpoint import safetensors_files, safetensors_header

LINEAR = re.compile(r"\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")
PACKED = (".qweight", ".qzeros", ".scales", ".g_idx")
FORMULA = ("(qweight and qzeros bits of the quantized modules, as packed, + 16 x their fp16 scales + 16 x every "
           "other parameter) / parameters; g_idx left out; unquantized parameters count 16 bits")


def _shapes(folder: Path) -> dict[str, list[int]]:
    shapes = {}
    for file in safetensors_files(Path(folder)):
        for name, entry in safetensors_header(file).items():
            if name != "__metadata__":
                shapes[name] = list(entry["shape"])
    return shapes


def _summary(bits: float, params: int, quant_bits: float, quant_params: int) -> dict:
    return {"avg_bits": round(bits / params, 4), "size_bytes": int(math.ceil(bits / 8)), "params": params,
            "quantized_params": quant_params,
            "quantized_bits": round(quant_bits / quant_params, 4) if quant_params else None}


def measure(checkpoint: Path) -> dict:
    """The formula on what the checkpoint holds; a quantized module's input width is its g_idx's length."""
    shapes = _shapes(checkpoint)
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    bits = params = quant_bits = quant_params = 0
    for name, count in numel.items():
        if name.endswith(".qweight"):
            prefix = name.removesuffix(".qweight")
            weights = shapes[prefix + ".g_idx"][0] * shapes[name][1]
            module_bits = 32 * (count + numel[prefix + ".qzeros"]) + 16 * numel[prefix + ".scales"]
            bits, params = bits + module_bits, params + weights
            quant_bits, quant_params = quant_bits + module_bits, quant_params + weights
        elif not name.endswith(PACKED):
            bits, params = bits + 16 * count, params + count
    return _summary(bits, params, quant_bits, quant_params)


def module_bits(inputs: int, outputs: int, bits: int, group_size: int) -> int:
    groups = 1 if group_size == -1 else inputs // group_size
    packed_rows = math.ceil(inputs * bits / 32) * 32 * outputs
    zeros = groups * math.ceil(outputs * bits / 32) * 32
    return packed_rows + zeros + 16 * groups * outputs


def estimate(model: Path, bits: int, group_size: int, layers_at_8: int = 0) -> dict:
    """The formula on the original model's shapes; `layers_at_8` blocks at 8 bits (blocks are alike, so which
    ones does not change the size)."""
    total = params = quant_bits = quant_params = 0
    for name, shape in _shapes(model).items():
        count = math.prod(shape)
        match = LINEAR.search(name)
        if match and len(shape) == 2:
            width = 8 if int(match.group(1)) < layers_at_8 else bits
            cost = module_bits(shape[1], shape[0], width, group_size)
            total, quant_bits, quant_params = total + cost, quant_bits + cost, quant_params + count
        else:
            total += 16 * count
        params += count
    return _summary(total, params, quant_bits, quant_params)
