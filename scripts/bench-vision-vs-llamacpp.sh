#!/usr/bin/env bash
# A same-run baseline for `npurt encode-image` (issue 9, point 10): llama.cpp's
# multimodal tool encoding the same 768x1536 image with a SigLIP-so400m-shaped vision
# tower, timed in alternation with npurt on this machine (these shared hosts move by
# 20% between runs; only ratios measured together mean anything).
#
# - llama.cpp: the same pinned sources and build directory as scripts/bench-vs-llamacpp.sh
#   (llama-cpp-python 0.3.16's vendored tree, sha256-checked, static, native, OpenMP,
#   cmake/ninja from pip), plus the `llama-mtmd-cli` target (tools/mtmd).
# - mmproj: a GGUF written here with the vendored gguf-py, seeded random weights, the
#   so400m vision tower (hidden 1152, 27 layers, 16 heads, MLP 4304, patch 14, image
#   384, LayerNorm eps 1e-6, GELU-tanh, conv bias, no class token, post-LayerNorm;
#   feature layer = the last, as `npurt encode-image --feature last`). Projector type
#   `mlp` (LLaVA: Linear 1152->576, GELU, Linear 576->576) with `spatial_unpad` and
#   image_grid_pinpoints on 384-pixel tiles: llama.cpp's LLaVA-1.6 "anyres" slicing,
#   which cuts a 768x1536 image into the same 2x4 grid + a 384x384 overview = 9 tiles
#   of 729 tokens that npurt encodes (idefics3's pixel shuffle, the closest to the 2x2
#   merge, needs an even patch grid (27x27 is odd) and encodes one tile only in this
#   version). Two weight types: q8_0 (ggml quantizes activations to q8_0 and runs the
#   int8 dot products: the analogue of w8a8; ffn_down's 4304-wide rows are not whole
#   32-value blocks, so it stays f16 there, as in llama.cpp's own q8_0 conversions of
#   so400m: a third of the MLP's work) and f16 (activations rounded to f16,
#   products and sums in f32: the analogue of w8a16). Norms, biases and the position
#   embedding are f32; the patch-embedding conv is f16 in both (ggml's im2col path).
#   Attention (QK^T, softmax, PV) runs in f32 in this version.
# - Text model: the project's SmolLM2-135M Q4_1 GGUF (hidden 576, so the projector
#   maps into 576). npurt's synthetic projector maps into 2560 after its 2x2 merge;
#   both projectors are ~1% of the encoder's work.
# - Timing: llama.cpp prints "image slice encoded in N ms" for the whole image (all 9
#   slices, preprocessing excluded). The context and batch are kept at LLAMA_CTX=1024
#   tokens, so the LLM stops with "failed to decode image" once its KV cache is full,
#   right after the encode (llama.cpp would otherwise spend as long again prefilling
#   6561 tokens): only the encoder is compared, as npurt encode-image runs no LLM.
#   npurt's time is its encode (conv + encoder blocks + downsampler/projector =
#   total_ms - preprocess_ms); its input is, by what the binary offers, --image-size
#   768x1536, --image PNG, or --pixels with the same image cut into 9 tiles here.
#
# Usage: scripts/bench-vision-vs-llamacpp.sh
#   env: ROUNDS=2 THREADS="1 2" PRECISIONS="w8a8 w8a16" LLAMA_TYPES="q8_0 f16"
#        LLAMA_CTX=1024 SKIP_NPURT=0 (1: llama.cpp only) NPURT_EXTRA="" (more args)
#        TIMEOUT=0 (seconds a run may take; 0: no limit)
#        NPURT=path (a prebuilt binary; default: cargo build --release, target/release/npurt)
# Writes target/llamacpp/vision/{mmproj-so400m-*.gguf,image-768x1536.png,results.jsonl,logs}.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-1 2}
PRECISIONS=${PRECISIONS:-w8a8 w8a16}
LLAMA_TYPES=${LLAMA_TYPES:-q8_0 f16}
LLAMA_CTX=${LLAMA_CTX:-1024}
SKIP_NPURT=${SKIP_NPURT:-0}
NPURT_EXTRA=${NPURT_EXTRA:-}
TIMEOUT=${TIMEOUT:-0}
SEED=9
# shellcheck source=lib/llamacpp.sh
. scripts/lib/llamacpp.sh
DIR=$LLAMACPP_DIR
VDIR="$DIR/vision"
MODEL=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
IMAGE="$VDIR/image-768x1536.png"
PIXELS="$VDIR/pixels-768x1536-9tiles.safetensors"
LLAMA="$LLAMACPP_SRC"
BIN="$LLAMA/build/bin"
PY="$DIR/venv/bin/python"

