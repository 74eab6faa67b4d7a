//! virtio-net through `VirtIONetRaw`, with fixed pools of receive and transmit buffers so
//! that the data path never allocates.
//!
//! Buffers follow the NIC's MTU: at 1500 every buffer is [`BUF_LEN`] bytes, as many as the
//! queue has descriptors. Above it (the fabric NIC with `mtu=`), each receive buffer must hold a
//! whole frame (no mergeable receive buffers), so fewer, larger ones are posted (about
//! [`RX_BUDGET`] bytes in all); transmit keeps small buffers for the small frames and adds a few
//! MTU-sized ones for the large (vcopy data), so that a jumbo MTU costs about 1 MiB of heap.
//!
//! Notifications are batched: the driver crate's own doorbell writes are deferred (the
//! transport only counts them), and [`Nic::settle`], once per loop turn, rings each queue that
//! got buffers at most once, after a full fence, if the device asks for it.

use super::hal::VosHal;
use super::transport::{QueueProbe, VosTransport};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use virtio_drivers::device::net::VirtIONetRaw;

/// Descriptors per virtqueue (and most buffers per direction).
pub const QUEUE_SIZE: usize = 64;
/// Size of a small buffer: virtio-net header plus a full 1500-MTU Ethernet frame.
pub const BUF_LEN: usize = 2048;
/// Bytes of receive buffers posted on a jumbo-MTU NIC (at least 8 buffers).
pub const RX_BUDGET: usize = 512 * 1024;
/// Bytes of large transmit buffers on a jumbo-MTU NIC (4..=32 buffers).
pub const TX_BUDGET: usize = 512 * 1024;
/// virtio-net header (12 bytes with VERSION_1) and Ethernet header, on top of the MTU.
const FRAME_OVERHEAD: usize = 12 + 14;

type Buf = Box<[u8]>;

fn new_buf(len: usize) -> Buf {
    vec![0u8; len].into_boxed_slice()
}

/// A received frame waiting to be consumed: buffer index, header length, frame length.
#[derive(Clone, Copy, Debug)]
pub struct RxSlot {
    buf: u16,
    hdr: u16,
    len: u32,
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
    /// Doorbell writes (`settle` rings each queue at most once per loop turn).
    pub kicks: u64,
    /// Doorbell writes the driver crate asked for (deferred to `settle`, which may merge them).
    pub kicks_asked: u64,
}

/// One virtio-net device with its buffer pools.
pub struct Nic {
    dev: VirtIONetRaw<VosHal, VosTransport, QUEUE_SIZE>,
    /// Length of every receive buffer and of the large transmit buffers.
    buf_len: usize,
    /// Transmit buffers below this index are small ([`BUF_LEN`]), the rest `buf_len`.
    small_tx: u16,
    rx_bufs: Vec<Buf>,
    /// Buffer index posted under each receive token (descriptor head).
    rx_posted: Vec<Option<u16>>,
    ready: VecDeque<RxSlot>,
    tx_bufs: Vec<Buf>,
    tx_free: Vec<u16>,
    tx_free_big: Vec<u16>,
    /// (buffer index, posted length) under each transmit token.
    tx_posted: Vec<Option<(u16, u32)>>,
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
    /// Whether the device should interrupt for finished transmissions when armed.
    tx_interrupts: bool,
}

