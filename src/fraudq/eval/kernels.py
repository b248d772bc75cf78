"""Eval forward speed-ups on CUDA, both measured on an H100 (docs/BENCHMARKS.md, fourth session).

- Fused elementwise kernels from liger-kernel (RMSNorm, SiLU * up, and the rotary embedding of one-sequence
  forwards; one Triton kernel each): in eager mode these ops ran as many small kernels per layer, nearly half
  of the forward's CUDA time. `torch.compile` fuses the same ops, but its cold start costs more than a
  2,349-row eval takes.
- Attention without cuDNN: PyTorch picks cuDNN's SDPA on H100, which builds a plan for every new shape
  (tens to hundreds of milliseconds), and every eval batch has a new shape.
"""

from __future__ import annotations

import contextlib
import inspect

from fraudq.errors import BadInput

FUSED_KERNELS = ("auto", "liger", "off")


def check_choice(choice: str, device: str) -> None:
    """Before the model loads: a bad value, or liger where it cannot run."""
    if choice not in FUSED_KERNELS:
        raise BadInput(f"fused_kernels must be one of {', '.join(FUSED_KERNELS)}, got {choice!r}")
    if choice == "liger" and not device.startswith("cuda"):
        raise BadInput(f"fused_kernels = liger needs a CUDA device, not {device}; use auto or off")


def apply_fused_kernels(model, choice: str, device: str) -> str | None:
    """Patches the loaded model's elementwise ops with liger-kernel's; returns "liger", or None if nothing changed.

    "auto" uses them on CUDA when liger-kernel is installed and knows the architecture; "liger" insists.
    Liger also swaps the RMSNorm and MLP classes in transformers' module for its own, process-wide: models built
    later in the same process get them too (fraudq evaluates after it quantizes, never before).
    """
    check_choice(choice, device)
    if choice == "off" or not device.startswith("cuda"):
        return None
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        if choice == "liger":
            raise BadInput("fused_kernels = liger needs liger-kernel: pip install 'fraudq[gpu]'") from None
        return None
    model_type = getattr(model.config, "model_type", None)
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        if choice == "liger":
            raise BadInput(f"liger-kernel has no kernels for model type {model_type!r}; use fused_kernels = auto or off")
        return None
    # Inference only: its loss kernels would replace the model's forward, which eval needs for logits_to_keep.
    # Its rotary kernel is not patched in as liger does it (see _rotary_for_single_sequences).
    wanted = {"rope": False, "rms_norm": True, "swiglu": True, "cross_entropy": False,
              "fused_linear_cross_entropy": False}
    accepted = inspect.signature(apply).parameters
    apply(model=model, **{key: value for key, value in wanted.items() if key in accepted})
    if "rope" in accepted:
        _rotary_for_single_sequences(model)
    return "liger"


def _rotary_for_single_sequences(model) -> None:
    """liger's rotary kernel for one-sequence forwards (packed score batches, the shared prefix), the model's
    own rotary code for the rest. The kernel takes the batch size as a compile-time constant, so padded batches
    and generate's decode steps would compile it again for every new row count; a packed batch is always one."""
    import sys

    modeling = sys.modules.get(type(model).__module__)
    own = getattr(modeling, "apply_rotary_pos_emb", None)
    if own is None or getattr(own, "fraudq_single_sequence", False):
        return
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if q.shape[0] == 1 and cos.shape[0] == 1:
            return liger_rotary_pos_emb(q, k, cos, sin, *args, **kwargs)
        return own(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.fraudq_single_sequence = True
    modeling.apply_rotary_pos_emb = apply_rotary_pos_emb


def attention_backends(device: str, cudnn_attention: bool):
    """A context in which scaled_dot_product_attention may not choose cuDNN (unless `cudnn_attention`)."""
    if not device.startswith("cuda") or cudnn_attention:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
