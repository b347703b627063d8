#!/usr/bin/env bash
# LoRA against full fine-tuning on the same data (data/lora.jsonl), side by
# side in one run: step throughput and peak memory (maximum resident set).
# Needs runs/sft (run the pipeline first) and GNU time (/usr/bin/time).
#
#   bash scripts/bench-lora.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-40}
cargo build --release -p sft -p lora
out=$(mktemp -d)
# Evaluation is cut to the minimum so the numbers are about training steps.
common=(--max-steps "$steps" --eval-interval 100000 --eval-batches 1 --eval-questions 1 --log-interval 1 --overwrite)
measure() {
  local name=$1; shift
  /usr/bin/time -f "%M" -o "$out/$name.rss" "$@" --out "$out/$name" "${common[@]}" > /dev/null
  local tps
  tps=$(grep '"split":"train"' "$out/$name/metrics.jsonl" | tail -1 | sed 's/.*"tokens_per_s":\([0-9.]*\).*/\1/')
  printf "%-22s %10.0f tokens/s %8.1f MiB peak RSS\n" "$name" "$tps" "$(echo "$(cat "$out/$name.rss") / 1024" | bc -l)"
}
echo "$steps steps, batch 16, on data/lora.jsonl, from runs/sft:"
measure full-fine-tuning ./target/release/sft --init runs/sft --data data/lora.jsonl --eval-data data/lora_eval.jsonl
measure lora-rank8-q-v ./target/release/lora --init runs/sft
rm -rf "$out"
