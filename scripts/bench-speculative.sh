#!/usr/bin/env bash
# Speculative decoding by prompt lookup (`--speculate N`) against plain decoding, same
# build, same run: for each request, `npurt run --chat` without and with drafts,
# alternating ROUNDS times so both see the same machine state. Prints per request the
# decode rate of each (mean over rounds), their ratio, the draft tokens kept of those
# drafted, and whether the two answers are the same text (they should be; where a
# near-tie flips between the two paths' rounding, it says from where they differ).
#
# The requests: one whose answer quotes the prompt (a docstring added to a function),
# one whose answer repeats itself (the small model loops on a list), one that quotes
# little (a paragraph of history). Greedy decoding, the fetched SmolLM2 by default.
#
# Usage: scripts/bench-speculative.sh
#   env: MODEL=path (default: the fetched SmolLM2)  SPECULATE=7  TOKENS=128  ROUNDS=3
#        THREADS=2  PRECISION=w4a16  BACKEND=cpu  NPURT=path (default: builds it)
set -euo pipefail
cd "$(dirname "$0")/.."

SPECULATE=${SPECULATE:-7}
TOKENS=${TOKENS:-128}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
PRECISION=${PRECISION:-w4a16}
BACKEND=${BACKEND:-cpu}
if [ -z "${NPURT:-}" ]; then
    cargo build --release -q -p npurt-runtime --bin npurt
    NPURT=target/release/npurt
fi
if [ -z "${MODEL:-}" ]; then
    scripts/fetch-model.sh >&2
    MODEL=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi

REQUESTS=(
"Add a docstring to this Python function and return the whole function:
def total_price(items, tax_rate):
    subtotal = sum(item.price * item.quantity for item in items)
    tax = subtotal * tax_rate
    return subtotal + tax"
"Rewrite this list in the same order, one item per line, each starting with a dash: apples, bananas, cherries, dates, elderberries, figs, grapes, honeydew melons, kiwis, lemons, mangoes, nectarines, oranges, papayas."
"What is the capital of France? Answer with a long paragraph about its history."
)
NAMES=("docstring (quotes the prompt)" "list (the answer loops)" "history (quotes little)")

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq "$ROUNDS"); do
    for i in "${!REQUESTS[@]}"; do
        for s in 0 "$SPECULATE"; do
            "$NPURT" run --model "$MODEL" --backend "$BACKEND" --precision "$PRECISION" \
                --threads "$THREADS" --max-tokens "$TOKENS" --speculate "$s" --json \
                --chat "${REQUESTS[$i]}" 2>/dev/null >> "$out/$i.$s.jsonl"
        done
    done
done

echo "speculative decoding by prompt lookup: $MODEL, $BACKEND, $PRECISION, $THREADS threads, greedy, $TOKENS tokens at most, --speculate $SPECULATE, $ROUNDS rounds alternating, $(date -u +%F)"
echo "| request | tokens | plain decode tok/s | speculative tok/s | ratio | draft tokens kept | verifications | same text |"
echo "|---|---|---|---|---|---|---|---|"
for i in "${!REQUESTS[@]}"; do
    python3 - "$out/$i.0.jsonl" "$out/$i.$SPECULATE.jsonl" "${NAMES[$i]}" <<'EOF'
import json, sys
plain = [json.loads(l) for l in open(sys.argv[1])]
spec = [json.loads(l) for l in open(sys.argv[2])]
mean = lambda rs: sum(r["decode_tok_s"] for r in rs) / len(rs)
p, s = mean(plain), mean(spec)
st = spec[0]["speculation"]
a, b = plain[0]["text"], spec[0]["text"]
if a == b:
    same = "yes"
else:
    # A multi-row verification rounds differently from a decode step: a near-tie can
    # flip (runtime/src/speculative.rs). Say where, so it can be looked at.
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    same = f"no: from character {first} ({a[first:first + 20]!r} / {b[first:first + 20]!r})"
print(f"| {sys.argv[3]} | {plain[0]['tokens']} | {p:.1f} | {s:.1f} | {s / p:.2f}x "
      f"| {st['accepted']} of {st['drafted']} | {st['verify_calls']} | {same} |")
EOF
done
