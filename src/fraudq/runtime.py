"""The process's environment: library settings, the device, the CUDA allocator, peak memory and sizes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from fraudq.errors import BadInput, NotAvailable


def setup_environment() -> None:
    """Settings GPTQModel and the hub client read at import time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # GPTQModel's CPU pool fails when it asks for more workers than there are cores.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def keep_cuda_allocator() -> None:
    """Before eval touches CUDA: keeps the allocator's defaults, which GPTQModel's import would replace.

    Its settings slow eval's changing batch shapes (docs/DESIGN.md); a setting the user made, under either name,
    is kept.
    """
    if not os.environ.get("PYTORCH_ALLOC_CONF"):
        os.environ["PYTORCH_ALLOC_CONF"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or "expandable_segments:False"


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def resolve_device(device: str, purpose: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NotAvailable(f"{purpose} asked for CUDA, but this machine has no GPU; pass --device cpu (small models only)")
    if device != "cpu" and not device.startswith("cuda"):
        raise BadInput(f"unknown device {device!r}; use cuda or cpu")
    return device


def peak_memory(device: str) -> dict:
    """Peak resident memory of this process, and peak GPU memory allocated since the last reset."""
    import resource

    import torch

    peak = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)}
    if device.startswith("cuda"):
        peak["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    return peak


def compute_dtype(device: str, quantized: bool, setting: str = "auto"):
    """The dtype a model computes in. GPTQ kernels compute in fp16 on CUDA and bf16 on CPU (its CPU kernels need
    16-bit); an unquantized model follows them unless `setting` names a dtype, so the baseline rounds as they do."""
    import torch

    kernel = torch.float16 if device.startswith("cuda") else torch.bfloat16
    if quantized or setting == "auto":
        return kernel
    return getattr(torch, setting)


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


@contextlib.contextmanager
def default_stop_signals():
    """SIGTERM and SIGHUP at their defaults for the duration: vLLM manages its engine processes with these
    signals itself, and fraudq's own handlers (exits.stop_signals_as_exceptions) stopped a run that was ending."""
    import signal

    previous = {signum: signal.signal(signum, signal.SIG_DFL) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