[ -f "$MODEL" ] || bash scripts/fetch-model.sh
if [ -z "${NPURT:-}" ] && [ "$SKIP_NPURT" != 1 ]; then
    cargo build --release -p npurt-runtime
fi
NPURT=${NPURT:-target/release/npurt}

# --- llama.cpp: the pinned sources, built as scripts/bench-vs-llamacpp.sh does, plus
# llama-mtmd-cli (a reconfigure of an existing build dir is a no-op).
if [ ! -x "$BIN/llama-mtmd-cli" ]; then
    llamacpp_sources tools/mtmd/mtmd-cli.cpp
    llamacpp_build build "-DGGML_NATIVE=ON -DGGML_OPENMP=ON" llama-bench llama-quantize llama-mtmd-cli
fi

# --- Python for gguf-py (the vendored copy, on PYTHONPATH) and the image writers.
llamacpp_venv
"$PY" -c "import numpy, yaml, tqdm" 2>/dev/null || "$DIR/venv/bin/pip" install -q numpy pyyaml tqdm
export PYTHONPATH="$LLAMA/gguf-py"
mkdir -p "$VDIR/logs"

# --- The mmproj GGUFs (one per weight type), written once.
for wtype in $LLAMA_TYPES; do
    out="$VDIR/mmproj-so400m-$wtype.gguf"
    [ -f "$out" ] && continue
    "$PY" - "$out" "$wtype" "$SEED" <<'EOF'
import sys
import numpy as np
import gguf

out, wtype, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
hidden, layers, heads, ffn, patch, image, eps, proj = 1152, 27, 16, 4304, 14, 384, 1e-6, 576
qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[wtype]
rng = np.random.default_rng(seed)

w = gguf.GGUFWriter(out + ".tmp", arch="clip")
w.add_name("synthetic SigLIP-so400m (seeded random weights), LLaVA mlp projector to 576")
w.add_bool("clip.has_vision_encoder", True)
w.add_bool("clip.has_audio_encoder", False)
w.add_string("clip.projector_type", "mlp")
w.add_bool("clip.use_gelu", True)  # GELU-tanh, as SigLIP's gelu_pytorch_tanh
w.add_uint32("clip.vision.embedding_length", hidden)
w.add_uint32("clip.vision.feed_forward_length", ffn)
w.add_uint32("clip.vision.block_count", layers)
w.add_uint32("clip.vision.attention.head_count", heads)
w.add_float32("clip.vision.attention.layer_norm_epsilon", eps)
w.add_uint32("clip.vision.projection_dim", proj)
w.add_uint32("clip.vision.image_size", image)
w.add_uint32("clip.vision.patch_size", patch)
w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
# All 27 blocks + the post-LayerNorm (without this, LLaVA's default runs 26).
w.add_array("clip.vision.feature_layer", [layers])
# LLaVA-1.6 anyres: every grid of 384-pixel tiles up to 8 tiles (+ the overview).
w.add_string("clip.vision.mm_patch_merge_type", "spatial_unpad")
pins = [(c * image, r * image) for r in range(1, 9) for c in range(1, 9) if 1 < c * r <= 8]
w.add_array("clip.vision.image_grid_pinpoints", [v for p in pins for v in p])

def mat(name, rows, cols, std=0.02):
    x = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(std)
    # Rows of 4304 (ffn_down) are not whole 32-value blocks: f16, as llama.cpp's own
    # converters and llama-quantize fall back for them.
    t = qtype if cols % gguf.GGML_QUANT_SIZES[qtype][0] == 0 else gguf.GGMLQuantizationType.F16
    w.add_tensor(name, gguf.quants.quantize(x, t), raw_dtype=t)

def vec(name, n, value=None):
    x = np.full(n, value, np.float32) if value is not None else \
        rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    w.add_tensor(name, x)

