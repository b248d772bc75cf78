"""fraudq's GPTQ driver: GPTQModel's quantizer math and checkpoint format, without its per-sample overhead.

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
`tests/test_gptq_fast.py` holds it to the library's own solve and to the library path end to end.
"""

from __future__ import annotations

import contextlib
import threading
import time
from types import SimpleNamespace

import torch

from fraudq.batching import make_batches
from fraudq.errors import BadInput

BLOCK = 128  # GPTQModel's lazy-batch width


class _StopForward(Exception):
    """Raised from a hook once the inputs a subset needs are captured; the rest of the layer is skipped."""


def calibration_batches(token_ids: list[list[int]], batch_tokens: int, pad_id: int) -> list[dict]:
    """Length-sorted, right-padded batches of at most `batch_tokens` padded tokens (one row at minimum)."""
    batches = []
    for group in make_batches([len(ids) for ids in token_ids], None, batch_tokens):
        width = len(token_ids[group[0]])
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, index in enumerate(group):
            ids[row, :len(token_ids[index])] = torch.tensor(token_ids[index])
            mask[row, :len(token_ids[index])] = 1
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


class _GraphBlock:
    """One lazy-batch block of GPTQ's column loop, captured once per row count and replayed (CUDA only)."""

    def __init__(self, rows: int, device, maxq: int, groupwise: bool):
        self.maxq, self.groupwise = maxq, groupwise
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float32, device=device)  # noqa: E731
        self.W1, self.Hinv1 = zeros(rows, BLOCK), zeros(BLOCK, BLOCK)
        self.scale, self.zero = zeros(rows, BLOCK), zeros(rows, BLOCK)
        self.Hinv1.fill_diagonal_(1.0)  # the warm-up below divides by its diagonal and by the scales
        self.scale.fill_(1.0)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._body()  # warm-up outside capture, as CUDA graphs require
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._body()

    def _body(self):
        return solve_block(self.W1, self.Hinv1, self.scale, self.zero, self.maxq, self.groupwise)

    def run(self, W1, Hinv1, scale, zero):
        self.W1.copy_(W1)
        self.Hinv1.copy_(Hinv1)
        self.scale.copy_(scale)
        self.zero.copy_(zero)
        self.graph.replay()
        return self.out


def solve_block(W1, Hinv1, scale_cols, zero_cols, maxq: int, groupwise: bool):
    """GPTQModel's inner column loop (gptq.py, GPTQ.quantize) for one block, column params given per column."""
    from gptqmodel.quantization.quantizer import quantize

    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    Losses1 = torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        w = W1[:, i]
        d = Hinv1[i, i]
        q = quantize(w.unsqueeze(1), scale_cols[:, i:i + 1], zero_cols[:, i:i + 1], maxq, groupwise).flatten()
        Q1[:, i] = q
        Losses1[:, i] = (w - q) ** 2 / d ** 2
        err1 = (w - q) / d
        W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
        Err1[:, i] = err1
    return Q1, Err1, Losses1


def gptq_solve(weight: torch.Tensor, H: torch.Tensor, qcfg, graphs: dict | None = None, name="stacked"):
    """GPTQ for one (possibly stacked) weight with GPTQModel's math, for desc_act=False, static_groups=False.

    `graphs` (CUDA only) caches one captured block per row count; None runs every block eagerly.

    Returns Q (weight dtype), scale and zero ([rows, groups]), g_idx, the per-row loss sums and the damp used.
    Follows `GPTQ.quantize` line for line; group parameters come from the not-yet-updated `W` at each block
    start exactly as the library computes them mid-block, so they can be fixed before the block runs.
    """
    from gptqmodel.quantization.gptq import GPTQ
    from gptqmodel.quantization.quantizer import Quantizer

    rows, columns = weight.shape
    group_size = qcfg.group_size
    quantizer = Quantizer(qcfg=qcfg, name=name)
    quantizer.configure(perchannel=True)
    W = weight.to(device=H.device, dtype=torch.float32).clone()
    quantizer.find_params(W, weight=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv, damp = GPTQ.hessian_inverse(SimpleNamespace(qcfg=qcfg, name=name, region_timer=None), H)
    if Hinv is None:
        raise BadInput(f"the Hessian of layer {name} stayed singular; use more calibration rows or a larger --damp")
    maxq = int(quantizer.maxq.item())
    groupwise = quantizer.requires_groupwise_processing()
    scales, zeros = [], []
    Q = torch.zeros_like(W)
    Losses = torch.zeros_like(W)
    for i1 in range(0, columns, BLOCK):
        i2 = min(i1 + BLOCK, columns)
        scale_cols = torch.empty((rows, i2 - i1), dtype=torch.float32, device=W.device)
        zero_cols = torch.empty_like(scale_cols)
        for col in range(i1, i2):
            boundary = group_size != -1 and col % group_size == 0
            if boundary:
                quantizer.find_params(W[:, col:col + group_size], weight=True)
                scales.append(quantizer.scale)
                zeros.append(quantizer.zero)
            if boundary or col == i1:
                scale_cols[:, col - i1:] = quantizer.scale
                zero_cols[:, col - i1:] = quantizer.zero
        if graphs is not None and i2 - i1 == BLOCK:
            key = (rows, maxq, groupwise)
            if key not in graphs:
                graphs[key] = _GraphBlock(rows, W.device, maxq, groupwise)
            Q1, Err1, Losses1 = graphs[key].run(W[:, i1:i2], Hinv[i1:i2, i1:i2], scale_cols, zero_cols)
        else:
            Q1, Err1, Losses1 = solve_block(W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2], scale_cols, zero_cols,
                                            maxq, groupwise)
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if not scales:
        scales.append(quantizer.scale)
        zeros.append(quantizer.zero)
    width = group_size if group_size != -1 else columns
    g_idx = torch.arange(columns, dtype=torch.int32, device=W.device) // width
    loss_rows = Losses.sum(dim=1)
    return Q.to(weight.dtype), torch.cat(scales, dim=1), torch.cat(zeros, dim=1), g_idx, loss_rows, damp


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


