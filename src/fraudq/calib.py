"""Building the calibration set: chat-template text, truncated token ids, written once and reused."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from fraudq import prompts
from fraudq.atomic import atomic_write_json, atomic_write_text, check_target, check_writable, hold
from fraudq.config import Config
from fraudq.console import shown
from fraudq.data import Row, file_sha256, read_jsonl
from fraudq.errors import BadInput
from fraudq.checkpoint import inspect_model, load_tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """Token ids are only meaningful for the tokenizer that made them; quantize checks this."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()


def meta_path(calib_path: Path) -> Path:
    return calib_path.with_name(calib_path.name + ".meta.json")


def row_messages(row: Row, default_instruction: str) -> list[dict]:
    if row.messages is not None:
        return row.messages
    instruction = row.instruction if row.instruction is not None else default_instruction
    return prompts.labelled_calib_messages(instruction, row.input, row.label)


def is_empty(row: Row) -> bool:
    if row.messages is not None:
        return not any(m["content"].strip() for m in row.messages)
    return not row.input.strip()


def percentile(sorted_values: list[int], q: float) -> int:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def build_calibration(cfg: Config, data: str, out: Path, force: bool = False, skip_invalid: bool = False,
                      log=print, reads=()) -> dict:
    """`reads`: further inputs of the run (the config file) that `out` must not replace."""
    out = Path(out)
    reads = (data, cfg.model, *reads)
    check_target(out, reads=reads, names=(meta_path(out).name,) if out.name else ())
    check_target(meta_path(out), reads=reads)  # written too: it must not be an input either
    with hold(out):
        check_writable(out, force)
        return _build(cfg, data, out, skip_invalid, log)


def _build(cfg: Config, data: str, out: Path, skip_invalid: bool, log) -> dict:
    dataset = read_jsonl(data, need_label=True, skip_invalid=skip_invalid)
    info = inspect_model(cfg.model, cfg.trust_remote_code, cfg.allow_pickle)
    tokenizer = load_tokenizer(info, cfg.trust_remote_code)
    kept_rows = [row for row in dataset.rows if not is_empty(row)]
    empty = len(dataset.rows) - len(kept_rows)
    rendered = prompts.render_untrusted(tokenizer, [row_messages(row, cfg.instruction) for row in kept_rows],
                                        add_generation_prompt=False, source=str(info.path))
    texts = list(dict.fromkeys(rendered))  # the first of each distinct text, in file order
    duplicate = len(rendered) - len(texts)
    if not texts:
        raise BadInput(f"{data}: no rows left to calibrate on ({empty} empty, {duplicate} duplicate)")
    texts, not_sampled = _sample(texts, cfg.calib_n, cfg.seed)

    # The chat template already holds every special token, so the tokenizer must not add more.
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    token_ids = [ids[: cfg.max_len] for ids in encoded]
    dropped = {"invalid": dataset.skipped, "empty": empty, "duplicate": duplicate, "not_sampled": not_sampled}
    stats = _stats(dataset, dropped, token_ids, truncated=sum(len(ids) > cfg.max_len for ids in encoded))
    meta = {
        "stats": stats,
        "data_sha256": dataset.sha256,
        "model": str(info.path),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "n": cfg.calib_n,
        "max_len": cfg.max_len,
        "seed": cfg.seed,
    }
    _write(out, meta, token_ids)
    log(format_stats(stats, out))
    return meta


def _sample(texts: list[str], n: int, seed: int) -> tuple[list[str], int]:
    """`n` of the texts, in file order (all of them when n is 0 or not below their count), and how many were left out."""
    if not n or n >= len(texts):
        return texts, 0
    keep = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in keep], len(texts) - len(keep)


def _stats(dataset, dropped: dict, token_ids: list[list[int]], truncated: int) -> dict:
    lengths = sorted(len(ids) for ids in token_ids)
    return {
        "rows_read": len(dataset.rows) + dataset.skipped,
        "rows_kept": len(token_ids),
        "dropped": dropped,
        "format": dataset.format,
        "tokens": {
            "total": sum(lengths),
            "mean": round(sum(lengths) / len(lengths), 1),
            "p50": percentile(lengths, 0.5),
            "p99": percentile(lengths, 0.99),
            "max": lengths[-1],
        },
        "truncated": truncated,
    }


def _write(out: Path, meta: dict, token_ids: list[list[int]]) -> None:
    body = "".join(json.dumps({"input_ids": ids}) + "\n" for ids in token_ids)
    # The meta names the exact body it describes, so a run killed between the two renames leaves a pair
    # that read_calibration refuses; the meta goes first, so a killed first run leaves no calibration file.
    meta["calib_sha256"] = hashlib.sha256(body.encode("utf-8")).hexdigest()
    atomic_write_json(meta_path(out), meta)
    atomic_write_text(out, body)


def format_stats(stats: dict, out: Path) -> str:
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items())
    tokens = stats["tokens"]
    return (
        f"calibration set: {stats['rows_read']} rows read ({stats['format']}), {stats['rows_kept']} kept; "
        f"dropped: {dropped}\n"
        f"tokens per row: mean {tokens['mean']}, p50 {tokens['p50']}, p99 {tokens['p99']}, max {tokens['max']}; "
        f"{stats['truncated']} truncated; {tokens['total']} tokens in all\n"
        f"written to {shown(out)}"
    )


def _check_ids(ids, vocab_size: int | None, where: str) -> None:
    if not ids or not all(type(i) is int and i >= 0 for i in ids):
        raise ValueError("bad token ids")
    # A hand-edited id past the embedding would fail deep inside GPTQ, after the model has loaded.
    if vocab_size is not None and max(ids) >= vocab_size:
        raise BadInput(f"{where}: token id {max(ids)} is outside the model's vocabulary of {vocab_size}; "
                       "rebuild it with 'fraudq calib'")


def read_calibration(path: Path, vocab_size: int | None = None) -> tuple[list[list[int]], dict]:
    """Token ids (each below `vocab_size` when given) plus the metadata written beside them; a damaged file is
    a one-line error."""
    if not path.is_file():
        raise BadInput(f"calibration file {path} does not exist; run 'fraudq calib' first")
    if not meta_path(path).is_file():
        raise BadInput(f"{path} has no {meta_path(path).name} beside it; rebuild it with 'fraudq calib'")
    rows = []
    try:
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            ids = json.loads(line)["input_ids"]
            _check_ids(ids, vocab_size, f"{path}:{line_no}")
            rows.append(ids)
        meta = json.loads(meta_path(path).read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise BadInput(f"{path} is damaged (line {len(rows) + 1}); rebuild it with 'fraudq calib'") from None
    if not rows:
        raise BadInput(f"calibration file {path} is empty; rebuild it with 'fraudq calib'")
    body_sha = file_sha256(path)
    if not isinstance(meta, dict) or meta.get("calib_sha256", body_sha) != body_sha:
        raise BadInput(f"{path} does not match {meta_path(path).name} (an interrupted 'fraudq calib'?); "
                       "rebuild it with 'fraudq calib --force'")
    return rows, meta
