//! virtio-net through `VirtIONetRaw`, with fixed pools of receive and transmit buffers so
//! that the data path never allocates.

use super::hal::VosHal;
use super::transport::{QueueProbe, VosTransport};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use virtio_drivers::device::net::VirtIONetRaw;

/// Descriptors per virtqueue (and buffers per direction).
pub const QUEUE_SIZE: usize = 64;
/// Size of one buffer: virtio-net header plus a full Ethernet frame.
pub const BUF_LEN: usize = 2048;

type Buf = Box<[u8; BUF_LEN]>;

fn new_buf() -> Buf {
    Box::new([0u8; BUF_LEN])
}

/// A received frame waiting to be consumed: buffer index, header length, frame length.
#[derive(Clone, Copy, Debug)]
pub struct RxSlot {
    buf: u16,
    hdr: u16,
    len: u16,
}

/// Counters of one NIC.
#[derive(Clone, Copy, Debug, Default)]
pub struct NicStats {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Frames not sent because every transmit buffer was in flight.
    pub tx_full: u64,
    /// Receive completions the driver refused (bad token or length).
    pub rx_errors: u64,
    /// Notifications `settle` made that the driver crate had missed.
    pub kicks: u64,
}

/// One virtio-net device with its buffer pools.
pub struct Nic {
    dev: VirtIONetRaw<VosHal, VosTransport, QUEUE_SIZE>,
    rx_bufs: Vec<Buf>,
    /// Buffer index posted under each receive token (descriptor head).
    rx_posted: Vec<Option<u16>>,
    ready: VecDeque<RxSlot>,
    tx_bufs: Vec<Buf>,
    tx_free: Vec<u16>,
    /// (buffer index, posted length) under each transmit token.
    tx_posted: Vec<Option<(u16, u16)>>,
    tx_hdr_len: usize,
    /// MAC address from the device's config space.
    pub mac: [u8; 6],
    /// Counters.
    pub stats: NicStats,
    probe: Rc<QueueProbe>,
    /// Buffers added to (receive, transmit) since the last `settle`.
    added: [u32; 2],
    /// The crate's notify counts at the last `settle`.
    seen_notifies: [u64; 2],
}

