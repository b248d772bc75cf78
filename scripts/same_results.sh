#!/usr/bin/env bash
# Do two commits of fraudq write the same checkpoints and predictions? For refactors that must change nothing.
# Usage: scripts/same_results.sh REV_A REV_B [WORK_DIR]
# Builds one tiny demo model and its data with REV_B, then at each commit: calib, quantize 8 and 4 on CPU,
# eval of the original, int8 and int4 (score mode). Prints the files that differ; exit 0 when none do.
set -euo pipefail
a=${1:?usage: same_results.sh REV_A REV_B [WORK_DIR]}
b=${2:?usage: same_results.sh REV_A REV_B [WORK_DIR]}
work=${3:-$(mktemp -d)}
repo=$(cd "$(dirname "$0")/.." && pwd)
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$work"
cd "$work"
for rev in "$a" "$b"; do
  rm -rf "$work/src-$rev" && mkdir -p "$work/src-$rev"
  git -C "$repo" archive "$rev" src | tar -x -C "$work/src-$rev"
done
PYTHONPATH="$work/src-$b/src" python - "$work" <<'EOF'
import sys
from pathlib import Path

from fraudq.demo.reference import train_reference
from fraudq.demo.synth import generate_dialogues, write_jsonl

work = Path(sys.argv[1])
rows = generate_dialogues(360, seed=7)
write_jsonl(work / "train.jsonl", rows[:300])
write_jsonl(work / "test.jsonl", rows[300:])
train_reference("tiny", rows[:300], work / "model", seed=0, log=lambda *_: None)
EOF
for rev in "$a" "$b"; do
  out="$work/runs-$rev"
  rm -rf "$out"
  export FRAUDQ_MODEL="$work/model" FRAUDQ_WORK_DIR="$out" FRAUDQ_DEVICE=cpu
  PYTHONPATH="$work/src-$rev/src" python -m fraudq calib --data "$work/train.jsonl" --n 32 >/dev/null 2>&1
  for bits in 8 4; do
    PYTHONPATH="$work/src-$rev/src" python -m fraudq quantize --bits "$bits" >/dev/null 2>&1
  done
  for model in "$work/model" "$out/int8" "$out/int4"; do
    PYTHONPATH="$work/src-$rev/src" python -m fraudq eval --model "$model" --data "$work/test.jsonl" >/dev/null 2>&1
  done
done
status=0
for file in calib.jsonl int8/model.safetensors int4/model.safetensors eval/fp16.predictions.jsonl \
            eval/int8.predictions.jsonl eval/int4.predictions.jsonl; do
  if cmp -s "$work/runs-$a/$file" "$work/runs-$b/$file"; then
    echo "same      $file"
  else
    echo "DIFFERENT $file"
    status=1
  fi
done
exit $status
