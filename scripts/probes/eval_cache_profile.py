"""Probe: fp16 score-mode forward on the qwen2-1.5b shape with and without a KV cache, plus a profile.

Random init in-process (no checkpoint), batches exactly as fraudq builds them, tensors made before the clock.
Run on the GPU box from the repo root: PYTHONPATH=src:/tmp/site python3 scripts/probes/eval_cache_profile.py OUT.json
(with the wheel bundle installed to /tmp/site and the data in .gpu/data). Prints a CUDA kernel profile of one batch.
"""
import json, sys, time, torch, transformers
from fraudq.reference import build_tokenizer, PRESETS, _model_config
from fraudq import prompts
from fraudq.config import Config
from fraudq.data import read_jsonl
from fraudq.evaluate import make_batches, left_pad
cfg = Config()
tok = build_tokenizer("qwen")
rows = read_jsonl(".gpu/data/test0819.jsonl", need_label=True).rows
ids = tok([prompts.eval_prompt(tok, r.instruction or cfg.instruction, r.input) + cfg.answer_prefix for r in rows], add_special_tokens=False)["input_ids"]
mc = _model_config(PRESETS["qwen2-1.5b"], tok)
torch.manual_seed(0)
out = {}
for attn in ("sdpa",):
    mc._attn_implementation = attn
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(mc, dtype=torch.float16).eval()
    def run(budget, **kw):
        batches = make_batches([len(p) + 1 for p in ids], None, budget)
        tensors = [left_pad([ids[i] for i in b], 151643, "cuda") for b in batches]
        times = []
        for (i, m, p) in tensors:
            torch.cuda.synchronize(); t = time.perf_counter()
            with torch.inference_mode():
                model(input_ids=i, attention_mask=m, position_ids=p, logits_to_keep=1, **kw)
            torch.cuda.synchronize(); times.append(time.perf_counter() - t)
        return {"rows_s": round(len(ids) / sum(times), 1), "steady": round(sum(len(b) for b in batches[1:]) / sum(times[1:]), 1), "first": round(times[0], 3), "pad_frac": round(1 - sum(len(x) for x in ids) / sum(t[0].numel() for t in tensors), 4)}
    for budget in (16384, 65536):
        out[f"{attn}/{budget}"] = run(budget); print(f"{attn}/{budget}", out[f"{attn}/{budget}"], flush=True)
        out[f"{attn}/{budget}/nocache"] = run(budget, use_cache=False); print(f"{attn}/{budget}/nocache", out[f"{attn}/{budget}/nocache"], flush=True)
    # no mask at all (upper bound: causal only), same tokens
    batches = make_batches([len(p) + 1 for p in ids], None, 65536)
    b = batches[2]; i, m, p = left_pad([ids[k] for k in b], 151643, "cuda")
    from torch.profiler import profile, ProfilerActivity
    with torch.inference_mode():
        model(input_ids=i, attention_mask=m, position_ids=p, logits_to_keep=1, use_cache=False)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            model(input_ids=i, attention_mask=m, position_ids=p, logits_to_keep=1, use_cache=False)
            torch.cuda.synchronize()
    print("batch tokens", i.numel(), "rows", len(b))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    # pure GEMM check
    x = torch.randn(i.numel(), 1536, device="cuda", dtype=torch.float16); w = torch.randn(8960, 1536, device="cuda", dtype=torch.float16)
    for _ in range(3): y = x @ w.T
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): y = x @ w.T
    torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 10
    print("gemm TFLOP/s", 2 * x.shape[0] * 1536 * 8960 / dt / 1e12)
json.dump(out, open(sys.argv[1], "w"), indent=1)
