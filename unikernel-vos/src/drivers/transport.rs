//! The virtio transport the drivers use: virtio-mmio, or PCI with the queue-notify address
//! cached (the plain PCI transport re-reads it on every notify: three MMIO exits instead of one).

use super::hal::VosHal;
use super::pci::PortCam;
use alloc::rc::Rc;
use core::cell::Cell;
use core::ptr::{read_volatile, write_volatile, NonNull};
use core::sync::atomic::{fence, Ordering};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::bus::{BarInfo, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Offsets in the virtio-pci common configuration structure.
const COMMON_QUEUE_SELECT: usize = 0x16;
const COMMON_QUEUE_NOTIFY_OFF: usize = 0x1E;
const PCI_CAP_ID_VNDR: u8 = 0x09;
const CAP_COMMON_CFG: u8 = 1;
const CAP_NOTIFY_CFG: u8 = 2;
const MAX_QUEUES: usize = 4;
/// Offset of QueueNotify in a virtio-mmio register block.
const MMIO_QUEUE_NOTIFY: usize = 0x50;
/// Feature bit VIRTIO_F_EVENT_IDX.
const RING_EVENT_IDX: u64 = 1 << 29;

/// PCI transport whose `notify` writes straight to a cached per-queue address.
pub struct CachedPci {
    inner: PciTransport,
    common: usize,
    notify_base: usize,
    multiplier: u32,
    notify_addr: [usize; MAX_QUEUES],
}

impl CachedPci {
    /// Wraps the PCI transport of `df`, locating its common and notify structures.
    pub fn new(
        root: &mut PciRoot<PortCam>,
        df: DeviceFunction,
    ) -> core::result::Result<Self, &'static str> {
        let inner = PciTransport::new::<VosHal, _>(root, df)
            .map_err(|_| "virtio-pci transport setup failed")?;
        let mut common = None;
        let mut notify = None;
        let caps: alloc::vec::Vec<_> = root.capabilities(df).collect();
        for cap in caps {
            if cap.id != PCI_CAP_ID_VNDR {
                continue;
            }
            let cfg_type = (cap.private_header >> 8) as u8;
            let cam = PortCam;
            use virtio_drivers::transport::pci::bus::ConfigurationAccess;
            let bar = cam.read_word(df, cap.offset + 4) as u8;
            let offset = cam.read_word(df, cap.offset + 8) as usize;
            let base = match root.bar_info(df, bar) {
                Ok(Some(BarInfo::Memory { address, .. })) => address as usize,
                _ => continue,
            };
            match cfg_type {
                CAP_COMMON_CFG if common.is_none() => common = Some(base + offset),
                CAP_NOTIFY_CFG if notify.is_none() => {
                    let mult = cam.read_word(df, cap.offset + 16);
                    notify = Some((base + offset, mult));
                }
                _ => {}
            }
        }
        let common = common.ok_or("virtio-pci device has no common config capability")?;
        let (notify_base, multiplier) =
            notify.ok_or("virtio-pci device has no notify capability")?;
        Ok(CachedPci {
            inner,
            common,
            notify_base,
            multiplier,
            notify_addr: [0; MAX_QUEUES],
        })
    }

    /// The notify address of `queue` (read once from the common configuration, then cached).
    pub fn notify_address(&mut self, queue: u16) -> usize {
        let q = queue as usize;
        if q < MAX_QUEUES && self.notify_addr[q] != 0 {
            return self.notify_addr[q];
        }
        // SAFETY: `common` is the device's mapped common configuration structure.
        let off = unsafe {
            write_volatile((self.common + COMMON_QUEUE_SELECT) as *mut u16, queue);
            read_volatile((self.common + COMMON_QUEUE_NOTIFY_OFF) as *const u16)
        };
        let addr = self.notify_base + off as usize * self.multiplier as usize;
        if q < MAX_QUEUES {
            self.notify_addr[q] = addr;
        }
        addr
    }
}

