//! The disk server (`services=[disk]`) over a virtio-blk device backed by a sparse raw image,
//! driven from the host engine with the `dvs_vos_proto::disk` protocol: bulk data only through
//! vcopy between the client's buffer and the server.

use super::*;
use dvs_instance::Drive;
use dvs_vos_proto::disk::{
    DiskError, DiskReply, DiskRequest, BLOCK_SIZE, MAX_BLOCKS, MAX_BYTES, REQUEST,
};
use m3ipc_core::ErrorCode;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

const DISK_EP: u32 = 20;
const CLIENT: Endpoint = Endpoint(HOST_EP);
const CLIENT2: Endpoint = Endpoint(HOST_EP + 1);
const SERVER: Endpoint = Endpoint(DISK_EP);
const IMAGE_MIB: u64 = 16;
const BLOCKS: u64 = IMAGE_MIB * 1024 * 1024 / BLOCK_SIZE as u64;
const BS: usize = BLOCK_SIZE as usize;

/// A disk guest on a dgram fabric NIC, the host engine (two client endpoints) on its other end,
/// and the image file.
struct DiskVm {
    vm: Machine,
    host: EnginePort<DgramPort>,
    image: PathBuf,
}

/// Boots the disk server on endpoint 20 over the image `image` (read-only if `ro`).
fn boot_disk(dir: &TempDir, a: Accel, machine: MachineType, image: PathBuf, ro: bool) -> DiskVm {
    let (guest_sock, host_sock) = (dir.join("guest.sock"), dir.join("host.sock"));
    let port =
        DgramPort::bind(&host_sock, &guest_sock).expect("the host end of the fabric NIC binds");
    let host = EnginePort::new(port, DC, &[CLIENT, CLIENT2], HOST_MAC)
        .expect("the host engine binds its endpoints");
    let cfg = config(
        &[DISK_EP],
        &[Service::Disk],
        &[&format!("disk_ep={DISK_EP}")],
    );
    let mut spec = vos(dir, "disk", machine, a, Kernel::Config(cfg));
    spec.memory_mib = 32;
    spec.nics.push(dgram_nic(0, guest_sock, host_sock));
    spec.drives.push(Drive {
        path: image.clone(),
        read_only: ro,
    });
    let mut vm = start(&spec);
    let r = ready(&mut vm, a);
    assert_eq!(
        (&r.endpoints[..], &r.services[..]),
        (&[DISK_EP][..], &[Service::Disk][..]),
        "Ready record of the disk guest: {r:?}"
    );
    DiskVm { vm, host, image }
}

impl DiskVm {
    /// One request from `client`: the decoded reply.
    fn call(&mut self, client: Endpoint, req: DiskRequest, t: Duration) -> DiskReply {
        let m = self
            .host
            .sendrec(client, SERVER, req.encode(), t)
            .unwrap_or_else(|e| panic!("{req:?}: {e}\nconsole:\n{}", console(&self.vm)));
        DiskReply::decode(&m).unwrap_or_else(|e| panic!("{req:?}: reply {m:?} undecodable: {e}"))
    }

    /// One request that must be answered `Done`.
    fn done(&mut self, client: Endpoint, req: DiskRequest, t: Duration) {
        let r = self.call(client, req, t);
        assert_eq!(r, DiskReply::Done, "{req:?}");
    }

    fn set_buffer(&mut self, ep: Endpoint, buf: Vec<u8>) {
        self.host
            .engine
            .set_buffer(ep, buf)
            .expect("the host endpoint takes a buffer");
    }

    fn buffer(&self, ep: Endpoint) -> &[u8] {
        self.host
            .engine
            .buffer(ep)
            .expect("the host endpoint's buffer")
    }
}

fn write(block: u64, count: u32, buf_offset: u64) -> DiskRequest {
    DiskRequest::Write {
        block,
        count,
        buf_offset,
    }
}

fn read(block: u64, count: u32, buf_offset: u64) -> DiskRequest {
    DiskRequest::Read {
        block,
        count,
        buf_offset,
    }
}

