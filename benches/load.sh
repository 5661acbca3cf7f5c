#!/usr/bin/env bash
# The load harness, from a clean clone: installs nginx, HAProxy and wrk when they are missing,
# builds Sluice and the benchmark origin in release mode, then runs the same load through the
# origin directly, nginx, HAProxy, Sluice and Sluice with three filters, cache hits of nginx's
# proxy_cache against Sluice's cache (see
# benches/src/bin/load.rs). Arguments go to the harness: --duration, --rounds, --connections,
# --proxy-cpus, --load-cpus, --only, --out. The report lands in target/bench/load.md.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  say "Installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}" >/dev/null
fi
# Debian's nginx package starts a system nginx on port 80; the harness runs its own.
export PATH="$PATH:/usr/sbin"

sdk/rust/install-toolchain.sh

say "Building sluice, the benchmark origin and the harness (release)"
cargo build --release --quiet -p sluice -p sluice-benches --bins

say "Running the load harness"
exec target/release/load "$@"
