#!/usr/bin/env bash
# Writes DIR as a BlueLM-V model directory for ../shared/golden's vlm_tiny: config.json
# plus symlinks to siglip_tiny (vision), vlm_tiny's projector and the fetched SmolLM2
# GGUF (llm). Its vision weights are random (golden README section 4): answers about
# images are not meaningful, but every number is checked against HF transformers.
#   scripts/make-vlm-tiny.sh DIR
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:?usage: scripts/make-vlm-tiny.sh DIR}
GOLDEN=$(cd "$ROOT/../shared/golden" 2>/dev/null && pwd) || {
    echo "error: $ROOT/../shared/golden is missing (vlm_tiny lives there)" >&2
    exit 1
}
LLM=$ROOT/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$LLM" ] || { echo "error: $LLM is missing: run scripts/fetch-model.sh" >&2; exit 1; }
mkdir -p "$DIR"
ln -sfn "$GOLDEN/siglip_tiny" "$DIR/vision"
ln -sfn "$GOLDEN/vlm_tiny/projector.safetensors" "$DIR/projector.safetensors"
ln -sfn "$LLM" "$DIR/llm.gguf"
cat > "$DIR/config.json" <<'JSON'
{"model_type": "bluelm_v", "vision": "vision", "projector": "projector.safetensors",
 "llm": "llm.gguf", "image_token": "<image>", "vision_feature": "last",
 "projector_ln_eps": 1e-5,
 "tiling": {"rule": "relaxed", "alpha": 0.1, "max_tiles": 9, "tile": 384}}
JSON
