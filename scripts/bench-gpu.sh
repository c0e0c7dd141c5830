#!/usr/bin/env bash
# npurt on a GPU against llama.cpp's Vulkan backend, same machine, same run, same
# random weights (issue 12, point 6). Prints the table model x engine x test with the
# npurt / llama.cpp ratios, and whether `npurt conformance` passes on the backend.
#
# - Models: `npurt make-model` writes two seeded random-weight LLaMAs (SmolLM2-135M's
#   shape and a 2.7B shape) as a GGUF (f16, then llama-quantize to Q4_0, for
#   llama.cpp) and as an HF directory (f16, loaded by npurt at w4a16): the same weights.
#   The tokenizer is copied from the SmolLM2 GGUF when it is there (scripts/fetch-model.sh),
#   else make-model's byte-level one (llama-bench feeds random tokens either way).
# - llama.cpp: the pinned sources every comparison here uses (scripts/lib/llamacpp.sh),
#   built static with -DGGML_VULKAN=ON (needs libvulkan-dev and glslc) in
#   target/llamacpp/src/vendor/llama.cpp/build-vulkan; all layers offloaded (-ngl 99).
# - Timing: npurt and llama-bench alternate, ROUNDS times, so both see the same
#   machine state; each row is the mean over rounds of each tool's own mean.
# - Correctness beside speed: `npurt conformance --backend $BACKEND`, and the logits of
#   the first shape's model for 16 tokens on the CPU backend against $BACKEND, at f32
#   and at $PRECISION (max difference relative to the logit range, top-1 agreement).
#
# Offline: give prebuilt binaries and nothing is built or fetched:
#   BIN_DIR=dir (holding npurt, llama-bench, llama-quantize and, for the static
#   llama.cpp build, libgomp.so.1), or NPURT=, LLAMA_BENCH=, LLAMA_QUANTIZE= one by one.
# PACK=dir builds (or finds) the three, copies them stripped into dir with the
# libgomp.so.1 llama.cpp loads, and stops: what to carry to a GPU machine with no
# network (about 50 MB), to run there as BIN_DIR=dir.
# Without a Vulkan loader on the machine see ../shared/gpu/README.md (Debian's
# libvulkan1 extracted; VK_DRIVER_FILES pointing at the driver's ICD).
#
# Usage: scripts/bench-gpu.sh
#   env: BACKEND=wgpu (npurt's backend)  SHAPES="smollm2-135m llama-2.7b"
#        PROMPTS=16,128,512 GEN=128 REPS=3 ROUNDS=2 SEED=0 PRECISION=w4a16
#        DEPTH=2048 (round 1 also decodes GEN tokens after DEPTH tokens of context,
#        both engines: long-context decode, as after an image's tokens; 0: skip)
#        LLAMA_BUILD=vulkan|cpu (which llama.cpp build to use or make)
#        MAKE_FLAGS="" (more make-model flags, e.g. "--layers 4")
#        TOKENIZER=a GGUF whose tokenizer the models get (default: the SmolLM2 GGUF;
#        a path that is not there: make-model's byte-level vocabulary)
#        CONFORMANCE=1 (0: skip the conformance suite)  AGREE=1 (0: skip the logits
#        comparison)  JOBS=$(nproc) (build jobs)
#        KERNEL_BENCH=1 (0: skip the WGSL kernel benches; WGPU_BENCH= their prebuilt
#        criterion binary, packed as npurt-wgpu-bench)  VARIANTS_AB=1 (0: skip npurt's
#        runs with NPURT_WGPU_VARIANTS=plain, with NPURT_WGPU_GEMM_ROWS=32, with
#        NPURT_WGPU_GEMV_COLS=1, with --chunk 512, with NPURT_WGPU_PADDED_ROWS=1,
#        with wgpu's indirect-dispatch check (WGPU_VALIDATION_INDIRECT_CALL=1), with
#        NPURT_WGPU_ATTN_SPLITS=1 at DEPTH and, where the adapter has cooperative
#        matrices, without them)
#        QUICK=1: try it on a CPU-only box: the small shape cut to 4 layers, -p 32
#        -n 8, one repetition, one round, llama.cpp's CPU build (lavapipe for wgpu)
#        PACK=dir: make the offline bundle (above) and stop
# Writes target/gpu-bench/: models/, results.jsonl, conformance.txt, agreement.txt,
# profile-<shape>.json (round 1's npurt bench, with --profile: its decode step at DEPTH), table.md, logs/. The table also gives
# npurt's kernels, the device's measured copy bandwidth and peaks, decode as a fraction
# of that bandwidth and the prefill matmuls as a fraction of the f32 FMA peak (and of
# the f16 matrix peak where the coop GEMM runs).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/llamacpp.sh
. scripts/lib/llamacpp.sh

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    : "${SHAPES:=smollm2-135m}" "${PROMPTS:=32}" "${GEN:=8}" "${REPS:=1}" "${ROUNDS:=1}" "${DEPTH:=64}"
    : "${LLAMA_BUILD:=cpu}" "${MAKE_FLAGS:=--layers 4}" "${KERNEL_BENCH:=0}"
    # ggml's Vulkan backend skips CPU devices (lavapipe) unless they are named.
    [ "$LLAMA_BUILD" = vulkan ] && export GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
