"""vLLM as an eval runtime: the same rows through fraudq's own runtime and through vLLM agree row by row.

The tests that start vLLM skip when it is not installed (`pip install 'fraudq[vllm]'`); .ci/vllm installs it
and sets FRAUDQ_REQUIRE_VLLM=1 so that a broken install fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import run_cli, write_config

from fraudq import prompts
from fraudq.config import build_config
from fraudq.data import read_jsonl
from fraudq.errors import BadInput
from fraudq.eval.vllm_runtime import check_servable, generate_with_vllm, score_with_vllm
from fraudq.eval.scoring import parse_answer
from fraudq.checkpoint import inspect_model, load_tokenizer

# Margins are differences of bf16 logits on both sides. The answer words' logits of the tiny int4 model stay
# within |10|, where bf16 holds multiples of 1/16; the two runtimes' GPTQ kernels (GPTQModel's torch kernel,
# vLLM's CPUWNA16) sum in different orders, so each logit may round one step apart: 2 steps = 0.125. Measured
# on the 160 test rows: 133 margins identical, the rest 1/32 or 1/16 apart (max 0.0625).
ONE_TOKEN_TOLERANCE = 0.125
# " True" / " False" are 4 tokens each for the tiny tokenizer: 8 log-probabilities, each a bf16 logit less a
# log-sum-exp, summed. Measured max 0.148 on the 160 rows; 0.25 leaves room for other roundings.
MULTI_TOKEN_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def vllm():
    if os.environ.get("FRAUDQ_REQUIRE_VLLM"):
        import vllm

        return vllm
    return pytest.importorskip("vllm")


def _prompts(project, cfg, limit: int = 0) -> list[str]:
    """The eval prompts exactly as fraudq.eval.evaluate builds them (without the answer prefix)."""
    tokenizer = load_tokenizer(inspect_model(project.work / "int4"))
    rows = read_jsonl(str(project.test), need_label=True).rows
    rows = rows[:limit] if limit else rows
    return [prompts.eval_prompt(tokenizer, r.instruction if r.instruction is not None else cfg.instruction, r.input)
            for r in rows]


def _hf_eval(project, tmp_path, name: str, *args: str, **config) -> tuple[object, list[dict]]:
    """fraudq's default runtime on the int4 checkpoint, through the CLI; returns the config and the predictions."""
    config_file = write_config(tmp_path / f"{name}.toml", model=str(project.model), work_dir=str(project.work),
                               test_data=str(project.test), device="cpu", **config)
    out = tmp_path / f"{name}.json"
    result = run_cli("eval", "--model", project.work / "int4", "--out", out, *args, "--config", config_file)
    assert result.exit_code == 0, result.output
    predictions = [json.loads(line) for line in out.with_name(f"{name}.predictions.jsonl").read_text().splitlines()]
    return build_config(config_file), predictions


def test_missing_vllm_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    with pytest.raises(BadInput) as caught:
        score_with_vllm(tmp_path, ["prompt"])
    message = str(caught.value)
    assert "\n" not in message and "pip install 'fraudq[vllm]'" in message, message


@pytest.mark.parametrize(("quant", "needle"), [
    ({"bits": 8, "group_size": 128, "desc_act": False, "sym": True}, "8-bit"),
    ({"bits": 4, "group_size": 128, "desc_act": False, "sym": False}, "asymmetric"),
    ({"bits": 4, "group_size": 128, "desc_act": True, "sym": True}, "desc_act"),
    ({"bits": 4, "group_size": 16, "desc_act": False, "sym": True}, "group size 16"),
])
def test_cpu_refuses_what_its_kernels_cannot_serve(quant, needle):
    with pytest.raises(BadInput) as caught:
        check_servable(quant, "cpu", "runs/q")
    message = str(caught.value)
    assert "\n" not in message and needle in message and "4-bit" in message, message


def test_servable_checkpoints_pass():
    check_servable(None, "cpu", "runs/fp16")
    check_servable({"bits": 4, "group_size": 128, "desc_act": False, "sym": True}, "cpu", "runs/int4")
    check_servable({"bits": 8, "group_size": 128, "desc_act": False, "sym": True}, "cuda", "runs/int8")
    check_servable({"bits": 4, "group_size": -1, "desc_act": True, "sym": True}, "cuda", "runs/int4")


