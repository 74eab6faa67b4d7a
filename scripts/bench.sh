#!/usr/bin/env bash
# `make bench`: the criterion benchmarks of m3ipc-core as one table, then the VOS and cluster
# benchmarks (scripts/bench-vos.sh, scripts/bench-cluster.sh, scripts/bench-density.sh) when present.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== m3ipc-core (criterion; per operation) =="
out=$(cargo bench -p m3ipc-core --bench m3ipc -- --warm-up-time 1 --measurement-time 3 --output-format bencher 2>/dev/null)
printf '%-48s %12s\n' "benchmark" "ns/op"
echo "$out" | awk '/^test / { name=$2; for (i=3;i<=NF;i++) if ($i=="...") { for (j=3;j<i;j++) name=name" "$j }
                   for (i=1;i<=NF;i++) if ($i=="bench:") { v=$(i+1); gsub(",","",v); printf "%-48s %12s\n", name, v } }'
echo "(aims: encode/decode tens of ns; local sendrec < 200 ns)"

for s in scripts/bench-vos.sh scripts/bench-cluster.sh scripts/bench-density.sh; do
  if [ -f "$s" ]; then
    echo
    bash "$s"
  else
    echo
    echo "== $s: not written yet (see README status) =="
  fi
done