fi
BACKEND=${BACKEND:-wgpu}
SHAPES=${SHAPES:-smollm2-135m llama-2.7b}
# 16: a short chat turn in one 128-row chunk (its valid rows only, unless padded).
PROMPTS=${PROMPTS:-16,128,512}
GEN=${GEN:-128}
DEPTH=${DEPTH:-2048}
REPS=${REPS:-3}
ROUNDS=${ROUNDS:-2}
SEED=${SEED:-0}
PRECISION=${PRECISION:-w4a16}
LLAMA_BUILD=${LLAMA_BUILD:-vulkan}
MAKE_FLAGS=${MAKE_FLAGS:-}
CONFORMANCE=${CONFORMANCE:-1}
KERNEL_BENCH=${KERNEL_BENCH:-1}
VARIANTS_AB=${VARIANTS_AB:-1}
AGREE=${AGREE:-1}
JOBS=${JOBS:-$(nproc)}
OUT=target/gpu-bench
TOKENIZER=${TOKENIZER:-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
mkdir -p "$OUT/models" "$OUT/logs"

say() { echo "bench-gpu.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# --- Binaries: given (offline), or built here.
if [ -n "${BIN_DIR:-}" ]; then
    NPURT=${NPURT:-$BIN_DIR/npurt}
    LLAMA_BENCH=${LLAMA_BENCH:-$BIN_DIR/llama-bench}
    LLAMA_QUANTIZE=${LLAMA_QUANTIZE:-$BIN_DIR/llama-quantize}
    # A static llama.cpp build with OpenMP still loads libgomp.so.1.
    export LD_LIBRARY_PATH="$BIN_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -z "${NPURT:-}" ]; then
    cargo build --release -p npurt-runtime
    NPURT=target/release/npurt
fi
# The WGSL kernel benches (benches/wgpu.rs: GEMV/GEMM/attention, each quoted against the
# device's measured peak or copy bandwidth), as a prebuilt criterion binary.
if [ "$KERNEL_BENCH" = 1 ] && [ -z "${WGPU_BENCH:-}" ]; then
    if [ -n "${BIN_DIR:-}" ]; then
        WGPU_BENCH=$BIN_DIR/npurt-wgpu-bench
    else
        WGPU_BENCH=$(cargo bench -p npurt-benches --bench wgpu --no-run --message-format=json 2>/dev/null |
            python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "wgpu" and m.get("executable"):
        print(m["executable"])')
    fi
fi
case "$LLAMA_BUILD" in
    vulkan) BUILD=build-vulkan FLAGS="-DGGML_VULKAN=ON -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_OPENMP=ON" ;;
    # The build the CPU comparisons (scripts/bench-vs-llamacpp.sh) use.
    cpu) BUILD=build FLAGS="-DGGML_NATIVE=ON -DGGML_OPENMP=ON" ;;
    *) die "LLAMA_BUILD must be vulkan or cpu, not $LLAMA_BUILD" ;;
