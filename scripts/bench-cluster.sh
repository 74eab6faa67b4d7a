#!/usr/bin/env bash
# bench-cluster: three nodes as network namespaces (like the cluster test), then one table: medians and p99 over
# N round trips (default 10000) of raw TCP ping-pong and a tonic gRPC unary call between two namespaces
# (dvs-bench's dvs-netbench), raw TCP between two processes of one namespace, M3-IPC sendrec VM->VM across
# nodes, VM->VM on one node, inside one VM, across nodes during a concurrent vcopy (from a second endpoint of the
# copying VM), and host-side engines across nodes (dvs-double's host-echo / host-bench roles run by the daemons'
# process backend: the proxies and the engine without VMs); throughput of raw TCP vs a cross-node vcopy of 64 MiB.
# Then `dvs-bench breakdown`: where one sendrec's time goes, hop by hop (the guests' own TSC stamps — Hops and
# ServerHops reports —, the proxies' switch timing from /v1/counters, the TCP RTT for the peer link, the rest
# is the backend), each figure against this machine's floors (vos.json). Ratios at the end.
# BENCH_VM_PORTS="stream vhost-user" runs the VM part once per VM port kind (DVS_VM_PORT of the daemons); the
# first kind's figures are the plain keys, the others' go under "<kind>." (vhost_user.vm_vm_cross_node...).
# Readiness and every M3-IPC figure come from the daemons' typed instance views (`guest.ready`, `guest.reports`,
# read by `dvs-bench wait`), never from console text. Figures also go to target/bench/cluster.json.
# Cleans up after itself (trap EXIT). Needs root and images/vos.elf (make images).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
N=${BENCH_N:-10000}
VC=$((64 << 20))
# Boot settings of the host-side engines (BENCH_HOST_ARGS overrides). Default `spin_us=0`: they block at once, as
# the old host-side fake did; busy-polling doubles (300 µs spin) take the 2 cores from the proxies that forward
# their frames (measured: 434 µs median with the spin, 120 µs without).
HOST_ARGS=${BENCH_HOST_ARGS---arg spin_us=0}

[ "$(id -u)" = 0 ] || { echo "bench-cluster: needs root (network namespaces)"; exit 1; }
[ -f images/vos.elf ] || { echo "bench-cluster: images/vos.elf missing (make images)"; exit 1; }
echo "bench-cluster: building (release, with the gRPC baseline)"
# One feature set for every bench script (the gRPC baseline on), so that they do not rebuild each other.
cargo build -q --release -p dvs-hypervisor --bin dvs
cargo build -q --release -p dvs-test-support --bin dvs-double
cargo build -q --release -p dvs-bench --features grpc --bins
BIN=$ROOT/target/release
WORK=$(mktemp -d /tmp/dvs-bench.XXXXXX)
TAG=$$
NET=10.218.0
BR=dvsbb$TAG
declare -A DAEMON
PIDS=()

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for n in 1 2 3; do [ -n "${DAEMON[$n]:-}" ] && kill "${DAEMON[$n]}" 2>/dev/null; done
  for n in 1 2 3; do
    if [ -n "${DAEMON[$n]:-}" ]; then
      for _ in $(seq 50); do kill -0 "${DAEMON[$n]}" 2>/dev/null || break; sleep 0.1; done
      kill -9 "${DAEMON[$n]}" 2>/dev/null
    fi
  done
  for n in 1 2 3; do ip netns del "dvsbb$TAG-$n" 2>/dev/null; done
  ip link del "$BR" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

