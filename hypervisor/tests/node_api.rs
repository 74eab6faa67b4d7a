//! One node in-process with the process backend: the API's happy path and its errors, as the CLI sees them.
//!
//! The machines are this test binary itself (`machine_double`, run by the node as its `process_program`),
//! acting in the role its instance's name starts with: `echo` (an M3-IPC echo server), `caller` (sendrecs to
//! `peer`, then a report), `liar` (prints `dvs: ready` on its console, never sends a Ready record), `fatal`
//! (a Fatal record, then exit 1). They are role doubles for the daemon's API, not stand-ins for the VOS:
//! the VOS itself is tested under QEMU in qemu-tests.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use dvs_hypervisor::client::{ClientError, NodeClient};
use dvs_hypervisor::config::{Accel, BackendKind, NetdevKind, NodeConfig};
use dvs_hypervisor::images::{sha256_hex, Manifest};
use dvs_hypervisor::instances::{InstanceSpec, InstanceView, RestartPolicy, RunRequest, State};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_with_role_doubles() {
    let dir = std::env::temp_dir().join(format!("dvs-node-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let api = format!("127.0.0.1:{}", free_port());
    let cluster = ClusterMap {
        nodes: vec![NodeInfo {
            id: 1,
            proxy: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            api: api.parse().unwrap(),
        }],
        dcs: vec![
            DcInfo {
                id: 1,
                name: "one".into(),
                nodes: vec![1],
            },
            DcInfo {
                id: 2,
                name: "elsewhere".into(),
                nodes: vec![],
            },
        ],
    };
    let cfg = NodeConfig {
        node: 1,
        cluster: dir.join("cluster.toml"),
        data_dir: dir.clone(),
        backend: BackendKind::Process,
        netdev: NetdevKind::Stream,
        accel: Accel::Auto,
        qemu: "qemu-system-x86_64".into(),
        process_program: Some(std::env::current_exe().unwrap()),
        api_listen: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(dvs_hypervisor::daemon::serve(cfg, cluster, async move {
        let _ = stop_rx.await;
    }));
    let c = NodeClient::new(&api);
    for _ in 0..100 {
        if c.status().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = c.status().await.unwrap();
    assert!(status.backend.starts_with("process ("), "{status:?}");

    // An image: refused when the bytes do not match, stored and verified when they do.
    let kernel = b"not a kernel: role doubles ignore it".to_vec();
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
    c.stop("fatal-again").await.unwrap();
    assert_eq!(
        code(c.instance("fatal-again").await.unwrap_err()),
        "not_found"
    );

    assert_eq!(
        code(c.logs("..%2F..%2Fetc%2Fpasswd", None).await.unwrap_err()),
        "not_found"
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
    let _ = stop_tx.send(());
    node.await.unwrap().unwrap();
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "machine {pid} outlived the daemon"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
