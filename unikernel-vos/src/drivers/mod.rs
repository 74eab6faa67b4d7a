//! Device drivers: the virtio HAL, the transports (virtio-mmio on microvm, PCI on q35) and
//! virtio-net, all through the `virtio-drivers` crate; and [`init`], which sets up the interrupt
//! controllers and the NICs.

pub mod hal;
pub mod mmio_words;
pub mod net;
pub mod pci;
pub mod transport;

use crate::arch::time::{self, Calibration};
use crate::arch::{self, apic, ExitCode};
use crate::println;
use alloc::vec::Vec;
use mmio_words::MmioDevice;
use net::Nic;
use transport::VosTransport;
use virtio_drivers::transport::{DeviceType, Transport};

/// The devices, set up.
pub struct Devices {
    /// The NICs, in `-device` order (the first is the fabric NIC).
    pub nics: Vec<Nic>,
    /// The clock's calibration, measured while the devices were set up.
    pub clock: Calibration,
}

/// Sets up the interrupt controllers and the NICs. The TSC is calibrated against the PIT over
/// the NIC set-up (at least 2 ms): the PIT counts while virtio initialises, so the measurement
/// costs no extra boot time. A clock that cannot be calibrated is fatal.
pub fn init(mmio: &[MmioDevice]) -> Devices {
    apic::init();
    let calibration = time::Calibrator::start();
    let nics = discover_nics(mmio);
    let clock = calibration
        .finish(2000)
        .unwrap_or_else(|e| arch::fatal(ExitCode::Fault, format_args!("{e}")));
    Devices { nics, clock }
}

/// Finds and initialises the virtio-net devices, in `-device` order: the virtio-mmio devices
/// QEMU announced on the command line (microvm), else those on PCI bus 0 (q35). Their
/// interrupts are routed to the IOAPIC; a device that fails is reported and skipped.
pub fn discover_nics(mmio: &[MmioDevice]) -> Vec<Nic> {
    if !mmio.is_empty() {
        return mmio.iter().filter_map(|&d| mmio_nic(d)).collect();
    }
    if !pci::present() {
        return Vec::new();
    }
    let mut nics = Vec::new();
    let mut root = virtio_drivers::transport::pci::bus::PciRoot::new(pci::PortCam);
    for dev in pci::scan(&mut root) {
        if dev.kind != DeviceType::Network {
            continue;
        }
        match transport::CachedPci::new(&mut root, dev.df)
            .and_then(|t| Nic::new(VosTransport::pci(t)))
        {
            Ok(nic) => nics.push(nic),
            Err(e) => println!("dvs: pci {}: {e}", dev.df),
        }
    }
    if !nics.is_empty() {
        // PCI INTx lines reach IOAPIC inputs 16..23; any of them just wakes the loop.
        for pin in 16..24 {
            let _ = apic::route_irq(pin);
        }
    }
    nics
}

fn mmio_nic(d: MmioDevice) -> Option<Nic> {
    let t = VosTransport::mmio(d.base, d.size).ok()?;
    if t.device_type() != DeviceType::Network {
        return None;
    }
    match Nic::new(t) {
        Ok(nic) => {
            if apic::route_irq(d.irq).is_err() {
                println!("dvs: virtio-mmio {:#x}: irq {} out of range", d.base, d.irq);
            }
            Some(nic)
        }
        Err(e) => {
            println!("dvs: virtio-mmio {:#x}: {e}", d.base);
            None
        }
    }
}
