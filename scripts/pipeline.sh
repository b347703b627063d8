#!/usr/bin/env bash
# The whole default pipeline, stage after stage, with each stage's time and
# effect. Run from the repository root:
#
#   bash scripts/pipeline.sh            # writes runs/pretrain, runs/sft, runs/lora, runs/dpo
#
# Every stage starts over (--overwrite). Each prints its own summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p pretrain -p sft -p lora -p dpo -p chat

stage() {
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" | grep -E "validation loss|answer accuracy|reward accuracy|held-out|rewards at|SFT answer|trained|^Q:|^A:|sample:" -A1 || true
  echo "=== $name took $((SECONDS - start)) s"
}

stage pretrain ./target/release/pretrain --overwrite
stage sft      ./target/release/sft --overwrite
stage lora     ./target/release/lora --overwrite
stage dpo      ./target/release/dpo --overwrite
echo "=== chat"
./target/release/chat --model runs/dpo --prompt "What is 3 plus 4?" --temperature 0
./target/release/chat --model runs/sft --adapter runs/lora --prompt "What is the age of Besa?" --temperature 0
