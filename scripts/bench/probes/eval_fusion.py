"""Probe for the score-mode eval targets: fraudq's own `evaluate_model`, with the loaded model changed per
variant, so timing, warm-up and batching are exactly what `fraudq eval` does. One variant per process (liger
patches transformers' module globally; compiled graphs stay in the process).

    default    the model as `fraudq eval` runs it today (rows packed, fused_kernels auto, attention without cuDNN)
    padded     the fourth session's default: the same without packing (left padding, attention mask)
    no-fused   the default without liger's kernels (packed, eager RMSNorm, rotary and SwiGLU)
    gptqmodel-alloc  the default under the CUDA allocator settings GPTQModel chooses on import
    expandable the default with the CUDA allocator's expandable segments
    fused-add-norm  the default with each layer's attention residual add fused into the next RMSNorm (liger)
    repeat-kv  the default with grouped key/value heads copied per query head before flash attention
    before     the third session's path: padded, no fused kernels, cuDNN attention allowed
    eager      no fused kernels, attention without cuDNN
    rmsnorm    eager, with every RMSNorm through torch.nn.functional.rms_norm
    pointwise  eager, with RMSNorm, rotary embedding and SiLU * up each one small torch.compile(dynamic=True)
               function; the GEMMs (and GPTQ kernels) stay outside, so nothing but elementwise code is compiled
    liger      liger-kernel's Triton kernels for Qwen2 (RMSNorm, rotary, SwiGLU), cuDNN attention allowed (as
               the fourth session's first call ran it)
    liger-rope the default plus liger's rotary kernel, which compiles once per batch row count
    regional   eager, with each decoder layer torch.compile(dynamic=True) (one graph per layer index: the KV
               cache of the shared prefix is indexed by it), recompile limit raised to cover 28 layers

Per budget: rows/s, warm-up, peak memory, and scores against `--baseline` (the default's predictions file). The
second budget runs in the same process: compiled kernels are warm, but its batch shapes are new. `--profile` adds one more run whose
third batch is profiled: CUDA time per kernel, grouped.

    PYTHONPATH=src python scripts/bench/probes/eval_fusion.py --model DIR --data test0819.jsonl --variant default \
        --label fp16 --out OUT_DIR [--baseline OUT_DIR/fp16-default-32768.predictions.jsonl] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fraudq.eval.evaluate as evaluate
from fraudq.config import Config


def _norms(model):
    return [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]


def fuse_rmsnorm(model) -> None:
    for module in _norms(model):
        module.forward = lambda x, w=module.weight, eps=module.variance_epsilon: F.rms_norm(x, w.shape, w, eps)


def compile_pointwise(model) -> None:
    from transformers.models.qwen2 import modeling_qwen2

    @torch.compile(dynamic=True)
    def rms_norm(x, weight, eps: float):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    @torch.compile(dynamic=True)
    def silu_mul(gate, up):
        return F.silu(gate) * up

    rope = torch.compile(modeling_qwen2.apply_rotary_pos_emb.__wrapped__
                         if hasattr(modeling_qwen2.apply_rotary_pos_emb, "__wrapped__")
                         else modeling_qwen2.apply_rotary_pos_emb, dynamic=True)
    modeling_qwen2.apply_rotary_pos_emb = rope
    for module in _norms(model):
        module.forward = lambda x, w=module.weight, eps=module.variance_epsilon: rms_norm(x, w, eps)
    for layer in model.model.layers:
        mlp = layer.mlp
        mlp.forward = lambda x, m=mlp: m.down_proj(silu_mul(m.gate_proj(x), m.up_proj(x)))


def liger(model) -> None:
    from liger_kernel.transformers import apply_liger_kernel_to_qwen2

    apply_liger_kernel_to_qwen2(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False, model=model)


def liger_rope(model) -> None:
    from liger_kernel.transformers import apply_liger_kernel_to_qwen2

    apply_liger_kernel_to_qwen2(rope=True, rms_norm=False, swiglu=False, cross_entropy=False,
                                fused_linear_cross_entropy=False)


def compile_layers(model) -> None:
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 1024
    for layer in model.model.layers:
        layer.compile(dynamic=True)


def fuse_add_norm(model) -> None:
    """The default, with each decoder layer's attention residual add and post-attention RMSNorm as one liger
    kernel (the layer's other add feeds the next layer's norm, across the model's own loop: left as it is)."""
    from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction

    for layer in model.model.layers:
        def forward(hidden_states, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                    position_embeddings=None, layer=layer, **kwargs):
            residual = hidden_states
            hidden_states, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states),
                                               attention_mask=attention_mask, position_ids=position_ids,
                                               past_key_values=past_key_values, use_cache=use_cache,
                                               position_embeddings=position_embeddings, **kwargs)
            norm = layer.post_attention_layernorm
            normed, residual = LigerFusedAddRMSNormFunction.apply(hidden_states, residual, norm.weight,
                                                                  norm.variance_epsilon, 0.0, "llama", False)
            return residual + layer.mlp(normed)

        layer.forward = forward


def unchanged(model) -> None:
    pass


