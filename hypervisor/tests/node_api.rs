//! One node in-process with the process backend: the API's happy path and its errors, as the CLI sees them.
//!
//! The machines are this test binary itself (`machine_double`, run by the node as its `process_program`),
//! acting in the role its instance's name starts with: `echo` (an M3-IPC echo server), `caller` (sendrecs to
//! `peer`, then a report), `liar` (prints `dvs: ready` on its console, never sends a Ready record), `fatal`
//! (a Fatal record, then exit 1). They are role doubles for the daemon's API, not stand-ins for the VOS:
//! the VOS itself is tested under QEMU in qemu-tests.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use dvs_hypervisor::auth::Credentials;
use dvs_hypervisor::client::{ClientError, NodeClient};
use dvs_hypervisor::config::{Accel, BackendKind, NetdevKind, NodeConfig};
use dvs_hypervisor::images::{sha256_hex, Manifest};
use dvs_hypervisor::instances::{InstanceSpec, InstanceView, RestartPolicy, RunRequest, State};
use dvs_hypervisor::volumes::{ByteSize, VolumeRequest, VolumeView};
use dvs_instance::port::{EnginePort, StreamPort};
use dvs_instance::{NicBackend, VmSpec, SPEC_ENV};
use dvs_proxy::{ClusterMap, DcInfo, NodeInfo};
use dvs_vos_abi::control::{Counters, Ready, Report, CONTROL_VERSION};
use dvs_vos_abi::ControlRecord;
use m3ipc_core::engine::{Completion, Event};
use m3ipc_core::{Endpoint, Message};

/// The arguments that make this binary run only `machine_double`.
const DOUBLE_ARGS: [&str; 4] = [
    "--exact",
    "machine_double",
    "--nocapture",
    "--test-threads=1",
];

