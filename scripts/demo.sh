#!/usr/bin/env bash
# npurt's main job on a fresh machine: fetch the default model if missing (pip,
# sha256-checked), build, answer a chat question on the CPU backend at the default
# LLM precision (w4a16) and print the stats line; then the image pipeline: plan an
# image's tiles (header only) and encode it through a SigLIP tower + BlueLM-V
# projector at the vision default (w8a16).
#
# No trained vision weights ship: the encode uses ../shared/golden's tiny random-init
# SigLIP and projector when that directory is there (the reference data the tests
# use), else SigLIP-so400m's real shapes with seeded random weights on a generated
# 768x1536 image (speed only; the output says SYNTHETIC).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
echo "demo.sh: building npurt in release mode (the first build takes about 10 minutes)..." >&2
cargo build --release -p npurt-runtime --bin npurt
NPURT=./target/release/npurt
$NPURT run --precision w4a16 --chat "${1:-What is the capital of France? Answer in one sentence.}" --max-tokens 64

GOLDEN=../shared/golden
echo
if [ -d "$GOLDEN" ]; then
    IMAGE=${2:-$GOLDEN/images/chelsea.png}
    $NPURT image-plan --image "$IMAGE"
    $NPURT encode-image --model "$GOLDEN/siglip_tiny" \
        --projector "$GOLDEN/vlm_tiny/projector.safetensors" --image "$IMAGE"
else
    $NPURT encode-image --synthetic so400m --image-size 768x1536
fi
