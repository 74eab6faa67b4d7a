//! The disk server's client, as the file server uses it: a `dvs_fs::BlockDevice` of 4 KiB blocks
//! ([`DiskDevice`], synchronous, running on the fs job stack of `blocking`) whose calls are
//! carried out by [`DiskClient`] (async, on the fs task) with the `dvs_vos_proto::disk` protocol.
//!
//! A device call puts an [`Op`] in the shared [`Link`] and suspends the job; the fs task's
//! `io` step takes it, `sendrec`s it from the fs endpoint to the disk server (in this instance
//! or on another node: the engine decides), with a timeout on every call, and leaves the
//! [`Outcome`] in the link; the job resumes with it. Bulk data moves by vcopy through the fs
//! endpoint's own buffer, lent to the engine only for the length of the call (the disk server
//! pushes a `Read`'s blocks into it and pulls a `Write`'s from it). One request per run of
//! consecutive blocks, up to the protocol's 256 KiB.
//!
//! A disk server that does not answer in time, answers an error or answers nonsense makes the
//! device call fail (`DeviceError::Gone` / `Other`), which the file system reports as an I/O
//! error: the fs request is answered `FsError::Io`, never left hanging.

use super::blocking::Suspender;
use crate::ipc::{self, IpcRef};
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::time::Duration;
use dvs_fs::{BlockDevice, DeviceError};
use dvs_vos_proto::disk::{DiskError, DiskReply, DiskRequest, BLOCK_SIZE, MAX_BLOCKS};
use m3ipc_core::{Endpoint, ErrorCode};

/// The file system's block size: 8 of the disk server's sectors.
pub const FS_BLOCK: usize = 4096;
/// Sectors per file-system block.
const PER_BLOCK: u64 = (FS_BLOCK as u64) / (BLOCK_SIZE as u64);
/// How long a `Read`, `Write` or `Flush` may take before it counts as failed: ample for one
/// call of at most 256 KiB to a disk server on another node (tens of ms), and below the web
/// server's 8 s call timeout to the file server, so that a disk server that stopped answering
/// makes the fs request fail (`Io`, then 503) before the web server's own call gives up, and the
/// file server is free for the next request by then.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the `Info` probe (at mount) may take: short, so that a request that finds the disk
/// server away is answered soon.
pub const INFO_TIMEOUT: Duration = Duration::from_secs(3);

/// What the job asks the fs task to do.
pub enum Op {
    /// The disk's geometry.
    Info,
    /// `count` sectors from `sector`.
    Read {
        /// First sector.
        sector: u64,
        /// Sectors.
        count: u32,
    },
    /// `data` onto the sectors from `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// A multiple of the sector size, at most the protocol's limit.
        data: Vec<u8>,
    },
    /// Every write so far made durable.
    Flush,
}

/// What came of an [`Op`].
pub enum Outcome {
    /// The disk has this many sectors.
    Info {
        /// Sectors.
        sectors: u64,
    },
    /// The sectors read.
    Data(Vec<u8>),
    /// Done (write, flush).
    Done,
    /// The call failed.
    Failed(Failure),
}

/// Why a disk call failed.
#[derive(Clone, Copy, Debug)]
pub enum Failure {
    /// The M3-IPC call itself failed (timeout, unknown destination, ...).
    Ipc(ErrorCode),
    /// The disk server answered with an error.
    Disk(DiskError),
    /// The disk server's answer did not fit the request (or did not decode).
    BadReply,
    /// Asked off the job stack (a bug): nothing was sent.
    NotSuspendable,
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Ipc(c) => write!(f, "M3-IPC call failed: {}", c.as_str()),
            Failure::Disk(e) => write!(f, "disk server: {e}"),
            Failure::BadReply => f.write_str("the disk server's reply does not fit the request"),
            Failure::NotSuspendable => f.write_str("device used outside the fs job stack"),
        }
    }
}

/// The mailbox between the device (job side) and the client (task side).
#[derive(Default)]
pub struct Link {
    op: RefCell<Option<Op>>,
    outcome: RefCell<Option<Outcome>>,
    /// The last failure, for the console.
    pub last_failure: core::cell::Cell<Option<Failure>>,
}

impl Link {
    /// Whether the job is waiting for an op to be carried out.
    pub fn has_op(&self) -> bool {
        self.op.borrow().is_some()
    }
}

/// The block device the file system runs on: 4 KiB blocks over the disk server's sectors.
pub struct DiskDevice {
    link: Rc<Link>,
    suspender: Suspender,
    blocks: u64,
}

