#!/usr/bin/env bash
# npurt's main job on a fresh machine: fetch the default model if missing (pip,
# sha256-checked), build, answer a chat question on the CPU backend at the default
# LLM precision (w4a16) and print the stats line; then the image pipeline: plan an
# image's tiles (header only) and answer about it with vlm_tiny (a BlueLM-V model
# directory), then encode a 768x1536 image through SigLIP-so400m's real shapes.
#
# No trained vision weights ship: vlm_tiny is ../shared/golden's tiny random-init
# SigLIP and projector on the real SmolLM2 (the reference data the tests use: its
# answer is not meaningful, its numbers are HF-exact), and the so400m encode uses
# seeded random weights (speed only; the output says SYNTHETIC).
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
    # vlm_tiny: a BlueLM-V directory (tiny SigLIP + projector, both random-init, + the
    # real SmolLM2). The answer is not meaningful; its numbers match HF transformers.
    IMAGE=${2:-$GOLDEN/images/chelsea.png}
    VLM=$(mktemp -d)/vlm_tiny
    scripts/make-vlm-tiny.sh "$VLM"
    echo "== vlm_tiny on $IMAGE (RANDOM vision weights: the answer is not meaningful; at --precision f32 every number matches HF transformers, as the tests check)"
    $NPURT image-plan --image "$IMAGE"
    # The question is "typed" a second after the image is given: the image is encoded
    # and prefilled meanwhile, so the answer starts right after the question.
    (sleep 1; echo "Describe this image.") | $NPURT run --model "$VLM" --image "$IMAGE" --chat - --max-tokens 16
fi
echo
echo "== SigLIP-so400m's real shapes (SYNTHETIC seeded random weights): a 768x1536 image, 9 tiles"
$NPURT encode-image --synthetic so400m --image-size 768x1536 --precision w8a8
