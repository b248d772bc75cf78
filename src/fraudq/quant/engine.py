"""fraudq's batched GPTQ scheduler: GPTQModel's quantizer math and checkpoint format, without its per-sample overhead.

GPTQModel 7.5.0 spends 6 minutes on a 1.5B model, almost all of it outside arithmetic: one Hessian update
per calibration row, a full layer forward per true-sequential subset, a Python-driven column loop, and
packing on the CPU. This driver keeps what decides the weights (the subsets and their order, the Hessian
2/n * sum x x^T over real tokens, GPTQModel's `hessian_inverse`, `Quantizer.find_params` and `quantize`,
the lazy-batch column update, `pack_module`, `save`) and changes only how the work is scheduled:
- calibration rows are sorted by length and batched to a token budget, padding excluded from the Hessian;
- modules that read the same input (q/k/v, gate/up) share one Hessian and are solved as one stacked
  matrix (GPTQ treats rows independently, so this changes nothing but the launch count);
- a subset's forward stops at its last module's input;
- on CUDA each 128-column block of the solve is one replayed CUDA graph, and X^T X runs in TF32 over
  1,024-token products summed in fp32.
The column solve itself is solve.py; `tests/quant/test_engine.py` holds both to the library's own solve and to the
library path end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time

import torch

from fraudq.batching import make_batches, pad_rows
from fraudq.quant import gptqmodel_api
from fraudq.quant.solve import gptq_solve


class _StopForward(Exception):
    """Raised from a hook once the inputs a subset needs are captured; the rest of the layer is skipped."""


def calibration_batches(token_ids: list[list[int]], batch_tokens: int, pad_id: int) -> list[dict]:
    """Length-sorted, right-padded batches of at most `batch_tokens` padded tokens (one row at minimum)."""
    batches = []
    for group in make_batches([len(ids) for ids in token_ids], None, batch_tokens):
        ids, mask = pad_rows([token_ids[index] for index in group], pad_id, left=False)
        batches.append({"input_ids": ids, "attention_mask": mask,
                        "keep": mask.flatten().nonzero().squeeze(1)})
    return batches


@contextlib.contextmanager
def _tf32(enabled: bool):
    # fp16/bf16 activations are exact in TF32 (10-bit mantissa), but the tensor cores' fp32 accumulation truncates:
    # over one 16k-token product the Hessian's diagonal came out 1.1e-4 low (fp32: 1e-6), enough that some
    # down_proj Hessians needed damp 0.02-0.03 and lost 40-80% more. Products of 1,024 tokens, summed in fp32,
    # bring the bias to 6e-6 and the losses back to the library's (docs/BENCHMARKS.md, Equivalence).
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class _Spans:
    """Time spent in `with spans.measure():` blocks. On a GPU it records CUDA events instead of synchronising,
    so clocking the Hessian inside forward hooks never stalls the queue of the forward around it."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events, self.cpu_s = [], 0.0

    @contextlib.contextmanager
    def measure(self):
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            yield
            end.record()
            self.events.append((begin, end))
        else:
            start = time.perf_counter()
            yield
            self.cpu_s += time.perf_counter() - start

    def seconds(self) -> float:
        """Waits for the recorded work, so call it where the caller synchronises anyway."""
        if self.events:
            self.events[-1][1].synchronize()
        return self.cpu_s + sum(begin.elapsed_time(end) for begin, end in self.events) / 1e3


def capture_layer_inputs(hf_model, batches: list[dict], device) -> list[tuple]:
    """Run the embeddings once per batch and keep what the first decoder layer receives."""
    base = hf_model.model
    captured = []

    def grab(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _StopForward

    for name, child in base.named_children():
        if name != "layers":
            child.to(device)
    handle = base.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_StopForward):
                base(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                     use_cache=False)
    finally:
        handle.remove()
        for name, child in base.named_children():
            if name != "layers":
                child.to("cpu")
    return captured


def _layer_output(result):
    return result[0] if isinstance(result, tuple) else result


