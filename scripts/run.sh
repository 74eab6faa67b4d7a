#!/usr/bin/env bash
# make run: one dvs node on this machine (daemon in the background, data in .dvs/), the DC of
# examples/web-dc.toml applied to it (a VOS with http on fs on disk on a volume, and echo), a page
# put on it the first time (examples/index.html), and the URL of its web server.
# Safe to re-run: a running node is reused and `dvs apply` is idempotent. `make stop` tears it down.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
API=127.0.0.1:7070
URL=http://127.0.0.1:8080/
PAGE=${URL}index.html
export DVS_NODE=$API
# The node writes its admin credentials here on first start (TLS client certificate; see hypervisor/README.md).
export DVS_CREDENTIALS=$ROOT/.dvs/api/admin.toml

# True when the web server answers 200 (curl when installed, else bash's /dev/tcp).
http_ok() {
  if command -v curl >/dev/null; then curl -fsS -m 2 "$URL" >/dev/null 2>&1; return; fi
  (exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 &&
    IFS= read -r -t 2 status <&3 && [[ $status == "HTTP/1."?" 200"* ]]) 2>/dev/null
}

[ -f images/vos.elf ] || { echo "run: images/vos.elf is missing (make images builds it)"; exit 1; }
echo "run: building dvs (release)"
cargo build -q --release -p dvs-hypervisor --bins
DVS=$ROOT/target/release/dvs
mkdir -p .dvs

if "$DVS" node status >/dev/null 2>&1; then
  echo "run: the node is already running (pid $(cat .dvs/node.pid 2>/dev/null || echo '?'))"
else
  for port in 7070 7071 8080; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "run: port $port is already in use by another program; free it first"; exit 1
    fi
  done
  echo "run: starting the node daemon (log: .dvs/node.log)"
  setsid nohup "$DVS" node --config examples/local/node.toml >> .dvs/node.log 2>&1 < /dev/null &
  for _ in $(seq 50); do "$DVS" node status >/dev/null 2>&1 && break; sleep 0.2; done
  "$DVS" node status >/dev/null 2>&1 || { echo "run: the node did not start; see .dvs/node.log:"; tail -20 .dvs/node.log; exit 1; }
fi

"$DVS" apply --wait examples/web-dc.toml
echo "run: waiting for the web server"
for _ in $(seq 150); do
  if http_ok; then break; fi
  sleep 0.2
done
if ! http_ok; then
  echo "run: the web server does not answer yet; its console:"; "$DVS" logs web --tail 20; exit 1
fi
# The page lives on the volume: put it only when it is not there yet (a user's edits stay).
if command -v curl >/dev/null; then
  code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 "$PAGE" || true)
  if [ "$code" = 404 ]; then
    curl -fsS -m 30 -T examples/index.html "$PAGE" >/dev/null && echo "run: put examples/index.html on the web server"
  fi
fi
"$DVS" ps
# A one-time login link for the web console (valid two minutes; `dvs console` makes another).
CONSOLE=$("$DVS" console --url-only 2>/dev/null || echo "(could not get a login link: run target/release/dvs console)")
cat <<EOF

dvs is running: one node, DC "web", instance "web" (a VOS with http on fs on disk, on volume web-data; and echo).
  web server:   $PAGE  (and the listing at $URL; PUT a file with: curl -T FILE ${URL}FILE)
  web console:  $CONSOLE
                (a one-time login link, valid 2 minutes; a new one: target/release/dvs console. The certificate
                is the node's own API CA's, .dvs/api/ca.pem: accept it once, or import that CA)
  console log:  target/release/dvs logs web
  node:         target/release/dvs node status
  credentials:  export DVS_CREDENTIALS=$DVS_CREDENTIALS   (admin; read-only: .dvs/api/read-only.toml)
                the API is https://$API with client certificates; the dvs CLI needs this file
  stop it all:  make stop
EOF