def repeat_kv(model) -> None:
    """The default with grouped key/value heads copied to one per query head before the variable-length kernel,
    as fraudq ran it on torch 2.11 before reading them as they are (sixth session)."""
    from fraudq.eval import packed

    packed.VARLEN_KERNELS = {"varlen-repeat-kv": True}


# name: (config settings, change to the loaded model)
# CUDA allocator settings per variant: what GPTQModel 7.5.0 sets on import when nothing is set (models/auto.py),
# which eval ran under before fraudq kept the defaults (modelio.keep_cuda_allocator); and expandable segments
# alone, which grow the pool by mapping memory instead of allocating a new block for a batch that needs more.
ALLOCATORS = {"gptqmodel-alloc": "expandable_segments:True,max_split_size_mb:256,garbage_collection_threshold:0.7",
              "expandable": "expandable_segments:True"}
EAGER = {"fused_kernels": "off", "cudnn_attention": False, "pack_rows": False}
VARIANTS = {"default": ({}, unchanged), "padded": ({"pack_rows": False}, unchanged),
            "no-fused": ({"fused_kernels": "off"}, unchanged), "gptqmodel-alloc": ({}, unchanged),
            "expandable": ({}, unchanged), "fused-add-norm": ({}, fuse_add_norm), "repeat-kv": ({}, repeat_kv),
            "before": ({"fused_kernels": "off", "cudnn_attention": True, "pack_rows": False}, unchanged),
            "eager": (EAGER, unchanged), "rmsnorm": (EAGER, fuse_rmsnorm), "pointwise": (EAGER, compile_pointwise),
            "liger": ({"fused_kernels": "off", "cudnn_attention": True, "pack_rows": False}, liger),
            "liger-rope": ({"pack_rows": False}, liger_rope),
            "regional": (EAGER, compile_layers)}


def read_predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


GROUPS = (("attention", ("flash", "fmha", "attention", "attn", "cudnn", "sdpa")),  # before gemm: cuDNN's names hold sm90_
          ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "sm90_")),
          ("triton", ("triton",)),
          ("norm_reduce", ("reduce", "norm")),
          ("copy_cat", ("copy", "cat", "index", "gather", "fill")),
          ("elementwise", ("elementwise", "vectorized")))


def kernel_profile(prof) -> dict:
    kernels = {}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.key] = kernels.get(event.key, 0.0) + event.self_device_time_total / 1e3
    total = sum(kernels.values()) or 1.0
    groups = {}
    for name, ms in kernels.items():
        group = next((g for g, keys in GROUPS if any(k in name.lower() for k in keys)), "other")
        groups[group] = groups.get(group, 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    # The ATen ops behind the kernels (device time of the kernels each launched itself), and their CPU time.
    ops = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CPU]
    top_ops = sorted(ops, key=lambda e: -e.self_device_time_total)[:15]
    # Where the same-dtype copies come from (~7 ms a 32k-token batch, two per layer, in every path so far): the
    # Python stacks of aten::copy_, grouped.
    copies: dict[tuple, list] = {}
    for event in prof.events():
        if event.name == "aten::copy_" and event.device_type == torch.autograd.DeviceType.CPU:
            frames = tuple(f for f in event.stack if " at 0x" not in f)[:8]  # object addresses differ per call
            group = copies.setdefault(frames, [0.0, 0])
            group[0] += event.device_time_total / 1e3
            group[1] += 1
    copy_stacks = [{"device_ms": round(ms, 2), "calls": n, "stack": list(frames)}
                   for frames, (ms, n) in sorted(copies.items(), key=lambda kv: -kv[1][0])[:5]]
    return {"total_ms": round(total, 2), "cpu_self_ms": round(sum(e.self_cpu_time_total for e in ops) / 1e3, 2),
            "copy_stacks": copy_stacks,
            "top_ops": [{"op": e.key[:80], "device_ms": round(e.self_device_time_total / 1e3, 2),
                         "cpu_ms": round(e.self_cpu_time_total / 1e3, 2), "calls": e.count} for e in top_ops],
            "groups_pct": {g: round(100 * ms / total, 1) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": k[:120], "ms": round(ms, 2), "pct": round(100 * ms / total, 1)} for k, ms in top]}


def profiled_score_batch(real, record: dict, at_call: int = 3):
    """Every batch timed alone (synchronised before and after): launch_ms is how long the CPU took to queue it,
    wall_ms until the GPU finished. The `at_call`-th batch also runs under the torch profiler."""
    calls = {"n": 0}
    record["batches"] = []

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] != at_call:
            torch.cuda.synchronize()
            start = time.perf_counter()
            values = real(*args, **kwargs)
            launched = time.perf_counter()
            torch.cuda.synchronize()
            record["batches"].append({"rows": len(args[1]), "launch_ms": round((launched - start) * 1e3, 2),
                                      "wall_ms": round((time.perf_counter() - start) * 1e3, 2)})
            return values
        from torch._C._profiler import _ExperimentalConfig
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        # verbose: without it this torch records no Python frames for with_stack
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True,
                     experimental_config=_ExperimentalConfig(verbose=True)) as prof:
            start = time.perf_counter()
            values = real(*args, **kwargs)
            torch.cuda.synchronize()
            record["batch_wall_ms"] = round((time.perf_counter() - start) * 1e3, 2)
        record["batch_rows"] = len(args[1])
        record.update(kernel_profile(prof))
        return values

    return wrapper