# numpy shapes are PyTorch's (out, in); ggml's ne is the reverse.
conv = rng.standard_normal((hidden, 3, patch, patch), dtype=np.float32) * np.float32(0.02)
w.add_tensor("v.patch_embd.weight", conv.astype(np.float16))
vec("v.patch_embd.bias", hidden)
pos = rng.standard_normal(((image // patch) ** 2, hidden), dtype=np.float32) * np.float32(0.02)
w.add_tensor("v.position_embd.weight", pos)
for i in range(layers):
    p = f"v.blk.{i}"
    vec(f"{p}.ln1.weight", hidden, 1.0); vec(f"{p}.ln1.bias", hidden, 0.0)
    for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
        mat(f"{p}.{t}.weight", hidden, hidden); vec(f"{p}.{t}.bias", hidden)
    vec(f"{p}.ln2.weight", hidden, 1.0); vec(f"{p}.ln2.bias", hidden, 0.0)
    mat(f"{p}.ffn_up.weight", ffn, hidden); vec(f"{p}.ffn_up.bias", ffn)
    mat(f"{p}.ffn_down.weight", hidden, ffn); vec(f"{p}.ffn_down.bias", hidden)
vec("v.post_ln.weight", hidden, 1.0); vec("v.post_ln.bias", hidden, 0.0)
mat("mm.0.weight", proj, hidden); vec("mm.0.bias", proj)
mat("mm.2.weight", proj, proj); vec("mm.2.bias", proj)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
import os
os.replace(out + ".tmp", out)
print(f"wrote {out} ({wtype} matrices)")
EOF
done

# --- The 768x1536 test image (PNG, written with zlib) and the same image as 9 tiles of
# normalised pixels (the 2x4 grid, then a thumbnail by 2x4 subsampling) for an npurt
# that only takes --pixels.
if [ ! -f "$IMAGE" ] || [ ! -f "$PIXELS" ]; then
    "$PY" - "$IMAGE" "$PIXELS" "$SEED" <<'EOF'
import json, struct, sys, zlib
import numpy as np

png, pix, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
W, H, T = 768, 1536, 384
y, x = np.mgrid[0:H, 0:W]
rng = np.random.default_rng(seed)
img = np.stack([x * 255 // (W - 1), y * 255 // (H - 1), (x ^ y) & 255], -1).astype(np.int32)
img = np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)

def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
raw = b"".join(b"\x00" + img[r].tobytes() for r in range(H))
with open(png, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))

tiles = [img[r * T:(r + 1) * T, c * T:(c + 1) * T] for r in range(H // T) for c in range(W // T)]
tiles.append(img[::H // T, ::W // T])
t = (np.stack(tiles).astype(np.float32) / 255.0 - 0.5) / 0.5
data = np.ascontiguousarray(t.transpose(0, 3, 1, 2)).tobytes()
head = json.dumps({"pixel_values": {"dtype": "F32", "shape": [len(tiles), 3, T, T],
                                    "data_offsets": [0, len(data)]}}).encode()
head += b" " * (-len(head) % 8)
with open(pix, "wb") as f:
    f.write(struct.pack("<Q", len(head)) + head + data)
print(f"wrote {png} and {pix} ({len(tiles)} tiles)")
EOF
fi

# --- How this npurt takes its input.
NPURT_INPUT=()
if [ "$SKIP_NPURT" != 1 ]; then
    help=$("$NPURT" encode-image --help 2>&1 || true)
    if ! grep -q -- "--synthetic" <<<"$help"; then
        echo "this npurt has no 'encode-image --synthetic'; timing llama.cpp only" >&2
        SKIP_NPURT=1
    elif grep -q -- "--image-size" <<<"$help"; then
        NPURT_INPUT=(--image-size 768x1536)
    elif grep -q -- "--image " <<<"$help"; then
        NPURT_INPUT=(--image "$IMAGE")
    else
        NPURT_INPUT=(--pixels "$PIXELS")
    fi
fi

OUT="$VDIR/results.jsonl"
: >"$OUT"
for round in $(seq "$ROUNDS"); do
    for t in $THREADS; do
        for wtype in $LLAMA_TYPES; do
            log="$VDIR/logs/llama-$wtype-t$t-r$round.log"
            cmd=("$BIN/llama-mtmd-cli" -m "$MODEL" --mmproj "$VDIR/mmproj-so400m-$wtype.gguf"
                --image "$IMAGE" -p "Describe the image." -n 1 -t "$t" -c "$LLAMA_CTX" -b "$LLAMA_CTX" -v)
            echo "round $round: ${cmd[*]}" >&2
            rc=0 && timeout "$TIMEOUT" "${cmd[@]}" >"$log" 2>&1 </dev/null || rc=$?
            "$PY" - "$log" "$round" "$t" "$wtype" "$rc" >>"$OUT" <<'EOF'
import json, re, sys
log, rnd, t, wtype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = open(log, errors="replace").read()
ms = re.findall(r"image slice encoded in (\d+) ms", s)
tiles = re.findall(r"batch_f32 size = (\d+)", s)
tokens = re.findall(r"image_tokens->nx = (\d+)", s)
row = {"round": rnd, "who": "llama.cpp", "config": wtype, "threads": t,
       "encode_ms": float(ms[0]) if ms else None,
       "tiles": int(tiles[0]) if tiles else None,
       "image_tokens": int(tokens[0]) if tokens else None, "log": log}
if not ms:
    rc = int(sys.argv[5])
    row["error"] = f"timed out (TIMEOUT)" if rc == 124 else \
        f"exit {rc}: " + (s.strip().splitlines() or ["no output"])[-1]
print(json.dumps(row))
EOF
        done
        [ "$SKIP_NPURT" = 1 ] && continue
        for precision in $PRECISIONS; do
            log="$VDIR/logs/npurt-$precision-t$t-r$round.log"
            # shellcheck disable=SC2086
            cmd=("$NPURT" encode-image --synthetic so400m "${NPURT_INPUT[@]}" --threads "$t"
                --precision "$precision" --json $NPURT_EXTRA)
            echo "round $round: ${cmd[*]}" >&2
            rc=0 && timeout "$TIMEOUT" "${cmd[@]}" >"$log" 2>&1 </dev/null || rc=$?
            "$PY" - "$log" "$round" "$t" "$precision" "$rc" >>"$OUT" <<'EOF'
import json, sys
log, rnd, t, precision = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
row = {"round": rnd, "who": "npurt", "config": precision, "threads": t, "log": log}
lines = [l for l in open(log, errors="replace").read().splitlines() if l.startswith("{")]
try:
    j = json.loads(lines[-1])
    pre = j.get("preprocess_ms") or 0.0
    row.update(encode_ms=j["total_ms"] - pre, total_ms=j["total_ms"], tiles=j["tiles"],
               image_tokens=j["image_tokens"], synthetic=j.get("synthetic"),
               blocks_ms=j.get("blocks_ms"), blocks_gop_s=j.get("blocks_gop_s"))
except (IndexError, KeyError, ValueError) as e:
    rc = int(sys.argv[5])
    tail = open(log, errors="replace").read().strip().splitlines()
    row.update(encode_ms=None, error="timed out (TIMEOUT)" if rc == 124 else
               f"exit {rc}: " + (tail or [repr(e)])[-1])
print(json.dumps(row))
EOF
        done
    done
done

"$PY" - "$OUT" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = {(r["round"], r["threads"], r["config"]): r for r in rows if r["who"] == "llama.cpp"}
ltypes = sorted({r["config"] for r in rows if r["who"] == "llama.cpp"})
print("Image encode of one 768x1536 image (ms, preprocessing excluded); per tile = ms / tiles.")
print("Ratios: npurt's speed per tile over llama.cpp's of the same round and threads (>1: npurt faster).")
hdr = ["round", "threads", "who", "config", "tiles", "image tokens", "ms / image", "ms / tile"]
hdr += [f"vs llama.cpp {t}" for t in ltypes]
print("| " + " | ".join(hdr) + " |")
print("|---" * len(hdr) + "|")
def per_tile(r):
    return r["encode_ms"] / r["tiles"] if r.get("encode_ms") is not None and r.get("tiles") else None
for r in sorted(rows, key=lambda r: (r["threads"], r["round"], r["who"] != "llama.cpp", r["config"])):
    pt = per_tile(r)
    cells = [r["round"], r["threads"], r["who"], r["config"], r.get("tiles") or "?",
             r.get("image_tokens") or "?",
             f"{r['encode_ms']:.0f}" if r.get("encode_ms") is not None else "failed: " + r.get("error", "")[:60],
             f"{pt:.0f}" if pt else "-"]
    for t in ltypes:
        b = base.get((r["round"], r["threads"], t))
        bt = per_tile(b) if b else None
        cells.append(f"{bt / pt:.2f}x" if r["who"] == "npurt" and pt and bt else "-")
    print("| " + " | ".join(map(str, cells)) + " |")
EOF