impl Nic {
    /// Initialises the device on `transport` and posts every receive buffer.
    pub fn new(transport: VosTransport) -> Result<Nic, &'static str> {
        let probe = transport.probe.clone();
        let dev = VirtIONetRaw::<VosHal, VosTransport, QUEUE_SIZE>::new(transport)
            .map_err(|_| "virtio-net initialisation failed")?;
        let mac = dev.mac_address();
        let mut tx_bufs: Vec<Buf> = (0..QUEUE_SIZE).map(|_| new_buf()).collect();
        let tx_hdr_len = dev
            .fill_buffer_header(&mut tx_bufs[0][..])
            .map_err(|_| "virtio-net header")?;
        for b in tx_bufs.iter_mut().skip(1) {
            let _ = dev.fill_buffer_header(&mut b[..]);
        }
        let mut nic = Nic {
            dev,
            rx_bufs: (0..QUEUE_SIZE).map(|_| new_buf()).collect(),
            rx_posted: vec![None; QUEUE_SIZE],
            ready: VecDeque::with_capacity(QUEUE_SIZE),
            tx_bufs,
            tx_free: (0..QUEUE_SIZE as u16).rev().collect(),
            tx_posted: vec![None; QUEUE_SIZE],
            tx_hdr_len,
            mac,
            stats: NicStats::default(),
            probe,
            added: [0; 2],
            seen_notifies: [0; 2],
        };
        for i in 0..QUEUE_SIZE as u16 {
            nic.post_rx(i)?;
        }
        Ok(nic)
    }

    fn post_rx(&mut self, buf: u16) -> Result<(), &'static str> {
        let b = &mut self.rx_bufs[buf as usize];
        // SAFETY: the buffer stays owned by the device until `poll` completes its token; it is
        // a heap box that is neither moved nor touched meanwhile.
        let token = unsafe { self.dev.receive_begin(&mut b[..]) }
            .map_err(|_| "virtio-net rx queue full")?;
        let slot = self
            .rx_posted
            .get_mut(token as usize)
            .ok_or("virtio-net rx token out of range")?;
        *slot = Some(buf);
        Ok(())
    }

    /// Collects completed receives into the ready queue; true if any arrived.
    pub fn poll(&mut self) -> bool {
        let mut any = false;
        while let Some(token) = self.dev.poll_receive() {
            let Some(buf) = self
                .rx_posted
                .get_mut(token as usize)
                .and_then(Option::take)
            else {
                self.stats.rx_errors += 1;
                break;
            };
            let b = &mut self.rx_bufs[buf as usize];
            // SAFETY: `b` is the buffer posted under `token`.
            match unsafe { self.dev.receive_complete(token, &mut b[..]) } {
                Ok((hdr, len)) if hdr + len <= BUF_LEN => {
                    self.ready.push_back(RxSlot {
                        buf,
                        hdr: hdr as u16,
                        len: len as u16,
                    });
                    self.stats.rx += 1;
                    any = true;
                }
                _ => {
                    self.stats.rx_errors += 1;
                    let _ = self.post_rx(buf);
                }
            }
        }
        any
    }

    /// Takes the oldest received frame.
    pub fn next_rx(&mut self) -> Option<RxSlot> {
        self.ready.pop_front()
    }

    /// Whether received frames are waiting.
    pub fn has_rx(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The Ethernet frame held by `slot`.
    pub fn frame(&self, slot: &RxSlot) -> &[u8] {
        let start = slot.hdr as usize;
        &self.rx_bufs[slot.buf as usize][start..start + slot.len as usize]
    }

    /// Gives `slot`'s buffer back to the device.
    pub fn recycle(&mut self, slot: RxSlot) {
        if self.post_rx(slot.buf).is_err() {
            self.stats.rx_errors += 1;
        }
    }

    fn reclaim_tx(&mut self) {
        while let Some(token) = self.dev.poll_transmit() {
            let Some((buf, len)) = self
                .tx_posted
                .get_mut(token as usize)
                .and_then(Option::take)
            else {
                break;
            };
            let b = &self.tx_bufs[buf as usize];
            // SAFETY: the buffer and length posted under `token`.
            let _ = unsafe { self.dev.transmit_complete(token, &b[..len as usize]) };
            self.tx_free.push(buf);
        }
    }

    /// Whether a transmit buffer is free (reclaiming finished transmissions first).
    pub fn can_send(&mut self) -> bool {
        if self.tx_free.is_empty() {
            self.reclaim_tx();
        }
        !self.tx_free.is_empty() && self.dev.can_send()
    }

    /// How many frames can be sent now (reclaiming finished transmissions first).
    pub fn tx_room(&mut self) -> usize {
        self.reclaim_tx();
        if self.dev.can_send() {
            self.tx_free.len()
        } else {
            0
        }
    }

    /// Sends one frame of `len` bytes, written by `fill`; None if no buffer is free.
    pub fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.can_send() || len > BUF_LEN - self.tx_hdr_len {
            self.stats.tx_full += 1;
            return None;
        }
        let buf = self.tx_free.pop()?;
        let h = self.tx_hdr_len;
        let b = &mut self.tx_bufs[buf as usize];
        let r = fill(&mut b[h..h + len]);
        // SAFETY: the buffer is not touched until its token completes in `reclaim_tx`.
        match unsafe { self.dev.transmit_begin(&b[..h + len]) } {
            Ok(token) => {
                self.added[1] += 1;
                if let Some(s) = self.tx_posted.get_mut(token as usize) {
                    *s = Some((buf, (h + len) as u16));
                }
                self.stats.tx += 1;
                Some(r)
            }
            Err(_) => {
                self.tx_free.push(buf);
                self.stats.tx_full += 1;
                None
            }
        }
    }

    /// Sends one frame written by `fill` into a buffer of at most `max_len` bytes; `fill`
    /// returns the frame's length (0 = nothing to send). False if no buffer was free.
    pub fn send_with(&mut self, max_len: usize, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        if !self.can_send() {
            self.stats.tx_full += 1;
            return false;
        }
        let Some(buf) = self.tx_free.pop() else {
            return false;
        };
        let h = self.tx_hdr_len;
        let b = &mut self.tx_bufs[buf as usize];
        let max = max_len.min(BUF_LEN - h);
        let len = fill(&mut b[h..h + max]).min(max);
        if len == 0 {
            self.tx_free.push(buf);
            return true;
        }
        // SAFETY: the buffer is not touched until its token completes in `reclaim_tx`.
        match unsafe { self.dev.transmit_begin(&b[..h + len]) } {
            Ok(token) => {
                self.added[1] += 1;
                if let Some(s) = self.tx_posted.get_mut(token as usize) {
                    *s = Some((buf, (h + len) as u16));
                }
                self.stats.tx += 1;
                true
            }
            Err(_) => {
                self.tx_free.push(buf);
                self.stats.tx_full += 1;
                false
            }
        }
    }

    /// Closes the lost-notification race of the driver crate (see `QueueProbe`): for each
    /// queue that got buffers since the last call without the crate notifying, checks after a
    /// full fence whether the device wants a notification, and gives it one. Call once per
    /// loop turn; costs an exit only when a kick was actually due.
    pub fn settle(&mut self) {
        for q in 0..2 {
            let n = self.probe.notifies[q].get();
            if self.added[q] > 0 && n == self.seen_notifies[q] && self.probe.wants_kick(q) {
                self.probe.kick(q);
                self.stats.kicks += 1;
            }
            self.added[q] = 0;
            self.seen_notifies[q] = self.probe.notifies[q].get();
        }
    }

    /// Acknowledges the device interrupt (lowers the interrupt line).
    pub fn ack_interrupt(&mut self) {
        let _ = self.dev.ack_interrupt();
    }

    /// Asks the device to interrupt on new used buffers (before halting).
    pub fn enable_interrupts(&mut self) {
        self.dev.enable_interrupts();
    }

    /// Asks the device not to interrupt (while polling).
    pub fn disable_interrupts(&mut self) {
        self.dev.disable_interrupts();
    }

    /// Whether the device has completed receives not yet collected by `poll`.
    pub fn rx_pending(&self) -> bool {
        self.dev.poll_receive().is_some()
    }
}
