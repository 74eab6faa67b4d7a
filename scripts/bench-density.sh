#!/usr/bin/env bash
# Density on one node: boots idle VOS instances (echo service) through the node daemon until
# DENSITY_MAX (default 200) or until less than 1 GiB of memory is left, then prints one table:
# boot time per instance (`dvs run` to the ready line), host memory per instance, total idle CPU.
# Uses its own data dir and ports (7170/7171), so it runs beside `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MAX=${DENSITY_MAX:-200}
[ -f images/vos.elf ] || bash images/build.sh >/dev/null
cargo build -q --release -p dvs-hypervisor --bins
DVS=$ROOT/target/release/dvs
DIR=$(mktemp -d /tmp/dvs-density.XXXXXX)
export DVS_NODE=127.0.0.1:7170
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
cat > "$DIR/cluster.toml" <<TOML
[[node]]
id = 1
api = "127.0.0.1:7170"
proxy = "127.0.0.1:7171"
[[dc]]
id = 1
name = "density"
nodes = [1]
TOML
cat > "$DIR/node.toml" <<TOML
node = 1
cluster = "cluster.toml"
data_dir = "data"
backend = "qemu"
accel = "auto"
TOML
"$DVS" node --config "$DIR/node.toml" > "$DIR/node.log" 2>&1 &
DAEMON=$!
for _ in $(seq 50); do "$DVS" node status >/dev/null 2>&1 && break; sleep 0.2; done
"$DVS" image push images/vos.elf --manifest images/vos.manifest.json >/dev/null

mem_avail_kib() { awk '/^MemAvailable:/ {print $2}' /proc/meminfo; }
qemu_pids() { pgrep -f "qemu-system-x86_64.*$DIR" || true; }
now_ms() { date +%s%3N; }

avail0=$(mem_avail_kib)
boots=()
n=0
echo "density: booting up to $MAX instances (progress every 20)" >&2
for i in $(seq 1 "$MAX"); do
  if [ "$(mem_avail_kib)" -lt $((1024 * 1024)) ]; then
    echo "density: stopping at $n instances: less than 1 GiB of memory left" >&2
    break
  fi
  t0=$(now_ms)
  "$DVS" run vos --dc 1 --ep $((1000 + i)) --svc echo --name "d$i" >/dev/null
  log="$DIR/data/instances/d$i.log"
  for _ in $(seq 2000); do
    grep -q "dvs: ready" "$log" 2>/dev/null && break
    sleep 0.005
  done
  grep -q "dvs: ready" "$log" || { echo "density: d$i never printed its ready line" >&2; break; }
  boots+=($(( $(now_ms) - t0 )))
  n=$i
  (( i % 20 == 0 )) && echo "density: $i running" >&2
done
[ "$n" -gt 0 ] || { echo "density: no instance booted"; exit 1; }

sleep 2
pids=$(qemu_pids)
rss_kib=0
for p in $pids; do rss_kib=$(( rss_kib + $(awk '/^VmRSS:/ {print $2}' /proc/$p/status 2>/dev/null || echo 0) )); done
used_kib=$(( avail0 - $(mem_avail_kib) ))
ticks() { local t=0; for p in $pids; do t=$(( t + $(awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null || echo 0) )); done; echo $t; }
hz=$(getconf CLK_TCK)
c0=$(ticks); sleep 10; c1=$(ticks)
idle_pct=$(awk -v d=$((c1 - c0)) -v hz="$hz" 'BEGIN { printf "%.1f", 100 * d / hz / 10 }')
sorted=$(printf '%s\n' "${boots[@]}" | sort -n)
median=$(echo "$sorted" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
p99=$(echo "$sorted" | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; print a[i]}')
first=${boots[0]}; last=${boots[$((n - 1))]}

echo "== density: $n idle VOS instances on one node =="
printf '%-44s %s\n' "row" "figure"
printf '%-44s %s\n' "instances booted" "$n (limit $MAX)"
printf '%-44s %s\n' "boot, dvs run -> ready line, median / p99" "$median / $p99 ms"
printf '%-44s %s\n' "boot of the first / the last instance" "$first / $last ms"
printf '%-44s %s\n' "host memory per instance (QEMU RSS)" "$(( rss_kib / n / 1024 )) MiB"
printf '%-44s %s\n' "host memory per instance (MemAvailable drop)" "$(( used_kib / n / 1024 )) MiB"
printf '%-44s %s\n' "total idle CPU of all instances (10 s)" "$idle_pct% of one core"