impl Nic {
    /// Initialises the device on `transport` for frames of up to `mtu` bytes of Ethernet
    /// payload, and posts every receive buffer.
    pub fn new(transport: VosTransport, mtu: usize) -> Result<Nic, &'static str> {
        let probe = transport.probe.clone();
        probe.batch.set(true);
        let dev = VirtIONetRaw::<VosHal, VosTransport, QUEUE_SIZE>::new(transport)
            .map_err(|_| "virtio-net initialisation failed")?;
        let mac = dev.mac_address();
        let buf_len = (mtu + FRAME_OVERHEAD).max(BUF_LEN);
        let (rx_count, big_tx) = if buf_len == BUF_LEN {
            (QUEUE_SIZE, 0)
        } else {
            (
                (RX_BUDGET / buf_len).clamp(8, QUEUE_SIZE),
                (TX_BUDGET / buf_len).clamp(4, 32),
            )
        };
        let small_tx = QUEUE_SIZE - big_tx;
        let mut tx_bufs: Vec<Buf> = (0..QUEUE_SIZE)
            .map(|i| new_buf(if i < small_tx { BUF_LEN } else { buf_len }))
            .collect();
        let tx_hdr_len = dev
            .fill_buffer_header(&mut tx_bufs[0][..])
            .map_err(|_| "virtio-net header")?;
        for b in tx_bufs.iter_mut().skip(1) {
            let _ = dev.fill_buffer_header(&mut b[..]);
        }
        let mut nic = Nic {
            dev,
            buf_len,
            small_tx: small_tx as u16,
            rx_bufs: (0..rx_count).map(|_| new_buf(buf_len)).collect(),
            rx_posted: vec![None; QUEUE_SIZE],
            ready: VecDeque::with_capacity(QUEUE_SIZE),
            tx_bufs,
            tx_free: (0..small_tx as u16).rev().collect(),
            tx_free_big: (small_tx as u16..QUEUE_SIZE as u16).rev().collect(),
            tx_posted: vec![None; QUEUE_SIZE],
            tx_hdr_len,
            mac,
            stats: NicStats::default(),
            probe,
            added: [0; 2],
            seen_notifies: [0; 2],
            tx_interrupts: false,
        };
        for i in 0..rx_count as u16 {
            nic.post_rx(i)?;
        }
        Ok(nic)
    }

    /// The largest Ethernet frame this NIC sends and receives.
    pub fn max_frame(&self) -> usize {
        self.buf_len - self.tx_hdr_len
    }

    fn post_rx(&mut self, buf: u16) -> Result<(), &'static str> {
        let b = &mut self.rx_bufs[buf as usize];
        // SAFETY: the buffer stays owned by the device until `poll` completes its token; it is
        // a heap box that is neither moved nor touched meanwhile.
        let token = unsafe { self.dev.receive_begin(&mut b[..]) }
            .map_err(|_| "virtio-net rx queue full")?;
        self.added[0] += 1;
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
                Ok((hdr, len)) if hdr + len <= self.buf_len => {
                    self.ready.push_back(RxSlot {
                        buf,
                        hdr: hdr as u16,
                        len: len as u32,
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
            self.free_tx(buf);
        }
    }

    fn free_tx(&mut self, buf: u16) {
        if buf < self.small_tx {
            self.tx_free.push(buf);
        } else {
            self.tx_free_big.push(buf);
        }
    }

    /// A free transmit buffer for a frame of `len` bytes (plus the virtio-net header): a small
    /// one if it fits, else a large one.
    fn take_tx(&mut self, len: usize) -> Option<u16> {
        if len + self.tx_hdr_len <= BUF_LEN {
            if let Some(b) = self.tx_free.pop() {
                return Some(b);
            }
        }
        if len + self.tx_hdr_len <= self.buf_len {
            return self.tx_free_big.pop();
        }
        None
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
            self.tx_free.len() + self.tx_free_big.len()
        } else {
            0
        }
    }

    /// Sends one frame of `len` bytes, written by `fill`; None if no buffer is free.
    pub fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if !self.dev.can_send() {
            self.reclaim_tx();
        }
        let buf = match self.dev.can_send().then(|| self.take_tx(len)).flatten() {
            Some(b) => b,
            None => {
                self.reclaim_tx();
                match self.dev.can_send().then(|| self.take_tx(len)).flatten() {
                    Some(b) => b,
                    None => {
                        self.stats.tx_full += 1;
                        return None;
                    }
                }
            }
        };
        let h = self.tx_hdr_len;
        let b = &mut self.tx_bufs[buf as usize];
        let r = fill(&mut b[h..h + len]);
        // SAFETY: the buffer is not touched until its token completes in `reclaim_tx`.
        match unsafe { self.dev.transmit_begin(&b[..h + len]) } {
            Ok(token) => {
                self.added[1] += 1;
                if let Some(s) = self.tx_posted.get_mut(token as usize) {
                    *s = Some((buf, (h + len) as u32));
                }
                self.stats.tx += 1;
                Some(r)
            }
            Err(_) => {
                self.free_tx(buf);
                self.stats.tx_full += 1;
                None
            }
        }
    }

    /// Sends one frame written by `fill` into a buffer of at most `max_len` bytes; `fill`
    /// returns the frame's length (0 = nothing to send). False if no buffer was free.
    pub fn send_with(&mut self, max_len: usize, fill: impl FnOnce(&mut [u8]) -> usize) -> bool {
        let max_len = max_len.min(self.max_frame());
        let mut buf = self.dev.can_send().then(|| self.take_tx(max_len)).flatten();
        if buf.is_none() {
            self.reclaim_tx();
            buf = self.dev.can_send().then(|| self.take_tx(max_len)).flatten();
        }
        let Some(buf) = buf else {
            self.stats.tx_full += 1;
            return false;
        };
        let h = self.tx_hdr_len;
        let b = &mut self.tx_bufs[buf as usize];
        let max = max_len.min(b.len() - h);
        let len = fill(&mut b[h..h + max]).min(max);
        if len == 0 {
            self.free_tx(buf);
            return true;
        }
        // SAFETY: the buffer is not touched until its token completes in `reclaim_tx`.
        match unsafe { self.dev.transmit_begin(&b[..h + len]) } {
            Ok(token) => {
                self.added[1] += 1;
                if let Some(s) = self.tx_posted.get_mut(token as usize) {
                    *s = Some((buf, (h + len) as u32));
                }
                self.stats.tx += 1;
                true
            }
            Err(_) => {
                self.free_tx(buf);
                self.stats.tx_full += 1;
                false
            }
        }
    }

    /// Rings the doorbells: for each queue that got buffers since the last call, checks after
    /// a full fence whether the device wants a notification (`VRING_USED_F_NO_NOTIFY` clear),
    /// and gives it one. Call once per loop turn: one exit per queue at most, however many
    /// frames went out, and only when the device is not already reading the queue. (This also
    /// closes the lost-notification race of the driver crate, see `QueueProbe`.)
    pub fn settle(&mut self) {
        for q in 0..2 {
            let n = self.probe.notifies[q].get();
            self.stats.kicks_asked += n - self.seen_notifies[q];
            self.seen_notifies[q] = n;
            if self.added[q] > 0 && self.probe.wants_kick(q) {
                self.probe.kick(q);
                self.stats.kicks += 1;
            }
            self.added[q] = 0;
        }
    }

    /// Acknowledges the device interrupt (lowers the interrupt line).
    pub fn ack_interrupt(&mut self) {
        let _ = self.dev.ack_interrupt();
    }

    /// Whether, when armed, the device also interrupts for finished transmissions (only worth
    /// a wake-up while frames wait for a transmit buffer).
    pub fn want_tx_interrupts(&mut self, on: bool) {
        self.tx_interrupts = on;
    }

    /// Asks the device to interrupt on received frames (before halting), and on finished
    /// transmissions only if `want_tx_interrupts` asked for them.
    pub fn enable_interrupts(&mut self) {
        self.dev.enable_interrupts();
        if !self.tx_interrupts {
            self.probe.suppress_interrupts(1);
        }
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