def timeline_score_batch(real, batches: list):
    """No synchronisation: CUDA events around each batch's queued work and CPU clocks around the call, to tell
    GPU time per batch, GPU idle between batches and how far the CPU runs ahead."""

    def wrapper(*args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cpu_enter = time.perf_counter()
        start.record()
        values = real(*args, **kwargs)
        end.record()
        batches.append((len(args[1]), cpu_enter, time.perf_counter(), start, end, _allocations()))
        return values

    return wrapper


def _allocations() -> tuple[int, int, float]:
    """Device blocks allocated (cudaMalloc), page-locked host blocks allocated, and the time those took (ms) so far:
    a call that waits for the device inside the driver shows up as a count that grew in a batch with GPU idle."""
    device = torch.cuda.memory_stats().get("num_device_alloc", -1)
    host = torch.cuda.host_memory_stats() if hasattr(torch.cuda, "host_memory_stats") else {}
    return device, host.get("num_host_alloc", -1), host.get("host_alloc_time.total", 0) / 1e3


def summarise_timeline(batches: list) -> list[dict]:
    torch.cuda.synchronize()
    cpu0, first = batches[0][1], batches[0][3]
    rows = []
    for index, (n, cpu_in, cpu_out, start, end, allocs) in enumerate(batches):
        gap = batches[index - 1][4].elapsed_time(start) if index else 0.0
        rows.append({"rows": n, "cpu_enter_ms": round((cpu_in - cpu0) * 1e3, 1),
                     "cpu_exit_ms": round((cpu_out - cpu0) * 1e3, 1),
                     "gpu_start_ms": round(first.elapsed_time(start), 1), "gpu_ms": round(start.elapsed_time(end), 1),
                     "gpu_idle_before_ms": round(gap, 1), "device_allocs": allocs[0], "host_allocs": allocs[1],
                     "host_alloc_ms": round(allocs[2], 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--label", default="fp16", help="the model's name in the summary")
    parser.add_argument("--budgets", default="32768,65536")
    parser.add_argument("--baseline", type=Path, default=None, help="predictions file to compare scores with")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--timeline", action="store_true", help="CUDA-event timeline of every budget's run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    if args.variant in ALLOCATORS:
        # Read when CUDA first allocates, so set before that; fraudq keeps a setting it finds.
        os.environ["PYTORCH_ALLOC_CONF"] = ALLOCATORS[args.variant]
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "eval_fusion.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    real_load = evaluate.load_model
    settings, change = VARIANTS[args.variant]

    def load(*a, **k):
        model = real_load(*a, **k)
        start = time.perf_counter()
        change(model)
        print(f"# {args.variant}: model changed in {time.perf_counter() - start:.2f} s", flush=True)
        return model

    evaluate.load_model = load
    baseline = read_predictions(args.baseline) if args.baseline and args.baseline.exists() else None

    def one(budget: int, name: str) -> dict:
        cfg = Config(token_budget=budget, device=args.device, limit=args.limit, **settings)
        out = args.out / f"{args.label}-{args.variant}-{name}.json"
        start = time.perf_counter()
        result = evaluate.evaluate_model(cfg, args.model, args.data, out, log=lambda *_: None)
        row = {k: result[k] for k in ("samples_per_s", "wall_s", "warmup_s", "load_s", "memory", "batching", "f1")}
        row["call_s"] = round(time.perf_counter() - start, 2)
        if baseline:
            mine = read_predictions(evaluate.predictions_path(out))
            row["max_abs_score_diff_vs_baseline"] = max(abs(a["score"] - b["score"]) for a, b in zip(mine, baseline))
            row["same_predictions_vs_baseline"] = sum(a["prediction"] == b["prediction"]
                                                      for a, b in zip(mine, baseline))
        return row

    def save(key: str, row: dict) -> None:
        summary[key] = row
        print(key, json.dumps(row), flush=True)
        summary_path.write_text(json.dumps(summary, indent=2))

    for budget in map(int, args.budgets.split(",")):
        timeline: list = []
        real_score = evaluate.score_batch
        if args.timeline and torch.cuda.is_available():
            evaluate.score_batch = timeline_score_batch(real_score, timeline)
        row = one(budget, str(budget))
        evaluate.score_batch = real_score
        if timeline:
            row["timeline"] = summarise_timeline(timeline)
        save(f"{args.label}:{args.variant}@{budget}", row)
    if args.profile and torch.cuda.is_available():
        record: dict = {}
        real_score = evaluate.score_batch
        evaluate.score_batch = profiled_score_batch(real_score, record)
        budget = int(args.budgets.split(",")[0])
        one(budget, "profiled")
        evaluate.score_batch = real_score
        save(f"{args.label}:{args.variant}:profile@{budget}", record)
    evaluate.load_model = real_load


if __name__ == "__main__":
    main()