esac
if [ -z "${LLAMA_BENCH:-}" ] || [ -z "${LLAMA_QUANTIZE:-}" ]; then
    BIN="$LLAMACPP_SRC/$BUILD/bin"
    if [ ! -x "$BIN/llama-bench" ] || [ ! -x "$BIN/llama-quantize" ]; then
        say "building llama.cpp ($LLAMA_BUILD) in $LLAMACPP_SRC/$BUILD..."
        JOBS=$JOBS llamacpp_build "$BUILD" "$FLAGS" llama-bench llama-quantize
    fi
    LLAMA_BENCH=${LLAMA_BENCH:-$BIN/llama-bench}
    LLAMA_QUANTIZE=${LLAMA_QUANTIZE:-$BIN/llama-quantize}
fi
for b in "$NPURT" "$LLAMA_BENCH" "$LLAMA_QUANTIZE"; do
    [ -x "$b" ] || die "$b is not an executable"
done
if [ -n "${PACK:-}" ]; then
    mkdir -p "$PACK"
    for b in "$NPURT" "$LLAMA_BENCH" "$LLAMA_QUANTIZE"; do
        strip -o "$PACK/$(basename "$b")" "$b"
    done
    if [ -n "${WGPU_BENCH:-}" ]; then
        strip -o "$PACK/npurt-wgpu-bench" "$WGPU_BENCH"
    fi
    gomp="$(ldd "$LLAMA_BENCH" | awk '/libgomp/ {print $3}')"
    [ -z "$gomp" ] || cp -L "$gomp" "$PACK/"
    say "packed into $PACK ($(du -sh "$PACK" | cut -f1)): run there as BIN_DIR=$PACK scripts/bench-gpu.sh"
    exit 0
fi

# --- The models, made once per shape, seed and flags (file names say which).
TOK_FLAG=()
TOK_TAG=""
if [ -f "$TOKENIZER" ]; then
    TOK_FLAG=(--tokenizer-from "$TOKENIZER")
else
    say "$TOKENIZER is not there: the models get make-model's byte-level vocabulary"
    TOK_TAG="-bytevocab"
fi
# Model file names say what made them, so a changed knob makes new models.
tag() { echo "$1-seed$SEED$(echo "$MAKE_FLAGS" | tr -d ' -')$TOK_TAG"; }
for shape in $SHAPES; do
    base="$OUT/models/$(tag "$shape")"
    # shellcheck disable=SC2086  # MAKE_FLAGS are words
    if [ ! -d "$base-hf" ]; then
        "$NPURT" make-model --shape "$shape" --seed "$SEED" $MAKE_FLAGS "${TOK_FLAG[@]}" \
            --format hf --dtype f16 --out "$base-hf"
    fi
    if [ ! -f "$base-q4_0.gguf" ]; then
        # shellcheck disable=SC2086
        "$NPURT" make-model --shape "$shape" --seed "$SEED" $MAKE_FLAGS "${TOK_FLAG[@]}" \
            --format gguf --dtype f16 --out "$base-f16.gguf"
        "$LLAMA_QUANTIZE" "$base-f16.gguf" "$base-q4_0.gguf.partial" Q4_0 \
            >"$OUT/logs/quantize-$shape.log" 2>&1 || die "llama-quantize failed: $OUT/logs/quantize-$shape.log"
        mv "$base-q4_0.gguf.partial" "$base-q4_0.gguf"
        rm -f "$base-f16.gguf"
    fi
done