ip link add "$BR" type bridge
ip addr add "$NET.254/24" dev "$BR"
ip link set "$BR" up
for n in 1 2 3; do
  ns=dvsbb$TAG-$n
  ip netns add "$ns"
  ip link add "dvb${TAG}v$n" type veth peer name eth0 netns "$ns"
  ip link set "dvb${TAG}v$n" master "$BR" up
  ip -n "$ns" addr add "$NET.$n/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done
{
  for n in 1 2 3; do printf '[[node]]\nid = %s\napi = "%s.%s:7070"\nproxy = "%s.%s:7071"\n' $n $NET $n $NET $n; done
  printf '[[dc]]\nid = 1\nname = "bench"\nnodes = [1, 2, 3]\n'
} > "$WORK/cluster.toml"
"$BIN/dvs" cluster init --dir "$WORK/pki" >/dev/null   # one API CA: the nodes accept each other's credentials
export DVS_CREDENTIALS=$WORK/n1/api/admin.toml         # written by node 1 on its first start
dvs() { "$BIN/dvs" --node "$NET.1:7070" "$@"; }
# wait NODE NAME WHAT SECONDS [ARGS]: the figure as key=value words, from the typed view.
wait_for() { "$BIN/dvs-bench" wait --node "$NET.$1:7070" "$2" "$3" --timeout "$4" "${@:5}"; }
field() { sed -E "s/.*(^| )$1=([0-9]+).*/\\2/"; }
# The proxies' timing histograms: save NODE TAG / since NODE TAG (the window's medians as key=value words).
ptime_save() { "$BIN/dvs-bench" proxy-timing --node "$NET.$1:7070" --save "$WORK/pt-$1-$2.json"; }
ptime() { "$BIN/dvs-bench" proxy-timing --node "$NET.$1:7070" --since "$WORK/pt-$1-$2.json"; }
start_nodes() { # KIND DIRSUFFIX: the VM port kind of every node (DVS_VM_PORT), a fresh data dir per kind
  for n in 1 2 3; do
    printf 'node = %s\ncluster = "cluster.toml"\ndata_dir = "n%s"\nbackend = "qemu"\nprocess_program = "%s"\napi_listen = "%s.%s:7070"\napi_ca = { cert = "pki/ca.pem", key = "pki/ca.key" }\n' \
      $n "$n$2" "$BIN/dvs-double" $NET $n > "$WORK/node$n.toml"
    DVS_VM_PORT=$1 ip netns exec "dvsbb$TAG-$n" "$BIN/dvs" node --config "$WORK/node$n.toml" >> "$WORK/node$n.log" 2>&1 &
    DAEMON[$n]=$!
  done
  for n in 1 2 3; do
    for _ in $(seq 100); do "$BIN/dvs" --node "$NET.$n:7070" node status >/dev/null 2>&1 && break; sleep 0.1; done
  done
  for n in 1 2 3; do "$BIN/dvs-bench" settle --node "$NET.$n:7070" --timeout 30; done
}
stop_nodes() {
  for n in 1 2 3; do kill "${DAEMON[$n]}"; done
  for n in 1 2 3; do wait "${DAEMON[$n]}" 2>/dev/null || true; DAEMON[$n]=; done
}
# The VM benchmarks on one port kind; their figures go to cluster.json under PREFIX (empty for the default).
vm_benches() { # KIND PREFIX
  local kind=$1 P=$2
  start_nodes "$kind" "${P:+-$kind}"
  dvs image push --all images/vos.elf >/dev/null
  MEM=$(((VC >> 20) * 2 + 32))
  dvs run vos --dc bench --name echo3 --on 3 --ep 301 --svc echo --mem $MEM --arg buf=$VC >/dev/null
  dvs run vos --dc bench --name echo1 --on 1 --ep 101 --svc echo --mem 16 >/dev/null
  wait_for 3 echo3 ready 60 >/dev/null
  wait_for 1 echo1 ready 60 >/dev/null
  "$BIN/dvs-bench" settle --node "$NET.1:7070" --ep 1:301 --ep 1:101
  echo "bench-cluster [$kind]: VM->VM sendrec across nodes ($N)"
  ptime_save 1 x; ptime_save 3 x
  dvs run vos --dc bench --name bx --on 1 --ep 111 --svc ipc-bench --mem 16 --arg peer=301 --arg n=$N --arg vcopy=0 >/dev/null
  X=$(wait_for 1 bx sendrecs 600)
  XH=$(wait_for 1 bx hops 60)
  XS=$(wait_for 3 echo3 server-hops 10 --min-n "$N" || echo "n=0")
  XP1=$(ptime 1 x); XP3=$(ptime 3 x)
  TW=$(wait_for 1 bx timer-wake 60 || echo "n=0")
  echo "bench-cluster [$kind]: vcopy of $((VC >> 20)) MiB across nodes, then sendrecs during a vcopy"
  dvs run vos --dc bench --name bv --on 1 --ep 112,113 --svc ipc-bench --mem $MEM --arg peer=301 --arg n=2000 --arg vcopy=$VC >/dev/null
  V=$(wait_for 1 bv vcopy 600)
  LD=$(wait_for 1 bv loaded 600)
  echo "bench-cluster [$kind]: VM->VM sendrec on one node ($N)"
  ptime_save 1 l
  dvs run vos --dc bench --name bl --on 1 --ep 121 --svc ipc-bench --mem 16 --arg peer=101 --arg n=$N --arg vcopy=0 >/dev/null
  L=$(wait_for 1 bl sendrecs 600)
  LH=$(wait_for 1 bl hops 60)
  LS=$(wait_for 1 echo1 server-hops 10 --min-n "$N" || echo "n=0")
  LP1=$(ptime 1 l)
  num() { echo "$1" | field "$2"; }
  "$BIN/dvs-bench" put "cluster-$kind" ${P}vm_port="$kind" \
    ${P}vm_vm_cross_node.median_ns=$(num "$X" median_ns) ${P}vm_vm_cross_node.p99_ns=$(num "$X" p99_ns) \
    ${P}vm_vm_same_node.median_ns=$(num "$L" median_ns) ${P}vm_vm_same_node.p99_ns=$(num "$L" p99_ns) \
    ${P}vcopy_push.mb_s=$(num "$V" push_mb_s) ${P}vcopy_pull.mb_s=$(num "$V" pull_mb_s) \
    ${P}loaded_sendrec.median_ns=$(num "$LD" median_ns) ${P}loaded_sendrec.p99_ns=$(num "$LD" p99_ns) \
    ${P}loaded_sendrec.n=$(num "$LD" n) ${P}loaded_sendrec.vcopy_mb_s=$(num "$LD" vcopy_mb_s) \
    ${P}timer_wake.median_ns=$(num "$TW" median_ns) ${P}timer_wake.p99_ns=$(num "$TW" p99_ns) \
    $(for w in $XH; do echo "${P}hops.cross.client.$w"; done) \
    $(for w in $XS; do echo "${P}hops.cross.server.$w"; done) \
    $(for w in $XP1; do echo "${P}hops.cross.proxy1.$w"; done) \
    $(for w in $XP3; do echo "${P}hops.cross.proxy3.$w"; done) \
    $(for w in $LH; do echo "${P}hops.local.client.$w"; done) \
    $(for w in $LS; do echo "${P}hops.local.server.$w"; done) \
    $(for w in $LP1; do echo "${P}hops.local.proxy1.$w"; done) >/dev/null
  if [ -z "$P" ]; then
    echo "bench-cluster: sendrec inside one VM ($N)"
    dvs run vos --dc bench --name lv --on 1 --ep 131 --svc echo --mem 16 --arg local_n=$N >/dev/null
    LV=$(wait_for 1 lv local-sendrec 300)
    echo "bench-cluster: host-side engines across nodes, no VMs ($N; dvs-double host-echo / host-bench)"
    dvs run vos --process-arg host-echo --dc bench --name fecho --on 3 --ep 302 --svc echo $HOST_ARGS >/dev/null
    wait_for 3 fecho ready 20 >/dev/null
    "$BIN/dvs-bench" settle --node "$NET.1:7070" --ep 1:302
    dvs run vos --process-arg host-bench --dc bench --name fx --on 1 --ep 141 --svc ipc-bench --arg peer=302 --arg n=$N --arg vcopy=0 $HOST_ARGS >/dev/null
    F=$(wait_for 1 fx sendrecs 300)
  fi
  stop_nodes
}
# BENCH_VM_PORTS: the VM port kinds to measure (the first is the default's figures; the others' go under
# "<kind>." in cluster.json, e.g. vhost_user.vm_vm_cross_node.median_ns).
KINDS=${BENCH_VM_PORTS:-stream}
first=1
for kind in $KINDS; do
  if [ $first = 1 ]; then
    vm_benches "$kind" ""
    X0=$X; L0=$L; V0=$V; LD0=$LD
    first=0
  else
    vm_benches "$kind" "$(echo "$kind" | tr - _)." || echo "bench-cluster: the $kind run failed (figures missing)"
  fi
