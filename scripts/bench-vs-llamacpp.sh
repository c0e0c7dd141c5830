#!/usr/bin/env bash
# A same-run baseline for `npurt bench`: llama.cpp's llama-bench on this machine, run
# in alternation with npurt so both see the same machine state (these shared hosts
# move by 20% between runs; only ratios measured together mean anything).
#
# - llama.cpp: the sources vendored in the PyPI sdist of llama-cpp-python (fetched
#   with pip, sha256-checked), built static, native, with OpenMP (as the issue's
#   reference); cmake and ninja come from pip too. Build once, ~3 minutes on 2 cores.
# - Models: the shipped Q4_1 GGUF, and a Q4_0 requantized from it with llama-quantize
#   (the issue's reference row); npurt runs the Q4_1 file at w4a16 and w4a8.
#
# Usage: scripts/bench-vs-llamacpp.sh [ROUNDS=2] [THREADS=1,2] [PROMPT=512] [GEN=128]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-1,2}
PROMPT=${PROMPT:-512}
GEN=${GEN:-128}
DIR=target/llamacpp
MODEL=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
Q4_0="$DIR/SmolLM2-135M-Instruct.Q4_0.gguf"

[ -f "$MODEL" ] || bash scripts/fetch-model.sh
cargo build --release -p npurt-runtime
NPURT=target/release/npurt

# shellcheck source=lib/llamacpp.sh
. scripts/lib/llamacpp.sh
BIN="$LLAMACPP_SRC/build/bin"
if [ ! -x "$BIN/llama-bench" ]; then
    llamacpp_build build "-DGGML_NATIVE=ON -DGGML_OPENMP=ON" llama-bench llama-quantize
fi
[ -f "$Q4_0" ] || "$BIN/llama-quantize" --allow-requantize "$MODEL" "$Q4_0" Q4_0 >/dev/null 2>&1

OUT="$DIR/results.jsonl"
: >"$OUT"
for round in $(seq "$ROUNDS"); do
    for model in "$Q4_0" "$MODEL"; do
        "$BIN/llama-bench" -m "$model" -p "$PROMPT" -n "$GEN" -t "$THREADS" -r 2 -o jsonl 2>/dev/null |
            sed "s/^/{\"round\": $round, \"who\": \"llama.cpp\", \"row\": /; s/\$/}/" >>"$OUT"
    done
    for precision in w4a16 w4a8; do
        "$NPURT" bench --model "$MODEL" -p "$PROMPT" -n "$GEN" --threads "$THREADS" -r 2 \
            --precision "$precision" --json 2>/dev/null |
            sed "s/^/{\"round\": $round, \"who\": \"npurt\", \"row\": /; s/\$/}/" >>"$OUT"
    done
done

python3 - "$OUT" <<'EOF'
import json, sys
from collections import defaultdict
# (round, test, threads) -> {label: tok/s}
cell = defaultdict(dict)
for line in open(sys.argv[1]):
    r = json.loads(line)
    row = r["row"]
    if r["who"] == "llama.cpp":
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        label = "llama.cpp " + row["model_type"].split()[-1]
        cell[(r["round"], test, row["n_threads"])][label] = row["avg_ts"]
    else:
        for x in row["rows"]:
            label = "npurt " + x["precision"].split()[0]
            cell[(r["round"], x["test"], x["threads"])][label] = x["tok_s_mean"]
labels = ["llama.cpp Q4_0", "llama.cpp Q4_1", "npurt w4a16", "npurt w4a8"]
print("tokens/s; ratios are npurt over llama.cpp Q4_0 of the same round")
print("| round | test | threads | " + " | ".join(labels) + " | w4a16 / Q4_0 | w4a8 / Q4_0 |")
print("|---" * (len(labels) + 5) + "|")
for (rnd, test, t), v in sorted(cell.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    base = v.get("llama.cpp Q4_0")
    vals = " | ".join(f"{v[l]:.1f}" if l in v else "-" for l in labels)
    ratio = lambda l: f"{v[l] / base:.2f}x" if base and l in v else "-"
    print(f"| {rnd} | {test} | {t} | {vals} | {ratio('npurt w4a16')} | {ratio('npurt w4a8')} |")
EOF
