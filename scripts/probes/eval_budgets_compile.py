"""Probe: fraudq's score_batch and generate_batch on the qwen2-1.5b shape at several token budgets,
then the same scoring under torch.compile (first pass includes compiling). Random init, in-process.
Run on the GPU box from the repo root: PYTHONPATH=src:/tmp/site python3 scripts/probes/eval_budgets_compile.py OUT.json
"""
import json, sys, time, torch, transformers
from fraudq.reference import build_tokenizer, PRESETS, _model_config
from fraudq import prompts
from fraudq.config import Config
from fraudq.data import read_jsonl
from fraudq.evaluate import make_batches, score_batch, generate_batch
cfg = Config()
tok = build_tokenizer("qwen")
rows = read_jsonl(".gpu/data/test0819.jsonl", need_label=True).rows
base = [prompts.eval_prompt(tok, r.instruction or cfg.instruction, r.input) for r in rows]
ids = tok([b + cfg.answer_prefix for b in base], add_special_tokens=False)["input_ids"]
gen = tok(base[:1024], add_special_tokens=False)["input_ids"]
cands = [tok(w, add_special_tokens=False)["input_ids"] for w in (cfg.true_word, cfg.false_word)]
mc = _model_config(PRESETS["qwen2-1.5b"], tok)
torch.manual_seed(0)
with torch.device("cuda"):
    model = transformers.AutoModelForCausalLM.from_config(mc, dtype=torch.float16).eval()
out = {}
def timed(name, batches, fn):
    times = []
    for b in batches:
        torch.cuda.synchronize(); t = time.perf_counter(); fn(b); torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    n = sum(map(len, batches))
    out[name] = {"rows_s": round(n / sum(times), 1), "steady": round(sum(map(len, batches[1:])) / sum(times[1:]), 1) if len(batches) > 1 else None, "first": round(times[0], 3), "wall": round(sum(times), 2), "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}
    print(name, out[name], flush=True)
    json.dump(out, open(sys.argv[1], "w"), indent=1)
score = lambda b: score_batch(model, [ids[i] for i in b], cands, 151643, "cuda")
for budget in (8192, 16384, 32768):
    timed(f"score@{budget}", make_batches([len(p) + 1 for p in ids], None, budget), score)
for budget in (65536, 131072, 262144):
    torch.cuda.reset_peak_memory_stats()
    timed(f"generate@{budget}", make_batches([len(p) + 16 for p in gen], None, budget), lambda b: generate_batch(model, tok, [gen[i] for i in b], 16, "cuda"))
# shared prefix: how many leading tokens do all rows share?
common = 0
while all(len(x) > common and x[common] == ids[0][common] for x in ids): common += 1
out["shared_prefix_tokens"] = common; out["mean_tokens"] = sum(map(len, ids)) / len(ids); print("shared prefix", common, out["mean_tokens"])
t = time.perf_counter()
model.forward = torch.compile(model.forward, dynamic=True)
timed("compiled-score@16384", make_batches([len(p) + 1 for p in ids], None, 16384), score)
timed("compiled-score@16384-again", make_batches([len(p) + 1 for p in ids], None, 16384), score)
