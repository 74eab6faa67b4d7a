#!/usr/bin/env bash
# `make bench`: the criterion benchmarks of m3ipc-core as one table, then the VOS, cluster, density and web server
# (against nginx) benchmarks of dvs-bench (scripts/bench-vos.sh, -cluster.sh, -density.sh, -http.sh). Every
# part writes its figures to target/bench/<part>.json; at the end `dvs-bench summary` merges them into
# target/bench/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p dvs-bench --features grpc --bin dvs-bench
BENCH=target/release/dvs-bench
mkdir -p target/bench
rm -f target/bench/*.json

echo "== m3ipc-core (criterion; per operation) =="
out=$(cargo bench -p m3ipc-core --bench m3ipc -- --warm-up-time 1 --measurement-time 3 --output-format bencher 2>/dev/null)
rows=$(echo "$out" | awk '/^test / { name=$2; for (i=3;i<=NF;i++) if ($i=="...") { for (j=3;j<i;j++) name=name" "$j }
                   for (i=1;i<=NF;i++) if ($i=="bench:") { v=$(i+1); gsub(",","",v); printf "%s\t%s\n", name, v } }')
printf '%-48s %12s\n' "benchmark" "ns/op"
echo "$rows" | awk -F'\t' 'NF == 2 { printf "%-48s %12s\n", $1, $2 }'
echo "(aims: encode/decode tens of ns; local sendrec < 200 ns)"
mapfile -t figs < <(echo "$rows" | awk -F'\t' 'NF == 2 { n=$1; gsub(/ /, "_", n); printf "%s.ns_per_op=%s\n", n, $2 }')
"$BENCH" put m3ipc-core "${figs[@]}"

for s in scripts/bench-vos.sh scripts/bench-cluster.sh scripts/bench-density.sh scripts/bench-http.sh; do
  echo
  bash "$s"
done
echo
"$BENCH" summary
