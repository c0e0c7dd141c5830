#!/usr/bin/env bash
# Peak memory against the floor (issue: "Peak memory, measured").
#   scripts/check-memory.sh [--kv-cache K]
#     SmolLM2 at w4a16 with an 8192-token context, a prompt that fills most of it,
#     against `npurt inspect`'s floor (weights at the precision + the KV cache for the
#     context). Target: peak RSS at most 15% + 16 MB above the floor. Extra arguments
#     go to both commands (e.g. --kv-cache f32).
#   scripts/check-memory.sh vision [--precision P] [--threads N]
#     The synthetic so400m encode of a 768x1536 image (9 tiles) against its floor as
#     `encode-image --json` reports it (the weights at their compiled formats + the
#     planned arenas of every stage graph). Target: peak RSS at most 25% above it.
#     Extra arguments go to encode-image (default precision w8a8).
set -euo pipefail
cd "$(dirname "$0")/.."
NPURT=./target/release/npurt
[ -x "$NPURT" ] || cargo build --release -p npurt-runtime --bin npurt
if [ "${1:-}" = vision ]; then
  shift
  [ "$#" -gt 0 ] || set -- --precision w8a8
  report=$($NPURT encode-image --synthetic so400m --image-size 768x1536 --json "$@")
  python3 - "$report" <<'PY'
import json, sys
v = json.loads(sys.argv[1])
peak, floor = v["peak_rss_bytes"], v["floor_bytes"]
limit = floor * 1.25
mib = lambda b: b / 2**20
verdict = "PASS" if peak <= limit else "FAIL"
print(f"so400m encode, {v['tiles']} tiles, {v['precision']} (synthetic weights): peak RSS "
      f"{mib(peak):.1f} MiB, floor {mib(floor):.1f} MiB (weights {mib(v['weights_bytes']):.1f} "
      f"+ arenas {mib(v['arena_bytes']):.1f}), {100 * (peak / floor - 1):+.1f}%, "
      f"target <= {mib(limit):.1f} MiB: {verdict}")
sys.exit(0 if peak <= limit else 1)
PY
  exit
fi
CTX=8192
floor=$($NPURT inspect --json --ctx $CTX "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["floor_bytes"])')
prompt=$(python3 -c 'print("The quick brown fox jumps over the lazy dog. " * 700)')
peak=$($NPURT run --ctx $CTX --prompt "$prompt" --max-tokens 8 --json "$@" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["peak_rss_bytes"], v["prompt_tokens"])')
read -r peak_bytes prompt_tokens <<<"$peak"
python3 - "$floor" "$peak_bytes" "$prompt_tokens" <<'PY'
import sys
floor, peak, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
limit = floor * 1.15 + 16 * 2**20
mib = lambda b: b / 2**20
print(f"prompt {n} tokens, ctx 8192: peak RSS {mib(peak):.1f} MiB, floor {mib(floor):.1f} MiB "
      f"({100 * (peak / floor - 1):+.1f}%), target <= {mib(limit):.1f} MiB: {'PASS' if peak <= limit else 'FAIL'}")
sys.exit(0 if peak <= limit else 1)
PY
