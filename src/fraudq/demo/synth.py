"""Synthetic labelled Chinese dialogues, written from this project's own templates.

Tests and the demo train and evaluate on these so they never need the real data set. The pools share
vocabulary across labels on purpose (normal talk about banks, refunds and verification codes; scams that
open with small talk), so a model has to combine several cues rather than spot one keyword.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from fraudq.config import DEFAULT_INSTRUCTION
from fraudq.demo.phrases import (
    SURNAMES, GIVEN, BANKS, PLATFORMS, APPS, PRODUCTS, PLACES, DAYS, TIMES, CITIES, PROJECTS, RELATIVES, FRAUD_KINDS,
    INNOCENT_OPENERS, INNOCENT_VICTIM, VICTIM_LATE, DUAL_USE_REQUESTS, NORMAL_TOPICS, QUOTE_FRAMES, GENERIC_REPLIES,
)

def _name(rng: random.Random) -> tuple[str, str]:
    surname = rng.choice(SURNAMES)
    given = "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
    return surname + given, given


def _two_names(rng: random.Random) -> tuple[tuple[str, str], tuple[str, str]]:
    first = _name(rng)
    second = _name(rng)
    while second[0] == first[0]:
        second = _name(rng)
    return first, second


def _slots(rng: random.Random, victim: str, victim_given: str) -> dict[str, str]:
    amount = rng.choice([rng.randint(2, 99) * 100, rng.randint(1, 50) * 1000, rng.randint(100, 9999)])
    return {
        "amount": str(amount),
        "bank": rng.choice(BANKS),
        "platform": rng.choice(PLATFORMS),
        "app": rng.choice(APPS),
        "product": rng.choice(PRODUCTS),
        "place": rng.choice(PLACES),
        "day": rng.choice(DAYS),
        "time": rng.choice(TIMES),
        "city": rng.choice(CITIES),
        "project": rng.choice(PROJECTS),
        "relative": rng.choice(RELATIVES),
        "surname": rng.choice(SURNAMES),
        "num4": str(rng.randint(1000, 9999)),
        "victim": victim,
        "victim_given": victim_given,
    }


def _fraud_dialogue(rng: random.Random, turns: int) -> tuple[list[tuple[str, str]], str]:
    (scammer, _), (victim, victim_given) = _two_names(rng)
    slots = _slots(rng, victim, victim_given)
    kind = FRAUD_KINDS[rng.choice(sorted(FRAUD_KINDS))]
    n_scammer = (turns + 1) // 2
    # The request is what makes it a scam, so it is always said; other stages fill the remaining turns.
    stages = ["hook", "pressure", "request"]
    lines: list[str] = []
    if rng.random() < 0.3 and n_scammer >= 2:
        lines.append(rng.choice(INNOCENT_OPENERS))
    # "Pig butchering": weeks of ordinary chat, and the scam shows only in the last lines.
    if rng.random() < 0.25 and n_scammer - len(lines) >= 3:
        chat = NORMAL_TOPICS[rng.choice(["friends", "family", "shopping"])]
        lines += rng.sample(chat, min(len(chat), rng.randint(1, n_scammer - len(lines) - 2)))
    budget = n_scammer - len(lines)
    chosen = ["request"]
    for stage in ("hook", "pressure"):
        if len(chosen) < budget and rng.random() < 0.85:
            chosen.append(stage)
    while len(chosen) < budget:
        chosen.append(rng.choice(stages))
    chosen.sort(key=stages.index)
    used: set[str] = set()
    for stage in chosen:
        pool = [line for line in kind[stage] if line not in used] or kind[stage]
        if stage == "request" and "hook" in chosen and rng.random() < 0.25:
            pool = DUAL_USE_REQUESTS
        line = rng.choice(pool)
        used.add(line)
        lines.append(line)
    scam_lines = set(kind["hook"] + kind["pressure"] + kind["request"] + DUAL_USE_REQUESTS)
    out: list[tuple[str, str]] = []
    asked = hooked = False
    for i, line in enumerate(lines):
        out.append((scammer, line))
        asked = asked or line in kind["request"] or line in DUAL_USE_REQUESTS
        hooked = hooked or line in scam_lines
        if len(out) < turns:
            if i == 0 and lines[0] in INNOCENT_OPENERS:
                reply = rng.choice(INNOCENT_VICTIM)
            elif not hooked or (not asked and rng.random() < 0.3):
                reply = rng.choice(GENERIC_REPLIES)
            else:
                reply = rng.choice(kind["victim"] + (VICTIM_LATE if asked else []))
            out.append((victim, reply))
    out = out[:turns]
    return [(who, text.format_map(slots)) for who, text in out], scammer


def _normal_dialogue(rng: random.Random, turns: int) -> list[tuple[str, str]]:
    topic = rng.choice(sorted(NORMAL_TOPICS))
    if topic == "meeting" and rng.random() < 0.5:
        numbers = rng.sample(range(1, 9), rng.choice((2, 3)))
        speakers = [f"发言人{k}" for k in numbers]
    else:
        (a, _), (b, _) = _two_names(rng)
        speakers = [a, b]
        if rng.random() < 0.25:
            third, _ = _name(rng)
            if third not in speakers:
                speakers.append(third)
    slots = _slots(rng, speakers[1], speakers[1][1:])
    # Half the time borrow a line from another topic, as real conversations drift.
    pool = list(NORMAL_TOPICS[topic])
    if rng.random() < 0.5:
        pool.append(rng.choice(NORMAL_TOPICS[rng.choice(sorted(NORMAL_TOPICS))]))
    if topic == "scam_gossip":
        for _ in range(rng.randint(0, 2)):
            kind = FRAUD_KINDS[rng.choice(sorted(FRAUD_KINDS))]
            head, tail = rng.choice(QUOTE_FRAMES)
            quoted = rng.choice(kind[rng.choice(["hook", "pressure", "request"])]).rstrip("。！")
            pool.append(head + quoted + tail)
    if topic in ("friends", "family", "work") and rng.random() < 0.4:
        pool.append(rng.choice(DUAL_USE_REQUESTS))
    pool = list(dict.fromkeys(pool))
    rng.shuffle(pool)
    out: list[tuple[str, str]] = []
    last = None
    for i in range(turns):
        who = rng.choice([s for s in speakers if s != last]) if len(speakers) > 2 else speakers[i % 2]
        last = who
        text = pool.pop() if pool and (i == 0 or rng.random() < 0.7) else rng.choice(GENERIC_REPLIES)
        out.append((who, text.format_map(slots)))
    return out


def generate_dialogues(n: int, seed: int) -> list[dict]:
    """n rows, half fraud (rounded down), shuffled; the same (n, seed) always gives the same rows."""
    rng = random.Random(seed)
    labels = [i < n // 2 for i in range(n)]
    rng.shuffle(labels)
    rows = []
    for i, label in enumerate(labels):
        turns = rng.randint(3, 10)
        if label:
            lines, fraud_speaker = _fraud_dialogue(rng, turns)
        else:
            lines, fraud_speaker = _normal_dialogue(rng, turns), ""
        rows.append(
            {
                "id": f"synth-{seed}-{i:06d}",
                "instruction": DEFAULT_INSTRUCTION,
                "input": "\n".join(f"{who}: {text}" for who, text in lines),
                "label": label,
                "fraud_speaker": fraud_speaker,
            }
        )
    return rows


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_jsonl(rows), encoding="utf-8")
