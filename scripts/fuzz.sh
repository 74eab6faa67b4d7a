#!/usr/bin/env bash
# Runs the m3ipc-core fuzz targets (decoder, then engine) for a bounded time each. Needs a nightly
# toolchain (cargo-fuzz uses sanitizer flags) and installs cargo-fuzz from crates.io if missing.
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")/.."
rustup toolchain list | grep -q '^nightly' || { echo "fuzz: needs a nightly toolchain: rustup toolchain install nightly" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cd m3ipc-core
for target in decode engine; do
  echo "fuzz: $target for ${secs}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048
done
