"""Length-sorted batching, shared by eval and by the GPTQ engine's calibration forwards."""

from __future__ import annotations


def make_batches(lengths: list[int], batch_size: int | None, token_budget: int) -> list[list[int]]:
    """Row indices grouped by similar length, longest first, so padding wastes little and OOM shows early."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        full = len(current) == batch_size if batch_size else (len(current) + 1) * width > token_budget
        if current and full:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
