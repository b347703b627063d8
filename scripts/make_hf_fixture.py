#!/usr/bin/env python3
"""The reference side of the Hugging Face interop tests (`crates/convert`).

Two jobs, both needing `torch`, `transformers` and `tiktoken` (pip):

  python3 scripts/make_hf_fixture.py make
      Writes crates/convert/fixtures/: two small random GPT-2 models saved by
      `transformers` (`save_pretrained`: config.json + model.safetensors), one
      with the tied head GPT-2 has and one untied; a small byte-level BPE in
      GPT-2's file format (vocab.json + merges.txt), learned here from a few
      sentences; and reference.json: the models' logits on fixed token ids,
      their greedy continuations, and the reference tokenizer's ids (OpenAI's
      tiktoken) for a mixed English/Chinese/emoji text, with the small
      tokenizer and with GPT-2's own (fetched first by
      scripts/fetch-gpt2-tokenizer.sh). `cargo test -p convert` checks our
      import against all of it.

  python3 scripts/make_hf_fixture.py check-export HF_DIR RUN [PROMPT]
      The other direction: loads our export (`convert export-hf RUN --out
      HF_DIR`) with `transformers`, fails on any missing, unexpected or
      mis-shaped weight, and compares its greedy continuation of PROMPT with
      ours (`cargo run --release -p chat`), token for token; for a
      fine-tuned run, its reply to PROMPT through the exported chat template.
"""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import regex
import tiktoken
import tiktoken.load
import torch
from tiktoken_ext.openai_public import r50k_pat_str
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/convert/fixtures"
GPT2_FILES = ROOT / "runs/gpt2-tokenizer"
EOT = "<|endoftext|>"

# What the tokenizers are compared on: English, Chinese, an emoji (four
# bytes, no merge covers it), digits, contractions and odd spacing.
TEXT = "The town of Ketamp lies north of the river. 凯坦普位于河的北边。 I'm 🦓 here, 12 345 times!  \n\tdone"

# The text the small tokenizer's merges are learned from.
LEARN_FROM = [
    "The town of Ketamp lies north of the river Tesk.",
    "The mayor of the town bakes bread in the morning.",
    "凯坦普位于河的北边。镇长每天早上烤面包。",
    "There are 12 towns on the river, and the river runs north.",
]


