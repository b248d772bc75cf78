"""Score mode's forward with a batch's rows packed into one sequence: no padding tokens, no attention mask.

On the anti-fraud test set, length-sorted left-padded batches of 32k tokens held 11% padding, and the padding
mask kept attention off its fastest kernel (a masked kernel, and key/value heads copied for grouped-query
attention). Packed, each row is a stretch of one sequence with its own positions, and attention lets each row
see the shared prompt prefix and its own earlier tokens only: through flash attention's variable-length kernel
on CUDA, checked once per process against a per-row reference, or row by row elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from itertools import accumulate, chain

ATTENTION = "fraudq_packed"  # the name registered with transformers' AttentionInterface


def unsupported_reason(model) -> str | None:
    """Why packing would be wrong for this model, or None when it is safe."""
    if not getattr(model, "_supports_attention_backend", False):
        return "its attention does not go through transformers' attention interface"
    if any(kind != "full_attention" for kind in getattr(model.config, "layer_types", None) or []):
        return "it has sliding-window attention layers"
    return None


def enable(model) -> str | None:
    """Checks that the model accepts `packed_attention`; returns the kernel packed batches will use (a key of
    VARLEN_KERNELS, or "per-row"), or None when the model cannot be packed. The model itself is left as it was."""
    from transformers import AttentionInterface

    if unsupported_reason(model):
        return None
    AttentionInterface.register(ATTENTION, packed_attention)
    with attention(model):
        model.set_attn_implementation(ATTENTION)  # transformers' own validation of the name
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    # The check runs at the model's own softmax scale: a torch whose kernel takes none would fail it.
    scale = next((m.scaling for m in model.modules() if hasattr(m, "scaling") and hasattr(m, "layer_idx")),
                 head_dim ** -0.5)
    return _kernel_for(str(model.device), model.dtype, heads, getattr(config, "num_key_value_heads", heads), head_dim,
                       scale)


class PackedBatch:
    """One forward's rows as a single sequence, and what attention needs to keep the rows apart."""

    def __init__(self, rows: list[list[int]], keep: int, device: str, prefix_layers=None, prefix_len: int = 0,
                 kernel: str = "per-row"):
        import numpy as np
        import torch

        # numpy, not Python loops: this runs on the CPU between two forwards, where the GPU may wait for it; a
        # 32k-token batch took 26 ms as list comprehensions and takes 1.5 ms so (docs/BENCHMARKS.md).
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        starts_q = np.concatenate([[0], np.cumsum(lengths)])
        starts_k = np.concatenate([[0], np.cumsum(lengths + prefix_len)])
        tokens = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(starts_q[-1]))
        positions = prefix_len + np.arange(len(tokens)) - np.repeat(starts_q[:-1], lengths)
        # Logits only at each row's last `keep` positions, in row order.
        kept = (starts_q[1:, None] - keep + np.arange(keep)).ravel()
        key_index = np.zeros(0, dtype=np.int64)
        if prefix_layers:
            # Keys per row: the prefix's (indices 0..P-1 of cat(prefix, packed)), then the row's own (P + packed index).
            key_offset = np.arange(starts_k[-1]) - np.repeat(starts_k[:-1], lengths + prefix_len)
            key_index = np.where(key_offset < prefix_len, key_offset,
                                 np.repeat(starts_q[:-1], lengths + prefix_len) + key_offset)
        parts = (tokens, positions, kept, key_index, starts_q, starts_k)
        host = torch.from_numpy(np.concatenate(parts))
        if device.startswith("cuda"):
            # One copy from page-locked memory that does not wait for the GPU: a plain copy would stall this
            # thread until the previous batch's forward has finished, leaving the GPU idle while the next
            # forward is being queued.
            host = host.pin_memory()
        flat = host.to(device, non_blocking=True)
        self.input_ids, self.position_ids, self.kept, key_index, cu_q, cu_k = flat.split([len(p) for p in parts])
        self.input_ids, self.position_ids = self.input_ids.view(1, -1), self.position_ids.view(1, -1)
        self.key_index = key_index if prefix_layers else None
        self.cu_q, self.cu_k = cu_q.int(), cu_k.int()
        self.starts_q, self.starts_k = starts_q.tolist(), starts_k.tolist()
        self.max_q, self.max_k = int(lengths.max()), prefix_len + int(lengths.max())
        self.prefix_layers = prefix_layers
        self.kernel = kernel

    def attend(self, q, k, v, scale: float | None):
        """q (tokens, heads, dim); k, v (keys of every row, kv heads, dim) → (tokens, heads, dim)."""
        if self.kernel in VARLEN_KERNELS:
            return _varlen(VARLEN_KERNELS[self.kernel])(q, k, v, self.cu_q, self.cu_k, self.max_q, self.max_k, scale)
        return _per_row(q, k, v, self.starts_q, self.starts_k, scale)


