#!/usr/bin/env bash
# Density on one node (`dvs-bench density`): boots idle VOS instances (echo service) through its own node
# daemon (127.0.0.1:7170/7171, own data dir, so it runs beside `make run`) until DENSITY_MAX (default 200) or
# until less than 1 GiB of memory is left, then prints one table: boot time per instance (`dvs run` to the
# Ready record in the instance's typed view), host memory per instance, total idle CPU. The figures also go
# to target/bench/density.json.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f images/vos.elf ] || bash images/build.sh >/dev/null
cargo build -q --release -p dvs-hypervisor --bin dvs
cargo build -q --release -p dvs-bench --features grpc --bin dvs-bench
exec target/release/dvs-bench density --max "${DENSITY_MAX:-200}"