# --- Measurements: conformance, then npurt and llama-bench in alternation.
START=$(date +%s)
"$NPURT" backends >"$OUT/backends.txt" 2>&1 || true
# The optional instructions the backend uses (`npurt backends`: "[kernels: tiled
# (f16+subgroup+dot4+coop)]"), and the same list without cooperative matrices.
VARIANTS=$(sed -n "s/^$BACKEND: .*(\([a-z0-9+]*\)[^(]*)\]$/\1/p" "$OUT/backends.txt" | head -1)
NO_COOP=$(printf '%s' "$VARIANTS" | sed 's/+coop//; s/^coop$/plain/')
CONF="skipped"
if [ "$CONFORMANCE" = 1 ]; then
    say "npurt conformance --backend $BACKEND..."
    if "$NPURT" conformance --backend "$BACKEND" >"$OUT/conformance.txt" 2>&1; then
        CONF="passed"
    else
        CONF="FAILED"
    fi
    CONF="$CONF ($(grep -Eio '[0-9]+ passed[^|]*' "$OUT/conformance.txt" | tail -1 || true))"
    # Cooperative matrices are wgpu-experimental and tested only where a GPU offers
    # them: if the suite fails with them and passes without, measure without them.
    if [ "${CONF%% *}" = FAILED ] && [ "$VARIANTS" != "$NO_COOP" ]; then
        say "conformance failed with $VARIANTS; trying NPURT_WGPU_VARIANTS=$NO_COOP..."
        if NPURT_WGPU_VARIANTS="$NO_COOP" "$NPURT" conformance --backend "$BACKEND" \
            >"$OUT/conformance-no-coop.txt" 2>&1; then
            export NPURT_WGPU_VARIANTS="$NO_COOP"
            CONF="$CONF; without coop passed: measured with NPURT_WGPU_VARIANTS=$NO_COOP"
            VARIANTS="$NO_COOP"
        fi
    fi
fi
AGREEMENT="skipped"
if [ "$AGREE" = 1 ]; then
    first="$OUT/models/$(tag "${SHAPES%% *}")-hf"
    ids=1,9,100,2000,30,47,5,600,7000,8,11,123,4096,77,3,42
    : >"$OUT/agreement.txt"
    for precision in f32 "$PRECISION"; do
        for backend in cpu "$BACKEND"; do
            "$NPURT" logits --model "$first" --backend "$backend" --precision "$precision" \
                --ids "$ids" --out "$OUT/logs/logits-$backend-$precision.safetensors" \
                2>"$OUT/logs/logits-$backend-$precision.err" ||
                die "npurt logits failed: $OUT/logs/logits-$backend-$precision.err"
        done
        python3 - "$OUT/logs/logits-cpu-$precision.safetensors" \
            "$OUT/logs/logits-$BACKEND-$precision.safetensors" "$precision" "$BACKEND" \
            >>"$OUT/agreement.txt" <<'EOF'
import json, struct, sys