/// What the NIC driver needs to see of its two queues behind the `virtio-drivers` device:
/// where their used rings are, how often the crate notified each, and the doorbells.
///
/// virtio-drivers 0.13 publishes a new `avail.idx` with a release store and then reads
/// `used.flags` to decide whether to notify, with no full fence between: on x86 the load can
/// pass the store, so a device that enables notifications at that moment misses the kick and
/// (QEMU's virtio-net) stops reading its backend for good. `Nic::settle` closes that race.
#[derive(Default)]
pub struct QueueProbe {
    /// Used-ring address of queues 0 (receive) and 1 (transmit).
    pub used: [Cell<usize>; 2],
    /// Notifications the crate made on each queue.
    pub notifies: [Cell<u64>; 2],
    /// Notify register of each queue and whether it is 16-bit (PCI) rather than 32-bit (mmio).
    pub doorbell: [Cell<(usize, bool)>; 2],
    /// Available-ring (driver area) address of queues 0 and 1.
    pub avail: [Cell<usize>; 2],
    /// Batched notifications: the crate's doorbell writes are only counted; the driver rings
    /// once per loop turn (`Nic::settle`).
    pub batch: Cell<bool>,
}

impl QueueProbe {
    /// Whether the device currently wants a notification for `queue` (VRING_USED_F_NO_NOTIFY
    /// clear), read after a full fence.
    pub fn wants_kick(&self, queue: usize) -> bool {
        let used = self.used[queue].get();
        if used == 0 {
            return false;
        }
        fence(Ordering::SeqCst);
        // SAFETY: the used ring the crate allocated for this queue (identity mapped); `flags`
        // is its first u16, written by the device.
        let flags = unsafe { read_volatile(used as *const u16) };
        flags & 1 == 0
    }

    /// Asks the device not to interrupt for `queue` (VRING_AVAIL_F_NO_INTERRUPT; the flags
    /// protocol, as VIRTIO_F_EVENT_IDX is not negotiated).
    pub fn suppress_interrupts(&self, queue: usize) {
        let avail = self.avail[queue].get();
        if avail == 0 {
            return;
        }
        // SAFETY: the available ring the crate allocated for this queue (identity mapped);
        // `flags` is its first u16, written only by the driver.
        unsafe { write_volatile(avail as *mut u16, 1) };
    }

    /// Rings the doorbell of `queue`.
    pub fn kick(&self, queue: usize) {
        let (addr, pci) = self.doorbell[queue].get();
        if addr == 0 {
            return;
        }
        // SAFETY: the device's notify register (identity mapped, uncached).
        unsafe {
            if pci {
                write_volatile(addr as *mut u16, queue as u16);
            } else {
                write_volatile(addr as *mut u32, queue as u32);
            }
        }
    }
}

/// The concrete transport.
pub enum Inner {
    /// virtio-mmio device.
    Mmio(MmioTransport<'static>),
    /// virtio-pci device with a cached notify address.
    Pci(CachedPci),
}

/// A virtio transport: virtio-mmio (microvm) or PCI (q35), with its queue probe.
pub struct VosTransport {
    inner: Inner,
    /// Shared with the driver (see `QueueProbe`).
    pub probe: Rc<QueueProbe>,
}

impl VosTransport {
    /// Opens the virtio-mmio device at `base` (`size` bytes, identity mapped).
    pub fn mmio(base: u64, size: u64) -> core::result::Result<Self, &'static str> {
        let header =
            NonNull::new(base as usize as *mut VirtIOHeader).ok_or("virtio-mmio base 0")?;
        // SAFETY: `base` comes from QEMU's virtio_mmio.device= entry and lies in the mapped
        // uncached MMIO hole; nothing else uses this device.
        let t = unsafe { MmioTransport::new(header, size as usize) }
            .map_err(|_| "not a virtio-mmio device")?;
        let probe = Rc::new(QueueProbe::default());
        for q in 0..2 {
            probe.doorbell[q].set((base as usize + MMIO_QUEUE_NOTIFY, false));
        }
        Ok(VosTransport {
            inner: Inner::Mmio(t),
            probe,
        })
    }

