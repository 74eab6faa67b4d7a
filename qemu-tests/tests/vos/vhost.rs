//! The VOS on the node's proxy, its fabric NIC served either by a `-netdev stream` port or by the proxy's
//! vhost-user backend (the guest does not change): host↔guest sendrec and a 4 MiB vcopy both ways, and
//! guest↔guest sendrec and vcopy, each on both port kinds in one run, so that the printed ratios compare like
//! with like. Timings are of a shared 2-core machine: read them as ratios.

use super::*;
use dvs_instance::port::StreamPort;
use dvs_proxy::port::PortKind;
use dvs_proxy::{Announce, ClusterMap, DcInfo, NodeInfo, PortSpec, Proxy, ProxyConfig};

/// How the proxy serves a guest's fabric NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Stream,
    VhostUser,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::VhostUser => "vhost-user",
        }
    }

    /// The proxy's port and the machine's NIC backend on `path`.
    fn port(self, path: std::path::PathBuf) -> (PortKind, NicBackend) {
        match self {
            Kind::Stream => (
                PortKind::Stream { path: path.clone() },
                NicBackend::Stream { path },
            ),
            Kind::VhostUser => (
                PortKind::VhostUser { path: path.clone() },
                NicBackend::VhostUser { path },
            ),
        }
    }
}

/// A one-node proxy on its own runtime (the machines and the host engine drop first).
struct Node {
    proxy: Proxy,
    rt: tokio::runtime::Runtime,
}

impl Node {
    fn start() -> Node {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("proxy")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime for the proxy: {e}"));
        let cluster = ClusterMap {
            nodes: vec![NodeInfo {
                id: 1,
                proxy: ([127, 0, 0, 1], free_port()).into(),
                api: ([127, 0, 0, 1], free_port()).into(),
            }],
            dcs: vec![DcInfo {
                id: DC,
                name: "test".into(),
                nodes: vec![1],
                limit: Default::default(),
                quota: Default::default(),
            }],
        };
        let cfg = ProxyConfig::new(m3ipc_core::NodeId(1), cluster)
            .unwrap_or_else(|e| panic!("the proxy config: {e}"));
        let proxy = rt
            .block_on(Proxy::start(cfg))
            .unwrap_or_else(|e| panic!("the proxy starts: {e}"));
        Node { proxy, rt }
    }

    /// A port for an instance named `name` holding `eps`.
    fn add(&self, name: &str, eps: &[u32], mac: [u8; 6], kind: &PortKind) {
        let spec = PortSpec {
            name: name.into(),
            dc: DcId(DC),
            endpoints: eps.iter().map(|&e| Endpoint(e)).collect(),
            mac: Some(mac),
            gen: 1,
            announce: Announce::Now,
        };
        self.rt
            .block_on(self.proxy.add_port(spec, kind))
            .unwrap_or_else(|e| panic!("port {name} opens: {e}"));
    }

    /// The port counters of `name`, printed.
    fn port_counters(&self, name: &str) -> String {
        let s = self.proxy.stats();
        match s.ports.get(name) {
            Some(p) => format!("rx {} tx {} drops {}", p.rx.frames, p.tx.frames, p.drops),
            None => "gone".into(),
        }
    }

