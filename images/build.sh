#!/usr/bin/env bash
# Builds the VOS image (images/vos.elf, release, stripped) and its manifest
# (images/vos.manifest.json), plus images/floor.elf: the boot-time floor the benchmark uses.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/images"
cd "$root/unikernel-vos"
cargo build --release --quiet
bin="target/x86_64-unknown-none/release"
cp "$bin/vos" "$out/vos.elf.tmp" && mv "$out/vos.elf.tmp" "$out/vos.elf"
cp "$bin/floor" "$out/floor.elf.tmp" && mv "$out/floor.elf.tmp" "$out/floor.elf"
size=$(stat -c %s "$out/vos.elf")
sha=$(sha256sum "$out/vos.elf" | cut -d' ' -f1)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
cat > "$out/vos.manifest.json.tmp" <<JSON
{
  "name": "vos",
  "version": "$version",
  "file": "vos.elf",
  "sha256": "$sha",
  "size": $size,
  "boot": "pvh",
  "machines": ["microvm", "q35"],
  "default_memory_mib": 8,
  "services": ["http", "echo", "udp-echo", "ipc-bench", "disk", "fs", "net-probe"],
  "boot_config": "one kernel word dvs.cfg=<hex of a postcard dvs_vos_abi::BootConfig>, built by the node daemon"
}
JSON
mv "$out/vos.manifest.json.tmp" "$out/vos.manifest.json"
echo "images: vos.elf $size bytes sha256 $sha"
