"""Eval forward speed-ups on CUDA (measured in docs/BENCHMARKS.md; reasons in docs/DESIGN.md).

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
import sys

from fraudq.errors import BadInput

def check_choice(choice: str, device: str) -> None:
    """Before the model loads: liger where it cannot run (config.validate checked the value itself)."""
    if choice == "liger" and not device.startswith("cuda"):
        raise BadInput(f"fused_kernels = liger needs a CUDA device, not {device}; use auto or off")


@contextlib.contextmanager
def fused_kernels(model, choice: str, device: str):
    """Within: the model's elementwise ops are liger-kernel's; yields "liger", or None if nothing changed.

    Liger swaps classes and functions in the model's transformers module, process-wide, and the rotary patch
    below replaces one more; every name of that module is put back on exit, so later models are untouched.
    """
    modeling = sys.modules.get(type(model).__module__)
    saved = dict(vars(modeling)) if modeling is not None else {}
    try:
        yield apply_fused_kernels(model, choice, device)
    finally:
        for name, value in saved.items():
            if getattr(modeling, name, None) is not value:
                setattr(modeling, name, value)


def apply_fused_kernels(model, choice: str, device: str) -> str | None:
    """Patches the loaded model's elementwise ops with liger-kernel's; returns "liger", or None if nothing changed.

    "auto" uses them on CUDA when liger-kernel is installed and knows the architecture; "liger" insists.
    Use it through `fused_kernels`, which undoes the module-level patches.
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
