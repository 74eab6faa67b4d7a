//! QEMU's own command-line words: on microvm with `acpi=off`, QEMU appends one
//! `virtio_mmio.device=SIZE@BASE:IRQ` word per plugged virtio-mmio transport, in `-device`
//! order. They are QEMU's, not the host's configuration (that is the `dvs.cfg=` word).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// The key of QEMU's words.
const KEY: &str = "virtio_mmio.device=";

/// A virtio-mmio device announced by QEMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Base address.
    pub base: u64,
    /// Region size in bytes.
    pub size: u64,
    /// IOAPIC input.
    pub irq: u8,
}

fn size(v: &str) -> Option<u64> {
    let (n, mult) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 1024),
        b'M' | b'm' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    let n = match n.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => n.parse().ok()?,
    };
    n.checked_mul(mult)
}

fn device(v: &str) -> Option<MmioDevice> {
    let (sz, rest) = v.split_once('@')?;
    let (base, irq) = rest.split_once(':')?;
    Some(MmioDevice {
        base: u64::from_str_radix(base.strip_prefix("0x")?, 16).ok()?,
        size: size(sz)?,
        irq: irq.parse().ok()?,
    })
}

/// The virtio-mmio devices of a kernel command line, in order; the error names a malformed word.
pub fn parse(cmdline: &str) -> Result<Vec<MmioDevice>, String> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(KEY))
        .map(|v| device(v).ok_or_else(|| format!("{KEY}{v}: expected SIZE@BASE:IRQ")))
        .collect()
}
