#!/usr/bin/env bash
# Builds weir and runs an example topology (default: the word count) on the embedded
# default runtime. Extra arguments go to `weir run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh
job="${1:-examples/wordcount.toml}"
shift || true
cargo run --release --quiet --bin weir -- run "$job" "$@"
