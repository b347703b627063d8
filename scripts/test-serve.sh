#!/usr/bin/env bash
# Starts the server and checks it from the outside (scripts/test_serve.py):
# OpenAI's Python client, and the web page in headless Chromium.
#
#   bash scripts/test-serve.sh                      # a tiny random model (imported from a test fixture)
#   bash scripts/test-serve.sh runs/sft --screenshot crates/serve/web-chat.png
#
# Needs `pip install openai playwright` and `apt-get install chromium`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p serve -p convert
model=runs/serve-test
if [[ $# -gt 0 && $1 != --* ]]; then
    model=$1
    shift
else
    ./target/release/convert import-hf crates/convert/fixtures/tiny-gpt2 --out "$model" --overwrite > /dev/null
fi
log=$(mktemp)
./target/release/serve --model "$model" --port 0 > "$log" 2>&1 &
server=$!
trap 'kill $server 2> /dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -1 || true)
    [[ -n $url ]] && break
    sleep 0.1
done
[[ -n $url ]] || { cat "$log"; exit 1; }
python3 scripts/test_serve.py "$url" "$@"