@torch.no_grad()
def quantize_layers(gptq_model, token_ids, qcfg, device: str, batch_tokens: int, tf32: bool, pad_id: int, *,
                    chunk_tokens: int, progress=None) -> dict:
    """Quantize every decoder layer in place and pack it; returns stage seconds and per-module rows.

    `progress(done, total)` is called after each layer. `chunk_tokens` > 0 splits each batch's X^T X into
    products over that many tokens (shorter accumulation chains); 0 is one product per batch.
    """
    from gptqmodel.utils.model import create_quant_module, pack_module
    from gptqmodel.quantization.config import resolve_quant_format

    device = torch.device(device)
    hf_model = gptq_model.model
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)  # noqa: E731
    stages = {"capture_s": 0.0, "forward_s": 0.0, "hessian_s": 0.0, "solve_s": 0.0, "pack_s": 0.0}

    def clock(stage=None, since=None, exclude=0.0):
        # Syncs so GPU work lands in the stage that queued it; a few times per layer, never inside the forward's
        # hooks. Hessian time, measured there by _Spans, is `exclude`d from forward_s.
        sync()
        now = time.perf_counter()
        if stage:
            stages[stage] += now - since - exclude
        return now

    start = time.perf_counter()
    batches = calibration_batches(token_ids, batch_tokens, pad_id)
    keep = [batch["keep"].to(device) for batch in batches]
    states = capture_layer_inputs(hf_model, batches, device)
    start = clock("capture_s", start)
    subsets = gptq_model.simple_layer_modules(hf_model.config, qcfg)
    if not qcfg.true_sequential:
        subsets = [[name for subset in subsets for name in subset]]
    layers = hf_model.model.layers
    prefix = gptq_model.extract_layers_node()[0]
    graphs = {} if device.type == "cuda" else None
    rows, lock = [], threading.Lock()
    for layer_index, layer in enumerate(layers):
        layer.to(device)
        for subset in subsets:
            start, spans = time.perf_counter(), _Spans(device)
            hessians = _subset_hessians(layer, subset, states, keep, tf32, chunk_tokens, spans)
            hessian_s = spans.seconds()
            stages["hessian_s"] += hessian_s
            start = clock("forward_s", start, exclude=hessian_s)
            for names, (H, nsamples) in hessians.items():
                stacked = torch.cat([layer.get_submodule(n).weight.data for n in names])
                Q, scale, zero, g_idx, loss_rows, damp = gptq_solve(stacked, H, qcfg, graphs,
                                                                   name=f"{layer_index}.{names[0]}")
                offset = 0
                for n in names:
                    module = layer.get_submodule(n)
                    height = module.weight.shape[0]
                    module.weight.data = Q[offset:offset + height]
                    module._fraudq_quant = (scale[offset:offset + height].cpu(), zero[offset:offset + height].cpu(),
                                            g_idx.cpu().clone())  # shared tensors would be deduplicated on save
                    rows.append({"layer": layer_index, "module": n,
                                 "loss": float(loss_rows[offset:offset + height].sum()) / nsamples,
                                 "samples": nsamples, "damp": damp})
                    offset += height
            start = clock("solve_s", start)
        start = time.perf_counter()
        for index, (hidden, kwargs) in enumerate(states):
            states[index] = (_layer_output(layer(hidden, **kwargs)), kwargs)
        start = clock("forward_s", start)
        layer.to("cpu")
        for subset in subsets:
            for n in subset:
                full_name = f"{prefix}.{layer_index}.{n}"
                linear = hf_model.get_submodule(full_name)
                scale, zero, g_idx = linear._fraudq_quant
                del linear._fraudq_quant
                create_quant_module(name=full_name, linear_cls=gptq_model.qlinear_kernel, bits=qcfg.runtime_bits,
                                    desc_act=qcfg.desc_act, dynamic=qcfg.dynamic, group_size=qcfg.group_size,
                                    module=hf_model, submodule=linear, sym=qcfg.sym, device=qcfg.device,
                                    lm_head_name=gptq_model.lm_head, pack_dtype=qcfg.pack_dtype,
                                    format=resolve_quant_format(qcfg.format, qcfg.method), register_buffers=False)
                qmodule = hf_model.get_submodule(full_name)
                pack_module(name=full_name, qModules={full_name: qmodule}, q_scales=scale, q_zeros=zero,
                            q_g_idx=g_idx, layers={full_name: linear}, quant_linear_cls=gptq_model.qlinear_kernel,
                            lock=lock, quantize_config=qcfg)
        clock("pack_s", start)
        if progress:
            progress(layer_index + 1, len(layers))
    return {"stages": {k: round(v, 3) for k, v in stages.items()}, "modules": rows,
            "batching": {"batch_tokens": batch_tokens, "batches": len(batches),
                         "padded_tokens": sum(b["input_ids"].numel() for b in batches),
                         "tokens": sum(int(b["keep"].numel()) for b in batches)}}


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
