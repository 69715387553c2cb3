#!/usr/bin/env bash
# Runs every test: formatting and lint gates, the Rust unit/property/integration tests (with the
# benchmarks compiled and run once as tests), then the interop suite with the clients people
# use (pika, paho-mqtt), which makes its own Python venv.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --all-targets

echo "== interop (pika, paho-mqtt)"
interop/run.sh
