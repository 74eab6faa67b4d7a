#!/usr/bin/env bash
# Boots the real VOS image under QEMU and checks it (KVM when /dev/kvm works, else TCG;
# DVS_ACCEL=kvm|tcg overrides). Builds the image first if needed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-tests: qemu-system-x86_64 not found (run scripts/setup.sh)" >&2; exit 1; }
[ -f images/vos.elf ] || bash images/build.sh
# Release build: the host harness runs the m3ipc-core engine, whose 4 MiB vcopy in a debug
# build is slow enough (CRC of the whole buffer per repeated final ack) to livelock the test.
# The same choice the harness makes (qemu-tests/src/lib.rs, Accel::detect), printed once here because
# cargo's test harness hides the output of passing tests.
case "${DVS_ACCEL:-}" in
  kvm|tcg) accel=$DVS_ACCEL ;;
  *) if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then accel=kvm; else accel=tcg; fi ;;
esac
echo "qemu-tests: accelerator $accel (DVS_ACCEL=kvm|tcg overrides)"
exec cargo test --release -p qemu-tests -- --test-threads=1
