#!/usr/bin/env bash
# The VOS benchmark: boot time against a minimal ELF, host↔guest sendrec against raw TCP on
# loopback, the in-guest sendrec loop, idle CPU and image size, under KVM (when /dev/kvm
# works) and TCG. Prints one table, all rows from this run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash images/build.sh >/dev/null
exec cargo run --quiet --release -p qemu-tests --bin vos-bench