/// Info, a seeded 64-block write, flush, byte-exact read-back, requests out of range, too large,
/// beyond the client's buffer and malformed (each answered with an error, the guest serving
/// on), a second client interleaving with the first (both queued and answered), the counters,
/// and after the VM is gone, the pattern in the host file at the right offset.
#[test]
fn disk_server_reads_writes_flushes_and_refuses_bad_requests() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let image = dir.join("disk.img");
    sparse_image(&image, IMAGE_MIB);
    let mut d = boot_disk(&dir, a, MachineType::Microvm, image, false);
    let t = secs(a, 5);

    assert_eq!(
        d.call(CLIENT, DiskRequest::Info, t),
        DiskReply::Info {
            block_size: BLOCK_SIZE,
            blocks: BLOCKS
        }
    );

    // 64 blocks of a seeded pattern, from offset 4096 of the client's buffer, onto block 1000.
    let (block, count, off) = (1000u64, 64u32, 4096usize);
    let len = count as usize * BS;
    let data = pattern(len, 0x5eed);
    let mut buf = vec![0u8; off + len + 512];
    buf[off..off + len].copy_from_slice(&data);
    d.set_buffer(CLIENT, buf);
    d.done(CLIENT, write(block, count, off as u64), t);
    d.done(CLIENT, DiskRequest::Flush, t);
    d.set_buffer(CLIENT, vec![0xee; len + 100]);
    d.done(CLIENT, read(block, count, 100), t);
    let back = &d.buffer(CLIENT)[100..];
    assert!(
        back == &data[..],
        "read-back differs at byte {:?}",
        first_difference(back, &data)
    );
    assert!(
        d.buffer(CLIENT)[..100].iter().all(|&b| b == 0xee),
        "the read wrote outside its range"
    );

    // Refusals, each with its reason; the guest keeps serving.
    let oob = d.call(CLIENT, read(BLOCKS - 10, 64, 0), t);
    assert_eq!(
        oob,
        DiskReply::Error(DiskError::OutOfRange {
            block: BLOCKS - 10,
            count: 64,
            blocks: BLOCKS
        })
    );
    let wrap = d.call(CLIENT, write(u64::MAX, 2, 0), t);
    assert!(
        matches!(wrap, DiskReply::Error(DiskError::OutOfRange { .. })),
        "{wrap:?}"
    );
    let big = d.call(CLIENT, read(0, MAX_BLOCKS + 1, 0), t);
    assert_eq!(
        big,
        DiskReply::Error(DiskError::TooLarge {
            count: MAX_BLOCKS + 1,
            max: MAX_BLOCKS
        })
    );
    // The client's buffer (len + 100 bytes) does not hold 64 blocks at offset 200.
    for req in [
        read(0, 64, 200),
        write(0, 64, 200),
        read(0, 1, u64::MAX - 10),
    ] {
        let r = d.call(CLIENT, req, t);
        assert_eq!(
            r,
            DiskReply::Error(DiskError::Buffer {
                code: ErrorCode::BufferOutOfRange as u16
            }),
            "{req:?}"
        );
    }
    let mut junk = Message::new(REQUEST);
    junk.payload = [0xff; 56];
    let mut trailing = DiskRequest::Flush.encode();
    trailing.payload[40] = 1;
    for (what, m) in [
        ("unknown variant", junk),
        ("trailing bytes", trailing),
        ("wrong type", Message::new(0x1234)),
    ] {
        let r = d
            .host
            .sendrec(CLIENT, SERVER, m, t)
            .unwrap_or_else(|e| panic!("{what}: {e}\nconsole:\n{}", console(&d.vm)));
        assert_eq!(
            DiskReply::decode(&r),
            Ok(DiskReply::Error(DiskError::Malformed)),
            "{what}"
        );
    }
    // A plain send and a notification: taken and dropped, nobody waits for an answer.
    let now = d.host.now();
    d.host
        .engine
        .send(now, CLIENT, SERVER, DiskRequest::Flush.encode(), Some(t))
        .expect("send starts");
    match d.host.wait_done(CLIENT, t) {
        Ok(Completion::Sent) => {}
        other => panic!("send: expected Sent, got {other:?}"),
    }
    let now = d.host.now();
    d.host
        .engine
        .notify(now, CLIENT, SERVER)
        .expect("notify starts");
    // The block written above is still there: the refused write at block 0 wrote nothing.
    d.set_buffer(CLIENT, vec![0; len]);
    d.done(CLIENT, read(block, count, 0), t);
    assert!(d.buffer(CLIENT) == &data[..], "data changed after refusals");

    // Two clients at once: both calls are queued at the server and both answered.
    let data2 = pattern(len, 0xbeef);
    d.set_buffer(CLIENT, pattern(len, 1));
    d.set_buffer(CLIENT2, data2.clone());
    let now = d.host.now();
    d.host
        .engine
        .sendrec(now, CLIENT, SERVER, write(2000, count, 0).encode(), Some(t))
        .expect("client 1 call starts");
    d.host
        .engine
        .sendrec(
            now,
            CLIENT2,
            SERVER,
            write(3000, count, 0).encode(),
            Some(t),
        )
        .expect("client 2 call starts");
    for ep in [CLIENT, CLIENT2] {
        match d.host.wait_done(ep, t + t) {
            Ok(Completion::Replied(m)) => {
                assert_eq!(
                    DiskReply::decode(&m),
                    Ok(DiskReply::Done),
                    "client {}",
                    ep.0
                )
            }
            other => panic!("client {}: {other:?}\nconsole:\n{}", ep.0, console(&d.vm)),
        }
    }
    // Interleaved reads: each gets its own blocks.
    d.set_buffer(CLIENT, vec![0; len]);
    d.set_buffer(CLIENT2, vec![0; len]);
    let now = d.host.now();
    for (ep, b) in [(CLIENT, 3000), (CLIENT2, 2000)] {
        d.host
            .engine
            .sendrec(now, ep, SERVER, read(b, count, 0).encode(), Some(t))
            .expect("read call starts");
    }
    for ep in [CLIENT, CLIENT2] {
        match d.host.wait_done(ep, t + t) {
            Ok(Completion::Replied(m)) => {
                assert_eq!(
                    DiskReply::decode(&m),
                    Ok(DiskReply::Done),
                    "client {}",
                    ep.0
                )
            }
            other => panic!("client {}: {other:?}", ep.0),
        }
    }
    assert!(d.buffer(CLIENT) == &data2[..], "client 1 read block 3000");
    assert!(
        d.buffer(CLIENT2) == &pattern(len, 1)[..],
        "client 2 read block 2000"
    );
    d.done(CLIENT, DiskRequest::Flush, t);

    let c = wait_counters(
        &mut d.vm,
        secs(a, 5),
        "with the disk requests counted",
        |c| c.disk_reads >= 4 && c.disk_writes >= 3 && c.disk_flushes >= 2 && c.disk_errors >= 11,
    );
    assert_eq!(
        (c.disk_reads, c.disk_writes, c.disk_flushes, c.disk_errors),
        (4, 3, 2, 11),
        "disk counters (errors: 6 refusals, 3 malformed, the plain send and the notification \
         dropped): {c:?}"
    );

    // The VM is killed (flushed writes survive that): the host file holds the blocks.
    let DiskVm { vm, host, image } = d;
    drop(vm);
    drop(host);
    let f = std::fs::File::open(&image).expect("the image is still there");
    let mut got = vec![0u8; len];
    for (b, want) in [(block, &data), (3000, &data2)] {
        f.read_exact_at(&mut got, b * BS as u64)
            .expect("read the image");
        assert!(
            got == want[..],
            "host file at block {b} differs at byte {:?}",
            first_difference(&got, want)
        );
    }
    let meta = f.metadata().expect("image metadata");
    assert_eq!(meta.len(), IMAGE_MIB << 20, "the image kept its size");
}

