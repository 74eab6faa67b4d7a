#!/usr/bin/env bash
# bench-http: the web server benchmark against nginx (dvs-bench http): GET of a 4 KiB and a 1 MiB file and PUT of
# a 1 MiB file, at 1 and 16 keep-alive connections, against nginx (one worker, same files, PUT by WebDAV), the
# all-in-one VOS of examples/web-dc.toml (a node daemon of its own: fresh data dir, free ports, beside `make run`)
# and the VOS factored over three nodes by examples/web-dc-3node.toml (network namespaces: needs root, else that
# column says why it is missing). Prints requests/s, MiB/s, p99 latency and CPU per request with the ratios to
# nginx; figures go to target/bench/http.json (`dvs-bench summary` adds the ratios). About 2 minutes:
# BENCH_HTTP_SECS (default 3) per case, BENCH_HTTP_TARGETS=nginx,aio,factored to run fewer.
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx from Debian, installed when missing (idempotent). On bookworm `nginx` has ngx_http_dav_module and
# `nginx-light` is only a transitional package that pulls it in; older releases' nginx-light had no WebDAV.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench-http: installing nginx (apt-get install -y nginx)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q nginx >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nginx >/dev/null 2>&1; } ||
      apt-get install -y -q nginx-light >/dev/null 2>&1 ||
      echo "bench-http: could not install nginx (apt-get install nginx failed); the nginx column will be missing"
  else
    echo "bench-http: nginx is not installed and this is not root with apt-get: install it (apt-get install nginx) for the baseline"
  fi
fi

bash images/build.sh >/dev/null
echo "bench-http: building (release)"
cargo build -q --release -p dvs-hypervisor --bin dvs
cargo build -q --release -p dvs-bench --features grpc --bin dvs-bench
exec target/release/dvs-bench http
