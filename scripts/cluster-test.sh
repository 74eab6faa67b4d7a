#!/usr/bin/env bash
# make cluster-test: three dvs nodes as network namespaces joined by veth pairs and a bridge, one daemon each.
# Everything it sets up (namespaces, bridge, daemons, machines) is torn down on exit, failed or not.
#
# Instances are real VOS VMs (QEMU, KVM or TCG) when images/vos.elf exists; set DVS_CLUSTER_BACKEND=fake to
# run every instance as a host-side fake instance (dvs-fake-vos: same command line, ports and engine, no VM).
# The LAN probes, the spoofing guest and the notify pair are always fake instances (`dvs run --fake`): the
# VOS has no ARP-probe, spoofing or notify-counting service.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

[ "$(id -u)" = 0 ] || { echo "cluster-test: needs root (network namespaces)"; exit 1; }
command -v ip >/dev/null || { echo "cluster-test: needs iproute2"; exit 1; }

BACKEND=${DVS_CLUSTER_BACKEND:-}
if [ -z "$BACKEND" ]; then
  if [ -f images/vos.elf ] && command -v qemu-system-x86_64 >/dev/null; then BACKEND=qemu; else BACKEND=fake; fi
fi
# DVS_CLUSTER_ACCEL=tcg forces TCG; otherwise KVM when /dev/kvm works. TCG gets 3x the timeouts.
ACCEL=${DVS_CLUSTER_ACCEL:-}
if [ -z "$ACCEL" ]; then
  if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
[ "$BACKEND" = qemu ] || ACCEL=none
SLOW=$([ "$ACCEL" = tcg ] && echo 3 || echo 1)

echo "== cluster-test: backend=$BACKEND accel=$ACCEL"
if [ "$BACKEND" = fake ]; then
  echo "== NOTE: instances are host-side FAKE instances (dvs-fake-vos), not VMs: this run tests the proxies,"
  echo "==       daemons, directory and CLI, not the guest kernel."
fi

cargo build -q -p dvs-hypervisor --bins
BIN=$ROOT/target/debug
WORK=$(mktemp -d /tmp/dvs-ct.XXXXXX)
TAG=$$
NET=10.217.0
BR=dvsbr$TAG
PASS=0
FAIL=0
declare -A DAEMON

log() { echo "-- $*"; }
pass() { PASS=$((PASS + 1)); echo "PASS: $*"; }
fail() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }

cleanup() {
  local rc=$?
  set +e
  for n in 1 2 3; do [ -n "${DAEMON[$n]:-}" ] && kill "${DAEMON[$n]}" 2>/dev/null; done
  sleep 1
  for n in 1 2 3; do [ -n "${DAEMON[$n]:-}" ] && kill -9 "${DAEMON[$n]}" 2>/dev/null; done
  # Machines die with their daemon (PR_SET_PDEATHSIG); this only catches strays.
  pkill -9 -f "$WORK/" 2>/dev/null
  for n in 1 2 3; do ip netns del "dvsct$TAG-$n" 2>/dev/null; done
  ip link del "$BR" 2>/dev/null
  if [ $rc != 0 ] || [ $FAIL != 0 ]; then
    mkdir -p /tmp/dvs-cluster-test-logs && cp -r "$WORK"/. /tmp/dvs-cluster-test-logs/ 2>/dev/null
    echo "cluster-test: logs kept in /tmp/dvs-cluster-test-logs"
  fi
  rm -rf "$WORK"
  left=$(pgrep -f "$WORK/" | wc -l)
  echo "cluster-test: cleaned up (namespaces, bridge, daemons; $left machine processes left)"
}
trap cleanup EXIT

# ---- network: a bridge in the root namespace, one namespace per node ----
ip link add "$BR" type bridge
ip addr add "$NET.254/24" dev "$BR"
ip link set "$BR" up
for n in 1 2 3; do
  ns=dvsct$TAG-$n
  ip netns add "$ns"
  ip link add "dvs${TAG}v$n" type veth peer name eth0 netns "$ns"
  ip link set "dvs${TAG}v$n" master "$BR" up
  ip -n "$ns" addr add "$NET.$n/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done

cat > "$WORK/cluster.toml" <<EOF
[[node]]
id = 1
api = "$NET.1:7070"
proxy = "$NET.1:7071"
[[node]]
id = 2
api = "$NET.2:7070"
proxy = "$NET.2:7071"
[[node]]
id = 3
api = "$NET.3:7070"
proxy = "$NET.3:7071"

