"""The reference classifier's training loop: length-sorted batches, AdamW with warmup and cosine decay, and a loss
on the answer tokens only."""

from __future__ import annotations

import math

import torch


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(encoded, idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(encoded[i][0]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    labels = torch.full((len(idx), width), -100, dtype=torch.long)
    for row, i in enumerate(idx):
        seq, start = encoded[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, start : len(seq)] = torch.tensor(seq[start:])
    return ids, mask, labels


def answer_loss(model, ids, mask, labels) -> torch.Tensor:
    # lm_head only on the few positions that predict answer tokens: the qwen vocab is 151,936 wide.
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep]).float()
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def optimizer_and_schedule(model, lr: float, steps: int):
    """AdamW, with no weight decay on vectors (norms, biases), and its learning-rate schedule over `steps`."""
    warmup = max(1, steps // 10)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    # Linear warmup, then cosine down to a tenth of the peak.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / warmup
        if s < warmup
        else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))),
    )
    return opt, sched


def run_steps(model, opt, sched, encoded, batches: list[list[int]], steps: int, rng, device: str, pad_id: int,
              log) -> list[dict]:
    """`steps` optimizer steps, each pass over `batches` in an order shuffled by `rng`; returns the mean loss of
    every logged window of steps."""
    autocast = device.startswith("cuda")
    log_every = max(1, min(20, steps // 20))
    history: list[dict] = []
    window: list[float] = []
    order: list[list[int]] = []
    for step in range(steps):
        if not order:
            order = list(batches)
            rng.shuffle(order)
        ids, mask, labels = (t.to(device) for t in collate(encoded, order.pop(), pad_id))
        window.append(_step(model, opt, sched, ids, mask, labels, autocast))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            mean = sum(window) / len(window)
            window = []
            epoch = (step + 1) / len(batches)
            history.append({"step": step + 1, "epoch": round(epoch, 3), "loss": round(mean, 5)})
            log(f"step {step + 1}/{steps} epoch {epoch:.2f} loss {mean:.4f} lr {sched.get_last_lr()[0]:.2e}")
    return history


def _step(model, opt, sched, ids, mask, labels, autocast: bool) -> float:
    """One update on one batch; returns its loss."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = answer_loss(model, ids, mask, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()