done
X=$X0; L=$L0; V=$V0; LD=$LD0

echo "bench-cluster: raw TCP and gRPC between namespaces 1 and 3"
ip netns exec "dvsbb$TAG-3" "$BIN/dvs-netbench" tcp-server "$NET.3:9000" & PIDS+=($!)
ip netns exec "dvsbb$TAG-3" "$BIN/dvs-netbench" grpc-server "$NET.3:9001" & PIDS+=($!)
# The servers are up once a connection succeeds (bounded retries, no fixed sleep).
retry() { for _ in $(seq 100); do "$@" 2>/dev/null && return 0; sleep 0.05; done; "$@"; }
TCP=$(retry ip netns exec "dvsbb$TAG-1" "$BIN/dvs-netbench" tcp-pingpong "$NET.3:9000" "$N" 96)
TPUT=$(ip netns exec "dvsbb$TAG-1" "$BIN/dvs-netbench" tcp-throughput "$NET.3:9000" "$VC")
GRPC=$(retry ip netns exec "dvsbb$TAG-1" "$BIN/dvs-netbench" grpc-pingpong "$NET.3:9001" "$N" 64)
echo "bench-cluster: raw TCP between two processes of namespace 1 (the same-node baseline)"
ip netns exec "dvsbb$TAG-1" "$BIN/dvs-netbench" tcp-server "127.0.0.1:9000" & PIDS+=($!)
TCPL=$(retry ip netns exec "dvsbb$TAG-1" "$BIN/dvs-netbench" tcp-pingpong "127.0.0.1:9000" "$N" 96)