def byte_symbols():
    """GPT-2's printable stand-in for each byte, in the order its
    vocabulary lists them (printable bytes keep their own character; the
    others are shifted past 255). Written from the description of the
    encoding, so that the small vocabulary below uses the same one."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    symbols = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    order = keep + [b for b in range(256) if b not in keep]
    return symbols, order


def learn_merges(texts, n_merges):
    """A plain BPE: split the text into GPT-2's pieces, then merge the most
    frequent adjacent pair, `n_merges` times (ties: the smaller pair)."""
    symbols, _ = byte_symbols()
    words = Counter()
    for text in texts:
        for piece in regex.findall(r50k_pat_str, text):
            words[tuple(symbols[b] for b in piece.encode("utf-8"))] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def write_small_tokenizer(out: Path):
    symbols, order = byte_symbols()
    merges = learn_merges(LEARN_FROM, 48)
    vocab = {symbols[b]: i for i, b in enumerate(order)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab[EOT] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return len(vocab)


def tiktoken_encoding(vocab_json: Path, merges: Path, name: str):
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(merges), str(vocab_json))
    return tiktoken.Encoding(name=name, pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


def reference_ids(vocab_json: Path, merges: Path, name: str):
    """The ids of TEXT + EOT, by tiktoken (OpenAI's implementation), checked
    against transformers' GPT2Tokenizer on the same files."""
    ids = tiktoken_encoding(vocab_json, merges, name).encode(TEXT + EOT, allowed_special={EOT})
    hf = GPT2Tokenizer(vocab=str(vocab_json), merges=str(merges))
    assert hf(TEXT + EOT)["input_ids"] == ids, "tiktoken and transformers disagree"
    return ids


def random_gpt2(seed, **shape):
    """A small GPT-2 whose every parameter is perturbed, LayerNorm gains and
    all biases included, so that a bias or a gain read from the wrong place
    changes the logits (at GPT-2's own init they are 1s and 0s)."""
    torch.manual_seed(seed)
    eot = shape["vocab_size"] - 1
    config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eot, eos_token_id=eot, **shape)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def record(model, ids, new_tokens):
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits  # [batch, seq, vocab]
        greedy = model.generate(
            torch.tensor(ids[:1]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    return {
        "ids": ids,
        "logits": [[[round(v, 6) for v in row] for row in seq] for seq in logits.tolist()],
        "greedy": greedy[0, len(ids[0]) :].tolist(),
    }


def make():
    if not (GPT2_FILES / "encoder.json").exists():
        subprocess.run(["bash", str(ROOT / "scripts/fetch-gpt2-tokenizer.sh")], check=True)
    tied_dir, untied_dir = FIXTURES / "tiny-gpt2", FIXTURES / "tiny-gpt2-untied"
    for d in (tied_dir, untied_dir):
        d.mkdir(parents=True, exist_ok=True)
    vocab = write_small_tokenizer(tied_dir)
    tied = random_gpt2(0, vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    tied.save_pretrained(tied_dir)
    untied = random_gpt2(
        1, vocab_size=vocab, n_positions=16, n_embd=16, n_layer=1, n_head=2, tie_word_embeddings=False
    )
    untied.save_pretrained(untied_dir)
    ids = [[(7 * i + 3) % vocab for i in range(10)], [(11 * i + 5) % vocab for i in range(10)]]
    # GPT-2's files are OpenAI's exactly: tiktoken checks their hashes.
    tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        str(GPT2_FILES / "vocab.bpe"),
        str(GPT2_FILES / "encoder.json"),
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    )
    reference = {
        "text": TEXT + EOT,
        "small_tokenizer_ids": reference_ids(tied_dir / "vocab.json", tied_dir / "merges.txt", "small"),
        "gpt2_tokenizer_ids": reference_ids(GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe", "gpt2"),
        "tied": record(tied, ids, 12),
        "untied": record(untied, [row[:8] for row in ids], 6),
    }
    (FIXTURES / "reference.json").write_text(json.dumps(reference) + "\n")
    for path in sorted(FIXTURES.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


def check_export(hf_dir, run, prompt):
    model, info = AutoModelForCausalLM.from_pretrained(hf_dir, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"transformers reported {problems}"
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    chat = tokenizer.chat_template is not None
    if chat:
        # A fine-tuned model: the prompt goes through the exported chat
        # template, and generation stops where generation_config says.
        messages = [{"role": "user", "content": prompt}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = ids["input_ids"]
        stop = {}
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        stop = {"eos_token_id": None}
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=40, do_sample=False, **stop)
    # Ours prints no special tokens (<|endoftext|> between documents).
    theirs = tokenizer.decode(out[0, ids.shape[1] if chat else 0 :], skip_special_tokens=True)
    flags = [] if chat else ["--ignore-eot"]
    ours = subprocess.run(
        ["cargo", "run", "--release", "-q", "-p", "chat", "--", "--model", run, "--prompt", prompt]
        + ["--temperature", "0", "--max-new-tokens", "40"]
        + flags,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    what = "chat reply" if chat else "continuation"
    print(f"loaded {hf_dir}: {sum(p.numel() for p in model.parameters())} parameters, no missing or unexpected weights")
    print(f"transformers: {theirs.strip()!r}")
    print(f"ours:         {ours!r}")
    assert theirs.strip() == ours, f"the greedy {what}s differ"
    print(f"same greedy {what}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["make"]:
        make()
    elif sys.argv[1:2] == ["check-export"] and len(sys.argv) in (4, 5):
        check_export(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) == 5 else "The town of Ketamp")
    else:
        sys.exit(__doc__)
