#!/usr/bin/env bash
# The whole default pipeline, stage after stage, with each stage's time and
# effect, and a table of both at the end. Run from the repository root:
#
#   bash scripts/pipeline.sh            # writes runs/pretrain, runs/sft, runs/lora, runs/dpo
#
# Every stage starts over (--overwrite). Each prints its own summary lines
# and the diagnosis of its curves; its whole output is kept in runs/<stage>.log,
# its report in runs/<stage>/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p pretrain -p sft -p lora -p dpo -p chat
mkdir -p runs

# The lines of a stage's output worth seeing here: its results, its diagnosis, its samples.
results="validation loss|fact accuracy|answer accuracy|paraphrased|reward accuracy|rewards at|SFT answer|degeneration|likelier|diagnosis:|trained"
table=()

stage() {
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" > "runs/$name.log"
  local took=$((SECONDS - start))
  grep -E "$results|^Q:|^   |^A:|sample" -A1 "runs/$name.log" | grep -v "^--$" || true
  echo "=== $name took $took s"
  # One row of the table: the stage, its time, its verdict, its before → after numbers.
  local verdict row
  verdict=$(sed -nE 's/^diagnosis: ([a-z -]+) \(.*/\1/p' "runs/$name.log")
  row=$(grep -E "^(validation loss|fact accuracy|paraphrased|held-out pairs|SFT answer|degeneration)" "runs/$name.log" \
    | sed -E 's/ in [0-9.]+ s \([0-9]+ steps\).*//; s/ \([^)]*s\)$//; s/ \([0-9]+ held-out[^)]*\)//; s/ \(must not rise\)//; s/^degeneration on the held-out questions: //' \
    | paste -sd ';' -)
  table+=("| $name | $took s | $verdict | ${row//;/; } |")
}

stage pretrain ./target/release/pretrain --overwrite
stage sft      ./target/release/sft --overwrite
stage lora     ./target/release/lora --overwrite
stage dpo      ./target/release/dpo --overwrite

echo "=== chat"
./target/release/chat --model runs/dpo --prompt "Who is the mayor of Ketamp?" --temperature 0
./target/release/chat --model runs/sft --adapter runs/lora --prompt "What is the age of Besa?" --temperature 0

echo
echo "| stage | time | diagnosis | before → after |"
echo "|---|---|---|---|"
printf '%s\n' "${table[@]}"
