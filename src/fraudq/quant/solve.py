"""GPTQ's column solve with GPTQModel's math, for one (possibly stacked) weight, and its CUDA-graph block.

The engine (engine.py) decides what is solved and in which order; this module only solves.
"""

from __future__ import annotations

import torch

from fraudq.errors import BadInput
from fraudq.quant import gptqmodel_api

BLOCK = 128  # GPTQModel's lazy-batch width


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
    Q1 = torch.zeros_like(W1)
    Err1 = torch.zeros_like(W1)
    Losses1 = torch.zeros_like(W1)
    for i in range(W1.shape[1]):
        w = W1[:, i]
        d = Hinv1[i, i]
        q = gptqmodel_api.quantize_columns(w.unsqueeze(1), scale_cols[:, i:i + 1], zero_cols[:, i:i + 1], maxq,
                                           groupwise).flatten()
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
    rows, columns = weight.shape
    group_size = qcfg.group_size
    quantizer = gptqmodel_api.quantizer(qcfg, name)
    W = weight.to(device=H.device, dtype=torch.float32).clone()
    quantizer.find_params(W, weight=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv, damp = gptqmodel_api.hessian_inverse(qcfg, name, H)
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