impl DiskDevice {
    /// A device of `sectors` disk sectors (whole 4 KiB blocks only) over `link`.
    pub fn new(link: Rc<Link>, suspender: Suspender, sectors: u64) -> DiskDevice {
        DiskDevice {
            link,
            suspender,
            blocks: sectors / PER_BLOCK,
        }
    }

    /// Asks the fs task for `op` and waits (suspended) for the outcome.
    fn call(&self, op: Op) -> Outcome {
        *self.link.op.borrow_mut() = Some(op);
        if !self.suspender.suspend() {
            self.link.op.borrow_mut().take();
            return Outcome::Failed(Failure::NotSuspendable);
        }
        self.link
            .outcome
            .borrow_mut()
            .take()
            .unwrap_or(Outcome::Failed(Failure::BadReply))
    }

    /// The disk's size in sectors (the `Info` call), from the job stack.
    pub fn probe(link: &Rc<Link>, suspender: &Suspender) -> Result<u64, Failure> {
        let dev = DiskDevice {
            link: link.clone(),
            suspender: suspender.clone(),
            blocks: 0,
        };
        match dev.call(Op::Info) {
            Outcome::Info { sectors } => Ok(sectors),
            Outcome::Failed(f) => Err(f),
            _ => Err(Failure::BadReply),
        }
    }

    fn check(&self, index: u64, len: usize) -> Result<u64, DeviceError> {
        if !len.is_multiple_of(FS_BLOCK) {
            return Err(DeviceError::BadLength {
                len,
                block_size: FS_BLOCK,
            });
        }
        let n = (len / FS_BLOCK) as u64;
        match index.checked_add(n) {
            Some(end) if end <= self.blocks => Ok(index * PER_BLOCK),
            _ => Err(DeviceError::OutOfRange {
                block: index,
                blocks: self.blocks,
            }),
        }
    }
}

/// The device error the file system sees for a failure.
fn device_error(f: Failure) -> DeviceError {
    match f {
        Failure::Ipc(c) => DeviceError::Other(0x1_0000 | c as u32),
        Failure::Disk(DiskError::ReadOnly) => DeviceError::ReadOnly,
        Failure::Disk(_) => DeviceError::Other(0x2_0000),
        Failure::BadReply | Failure::NotSuspendable => DeviceError::Gone,
    }
}

/// Bytes per request: the protocol's limit, in whole fs blocks.
const RUN_BYTES: usize = MAX_BLOCKS as usize * BLOCK_SIZE as usize;

impl BlockDevice for DiskDevice {
    fn block_size(&self) -> usize {
        FS_BLOCK
    }

    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn read_block(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.read_blocks(index, buf)
    }

    fn write_block(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.write_blocks(index, data)
    }

    fn flush(&mut self) -> Result<(), DeviceError> {
        match self.call(Op::Flush) {
            Outcome::Done => Ok(()),
            Outcome::Failed(f) => Err(device_error(f)),
            _ => Err(DeviceError::Gone),
        }
    }

    fn read_blocks(&mut self, index: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let mut sector = self.check(index, buf.len())?;
        for chunk in buf.chunks_mut(RUN_BYTES) {
            let count = (chunk.len() / BLOCK_SIZE as usize) as u32;
            match self.call(Op::Read { sector, count }) {
                Outcome::Data(d) if d.len() == chunk.len() => chunk.copy_from_slice(&d),
                Outcome::Failed(f) => return Err(device_error(f)),
                _ => return Err(DeviceError::Gone),
            }
            sector += u64::from(count);
        }
        Ok(())
    }

    fn write_blocks(&mut self, index: u64, data: &[u8]) -> Result<(), DeviceError> {
        let mut sector = self.check(index, data.len())?;
        for chunk in data.chunks(RUN_BYTES) {
            let count = (chunk.len() / BLOCK_SIZE as usize) as u64;
            match self.call(Op::Write {
                sector,
                data: chunk.to_vec(),
            }) {
                Outcome::Done => {}
                Outcome::Failed(f) => return Err(device_error(f)),
                _ => return Err(DeviceError::Gone),
            }
            sector += count;
        }
        Ok(())
    }
}

/// The async side: carries out the ops the device asks for, from endpoint `ep` to the disk
/// server at `disk`.
pub struct DiskClient {
    /// The IPC engine.
    pub ipc: IpcRef,
    /// The fs endpoint (the caller).
    pub ep: Endpoint,
    /// The disk server.
    pub disk: Endpoint,
    /// The buffer kept between calls (lent to the engine only during one).
    spare: Vec<u8>,
}