def rows(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    t = json.loads(b[8:8 + n])["logits"]
    (begin, end), (count, vocab) = t["data_offsets"], t["shape"]
    v = struct.unpack(f"<{count * vocab}f", b[8 + n + begin:8 + n + end])
    return [v[i * vocab:(i + 1) * vocab] for i in range(count)]

a, b = rows(sys.argv[1]), rows(sys.argv[2])
rel = max(max(abs(x - y) for x, y in zip(ra, rb)) / (max(ra) - min(ra)) for ra, rb in zip(a, b))
top1 = sum(ra.index(max(ra)) == rb.index(max(rb)) for ra, rb in zip(a, b))
print(f"{sys.argv[3]}: max |cpu - {sys.argv[4]}| = {rel:.2e} of the logit range, top-1 {top1}/{len(a)}")
EOF
    done
    AGREEMENT="$(paste -sd';' "$OUT/agreement.txt" | sed 's/;/; /g')"
fi
# Both engines must be on the device the comparison is about: a missing Vulkan loader
# or ICD makes llama.cpp fall back to its CPU code and wgpu to lavapipe, silently.
check_devices() {
    python3 - "$1" "$2" "$LLAMA_BUILD" "$BACKEND" "$QUICK" <<'EOF'
import json, sys
llama, npurt = json.load(open(sys.argv[1]))[0], json.load(open(sys.argv[2]))
build, backend, quick = sys.argv[3], sys.argv[4], sys.argv[5] == "1"
gpu = llama.get("gpu_info") or ""
device = npurt["machine"][0]["device"] if npurt["machine"] else ""
problems = []
if build == "vulkan" and not gpu:
    problems.append("llama.cpp found no Vulkan device and ran on the CPU")
if not quick and "llvmpipe" in gpu:
    problems.append(f"llama.cpp ran on {gpu}, a CPU Vulkan driver")
if not quick and backend != "cpu" and ("Cpu" in device or "llvmpipe" in device):
    problems.append(f"npurt ran on {device}, a CPU Vulkan driver")
for p in problems:
    print(f"bench-gpu.sh: error: {p} (see ../shared/gpu/README.md: Vulkan loader, VK_DRIVER_FILES)", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for shape in $SHAPES; do
        base="$OUT/models/$(tag "$shape")"
        log="$OUT/logs/$shape-round$round"
        # Round 1 also decodes at depth (llama-bench runs its prefill tests at that
        # depth too; the table leaves those out, npurt's -d is for decode only).
        depth=()
        [ "$round" != 1 ] || [ "$DEPTH" = 0 ] || depth=(-d "0,$DEPTH")
        say "round $round, $shape: llama-bench..."
        "$LLAMA_BENCH" -m "$base-q4_0.gguf" -p "$PROMPTS" -n "$GEN" "${depth[@]}" -r "$REPS" -ngl 99 -o json \
            >"$log-llamacpp.json" 2>"$log-llamacpp.err" || die "llama-bench failed: $log-llamacpp.err"
        python3 -c 'import json, sys; [print(json.dumps({"round": int(sys.argv[1]), "shape": sys.argv[2], "who": "llama.cpp", "row": r})) for r in json.load(open(sys.argv[3]))]' \
            "$round" "$shape" "$log-llamacpp.json" >>"$RESULTS"
        say "round $round, $shape: npurt bench --backend $BACKEND..."
        # Round 1 also profiles a prefill chunk and a decode step (after the timed
        # tests, on the same loaded model): where the time goes, the prefill matmuls'
        # rate against the device's measured f32 FMA peak, the host's share of a run.
        profile=()
        [ "$round" != 1 ] || profile=(--profile)
        "$NPURT" bench --model "$base-hf" --backend "$BACKEND" --precision "$PRECISION" \
            -p "$PROMPTS" -n "$GEN" "${depth[@]}" -r "$REPS" "${profile[@]}" --json >"$log-npurt.json" 2>"$log-npurt.err" ||
            die "npurt bench failed: $log-npurt.err"
        [ "$round" != 1 ] || cp "$log-npurt.json" "$OUT/profile-$shape.json"
        python3 -c 'import json, sys; print(json.dumps({"round": int(sys.argv[1]), "shape": sys.argv[2], "who": "npurt", "row": json.load(open(sys.argv[3]))}))' \
            "$round" "$shape" "$log-npurt.json" >>"$RESULTS"
        [ "$round" != 1 ] || check_devices "$log-llamacpp.json" "$log-npurt.json" || exit 1
    done
done
# The same npurt runs without the optional instructions (f16 tiles, subgroups, dot4),
# with 32-row GEMM tiles, with one GEMV column per thread and with 512-row prefill
# chunks (llama.cpp's batch; npurt's default is the NPU design's 128), with every
# padding row of a chunk computed (pp16's chunk), with wgpu checking each indirect
# dispatch (a dispatch of its own each), and decode at DEPTH with attention's keys
# unsplit: what each is worth, same run. A config is
# environment assignments (NAME=value) and bench flags.
if [ "$VARIANTS_AB" = 1 ] && [ "$BACKEND" = wgpu ]; then
    for shape in $SHAPES; do
        base="$OUT/models/$(tag "$shape")"
        configs=("NPURT_WGPU_VARIANTS=plain" "NPURT_WGPU_GEMM_ROWS=32" "NPURT_WGPU_GEMV_COLS=1" "--chunk 512" "NPURT_WGPU_PADDED_ROWS=1" "WGPU_VALIDATION_INDIRECT_CALL=1")
        [ "$VARIANTS" = "$NO_COOP" ] || configs+=("NPURT_WGPU_VARIANTS=$NO_COOP")
        # Decode attention's keys unsplit, where the split (flash-decoding) matters: at depth.
        [ "$DEPTH" = 0 ] || configs+=("NPURT_WGPU_ATTN_SPLITS=1 -d 0,$DEPTH")
        for config in "${configs[@]}"; do
            assign=()
            flags=()
            read -ra words <<<"$config"
            for w in "${words[@]}"; do
                case "$w" in
                    [A-Z]*=*) assign+=("$w") ;;
                    *) flags+=("$w") ;;
                esac
            done
            log="$OUT/logs/$shape-$(printf %s "${config##*_}" | tr -c 'A-Za-z0-9=' _)"
            say "$shape: npurt bench --backend wgpu, $config..."
            env "${assign[@]}" "$NPURT" bench --model "$base-hf" --backend wgpu --precision "$PRECISION" \
                -p "$PROMPTS" -n "$GEN" -r "$REPS" "${flags[@]}" --json >"$log-npurt.json" 2>"$log-npurt.err" ||
                die "npurt bench ($config) failed: $log-npurt.err"
            python3 -c 'import json, sys; print(json.dumps({"round": 1, "shape": sys.argv[1], "who": "npurt", "variants": sys.argv[2], "row": json.load(open(sys.argv[3]))}))' \
                "$shape" "$config" "$log-npurt.json" >>"$RESULTS"
        done
    done
fi
# The kernel benches: GEMM GOP/s against the measured peaks, GEMV against the copy
# bandwidth, attention.
KERNELS="skipped"
if [ "$KERNEL_BENCH" = 1 ] && [ "$BACKEND" = wgpu ]; then
    if [ -x "${WGPU_BENCH:-}" ]; then
        say "kernel benches ($WGPU_BENCH)..."
        "$WGPU_BENCH" --bench >"$OUT/kernels.txt" 2>"$OUT/logs/kernels.err" || die "kernel benches failed: $OUT/logs/kernels.err"
        KERNELS="$OUT/kernels.txt"
    else
        say "no kernel bench binary (WGPU_BENCH); skipping the kernel benches"
    fi
fi
ELAPSED=$(($(date +%s) - START))

python3 - "$RESULTS" "$OUT/table.md" "$CONF" "$ELAPSED" "$BACKEND" "$PRECISION" "$AGREEMENT" "$OUT" "$KERNELS" <<'EOF'
import json, sys
from collections import defaultdict
from datetime import date

results, table_path, conformance, elapsed, backend, precision, agreement, out, kernels = sys.argv[1:10]
# (shape, engine, test) -> [tok/s per round]; devices as each tool names them.
cells = defaultdict(list)
devices = {}
machines = {}
shapes, tests = [], []
for line in open(results):
    r = json.loads(line)
    shape, row = r["shape"], r["row"]
    if shape not in shapes:
        shapes.append(shape)
    if r["who"] == "llama.cpp":
        test = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        if row.get("n_depth"):
            if row["n_prompt"]:
                continue
            test += f" @ d{row['n_depth']}"
        engine = f"llama.cpp {row.get('backends', '?')} Q4_0"
        cells[(shape, engine, test)].append(row["avg_ts"])
        devices["llama.cpp"] = row.get("gpu_info") or row.get("cpu_info", "?")
        if test not in tests:
            tests.append(test)
    else:
        engine = f"npurt {backend} {precision}"
        if r.get("variants"):
            engine += f" ({r['variants']})"
        for x in row["rows"]:
            cells[(shape, engine, x["test"])].append(x["tok_s_mean"])
            if x["test"] not in tests:
                tests.append(x["test"])
        devices["npurt"] = row["machine"][0]["device"] if row["machine"] else "?"
        if row["machine"] and not r.get("variants"):
            machines[shape] = row["machine"][0]
tests.sort(key=lambda t: (t[:2] != "pp", int(t[2:].split()[0]), int(t.split("@ d")[1]) if "@ d" in t else 0))
engines = sorted({e for (_, e, _) in cells}, key=lambda e: not e.startswith("npurt"))
mean = lambda v: sum(v) / len(v) if v else None
fmt = lambda x: "-" if x is None else f"{x:.1f}"
lines = [
    f"tokens/s, mean over rounds; {date.today().isoformat()}",
    f"npurt device: {devices.get('npurt', '?')}",
    f"llama.cpp device: {devices.get('llama.cpp', '?')}",
    "",
    "| model | engine | " + " | ".join(tests) + " |",
    "|---|---|" + "---|" * len(tests),
]
for shape in shapes:
    for engine in engines:
        vals = [fmt(mean(cells.get((shape, engine, t), []))) for t in tests]
        lines.append(f"| {shape} | {engine} | " + " | ".join(vals) + " |")
    npurt = [e for e in engines if e.startswith("npurt") and "(" not in e]
    llama = [e for e in engines if e.startswith("llama.cpp")]
    if npurt and llama:
        ratios = []
        for t in tests:
            a, b = mean(cells.get((shape, npurt[0], t), [])), mean(cells.get((shape, llama[0], t), []))
            ratios.append(f"{a / b:.2f}x" if a and b else "-")
        lines.append(f"| {shape} | npurt / llama.cpp | " + " | ".join(ratios) + " |")
# npurt's kernels, the device's measured limits, decode against the copy bandwidth and
# the prefill matmuls against the f32 FMA peak, the decode matmuls' weight reads against
# the copy bandwidth (from each shape's profile).
lines.append("")
for shape in shapes:
    m = machines.get(shape)
    if not m:
        continue
    lim = m.get("device_limits") or {}
    peaks = {p["arithmetic"]: p["ops_per_s"] for p in lim.get("peaks", [])}
    copy = lim.get("copy_gb_s")
    desc = f"{shape}: npurt kernels {m.get('kernels', '?')}"
    if copy:
        desc += f"; device copy {copy:.0f} GB/s, " + ", ".join(
            f"{k} {v / 1e12:.1f} TOP/s" for k, v in peaks.items())
    tg = mean(cells.get((shape, f"npurt {backend} {precision}", next((t for t in tests if t.startswith("tg")), "")), []))
    if tg and copy:
        gbs = tg * m["weight_mib"] * 2**20 / 1e9
        desc += f"; decode reads {gbs:.0f} GB/s = {100 * gbs / copy:.0f}% of copy"
    try:
        prof = json.load(open(f"{out}/profile-{shape}.json"))["profile"][0]
        for part in ("prefill", "decode"):
            mm = prof[part]["matmul"]
            frac = mm.get("fraction_of_f32_fma_peak")
            mfrac = mm.get("fraction_of_f16_matrix_peak")
            # The decode step's matmuls read its weights: point 4's GEMV bandwidth.
            bfrac = mm.get("fraction_of_copy_bandwidth") if part == "decode" else None
            kinds = sorted(prof[part]["by_kind"], key=lambda k: -k["ms"])[:4]
            host = prof[part]["host"]
            rows = f"{prof['prefill_rows']} rows" if part == "prefill" else f"1 row, {prof.get('decode_depth', '?')} tokens in the cache"
            desc += (f"\n  {part} ({rows}): "
                     f"{prof[part]['nodes_ms']:.2f} ms in nodes ("
                     + ", ".join(f"{k['op']} {k['ms']:.2f}" for k in kinds) + ")"
                     f"; matmuls {mm['ops_per_s'] / 1e12:.2f} TOP/s"
                     + (f" = {100 * frac:.1f}% of the f32 FMA peak" if frac is not None else "")
                     + (f", {100 * mfrac:.1f}% of the f16 matrix peak (3 products each)" if mfrac is not None else "")
                     + (f"; matmul weights read at {mm['weight_bytes_per_s'] / 1e9:.0f} GB/s = {100 * bfrac:.1f}% of copy" if bfrac is not None else "")
                     + f"; an ordinary run {host['total_ms']:.2f} ms (record {host['record_ms']:.2f}, "
                     f"submit {host['submit_ms']:.2f}, wait {host['wait_ms']:.2f}, read back {host['readback_ms']:.2f})")
    except (OSError, KeyError, IndexError, ValueError) as e:
        desc += f"\n  (no profile: {e})"
    lines.append(desc)
if kernels != "skipped":
    summary = [l.strip() for l in open(kernels) if l.startswith(("wgpu adapter", "measured ")) or "GOP/s" in l]
    lines += ["", "kernel benches (benches/wgpu.rs, best time per kernel):"] + [f"  {l}" for l in summary]
lines += [
    "",
    f"conformance on {backend}: {conformance}",
    f"logits of {shapes[0] if shapes else '-'}, cpu vs {backend}: {agreement}",
    f"measurements took {elapsed} s",
]
text = "\n".join(lines) + "\n"
open(table_path, "w").write(text)
print(text, end="")
EOF
case "$CONF" in FAILED*) exit 1 ;; esac
