#!/usr/bin/env bash
# The WAF's detection and false positives on the corpora in plugins/waf/tests/corpus, measured
# over HTTP in one run against:
#   - nginx with ModSecurity v3 (Debian's libnginx-mod-http-modsecurity) and Debian's OWASP CRS
#     at paranoia levels 1 and 2 (the anchor),
#   - Sluice's waf filter: built-in rules, the same CRS at PL1 and PL2 through its SecLang engine,
#     and both together.
# Every target proxies to the same local origin; the requests are interleaved across targets.
#
#   benches/waf-corpus.sh            # writes target/bench/waf-corpus.md
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

crs=${SLUICE_CRS_RULES:-/usr/share/modsecurity-crs/rules}
module=/usr/lib/nginx/modules/ngx_http_modsecurity_module.so
if [ ! -d "$crs" ] || [ ! -e "$module" ]; then
  say "Installing modsecurity-crs and libnginx-mod-http-modsecurity"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx modsecurity-crs libnginx-mod-http-modsecurity >/dev/null
  $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
fi

say "Building Sluice (release)"
cargo build --release --locked -q -p sluice
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin_port=$(free_port); nginx_pl1=$(free_port); nginx_pl2=$(free_port); sluice_port=$(free_port); admin_port=$(free_port)

# ModSecurity's engine settings as its recommended configuration has them (body access, the
# JSON and XML body processors by content type), then a CRS setup, then the rules.
for pl in 1 2; do
  cat > "$work/modsec-pl$pl.conf" <<CONF
SecRuleEngine On
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "(?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction Reject
SecPcreMatchLimit 100000
SecPcreMatchLimitRecursion 100000
SecResponseBodyAccess Off
SecAuditEngine Off
SecDefaultAction "phase:1,log,auditlog,pass"
SecDefaultAction "phase:2,log,auditlog,pass"
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=$pl"
SecAction "id:900990,phase:1,nolog,pass,t:none,setvar:tx.crs_setup_version=334"
Include $crs/*.conf
CONF
done
cat > "$work/nginx.conf" <<CONF
load_module $module;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/body;
  proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi;
  scgi_temp_path $work/scgi;
  server { listen 127.0.0.1:$origin_port; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$nginx_pl1; modsecurity on; modsecurity_rules_file $work/modsec-pl1.conf;
           location / { proxy_pass http://127.0.0.1:$origin_port; } }
  server { listen 127.0.0.1:$nginx_pl2; modsecurity on; modsecurity_rules_file $work/modsec-pl2.conf;
           location / { proxy_pass http://127.0.0.1:$origin_port; } }
}
CONF
say "Starting nginx + ModSecurity (origin on $origin_port)"
nginx -c "$work/nginx.conf" -p "$work"

waf() { echo "{ plugin = \"waf\", files = { crs = \"$crs\" }, config = { builtin_rules = $1, rule_set = { load = [\"crs\"], paranoia_level = $2 } } }"; }
cat > "$work/sluice.toml" <<CONF
[admin]
bind = "127.0.0.1:$admin_port"
[[listener]]
bind = "127.0.0.1:$sluice_port"
[upstream.origin]
servers = [{ addr = "127.0.0.1:$origin_port" }]
[plugin.waf]
source = "$PWD/plugins/waf"
[tenant.waf]
cpu_ms_per_call = 500
[[route]]
host = ["builtin.test"]
upstream = "origin"
filters = [{ plugin = "waf" }]
[[route]]
host = ["crs1.test"]
tenant = "waf"
upstream = "origin"
filters = [$(waf false 1)]
[[route]]
host = ["crs2.test"]
tenant = "waf"
upstream = "origin"
filters = [$(waf false 2)]
[[route]]
host = ["both.test"]
tenant = "waf"
upstream = "origin"
filters = [$(waf true 1)]
CONF
say "Starting Sluice"
target/release/sluice run --config "$work/sluice.toml" > "$work/sluice.log" 2>&1 &
echo $! > "$work/sluice.pid"
for _ in $(seq 1 600); do
  curl -fsS "http://127.0.0.1:$admin_port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
mkdir -p target/bench
say "Sending the corpora"
python3 benches/waf/corpus.py plugins/waf/tests/corpus target/bench/waf-corpus.md \
  "nginx+ModSecurity CRS PL1=127.0.0.1:$nginx_pl1" "nginx+ModSecurity CRS PL2=127.0.0.1:$nginx_pl2" \
  "Sluice built-in=127.0.0.1:$sluice_port/builtin.test" "Sluice CRS PL1=127.0.0.1:$sluice_port/crs1.test" \
  "Sluice CRS PL2=127.0.0.1:$sluice_port/crs2.test" "Sluice built-in + CRS PL1=127.0.0.1:$sluice_port/both.test"
say "Written to target/bench/waf-corpus.md"
