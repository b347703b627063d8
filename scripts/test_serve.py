#!/usr/bin/env python3
"""The server from the outside, as its users reach it: OpenAI's own Python
client, and the web page in headless Chromium. Run by scripts/test-serve.sh
(which starts the server) and by CI.

  python3 scripts/test_serve.py http://127.0.0.1:PORT [--screenshot FILE] [--question TEXT ...]

Needs `openai` and `playwright` (pip) and Debian's `chromium`.
"""

import argparse
import sys

import openai
from playwright.sync_api import sync_playwright

parser = argparse.ArgumentParser()
parser.add_argument("url")
parser.add_argument("--screenshot")
parser.add_argument("--question", action="append", help="asked in turn on the web page; the first also through the client")
args = parser.parse_args()
questions = args.question or ["What is 7 plus 5?", "凯坦普的镇长是谁？"]

# 1. OpenAI's client, whole and streamed: at temperature 0 the chunks add up to the whole reply.
client = openai.OpenAI(base_url=f"{args.url}/v1", api_key="unused")
model = client.models.list().data[0].id
messages = [{"role": "user", "content": questions[0]}]
whole = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=32)
text = whole.choices[0].message.content
assert whole.choices[0].finish_reason in ("stop", "length"), whole
assert whole.usage.completion_tokens > 0 and whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
chunks = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=32, stream=True, stream_options={"include_usage": True}
)
pieces, finish, usage = [], None, None
for chunk in chunks:
    if chunk.choices:
        pieces.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    usage = chunk.usage or usage
assert "".join(pieces) == text, (pieces, text)
assert finish == whole.choices[0].finish_reason and usage == whole.usage, (finish, usage)
try:
    client.chat.completions.create(model=model, messages=messages, temperature=5)
    sys.exit("a temperature of 5 was accepted")
except openai.BadRequestError as e:
    assert "temperature is 5" in str(e), e
print(f"openai client: {model!r} answered {text!r} ({len(pieces)} chunks streamed, {whole.usage.completion_tokens} tokens)")

# 2. The web page: type a question, see the reply grow in place, then end.
flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=flags)
    page = browser.new_page(viewport={"width": 900, "height": 560})
    page.goto(args.url + "/")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('model:')")
    # Record every length the reply bubble passes through: more than one means it streamed.
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const bubbles = document.querySelectorAll('.assistant');
            if (bubbles.length) window.lengths.push(bubbles[bubbles.length - 1].textContent.length);
        }).observe(document.getElementById('log'), { childList: true, subtree: true, characterData: true });
    }""")
    for turn, question in enumerate(questions):
        page.fill("#input", question)
        page.press("#input", "Enter")
        page.wait_for_function(f"document.querySelectorAll('.assistant').length == {turn + 1}")
        page.wait_for_function("!document.getElementById('send').disabled", timeout=60_000)
    replies = page.locator(".assistant").all_inner_texts()
    lengths = sorted(set(page.evaluate("window.lengths")))
    assert all(r.strip() for r in replies), f"a reply is empty: {replies}"
    assert len([n for n in lengths if n > 0]) > 1, f"the replies did not stream: lengths {lengths}"
    assert page.locator(".user").all_inner_texts() == questions
    if args.screenshot:
        page.screenshot(path=args.screenshot)
    browser.close()
print(f"web page: {len(questions)} turns, the replies streamed in {len(lengths)} steps: {replies!r}")
