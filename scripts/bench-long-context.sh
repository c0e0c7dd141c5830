#!/usr/bin/env bash
# Long contexts (the paper's Fig. 8 comparison and decode deep into the cache):
#  - prefill of 2048 input tokens with chunk sizes 32, 128, 512 and 2048;
#  - decode speed with 2048 and 8159 tokens already in the KV cache (32 steps fill it
#    to 8192), f16 and int8 KV.
# SmolLM2 at w4a16 on the CPU backend; extra arguments go to every `npurt bench`.
#   scripts/bench-long-context.sh [--threads 2] [-r 3]
set -euo pipefail
cd "$(dirname "$0")/.."
NPURT=./target/release/npurt
[ -x "$NPURT" ] || cargo build --release -p npurt-runtime --bin npurt
echo "== prefill of 2048 tokens by chunk size"
for c in 32 128 512 2048; do
    $NPURT bench -p 2048 -n 0 --chunk "$c" --ctx 2049 "$@" | grep '| pp' | sed "s/\$/ chunk $c/"
done
echo "== decode with 2048 and 8159 tokens in the cache (32 steps end at the 8192-token trained length)"
for kv in f16 int8; do
    $NPURT bench -p 0 -n 32 -d 2048,8159 --kv-cache "$kv" "$@" | grep '| tg'
done