def test_int8_refused_before_vllm_starts(vllm, quantized, tmp_path):
    log = tmp_path / "int8.log"
    with pytest.raises(BadInput) as caught:
        score_with_vllm(quantized.work / "int8", ["prompt"], log_file=log)
    message = str(caught.value)
    assert "\n" not in message and "8-bit" in message and "serves" in message and "4-bit" in message, message
    # The engine never started: it would have logged its configuration.
    assert "Initializing a V1 LLM engine" not in log.read_text(encoding="utf-8")


def test_vllm_failure_is_one_line_naming_its_log(vllm, quantized, tmp_path):
    from fraudq.eval.vllm_runtime import VllmFailed

    log = tmp_path / "kv.log"
    # More KV cache than the machine has: vLLM's worker refuses at start-up, in a process of its own.
    with pytest.raises(VllmFailed) as caught:
        score_with_vllm(quantized.work / "int4", ["prompt"], kv_cache_gib=1 << 20, log_file=log)
    message = str(caught.value)
    assert "\n" not in message and "ValueError: Available memory" in message and str(log) in message, message
    assert "Traceback" in log.read_text(encoding="utf-8")  # the details went to the log, not to the user


def test_score_mode_matches_fraudq_runtime(vllm, quantized, tmp_path):
    cfg, hf = _hf_eval(quantized, tmp_path, "hf")
    report = {}
    margins = score_with_vllm(quantized.work / "int4", _prompts(quantized, cfg), cfg.true_word, cfg.false_word,
                              cfg.answer_prefix, report=report)
    assert len(margins) == len(hf) == 160
    flipped = [h["id"] for m, h in zip(margins, hf) if (m > 0) != h["prediction"]]
    assert not flipped, flipped
    worst = max(abs(m - h["score"]) for m, h in zip(margins, hf))
    assert worst <= ONE_TOKEN_TOLERANCE, worst
    assert report["runtime"] == "vllm" and report["dtype"] == "bfloat16" and report["rows"] == 160
    assert report["samples_per_s"] > 0 and report["log_file"] is None


def test_multi_token_words_match_fraudq_runtime(vllm, quantized, tmp_path):
    words = {"true_word": " True", "false_word": " False"}
    tokenizer = load_tokenizer(inspect_model(quantized.work / "int4"))
    assert all(len(tokenizer(w, add_special_tokens=False)["input_ids"]) > 1 for w in words.values())
    cfg, hf = _hf_eval(quantized, tmp_path, "hf-words", **words)
    margins = score_with_vllm(quantized.work / "int4", _prompts(quantized, cfg), cfg.true_word, cfg.false_word,
                              cfg.answer_prefix)
    worst = max(abs(m - h["score"]) for m, h in zip(margins, hf))
    assert worst <= MULTI_TOKEN_TOLERANCE, worst
    # A row closer to the threshold than the tolerance may fall either side; none other may.
    flipped = [h["id"] for m, h in zip(margins, hf)
               if (m > 0) != h["prediction"] and abs(h["score"]) > MULTI_TOKEN_TOLERANCE]
    assert not flipped, flipped


def test_generate_mode_matches_fraudq_runtime(vllm, quantized, tmp_path):
    cfg, hf = _hf_eval(quantized, tmp_path, "hf-generate", "--mode", "generate", limit=48)
    answers = generate_with_vllm(quantized.work / "int4", _prompts(quantized, cfg, limit=48), cfg.max_new_tokens)
    assert [parse_answer(a) for a in answers] == [h["prediction"] for h in hf]


def test_eval_runtime_vllm_and_the_deployment_check_through_the_cli(vllm, quantized, tmp_path):
    """`fraudq eval --runtime vllm` as a user runs it (its own process, since vLLM spawns its engine's), then
    compare's deployment check on the same rows."""
    import subprocess

    from conftest import one_line_error

    cfg = ("--config", quantized.config)
    one_line_error(run_cli("eval", "--runtime", "vllm", "--model", quantized.work / "int8", *cfg), "8-bit", "serves")
    own = run_cli("eval", "--model", quantized.work / "int4", *cfg)
    assert own.exit_code == 0, own.output
    served = subprocess.run([sys.executable, "-m", "fraudq", "eval", "--runtime", "vllm", "--model",
                             str(quantized.work / "int4"), *map(str, cfg)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert served.returncode == 0, served.stderr[-2000:]
    result = json.loads((quantized.work / "eval" / "int4.vllm.json").read_text())
    assert result["runtime"] == "vllm" and result["vllm"]["runtime"] == "vllm"
    table = run_cli("compare", "int4", "fp16", *cfg, "--out", tmp_path / "cmp")
    assert table.exit_code == 0, table.output
    assert "deployment check" in table.stdout and "serves unchanged in vLLM" in table.stdout, table.stdout
