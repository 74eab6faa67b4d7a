//! PCI configuration access through ports 0xCF8/0xCFC (legacy mechanism #1, allowed in ring 3
//! through the TSS I/O bitmap), enumeration of bus 0, and BAR assignment when no firmware
//! did it (qboot).

use crate::arch::{inl, outl};
use alloc::vec::Vec;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, MemoryBarType,
    PciRoot,
};
use virtio_drivers::transport::pci::virtio_device_type;
use virtio_drivers::transport::DeviceType;

/// Legacy port-based configuration access.
pub struct PortCam;

fn address(df: DeviceFunction, reg: u8) -> u32 {
    0x8000_0000
        | (df.bus as u32) << 16
        | (df.device as u32 & 0x1F) << 11
        | (df.function as u32 & 7) << 8
        | (reg as u32 & 0xFC)
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, reg: u8) -> u32 {
        outl(0xCF8, address(df, reg));
        inl(0xCFC)
    }

    fn write_word(&mut self, df: DeviceFunction, reg: u8, data: u32) {
        outl(0xCF8, address(df, reg));
        outl(0xCFC, data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// Whether a PCI host bridge answers at 00:00.0 (false on microvm: no scan, no exits).
pub fn present() -> bool {
    let df = DeviceFunction {
        bus: 0,
        device: 0,
        function: 0,
    };
    PortCam.read_word(df, 0) & 0xFFFF != 0xFFFF
}

/// Window for memory BARs that the kernel assigns itself (inside the 3..4 GiB hole, which
/// boot.rs maps uncached).
const BAR_WINDOW: (u64, u64) = (0xC000_0000, 0xFE00_0000);

/// A virtio device found on PCI bus 0.
pub struct PciVirtio {
    /// Its bus/device/function.
    pub df: DeviceFunction,
    /// Its virtio device type.
    pub kind: DeviceType,
}

/// Lists virtio devices on bus 0, assigning memory BARs that are still zero and enabling
/// memory decoding and bus mastering.
pub fn scan(root: &mut PciRoot<PortCam>) -> Vec<PciVirtio> {
    let mut next = BAR_WINDOW.0;
    let found: Vec<(DeviceFunction, DeviceFunctionInfo)> = root.enumerate_bus(0).collect();
    // Start assigning above any BAR the firmware already placed.
    for (df, _) in &found {
        if let Ok(bars) = root.bars(*df) {
            for b in bars.iter().flatten() {
                if let BarInfo::Memory { address, size, .. } = b {
                    if *address >= BAR_WINDOW.0 && *address < BAR_WINDOW.1 {
                        next = next.max(address + size);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for (df, info) in found {
        let Some(kind) = virtio_device_type(&info) else {
            continue;
        };
        let Ok(bars) = root.bars(df) else { continue };
        for (i, b) in bars.iter().enumerate() {
            if let Some(BarInfo::Memory {
                address: 0,
                size,
                address_type,
                ..
            }) = b
            {
                let size = (*size).max(0x1000);
                let base = (next + size - 1) & !(size - 1);
                if base + size > BAR_WINDOW.1 {
                    crate::println!("dvs: pci {df}: no room for BAR{i} of {size:#x} bytes");
                    continue;
                }
                match address_type {
                    MemoryBarType::Width64 => root.set_bar_64(df, i as u8, base),
                    _ => root.set_bar_32(df, i as u8, base as u32),
                }
                next = base + size;
            }
        }
        root.set_command(df, Command::MEMORY_SPACE | Command::BUS_MASTER);
        out.push(PciVirtio { df, kind });
    }
    out
}
