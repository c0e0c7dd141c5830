#!/usr/bin/env bash
# Soak (issue #11 point 9): 10,000 generate requests on SmolLM2 from several threads,
# each in a session created, used and dropped, with mixed prompt lengths and 1-8 new
# tokens; prints RSS after a warm-up and at the end, and fails if the end is not within
# 5% of the start. Arguments go to the soak binary (runtime/examples/soak.rs), e.g.
#   scripts/soak.sh --requests 2000 --threads 2
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo build --release -p npurt-runtime --example soak
exec ./target/release/examples/soak "$@"
