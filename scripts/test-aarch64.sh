#!/usr/bin/env bash
# The AArch64 CPU path (Isa::NeonDot and the portable kernels as an ARM CPU compiles
# them) on an x86-64 machine: cross-builds the tests for aarch64-unknown-linux-gnu and
# runs them under qemu-user with every extension on (`-cpu max`: FEAT_DotProd and
# more). Installs what it needs on Debian (the cross linker, qemu-user, the Rust
# target). Arguments go to cargo test (default: the kernel tests, the CPU conformance
# suite and SmolLM2's greedy goldens). qemu emulates, so nothing here says anything
# about speed.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "test-aarch64.sh: missing system packages: ${need_apt[*]} (run as root or install them)" >&2
    exit 1
  fi
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu max"
# cpu_kernels fails if the emulated CPU did not offer the NEON dot-product path.
export NPURT_REQUIRE_ISA="${NPURT_REQUIRE_ISA:-neon+dotprod}"
run() {
  echo "test-aarch64.sh: cross-building for $target and running under qemu-aarch64 -cpu max: $*" >&2
  cargo test --release --target "$target" --no-fail-fast "$@"
}
if [ $# -gt 0 ]; then
  run "$@"
  exit
fi
status=0
run -p npurt-kernels --lib -p npurt-tests --test cpu_kernels --test conformance_cpu || status=$?
# The main job on the NEON kernels: SmolLM2 at w4a16 continues HF's greedy cases
# (about 4 minutes under qemu; the other goldens pass too, by hand: see the README).
run -p npurt-tests --test golden_smollm2 -- --exact greedy_continuations_match_hf || status=$?
exit "$status"
