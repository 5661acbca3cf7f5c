#!/usr/bin/env bash
# Runs Sluice's whole test suite: unit tests, component tests and end-to-end tests.
# Installs or builds whatever the suite needs first, saying what it does.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
  echo "cargo is required: install Rust from https://rustup.rs" >&2
  exit 1
fi

say "Building the workspace and its tests"
cargo build --workspace --all-targets --locked

if cargo nextest --version >/dev/null 2>&1; then
  say "Running the test suite (cargo nextest)"
  cargo nextest run --workspace --locked --no-fail-fast
else
  say "cargo-nextest not found; running the test suite with cargo test"
  cargo test --workspace --locked --no-fail-fast
fi
