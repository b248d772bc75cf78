"""The five subcommands in sequence on a real (tiny, trained) Qwen2 classifier, on CPU."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from conftest import CALIB_ROWS, TEST_ROWS, run_cli


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_calib_writes_truncated_token_ids_and_stats(quantized):
    calib = quantized.work / "calib.jsonl"
    meta = read_json(quantized.work / "calib.jsonl.meta.json")
    rows = [json.loads(line) for line in calib.read_text().splitlines()]
    assert len(rows) == CALIB_ROWS == meta["stats"]["rows_kept"]
    assert meta["stats"]["rows_read"] == 600
    assert meta["stats"]["dropped"]["not_sampled"] == 600 - CALIB_ROWS
    assert max(len(r["input_ids"]) for r in rows) <= 1024
    # Truncation really cuts tokens, not rows.
    short = quantized.root / "short.jsonl"
    result = run_cli("calib", "--config", quantized.config, "--max-len", "32", "--out", short)
    assert result.exit_code == 0, result.output
    lengths = [len(json.loads(line)["input_ids"]) for line in short.read_text().splitlines()]
    assert max(lengths) == 32
    assert read_json(quantized.root / "short.jsonl.meta.json")["stats"]["truncated"] == CALIB_ROWS


def test_quantize_writes_checkpoint_and_report(quantized):
    for bits in (8, 4):
        folder = quantized.work / f"int{bits}"
        report = read_json(folder / "quant_report.json")
        assert report["bits"] == bits
        assert report["config"]["damp"] == 0.01 and report["config"]["group_size"] == 128
        assert report["config"]["desc_act"] is False and report["config"]["sym"] is True
        assert set(report["timings"]) >= {"load_s", "quantize_s", "save_s"}
        assert report["size_bytes"]["after"] < report["size_bytes"]["before"]
        # 2 layers x 7 linear modules, each with a finite GPTQ loss
        assert len(report["modules"]) == 14
        assert all(row["loss"] is not None and row["loss"] >= 0 for row in report["modules"])
        assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
        assert not list(quantized.work.glob(".fraudq-tmp-*"))
    assert read_json(quantized.work / "int4" / "config.json")["quantization_config"]["bits"] == 4


def test_load_summarises_fp16_and_gptq(quantized):
    result = run_cli("load", quantized.work / "int4", "--json", "--config", quantized.config)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["quantization"]["bits"] == 4 and summary["quantization"]["group_size"] == 128
    assert summary["layers"] == 2 and summary["hidden_size"] == 128 and summary["chat_template"] is True
    plain = run_cli("load", quantized.model, "--config", quantized.config)
    assert plain.exit_code == 0 and "Qwen2ForCausalLM" in plain.stdout


def test_auto_gptq_v1_layout_loads(quantized, tmp_path):
    """auto-gptq checkpoints carry quantize_config.json and no quantization_config in config.json."""
    legacy = tmp_path / "autogptq"
    shutil.copytree(quantized.work / "int4", legacy)
    config = read_json(legacy / "config.json")
    config.pop("quantization_config")
    (legacy / "config.json").write_text(json.dumps(config))
    result = run_cli("load", legacy, "--json", "--config", quantized.config)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["quantization"]["bits"] == 4


def test_reload_with_plain_transformers_is_close_to_original(quantized, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(quantized.model)
    batch = tokenizer(["甲: 你好，我是银行客服，你的账户有风险。\n乙: 真的吗？"], return_tensors="pt")
    original = AutoModelForCausalLM.from_pretrained(quantized.model, dtype=torch.float32)
    with caplog.at_level(logging.WARNING):
        int8 = AutoModelForCausalLM.from_pretrained(quantized.work / "int8", device_map="cpu")
    assert not [r for r in caplog.records if "not used" in r.getMessage() or "bias" in r.getMessage()]
    with torch.no_grad():
        ref = original(**batch).logits.float().flatten()
        got = int8(**batch).logits.float().flatten()
    assert torch.nn.functional.cosine_similarity(ref, got, dim=0) > 0.99


def test_eval_score_and_generate_and_compare(quantized):
    cfg = ("--config", quantized.config)
    for name in ("int8", "int4"):
        result = run_cli("eval", "--model", quantized.work / name, *cfg)
        assert result.exit_code == 0, result.output
    fp = run_cli("eval", "--model", quantized.model, *cfg)
    assert fp.exit_code == 0, fp.output
    fp16 = read_json(quantized.work / "eval" / "fp16.json")
    assert fp16["rows"] == TEST_ROWS
    c = fp16["confusion"]
    assert c["tn"] + c["fp"] + c["fn"] + c["tp"] == TEST_ROWS
    assert fp16["accuracy"] > 0.75 and fp16["auc"] > 0.8, fp16  # the tiny model really learned the task
    # The rate covers the timed batches only; the one-row warm-up before them is reported on its own.
    assert fp16["warmup_s"] > 0 and fp16["samples_per_s"] == pytest.approx(TEST_ROWS / fp16["wall_s"], rel=0.01)
    predictions = [json.loads(line) for line in (quantized.work / "eval" / "fp16.predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == TEST_ROWS and set(predictions[0]) >= {"id", "label", "prediction", "score"}
    assert all(p["prediction"] == (p["score"] > 0) for p in predictions)

    gen = run_cli("eval", "--model", quantized.model, "--mode", "generate", *cfg)
    assert gen.exit_code == 0, gen.output
    generated_file = quantized.work / "eval" / "fp16.generate.predictions.jsonl"
    generated = [json.loads(line) for line in generated_file.read_text().splitlines()]
    agree = sum(g["prediction"] == p["prediction"] for g, p in zip(generated, predictions)) / TEST_ROWS
    assert agree >= 0.9, agree

    result = run_cli("compare", "int8", "int4", "fp16", *cfg)
    assert result.exit_code == 0, result.output
    assert "fp16 (baseline)" in result.stdout and "int4" in result.stdout
    table = read_json(quantized.work / "compare" / "compare.json")
    assert table["baseline"] == "fp16"
    int8 = next(m for m in table["models"] if m["name"] == "int8")
    flips = int8["vs_baseline"]["flips"]
    int8_preds = [json.loads(line) for line in (quantized.work / "eval" / "int8.predictions.jsonl").read_text().splitlines()]
    assert flips["total"] == sum(a["prediction"] != b["prediction"] for a, b in zip(predictions, int8_preds))
    assert flips["total"] <= TEST_ROWS * 0.05  # 8-bit barely moves a classifier
    assert "| model |" in (quantized.work / "compare" / "compare.md").read_text()


def test_compare_evaluates_only_what_is_stale(quantized):
    first = run_cli("compare", "int4", "fp16", "--config", quantized.config)
    assert first.exit_code == 0, first.output
    second = run_cli("compare", "int4", "fp16", "--config", quantized.config)
    assert second.exit_code == 0, second.output
    assert "no current result" not in second.stdout
    # A different prompt config makes the stored results stale: compare re-evaluates rather than mixing.
    third = run_cli("compare", "int4", "fp16", "--config", quantized.config, "--limit", "20")
    assert third.exit_code == 0, third.output
    assert third.stdout.count("no current result") == 2


@pytest.mark.parametrize("batch_size", ["1", "7"])
def test_scores_do_not_depend_on_batching(project, tmp_path, batch_size):
    """Left padding with explicit positions must give every row the score it gets alone."""
    outs = {}
    for size in ("auto", batch_size):
        out = tmp_path / f"{size}.json"
        result = run_cli("eval", "--model", project.model, "--config", project.config, "--limit", "24",
                         "--batch-size", size, "--out", out)
        assert result.exit_code == 0, result.output
        outs[size] = [json.loads(line)["score"] for line in (tmp_path / f"{size}.predictions.jsonl").read_text().splitlines()]
    assert outs["auto"] == pytest.approx(outs[batch_size], abs=1e-4)


@pytest.mark.parametrize("words", [(" true}", " false}"), (" true", " false")])
@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_candidates_score_as_summed_log_probs(project, shared, pack, words):
    """The batched score equals a plain unpadded sum of log-probs, for words of several tokens and of one (whose
    score is taken as a difference of logits), also when the prompts' common prefix runs once through a KV cache,
    and with the rows packed into one sequence."""
    from fraudq.eval import packed
    from fraudq.eval.scoring import Scorer, SharedPrefix, shared_prefix_tokens
    from fraudq.checkpoint import inspect_model, load_model, load_tokenizer

    info = inspect_model(project.model)
    tokenizer = load_tokenizer(info)
    model = load_model(info, "cpu")
    head = "下面是一段对话文本, 请分析对话内容是否有诈骗风险，以json格式输出你的判断结果。\n"
    texts = [head + "甲: 你好", head + "乙: 请转账到安全账户，马上", head + "丙: 好"]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    candidates = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
    assert max(map(len, candidates)) == (2 if words[0].endswith("}") else 1)
    prefix = None
    if shared:
        tokens = shared_prefix_tokens(prompts)
        assert len(tokens) >= 16
        prefix = SharedPrefix(model, tokens, "cpu")
    packing = packed.enable(model) if pack else None
    assert packing == ("per-row" if pack else None)
    scorer = Scorer(model, tokenizer, "cpu", "score", candidates, 16, packing, prefix)
    got = scorer(prompts).tolist()
    assert model.config._attn_implementation == "sdpa"  # packed attention only inside packed forwards
    for prompt, value in zip(prompts, got):
        totals = []
        for cand in candidates:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + cand])).logits[0].float().log_softmax(-1)
            totals.append(sum(logits[len(prompt) - 1 + j, tok].item() for j, tok in enumerate(cand)))
        assert value == pytest.approx(totals[0] - totals[1], abs=1e-4)


def test_shared_prefix_gives_the_scores_of_whole_prompts(project, tmp_path):
    """Eval with the prompts' common prefix run once scores every row as the plain path does."""
    outs = {}
    for flag in ("--share-prefix", "--no-share-prefix"):
        out = tmp_path / f"{flag}.json"
        result = run_cli("eval", "--model", project.model, "--config", project.config, "--limit", "24",
                         "--batch-size", "5", flag, "--out", out)
        assert result.exit_code == 0, result.output
        outs[flag] = ([json.loads(line) for line in (tmp_path / f"{flag}.predictions.jsonl").read_text().splitlines()],
                      json.loads(out.read_text())["batching"]["shared_prefix_tokens"])
    shared, plain = outs["--share-prefix"], outs["--no-share-prefix"]
    assert shared[1] >= 16 and plain[1] == 0
    assert [p["score"] for p in shared[0]] == pytest.approx([p["score"] for p in plain[0]], abs=1e-4)
    assert [p["prediction"] for p in shared[0]] == [p["prediction"] for p in plain[0]]


def test_quantize_leaves_nothing_in_the_working_folder(quantized, tmp_path, monkeypatch):
    """GPTQModel writes logs/ into the current folder unless fraudq redirects it."""
    monkeypatch.chdir(tmp_path)
    result = run_cli("quantize", "--bits", "4", "--config", quantized.config, "--out", tmp_path / "q4")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q4"]
