#!/usr/bin/env bash
# Boots the real VOS image under QEMU and checks it (qemu-tests/tests/vos.rs; KVM when
# /dev/kvm works, else TCG; DVS_ACCEL=kvm|tcg overrides). Builds the image first if needed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-tests: qemu-system-x86_64 not found (run scripts/setup.sh)" >&2; exit 1; }
[ -f images/vos.elf ] || bash images/build.sh
# The same choice the tests make (dvs-instance's Accel::detect), printed once here because
# cargo's test harness hides the output of passing tests.
case "${DVS_ACCEL:-}" in
  kvm|tcg) accel=$DVS_ACCEL ;;
  *) if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then accel=kvm; else accel=tcg; fi ;;
esac
echo "qemu-tests: accelerator $accel (DVS_ACCEL=kvm|tcg overrides)"
# Release, so that the timed checks (a halted guest answers in < 3 ms) time the guest, not an
# unoptimised host loop. A debug build passes too: m3ipc-core and crc32fast are optimised in
# dev builds and the engine caches a pull's CRC, so the old debug-only 4 MiB-pull livelock is gone.
# One test at a time: each boots QEMU, and the tests serialise themselves anyway.
exec cargo test --release -p qemu-tests -- --test-threads=1
