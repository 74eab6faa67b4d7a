//! The role doubles, each run as a machine by `dvs_instance::ProcessBackend` (as a node runs them) with
//! its NIC on a unix datagram socket the test holds (or on another double), read through the machine's
//! control channel. No root, no VM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dvs_instance::port::{DgramPort, EnginePort, FramePort};
use dvs_instance::spec::{ConsoleSink, Kernel, Nic, NicBackend, VmSpec};
use dvs_instance::{Machine, ProcessBackend, VmBackend};
use dvs_test_support::arp::Arp;
use dvs_vos_abi::{BootConfig, Cidr, ControlRecord, IpConfig, Report};
use m3ipc_core::wire::ethernet::EthernetHeader;
use m3ipc_core::wire::FrameRepr;

fn double() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dvs-double"))
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dvs-doubles-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn spec(dir: &Path, name: &str, cfg: BootConfig, local: &Path, remote: &Path, mac: u8) -> VmSpec {
    let mut s = VmSpec::new(name, double(), Kernel::Config(cfg));
    s.nics.push(Nic {
        backend: NicBackend::Dgram {
            local: local.into(),
            remote: remote.into(),
        },
        mac: [2, 0, 0, 0, 0, mac],
    });
    s.console = ConsoleSink::Capture;
    s.control = Some(dir.join(format!("{name}.ctl")));
    s
}

fn start(role: &[&str], spec: &VmSpec) -> Machine {
    ProcessBackend::new(double())
        .with_args(role.iter().copied())
        .start(spec)
        .expect("start the double")
}

/// The reports of `m` until `done` says enough, within `timeout`.
fn reports_until(
    m: &mut Machine,
    timeout: Duration,
    done: impl Fn(&[Report]) -> bool,
) -> Vec<Report> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no complete report within {timeout:?}; got {out:?}; console: {:?}",
            m.console_lines()
        );
        match Machine::block_on(async { tokio::time::timeout(left, m.next_record()).await }) {
            Ok(Some(Ok(ControlRecord::Report(r)))) => out.push(r),
            Ok(Some(_)) => {}
            Ok(None) => panic!(
                "control channel closed; reports {out:?}; console: {:?}",
                m.console_lines()
            ),
            Err(_) => {}
        }
    }
    out
}

#[test]
fn host_bench_against_host_echo_reports_like_the_vos() {
    let dir = tmp("bench");
    let (a, b) = (dir.join("echo.sock"), dir.join("bench.sock"));
    let mut ecfg = BootConfig::new(1, 1);
    ecfg.endpoints = vec![21];
    ecfg.echo_buffer = 65536;
    let mut bcfg = BootConfig::new(1, 2);
    bcfg.endpoints = vec![11];
    bcfg.bench.peer = Some(21);
    bcfg.bench.sendrecs = 200;
    bcfg.bench.notifies = 5;
    bcfg.bench.vcopy = 65536;
    let mut echo = start(&["host-echo"], &spec(&dir, "echo", ecfg, &a, &b, 1));
    let ready = Machine::block_on(echo.ready(Duration::from_secs(10))).expect("echo ready");
    assert_eq!(ready.endpoints, vec![21]);
    let mut bench = start(&["host-bench"], &spec(&dir, "bench", bcfg, &b, &a, 2));
    let reports = reports_until(&mut bench, Duration::from_secs(30), |r| {
        r.iter()
            .any(|r| matches!(r, Report::Vcopy { .. } | Report::Failed { .. }))
    });
    assert!(
        matches!(reports.first(), Some(Report::Sendrecs { n: 200, .. })),
        "{reports:?}"
    );
    assert!(
        reports.contains(&Report::Notifies { sent: 5 }),
        "{reports:?}"
    );
    assert!(
        matches!(reports.last(), Some(Report::Vcopy { bytes: 65536, .. })),
        "{reports:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_console_liar_is_not_ready() {
    let dir = tmp("liar");
    let (a, b) = (dir.join("liar.sock"), dir.join("host.sock"));
    let _host = DgramPort::bind(&b, &a).expect("host end");
    let mut m = start(
        &["console-liar"],
        &spec(&dir, "liar", BootConfig::new(1, 1), &a, &b, 3),
    );
    let r = Machine::block_on(async {
        // Its Counters record proves the channel was read after the console line was printed.
        loop {
            match m.next_record().await {
                Some(Ok(ControlRecord::Counters(_))) | None => break,
                Some(_) => {}
            }
        }
        m.ready(Duration::from_millis(300)).await
    });
    assert!(r.is_err(), "taken as ready: {r:?}");
    assert!(
        m.console_lines()
            .iter()
            .any(|l| l.starts_with("dvs: ready")),
        "{:?}",
        m.console_lines()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn arp_probe_reports_the_answer_and_spoofer_sends_as_another_endpoint() {
    let dir = tmp("arp");
    let (a, b) = (dir.join("probe.sock"), dir.join("host.sock"));
    let mut host = DgramPort::bind(&b, &a).expect("host end");
    let mut cfg = BootConfig::new(1, 1);
    cfg.fabric = Some(IpConfig {
        cidr: Cidr::parse("10.1.0.9/24").expect("cidr"),
        gateway: None,
    });
    let mut probe = start(
        &["arp-probe", "ask=10.1.0.3"],
        &spec(&dir, "probe", cfg, &a, &b, 4),
    );
    Machine::block_on(probe.ready(Duration::from_secs(10))).expect("probe ready");
    let me = [2, 0, 0, 0, 0, 0x33];
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answered = false;
    while !answered && Instant::now() < deadline {
        if let Some(n) = host
            .recv(&mut buf, Duration::from_millis(100))
            .expect("recv")
        {
            if let Some(rep) =
                Arp::parse(&buf[..n]).and_then(|q| q.answer(me, "10.1.0.3".parse().unwrap()))
            {
                host.send(&rep.to_frame()).expect("send");
                answered = true;
            }
        }
    }
    assert!(answered, "no who-has for 10.1.0.3 came");
    let r = reports_until(&mut probe, Duration::from_secs(5), |r| !r.is_empty());
    assert_eq!(
        r,
        vec![Report::Arp {
            target: [10, 1, 0, 3],
            answer: Some(me)
        }]
    );
    drop(probe);

    let (c, d) = (dir.join("spoofer.sock"), dir.join("host2.sock"));
    let host2 = DgramPort::bind(&d, &c).expect("host end");
    let mut hp = EnginePort::new(host2, 1, &[], [2, 0, 0, 0, 0, 0x44]).expect("port");
    let mut cfg = BootConfig::new(1, 1);
    cfg.endpoints = vec![151];
    let mut spoofer = start(
        &["spoofer", "as=301", "to=301", "count=4"],
        &spec(&dir, "spoofer", cfg, &c, &d, 5),
    );
    let r = reports_until(&mut spoofer, Duration::from_secs(10), |r| !r.is_empty());
    assert!(matches!(&r[0], Report::Injected { frames: 4, .. }), "{r:?}");
    let mut seen = 0;
    while let Ok(Some(f)) = hp.recv_raw(Duration::from_millis(200)) {
        if let Ok((_, m3)) = EthernetHeader::m3ipc_payload(&f) {
            let f = FrameRepr::parse(m3).expect("a valid frame");
            assert_eq!((f.src.0, f.dst.0), (301, 301));
            seen += 1;
        }
    }
    assert_eq!(seen, 4);
    let _ = std::fs::remove_dir_all(&dir);
}
