"""Length-sorted batching, shared by eval and by the GPTQ engine's calibration forwards."""

from __future__ import annotations


def make_batches(lengths: list[int], batch_size: int | None, token_budget: int,
                 padded: bool = True) -> list[list[int]]:
    """Row indices grouped by similar length, longest first, so padding wastes little and OOM shows early.

    The budget counts a padded batch as rows x its longest row, a packed one (`padded=False`) as its rows' sum.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current, total = [], [], 0
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        cost = (len(current) + 1) * width if padded else total + lengths[index]
        full = len(current) == batch_size if batch_size else cost > token_budget
        if current and full:
            batches.append(current)
            current, total = [], 0
        current.append(index)
        total += lengths[index]
    if current:
        batches.append(current)
    return batches
