#!/usr/bin/env bash
# Makes sure this machine can build Rust filters for wasm32-unknown-unknown, installing a
# toolchain when none can: rustup's target where rustup can download it, otherwise Debian's
# rustc-web with its library source (filters are then built with -Zbuild-std).
set -euo pipefail

say() { printf '==> %s\n' "$*"; }

has_rustup_target() {
  command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown
}
has_debian_toolchain() {
  [ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/src/rust/library ] && [ -e /usr/bin/rust-lld ]
}

if has_rustup_target; then
  say "Wasm filter toolchain: rustup's wasm32-unknown-unknown target"
  exit 0
fi
if has_debian_toolchain; then
  say "Wasm filter toolchain: Debian rustc-web, building std for wasm32"
  exit 0
fi

if command -v rustup >/dev/null; then
  say "Installing the wasm32-unknown-unknown target with rustup"
  if timeout 120 rustup target add wasm32-unknown-unknown && has_rustup_target; then
    exit 0
  fi
  say "rustup could not install the target; trying Debian's packages"
fi

if command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  say "Installing rustc-web, cargo-web, rust-web-src and lld-22 with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rustc-web cargo-web rust-web-src lld-22 >/dev/null
  if has_debian_toolchain; then
    exit 0
  fi
fi

echo "error: no way to get a Rust toolchain for wasm32 here: run 'rustup target add wasm32-unknown-unknown'" >&2
exit 1