    fn bad_rings(&self) -> u64 {
        self.proxy
            .stats()
            .ports
            .values()
            .map(|p| p.drops.bad_ring)
            .sum()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.proxy.shutdown();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Host↔guest figures on one port kind: sendrec median, 4 MiB push and pull.
struct HostGuest {
    sendrec: Duration,
    push: Duration,
    pull: Duration,
}

fn host_guest(a: Accel, machine: MachineType, kind: Kind) -> HostGuest {
    let dir = TempDir::new().expect("scratch dir");
    let node = Node::start();
    let size = 4 << 20;
    let (pk, nic) = kind.port(dir.join("echo-fabric.sock"));
    node.add("echo", &[GUEST_EP], nic_mac(0), &pk);
    let host_path = dir.join("host.sock");
    node.add(
        "host",
        &[HOST_EP],
        HOST_MAC,
        &PortKind::Stream {
            path: host_path.clone(),
        },
    );
    let port = StreamPort::connect(&host_path, Duration::from_secs(5))
        .expect("the host engine connects to its proxy port");
    let mut host = EnginePort::new(port, DC, &[Endpoint(HOST_EP)], HOST_MAC)
        .expect("the host engine binds its endpoint");
    let cfg = config(&[GUEST_EP], &[Service::Echo], &[&format!("buf={size}")]);
    let mut spec = vos(&dir, "echo", machine, a, Kernel::Config(cfg));
    spec.memory_mib = 48;
    spec.nics.push(Nic {
        backend: nic,
        mac: nic_mac(0),
    });
    let mut vm = start(&spec);
    ready(&mut vm, a);
    let t = secs(a, 2);
    let mut times = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let mut m = Message::new(0x100 + i);
        m.set_u32(0, i);
        m.set_u64(1, 0xfeed_0000_0000 + u64::from(i));
        let t0 = Instant::now();
        let r = host
            .sendrec(Endpoint(HOST_EP), Endpoint(GUEST_EP), m, t)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: sendrec {i}: {e}\nproxy: {}\nconsole:\n{}",
                    kind.name(),
                    node.port_counters("echo"),
                    console(&vm)
                )
            });
        times.push(t0.elapsed());
        assert_eq!(
            (r.mtype, r.payload, r.source),
            (m.mtype, m.payload, Endpoint(GUEST_EP)),
            "{}: reply {i} differs",
            kind.name()
        );
    }
    let pattern = pattern(size, 0x5eed);
    host.engine
        .set_buffer(Endpoint(HOST_EP), pattern.clone())
        .expect("the host buffer takes 4 MiB");
    let vt = secs(a, 60);
    let push = VcopyRequest {
        src: Endpoint(HOST_EP),
        src_offset: 0,
        dst: Endpoint(GUEST_EP),
        dst_offset: 0,
        len: size as u64,
    };
    let t0 = Instant::now();
    let n = host.vcopy(Endpoint(HOST_EP), push, vt).unwrap_or_else(|e| {
        panic!(
            "{}: push: {e}\nproxy: {}\nconsole:\n{}",
            kind.name(),
            node.port_counters("echo"),
            console(&vm)
        )
    });
    let push_t = t0.elapsed();
    assert_eq!(n, size as u64);
    host.engine
        .set_buffer(Endpoint(HOST_EP), vec![0u8; size])
        .expect("the host buffer takes 4 MiB");
    let pull = VcopyRequest {
        src: Endpoint(GUEST_EP),
        dst: Endpoint(HOST_EP),
        ..push
    };
    let t0 = Instant::now();
    let n = host.vcopy(Endpoint(HOST_EP), pull, vt).unwrap_or_else(|e| {
        panic!(
            "{}: pull: {e}\nproxy: {}\nconsole:\n{}",
            kind.name(),
            node.port_counters("echo"),
            console(&vm)
        )
    });
    let pull_t = t0.elapsed();
    assert_eq!(n, size as u64);
    let back = host
        .engine
        .buffer(Endpoint(HOST_EP))
        .expect("the host buffer");
    assert!(
        back == &pattern[..],
        "{}: 4 MiB round trip differs at byte {:?}",
        kind.name(),
        first_difference(back, &pattern)
    );
    assert_eq!(node.bad_rings(), 0, "{}: no port was cut off", kind.name());
    eprintln!(
        "qemu-tests: {} port: echo {}",
        kind.name(),
        node.port_counters("echo")
    );
    drop(vm);
    HostGuest {
        sendrec: median(times),
        push: push_t,
        pull: pull_t,
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

#[test]
fn host_guest_sendrec_and_vcopy_on_stream_and_vhost_user_ports() {
    let _g = exclusive();
    let a = accel();
    let s = host_guest(a, MachineType::Microvm, Kind::Stream);
    let v = host_guest(a, MachineType::Microvm, Kind::VhostUser);
    print_host_guest("microvm", a, &s, &v);
}

/// The same on q35, where virtio-net is PCI with MSI-X: QEMU can hand the call eventfd to KVM as an irqfd
/// (virtio-mmio on microvm cannot, so there QEMU's main loop relays each interrupt).
#[test]
fn host_guest_sendrec_and_vcopy_on_both_port_kinds_q35() {
    let _g = exclusive();
    let a = accel();
    let s = host_guest(a, MachineType::Q35, Kind::Stream);
    let v = host_guest(a, MachineType::Q35, Kind::VhostUser);
    print_host_guest("q35", a, &s, &v);
}

fn print_host_guest(machine: &str, a: Accel, s: &HostGuest, v: &HostGuest) {
    eprintln!(
        "qemu-tests: {machine} host-guest sendrec median: stream {:?}, vhost-user {:?} (vhost-user/stream {:.2}); \
         4 MiB push: stream {:?}, vhost-user {:?} ({:.2}); pull: stream {:?}, vhost-user {:?} ({:.2}) ({})",
        s.sendrec,
        v.sendrec,
        ratio(v.sendrec, s.sendrec),
        s.push,
        v.push,
        ratio(v.push, s.push),
        s.pull,
        v.pull,
        ratio(v.pull, s.pull),
        a.name()
    );
}

/// Guest↔guest figures on one port kind: the client's sendrec median (ns) and its 1 MiB push and pull (µs).
fn guest_guest(a: Accel, kind: Kind) -> (u64, u64, u64) {
    let dir = TempDir::new().expect("scratch dir");
    let node = Node::start();
    let (spk, snic) = kind.port(dir.join("server-fabric.sock"));
    let (cpk, cnic) = kind.port(dir.join("client-fabric.sock"));
    node.add("server", &[20], nic_mac(0), &spk);
    node.add("client", &[10], nic_mac(1), &cpk);
    let server = config(&[20], &[Service::Echo], &["buf=1048576"]);
    let mut server = vos(
        &dir,
        "server",
        MachineType::Microvm,
        a,
        Kernel::Config(server),
    );
    server.memory_mib = 32;
    server.nics.push(Nic {
        backend: snic,
        mac: nic_mac(0),
    });
    let mut srv = start(&server);
    ready(&mut srv, a);
    let client = config(
        &[10],
        &[Service::IpcBench],
        &["peer=20", "n=1000", "vcopy=1048576"],
    );
    let mut client = vos(
        &dir,
        "client",
        MachineType::Microvm,
        a,
        Kernel::Config(client),
    );
    client.memory_mib = 32;
    client.nics.push(Nic {
        backend: cnic,
        mac: nic_mac(1),
    });
    let mut cli = start(&client);
    ready(&mut cli, a);
    let t = secs(a, 30);
    let (n, median, p99) = wait_report(&mut cli, t, "Sendrecs", |r| match r {
        Report::Sendrecs {
            n,
            median_ns,
            p99_ns,
            ..
        } => Some((*n, *median_ns, *p99_ns)),
        _ => None,
    });
    assert_eq!(n, 1000, "{}: client sendrecs", kind.name());
    let (bytes, push, pull) = wait_report(&mut cli, t, "Vcopy", |r| match r {
        Report::Vcopy {
            bytes,
            push_us,
            pull_us,
        } => Some((*bytes, *push_us, *pull_us)),
        _ => None,
    });
    assert_eq!(bytes, 1048576, "{}: client vcopy bytes", kind.name());
    assert_eq!(node.bad_rings(), 0, "{}: no port was cut off", kind.name());
    eprintln!(
        "qemu-tests: {} guest-guest: median {median} ns p99 {p99} ns; server {}, client {}",
        kind.name(),
        node.port_counters("server"),
        node.port_counters("client")
    );
    (median, push, pull)
}

#[test]
fn guest_to_guest_on_stream_and_vhost_user_ports() {
    let _g = exclusive();
    let a = accel();
    let s = guest_guest(a, Kind::Stream);
    let v = guest_guest(a, Kind::VhostUser);
    let r = |x: u64, y: u64| x as f64 / (y.max(1)) as f64;
    eprintln!(
        "qemu-tests: guest-guest sendrec median: stream {} ns, vhost-user {} ns (vhost-user/stream {:.2}); \
         1 MiB push: stream {} µs, vhost-user {} µs ({:.2}); pull: stream {} µs, vhost-user {} µs ({:.2}) ({})",
        s.0,
        v.0,
        r(v.0, s.0),
        s.1,
        v.1,
        r(v.1, s.1),
        s.2,
        v.2,
        r(v.2, s.2),
        a.name()
    );
}