/// Whole 256 KiB requests: 4 MiB written, flushed and read back byte-exact; prints the
/// throughput of each direction.
#[test]
fn disk_server_moves_4_mib_in_256_kib_requests() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let image = dir.join("disk.img");
    sparse_image(&image, IMAGE_MIB);
    let mut d = boot_disk(&dir, a, MachineType::Microvm, image, false);
    let t = secs(a, 10);
    let total = 4usize << 20;
    let per = MAX_BYTES as usize;
    let data = pattern(total, 42);
    d.set_buffer(CLIENT, data.clone());
    let start = Instant::now();
    for i in 0..total / per {
        let req = write((i * per / BS) as u64 + 8, MAX_BLOCKS, (i * per) as u64);
        d.done(CLIENT, req, t);
    }
    let wrote = start.elapsed();
    d.done(CLIENT, DiskRequest::Flush, t);
    let flushed = start.elapsed();
    d.set_buffer(CLIENT, vec![0; total]);
    let start = Instant::now();
    for i in 0..total / per {
        d.done(
            CLIENT,
            read((i * per / BS) as u64 + 8, MAX_BLOCKS, (i * per) as u64),
            t,
        );
    }
    let read_t = start.elapsed();
    let back = d.buffer(CLIENT);
    assert!(
        back == &data[..],
        "4 MiB read-back differs at byte {:?}",
        first_difference(back, &data)
    );
    let mibs = |dt: Duration| 4.0 / dt.as_secs_f64();
    eprintln!(
        "disk throughput ({}): write {:.1} MiB/s ({:?}), write+flush {:.1} MiB/s, read {:.1} MiB/s ({:?})",
        a.name(),
        mibs(wrote),
        wrote,
        mibs(flushed),
        mibs(read_t),
        read_t
    );
}

