//! virtio-blk through `virtio-drivers`' `VirtIOBlk`, on the same transports as the NICs
//! (virtio-mmio on microvm, PCI on q35).
//!
//! Reads and writes are submitted without waiting ([`Disk::submit`]) and completed when the
//! device has used them ([`Disk::poll`]), so the disk server's task yields to the other tasks and
//! the NICs while QEMU does the I/O. The buffer of a request travels inside its [`InFlight`]
//! value and comes back with the result: nothing else can touch it while the device may. The
//! device's interrupts stay off: the server polls (the loop keeps turning while I/O is pending).

use super::hal::VosHal;
use super::transport::{QueueProbe, VosTransport};
use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::vec::Vec;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};

/// Bytes per block (virtio's sector).
pub const BLOCK: usize = SECTOR_SIZE;

/// Which way a request moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Device to memory.
    Read,
    /// Memory to device.
    Write,
}

/// One request the device holds: its buffers live here until [`Disk::poll`] hands them back.
/// Dropped while the device may still use them (never done by the server), they are leaked
/// rather than freed under the device.
pub struct InFlight {
    token: u16,
    dir: Dir,
    /// The device was notified of this request.
    kicked: bool,
    parts: Option<(Box<BlkReq>, Box<BlkResp>, Vec<u8>)>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            core::mem::forget(parts);
        }
    }
}

/// Why a block request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// The buffer is empty or not a whole number of blocks.
    BadLength,
    /// The device has no free descriptor (another request is in flight).
    QueueFull,
    /// The device reported an error, or the driver refused the completion.
    Io,
}

/// One virtio-blk device.
pub struct Disk {
    dev: VirtIOBlk<VosHal, VosTransport>,
    probe: Rc<QueueProbe>,
    /// Blocks ([`BLOCK`] bytes each) on the device.
    pub blocks: u64,
    /// The device refuses writes.
    pub read_only: bool,
}

impl Disk {
    /// Initialises the device on `transport`, with its interrupts off.
    pub fn new(transport: VosTransport) -> Result<Disk, &'static str> {
        let probe = transport.probe.clone();
        let mut dev = VirtIOBlk::<VosHal, VosTransport>::new(transport)
            .map_err(|_| "virtio-blk initialisation failed")?;
        dev.disable_interrupts();
        let _ = dev.ack_interrupt();
        Ok(Disk {
            blocks: dev.capacity(),
            read_only: dev.readonly(),
            dev,
            probe,
        })
    }

    /// Starts moving `buf` (a non-zero whole number of blocks) from or to the blocks starting
    /// at `block`. The caller has checked the range against [`Disk::blocks`]. On error the
    /// buffer comes back.
    pub fn submit(
        &mut self,
        dir: Dir,
        block: u64,
        mut buf: Vec<u8>,
    ) -> Result<InFlight, (BlkError, Vec<u8>)> {
        if buf.is_empty() || !buf.len().is_multiple_of(BLOCK) {
            return Err((BlkError::BadLength, buf));
        }
        let notifies = self.probe.notifies[0].get();
        let mut req = Box::new(BlkReq::default());
        let mut resp = Box::new(BlkResp::default());
        // SAFETY: `req`, `resp` and `buf`'s heap storage move into the returned `InFlight`
        // (their addresses do not change) and are touched again only by `complete_*` in
        // `poll`, after the device has used them; dropped earlier, they are leaked.
        let token = unsafe {
            match dir {
                Dir::Read => self
                    .dev
                    .read_blocks_nb(block as usize, &mut req, &mut buf, &mut resp),
                Dir::Write => self
                    .dev
                    .write_blocks_nb(block as usize, &mut req, &buf, &mut resp),
            }
        };
        match token {
            Ok(token) => Ok(InFlight {
                token,
                dir,
                kicked: self.probe.notifies[0].get() != notifies,
                parts: Some((req, resp, buf)),
            }),
            Err(virtio_drivers::Error::QueueFull) => Err((BlkError::QueueFull, buf)),
            Err(_) => Err((BlkError::Io, buf)),
        }
    }

    /// If the device has finished `op`, its result and buffer; else `op` back. If the driver
    /// crate did not notify the device of `op` and the device now wants notifications, kicks it
    /// once (the crate's notify test can miss one, see `QueueProbe`).
    pub fn poll(&mut self, mut op: InFlight) -> Result<(Result<(), BlkError>, Vec<u8>), InFlight> {
        if self.dev.peek_used() != Some(op.token) {
            if !op.kicked && self.probe.wants_kick(0) {
                self.probe.kick(0);
                op.kicked = true;
            }
            return Err(op);
        }
        let Some((req, mut resp, mut buf)) = op.parts.take() else {
            return Ok((Err(BlkError::Io), Vec::new()));
        };
        // SAFETY: the same buffers `submit` passed with this token; the device is done.
        let r = unsafe {
            match op.dir {
                Dir::Read => self
                    .dev
                    .complete_read_blocks(op.token, &req, &mut buf, &mut resp),
                Dir::Write => self
                    .dev
                    .complete_write_blocks(op.token, &req, &buf, &mut resp),
            }
        };
        let _ = self.dev.ack_interrupt();
        Ok((r.map_err(|_| BlkError::Io), buf))
    }

    /// Makes every completed write durable (a virtio-blk flush; QEMU `fdatasync`s the image).
    /// Waits for the device.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        let r = self.dev.flush().map_err(|_| BlkError::Io);
        let _ = self.dev.ack_interrupt();
        r
    }
}