class _Clock:
    """Seconds per stage of quantize_layers. Each lap syncs, so GPU work lands in the stage that queued it; a few
    laps per layer, never inside the forward's hooks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stages = {"capture_s": 0.0, "forward_s": 0.0, "hessian_s": 0.0, "solve_s": 0.0, "pack_s": 0.0}

    def lap(self, stage: str, since: float, exclude: float = 0.0) -> float:
        """Charges `stage` with the time since `since`, less `exclude` (the Hessian time that _Spans measured inside
        a forward); returns now."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.stages[stage] += now - since - exclude
        return now


@dataclasses.dataclass
class _Job:
    """What every layer's solve reads, and the per-module rows it appends."""

    qcfg: object
    device: torch.device
    tf32: bool
    chunk_tokens: int
    clock: _Clock
    states: list[tuple]  # per batch: the current layer's input hidden states and keyword arguments
    keep: list[torch.Tensor]  # per batch: flat positions of the real tokens, padding excluded
    graphs: dict | None  # the solve's CUDA graphs, reused across layers; None on CPU
    rows: list[dict] = dataclasses.field(default_factory=list)


@torch.no_grad()
def quantize_layers(gptq_model, token_ids, qcfg, device: str, batch_tokens: int, tf32: bool, pad_id: int, *,
                    chunk_tokens: int, progress=None) -> dict:
    """Quantize every decoder layer in place and pack it; returns stage seconds and per-module rows.

    `progress(done, total)` is called after each layer. `chunk_tokens` > 0 splits each batch's X^T X into
    products over that many tokens (shorter accumulation chains); 0 is one product per batch.
    """
    device = torch.device(device)
    hf_model = gptq_model.model
    clock = _Clock(device)
    start = time.perf_counter()
    batches = calibration_batches(token_ids, batch_tokens, pad_id)
    keep = [batch["keep"].to(device) for batch in batches]
    states = capture_layer_inputs(hf_model, batches, device)
    clock.lap("capture_s", start)
    subsets = gptqmodel_api.layer_subsets(gptq_model, qcfg)
    if not qcfg.true_sequential:
        subsets = [[name for subset in subsets for name in subset]]
    layers = hf_model.model.layers
    prefix = gptqmodel_api.layers_prefix(gptq_model)
    job = _Job(qcfg, device, tf32, chunk_tokens, clock, states, keep, {} if device.type == "cuda" else None)
    lock = threading.Lock()
    for layer_index, layer in enumerate(layers):
        layer.to(device)
        for subset in subsets:
            _quantize_subset(job, layer_index, layer, subset)
        start = time.perf_counter()
        _advance_states(states, layer)
        start = clock.lap("forward_s", start)
        layer.to("cpu")
        for subset in subsets:
            for n in subset:
                _pack(gptq_model, f"{prefix}.{layer_index}.{n}", qcfg, lock)
        clock.lap("pack_s", start)
        if progress:
            progress(layer_index + 1, len(layers))
    return {"stages": {k: round(v, 3) for k, v in clock.stages.items()}, "modules": job.rows,
            "batching": {"batch_tokens": batch_tokens, "batches": len(batches),
                         "padded_tokens": sum(b["input_ids"].numel() for b in batches),
                         "tokens": sum(int(b["keep"].numel()) for b in batches)}}


def _quantize_subset(job: _Job, layer_index: int, layer, subset: list[str]) -> None:
    """Hessians of `subset`'s inputs from one partial forward per batch, then one solve per distinct input."""
    start, spans = time.perf_counter(), _Spans(job.device)
    hessians = _subset_hessians(layer, subset, job.states, job.keep, job.tf32, job.chunk_tokens, spans)
    hessian_s = spans.seconds()
    job.clock.stages["hessian_s"] += hessian_s
    start = job.clock.lap("forward_s", start, exclude=hessian_s)
    for names, (H, nsamples) in hessians.items():
        _solve_stacked(job, layer_index, layer, names, H, nsamples)
    job.clock.lap("solve_s", start)