/// The PCI transport (q35): Info, write, flush, read back.
#[test]
fn disk_server_on_q35() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let image = dir.join("disk.img");
    sparse_image(&image, IMAGE_MIB);
    let mut d = boot_disk(&dir, a, MachineType::Q35, image, false);
    let t = secs(a, 5);
    assert_eq!(
        d.call(CLIENT, DiskRequest::Info, t),
        DiskReply::Info {
            block_size: BLOCK_SIZE,
            blocks: BLOCKS
        }
    );
    let data = pattern(64 * BS, 7);
    d.set_buffer(CLIENT, data.clone());
    d.done(CLIENT, write(BLOCKS - 64, 64, 0), t);
    d.done(CLIENT, DiskRequest::Flush, t);
    d.set_buffer(CLIENT, vec![0; 64 * BS]);
    d.done(CLIENT, read(BLOCKS - 64, 64, 0), t);
    assert!(d.buffer(CLIENT) == &data[..], "q35 read-back differs");
}

/// A read-only drive: what the host put in the image reads back; writes are refused.
#[test]
fn disk_server_on_a_read_only_drive() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let image = dir.join("ro.img");
    let data = pattern(8 * BS, 99);
    sparse_image(&image, 1)
        .write_all_at(&data, 5 * BS as u64)
        .unwrap_or_else(|e| panic!("fill image {}: {e}", image.display()));
    let mut d = boot_disk(&dir, a, MachineType::Microvm, image, true);
    let t = secs(a, 5);
    d.set_buffer(CLIENT, vec![0; 8 * BS]);
    d.done(CLIENT, read(5, 8, 0), t);
    assert!(d.buffer(CLIENT) == &data[..], "the host's blocks read back");
    assert_eq!(
        d.call(CLIENT, write(5, 8, 0), t),
        DiskReply::Error(DiskError::ReadOnly)
    );
    d.done(CLIENT, DiskRequest::Flush, t);
}

/// `services=[disk]` without a virtio-blk device: a Fatal record that says so.
#[test]
fn disk_service_without_a_drive_is_fatal() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new().expect("scratch dir");
    let cfg = config(
        &[DISK_EP],
        &[Service::Disk],
        &[&format!("disk_ep={DISK_EP}")],
    );
    let spec = vos(&dir, "nodisk", MachineType::Microvm, a, Kernel::Config(cfg));
    let mut vm = start(&spec);
    match Machine::block_on(vm.ready(secs(a, 10))) {
        Err(ReadyError::Fatal(reason)) => assert!(
            reason.contains("service disk needs a virtio-blk device"),
            "Fatal reason: '{reason}'"
        ),
        other => panic!(
            "expected a Fatal record, got {other:?}\nconsole:\n{}",
            console(&vm)
        ),
    }
    let exit = wait_exit(&mut vm, secs(a, 10)).expect("the guest exits");
    assert_eq!(exit, Exit::Code(3), "exit status (Fault)");
}