impl DiskClient {
    /// A client calling `disk` from `ep`.
    pub fn new(ipc: IpcRef, ep: Endpoint, disk: Endpoint) -> DiskClient {
        DiskClient {
            ipc,
            ep,
            disk,
            spare: Vec::new(),
        }
    }

    /// Carries out the op waiting in `link`, if any, and leaves its outcome there.
    pub async fn serve_link(&mut self, link: &Link) {
        let op = link.op.borrow_mut().take();
        if let Some(op) = op {
            let out = self.perform(op).await;
            if let Outcome::Failed(f) = &out {
                link.last_failure.set(Some(*f));
            }
            *link.outcome.borrow_mut() = Some(out);
        }
    }

    /// One call to the disk server.
    pub async fn perform(&mut self, op: Op) -> Outcome {
        match op {
            Op::Info => match self.call(DiskRequest::Info, None, INFO_TIMEOUT).await {
                Ok((Some(DiskReply::Info { block_size, blocks }), _))
                    if block_size == BLOCK_SIZE =>
                {
                    Outcome::Info { sectors: blocks }
                }
                Ok((Some(DiskReply::Error(e)), _)) => Outcome::Failed(Failure::Disk(e)),
                Ok(_) => Outcome::Failed(Failure::BadReply),
                Err(c) => Outcome::Failed(Failure::Ipc(c)),
            },
            Op::Flush => match self.call(DiskRequest::Flush, None, IO_TIMEOUT).await {
                Ok((Some(DiskReply::Done), _)) => Outcome::Done,
                Ok((Some(DiskReply::Error(e)), _)) => Outcome::Failed(Failure::Disk(e)),
                Ok(_) => Outcome::Failed(Failure::BadReply),
                Err(c) => Outcome::Failed(Failure::Ipc(c)),
            },
            Op::Read { sector, count } => {
                let mut buf = core::mem::take(&mut self.spare);
                buf.clear();
                buf.resize(count as usize * BLOCK_SIZE as usize, 0);
                let req = DiskRequest::Read {
                    block: sector,
                    count,
                    buf_offset: 0,
                };
                match self.call(req, Some(buf), IO_TIMEOUT).await {
                    Ok((Some(DiskReply::Done), Some(data)))
                        if data.len() == count as usize * BLOCK_SIZE as usize =>
                    {
                        Outcome::Data(data)
                    }
                    Ok((Some(DiskReply::Error(e)), b)) => {
                        self.keep(b);
                        Outcome::Failed(Failure::Disk(e))
                    }
                    Ok((_, b)) => {
                        self.keep(b);
                        Outcome::Failed(Failure::BadReply)
                    }
                    Err(c) => Outcome::Failed(Failure::Ipc(c)),
                }
            }
            Op::Write { sector, data } => {
                let count = (data.len() / BLOCK_SIZE as usize) as u32;
                let req = DiskRequest::Write {
                    block: sector,
                    count,
                    buf_offset: 0,
                };
                match self.call(req, Some(data), IO_TIMEOUT).await {
                    Ok((r, b)) => {
                        self.keep(b);
                        match r {
                            Some(DiskReply::Done) => Outcome::Done,
                            Some(DiskReply::Error(e)) => Outcome::Failed(Failure::Disk(e)),
                            _ => Outcome::Failed(Failure::BadReply),
                        }
                    }
                    Err(c) => Outcome::Failed(Failure::Ipc(c)),
                }
            }
        }
    }

    fn keep(&mut self, buf: Option<Vec<u8>>) {
        if let Some(b) = buf {
            if b.capacity() > self.spare.capacity() {
                self.spare = b;
            }
        }
    }

    /// `sendrec`s `req` with `buf` lent as the fs endpoint's vcopy buffer for the length of the
    /// call; the decoded reply (`None` if it does not decode) and the buffer taken back.
    async fn call(
        &mut self,
        req: DiskRequest,
        buf: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(Option<DiskReply>, Option<Vec<u8>>), ErrorCode> {
        let lent = buf.is_some();
        if let Some(b) = buf {
            self.ipc.borrow_mut().engine.set_buffer(self.ep, b)?;
        }
        let r = ipc::sendrec(&self.ipc, self.ep, self.disk, req.encode(), Some(timeout)).await;
        let back = if lent {
            self.ipc.borrow_mut().engine.take_buffer(self.ep)
        } else {
            None
        };
        let m = r?;
        Ok((DiskReply::decode(&m).ok(), back))
    }
}
