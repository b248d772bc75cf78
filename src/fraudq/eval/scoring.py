"""One batch in, scores or answers out: padding, the shared prompt prefix and packed rows live here.

Score mode gives log P(true word) - log P(false word) after the answer prefix; generate mode decodes
greedily. `Scorer` holds the loaded model and the choices eval made for it, so a batch is one call.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass

from fraudq.batching import pad_rows
from fraudq.eval import packed

# Below this many shared tokens the saving is small next to the per-batch cache copy (a chosen bound, not measured).
SHARED_PREFIX_MIN_TOKENS = 16


def parse_answer(text: str) -> bool | None:
    """The JSON answer, tolerating a ```json fence; None when it is not a clear true/false."""
    fenced = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", text, flags=re.S)
    body = fenced.group(1) if fenced else text
    match = re.search(r"\{.*?\}", body, flags=re.S)
    if not match:
        return None
    try:
        value = json.loads(match.group(0)).get("is_fraud")
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def left_pad(sequences: list[list[int]], pad_id: int, device: str):
    ids, mask = pad_rows(sequences, pad_id, left=True)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def shared_prefix_tokens(prompt_ids: list[list[int]]) -> list[int]:
    """The longest token prefix of every prompt, or [] when it is too short to be worth sharing."""
    # Each row keeps at least one token of its own, so its logits come from its own forward.
    tokens = list(os.path.commonprefix(prompt_ids))[: min(map(len, prompt_ids)) - 1]
    return tokens if len(tokens) >= SHARED_PREFIX_MIN_TOKENS else []


class SharedPrefix:
    """The prompt tokens every row starts with (chat template, system prompt, instruction), run once.

    Score mode then feeds each batch only the rows' own tokens, attending to this prefix's keys and values
    through a KV cache: on the anti-fraud test set, 44 of the ~160 tokens of every prompt.
    """

    def __init__(self, model, tokens: list[int], device: str):
        import torch

        self.tokens = tokens
        self.config = model.config
        with torch.inference_mode():
            cache = model(input_ids=torch.tensor([tokens], device=device), use_cache=True).past_key_values
        self.layers = [(keys, values) for keys, values, *_ in cache]

    @functools.cached_property
    def packed_layers(self):
        """The same keys and values as (tokens, kv heads, head_dim), the layout of a packed batch."""
        return [(keys[0].transpose(0, 1).contiguous(), values[0].transpose(0, 1).contiguous())
                for keys, values in self.layers]

    def strip(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        return [ids[len(self.tokens):] for ids in prompt_ids]

    def cache_for(self, rows: int):
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                            for k, v in self.layers], config=self.config)


@dataclass
class Scorer:
    """A loaded model and how eval runs it. `packed_kernel` is what packed.enable chose (None: padded rows);
    `prefix` is the shared prompt prefix, run once (None: every row runs whole)."""

    model: object
    tokenizer: object
    device: str
    mode: str
    candidates: list[list[int]]  # token ids of the true word and of the false word
    max_new_tokens: int
    packed_kernel: str | None = None
    prefix: SharedPrefix | None = None

    def __call__(self, prompt_ids: list[list[int]]):
        if self.mode == "score":
            return self.score(prompt_ids)
        return self.generate(prompt_ids)

    def logits(self, sequences: list[list[int]], keep: int):
        """The model's logits at the last `keep` positions of each row: (rows, keep, vocab).

        With a prefix, `sequences` are the rows after it. Packed, the rows run as one sequence; otherwise left
        padding sits between the prefix and each row's own tokens, where the attention mask hides it.
        """
        import torch

        prefix, device = self.prefix, self.device
        if self.packed_kernel:
            batch = packed.PackedBatch(sequences, keep, device, prefix.packed_layers if prefix else None,
                                       len(prefix.tokens) if prefix else 0, self.packed_kernel)
            with torch.inference_mode(), packed.attention(self.model):
                logits = self.model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                                    logits_to_keep=batch.kept, packed=batch).logits
            return logits.view(len(sequences), keep, -1)
        ids, mask, positions = left_pad(sequences, self.tokenizer.pad_token_id, device)
        if prefix is None:
            # No KV cache: filling one for a single forward cost 3x the forward itself at 16k tokens (H100).
            extra = {"use_cache": False}
        else:
            mask = torch.cat([mask.new_ones((len(sequences), len(prefix.tokens))), mask], dim=1)
            positions = positions + len(prefix.tokens)
            extra = {"use_cache": True, "past_key_values": prefix.cache_for(len(sequences))}
        with torch.inference_mode():
            return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep,
                              **extra).logits

    def score(self, prompt_ids: list[list[int]]):
        """log P(true words) - log P(false words) after the answer prefix, summed over each word's tokens.

        Returns a tensor on the model's device: converting per batch would stop the CPU from queueing the next
        batch while the GPU works.
        """
        import torch

        rows = self.prefix.strip(prompt_ids) if self.prefix else prompt_ids
        candidates = self.candidates
        if all(len(cand) == 1 for cand in candidates):
            # The usual case (" true" / " false" are one token each): one forward pass serves both words, and the
            # log-softmax's normaliser is the same for both, so the difference of the two logits is the score.
            last = self.logits(rows, 1)[:, -1, :]
            return last[:, candidates[0][0]].float() - last[:, candidates[1][0]].float()
        totals = []
        for cand in candidates:
            logits = self.logits([p + cand for p in rows], len(cand) + 1)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            # Position j of the kept window predicts cand[j]; the window's last position predicts past the word.
            column = torch.tensor(cand, device=logprobs.device).view(1, -1, 1).expand(len(rows), -1, -1)
            totals.append(logprobs[:, : len(cand), :].gather(-1, column).squeeze(-1).sum(-1))
        return totals[0] - totals[1]

    def generate(self, prompt_ids: list[list[int]]) -> list[str]:
        import torch

        tokenizer = self.tokenizer
        ids, mask, _ = left_pad(prompt_ids, tokenizer.pad_token_id, self.device)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                      do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                      eos_token_id=tokenizer.eos_token_id)
        return tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_batches(batches: list[list[int]], work, log) -> list[tuple[list[int], object]]:
    """Runs `work(indices)` per batch, returning (indices, values) pairs; on out-of-memory it halves the batch."""
    import torch

    results = []
    pending = list(reversed(batches))
    while pending:
        batch = pending.pop()
        try:
            values = work(batch)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled; everything else is re-raised
            if not is_out_of_memory(exc) or len(batch) == 1:
                raise
            half = len(batch) // 2
            log(f"out of memory on a batch of {len(batch)} rows; retrying as {half} + {len(batch) - half}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            pending.extend([batch[half:], batch[:half]])
            continue
        results.append((batch, values))
    return results
