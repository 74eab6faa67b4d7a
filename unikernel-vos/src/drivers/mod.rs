//! Device drivers: the virtio HAL, the transports (virtio-mmio on microvm, PCI on q35) and
//! virtio-net, all through the `virtio-drivers` crate.

pub mod hal;
pub mod net;
pub mod pci;
pub mod transport;
