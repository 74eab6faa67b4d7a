//! Device drivers: the virtio HAL, the transports (virtio-mmio on microvm, PCI on q35),
//! virtio-net and virtio-blk, all through the `virtio-drivers` crate; and [`init`], which sets up
//! the interrupt controllers, the NICs and the disks.

pub mod blk;
pub mod hal;
pub mod mmio_words;
pub mod net;
pub mod pci;
pub mod transport;

use crate::arch::time::{self, Calibration};
use crate::arch::{self, apic, ExitCode};
use crate::println;
use alloc::vec::Vec;
use blk::Disk;
use mmio_words::MmioDevice;
use net::Nic;
use transport::VosTransport;
use virtio_drivers::transport::{DeviceType, Transport};

/// The devices, set up.
pub struct Devices {
    /// The NICs, in `-device` order (the first is the fabric NIC).
    pub nics: Vec<Nic>,
    /// The virtio-blk devices, in `-device` order (the disk server serves the first).
    pub disks: Vec<Disk>,
    /// The clock's calibration, measured while the devices were set up.
    pub clock: Calibration,
}

/// MTU of every NIC but the fabric NIC.
pub const PLAIN_MTU: usize = 1500;

/// Sets up the interrupt controllers and the NICs (the first, the fabric NIC, for frames of
/// `fabric_mtu`). The TSC is calibrated against the PIT over
/// the NIC set-up (at least 2 ms): the PIT counts while virtio initialises, so the measurement
/// costs no extra boot time. A clock that cannot be calibrated is fatal.
pub fn init(mmio: &[MmioDevice], fabric_mtu: usize) -> Devices {
    apic::init();
    let calibration = time::Calibrator::start();
    let (nics, disks) = discover(mmio, fabric_mtu);
    let clock = calibration
        .finish(2000)
        .unwrap_or_else(|e| arch::fatal(ExitCode::Fault, format_args!("{e}")));
    Devices { nics, disks, clock }
}

/// Finds and initialises the virtio-net and virtio-blk devices, each kind in `-device` order:
/// the virtio-mmio devices QEMU announced on the command line (microvm), else those on PCI bus 0
/// (q35). NIC interrupts are routed to the IOAPIC (disks are polled, their interrupts stay off);
/// a device that fails is reported and skipped. The first NIC gets `fabric_mtu`, the others
/// [`PLAIN_MTU`].
pub fn discover(mmio: &[MmioDevice], fabric_mtu: usize) -> (Vec<Nic>, Vec<Disk>) {
    let (mut nics, mut disks) = (Vec::new(), Vec::new());
    let mtu = |nics: &Vec<Nic>| {
        if nics.is_empty() {
            fabric_mtu
        } else {
            PLAIN_MTU
        }
    };
    if !mmio.is_empty() {
        for &d in mmio {
            let m = mtu(&nics);
            mmio_device(d, m, &mut nics, &mut disks);
        }
        return (nics, disks);
    }
    if !pci::present() {
        return (nics, disks);
    }
    let mut root = virtio_drivers::transport::pci::bus::PciRoot::new(pci::PortCam);
    for dev in pci::scan(&mut root) {
        let r = match dev.kind {
            DeviceType::Network => transport::CachedPci::new(&mut root, dev.df)
                .and_then(|t| Nic::new(VosTransport::pci(t), mtu(&nics)))
                .map(|nic| nics.push(nic)),
            DeviceType::Block => transport::CachedPci::new(&mut root, dev.df)
                .and_then(|t| Disk::new(VosTransport::pci(t)))
                .map(|disk| disks.push(disk)),
            _ => continue,
        };
        if let Err(e) = r {
            println!("dvs: pci {}: {e}", dev.df);
        }
    }
    if !nics.is_empty() {
        // PCI INTx lines reach IOAPIC inputs 16..23; any of them just wakes the loop.
        for pin in 16..24 {
            let _ = apic::route_irq(pin);
        }
    }
    (nics, disks)
}

fn mmio_device(d: MmioDevice, mtu: usize, nics: &mut Vec<Nic>, disks: &mut Vec<Disk>) {
    let Ok(t) = VosTransport::mmio(d.base, d.size) else {
        return;
    };
    let r = match t.device_type() {
        DeviceType::Network => Nic::new(t, mtu).map(|nic| {
            if apic::route_irq(d.irq).is_err() {
                println!("dvs: virtio-mmio {:#x}: irq {} out of range", d.base, d.irq);
            }
            nics.push(nic)
        }),
        DeviceType::Block => Disk::new(t).map(|disk| disks.push(disk)),
        _ => return,
    };
    if let Err(e) = r {
        println!("dvs: virtio-mmio {:#x}: {e}", d.base);
    }
}
