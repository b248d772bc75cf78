"""Asymmetric checkpoints read back as they were written: every loader fraudq can use on CPU gives the logits of
the weights the checkpoint's own bytes hold.

The oracle unpacks qweight, qzeros and scales by hand (GPTQ's v1 layout: zero points stored minus one) into a
float copy of the original model. A loader that read the zero points wrongly (a wrapped or carried nibble, a
shifted group) would part from it by far more than rounding.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def unpack(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 words holding 32 // bits values each, lowest bits first, packed along `dim`."""
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int64)
    values = (words.to(torch.int64).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [..., per_word]
    if dim == 0:  # qweight [in / per_word, out]: value i of word j is input row j * per_word + i
        return values.permute(0, 2, 1).reshape(words.shape[0] * per_word, words.shape[1])
    return values.reshape(words.shape[0], words.shape[1] * per_word)  # qzeros [groups, out / per_word]


def zero_points(packed: torch.Tensor, bits: int) -> torch.Tensor:
    return (unpack(packed, bits, 1) + 1) & ((1 << bits) - 1)  # v1 stores zero - 1


def dequantized(tensors: dict, prefix: str, bits: int) -> torch.Tensor:
    """The [out, in] weight that module `prefix`'s packed tensors stand for."""
    q = unpack(tensors[prefix + ".qweight"], bits, 0)
    zeros = zero_points(tensors[prefix + ".qzeros"], bits)
    scales = tensors[prefix + ".scales"].float()
    groups = tensors[prefix + ".g_idx"].long()
    return ((q - zeros[groups]).float() * scales[groups]).T.contiguous()


def oracle_model(original, checkpoint, bits: int):
    """The original model's architecture holding the checkpoint's own weights, in fp32: the packed modules
    dequantized, the rest (embeddings, norms, biases: GPTQModel keeps them in its load dtype) as saved."""
    from transformers import AutoModelForCausalLM

    tensors = load_file(str(checkpoint / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(str(original), dtype=torch.float32)
    packed = {k.rsplit(".", 1)[0] for k in tensors if k.endswith(".qweight")}
    assert len(packed) == 14  # 2 layers x q, k, v, o, gate, up, down
    state = {k: v.float() for k, v in tensors.items() if k.rsplit(".", 1)[1] not in ("qweight", "qzeros", "scales", "g_idx")}
    state.update({name + ".weight": dequantized(tensors, name, bits) for name in packed})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # lm_head: tied
    return model.eval(), tensors


@pytest.mark.parametrize("bits,group_size", [(4, 32), (8, -1)])
def test_asymmetric_checkpoint_reloads_to_its_own_weights_in_every_cpu_loader(quantized, tmp_path, bits, group_size):
    from transformers import AutoModelForCausalLM

    from fraudq.quant import gptqmodel_api

    out = tmp_path / f"int{bits}-asym"
    result = run_cli("quantize", "--bits", bits, "--no-sym", "--group-size", group_size, "--config", quantized.config,
                     "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["sym"] is False and config["bits"] == bits
    oracle, tensors = oracle_model(quantized.model, out, bits)
    zeros = torch.cat([zero_points(v, bits).flatten() for k, v in tensors.items() if k.endswith(".qzeros")])
    assert zeros.float().std() > 0  # really asymmetric: zero points spread, not all at the symmetric midpoint

    torch.manual_seed(0)
    ids = torch.randint(3, oracle.config.vocab_size, (2, 48))
    with torch.no_grad():
        expected = oracle(input_ids=ids).logits
        # GPTQModel's torch kernel computes in fp16 (three decimal digits: fp16 rounding alone moves these logits
        # by about 0.2% of their largest). Plain transformers picks GPTQModel's aten int4 kernel on CPU, which
        # carries scales and zero points in bf16: about 1%, for symmetric checkpoints as much as for these.
        library = gptqmodel_api.load_quantized(out, "cpu", "gptq_torch", torch.float16, False).eval()
        plain = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float16, device_map="cpu").eval()
        for name, model, tolerance in (("GPTQModel torch kernel", library, 3e-3), ("plain transformers", plain, 2e-2)):
            logits = model(input_ids=ids).logits.float()
            assert (logits - expected).abs().max() < tolerance * expected.abs().max(), name
    # The oracle is sharp: one zero point off by one in one group moves the logits past the tighter tolerance.
    name = next(n for n, m in oracle.named_modules() if isinstance(m, torch.nn.Linear) and n + ".qzeros" in tensors)
    shifted = dict(tensors)
    shifted[name + ".qzeros"] = tensors[name + ".qzeros"] ^ 1  # the lowest bit of the first zero point
    oracle.get_submodule(name).weight.data = dequantized(shifted, name, bits)
    with torch.no_grad():
        assert (oracle(input_ids=ids).logits - expected).abs().max() > 3e-3 * expected.abs().max()
