//! smoltcp `phy::Device` over a `Nic`: receive tokens come from the port's queue of non-M3-IPC
//! frames, transmit tokens write straight into the NIC's transmit buffers.

use crate::drivers::net::{Nic, RxSlot, BUF_LEN};
use alloc::collections::VecDeque;
use alloc::vec;
use core::cell::RefCell;
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// The adapter, built for one `Interface::poll` call.
pub struct Phy<'a> {
    /// The NIC.
    pub nic: &'a RefCell<Nic>,
    /// Frames the demultiplexer kept for smoltcp.
    pub ip_rx: &'a RefCell<VecDeque<RxSlot>>,
}

/// A received frame; its buffer goes back to the device in `consume`.
pub struct RxToken<'a> {
    nic: &'a RefCell<Nic>,
    slot: RxSlot,
}

/// Permission to send one frame.
pub struct TxToken<'a> {
    nic: &'a RefCell<Nic>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // smoltcp answers some frames (ARP, ICMP echo) from inside `f` through a TxToken,
        // which needs the NIC mutably: copy the frame out and give the buffer back first.
        let mut copy = [0u8; BUF_LEN];
        let len = {
            let mut nic = self.nic.borrow_mut();
            let frame = nic.frame(&self.slot);
            let len = frame.len().min(BUF_LEN);
            copy[..len].copy_from_slice(&frame[..len]);
            nic.recycle(self.slot);
            len
        };
        f(&copy[..len])
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        let sent = self.nic.borrow_mut().send(len, |b| f.take().map(|f| f(b)));
        match (sent.flatten(), f) {
            (Some(r), _) => r,
            // No buffer after all (rare: `transmit` checked): the frame is dropped, like a
            // full NIC queue would.
            (None, Some(f)) => f(&mut vec![0u8; len]),
            (None, None) => unreachable!("closure ran but returned nothing"),
        }
    }
}

impl phy::Device for Phy<'_> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if !self.nic.borrow_mut().can_send() {
            return None;
        }
        let slot = self.ip_rx.borrow_mut().pop_front()?;
        Some((
            RxToken {
                nic: self.nic,
                slot,
            },
            TxToken { nic: self.nic },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.nic.borrow_mut().can_send() {
            Some(TxToken { nic: self.nic })
        } else {
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514.min(BUF_LEN - 12);
        caps.max_burst_size = None;
        caps.checksum.ipv4 = Checksum::Both;
        caps
    }
}
