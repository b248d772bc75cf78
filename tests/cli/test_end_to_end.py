"""The five subcommands in sequence on a real (tiny, trained) Qwen2 classifier, on CPU."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch

from conftest import CALIB_ROWS, TEST_ROWS, one_line_error, run_cli


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
    assert "fp16 (bf16, baseline)" in result.stdout and "int4 (bf16)" in result.stdout
    assert fp16["dtype"] == "bfloat16"  # the baseline computes in the quantized kernels' dtype by default
    table = read_json(quantized.work / "compare" / "compare.json")
    assert table["baseline"] == "fp16"
    int8 = next(m for m in table["models"] if m["name"] == "int8")
    flips = int8["vs_baseline"]["flips"]
    int8_preds = read_predictions(quantized.work / "eval" / "int8.predictions.jsonl")
    assert flips["total"] == sum(a["prediction"] != b["prediction"] for a, b in zip(predictions, int8_preds))
    assert flips["total"] <= TEST_ROWS * 0.05  # 8-bit barely moves a classifier
    assert "| model |" in (quantized.work / "compare" / "compare.md").read_text()
    assert "verdict:" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines() if "/" not in line) <= 120  # paths aside


def read_predictions(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_compare_numbers_agree_with_a_plain_recomputation(quantized):
    """Every figure of the table, recomputed row by row from the predictions files alone."""
    from test_curves import _plain_precision_at_recall

    run = run_cli("compare", "int8", "int4", "fp16", "--config", quantized.config)
    assert run.exit_code == 0, run.output
    table = read_json(quantized.work / "compare" / "compare.json")
    preds = {m: read_predictions(quantized.work / "eval" / f"{m}.predictions.jsonl") for m in ("fp16", "int8", "int4")}
    labels = [p["label"] for p in preds["fp16"]]
    base_hits = [p["prediction"] and p["label"] for p in preds["fp16"]]
    target_recall = sum(base_hits) / sum(labels)
    target_precision = sum(base_hits) / sum(p["prediction"] for p in preds["fp16"])
    assert table["targets"]["recall"] == pytest.approx(target_recall)
    fitted = {m["name"]: m for m in table["fitted"]["models"]}
    for row in table["models"]:
        rows = preds[row["name"]]
        scores = [p["score"] for p in rows]
        tp = sum(p["prediction"] and p["label"] for p in rows)
        assert row["precision"] == pytest.approx(tp / sum(p["prediction"] for p in rows))
        assert row["recall"] == pytest.approx(tp / sum(labels))
        pos = [s for s, y in zip(scores, labels) if y]
        neg = [s for s, y in zip(scores, labels) if not y]
        auc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
        assert row["auc"] == pytest.approx(auc)
        assert row["precision_at_recall"] == pytest.approx(_plain_precision_at_recall(labels, scores, target_recall))
        best = max(sum(y and s >= t for s, y in zip(scores, labels)) for t in set(scores)
                   if sum(y and s >= t for s, y in zip(scores, labels)) / sum(s >= t for s in scores)
                   >= target_precision - 1e-9)
        assert row["recall_at_precision"] == pytest.approx(best / sum(labels))
        assert row["brier"] == pytest.approx(sum((1 / (1 + math.exp(-s)) - y) ** 2 for s, y in zip(scores, labels))
                                             / len(labels))
        assert row["ties"]["tied_rows"] == sum(scores.count(s) > 1 for s in scores)
        # The fitted threshold restores the baseline's recall on the fitting rows (here the test rows).
        threshold = fitted[row["name"]]["threshold"]
        assert sum(y and s > threshold for s, y in zip(scores, labels)) / sum(labels) >= target_recall
        assert fitted[row["name"]]["on_rows"]["precision"] == pytest.approx(row["precision_at_recall"])
    for name in ("int8", "int4"):
        record = read_json(quantized.work / name / "fraudq_threshold.json")
        assert record["threshold"] == fitted[name]["threshold"] and record["target_recall"] == target_recall
        assert record["fitted_on"]["data_sha256"] == table["data_sha256"]
    assert not (quantized.model / "fraudq_threshold.json").exists()  # the user's model folder is left alone
    assert "fitted and are reported on the same rows" in run.stdout


def test_threshold_flag_is_a_plain_comparison_of_the_margins(quantized, tmp_path):
    """--threshold T predicts margin > T, a margin equal to T included as not fraud; 'fitted' reads compare's file."""
    cfg = ("--config", quantized.config, "--limit", "40")
    base = run_cli("eval", "--model", quantized.work / "int4", *cfg, "--out", tmp_path / "base.json")
    assert base.exit_code == 0, base.output
    margins = [p["score"] for p in read_predictions(tmp_path / "base.predictions.jsonl")]
    tied = sorted(margins)[len(margins) // 2]  # a stored margin: the rows on it must come out not fraud
    moved = run_cli("eval", "--model", quantized.work / "int4", *cfg, "--threshold", repr(tied),
                    "--out", tmp_path / "moved.json")
    assert moved.exit_code == 0, moved.output
    rows = read_predictions(tmp_path / "moved.predictions.jsonl")
    assert [p["score"] for p in rows] == margins
    assert [p["prediction"] for p in rows] == [m > tied for m in margins]
    result = read_json(tmp_path / "moved.json")
    assert result["threshold"] == tied and result["threshold_source"] == {"from": "flag"}
    assert f"fraud when margin > {tied:g} (flag)" in moved.stdout

    run = run_cli("compare", "int4", "fp16", "--config", quantized.config, "--limit", "40",
                  "--out", tmp_path / "cmp")
    assert run.exit_code == 0, run.output
    fitted = read_json(quantized.work / "int4" / "fraudq_threshold.json")
    again = run_cli("eval", "--model", quantized.work / "int4", *cfg, "--threshold", "fitted")
    assert again.exit_code == 0, again.output
    result = read_json(quantized.work / "eval" / "int4.fitted.json")
    assert result["threshold"] == fitted["threshold"] and result["threshold_source"]["from"] == "fitted"
    assert result["recall"] >= fitted["target_recall"]
    assert "fitted on these same rows" in again.stderr
    one_line_error(run_cli("eval", "--model", quantized.model, *cfg, "--threshold", "fitted"), "does not exist")
    one_line_error(run_cli("eval", "--model", quantized.model, *cfg, "--threshold", "high"), "number or 'fitted'")


def test_fit_data_holds_the_thresholds_out(quantized, tmp_path):
    fit = tmp_path / "fit.jsonl"
    fit.write_text("".join(quantized.train.read_text().splitlines(keepends=True)[:30]))
    out = ("--out", tmp_path / "cmp")
    run = run_cli("compare", "int4", "fp16", "--config", quantized.config, "--limit", "30", "--fit-data", fit, *out)
    assert run.exit_code == 0, run.output
    assert run.stdout.count("no current result") >= 2  # the fitting rows are evaluated through the same path
    assert (quantized.work / "eval" / "int4.fit.json").is_file()
    fitted = read_json(tmp_path / "cmp" / "compare.json")["fitted"]
    assert not fitted["same_rows"] and fitted["fit_rows"] == 30
    assert "same rows" not in run.stdout
    record = read_json(quantized.work / "int4" / "fraudq_threshold.json")
    assert record["fitted_on"]["data_sha256"] == read_json(quantized.work / "eval" / "int4.fit.json")["data_sha256"]
    fit_preds = read_predictions(quantized.work / "eval" / "int4.fit.predictions.jsonl")
    recall = sum(p["label"] and p["score"] > record["threshold"] for p in fit_preds) / sum(p["label"] for p in fit_preds)
    assert recall >= fitted["target_recall"]


def test_compare_finds_the_test_data_the_results_record(quantized, tmp_path):
    work = read_json(quantized.work / "eval" / "fp16.json")
    assert run_cli("compare", "int4", "fp16", "--config", quantized.config).exit_code == 0
    env = {"FRAUDQ_TEST_DATA": ""}
    found = run_cli("compare", "int4", "fp16", "--config", quantized.config, "--out", tmp_path / "c", env=env)
    assert found.exit_code == 0, found.output
    assert found.stdout.count("which every results file records") == 1 and "no current result" not in found.stdout
    assert work["data"] in found.stdout or "test.jsonl" in found.stdout


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
                         "--batch-size", size, "--out", out, "--dtype", "float32")
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
    model = load_model(info, "cpu", dtype="float32")  # the 1e-4 bound is fp32's; bf16 rounds paths apart
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
                         "--batch-size", "5", flag, "--out", out, "--dtype", "float32")
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
