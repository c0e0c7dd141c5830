#!/usr/bin/env bash
# npurt's main job on a fresh machine: fetch the default model if missing (pip,
# sha256-checked), build, answer a chat question on the CPU backend at the default
# LLM precision (w4a16) and print the stats line.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo build --release -p npurt-runtime --bin npurt
./target/release/npurt run --precision w4a16 --chat "${1:-What is the capital of France? Answer in one sentence.}" --max-tokens 64