/// This binary as a machine, when the node runs it; a no-op as a test.
#[test]
fn machine_double() {
    let Ok(json) = std::env::var(SPEC_ENV) else {
        return;
    };
    let spec: VmSpec = serde_json::from_str(&json).expect("DVS_VM_SPEC decodes");
    let cfg = spec.boot_config().expect("a boot configuration").clone();
    let mut ctl = UnixStream::connect(spec.control.as_ref().expect("a control socket")).unwrap();
    let mut send = |r: ControlRecord| ctl.write_all(&r.to_frame()).unwrap();
    let eps: Vec<Endpoint> = cfg.endpoints.iter().map(|&e| Endpoint(e)).collect();
    let ready = ControlRecord::Ready(Ready {
        version: CONTROL_VERSION,
        dc: cfg.dc,
        endpoints: cfg.endpoints.clone(),
        services: cfg.services.clone(),
        macs: spec.nics.iter().map(|n| n.mac).collect(),
        tsc_mhz: 0,
        init_us: 1,
    });
    let port = || {
        let NicBackend::Stream { path } = &spec.nics[0].backend else {
            panic!("the node gives a stream NIC");
        };
        let p = StreamPort::connect(path, Duration::from_secs(5)).unwrap();
        EnginePort::with_incarnation(p, cfg.dc, cfg.incarnation, &eps, spec.nics[0].mac).unwrap()
    };
    let role = spec.name.split('-').next().unwrap_or_default().to_string();
    println!("double: {role} for {}", spec.name);
    match role.as_str() {
        "echo" => {
            let mut ep = port();
            let me = eps[0];
            let now = ep.now();
            ep.engine.receive(now, me, Endpoint::ANY, None).unwrap();
            send(ready);
            loop {
                ep.poll(Duration::from_millis(100)).unwrap();
                while let Some(ev) = ep.next_event() {
                    if let Event::Done {
                        result: Ok(Completion::Received { msg, needs_reply }),
                        ..
                    } = ev
                    {
                        let now = ep.now();
                        if needs_reply {
                            let _ = ep.engine.reply(now, me, msg.source, msg);
                        }
                        ep.engine.receive(now, me, Endpoint::ANY, None).unwrap();
                    }
                }
            }
        }
        "caller" => {
            let mut ep = port();
            send(ready);
            let peer = Endpoint(cfg.bench.peer.expect("peer="));
            let t0 = Instant::now();
            let mut lat = Vec::new();
            for i in 0..cfg.bench.sendrecs {
                let t = Instant::now();
                let r = ep
                    .sendrec(eps[0], peer, Message::new(i), Duration::from_secs(5))
                    .unwrap();
                assert_eq!(r.mtype, i);
                lat.push(t.elapsed().as_nanos() as u64);
            }
            lat.sort_unstable();
            let n = cfg.bench.sendrecs;
            send(ControlRecord::Report(Report::Sendrecs {
                n,
                median_ns: lat[lat.len() / 2],
                p99_ns: lat[lat.len() * 99 / 100],
                ops_per_s: (u128::from(n) * 1_000_000_000 / t0.elapsed().as_nanos().max(1)) as u64,
            }));
            loop {
                ep.poll(Duration::from_secs(1)).unwrap();
            }
        }
        "liar" => {
            println!("dvs: ready dc={} ep={:?}", cfg.dc, cfg.endpoints);
            std::io::stdout().flush().unwrap();
            // Said after the console line: a test that sees these counters has the line in the log too.
            send(ControlRecord::Counters(Counters {
                frames_in: 1,
                ..Counters::default()
            }));
            std::thread::sleep(Duration::from_secs(600));
        }
        "disk" => {
            // The node attached the instance's volumes as drives: count this boot in the first byte of the
            // first one (what a guest's write looks like to the host).
            let drive = spec.drives.first().expect("DVS_VM_SPEC lists a drive");
            assert!(!drive.read_only);
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&drive.path)
                .unwrap();
            let mut b = [0u8; 1];
            f.read_exact(&mut b).unwrap();
            b[0] += 1;
            f.seek(SeekFrom::Start(0)).unwrap();
            f.write_all(&b).unwrap();
            f.sync_all().unwrap();
            println!(
                "double: disk: boot {} written to {}",
                b[0],
                drive.path.display()
            );
            std::io::stdout().flush().unwrap();
            send(ready);
            std::thread::sleep(Duration::from_secs(600));
        }
        "fatal" => {
            send(ControlRecord::Fatal {
                reason: "bind endpoint 40: Busy".into(),
            });
            std::process::exit(1);
        }
        other => panic!("no role '{other}'"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spec(name: &str, dc: u16, eps: &[u32], svc: &[&str], args: &[&str]) -> InstanceSpec {
    let mut s = InstanceSpec::new(name, "vos", dc);
    s.endpoints = eps.to_vec();
    s.services = svc.iter().map(|s| s.to_string()).collect();
    s.args = args.iter().map(|s| s.to_string()).collect();
    s.process_args = DOUBLE_ARGS.iter().map(|s| s.to_string()).collect();
    s
}

fn run(s: InstanceSpec) -> RunRequest {
    RunRequest {
        spec: s,
        takeover_gen: None,
    }
}

fn code(e: ClientError) -> String {
    e.code().unwrap_or("none").to_string()
}

async fn wait(
    c: &NodeClient,
    name: &str,
    what: &str,
    pred: impl Fn(&InstanceView) -> bool,
) -> InstanceView {
    let (v, ok) = c
        .wait_instance(name, Duration::from_secs(20), pred)
        .await
        .unwrap();
    assert!(ok, "{name}: expected {what}, got {v:#?}");
    v
}

/// A cluster of one node (API and proxy on free ports) with DC 1 "one" on it and DC 2 on no node.
fn one_node_cluster() -> ClusterMap {
    ClusterMap {
        nodes: vec![NodeInfo {
            id: 1,
            proxy: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            api: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        }],
        dcs: vec![
            DcInfo {
                id: 1,
                name: "one".into(),
                nodes: vec![1],
                limit: Default::default(),
                quota: Default::default(),
            },
            DcInfo {
                id: 2,
                name: "elsewhere".into(),
                nodes: vec![],
                limit: Default::default(),
                quota: Default::default(),
            },
        ],
    }
}

/// Node 1 with the process backend, this binary as its machines, its state in `dir`.
fn node_config(dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        node: 1,
        cluster: dir.join("cluster.toml"),
        data_dir: dir.to_path_buf(),
        backend: BackendKind::Process,
        netdev: NetdevKind::Stream,
        vm_port: Default::default(),
        accel: Accel::Auto,
        qemu: "qemu-system-x86_64".into(),
        process_program: Some(std::env::current_exe().unwrap()),
        api_listen: None,
        api_ca: None,
        api_tls: None,
        max_image: ByteSize(1 << 20),
        max_volume: ByteSize(256 << 20),
        tls: None,
        confine: Default::default(),
        confine_uid_base: 800_000,
        etcd: None,
    }
}

/// A node daemon running in this process.
struct TestNode {
    /// An admin client (the node's own `<data_dir>/api/admin.toml`).
    c: NodeClient,
    /// The node's credential files: `admin.toml`, `read-only.toml`.
    creds_dir: std::path::PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestNode {
    /// Starts the daemon and waits until its API answers. A restart in the same process may find the last
    /// daemon's peer listener not closed yet (the proxy's tasks are aborted, not joined): it tries again then.
    async fn start(cfg: NodeConfig, cluster: ClusterMap) -> TestNode {
        let creds = cfg.data_dir.join("api/admin.toml");
        TestNode::start_with(cfg, cluster, creds).await
    }

    /// Like [`TestNode::start`], its client using the credential file `creds` (when the node does not
    /// write its own).
    async fn start_with(
        cfg: NodeConfig,
        cluster: ClusterMap,
        creds: std::path::PathBuf,
    ) -> TestNode {
        // Its API address: its entry in the cluster file, else (a node joining through etcd) its etcd.api.
        let addr = cluster
            .node(m3ipc_core::NodeId(cfg.node))
            .map(|n| n.api)
            .or(cfg.etcd.as_ref().and_then(|e| e.api))
            .expect("the node's API address")
            .to_string();
        let creds_dir = cfg.data_dir.join("api");
        'attempt: for _ in 0..40 {
            let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(dvs_hypervisor::daemon::serve(
                cfg.clone(),
                cluster.clone(),
                async move {
                    let _ = stop_rx.await;
                },
            ));
            for _ in 0..200 {
                // The node writes its credentials before it listens.
                if let Ok(creds) = Credentials::load(&creds) {
                    let c = NodeClient::with_credentials(&addr, &creds);
                    if c.status().await.is_ok() {
                        return TestNode {
                            c,
                            creds_dir,
                            stop,
                            task,
                        };
                    }
                }
                if task.is_finished() {
                    match task.await {
                        Ok(Err(e)) if format!("{e:#}").contains("Address already in use") => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue 'attempt;
                        }
                        r => panic!("the node did not start: {r:?}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the node's API at {addr} does not answer");
        }
        panic!("the node's ports stayed in use");
    }

    /// Shuts the daemon down (its machines die, its instances stay recorded).
    async fn shutdown(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Pushes the image `vos` (a minimal ELF that the role doubles ignore).
async fn push_vos(c: &NodeClient) -> String {
    let kernel = dvs_hypervisor::validate::minimal_elf(b"role doubles ignore it");
    let m = Manifest {
        name: "vos".into(),
        version: "1".into(),
        sha256: sha256_hex(&kernel),
        memory: 16,
        services: vec![],
    };
    c.push_image(&m, kernel.into()).await.unwrap();
    m.sha256
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_with_role_doubles() {
    let dir = std::env::temp_dir().join(format!("dvs-node-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let node = TestNode::start(node_config(&dir), one_node_cluster()).await;
    let c = node.c.clone();
    let status = c.status().await.unwrap();
    assert!(status.backend.starts_with("process ("), "{status:?}");

    // An image: refused when the bytes do not match, stored and verified when they do.
    let kernel = dvs_hypervisor::validate::minimal_elf(b"role doubles ignore it");
    let sha = sha256_hex(&kernel);
    let mut m = Manifest {
        name: "vos".into(),
        version: "1".into(),
        sha256: "0".repeat(64),
        memory: 16,
        services: vec![],
    };
    assert_eq!(
        code(c.push_image(&m, kernel.clone().into()).await.unwrap_err()),
        "image"
    );
    m.sha256 = sha.clone();
    c.push_image(&m, kernel.into()).await.unwrap();
    assert!(c.image("vos").await.unwrap().verified);

    // An instance is starting until its Ready record, then running; its view carries what the guest said.
    let v = c
        .run(&run(spec("echo", 1, &[20], &["echo"], &[])))
        .await
        .unwrap();
    assert_eq!(v.state, State::Starting);
    let v = wait(&c, "echo", "running", |v| v.state == State::Running).await;
    assert!(v.cmdline.starts_with("dvs.cfg="), "{}", v.cmdline);
    assert_eq!(v.guest.ready.as_ref().unwrap().endpoints, vec![20]);
    assert_eq!(v.boot_config.as_ref().unwrap().endpoints, vec![20]);
    assert!(v.pid.is_some());

    // A view that does not change is answered at the timeout, as it is.
    let t0 = Instant::now();
    let same = c
        .instance_after("echo", v.rev, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(same.rev, v.rev);
    assert!(t0.elapsed() >= Duration::from_millis(190));

    // The errors a user meets come back with their codes and say what is wrong.
    let taken = c
        .run(&run(spec("echo2", 1, &[20], &["echo"], &[])))
        .await
        .unwrap_err();
    assert_eq!(code(taken), "endpoint_taken");
    for (s, want) in [
        (spec("echo", 1, &[21], &["echo"], &[]), "name_taken"),
        (
            {
                let mut s = spec("x", 1, &[22], &["echo"], &[]);
                s.image = "nope".into();
                s
            },
            "image",
        ),
        (spec("x", 2, &[22], &["echo"], &[]), "dc"),
        (spec("x", 9, &[22], &["echo"], &[]), "dc"),
        (spec("Bad/Name", 1, &[22], &["echo"], &[]), "invalid"),
    ] {
        assert_eq!(code(c.run(&run(s)).await.unwrap_err()), want);
    }
    // Bad settings and services are refused before anything boots, naming the value.
    for (s, want) in [
        (
            spec("x", 1, &[22], &["echo"], &["bogus=1"]),
            "unknown setting 'bogus'",
        ),
        (spec("x", 1, &[22], &["echo"], &["n=lots"]), "n=lots"),
        (
            spec("x", 1, &[22], &["echo"], &["stats"]),
            "'stats': expected key=value",
        ),
        (spec("x", 1, &[22], &["ftp"], &[]), "unknown service 'ftp'"),
        (
            {
                // A VOS (QEMU) instance is held to the rules between fields as well.
                let mut s = spec("x", 1, &[22], &["ipc-bench"], &[]);
                s.backend = Some(BackendKind::Qemu);
                s.process_args.clear();
                s
            },
            "ipc-bench needs peer=",
        ),
        (
            {
                let mut s = spec("x", 1, &[22], &["echo"], &[]);
                s.backend = Some(BackendKind::Qemu);
                s
            },
            "need the process backend",
        ),
    ] {
        let e = c.run(&run(s)).await.unwrap_err();
        let msg = e.to_string();
        assert_eq!(code(e), "invalid", "{msg}");
        assert!(msg.contains(want), "{msg}");
    }
    assert_eq!(code(c.instance("x").await.unwrap_err()), "not_found");

    // Two instances talk through the node's proxy; the caller's report comes back typed.
    c.run(&run(spec(
        "caller",
        1,
        &[10, 11],
        &["ipc-bench"],
        &["peer=20", "n=200"],
    )))
    .await
    .unwrap();
    let v = wait(&c, "caller", "a report", |v| !v.guest.reports.is_empty()).await;
    assert!(
        matches!(v.guest.reports[..], [Report::Sendrecs { n: 200, .. }]),
        "{:?}",
        v.guest.reports
    );
    assert_eq!(v.state, State::Running);
    let counters = c.counters().await.unwrap();
    assert!(counters.ports["caller"].rx.frames >= 200);
    assert!(c
        .directory()
        .await
        .unwrap()
        .iter()
        .any(|p| p.ep == 20 && p.port.as_deref() == Some("echo")));

    // A machine that prints `dvs: ready` on its console but sends no Ready record stays starting.
    c.run(&run(spec("liar", 1, &[30], &["echo"], &[])))
        .await
        .unwrap();
    let v = wait(&c, "liar", "its counters", |v| v.guest.counters.is_some()).await;
    assert!(c.logs("liar", None).await.unwrap().contains("dvs: ready"));
    assert_eq!(v.state, State::Starting, "{v:#?}");
    assert!(v.guest.ready.is_none());

    // A guest's Fatal record is kept and named when its machine fails.
    c.run(&run(spec("fatal", 1, &[40], &["echo"], &[])))
        .await
        .unwrap();
    let v = wait(&c, "fatal", "failed", |v| v.state == State::Failed).await;
    assert_eq!(v.guest.fatal.as_deref(), Some("bind endpoint 40: Busy"));
    let why = v.last_exit.unwrap_or_default();
    assert!(
        why.contains("bind endpoint 40: Busy") && why.contains("status 1"),
        "{why}"
    );
    assert!(v.pid.is_none());
    let t0 = Instant::now();
    c.stop("fatal").await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // `on-failure` boots it again (after 0.5 s); stopping it in the backoff or in a boot ends it.
    let mut s = spec("fatal-again", 1, &[41], &["echo"], &[]);
    s.restart = RestartPolicy::OnFailure;
    c.run(&run(s)).await.unwrap();
    let v = wait(&c, "fatal-again", "a second boot", |v| v.boots >= 2).await;
    assert!(v.gen > 0);
    let log = dir.join("instances/fatal-again.log");
    assert!(log.exists(), "{}", log.display());
    c.stop("fatal-again").await.unwrap();
    assert_eq!(
        code(c.instance("fatal-again").await.unwrap_err()),
        "not_found"
    );
    assert!(!log.exists(), "a deleted instance's log goes with it");

    // A hostile name is refused as a name (400), before anything looks for it.
    assert_eq!(
        code(c.logs("..%2F..%2Fetc%2Fpasswd", None).await.unwrap_err()),
        "invalid"
    );

    // Stopping forgets the instance and frees its endpoint.
    let pid = c.instance("echo").await.unwrap().pid.unwrap();
    c.stop("echo").await.unwrap();
    assert_eq!(code(c.instance("echo").await.unwrap_err()), "not_found");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the stopped machine is reaped"
    );
    c.run(&run(spec("echo-2", 1, &[20], &["echo"], &[])))
        .await
        .unwrap();
    wait(&c, "echo-2", "running", |v| v.state == State::Running).await;

    // A daemon that shuts down leaves no machine behind.
    let pids: Vec<u32> = c
        .instances()
        .await
        .unwrap()
        .iter()
        .filter_map(|v| v.pid)
        .collect();
    assert_eq!(pids.len(), 3, "caller, liar and echo-2 run");
    node.shutdown().await;
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "machine {pid} outlived the daemon"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn with_volumes(name: &str, ep: u32, vols: &[(&str, &str)]) -> InstanceSpec {
    let mut s = spec(name, 1, &[ep], &["echo"], &[]);
    s.volumes = vols
        .iter()
        .map(|(n, sz)| VolumeRequest {
            name: n.to_string(),
            size: sz.to_string(),
        })
        .collect();
    s
}

fn first_byte(path: &std::path::Path) -> u8 {
    let mut b = [0u8; 1];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b[0]
}

async fn volume(c: &NodeClient, name: &str) -> Option<VolumeView> {
    c.volumes()
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.dc == 1 && v.name == name)
}

/// A request the HTTP client would normalise (`%2e%2e` is `..` to a URL parser), sent as it is over TLS
/// with the node's admin credentials `creds`: the status.
async fn raw_status(api: &str, creds: &Credentials, method: &str, path: &str) -> u16 {
    let tls = creds.client_config().unwrap();
    raw_tls(api, tls, method, path, b"").await.0
}

/// One request over TLS configured by `tls`, sent as it is (`body` after the header, with its
/// content-length): the status (0 when the node refused the connection) and the answer's body.
async fn raw_tls(
    api: &str,
    tls: rustls::ClientConfig,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    let head = format!("content-length: {}\r\n", body.len());
    raw_tls_with(api, tls, method, path, &head, body).await
}

/// Like [`raw_tls`], with the header lines `head` (each ending in CRLF) in place of the content-length.
async fn raw_tls_with(
    api: &str,
    tls: rustls::ClientConfig,
    method: &str,
    path: &str,
    head: &str,
    body: &[u8],
) -> (u16, String) {
    let head = format!("content-type: application/json\r\n{head}");
    match raw_request(api, tls, method, path, &head, body).await {
        Some((status, _, body)) => (status, body),
        None => (0, String::new()),
    }
}

/// One request over TLS configured by `tls`, sent as it is (`head`: header lines, each ending in CRLF, after
/// host and connection; then `body`): the status, the header block (lower-cased) and the body; None when
/// the node refused the connection.
async fn raw_request(
    api: &str,
    tls: rustls::ClientConfig,
    method: &str,
    path: &str,
    head: &str,
    body: &[u8],
) -> Option<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(api).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tls.connect(name, tcp).await.ok()?;
    let req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{head}\r\n");
    if s.write_all(req.as_bytes()).await.is_err() || s.write_all(body).await.is_err() {
        return None;
    }
    let mut answer = Vec::new();
    // A TLS peer that closes without close_notify is an error here; what came before it counts.
    let _ = s.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (headers, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Some((status, headers.to_ascii_lowercase(), body.to_string()))
}

/// TLS that trusts the node of `creds` but presents no client certificate.
fn anonymous_tls(creds: &Credentials) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(creds.ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// The API needs a client certificate of the node's CA: none → 401 (and plain HTTP gets no answer), one of
/// another CA → refused at the handshake, read-only → 403 on every change and 200 on reads, admin → all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_needs_credentials_and_roles_limit_changes() {
    use dvs_hypervisor::auth::{issue_credentials, Role};
    let dir = std::env::temp_dir().join(format!("dvs-node-auth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = one_node_cluster();
    let api = cluster.nodes[0].api.to_string();
    let node = TestNode::start(node_config(&dir), cluster.clone()).await;
    let admin = Credentials::load(&node.creds_dir.join("admin.toml")).unwrap();
    let ro = Credentials::load(&node.creds_dir.join("read-only.toml")).unwrap();
    assert_eq!((admin.role, ro.role), (Role::Admin, Role::ReadOnly));
    assert_eq!(admin.url, format!("https://{api}"));
    use std::os::unix::fs::PermissionsExt;
    for f in ["admin.toml", "read-only.toml", "ca.key", "server.key"] {
        let mode = std::fs::metadata(node.creds_dir.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let sha = push_vos(&node.c).await;

    // Plain HTTP: no answer a client can use.
    assert!(NodeClient::plain(&api).status().await.is_err());
    // TLS without a client certificate: 401 on reads and changes, as JSON {code, message}.
    let anonymous = || anonymous_tls(&admin);
    for (method, path) in [
        ("GET", "/v1/node"),
        ("GET", "/v1/images"),
        ("DELETE", "/v1/instances/x"),
    ] {
        let (status, body) = raw_tls(&api, anonymous(), method, path, b"").await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        let e: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(e["code"], "unauthenticated", "{body}");
        assert!(
            e["message"].as_str().unwrap().contains("credential"),
            "{body}"
        );
    }
    // A certificate of another CA (admin by its OU) is refused at the handshake.
    let other_ca = dvs_proxy::tls::new_cluster_ca("other").unwrap();
    let mut forged = issue_credentials(&other_ca, "mallory", Role::Admin, &admin.url).unwrap();
    forged.ca = admin.ca.clone(); // it trusts the node, the node must not trust it
    let (status, body) = raw_tls(
        &api,
        forged.client_config().unwrap(),
        "GET",
        "/v1/node",
        b"",
    )
    .await;
    assert_eq!(status, 0, "{body}");
    let forged_client = NodeClient::with_credentials(&api, &forged);
    assert!(matches!(
        forged_client.status().await.unwrap_err(),
        ClientError::Unreachable { .. }
    ));
    // Read-only: reads answer, every change is 403 `forbidden` and changes nothing.
    let r = NodeClient::with_credentials(&api, &ro);
    assert_eq!(r.status().await.unwrap().images, 1);
    assert_eq!(r.images().await.unwrap().len(), 1);
    assert!(r.instances().await.unwrap().is_empty());
    let spec = spec("echo-ro", 1, &[70], &[], &[]);
    let e = r.run(&run(spec.clone())).await.unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 403, .. }), "{e}");
    assert_eq!(code(e), "forbidden");
    let m = Manifest {
        name: "other".into(),
        version: "1".into(),
        sha256: sha256_hex(b"x"),
        memory: 16,
        services: vec![],
    };
    assert_eq!(
        code(r.push_image(&m, b"x".to_vec().into()).await.unwrap_err()),
        "forbidden"
    );
    assert_eq!(code(r.stop("echo-ro").await.unwrap_err()), "forbidden");
    assert_eq!(
        code(r.remove_volume(1, "data").await.unwrap_err()),
        "forbidden"
    );
    assert_eq!(
        code(r.migrate("echo-ro", 2).await.unwrap_err()),
        "forbidden"
    );
    let (status, body) = raw_tls(
        &api,
        ro.client_config().unwrap(),
        "POST",
        "/v1/instances",
        b"{not json",
    )
    .await;
    assert_eq!(status, 403, "refused before the body is read: {body}");
    assert_eq!(node.c.images().await.unwrap().len(), 1);
    assert!(node.c.instances().await.unwrap().is_empty());
    // Admin: everything.
    let v = node.c.run(&run(spec)).await.unwrap();
    assert_eq!(v.image_sha256, sha);
    assert_eq!(r.instance("echo-ro").await.unwrap().spec.name, "echo-ro");
    node.c.stop("echo-ro").await.unwrap();
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Volumes: created sparse on first use, attached as the machine's drive, kept through an instance restart,
/// a daemon restart and the instance's deletion, held by one instance at a time, removed only on request,
/// and every bad name, size or path refused with a 400 that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_outlive_their_instances() {
    use std::os::unix::fs::MetadataExt;
    let dir = std::env::temp_dir().join(format!("dvs-node-volumes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = one_node_cluster();
    let api = cluster.nodes[0].api.to_string();
    let node = TestNode::start(node_config(&dir), cluster.clone()).await;
    let admin_file = node.creds_dir.join("admin.toml");
    let admin = Credentials::load(&admin_file).unwrap();
    let admin_file = admin_file.to_string_lossy().into_owned();
    let c = node.c.clone();
    push_vos(&c).await;

    // Created on first use: a sparse 64 MiB file under the data dir, attached as the machine's drive.
    let mut s = with_volumes("disk-a", 60, &[("data", "64M")]);
    s.restart = RestartPolicy::OnFailure;
    c.run(&run(s.clone())).await.unwrap();
    let v = wait(&c, "disk-a", "running", |v| v.state == State::Running).await;
    let img = dir.join("volumes/dc-1/data.img");
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        meta.blocks() * 512 <= 64 << 10,
        "sparse: {} blocks of 512 bytes allocated",
        meta.blocks()
    );
    assert_eq!(first_byte(&img), 1, "the machine wrote its first boot");
    assert!(c
        .logs("disk-a", None)
        .await
        .unwrap()
        .contains(&format!("boot 1 written to {}", img.display())));
    let listed = volume(&c, "data").await.unwrap();
    assert_eq!(listed.size, 64 << 20);
    assert_eq!(listed.attached.as_deref(), Some("disk-a"));
    assert!(
        listed.allocated > 0 && listed.allocated <= 64 << 10,
        "{listed:?}"
    );
    assert_eq!(listed.path, img);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("volumes/dc-1/data.json")).unwrap())
            .unwrap();
    assert_eq!(record["attached"], "disk-a");
    assert_eq!(record["size"], 64 << 20);
    let inode = meta.ino();

    // The machine dies; the restart policy boots it again on the same file.
    unsafe { libc::kill(v.pid.unwrap() as i32, libc::SIGKILL) };
    wait(&c, "disk-a", "a second boot, running", |v| {
        v.boots >= 2 && v.state == State::Running
    })
    .await;
    assert_eq!(first_byte(&img), 2);
    assert_eq!(
        std::fs::metadata(&img).unwrap().ino(),
        inode,
        "the same file"
    );

    // One instance at a time: a second one asking for it, or removing it now, is a 409 naming the holder.
    for size in ["64M", "128M"] {
        let e = c
            .run(&run(with_volumes("disk-b", 61, &[("data", size)])))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert_eq!(code(e), "volume_attached", "{msg}");
        assert!(msg.contains("attached to instance 'disk-a'"), "{msg}");
    }
    assert_eq!(code(c.instance("disk-b").await.unwrap_err()), "not_found");
    let e = c.remove_volume(1, "data").await.unwrap_err();
    let msg = e.to_string();
    assert_eq!(code(e), "volume_attached", "{msg}");
    assert!(img.exists());

    // A volume cannot follow a migration yet: refused, saying so.
    let e = c.migrate("disk-a", 2).await.unwrap_err();
    let msg = e.to_string();
    assert_eq!(code(e), "invalid", "{msg}");
    assert!(
        msg.contains("has volumes (data)") && msg.contains("cannot follow"),
        "{msg}"
    );

    // Bad names and sizes are refused before anything boots, naming the value.
    for (vols, want) in [
        (vec![("../etc", "1M")], "volume name '../etc'"),
        (vec![("a/b", "1M")], "volume name 'a/b'"),
        (vec![("..", "1M")], "volume name '..'"),
        (vec![(".", "1M")], "volume name '.'"),
        (vec![("%2e%2e", "1M")], "volume name '%2e%2e'"),
        (vec![("/etc/passwd", "1M")], "volume name '/etc/passwd'"),
        (vec![("", "1M")], "volume name ''"),
        (vec![("Data", "1M")], "volume name 'Data'"),
        (vec![("x\u{0}y", "1M")], "volume name 'x\\0y'"),
        (vec![("big", "64MB")], "size '64MB'"),
        (vec![("big", "1.5G")], "size '1.5G'"),
        (vec![("big", "-1M")], "size '-1M'"),
        (vec![("big", "")], "size ''"),
        (vec![("big", "0")], "at least 1M"),
        (vec![("big", "1K")], "at least 1M"),
        (vec![("big", "1048577")], "multiple of 512"),
        (vec![("big", "257M")], "above this node's max_volume 256M"),
        (vec![("big", "99999999999T")], "too large"),
        (vec![("a", "1M"), ("a", "1M")], "asked for twice"),
    ] {
        let e = c
            .run(&run(with_volumes("bad", 62, &vols)))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert_eq!(code(e), "invalid", "{vols:?}: {msg}");
        assert!(msg.contains(want), "{vols:?}: {msg}");
    }
    // A VOS that runs the disk service needs a volume.
    let mut s = spec("nodisk", 1, &[63], &["disk"], &["disk_ep=63"]);
    s.backend = Some(BackendKind::Qemu);
    s.process_args.clear();
    let e = c.run(&run(s)).await.unwrap_err().to_string();
    assert!(
        e.contains("runs the disk service but asks for no volume"),
        "{e}"
    );
    // Removal takes the name from the path, checked the same way.
    // (`..` itself a URL parser would resolve before sending: it is sent raw below.)
    for name in ["../../etc/passwd", "a/b", "x.img", "%2e%2e"] {
        let e = c.remove_volume(1, name).await.unwrap_err();
        let msg = e.to_string();
        assert_eq!(code(e), "invalid", "{name}: {msg}");
        assert!(msg.contains("volume name"), "{msg}");
    }
    for path in [
        "/v1/volumes/1/%2e%2e",
        "/v1/volumes/1/..%2f..%2fetc%2fpasswd",
        "/v1/volumes/1/%2fetc%2fpasswd",
        "/v1/volumes/one/data",
        "/v1/volumes/-1/data",
    ] {
        assert_eq!(
            raw_status(&api, &admin, "DELETE", path).await,
            400,
            "DELETE {path}"
        );
    }
    assert_eq!(
        code(c.remove_volume(1, "nope").await.unwrap_err()),
        "not_found"
    );
    // Nothing of all that reached the file system.
    let mut files: Vec<String> = std::fs::read_dir(dir.join("volumes/dc-1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["data.img", "data.json"]);
    assert_eq!(
        std::fs::read_dir(dir.join("volumes")).unwrap().count(),
        1,
        "only dc-1"
    );

    // The daemon restarts: the restored instance gets its volume again.
    let pid = c.instance("disk-a").await.unwrap().pid.unwrap();
    node.shutdown().await;
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let node = TestNode::start(node_config(&dir), cluster.clone()).await;
    let c = node.c.clone();
    wait(&c, "disk-a", "running after the daemon restart", |v| {
        v.state == State::Running
    })
    .await;
    assert_eq!(first_byte(&img), 3);
    assert_eq!(
        volume(&c, "data").await.unwrap().attached.as_deref(),
        Some("disk-a")
    );

    // Deleting the instance detaches the volume; its data stays, and another instance may take it.
    c.stop("disk-a").await.unwrap();
    let listed = volume(&c, "data").await.unwrap();
    assert_eq!(listed.attached, None);
    assert_eq!(first_byte(&img), 3);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("volumes/dc-1/data.json")).unwrap())
            .unwrap();
    assert_eq!(record["attached"], serde_json::Value::Null);
    c.run(&run(with_volumes("disk-b", 61, &[("data", "64M")])))
        .await
        .unwrap();
    wait(&c, "disk-b", "running", |v| v.state == State::Running).await;
    assert_eq!(first_byte(&img), 4);
    c.stop("disk-b").await.unwrap();

    // It is never resized: another size is a 409 that says what it is.
    let e = c
        .run(&run(with_volumes("disk-c", 64, &[("data", "128M")])))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert_eq!(code(e), "volume_size", "{msg}");
    assert!(
        msg.contains("exists with 64M, the spec asks for 128M"),
        "{msg}"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);

    // `dvs apply` with volumes: created, then unchanged; another size is refused before the running
    // instance is stopped; `dvs volume rm` of an attached volume exits with "conflict".
    let manifest = dir.join("dc.toml");
    let write_manifest = |size: &str| {
        let args: Vec<String> = DOUBLE_ARGS.iter().map(|a| format!("{a:?}")).collect();
        let text = format!(
            "[dc]\nid = 1\n[[instance]]\nname = \"disk-m\"\nimage = \"vos\"\nnode = 1\nendpoints = [65]\n\
             backend = \"process\"\nprocess_args = [{}]\nvolumes = [{{ name = \"mdata\", size = \"{size}\" }}]\n",
            args.join(", ")
        );
        std::fs::write(&manifest, text).unwrap();
    };
    let dvs = |args: &[&str]| {
        let mut all = vec![
            "dvs",
            "--node",
            api.as_str(),
            "--credentials",
            admin_file.as_str(),
        ];
        all.extend_from_slice(args);
        dvs_hypervisor::cli::main(<dvs_hypervisor::cli::Cli as clap::Parser>::parse_from(all))
    };
    let m = manifest.to_str().unwrap();
    write_manifest("8M");
    dvs(&["apply", m]).await.unwrap();
    let v = wait(&c, "disk-m", "running", |v| v.state == State::Running).await;
    dvs(&["apply", m]).await.unwrap();
    assert_eq!(c.instance("disk-m").await.unwrap().pid, v.pid, "unchanged");
    write_manifest("16M");
    let e = format!("{:#}", dvs(&["apply", m]).await.unwrap_err());
    assert!(
        e.contains("volume 'mdata' exists on node 1 with 8M, the manifest asks for 16M"),
        "{e}"
    );
    let still = c.instance("disk-m").await.unwrap();
    assert_eq!(
        (still.state, still.pid),
        (State::Running, v.pid),
        "nothing was stopped"
    );
    let e = dvs(&["volume", "rm", "--dc", "one", "mdata"])
        .await
        .unwrap_err();
    assert_eq!(dvs_hypervisor::cli::exit_code(&e), 5, "{e:#}");
    dvs(&["stop", "disk-m"]).await.unwrap();
    dvs(&["volume", "rm", "--dc", "one", "mdata"])
        .await
        .unwrap();
    let e = dvs(&["volume", "rm", "--dc", "one", "mdata"])
        .await
        .unwrap_err();
    assert_eq!(dvs_hypervisor::cli::exit_code(&e), 4, "{e:#}");

    // Removed on request: file and record go.
    let gone = c.remove_volume(1, "data").await.unwrap();
    assert_eq!(gone.size, 64 << 20);
    assert!(!img.exists() && !dir.join("volumes/dc-1/data.json").exists());
    assert!(c.volumes().await.unwrap().is_empty());
    assert_eq!(
        code(c.remove_volume(1, "data").await.unwrap_err()),
        "not_found"
    );

    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Published ports are listened on by the node from `run` (a port in use refuses the run with a 409 that
/// names it), carried by its publish gateway (a client is accepted at once, even before the guest takes it),
/// shown in the view's counters, and free again once the instance is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_ports_are_held_from_run_to_stop() {
    use dvs_hypervisor::instances::Publish;
    let dir = std::env::temp_dir().join(format!("dvs-node-publish-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let node = TestNode::start(node_config(&dir), one_node_cluster()).await;
    let c = node.c.clone();
    push_vos(&c).await;
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let mut s = spec("echo-busy", 1, &[30], &["echo"], &[]);
    s.publish = vec![format!("{busy_port}:80").parse::<Publish>().unwrap()];
    let e = c.run(&run(s)).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("HTTP 409")
            && msg.contains(&format!("127.0.0.1:{busy_port}"))
            && msg.contains("in use"),
        "{msg}"
    );
    assert_eq!(code(e), "port_taken");
    assert!(
        c.instance("echo-busy").await.is_err(),
        "nothing was created"
    );

    let (p1, p2) = (free_port(), free_port());
    let mut s = spec("echo-pub", 1, &[31], &["echo"], &[]);
    s.publish = vec![
        format!("{p1}:80").parse().unwrap(),
        format!("0.0.0.0:{p2}:80").parse().unwrap(),
    ];
    c.run(&run(s)).await.unwrap();
    let v = wait(&c, "echo-pub", "running", |v| v.state == State::Running).await;
    assert_eq!(
        v.spec
            .publish
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        [format!("{p1}:80"), format!("0.0.0.0:{p2}:80")]
    );
    // Both addresses are listened on; the double never takes the publish link, so the clients wait there.
    let _a = std::net::TcpStream::connect(("127.0.0.1", p1)).expect("the loopback port");
    let _b = std::net::TcpStream::connect(("127.0.0.1", p2)).expect("the 0.0.0.0 port");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.instance("echo-pub").await.unwrap();
        let pc = v.publish.expect("publish counters in the view");
        if pc.accepted == 2 {
            assert_eq!((pc.waiting, pc.connected), (2, 0), "{pc:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{pc:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stop("echo-pub").await.unwrap();
    TcpListener::bind(("127.0.0.1", p1)).expect("the port is free after stop");
    TcpListener::bind(("0.0.0.0", p2)).expect("the 0.0.0.0 port is free after stop");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hostile or broken requests: a clear 4xx as JSON `{code, message}` each, and no state change (checked
/// through the API and in the data directory): wrong sha256, bytes that are not an ELF, oversized images
/// (announced and streamed), a taken name and version, hostile image and instance names, malformed and
/// oversized JSON, unknown paths and methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_errors_and_change_nothing() {
    use dvs_hypervisor::validate::minimal_elf;
    let dir = std::env::temp_dir().join(format!("dvs-node-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = one_node_cluster();
    let api = cluster.nodes[0].api.to_string();
    let node = TestNode::start(node_config(&dir), cluster.clone()).await;
    let admin = Credentials::load(&node.creds_dir.join("admin.toml")).unwrap();
    let c = node.c.clone();
    let sha = push_vos(&c).await;
    let manifest = |name: &str, version: &str, sha256: String| Manifest {
        name: name.into(),
        version: version.into(),
        sha256,
        memory: 16,
        services: vec![],
    };
    let err = |e: ClientError| match e {
        ClientError::Api {
            status,
            code,
            body_error,
            ..
        } => (status, code, body_error),
        e => panic!("expected an API error, got {e}"),
    };

    // Images.
    let other = minimal_elf(b"other bytes");
    let (st, code_, msg) = err(c
        .push_image(
            &manifest("vos2", "1", sha256_hex(b"what was announced")),
            other.clone().into(),
        )
        .await
        .unwrap_err());
    assert_eq!((st, code_.as_str()), (400, "image"), "wrong sha256: {msg}");
    assert!(msg.contains("hashes to"), "{msg}");
    let junk = b"MZ this is no ELF".to_vec();
    let (st, code_, msg) = err(c
        .push_image(&manifest("junk", "1", sha256_hex(&junk)), junk.into())
        .await
        .unwrap_err());
    assert_eq!((st, code_.as_str()), (400, "image"), "not an ELF: {msg}");
    assert!(msg.contains("not a loadable kernel"), "{msg}");
    let mut not_exec = minimal_elf(b"x");
    not_exec[16] = 3; // ET_DYN
    let (st, _, msg) = err(c
        .push_image(
            &manifest("dyn", "1", sha256_hex(&not_exec)),
            not_exec.into(),
        )
        .await
        .unwrap_err());
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("ET_EXEC"), "{msg}");
    let big = minimal_elf(&vec![0u8; 2 << 20]);
    // Announced too large: refused before a byte of the body is read.
    let m_big = serde_json::to_string(&manifest("big", "1", sha256_hex(&big))).unwrap();
    let head = format!(
        "content-length: {}\r\nx-dvs-manifest: {m_big}\r\n",
        big.len()
    );
    let (st, body) = raw_tls_with(
        &api,
        admin.client_config().unwrap(),
        "PUT",
        &format!("/v1/images/{}", sha256_hex(&big)),
        &head,
        b"",
    )
    .await;
    assert_eq!(st, 413, "announced: {body}");
    assert!(
        body.contains("too_large") && body.contains("max_image"),
        "{body}"
    );
    // The same without a content-length: refused as it streams past the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    match c
        .push_image(&manifest("big", "1", sha256_hex(&big)), streamed)
        .await
        .unwrap_err()
    {
        ClientError::Api { status, code, .. } => {
            assert_eq!((status, code.as_str()), (413, "too_large"))
        }
        // The node may close the connection while the client still sends: refused all the same.
        ClientError::Unreachable { .. } => {}
        e => panic!("streamed oversized image: {e}"),
    }
    // The CLI says so before it uploads.
    let (elf, mpath) = (dir.join("big.elf"), dir.join("big.manifest.json"));
    std::fs::write(&elf, &big).unwrap();
    std::fs::write(&mpath, r#"{"name": "big", "version": "1", "sha256": ""}"#).unwrap();
    let creds = node.creds_dir.join("admin.toml");
    let e = dvs_hypervisor::cli::main(<dvs_hypervisor::cli::Cli as clap::Parser>::parse_from([
        "dvs",
        "--node",
        &api,
        "--credentials",
        creds.to_str().unwrap(),
        "image",
        "push",
        elf.to_str().unwrap(),
    ]))
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("max_image"), "{e:#}");
    let (st, code_, msg) = err(c
        .push_image(
            &manifest("vos", "1", sha256_hex(&other)),
            other.clone().into(),
        )
        .await
        .unwrap_err());
    assert_eq!((st, code_.as_str()), (409, "image_taken"), "{msg}");
    assert!(msg.contains("immutable"), "{msg}");
    for (name, version) in [
        ("../x", "1"),
        ("Vos", "1"),
        ("a b", "1"),
        ("vos", "../1"),
        ("vos", ""),
    ] {
        let (st, code_, msg) = err(c
            .push_image(
                &manifest(name, version, sha256_hex(&other)),
                other.clone().into(),
            )
            .await
            .unwrap_err());
        assert_eq!(
            (st, code_.as_str()),
            (400, "image"),
            "{name}:{version}: {msg}"
        );
    }
    // The same bytes under the same name and version: a no-op, not a conflict.
    let m = manifest("vos", "1", sha.clone());
    c.push_image(&m, minimal_elf(b"role doubles ignore it").into())
        .await
        .unwrap();

    // Instances: hostile names, malformed and oversized JSON, unknown paths and methods.
    let tls = || admin.client_config().unwrap();
    for name in ["../etc", "A", "-x", "a b", "a.b", &"a".repeat(64), "x\u{0}"] {
        let e = c
            .run(&run(spec(name, 1, &[90], &[], &[])))
            .await
            .unwrap_err();
        let (st, code_, msg) = err(e);
        assert_eq!((st, code_.as_str()), (400, "invalid"), "{name:?}: {msg}");
    }
    let big_json = format!(
        "{{\"spec\": {{\"name\": \"x\", \"image\": \"vos\", \"dc\": 1, \"args\": [\"{}\"]}}}}",
        "a".repeat(300 << 10)
    );
    for (body, want, what) in [
        (&b"{not json"[..], 400, "malformed"),
        (&b"{\"spec\": 5}"[..], 400, "wrong type"),
        (&b""[..], 400, "empty"),
        (big_json.as_bytes(), 413, "oversized"),
    ] {
        let (st, body) = raw_tls(&api, tls(), "POST", "/v1/instances", body).await;
        assert_eq!(st, want, "{what}: {body}");
        let e: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: {body}"));
        assert!(
            e["code"].is_string() && e["message"].is_string(),
            "{what}: {body}"
        );
    }
    let (st, body) = raw_tls(&api, tls(), "GET", "/v1/nothing-here", b"").await;
    assert_eq!(st, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["code"],
        "not_found"
    );
    let (st, body) = raw_tls(&api, tls(), "PATCH", "/v1/instances", b"").await;
    assert_eq!(st, 405, "{body}");
    let (st, body) = raw_tls(&api, tls(), "GET", "/v1/instances/x?wait_after=abc", b"").await;
    assert_eq!(st, 400, "{body}");

    // Services come from the image's manifest.
    let echo_only = minimal_elf(b"echo only");
    let mut m = manifest("echo-only", "1", sha256_hex(&echo_only));
    m.services = vec!["echo".into()];
    c.push_image(&m, echo_only.into()).await.unwrap();
    let mut s = spec("svc", 1, &[91], &["http"], &[]);
    s.image = "echo-only".into();
    let (st, code_, msg) = err(c.run(&run(s)).await.unwrap_err());
    assert_eq!((st, code_.as_str()), (400, "invalid"), "{msg}");
    assert!(msg.contains("offers echo"), "{msg}");

    // Nothing else changed: no instance, no stray file.
    assert_eq!(c.images().await.unwrap().len(), 2);
    assert!(c.instances().await.unwrap().is_empty());
    let names = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join(d))
            .map(|r| {
                r.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut want = vec![sha.clone(), m.sha256.clone()];
    want.sort();
    assert_eq!(names("images"), want);
    assert!(names("instances").is_empty(), "{:?}", names("instances"));
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node whose `api_ca` is the CA of `dvs cluster init` accepts the files of `dvs cluster credentials`
/// (read-only stays read-only) and issues its own admin file from the same CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ca_credentials_are_accepted_by_its_nodes() {
    use dvs_hypervisor::auth::CaFiles;
    let dir = std::env::temp_dir().join(format!("dvs-node-clusterca-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = dir.join("pki");
    let cluster = one_node_cluster();
    let api = cluster.nodes[0].api.to_string();
    let url = format!("https://{api}");
    let dvs = |args: &[&str]| {
        let mut all = vec!["dvs"];
        all.extend_from_slice(args);
        dvs_hypervisor::cli::main(<dvs_hypervisor::cli::Cli as clap::Parser>::parse_from(all))
    };
    let p = pki.to_str().unwrap();
    dvs(&["cluster", "init", "--dir", p]).await.unwrap();
    dvs(&[
        "cluster",
        "credentials",
        "bob",
        "--role",
        "read-only",
        "--url",
        &url,
        "--dir",
        p,
    ])
    .await
    .unwrap();
    assert!(
        dvs(&[
            "cluster",
            "credentials",
            "bob",
            "--role",
            "admin",
            "--dir",
            p
        ])
        .await
        .is_err(),
        "not overwritten without --force"
    );
    assert!(dvs(&[
        "cluster",
        "credentials",
        "Bad",
        "--role",
        "admin",
        "--dir",
        p
    ])
    .await
    .is_err());
    let mut cfg = node_config(&dir.join("data"));
    cfg.api_ca = Some(CaFiles {
        cert: pki.join("ca.pem"),
        key: pki.join("ca.key"),
    });
    let node = TestNode::start(cfg, cluster).await;
    let bob = Credentials::load(&pki.join("bob.credentials.toml")).unwrap();
    assert_eq!(bob.url, url);
    let b = NodeClient::with_credentials(&api, &bob);
    assert_eq!(b.status().await.unwrap().node, 1);
    assert_eq!(code(b.stop("x").await.unwrap_err()), "forbidden");
    let ca = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let admin = Credentials::load(&node.creds_dir.join("admin.toml")).unwrap();
    assert_eq!(admin.ca, ca, "the node's files come from the cluster CA");
    assert!(!node.creds_dir.join("ca.key").exists(), "no CA of its own");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `api_tls`: a node with API certificates issued elsewhere (`dvs cluster api-cert`) holds no CA key and
/// writes no credential files; it accepts the CA's credentials and refuses to migrate out without
/// `api_tls.credentials`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tls_serves_given_certificates_and_keeps_no_ca() {
    use dvs_hypervisor::auth::ApiTlsFiles;
    let dir = std::env::temp_dir().join(format!("dvs-node-apitls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = dir.join("pki");
    let cluster = one_node_cluster();
    let api = cluster.nodes[0].api.to_string();
    let dvs = |args: &[&str]| {
        let mut all = vec!["dvs"];
        all.extend_from_slice(args);
        dvs_hypervisor::cli::main(<dvs_hypervisor::cli::Cli as clap::Parser>::parse_from(all))
    };
    let p = pki.to_str().unwrap();
    dvs(&["cluster", "init", "--dir", p]).await.unwrap();
    dvs(&[
        "cluster",
        "api-cert",
        "n1",
        "--addr",
        "127.0.0.1",
        "--dir",
        p,
    ])
    .await
    .unwrap();
    assert!(
        dvs(&["cluster", "api-cert", "n1", "--addr", "a/b", "--dir", p, "--force"])
            .await
            .is_err()
    );
    let url = format!("https://{api}");
    dvs(&[
        "cluster",
        "credentials",
        "ops",
        "--role",
        "admin",
        "--url",
        &url,
        "--dir",
        p,
    ])
    .await
    .unwrap();
    let mut cfg = node_config(&dir.join("data"));
    cfg.api_tls = Some(ApiTlsFiles {
        ca: pki.join("ca.pem"),
        cert: pki.join("n1-api.pem"),
        key: pki.join("n1-api.key"),
        credentials: None,
    });
    let node = TestNode::start_with(cfg, cluster, pki.join("ops.credentials.toml")).await;
    assert_eq!(node.c.status().await.unwrap().node, 1);
    push_vos(&node.c).await;
    assert!(
        !node.creds_dir.exists(),
        "no CA, no credential files in the data dir"
    );
    let e = node.c.migrate("x", 2).await.unwrap_err();
    assert!(e.to_string().contains("no credentials"), "{e}");
    assert_eq!(code(e), "invalid");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET /metrics` with `creds`: the status and the scrape, parsed as the Prometheus text format.
async fn scrape(api: &str, creds: &Credentials) -> (u16, prometheus_parse::Scrape) {
    let (status, body) = raw_tls(api, creds.client_config().unwrap(), "GET", "/metrics", b"").await;
    let lines = body.lines().map(|l| Ok(l.to_string()));
    (status, prometheus_parse::Scrape::parse(lines).unwrap())
}

/// The value of the sample of `metric` carrying `labels` (a counter or a gauge), or the count of a
/// histogram's observations.
fn sample(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    let x = s
        .samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))?;
    match &x.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        Value::Histogram(b) => b.last().map(|b| b.count),
        Value::Summary(_) => None,
    }
}

/// `/metrics` needs credentials like the rest of the API, parses as the Prometheus text format, and its
/// counters move with traffic: frames of the caller's port and the DC, the DC's sendrec times, the guest's
/// counters, instance state and the machines' CPU and memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_and_move_with_traffic() {
    let dir = std::env::temp_dir().join(format!("dvs-node-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = one_node_cluster();
    let api = cluster.nodes[0].api.to_string();
    let node = TestNode::start(node_config(&dir), cluster).await;
    let ro = Credentials::load(&node.creds_dir.join("read-only.toml")).unwrap();
    assert_eq!(
        raw_tls(&api, anonymous_tls(&ro), "GET", "/metrics", b"")
            .await
            .0,
        401
    );
    // A node without etcd has a static cluster: no live DC changes.
    let admin = Credentials::load(&node.creds_dir.join("admin.toml")).unwrap();
    let dc = r#"{"id": 3, "name": "live", "nodes": [1]}"#;
    let (status, body) = call(&admin, "POST", "/v1/dcs", dc).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("static_cluster"))
    );
    assert_eq!(
        call(&admin, "GET", "/v1/control", "").await.1["mode"],
        "static"
    );
    let admin_file = node.creds_dir.join("admin.toml").display().to_string();
    let dvs = |args: &[&str]| {
        let mut all = vec![
            "dvs",
            "--node",
            api.as_str(),
            "--credentials",
            admin_file.as_str(),
        ];
        all.extend_from_slice(args);
        dvs_hypervisor::cli::main(<dvs_hypervisor::cli::Cli as clap::Parser>::parse_from(all))
    };
    let e = dvs(&["dc", "create", "shop", "--id", "7", "--nodes", "1"])
        .await
        .unwrap_err();
    assert_eq!(dvs_hypervisor::cli::exit_code(&e), 5, "{e:#}");
    push_vos(&node.c).await;
    let c = node.c.clone();
    c.run(&run(spec("echo", 1, &[20], &["echo"], &[])))
        .await
        .unwrap();
    wait(&c, "echo", "running", |v| v.state == State::Running).await;

    let (status, before) = scrape(&api, &ro).await;
    assert_eq!(status, 200);
    let running = [("name", "echo"), ("state", "running")];
    assert_eq!(sample(&before, "dvs_instance_state", &running), Some(1.0));
    let starting = [("name", "echo"), ("state", "starting")];
    assert_eq!(sample(&before, "dvs_instance_state", &starting), Some(0.0));
    assert!(sample(&before, "dvs_instance_memory_bytes", &[("name", "echo")]).unwrap() > 0.0);
    assert_eq!(sample(&before, "dvs_images", &[]), Some(1.0));
    let sendrecs = [("dc", "1"), ("kind", "sendrec")];
    let calls_before = sample(&before, "dvs_dc_call_seconds", &sendrecs).unwrap_or(0.0);
    let dc_frames_before =
        sample(&before, "dvs_dc_m3ipc_frames_total", &[("dc", "1")]).unwrap_or(0.0);

    c.run(&run(spec(
        "caller",
        1,
        &[10],
        &["ipc-bench"],
        &["peer=20", "n=300"],
    )))
    .await
    .unwrap();
    wait(&c, "caller", "a report", |v| !v.guest.reports.is_empty()).await;
    // The guest's counters reach the daemon on their own schedule; the proxy's are there at once.
    let (_, after) = scrape(&api, &ro).await;
    let out = [("name", "caller"), ("direction", "out")];
    assert!(sample(&after, "dvs_instance_frames_total", &out).unwrap() >= 300.0);
    let echo_in = [("name", "echo"), ("direction", "in")];
    assert!(sample(&after, "dvs_instance_frames_total", &echo_in).unwrap() >= 300.0);
    let dc_frames = sample(&after, "dvs_dc_m3ipc_frames_total", &[("dc", "1")]).unwrap();
    assert!(
        dc_frames >= dc_frames_before + 600.0,
        "{dc_frames_before} → {dc_frames}"
    );
    let calls = sample(&after, "dvs_dc_call_seconds", &sendrecs).unwrap();
    assert!(calls >= calls_before + 300.0, "{calls_before} → {calls}");
    let sum = after
        .samples
        .iter()
        .find(|x| x.metric == "dvs_dc_call_seconds_sum" && x.labels.get("kind") == Some("sendrec"));
    assert!(sum.is_some_and(|x| matches!(x.value, prometheus_parse::Value::Untyped(v) if v > 0.0)));
    // The CLI's views of the same: `ps -o wide`, `top --once`, a read-only caller refused a change.
    dvs(&["ps", "-o", "wide"]).await.unwrap();
    dvs(&["top", "--once", "--interval", "0.2"]).await.unwrap();
    let ro_file = node.creds_dir.join("read-only.toml").display().to_string();
    let ro_cli = [
        "dvs",
        "--node",
        api.as_str(),
        "--credentials",
        ro_file.as_str(),
        "stop",
        "echo",
    ];
    let e = dvs_hypervisor::cli::main(<dvs_hypervisor::cli::Cli as clap::Parser>::parse_from(
        ro_cli,
    ))
    .await
    .unwrap_err();
    assert_eq!(dvs_hypervisor::cli::exit_code(&e), 6, "{e:#}");
    assert_eq!(
        sample(&after, "dvs_instance_boots_total", &[("name", "caller")]),
        Some(1.0)
    );
    assert!(sample(
        &after,
        "dvs_instance_cpu_seconds_total",
        &[("name", "caller")]
    )
    .is_some());
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `method path` with a JSON `body` as the caller of `creds`: the status and the answer's JSON.
async fn call(
    creds: &Credentials,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let api = creds.url.trim_start_matches("https://").to_string();
    let (status, text) = raw_tls(
        &api,
        creds.client_config().unwrap(),
        method,
        path,
        body.as_bytes(),
    )
    .await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Three nodes on one etcd member: the cluster file seeds it; a DC is created live and routed by both
/// proxies (a caller on node 1 reaches an echo server on node 2 in it); endpoint owners are recorded; a
/// third node that is not in the file joins and the others link to it; when it dies its lease lapses
/// within the TTL and the others cut it off; a DC in use is not deleted, an unused one is, everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_on_etcd_changes_the_cluster_live() {
    use dvs_hypervisor::control::EtcdSettings;
    let dir = std::env::temp_dir().join(format!("dvs-node-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let etcd = dvs_etcd::member::LocalMember::single(&dir.join("etcd")).unwrap();
    let mut file = one_node_cluster();
    file.nodes.push(NodeInfo {
        id: 2,
        proxy: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        api: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    });
    file.dcs[0].nodes = vec![1, 2];
    let settings = |proxy: Option<u16>, api: Option<u16>| EtcdSettings {
        endpoints: vec![etcd.addrs.client_url()],
        prefix: "/dvs".into(),
        lease_ttl_s: 1,
        proxy: proxy.map(|p| format!("127.0.0.1:{p}").parse().unwrap()),
        api: api.map(|p| format!("127.0.0.1:{p}").parse().unwrap()),
    };
    let config = |n: u16, etcd: EtcdSettings| {
        let mut c = node_config(&dir.join(format!("n{n}")));
        c.node = n;
        c.etcd = Some(etcd);
        c
    };
    let n1 = TestNode::start(config(1, settings(None, None)), file.clone()).await;
    let n2 = TestNode::start(config(2, settings(None, None)), file.clone()).await;
    let admin = |n: &TestNode| Credentials::load(&n.creds_dir.join("admin.toml")).unwrap();
    let (a1, a2) = (admin(&n1), admin(&n2));
    let (status, control) = call(&a1, "GET", "/v1/control", "").await;
    assert_eq!(status, 200, "{control}");
    assert_eq!(control["mode"], "etcd");
    assert_eq!(control["members"].as_array().unwrap().len(), 2, "{control}");
    assert!(control["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["alive"] == true));

    // A DC created live through node 1's API reaches node 2's proxy from the etcd watch.
    let dc3 = r#"{"id": 3, "name": "live", "nodes": [1, 2]}"#;
    assert_eq!(call(&a1, "POST", "/v1/dcs", dc3).await.0, 200);
    assert_eq!(
        call(&a1, "POST", "/v1/dcs", dc3).await.1["code"],
        "conflict"
    );
    // The same through the CLI: created, then a conflict (exit 5); a node a DC lists is in use.
    let a1_file = n1.creds_dir.join("admin.toml").display().to_string();
    let dvs = |args: &[&str]| {
        let mut all = vec!["dvs", "--credentials", a1_file.as_str()];
        all.extend_from_slice(args);
        dvs_hypervisor::cli::main(<dvs_hypervisor::cli::Cli as clap::Parser>::parse_from(all))
    };
    dvs(&["dc", "create", "cli", "--id", "9", "--nodes", "1,2"])
        .await
        .unwrap();
    let e = dvs(&["dc", "create", "cli", "--id", "9", "--nodes", "1"])
        .await
        .unwrap_err();
    assert_eq!(dvs_hypervisor::cli::exit_code(&e), 5, "{e:#}");
    let e = dvs(&["node", "remove", "1"]).await.unwrap_err();
    assert_eq!(dvs_hypervisor::cli::exit_code(&e), 5, "{e:#}");
    dvs(&["dc", "delete", "cli"]).await.unwrap();
    dvs(&["owners"]).await.unwrap();
    dvs(&["node", "status"]).await.unwrap();
    let bad = r#"{"id": 4, "name": "Bad Name", "nodes": [1]}"#;
    assert_eq!(call(&a1, "POST", "/v1/dcs", bad).await.1["code"], "invalid");
    let t0 = Instant::now();
    while !n2.c.cluster().await.unwrap().dcs.iter().any(|d| d.id == 3) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "node 2 never learned DC 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    push_vos(&n1.c).await;
    push_vos(&n2.c).await;
    n2.c.run(&run(spec("echo", 3, &[20], &["echo"], &[])))
        .await
        .unwrap();
    wait(&n2.c, "echo", "running", |v| v.state == State::Running).await;
    n1.c.run(&run(spec(
        "caller",
        3,
        &[10],
        &["ipc-bench"],
        &["peer=20", "n=100"],
    )))
    .await
    .unwrap();
    let v = wait(&n1.c, "caller", "a report", |v| !v.guest.reports.is_empty()).await;
    assert!(
        matches!(v.guest.reports[..], [Report::Sendrecs { n: 100, .. }]),
        "{:?}",
        v.guest.reports
    );
    // etcd records who owns what; an endpoint owned by another live node is refused.
    let owners = call(&a1, "GET", "/v1/control", "").await.1["owners"].clone();
    let owner = |ep: u64| {
        owners
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["ep"] == ep)
            .cloned()
    };
    assert_eq!(
        owner(20).map(|o| (o["node"].clone(), o["instance"].clone())),
        Some((2.into(), "echo".into()))
    );
    assert_eq!(owner(10).map(|o| o["node"].clone()), Some(1.into()));
    let taken =
        n1.c.run(&run(spec("echo", 3, &[20], &["echo"], &[])))
            .await
            .unwrap_err();
    assert_eq!(code(taken), "endpoint_taken");

    // A third node, not in the cluster file, joins through etcd; node 1 links to it without a restart.
    let (p3, api3) = (free_port(), free_port());
    let n3 = TestNode::start(config(3, settings(Some(p3), Some(api3))), file.clone()).await;
    let t0 = Instant::now();
    while n1.c.status().await.unwrap().peers.get(&3) != Some(&true) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "node 1 never linked to node 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A DC across the three; an instance that may move (restart policy `always`) runs in it on node 3.
    let dc5 = r#"{"id": 5, "name": "spread", "nodes": [1, 2, 3]}"#;
    assert_eq!(call(&a1, "POST", "/v1/dcs", dc5).await.0, 200);
    let n3c = n3.c.clone();
    let t0 = Instant::now();
    while !n3c.cluster().await.unwrap().dcs.iter().any(|d| d.id == 5) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "node 3 never learned DC 5"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    push_vos(&n3c).await;
    let mut movable = spec("echo-r", 5, &[30], &["echo"], &[]);
    movable.restart = RestartPolicy::Always;
    n3c.run(&run(movable)).await.unwrap();
    wait(&n3c, "echo-r", "running", |v| v.state == State::Running).await;
    // It dies without a word (its tasks dropped, no lease revoked): its lease lapses within the TTL (plus
    // etcd's expiry check), and node 1 says so and cuts it off.
    let t0 = Instant::now();
    n3.task.abort();
    let members_alive = |c: &serde_json::Value| {
        c["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["alive"] == true)
            .count()
    };
    loop {
        let c = call(&a1, "GET", "/v1/control", "").await.1;
        if c["members"].as_array().unwrap().len() == 3 && members_alive(&c) == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "node 3 still alive: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t0.elapsed() < Duration::from_millis(2600),
        "took {:?}",
        t0.elapsed()
    );
    assert_ne!(n1.c.status().await.unwrap().peers.get(&3), Some(&true));
    // Its movable instance runs again on one survivor, which owns its endpoint now; a caller reaches it.
    let t0 = Instant::now();
    let rescuer = loop {
        let owners = call(&a1, "GET", "/v1/control", "").await.1["owners"].clone();
        let node = owners
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["ep"] == 30)
            .map(|o| o["node"].clone());
        if let Some(n @ (1 | 2)) = node.and_then(|n| n.as_u64()) {
            break if n == 1 { &n1 } else { &n2 };
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "echo-r not rescued: {owners}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait(&rescuer.c, "echo-r", "running again", |v| {
        v.state == State::Running
    })
    .await;
    n1.c.run(&run(spec(
        "caller-r",
        5,
        &[11],
        &["ipc-bench"],
        &["peer=30", "n=50"],
    )))
    .await
    .unwrap();
    let v = wait(&n1.c, "caller-r", "a report", |v| {
        !v.guest.reports.is_empty()
    })
    .await;
    assert!(
        matches!(v.guest.reports[..], [Report::Sendrecs { n: 50, .. }]),
        "{:?}",
        v.guest.reports
    );
    rescuer.c.stop("echo-r").await.unwrap();
    n1.c.stop("caller-r").await.unwrap();

    // A DC in use stays; once its instances stop (their endpoints released), it goes, on every node.
    assert_eq!(
        call(&a2, "DELETE", "/v1/dcs/3", "").await.1["code"],
        "conflict"
    );
    n1.c.stop("caller").await.unwrap();
    n2.c.stop("echo").await.unwrap();
    let (status, body) = call(&a2, "DELETE", "/v1/dcs/3", "").await;
    assert_eq!(status, 200, "{body}");
    let t0 = Instant::now();
    while n1.c.cluster().await.unwrap().dcs.iter().any(|d| d.id == 3) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "node 1 still has DC 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        call(&a1, "DELETE", "/v1/dcs/3", "").await.1["code"],
        "not_found"
    );
    n1.shutdown().await;
    n2.shutdown().await;
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One raw HTTP/1.1 request over `tls` with a content-length for `body`: status, headers, body.
async fn raw_answer(
    api: &str,
    tls: rustls::ClientConfig,
    method: &str,
    path: &str,
    head: &str,
    body: &str,
) -> (u16, String, String) {
    let head = format!("content-length: {}\r\n{head}", body.len());
    raw_request(api, tls, method, path, &head, body.as_bytes())
        .await
        .expect("the node took the connection")
}

/// The value of `name="csrf" value="..."` on a console page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_string()
}

/// The web console: a one-time login link from an authenticated API caller (read-only too), a session
/// cookie (HttpOnly, Secure, SameSite=Strict), pages refused without it, and actions refused without the
/// session's CSRF token, from another site's origin, or for a read-only session; what a refused action
/// would have changed is checked through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_guard_every_page_and_action() {
    let dir = std::env::temp_dir().join(format!("dvs-node-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = one_node_cluster();
    let api = cluster.nodes[0].api.to_string();
    let node = TestNode::start(node_config(&dir), cluster.clone()).await;
    let admin = Credentials::load(&node.creds_dir.join("admin.toml")).unwrap();
    let ro = Credentials::load(&node.creds_dir.join("read-only.toml")).unwrap();
    push_vos(&node.c).await;
    node.c
        .run(&run(spec("echo", 1, &[7], &["echo"], &[])))
        .await
        .unwrap();
    wait(&node.c, "echo", "running", |v| v.state == State::Running).await;
    let browser = || anonymous_tls(&admin);

    // No session: the sign-in page, with the console's headers; no certificate: no login link.
    let (status, head, body) = raw_answer(&api, browser(), "GET", "/console", "", "").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Not signed in"), "{body}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    let (status, _, body) = raw_answer(&api, browser(), "POST", "/v1/console/login", "", "").await;
    assert_eq!(status, 401, "{body}");

    // A login link works once and sets a strict cookie.
    let login = node
        .c
        .post_json("/v1/console/login", &serde_json::json!({}))
        .await
        .unwrap();
    let path = login["path"].as_str().unwrap().to_string();
    assert_eq!(login["role"], "admin");
    let (status, head, _) = raw_answer(&api, browser(), "GET", &path, "", "").await;
    assert_eq!(status, 303, "{head}");
    let cookie_line = head
        .lines()
        .find(|l| l.starts_with("set-cookie: dvs_console="))
        .unwrap_or_else(|| panic!("no session cookie: {head}"))
        .to_string();
    for attr in ["httponly", "secure", "samesite=strict", "path=/console"] {
        assert!(cookie_line.contains(attr), "{cookie_line}");
    }
    let sid = cookie_line["set-cookie: ".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (status, _, _) = raw_answer(&api, browser(), "GET", &path, "", "").await;
    assert_eq!(status, 401, "a login link works once");
    let with = format!("cookie: {sid}\r\n");
    let (status, _, page) = raw_answer(&api, browser(), "GET", "/console", &with, "").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("data-instance=\"echo\""), "{page}");
    let csrf = csrf_of(&page);
    let form = "content-type: application/x-www-form-urlencoded\r\n";
    let stop = "/console/instances/echo/stop";

    // A forged token, another site's origin, or no cookie: refused, and the instance still runs.
    for (head, body, why) in [
        (format!("{with}{form}"), "csrf=forged".to_string(), "token"),
        (
            format!("{with}{form}origin: https://evil.example\r\n"),
            format!("csrf={csrf}"),
            "another site",
        ),
        (form.to_string(), format!("csrf={csrf}"), "Not signed in"),
    ] {
        let (status, _, answer) = raw_answer(&api, browser(), "POST", stop, &head, &body).await;
        assert!(status == 403 || status == 401, "{status} {answer}");
        assert!(answer.contains(why), "{why}: {answer}");
        assert_eq!(node.c.instance("echo").await.unwrap().state, State::Running);
    }
    // Names that are not instance names reach nothing.
    let (status, _, _) = raw_answer(
        &api,
        browser(),
        "GET",
        "/console/instances/..%2F..%2Fetc",
        &with,
        "",
    )
    .await;
    assert_eq!(status, 404);

    // A read-only caller gets a read-only session: it reads, and its forms are refused.
    let ro_login = NodeClient::with_credentials(&api, &ro)
        .post_json("/v1/console/login", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(ro_login["role"], "read-only");
    let (_, head, _) = raw_answer(
        &api,
        browser(),
        "GET",
        ro_login["path"].as_str().unwrap(),
        "",
        "",
    )
    .await;
    let ro_sid = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let ro_with = format!("cookie: {ro_sid}\r\n");
    let (status, _, ro_page) = raw_answer(&api, browser(), "GET", "/console", &ro_with, "").await;
    assert_eq!(status, 200);
    assert!(ro_page.contains("data-instance=\"echo\""));
    assert!(
        !ro_page.contains("/stop"),
        "a read-only page offers actions"
    );
    let ro_csrf = csrf_of(&ro_page);
    let (status, _, answer) = raw_answer(
        &api,
        browser(),
        "POST",
        stop,
        &format!("{ro_with}{form}"),
        &format!("csrf={ro_csrf}"),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("read-only"), "{answer}");
    assert_eq!(node.c.instance("echo").await.unwrap().state, State::Running);

    // The admin session's own form, from its own origin: the instance stops.
    let (status, head, _) = raw_answer(
        &api,
        browser(),
        "POST",
        stop,
        &format!("{with}{form}origin: https://x\r\n"),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 303, "{head}");
    assert!(node.c.instance("echo").await.is_err(), "echo still there");
    let (_, _, page) = raw_answer(&api, browser(), "GET", "/console", &with, "").await;
    assert!(page.contains("stopped echo (node 1)"), "{page}");

    // Signing out ends the session.
    let (status, _, _) = raw_answer(
        &api,
        browser(),
        "POST",
        "/console/logout",
        &format!("{with}{form}"),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = raw_answer(&api, browser(), "GET", "/console", &with, "").await;
    assert_eq!(status, 401);
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET /v1/instances/{name}/logs` with `since_ms` and `after`: a boot's lines are there since before it,
/// not since after them; the cursor of an answer follows on with nothing new; a bad cursor is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_logs_are_read_since_a_moment_and_followed() {
    let dir = std::env::temp_dir().join(format!("dvs-node-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = one_node_cluster();
    let node = TestNode::start(node_config(&dir), cluster.clone()).await;
    push_vos(&node.c).await;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = now_ms();
    node.c
        .run(&run(spec("echo", 1, &[7], &["echo"], &[])))
        .await
        .unwrap();
    wait(&node.c, "echo", "running", |v| v.state == State::Running).await;
    let (since_before, cursor) = node
        .c
        .log_read("echo", None, Some(before), None)
        .await
        .unwrap();
    assert!(
        since_before.contains("--- dvs: boot 1 of echo"),
        "{since_before}"
    );
    assert_eq!(since_before, node.c.logs("echo", None).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (later, _) = node
        .c
        .log_read("echo", None, Some(now_ms()), None)
        .await
        .unwrap();
    assert!(!later.contains("--- dvs: boot"), "{later}");
    let (after, next) = node
        .c
        .log_read("echo", None, None, Some(&cursor))
        .await
        .unwrap();
    assert!(!after.contains("--- dvs: boot"), "{after}");
    assert!(!next.is_empty());
    let (last, _) = node.c.log_read("echo", Some(1), None, None).await.unwrap();
    assert_eq!(last.lines().count(), 1, "{last}");
    let bad = node.c.log_read("echo", None, None, Some("nope")).await;
    assert_eq!(code(bad.unwrap_err()), "invalid");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
