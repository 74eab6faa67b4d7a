//! A hostile vhost-user guest: a frontend double (standing in for QEMU) shares a memfd as guest memory, sets up
//! the transmit ring and posts a descriptor pointing outside that memory. The port must count the fault
//! (`bad_ring`) and cut the instance off, while the proxy keeps forwarding between other ports.

use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use dvs_proxy::port::{PortKind, VmEnd};
use dvs_proxy::{Announce, ClusterMap, DcInfo, NodeInfo, PortSpec, Proxy, ProxyConfig};
use m3ipc_core::{DcId, Endpoint, NodeId};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 1 << 20;

fn spec(name: &str, ep: u32, mac: [u8; 6]) -> PortSpec {
    PortSpec {
        name: name.into(),
        dc: DcId(1),
        endpoints: vec![Endpoint(ep)],
        mac: Some(mac),
        gen: 1,
        announce: Announce::Now,
    }
}

/// Shared guest memory: a memfd of `MEM` bytes mapped here.
struct Memfd {
    fd: std::fs::File,
    ptr: *mut u8,
}

impl Memfd {
    fn new() -> Memfd {
        use std::os::unix::io::FromRawFd;
        // SAFETY: plain syscalls; the results are checked; the mapping lives as long as `Memfd`.
        unsafe {
            let fd = libc::memfd_create(c"guest".as_ptr(), 0);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(libc::ftruncate(fd, MEM as i64), 0, "ftruncate");
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                MEM,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(ptr, libc::MAP_FAILED, "mmap");
            Memfd {
                fd: std::fs::File::from_raw_fd(fd),
                ptr: ptr.cast(),
            }
        }
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= MEM);
        // SAFETY: in bounds of the mapping, checked above.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) }
    }
}

impl Drop for Memfd {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe {
            libc::munmap(self.ptr.cast(), MEM);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_outside_guest_memory_cuts_the_port_off_and_others_go_on() {
    let dir = tempdir();
    let cluster = ClusterMap {
        nodes: vec![NodeInfo {
            id: 1,
            proxy: "127.0.0.1:0".parse().unwrap(),
            api: "127.0.0.1:0".parse().unwrap(),
        }],
        dcs: vec![DcInfo {
            id: 1,
            name: "t".into(),
            nodes: vec![1],
            limit: Default::default(),
            quota: Default::default(),
        }],
    };
    let proxy = Proxy::start(ProxyConfig::new(NodeId(1), cluster).unwrap())
        .await
        .unwrap();
    let vu = dir.join("vu.sock");
    proxy
        .add_port(
            spec("vu", 10, [2, 0, 0, 0, 0, 10]),
            &PortKind::VhostUser { path: vu.clone() },
        )
        .await
        .unwrap();
    let (ka, kb) = (
        PortKind::Stream {
            path: dir.join("a.sock"),
        },
        PortKind::Stream {
            path: dir.join("b.sock"),
        },
    );
    proxy
        .add_port(spec("a", 20, [2, 0, 0, 0, 0, 20]), &ka)
        .await
        .unwrap();
    proxy
        .add_port(spec("b", 30, [2, 0, 0, 0, 0, 30]), &kb)
        .await
        .unwrap();

    // The hostile frontend, on a blocking thread (the vhost crate's frontend is synchronous).
    let mem = Memfd::new();
    let base = mem.ptr as u64;
    let (desc, avail, used) = (0x1000usize, 0x2000usize, 0x3000usize);
    // Descriptor 0: 100 bytes at 1 GiB, far outside the 1 MiB of guest memory.
    let mut d = Vec::new();
    d.extend_from_slice(&(1u64 << 30).to_le_bytes());
    d.extend_from_slice(&100u32.to_le_bytes());
    d.extend_from_slice(&0u16.to_le_bytes());
    d.extend_from_slice(&0u16.to_le_bytes());
    mem.write(desc, &d);
    // Available ring: flags 0, idx 1, ring[0] = 0.
    mem.write(avail, &[0, 0, 1, 0, 0, 0]);
    let fd = mem.fd.as_raw_fd();
    let kick = EventFd::new(0).unwrap();
    let call = EventFd::new(0).unwrap();
    let vu2 = vu.clone();
    let (kick2, call2) = (kick.try_clone().unwrap(), call.try_clone().unwrap());
    let frontend = tokio::task::spawn_blocking(move || {
        let mut f = Frontend::connect(&vu2, 2).expect("the frontend connects");
        f.set_owner().unwrap();
        let features = f.get_features().unwrap();
        assert_ne!(features & (1 << 32), 0, "VERSION_1 offered");
        f.set_features((1 << 32) | (1 << 30)).unwrap();
        let proto = f.get_protocol_features().unwrap();
        f.set_protocol_features(proto).unwrap();
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: base,
            mmap_offset: 0,
            mmap_handle: fd,
        };
        f.set_mem_table(&[region]).unwrap();
        f.set_vring_num(1, 16).unwrap();
        f.set_vring_addr(
            1,
            &VringConfigData {
                queue_max_size: 16,
                queue_size: 16,
                flags: 0,
                desc_table_addr: base + desc as u64,
                used_ring_addr: base + used as u64,
                avail_ring_addr: base + avail as u64,
                log_addr: None,
            },
        )
        .unwrap();
        f.set_vring_base(1, 0).unwrap();
        f.set_vring_call(1, &call2).unwrap();
        f.set_vring_kick(1, &kick2).unwrap();
        f.set_vring_enable(1, true).unwrap();
        f
    })
    .await
    .unwrap();
    kick.write(1).unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = proxy.stats();
        if s.ports.get("vu").is_some_and(|p| p.drops.bad_ring == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no bad_ring counted: {:?}",
            s.ports.get("vu")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Kicking again changes nothing: the port is cut off and counted once.
    let _ = kick.write(1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(proxy.stats().ports["vu"].drops.bad_ring, 1);
    drop(frontend);

    // Other ports go on: a broadcast from a reaches b.
    let mut a = VmEnd::open(&ka).await.unwrap();
    let mut b = VmEnd::open(&kb).await.unwrap();
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 20]);
    frame.extend_from_slice(&[0x08, 0x06]);
    frame.resize(60, 0x5a);
    let mut buf = vec![0u8; 2048];
    let got = async {
        loop {
            a.send(&frame).await.unwrap();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), b.recv(&mut buf)).await
            {
                return n;
            }
        }
    };
    let n = tokio::time::timeout(Duration::from_secs(5), got)
        .await
        .expect("b receives a's broadcast");
    assert_eq!(&buf[..n], &frame[..]);
    proxy.shutdown();
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dvs-vhost-hostile-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
