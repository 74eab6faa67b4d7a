#!/usr/bin/env bash
# Installs what dvs needs on a fresh Debian machine; idempotent and quiet when all is there.
set -euo pipefail

die() { echo "setup: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 is missing and installing it needs root (run as root or install it yourself)"; }

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs) first"
command -v rustup >/dev/null || die "rustup not found: the guest target x86_64-unknown-none is installed through rustup"

apt_updated=0
apt_install() {
  need_root "$*"
  if [ $apt_updated = 0 ]; then
    echo "setup: apt-get update"
    apt-get update -qq || die "apt-get update failed"
    apt_updated=1
  fi
  echo "setup: apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

command -v qemu-system-x86_64 >/dev/null || apt_install qemu-system-x86
command -v ip >/dev/null || apt_install iproute2
# The etcd control plane: etcd-client's build compiles etcd's protobufs (protoc); the tests run etcd members.
command -v protoc >/dev/null || apt_install protobuf-compiler
command -v etcd >/dev/null || apt_install etcd-server
# The web console's browser test (qemu-tests/support/tests/console.rs) drives Debian's Chromium through ChromeDriver.
{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || apt_install chromium chromium-driver

if ! rustup target list --installed | grep -qx x86_64-unknown-none; then
  echo "setup: rustup target add x86_64-unknown-none"
  rustup target add x86_64-unknown-none || die "cannot install the Rust target x86_64-unknown-none"
fi
for comp in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^$comp"; then
    echo "setup: rustup component add $comp"
    rustup component add "$comp" || die "cannot install the rustup component $comp"
  fi
done