us() { awk -v ns="$1" 'BEGIN { printf (ns < 10000 ? "%.3f" : "%.1f"), ns / 1000 }'; }
row() { printf '| %-52s | %12s | %12s | %s\n' "$1" "$2" "$3" "$4"; }
echo
echo "dvs cluster benchmark — $(date -u +%Y-%m-%d), $(nproc) cores, accel $([ -w /dev/kvm ] && echo kvm || echo tcg), N=$N round trips each"
row "what" "median (µs)" "p99 (µs)" "note"
row "raw TCP ping-pong, ns 1 -> ns 3 (96 B)" "$(us "$(echo "$TCP" | field median_ns)")" "$(us "$(echo "$TCP" | field p99_ns)")" "host processes, veth + bridge"
row "raw TCP ping-pong, two processes in ns 1 (96 B)" "$(us "$(echo "$TCPL" | field median_ns)")" "$(us "$(echo "$TCPL" | field p99_ns)")" "loopback, the same-node baseline"
row "tonic gRPC unary, ns 1 -> ns 3 (64 B)" "$(us "$(echo "$GRPC" | field median_ns)")" "$(us "$(echo "$GRPC" | field p99_ns)")" "HTTP/2, one channel"
row "M3-IPC sendrec VM -> VM, node 1 -> node 3" "$(us "$(echo "$X" | field median_ns)")" "$(us "$(echo "$X" | field p99_ns)")" "VOS ipc-bench -> VOS echo"
row "M3-IPC sendrec VM -> VM, 1 -> 3, during a vcopy" "$(us "$(echo "$LD" | field median_ns)")" "$(us "$(echo "$LD" | field p99_ns)")" "from a 2nd endpoint while the 1st copies $((VC >> 20)) MiB"
row "M3-IPC sendrec VM -> VM, same node" "$(us "$(echo "$L" | field median_ns)")" "$(us "$(echo "$L" | field p99_ns)")" "through the node's proxy"
row "M3-IPC sendrec inside one VM" "$(us "$(echo "$LV" | field ns_per_call)")" "-" "mean (the VOS reports no percentiles)"
row "M3-IPC sendrec host engine -> host engine, 1 -> 3" "$(us "$(echo "$F" | field median_ns)")" "$(us "$(echo "$F" | field p99_ns)")" "host-side engines, no VMs"
echo
TMB=$(echo "$TPUT" | field mb_s); VMB=$(echo "$V" | field push_mb_s)
printf '| %-52s | %12s |\n' "throughput" "MB/s"
printf '| %-52s | %12s |\n' "raw TCP, ns 1 -> ns 3, $((VC >> 20)) MiB" "$TMB"
printf '| %-52s | %12s |\n' "vcopy VM -> VM, node 1 -> node 3, $((VC >> 20)) MiB (push)" "$VMB"
printf '| %-52s | %12s |\n' "vcopy VM -> VM, node 3 -> node 1, $((VC >> 20)) MiB (pull)" "$(echo "$V" | field pull_mb_s)"
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "n/a" }'; }
echo "ratios: cross-node VM sendrec / TCP ping-pong = $(ratio "$(echo "$X" | field median_ns)" "$(echo "$TCP" | field median_ns)")," \
  "gRPC / TCP = $(ratio "$(echo "$GRPC" | field median_ns)" "$(echo "$TCP" | field median_ns)")," \
  "cross-node VM sendrec / gRPC = $(ratio "$(echo "$X" | field median_ns)" "$(echo "$GRPC" | field median_ns)")," \
  "host-engine cross-node sendrec / TCP = $(ratio "$(echo "$F" | field median_ns)" "$(echo "$TCP" | field median_ns)")," \
  "TCP throughput / vcopy = $(ratio "$TMB" "$VMB")"

num() { echo "$1" | field "$2"; }
"$BIN/dvs-bench" put cluster n=$N \
  tcp_pingpong.median_ns=$(num "$TCP" median_ns) tcp_pingpong.p99_ns=$(num "$TCP" p99_ns) \
  tcp_local.median_ns=$(num "$TCPL" median_ns) tcp_local.p99_ns=$(num "$TCPL" p99_ns) \
  grpc_unary.median_ns=$(num "$GRPC" median_ns) grpc_unary.p99_ns=$(num "$GRPC" p99_ns) \
  in_vm_local.ns_per_call=$(num "$LV" ns_per_call) \
  host_engines_cross_node.median_ns=$(num "$F" median_ns) host_engines_cross_node.p99_ns=$(num "$F" p99_ns) \
  tcp_throughput.mb_s="$TMB" vcopy.bytes=$VC
# One part: the port kinds' VM figures merged into cluster.json; then the per-hop breakdown and the floors.
"$BIN/dvs-bench" merge cluster $(for k in $KINDS; do echo "cluster-$k"; done)
"$BIN/dvs-bench" breakdown