def _solve_stacked(job: _Job, layer_index: int, layer, names: tuple, H, nsamples: int) -> None:
    """Solves the modules `names`, which share the Hessian H, as one stacked weight; each gets its own rows back."""
    stacked = torch.cat([layer.get_submodule(n).weight.data for n in names])
    Q, scale, zero, g_idx, loss_rows, damp = gptq_solve(stacked, H, job.qcfg, job.graphs,
                                                       name=f"{layer_index}.{names[0]}")
    offset = 0
    for n in names:
        module = layer.get_submodule(n)
        height = module.weight.shape[0]
        module.weight.data = Q[offset:offset + height]
        module._fraudq_quant = (scale[offset:offset + height].cpu(), zero[offset:offset + height].cpu(),
                                g_idx.cpu().clone())  # shared tensors would be deduplicated on save
        job.rows.append({"layer": layer_index, "module": n,
                         "loss": float(loss_rows[offset:offset + height].sum()) / nsamples,
                         "samples": nsamples, "damp": damp})
        offset += height


def _advance_states(states: list[tuple], layer) -> None:
    """Replaces each batch's hidden states with the quantized layer's output: the next layer's input."""
    for index, (hidden, kwargs) in enumerate(states):
        states[index] = (_layer_output(layer(hidden, **kwargs)), kwargs)


def _pack(gptq_model, full_name: str, qcfg, lock: threading.Lock) -> None:
    """Packs one solved linear into GPTQModel's format with the scales and zeros its solve left on it."""
    linear = gptq_model.model.get_submodule(full_name)
    scale, zero, g_idx = linear._fraudq_quant
    del linear._fraudq_quant
    gptqmodel_api.pack_linear(gptq_model, full_name, linear, scale, zero, g_idx, qcfg, lock)


def _subset_hessians(layer, subset, states, keep, tf32: bool, chunk_tokens: int, spans: _Spans) -> dict:
    """2/n * sum x x^T over real tokens for each distinct input of `subset`, keyed by the modules reading it."""
    sums: dict[tuple, list] = {}
    readers: dict[str, tuple] = {}  # module -> key of the modules sharing its input
    seen: dict[int, tuple] = {}  # id(input tensor) -> (tensor, key) within one batch; holding it keeps ids unique
    pending = set(subset)
    current = {"keep": None}

    def hook_for(name):
        def hook(module, args):
            x = args[0]
            key = seen.get(id(x), (None, None))[1]
            if key is None:
                key = readers.get(name, (name,))
                seen[id(x)] = (x, key)
                if key not in sums:
                    sums[key] = [torch.zeros((x.shape[-1], x.shape[-1]), dtype=torch.float32, device=x.device), 0]
                with spans.measure(), _tf32(tf32):
                    flat = x.reshape(-1, x.shape[-1]).index_select(0, current["keep"]).float()
                    for part in flat.split(chunk_tokens or flat.shape[0]):
                        if part.is_cuda:
                            sums[key][0].addmm_(part.T, part)
                        else:
                            # Product, then sum, as GPTQModel does per row: the CPU BLAS folds a long product
                            # into H block by block and rounds differently, which broke byte-equality for rows
                            # of ~200+ tokens. On CUDA the fused addmm saves a pass over H.
                            sums[key][0].add_(part.T @ part)
                sums[key][1] += flat.shape[0]
            elif name not in key:
                # First batch only: this module reads the same tensor as `key`'s modules; merge them.
                merged = key + (name,)
                sums[merged] = sums.pop(key)
                for n in merged:
                    readers[n] = merged
                seen[id(x)] = (x, merged)
            pending.discard(name)
            if not pending:
                raise _StopForward
        return hook

    handles = [layer.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in subset]
    try:
        for (hidden, kwargs), batch_keep in zip(states, keep):
            seen.clear()
            pending.update(subset)
            current["keep"] = batch_keep
            with contextlib.suppress(_StopForward):
                layer(hidden, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for key, (H, count) in sums.items():
        H.mul_(2.0 / count)
        result[key] = (H, count)
    return result
