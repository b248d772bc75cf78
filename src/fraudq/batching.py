"""Length-sorted batching and padding, shared by eval and by the GPTQ engine's calibration forwards."""

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


def pad_rows(sequences: list[list[int]], pad_id: int, left: bool = True):
    """(ids, mask) of `sequences` padded to one width. Left padding puts every row's last token at the end,
    so logits_to_keep can cut the lm_head work; the GPTQ engine pads on the right."""
    import torch

    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask
