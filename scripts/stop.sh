#!/usr/bin/env bash
# make stop: stops what `make run` started (its instances, then the node daemon), leaving no QEMU behind.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export DVS_NODE=127.0.0.1:7070
export DVS_CREDENTIALS=$ROOT/.dvs/api/admin.toml
DVS=$ROOT/target/release/dvs
[ -x "$DVS" ] || DVS=$ROOT/target/debug/dvs

if [ -x "$DVS" ] && "$DVS" node status >/dev/null 2>&1; then
  for name in $("$DVS" ps 2>/dev/null | awk 'NR > 1 { print $1 }'); do
    "$DVS" stop "$name" || true
  done
fi
pid=$(cat .dvs/node.pid 2>/dev/null || true)
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
  kill -TERM "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  echo "stop: node daemon (pid $pid) stopped"
else
  echo "stop: no node daemon running"
fi
# Machines die with the daemon (PR_SET_PDEATHSIG); catch strays of this data dir all the same.
if pgrep -f "$ROOT/.dvs/" >/dev/null; then
  pkill -KILL -f "$ROOT/.dvs/" && echo "stop: killed leftover machines"
fi
rm -f .dvs/node.pid
left=$(pgrep -f "$ROOT/.dvs/" | wc -l)
echo "stop: done ($left machines left)"
