#!/usr/bin/env bash
# The HTTP Caching Tests suite (npm http-cache-tests, as the test suite pins it) against Sluice's
# cache and nginx's proxy_cache, side by side, on loopback, with the suite's own origin behind
# both. Prints one line per target and kind of test: passed, failed, not reached, untested.
# Installs nginx when it is missing; builds Sluice (dev profile: this measures behaviour, not
# speed).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  say "Installing nginx"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q nginx >/dev/null
fi
export PATH="$PATH:/usr/sbin"
if [ ! -f tests/cache-tests/node_modules/http-cache-tests/package.json ]; then
  say "Installing the HTTP Caching Tests suite (npm ci in tests/cache-tests)"
  npm ci --prefix tests/cache-tests --omit=dev --no-audit --no-fund --loglevel=error
fi
say "Building sluice"
cargo build --quiet -p sluice

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }

origin_port=$(free_port)
(cd tests/cache-tests && npm_config_protocol=http npm_config_port="$origin_port" npm_config_pidfile="$work/origin.pid" \
  exec node node_modules/http-cache-tests/server/server.mjs >"$work/origin.log" 2>&1) &
pids+=($!)
wait_for "$origin_port"

sluice_port=$(free_port)
cat >"$work/sluice.toml" <<TOML
[[listener]]
bind = "127.0.0.1:$sluice_port"
[upstream.suite]
servers = [{ addr = "127.0.0.1:$origin_port" }]
[[route]]
upstream = "suite"
cache = {}
TOML
target/debug/sluice run --config "$work/sluice.toml" --log-level warn >"$work/sluice.log" 2>&1 &
pids+=($!)

nginx_port=$(free_port)
mkdir -p "$work/nginx/cache"
# nginx's workers drop to an unprivileged user when it starts as root: let them write the cache.
chmod 755 "$work" && chmod -R a+rwx "$work/nginx"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events {}
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  proxy_cache_path $work/nginx/cache levels=1:2 keys_zone=suite:8m max_size=1g inactive=60m use_temp_path=off;
  upstream suite { server 127.0.0.1:$origin_port; keepalive 16; }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://suite;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache suite;
      proxy_cache_revalidate on;
    }
  }
}
CONF
nginx -c "$work/nginx.conf" -p "$work/nginx"
wait_for "$sluice_port"
wait_for "$nginx_port"

nginx_version=$(nginx -v 2>&1 | sed 's/.*nginx\///')
suite_version=$(node -p "require('./tests/cache-tests/node_modules/http-cache-tests/package.json').version")
say "Running http-cache-tests $suite_version against Sluice and nginx $nginx_version"
printf 'target\tkind\tpassed\tfailed\tnot reached\tuntested\n'
cd tests/cache-tests
node run-suite.mjs "http://127.0.0.1:$sluice_port" | node summarize.mjs sluice
node run-suite.mjs "http://127.0.0.1:$nginx_port" | node summarize.mjs "nginx $nginx_version proxy_cache"