    /// Wraps a PCI transport.
    pub fn pci(mut p: CachedPci) -> Self {
        let probe = Rc::new(QueueProbe::default());
        for q in 0..2 {
            probe.doorbell[q].set((p.notify_address(q as u16), true));
        }
        VosTransport {
            inner: Inner::Pci(p),
            probe,
        }
    }
}

macro_rules! each {
    ($self:ident, $t:ident => $e:expr) => {
        match &mut $self.inner {
            Inner::Mmio($t) => $e,
            Inner::Pci(p) => {
                let $t = &mut p.inner;
                $e
            }
        }
    };
}

macro_rules! each_ref {
    ($self:ident, $t:ident => $e:expr) => {
        match &$self.inner {
            Inner::Mmio($t) => $e,
            Inner::Pci(p) => {
                let $t = &p.inner;
                $e
            }
        }
    };
}

impl Transport for VosTransport {
    fn device_type(&self) -> DeviceType {
        each_ref!(self, t => t.device_type())
    }
    fn read_device_features(&mut self) -> u64 {
        // Hide VIRTIO_F_EVENT_IDX: virtio-drivers 0.13 decides whether to notify with
        // `avail_idx >= avail_event + 1`, which is not the spec's wrapping test (it notifies
        // needlessly, and can miss a notification once the index wraps, stalling receive).
        // Without it both sides use the flags protocol, which the crate gets right.
        each!(self, t => t.read_device_features()) & !RING_EVENT_IDX
    }
    fn write_driver_features(&mut self, f: u64) {
        each!(self, t => t.write_driver_features(f))
    }
    fn max_queue_size(&mut self, q: u16) -> u32 {
        each!(self, t => t.max_queue_size(q))
    }
    fn notify(&mut self, q: u16) {
        if let Some(n) = self.probe.notifies.get(q as usize) {
            n.set(n.get() + 1);
        }
        if self.probe.batch.get() {
            return;
        }
        match &mut self.inner {
            Inner::Mmio(t) => t.notify(q),
            Inner::Pci(p) => {
                let addr = p.notify_address(q);
                // SAFETY: the device's notify register for queue `q`.
                unsafe { write_volatile(addr as *mut u16, q) };
            }
        }
    }
    fn get_status(&self) -> DeviceStatus {
        each_ref!(self, t => t.get_status())
    }
    fn set_status(&mut self, s: DeviceStatus) {
        each!(self, t => t.set_status(s))
    }
    fn set_guest_page_size(&mut self, size: u32) {
        each!(self, t => t.set_guest_page_size(size))
    }
    fn requires_legacy_layout(&self) -> bool {
        each_ref!(self, t => t.requires_legacy_layout())
    }
    fn queue_set(&mut self, q: u16, size: u32, desc: PhysAddr, driver: PhysAddr, device: PhysAddr) {
        if let Some(u) = self.probe.used.get(q as usize) {
            u.set(device as usize);
        }
        if let Some(a) = self.probe.avail.get(q as usize) {
            a.set(driver as usize);
        }
        each!(self, t => t.queue_set(q, size, desc, driver, device))
    }
    fn queue_unset(&mut self, q: u16) {
        each!(self, t => t.queue_unset(q))
    }
    fn queue_used(&mut self, q: u16) -> bool {
        each!(self, t => t.queue_used(q))
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        each!(self, t => t.ack_interrupt())
    }
    fn read_config_generation(&self) -> u32 {
        each_ref!(self, t => t.read_config_generation())
    }
    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T> {
        each_ref!(self, t => t.read_config_space(offset))
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<()> {
        each!(self, t => t.write_config_space(offset, value))
    }
}
