"""fraudq's GPTQ engine held to GPTQModel's own solve and loop, on CPU with the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import one_line_error, run_cli
from fraudq.quant.engine import _Spans, _subset_hessians, calibration_batches, capture_layer_inputs, gptq_solve


def _quantize_config(bits: int, group_size: int, sym: bool = True):
    from gptqmodel import QuantizeConfig

    return QuantizeConfig(bits=bits, group_size=group_size, damp_percent=0.01, desc_act=False, sym=sym,
                          act_group_aware=False, offload_to_disk=False, device="cpu")


@pytest.mark.parametrize("bits,group_size,columns", [
    (4, 128, 384),  # group = block
    (8, 128, 320),  # a last block narrower than 128
    (4, 32, 256),  # several groups start inside one block
    (4, 256, 512),  # a group spans two blocks
    (8, -1, 192),  # one group per row
])
def test_solve_matches_gptqmodel_bit_for_bit(bits, group_size, columns):
    from gptqmodel.quantization.gptq import GPTQ

    torch.manual_seed(0)
    rows = 40
    weight = torch.randn(rows, columns) * 0.05
    inputs = torch.randn(900, columns) * torch.linspace(0.1, 3.0, columns)
    inputs[:, 7] = 0  # a dead column: GPTQ zeroes its weights
    qcfg = _quantize_config(bits, group_size)
    linear = torch.nn.Linear(columns, rows, bias=False)
    linear.weight.data = weight.clone()
    task = GPTQ(linear, qcfg)
    task.quantizer.configure(perchannel=True)
    task.add_batch(inputs, None)
    library = task.quantize()
    # The library's Hessian, built with the same operations in the same order.
    H = torch.zeros(columns, columns)
    H.add_(torch.matmul(inputs.T, inputs))
    H.mul_(2.0 / inputs.shape[0])
    ours = gptq_solve(weight, H, _quantize_config(bits, group_size))
    for name, mine, theirs in zip(("Q", "scale", "zero", "g_idx"), ours[:4], library[:4]):
        assert torch.equal(mine, theirs), name
    assert float(ours[4].sum()) / inputs.shape[0] == pytest.approx(library[5], rel=1e-5)
    assert ours[5] == library[6]  # damp
    assert torch.count_nonzero(ours[0][:, 7]) == 0


@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_stacked_solve_matches_gptqmodel_per_module_in_every_setting(bits, sym, group_size):
    """Every setting the engine accepts: one stacked solve of a q/k/v-like trio (k and v narrower, as in
    grouped-query attention) equals the library's solve of each module, zero points included. 192 columns
    are a full 128-column block and a narrower one, as in a 576-wide layer; an outlier input channel and
    one-signed groups push asymmetric zero points to both ends of their range."""
    from gptqmodel.quantization.gptq import GPTQ

    torch.manual_seed(bits * 1000 + group_size + sym)
    columns, heights = 192, (16, 8, 8)
    inputs = torch.randn(256, columns) * torch.linspace(0.2, 2.0, columns)
    inputs[:, 3] *= 30  # an outlier channel
    inputs[:, 7] = 0  # a dead column
    weights = [torch.randn(h, columns) * 0.02 for h in heights]
    for w in weights:
        w[0] = w[0].abs()  # every group of this row one-signed: zero point 0 when asymmetric
        w[1] = -w[1].abs()  # and maxq
        w[2, 40] = 0.5  # an outlier weight
    H = torch.zeros(columns, columns)
    H.add_(torch.matmul(inputs.T, inputs))
    H.mul_(2.0 / inputs.shape[0])
    ours = gptq_solve(torch.cat(weights).half(), H, _quantize_config(bits, group_size, sym))
    library = []
    for w in weights:
        linear = torch.nn.Linear(columns, w.shape[0], bias=False)
        linear.weight.data = w.half()
        task = GPTQ(linear, _quantize_config(bits, group_size, sym))
        task.quantizer.configure(perchannel=True)
        task.add_batch(inputs, None)
        library.append(task.quantize())
    for index, name in enumerate(("Q", "scale", "zero")):
        assert torch.equal(ours[index], torch.cat([result[index] for result in library])), name
    assert torch.equal(ours[3], library[0][3])  # g_idx
    assert ours[5] == library[0][6]  # damp
    offset = 0
    for w, result in zip(weights, library):
        loss = float(ours[4][offset:offset + w.shape[0]].sum()) / inputs.shape[0]
        assert loss == pytest.approx(result[5], rel=1e-5)
        offset += w.shape[0]
    if not sym:
        maxq = 2 ** bits - 1
        assert (ours[2] == 0).any() and (ours[2] == maxq).any()  # both ends of the zero-point range exercised


@pytest.fixture(scope="module")
def long_calib(quantized, tmp_path_factory):
    """16 calibration rows of three dialogues each (~450 tokens)."""
    from fraudq.demo.synth import generate_dialogues, write_jsonl

    root = tmp_path_factory.mktemp("long-calib")
    dialogues = generate_dialogues(48, seed=5)
    rows = [{**first, "input": "\n".join(d["input"] for d in (first, second, third))}
            for first, second, third in zip(dialogues[0::3], dialogues[1::3], dialogues[2::3])]
    write_jsonl(root / "long.jsonl", rows)
    calib = root / "calib.jsonl"
    result = run_cli("calib", "--config", quantized.config, "--data", root / "long.jsonl", "--n", "16", "--out", calib)
    assert result.exit_code == 0, result.output
    assert json.loads(calib.with_name("calib.jsonl.meta.json").read_text())["stats"]["tokens"]["mean"] > 300
    return calib


def _engine_settings() -> list:
    """Every setting the engine accepts: bits x symmetry x group size, with true-sequential off for groups 64 and
    -1 and on for 32 and 128, so each bits-and-symmetry pair is held both ways."""
    cases = []
    for bits in (2, 3, 4, 8):
        for sym in (True, False):
            for group in (32, 64, 128, -1):
                sequential = group in (32, 128)
                flags = ["--sym" if sym else "--no-sym", "--group-size", str(group),
                         "--true-sequential" if sequential else "--no-true-sequential"]
                name = f"int{bits}-{'sym' if sym else 'asym'}-g{group}-{'seq' if sequential else 'one-solve'}"
                cases.append(pytest.param(bits, flags, id=name))
    return cases


@pytest.mark.parametrize("bits,settings", _engine_settings())
def test_engine_writes_the_library_checkpoint_bit_for_bit_at_one_row_per_batch(quantized, long_calib, tmp_path, bits,
                                                                               settings):
    """Without padding the forwards are the library's, so every saved tensor must be equal. Rows of three
    dialogues each (~450 tokens): long enough that the CPU BLAS blocks X^T X, where rounding orders part.
    Asymmetric zero points, 2- and 3-bit packing and one solve per layer (true-sequential off) are held too."""
    outs = {}
    for engine, flags in (("gptqmodel", ["--batch-size", "1"]), ("fraudq", ["--batch-tokens", "1"])):
        outs[engine] = tmp_path / engine
        result = run_cli("quantize", "--bits", str(bits), *settings, "--config", quantized.config, "--calib", long_calib,
                         "--engine", engine, *flags, "--out", outs[engine])
        assert result.exit_code == 0, result.output
    ours, theirs = (load_file(outs[e] / "model.safetensors") for e in ("fraudq", "gptqmodel"))
    assert set(ours) == set(theirs) and any(k.endswith(".qweight") for k in ours)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    configs = [json.loads((outs[e] / "config.json").read_text())["quantization_config"] for e in outs]
    assert configs[0] == configs[1]
    reports = {e: json.loads((outs[e] / "quant_report.json").read_text()) for e in outs}
    assert reports["fraudq"]["engine"] == "fraudq" and reports["gptqmodel"]["engine"] == "gptqmodel"
    losses = {e: {(m["layer"], m["module"]): m["loss"] for m in r["modules"]} for e, r in reports.items()}
    assert losses["fraudq"].keys() == losses["gptqmodel"].keys() and len(losses["fraudq"]) == 14
    for key, loss in losses["gptqmodel"].items():  # the library logs its loss rounded to 10 decimals
        assert losses["fraudq"][key] == pytest.approx(loss, rel=1e-3, abs=1e-10), key


def test_default_engine_report_has_stage_clock(quantized):
    report = json.loads((quantized.work / "int4" / "quant_report.json").read_text())
    assert report["engine"] == "fraudq"
    assert set(report["stages"]) == {"capture_s", "forward_s", "hessian_s", "solve_s", "pack_s"}
    assert all(v >= 0 for v in report["stages"].values())
    assert sum(report["stages"].values()) <= report["timings"]["quantize_s"] + 0.5
    assert len(report["modules"]) == 14 and all(m["loss"] > 0 for m in report["modules"])


def test_batches_sort_by_length_respect_the_budget_and_keep_only_real_tokens():
    lengths = [5, 9, 3, 9, 1, 30]
    token_ids = [list(range(1, n + 1)) for n in lengths]
    batches = calibration_batches(token_ids, batch_tokens=20, pad_id=0)
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths, reverse=True) and widths[0] == 30  # a row over the budget goes alone
    assert all(b["input_ids"].numel() <= 20 for b in batches[1:])
    assert sum(int(b["keep"].numel()) for b in batches) == sum(lengths)
    for b in batches:
        assert torch.all(b["input_ids"].flatten()[b["keep"]] != 0)  # pads are id 0 here, tokens never are


def test_padding_stays_out_of_the_hessian(project):
    """Hessians from padded batches, in one product or in 3-token products, equal those from one row at a time
    (fp32, CPU)."""
    from transformers import AutoModelForCausalLM

    from fraudq.checkpoint import inspect_model, load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(str(project.model), dtype=torch.float32).eval()
    tokenizer = load_tokenizer(inspect_model(project.model))
    token_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in
                 ("短对话", "一段稍长一些的对话，用来制造填充", "第三段对话的内容长度又不一样，再长一点点才行")]
    layer = model.model.layers[0]

    hessians = {}
    for budget, chunk in ((1, 0), (10_000, 0), (10_000, 3)):
        batches = calibration_batches(token_ids, budget, tokenizer.pad_token_id)
        states = capture_layer_inputs(model, batches, torch.device("cpu"))
        with torch.no_grad():
            hessians[budget, chunk] = _subset_hessians(
                layer, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"], states,
                [b["keep"] for b in batches], False, chunk, _Spans(torch.device("cpu")))
    assert len(calibration_batches(token_ids, 10_000, 0)) == 1  # the padded case really pads
    shared = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    for variant in ((10_000, 0), (10_000, 3)):
        assert set(hessians[1, 0]) == set(hessians[variant]) == {shared, ("mlp.down_proj",)}
        for key, (H, count) in hessians[1, 0].items():
            padded, padded_count = hessians[variant][key]
            assert count == padded_count == sum(map(len, token_ids))
            torch.testing.assert_close(padded, H, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flags,needle", [
    (["--engine", "auto-gptq"], "--engine must be one of"),
    (["--desc-act"], "need --engine gptqmodel"),
    (["--static-groups"], "need --engine gptqmodel"),
    (["--batch-tokens", "0"], "--batch-tokens must be at least 1"),
    ({"FRAUDQ_HESSIAN_CHUNK_TOKENS": "-1"}, "hessian_chunk_tokens must be 0"),
])
def test_engine_settings_are_checked(quantized, tmp_path, flags, needle):
    env = flags if isinstance(flags, dict) else None
    result = run_cli("quantize", "--bits", "4", "--config", quantized.config, "--out", tmp_path / "q",
                     *([] if env else flags), env=env)
    one_line_error(result, needle)
    assert not (tmp_path / "q").exists()
