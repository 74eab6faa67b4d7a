#!/usr/bin/env bash
# The VOS benchmark (dvs-bench's vos-bench): boot time against a minimal ELF, host↔guest sendrec against raw TCP
# on loopback, the in-guest sendrec loop, idle CPU and image size, under KVM (when /dev/kvm works) and TCG.
# Readiness and results come from the guest's control records. Prints one table, all rows from this run;
# the figures also go to target/bench/vos.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash images/build.sh >/dev/null
exec cargo run --quiet --release -p dvs-bench --features grpc --bin vos-bench