[[dc]]
id = 1
name = "alpha"
nodes = [1, 2, 3]
[[dc]]
id = 2
name = "beta"
nodes = [1, 2]
EOF
for n in 1 2 3; do
  printf 'node = %s\ncluster = "cluster.toml"\ndata_dir = "n%s"\nbackend = "%s"\naccel = "%s"\n' \
    "$n" "$n" "$BACKEND" "$([ "$ACCEL" = none ] && echo auto || echo "$ACCEL")" > "$WORK/node$n.toml"
done

start_node() {
  local n=$1
  ip netns exec "dvsct$TAG-$n" "$BIN/dvs" node --config "$WORK/node$n.toml" >> "$WORK/node$n.log" 2>&1 &
  DAEMON[$n]=$!
}

dvsn() { local n=$1; shift; "$BIN/dvs" --node "$NET.$n:7070" "$@"; }
dvs() { dvsn 1 "$@"; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls until the command succeeds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs * SLOW))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then echo "timed out after $((secs * SLOW)) s waiting for: $what"; return 1; fi
    sleep 0.2
  done
}
logs_match() { dvs logs "$1" 2>/dev/null | grep -Eq "$2"; }
log_line() { dvs logs "$1" 2>/dev/null | grep -E "$2" | tail -1; }
peer_up() { [ "$(dvsn "$1" api /v1/node --pointer "/peers/$2")" = true ]; }
placed_on() { dvsn "$1" api /v1/directory | grep -A3 "\"dc\": $2," | grep -A2 "\"ep\": $3," | grep -q "\"node\": $4,"; }
counter() { dvsn "$1" api /v1/counters --pointer "$2" 2>/dev/null || echo 0; }
bench_done() { logs_match "$1" 'dvs: bench (sendrec n=|FAILED|summary)'; }
not() { ! "$@"; }
# The console log of the last boot of an instance (logs keep every boot).
last_boot() { dvsn "$1" logs "$2" | awk '/^--- dvs: boot/ { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }'; }
booted_ready() { last_boot "$1" "$2" | grep -q 'dvs: ready'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

for n in 1 2 3; do start_node $n; done
for n in 1 2 3; do wait_for 20 "node $n API" dvsn $n node status; done
for link in "1 2" "1 3" "2 3"; do wait_for 10 "peer link $link" peer_up $link; done
log "three nodes up: $(dvs node status | head -1)"

# ---- 1. the image, pushed to all three nodes through the API and verified ----
if [ -f images/vos.elf ]; then
  IMG=images/vos.elf
else
  IMG=$WORK/fake.elf
  echo "not a kernel: fake instances ignore it" > "$IMG"
  echo '{"name":"vos","version":"fake","sha256":"","memory":16,"services":["echo","ipc-bench"]}' > "$WORK/fake.manifest.json"
fi
dvs image push --all "$IMG" | tee "$WORK/push.out"
SHA=$(sha256sum "$IMG" | cut -d' ' -f1)
for n in 1 2 3; do
  check "1. image on node $n verified by the node" [ "$(dvsn $n api "/v1/images/$SHA" --pointer /verified)" = true ]
done

# ---- 2. DC 1 spans three nodes, DC 2 two; instances deployed with `dvs apply` ----
dvs dc ls | tee "$WORK/dc.out"
check "2. DC 1 (alpha) spans nodes 1,2,3" grep -Eq '^1 +alpha +1,2,3 ' "$WORK/dc.out"
check "2. DC 2 (beta) spans nodes 1,2" grep -Eq '^2 +beta +1,2 ' "$WORK/dc.out"
MEM=$((16 + 16 + 16))
cat > "$WORK/alpha.toml" <<EOF
[dc]
name = "alpha"
[[instance]]
name = "echo1"
image = "vos"
node = 1
endpoints = [101]
services = ["echo"]
memory = $MEM
args = ["buf=16777216", "stats=1"]
restart = "on-failure"
[[instance]]
name = "echo2"
image = "vos"
node = 2
endpoints = [201]
services = ["echo"]
memory = $MEM
args = ["stats=1"]
restart = "on-failure"
[[instance]]
name = "echo3"
image = "vos"
node = 3
endpoints = [301]
services = ["echo"]
memory = $MEM
args = ["buf=16777216", "stats=1"]
restart = "on-failure"
EOF
cat > "$WORK/beta.toml" <<EOF
[dc]
id = 2
[[instance]]
name = "b-echo"
image = "vos"
node = 2
endpoints = [101]           # the same endpoint number as echo1 of DC 1: each DC has its own space
services = ["echo"]
memory = $MEM
EOF
dvs apply "$WORK/alpha.toml"
dvs apply "$WORK/beta.toml"
dvs apply "$WORK/alpha.toml" | tee "$WORK/apply2.out"
check "2. applying the manifest again changes nothing" grep -q '0 change(s)' "$WORK/apply2.out"
for i in echo1 echo2 echo3 b-echo; do wait_for 60 "$i ready" logs_match $i 'dvs: ready'; done
wait_for 10 "directory converged" placed_on 1 1 301 3
dvs ps

# ---- 3. cross-node and same-node sendrec, notify, 16 MiB vcopy ----
dvs run vos --dc alpha --name bx --ep 111,112 --svc ipc-bench --mem $MEM --on 1 \
  --arg peer=301 --arg n=1000 --arg vcopy=16777216 >/dev/null
dvs run vos --dc alpha --name bl --ep 121,122 --svc ipc-bench --mem 16 --on 1 --arg peer=101 --arg n=1000 --arg vcopy=0 >/dev/null
wait_for 60 "bx done" logs_match bx 'dvs: bench (vcopy|FAILED)'
wait_for 60 "bl done" bench_done bl
log "cross-node: $(log_line bx 'bench sendrec')"
log "same-node:  $(log_line bl 'bench sendrec')"
log "vcopy:      $(log_line bx 'bench vcopy')"
check "3. 1000 cross-node sendrecs (node 1 -> node 3) all answered" logs_match bx 'dvs: bench sendrec n=1000 '
check "3. 1000 same-node sendrecs all answered" logs_match bl 'dvs: bench sendrec n=1000 '
check "3. 16 MiB vcopy node 1 -> node 3 and back, verified" logs_match bx 'dvs: bench vcopy bytes=16777216 '
check "3. no bench failures (cross-node)" not logs_match bx FAILED
check "3. no bench failures (same-node)" not logs_match bl FAILED
TXN1=$(counter 1 /ports/bx/rx/frames); RXN3=$(counter 3 /ports/echo3/tx/frames)
log "counted: node 1 port bx sent $TXN1 frames, node 3 port echo3 received $RXN3 frames"
check "3. counted on both sides (>= 1000 frames each)" [ "$TXN1" -ge 1000 -a "$RXN3" -ge 1000 ]
LF=$(counter 1 /peers/3/tx/frames); LW=$(counter 1 /peers/3/writes)
log "peer link node 1 -> node 3: $LF frames in $LW writes (batched under load, one per write when idle)"
dvs run vos --fake --dc alpha --name ntf-echo --ep 302 --svc echo --on 3 --arg stats=1 >/dev/null
wait_for 10 "ntf-echo ready" logs_match ntf-echo 'dvs: ready'
wait_for 10 "302 known on node 1" placed_on 1 1 302 3
dvs run vos --fake --dc alpha --name ntf --ep 131,132 --svc ipc-bench --on 1 --arg peer=302 --arg n=1 --arg notify_n=100 >/dev/null
wait_for 20 "notifications counted" logs_match ntf-echo 'notify_received=[1-9]'
sleep 1.5
NOTIFIED=$(log_line ntf-echo 'notify_received=' | sed -E 's/.*notify_received=([0-9]+).*/\1/')
log "notify: 100 sent back to back, $NOTIFIED delivered (pending ones coalesce)"
check "3. notify delivered and coalesced (1 <= delivered < 100)" [ "$NOTIFIED" -ge 1 -a "$NOTIFIED" -lt 100 ]

# ---- 4. isolation ----
dvs run vos --dc beta --name xdc --ep 511,512 --svc ipc-bench --mem 16 --on 1 --arg peer=301 --arg n=1 --arg vcopy=0 >/dev/null
wait_for 30 "xdc done" bench_done xdc
log "DC 2 -> endpoint 301 of DC 1: $(log_line xdc 'FAILED|bench sendrec')"
check "4. a DC 2 instance addressing a DC 1 endpoint gets 'not in this DC'" logs_match xdc 'FAILED sendrec 0 to 301: NotInDc'
# LAN hosts (fake instances answering ARP): 10.1.0.3 only in DC 1, 10.1.0.1 in both DCs.
dvs run vos --fake --dc alpha --name lan-a --on 3 --ip 10.1.0.3/24 >/dev/null
dvs run vos --fake --dc alpha --name lan-c --on 1 --ip 10.1.0.1/24 >/dev/null
dvs run vos --fake --dc beta --name lan-b --on 2 --ip 10.1.0.1/24 >/dev/null
for h in lan-a lan-b lan-c; do wait_for 10 "$h ready" logs_match $h 'dvs: ready'; done
dvs run vos --fake --dc beta --name probe2 --on 1 --ip 10.1.0.9/24 --arg arp=10.1.0.3 >/dev/null
dvs run vos --fake --dc beta --name probe2b --on 1 --ip 10.1.0.8/24 --arg arp=10.1.0.1 >/dev/null
dvs run vos --fake --dc alpha --name probe1 --on 1 --ip 10.1.0.9/24 --arg arp=10.1.0.3 >/dev/null
for p in probe2 probe2b probe1; do wait_for 20 "$p answer" logs_match $p 'dvs: arp'; done
BMAC=$(dvsn 2 api /v1/instances/lan-b --pointer /mac)
AMAC=$(dvsn 3 api /v1/instances/lan-a --pointer /mac)
log "DC 2 probe asks for 10.1.0.3 (DC 1 only): $(log_line probe2 'dvs: arp')"
log "DC 2 probe asks for 10.1.0.1 (in both DCs): $(log_line probe2b 'dvs: arp') (DC 2's lan-b is $BMAC)"
log "DC 1 probe asks for 10.1.0.3:               $(log_line probe1 'dvs: arp') (DC 1's lan-a is $AMAC)"
check "4. DC 2 cannot ARP DC 1's addresses" logs_match probe2 'no answer'
check "4. the same IP in DC 2 answers with DC 2's instance" logs_match probe2b "is-at $BMAC"
check "4. control: DC 1 resolves its own address across nodes" logs_match probe1 "is-at $AMAC"
dvs run vos --fake --dc alpha --name spoofer --ep 151 --on 1 --arg spoof=301 --arg peer=301 >/dev/null
wait_for 10 "spoofer sent" logs_match spoofer 'dvs: spoof sent'
sleep 0.5
SPOOFED=$(counter 1 /ports/spoofer/drops/spoofed)
log "spoofing guest sent 10 frames as endpoint 301; node 1 dropped $SPOOFED (counted on its port)"
check "4. a spoofing guest's frames are dropped and counted" [ "$SPOOFED" -ge 10 ]
check "4. nothing spoofed reached echo3's port" [ "$(counter 3 /ports/echo3/drops/spoofed)" = 0 ]

# ---- 5. faults: node 2's daemon dies, then comes back ----
kill -9 "${DAEMON[2]}"
wait "${DAEMON[2]}" 2>/dev/null || true
wait_for 10 "node 1 sees node 2 down" not peer_up 1 2
sleep 0.5
check "5. no machine of node 2 outlives its daemon" not pgrep -f "$WORK/n2/"
T0=$(now_ms)
dvs run vos --dc alpha --name f1 --ep 161,162 --svc ipc-bench --mem 16 --on 1 --arg peer=201 --arg n=1 --arg vcopy=0 >/dev/null
dvs run vos --dc alpha --name f2 --ep 171,172 --svc ipc-bench --mem 16 --on 1 --arg peer=301 --arg n=1000 --arg vcopy=0 >/dev/null
wait_for 30 "f1 done" bench_done f1
T1=$(now_ms)
wait_for 60 "f2 done" bench_done f2
log "call to node 2 while it is down: $(log_line f1 'FAILED|bench sendrec') (boot of the client + the call: $((T1 - T0)) ms)"
check "5. calls to node 2's endpoints fail with 'unreachable'" logs_match f1 'FAILED sendrec 0 to 201: NodeUnreachable'
check "5. DC traffic between nodes 1 and 3 goes on (1000 sendrecs)" logs_match f2 'dvs: bench sendrec n=1000 '
# Node 1 restarts while node 2 is still down: it remembers where 201 was (directory.json), so calls to it
# still fail with "unreachable", not "unknown destination".
for b in bx bl ntf xdc f1 f2; do dvs stop $b >/dev/null; done
kill "${DAEMON[1]}"; wait "${DAEMON[1]}" 2>/dev/null || true
start_node 1
wait_for 20 "node 1 API back" dvsn 1 node status
wait_for 20 "node 1 sees node 3" peer_up 1 3
dvs run vos --dc alpha --name f1b --ep 163,164 --svc ipc-bench --mem 16 --on 1 --arg peer=201 --arg n=1 --arg vcopy=0 >/dev/null
wait_for 30 "f1b done" bench_done f1b
log "after node 1 restarted, node 2 still down: $(log_line f1b 'FAILED|bench sendrec')"
check "5. a restarted node still knows the down node's endpoints (unreachable, not unknown)" \
  logs_match f1b 'FAILED sendrec 0 to 201: NodeUnreachable'
start_node 2
wait_for 20 "node 2 API back" dvsn 2 node status
wait_for 20 "node 1 sees node 2 up" peer_up 1 2
wait_for 60 "echo2 restored" booted_ready 2 echo2
wait_for 10 "201 placed on node 2 again" placed_on 1 1 201 2
dvs run vos --dc alpha --name f3 --ep 181,182 --svc ipc-bench --mem 16 --on 1 --arg peer=201 --arg n=100 --arg vcopy=0 >/dev/null
wait_for 30 "f3 done" bench_done f3
check "5. after node 2 restarts, the same calls succeed again" logs_match f3 'dvs: bench sendrec n=100 '

# ---- 5b. a machine dies: reported failed, restarted by its policy (on-failure), calls work again ----
PID1=$(dvsn 1 api /v1/instances/echo1 --pointer /pid)
kill -9 "$PID1"
boots_is() { [ "$(dvsn 1 api /v1/instances/echo1 --pointer /boots)" = "$1" ] && [ "$(dvsn 1 api /v1/instances/echo1 --pointer /state)" = running ]; }
wait_for 30 "echo1 rebooted" boots_is 2
wait_for 60 "echo1 ready again" booted_ready 1 echo1
log "echo1's machine was killed: $(dvsn 1 api /v1/instances/echo1 --pointer /last_exit); now boot $(dvsn 1 api /v1/instances/echo1 --pointer /boots)"
check "5b. a killed machine is reported failed and restarted (restart = on-failure)" \
  bash -c "[[ '$(dvsn 1 api /v1/instances/echo1 --pointer /last_exit)' == *'signal: 9'* ]]"
dvs run vos --dc alpha --name f4 --ep 185,186 --svc ipc-bench --mem 16 --on 1 --arg peer=101 --arg n=100 --arg vcopy=0 >/dev/null
wait_for 30 "f4 done" bench_done f4
check "5b. calls to the restarted instance succeed" logs_match f4 'dvs: bench sendrec n=100 '

# ---- 6. migration of echo2 (node 2 -> 3 -> 1 -> 3) under a sendrec loop from node 1 ----
N=$([ "$BACKEND" = fake ] && echo 20000 || { [ "$ACCEL" = tcg ] && echo 2000 || echo 10000; })
dvs run vos --dc alpha --name mc --ep 191,192 --svc ipc-bench --mem 16 --on 1 --arg peer=201 --arg n=$N --arg vcopy=0 >/dev/null
wait_for 30 "client running" logs_match mc 'dvs: ready'
sleep 1
dvs migrate echo2 --to 3 | tee "$WORK/migrate.out"
sleep 1
dvs migrate echo2 --to 1 | tee -a "$WORK/migrate.out"   # and onto the client's own node
sleep 1
dvs migrate echo2 --to 3 | tee -a "$WORK/migrate.out"
wait_for 120 "client done" bench_done mc
log "client: $(log_line mc 'bench (sendrec|summary|FAILED)')"
check "6. three migrations completed (2 -> 3 -> 1 -> 3)" [ "$(grep -c 'migrated echo2' "$WORK/migrate.out")" = 3 ]
check "6. echo2 now runs on node 3" [ "$(dvsn 3 api /v1/instances/echo2 --pointer /state)" = running ]
check "6. $N sendrecs across the move: 0 failed, 0 mismatched or duplicated replies" logs_match mc "dvs: bench sendrec n=$N "
check "6. no failure line" not logs_match mc FAILED
check "6. directory: 201 on node 3 as seen from node 1" placed_on 1 1 201 3

echo
dvs ps || true
echo
echo "cluster-test ($BACKEND, $ACCEL): $PASS passed, $FAIL failed"
[ $FAIL = 0 ]
