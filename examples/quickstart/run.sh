#!/usr/bin/env bash
# Starts Sluice on the quickstart configuration, with two echo origins behind it.
# Builds what it needs first. Stop everything with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! command -v cargo >/dev/null; then
  echo "cargo is required: install Rust from https://rustup.rs" >&2
  exit 1
fi

sdk/rust/install-toolchain.sh
# The /partners route runs a filter written in Go (examples/go-header-policy).
sdk/go/install-toolchain.sh >/dev/null

say "Building sluice and the example origin"
cargo build --quiet -p sluice -p echo-origin

# Filters build into one shared folder, so Sluice's filters share their compiled dependencies.
export SLUICE_PLUGIN_TARGET_DIR="$PWD/target/plugins"

say "Checking examples/quickstart/sluice.toml (this builds its filters; the first time takes a minute or two)"
target/debug/sluice check --config examples/quickstart/sluice.toml

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

say "Starting echo origins on 127.0.0.1:3001 and 127.0.0.1:3002"
target/debug/echo-origin --listen 127.0.0.1:3001 --name origin-a & pids+=($!)
target/debug/echo-origin --listen 127.0.0.1:3002 --name origin-b & pids+=($!)

say "Starting sluice on http://127.0.0.1:8080 (admin on http://127.0.0.1:9901)"
echo "    try: curl -i http://127.0.0.1:8080/api/hello, and the dashboard at http://127.0.0.1:9901/"
target/debug/sluice run --config examples/quickstart/sluice.toml "$@" & pids+=($!)
wait "${pids[-1]}"
