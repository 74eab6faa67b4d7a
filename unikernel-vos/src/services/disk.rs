//! The disk server: the blocks of the instance's first virtio-blk device, served on endpoint
//! `storage.disk` with the protocol of `dvs_vos_proto::disk` (Info, Read, Write, Flush).
//!
//! One request at a time: receive from any endpoint → decode → check the block range against
//! the device and the transfer size against the per-request limit → move the data with vcopy
//! between the client's buffer and the server's staging buffer and do the block I/O → reply.
//! Callers that arrive meanwhile wait in the engine's rendezvous queue; none is refused. A
//! request that is malformed, out of range or fails is answered with `DiskReply::Error`, never a
//! panic. Notifications and plain sends (no one waits for a reply) are counted as errors and
//! dropped.
//!
//! The staging buffer (at most `MAX_BYTES`, kept between requests) is the server endpoint's
//! vcopy buffer only while a request's vcopy runs; otherwise the endpoint has no buffer, so
//! peers cannot read or write it. It is zeroed before it is lent for a write's pull, so a peer
//! never sees an earlier request's data in it.

use super::bump;
use crate::arch::time;
use crate::drivers::blk::{BlkError, Dir, Disk};
use crate::executor;
use crate::ipc::{self, IpcRef};
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::time::Duration;
use dvs_vos_proto::disk::{check_range, DiskError, DiskReply, DiskRequest, BLOCK_SIZE};
use m3ipc_core::{Endpoint, ErrorCode, VcopyRequest};

/// How long one vcopy with a client may take before the request fails (a client that vanished
/// must not hold the server for longer).
const VCOPY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a task waiting for the device asks to run again, µs (in case the loop would halt).
const IO_POLL_US: u64 = 20;

/// Counters of the disk server.
#[derive(Default)]
pub struct DiskStats {
    /// Reads carried out.
    pub reads: Cell<u64>,
    /// Writes carried out.
    pub writes: Cell<u64>,
    /// Flushes carried out.
    pub flushes: Cell<u64>,
    /// Requests answered with an error, and messages dropped (notifications, plain sends,
    /// replies that could not be delivered).
    pub errors: Cell<u64>,
}

/// Serves `disk` on endpoint `ep` forever.
pub async fn serve(
    ipc: IpcRef,
    ep: Endpoint,
    disk: Disk,
    stats: Rc<DiskStats>,
) -> Result<(), &'static str> {
    if disk.blocks == 0 {
        crate::println!("dvs: disk: the virtio-blk device has 0 blocks");
    }
    let mut server = Server {
        ipc,
        ep,
        disk,
        staging: Vec::new(),
    };
    loop {
        let msg = super::next_request(&server.ipc, ep, &stats.errors).await;
        let reply = match DiskRequest::decode(&msg) {
            Ok(req) => {
                let reply = server.handle(msg.source, req).await;
                if !matches!(reply, DiskReply::Error(_)) {
                    match req {
                        DiskRequest::Read { .. } => bump(&stats.reads),
                        DiskRequest::Write { .. } => bump(&stats.writes),
                        DiskRequest::Flush => bump(&stats.flushes),
                        DiskRequest::Info => {}
                    }
                }
                reply
            }
            Err(_) => DiskReply::Error(DiskError::Malformed),
        };
        if matches!(reply, DiskReply::Error(_)) {
            bump(&stats.errors);
        }
        if ipc::reply(&server.ipc, ep, msg.source, reply.encode()).is_err() {
            bump(&stats.errors);
        }
    }
}

/// The server's state between requests.
struct Server {
    ipc: IpcRef,
    ep: Endpoint,
    disk: Disk,
    /// The staging buffer (its storage is kept; its contents never outlive a request).
    staging: Vec<u8>,
}

impl Server {
    /// Carries out `req` from `client`; the reply.
    async fn handle(&mut self, client: Endpoint, req: DiskRequest) -> DiskReply {
        let r = match req {
            DiskRequest::Info => {
                return DiskReply::Info {
                    block_size: BLOCK_SIZE,
                    blocks: self.disk.blocks,
                }
            }
            DiskRequest::Flush if self.disk.read_only => Ok(()),
            DiskRequest::Flush => self.disk.flush().map_err(|_| DiskError::Io),
            DiskRequest::Read {
                block,
                count,
                buf_offset,
            } => self.read(client, block, count, buf_offset).await,
            DiskRequest::Write {
                block,
                count,
                buf_offset,
            } => self.write(client, block, count, buf_offset).await,
        };
        match r {
            Ok(()) => DiskReply::Done,
            Err(e) => DiskReply::Error(e),
        }
    }