@contextlib.contextmanager
def attention(model):
    """Within: the model's attention is `packed_attention`. Only packed forwards run here: with no mask
    registered for it, transformers builds none, so a padded batch would silently attend to its padding."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        model.config._attn_implementation = previous


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, packed=None, **kwargs):
    """transformers' attention hook for a packed batch (`packed`, passed through the model's forward kwargs)."""
    if packed is None or kwargs.get("sliding_window") is not None or query.shape[0] != 1:
        raise RuntimeError("packed attention needs one packed sequence and no sliding window")
    import torch

    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
    if packed.prefix_layers:
        prefix_keys, prefix_values = packed.prefix_layers[module.layer_idx]
        k = torch.cat([prefix_keys, k]).index_select(0, packed.key_index)
        v = torch.cat([prefix_values, v]).index_select(0, packed.key_index)
    return packed.attend(q, k, v, scaling).unsqueeze(0), None


def _per_row(q, k, v, starts_q: list[int], starts_k: list[int], scale: float | None):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    out = torch.empty_like(q)
    for q0, q1, k0, k1 in zip(starts_q, starts_q[1:], starts_k, starts_k[1:]):
        # Lower-right causal: the row's i-th token sees every prefix key and its own tokens up to i.
        rows = [t.transpose(0, 1).unsqueeze(0) for t in (q[q0:q1], k[k0:k1], v[k0:k1])]
        out[q0:q1] = F.scaled_dot_product_attention(*rows, attn_mask=causal_lower_right(q1 - q0, k1 - k0),
                                                    scale=scale, enable_gqa=True)[0].transpose(0, 1)
    return out


@functools.cache
def _varlen(repeat_kv: bool = False):
    """torch's variable-length flash attention, called the way this torch version spells causal and GQA.

    Flash attention reads grouped key/value heads as they are. `repeat_kv` first copies them to one per query head,
    for a torch whose function refuses fewer: on the qwen2-1.5b shape those copies took 7 ms of a 168 ms batch
    (docs/BENCHMARKS.md).
    """
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    # torch 2.10 took is_causal; later versions express causal as window (-1, 0). Either is aligned to the
    # bottom right, as flash attention's is: what a row that follows the prefix needs (checked in _kernel_for).
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    gqa = {"enable_gqa": True} if "enable_gqa" in params else {}

    def call(q, k, v, cu_q, cu_k, max_q, max_k, scale):
        if repeat_kv and k.shape[1] != q.shape[1]:
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        extra = {"scale": scale} if scale is not None and "scale" in params else {}
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **causal, **gqa, **extra)

    return call


# PackedBatch's kernel name → how _varlen is called; "per-row" is the reference itself.
VARLEN_KERNELS = {"varlen": False, "varlen-repeat-kv": True}


@functools.cache
def _kernel_for(device: str, dtype, heads: int, kv_heads: int, head_dim: int, scale: float) -> str:
    if not device.startswith("cuda"):
        return "per-row"
    return _first_varlen_kernel(device, dtype, heads, kv_heads, head_dim, scale)


def _first_varlen_kernel(device: str, dtype, heads: int, kv_heads: int, head_dim: int, scale: float) -> str:
    """The first of VARLEN_KERNELS that exists here and matches the per-row reference on this shape, else
    "per-row"."""
    for name, repeat_kv in VARLEN_KERNELS.items():
        try:
            if _matches_reference(_varlen(repeat_kv), device, dtype, heads, kv_heads, head_dim, scale):
                return name
        except (ImportError, RuntimeError, TypeError, ValueError, NotImplementedError):  # e.g. no flash kernel here
            continue
    return "per-row"


def _matches_reference(call, device: str, dtype, heads: int, kv_heads: int, head_dim: int, scale: float) -> bool:
    """`call` (the signature of _varlen's) against _per_row in float32, on three rows after a 5-token prefix."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(0)
    lengths, prefix_len = [7, 1, 20], 5
    starts_q = [0, *accumulate(lengths)]
    starts_k = [0, *accumulate(prefix_len + n for n in lengths)]

    def sample(rows, n_heads):
        return torch.randn(rows, n_heads, head_dim, generator=generator).to(device, dtype)

    q, k, v = sample(starts_q[-1], heads), sample(starts_k[-1], kv_heads), sample(starts_k[-1], kv_heads)
    expected = _per_row(q.float(), k.float(), v.float(), starts_q, starts_k, scale)
    got = call(q, k, v, torch.tensor(starts_q, dtype=torch.int32, device=device),
               torch.tensor(starts_k, dtype=torch.int32, device=device), max(lengths), prefix_len + max(lengths), scale)
    return (got.float() - expected).abs().max().item() < 2e-2
