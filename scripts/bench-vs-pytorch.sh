#!/usr/bin/env bash
# Training throughput of this project's CPU backends beside PyTorch's, on the
# same model shapes, the same cores and the same thread count, in one run.
#
#   bash scripts/bench-vs-pytorch.sh            # 2 threads, pinned to cores 0-1
#   bash scripts/bench-vs-pytorch.sh 4          # 4 threads
#
# PyTorch side: the reference script `torch_gpt_bench.py` (its `run` function
# is called with each shape below). Point TORCH_BENCH at it and PYTHON at an
# interpreter with torch installed; without them only this project's numbers
# are printed. Each line is a JSON record; the table at the end gives
# tokens/s and the ratio ours / PyTorch.
#
# A shared machine's speed drifts by 10-20% over minutes, so the whole set
# is run ROUNDS times (default 3), ours and PyTorch's alternating. The table
# gives each one's median step time, and the ratio to PyTorch two ways: of
# the medians, and per round (ours and PyTorch back to back) with the
# median and range of those ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${1:-2}"
PYTHON="${PYTHON:-python3}"
TORCH_BENCH="${TORCH_BENCH:-../shared/bench/torch_gpt_bench.py}"
STEPS_TINY="${STEPS_TINY:-20}"
STEPS_MINI="${STEPS_MINI:-3}"
ROUNDS="${ROUNDS:-3}"
CORES="0-$((THREADS - 1))"
export RAYON_NUM_THREADS="$THREADS"

# Each variant: a binary and the backend it runs. With OpenBLAS installed
# (`apt install libopenblas-dev`), the ndarray backend runs a second time
# with its matrix products in OpenBLAS (the `openblas` feature).
cargo build --release -q -p bench --features flex
cp target/release/bench target/release/bench-gemm
VARIANTS=("target/release/bench-gemm cpu" "target/release/bench-gemm flex")
if ldconfig -p | grep -q 'libopenblas\.so '; then
  cargo build --release -q -p bench --features flex,openblas
  cp target/release/bench target/release/bench-openblas
  VARIANTS+=("target/release/bench-openblas cpu")
fi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

# name vocab ctx d_model layers heads batch steps
SHAPES=(
  "tiny 4096 128 128 4 4 8 $STEPS_TINY"
  "mini 6400 512 512 8 8 4 $STEPS_MINI"
)

have_torch=0
if [ -f "$TORCH_BENCH" ] && "$PYTHON" -c "import torch" 2>/dev/null; then
  have_torch=1
else
  echo "note: no PyTorch reference (TORCH_BENCH=$TORCH_BENCH, PYTHON=$PYTHON); measuring this project only" >&2
fi

for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  for shape in "${SHAPES[@]}"; do
    read -r name vocab ctx d layers heads batch steps <<<"$shape"
    for variant in "${VARIANTS[@]}"; do
      read -r binary device <<<"$variant"
      taskset -c "$CORES" "./$binary" --device "$device" --preset "$name" --vocab "$vocab" --ctx "$ctx" \
        --d-model "$d" --layers "$layers" --heads "$heads" --batch "$batch" --steps "$steps" | tee -a "$out"
    done
    if [ "$have_torch" = 1 ]; then
      taskset -c "$CORES" "$PYTHON" - "$TORCH_BENCH" "$THREADS" "$name" "$vocab" "$ctx" "$d" "$layers" "$heads" "$batch" "$steps" <<'EOF' | tee -a "$out"
import importlib.util, sys
path, threads, name, *dims = sys.argv[1:]
vocab, ctx, d, layers, heads, batch, steps = map(int, dims)
spec = importlib.util.spec_from_file_location("ref", path)
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
ref.torch.set_num_threads(int(threads))
ref.run(name + "-torch", vocab, ctx, d, layers, heads, batch, "fp32", False, steps=steps, warm=2, device="cpu")
EOF
    fi
  done
done

"$PYTHON" - "$out" "$THREADS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
# Step times per (shape, backend), in round order.
runs = {}
for r in rows:
    torch = r["name"].endswith("-torch")
    key = (r["name"].removesuffix("-torch"), "pytorch " + r.get("dtype", "") if torch else r["backend"])
    runs.setdefault(key, []).append(r["step_ms"])
print(f"\n{sys.argv[2]} threads, {len(next(iter(runs.values())))} rounds")
print("| shape | backend | median step ms | tokens/s | vs PyTorch: ratio of medians | per-round ratio: median (min-max) |")
print("|---|---|---|---|---|---|")
for (name, backend), ms in runs.items():
    r = next(r for r in rows if r["name"].removesuffix("-torch") == name)
    tps = r["batch"] * r["ctx"] / statistics.median(ms) * 1000
    ref = next((runs[k] for k in runs if k[0] == name and k[1].startswith("pytorch")), None)
    if ref:
        # Each round ran ours and PyTorch back to back, so their ratio
        # cancels most of the machine's drift between rounds.
        paired = [t / o for o, t in zip(ms, ref)]
        medians = f"{statistics.median(ref) / statistics.median(ms):.2f}x"
        per_round = f"{statistics.median(paired):.2f}x ({min(paired):.2f}-{max(paired):.2f})"
    else:
        medians = per_round = "-"
    print(f"| {name} | {backend} | {statistics.median(ms):,.0f} | {tps:,.0f} | {medians} | {per_round} |")
EOF