    /// Checks a transfer: its length in bytes, with the client's buffer range not overflowing.
    fn check(&self, block: u64, count: u32, buf_offset: u64) -> Result<u64, DiskError> {
        let len = check_range(block, count, self.disk.blocks)?;
        if buf_offset.checked_add(len).is_none() {
            return Err(DiskError::Buffer {
                code: ErrorCode::BufferOutOfRange as u16,
            });
        }
        Ok(len)
    }

    /// The staging buffer, `len` zero bytes.
    fn take_staging(&mut self, len: u64) -> Result<Vec<u8>, DiskError> {
        let mut buf = core::mem::take(&mut self.staging);
        buf.clear();
        let n = len as usize;
        if buf.try_reserve_exact(n).is_err() {
            return Err(DiskError::NoMemory { bytes: len });
        }
        buf.resize(n, 0);
        Ok(buf)
    }

    async fn read(
        &mut self,
        client: Endpoint,
        block: u64,
        count: u32,
        buf_offset: u64,
    ) -> Result<(), DiskError> {
        let len = self.check(block, count, buf_offset)?;
        if len == 0 {
            return Ok(());
        }
        let buf = self.take_staging(len)?;
        let (r, buf) = self.io(Dir::Read, block, buf).await;
        if let Err(e) = r {
            self.staging = buf;
            return Err(e);
        }
        let push = VcopyRequest {
            src: self.ep,
            src_offset: 0,
            dst: client,
            dst_offset: buf_offset,
            len,
        };
        self.vcopy(buf, push).await
    }

    async fn write(
        &mut self,
        client: Endpoint,
        block: u64,
        count: u32,
        buf_offset: u64,
    ) -> Result<(), DiskError> {
        if self.disk.read_only {
            return Err(DiskError::ReadOnly);
        }
        let len = self.check(block, count, buf_offset)?;
        if len == 0 {
            return Ok(());
        }
        let buf = self.take_staging(len)?;
        let pull = VcopyRequest {
            src: client,
            src_offset: buf_offset,
            dst: self.ep,
            dst_offset: 0,
            len,
        };
        self.vcopy(buf, pull).await?;
        let buf = core::mem::take(&mut self.staging);
        let (r, buf) = self.io(Dir::Write, block, buf).await;
        self.staging = buf;
        r
    }

    /// Lends `buf` to the server endpoint for the copy `req`, then keeps it as the staging
    /// buffer again.
    async fn vcopy(&mut self, buf: Vec<u8>, req: VcopyRequest) -> Result<(), DiskError> {
        let len = req.len;
        let lent = self.ipc.borrow_mut().engine.set_buffer(self.ep, buf);
        let r = match lent {
            Ok(()) => ipc::vcopy(&self.ipc, self.ep, req, Some(VCOPY_TIMEOUT)).await,
            Err(e) => Err(e),
        };
        self.staging = self
            .ipc
            .borrow_mut()
            .engine
            .take_buffer(self.ep)
            .unwrap_or_default();
        match r {
            Ok(n) if n == len => Ok(()),
            Ok(_) => Err(DiskError::Buffer {
                code: ErrorCode::BufferOutOfRange as u16,
            }),
            Err(code) => Err(DiskError::Buffer { code: code as u16 }),
        }
    }

    /// Runs one block request to the end, yielding to the other tasks meanwhile.
    async fn io(&mut self, dir: Dir, block: u64, buf: Vec<u8>) -> (Result<(), DiskError>, Vec<u8>) {
        let mut op = match self.disk.submit(dir, block, buf) {
            Ok(op) => op,
            Err((e, buf)) => return (Err(blk_error(e)), buf),
        };
        loop {
            match self.disk.poll(op) {
                Ok((r, buf)) => return (r.map_err(blk_error), buf),
                Err(pending) => op = pending,
            }
            executor::wake_at(time::now_us() + IO_POLL_US);
            executor::yield_now().await;
        }
    }
}

fn blk_error(e: BlkError) -> DiskError {
    match e {
        // Neither happens: one request at a time, lengths checked; report them as I/O errors.
        BlkError::BadLength | BlkError::QueueFull | BlkError::Io => DiskError::Io,
    }
}
