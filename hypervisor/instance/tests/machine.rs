//! Machines through ProcessBackend: exit codes, stop, no orphans, the console, and readiness from
//! the control channel only. Machines are `/bin/sh -c` scripts, or this test binary itself acting
//! as a guest that writes control records (`role_double`, picked by the spec's name).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use dvs_instance::{
    ConsoleSink, Exit, Kernel, Machine, MachineEvent, ProcessBackend, ReadyError, VmBackend,
    VmSpec, SPEC_ENV,
};
use dvs_vos_abi::control::{Counters, RecordError, CONTROL_VERSION};
use dvs_vos_abi::{BootConfig, ControlRecord, Ready, Service};

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dvs-inst-m-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spec(name: &str) -> VmSpec {
    let mut cfg = BootConfig::new(1, 5);
    cfg.endpoints = vec![10];
    cfg.services = vec![Service::Echo];
    let mut s = VmSpec::new(name, "/nonexistent/vos.elf".into(), Kernel::Config(cfg));
    s.accel = dvs_instance::Accel::Tcg;
    s
}

fn sh(script: &str) -> ProcessBackend {
    ProcessBackend::new("/bin/sh").with_args(["-c", script])
}

fn ready_record() -> Ready {
    Ready {
        version: CONTROL_VERSION,
        dc: 1,
        endpoints: vec![10],
        services: vec![Service::Echo],
        macs: vec![[2, 0, 0, 0, 0, 1]],
        tsc_mhz: 0,
        init_us: 1,
    }
}

/// This binary as a guest: run by the tests below through ProcessBackend; a no-op otherwise.
#[test]
fn role_double() {
    let Ok(json) = std::env::var(SPEC_ENV) else {
        return;
    };
    let spec: VmSpec = serde_json::from_str(&json).expect("the spec decodes");
    assert!(spec.boot_config().is_some());
    let mut ctl = UnixStream::connect(spec.control.as_ref().expect("a control path")).unwrap();
    match spec.name.as_str() {
        "ready" => {
            ctl.write_all(&[1, 2, 3, 0]).unwrap(); // not a record
            let counters = ControlRecord::Counters(Counters {
                frames_in: 3,
                ..Counters::default()
            });
            ctl.write_all(&counters.to_frame()).unwrap();
            println!("dvs: booting");
            ctl.write_all(&ControlRecord::Ready(ready_record()).to_frame())
                .unwrap();
            ctl.write_all(&counters.to_frame()).unwrap();
            std::thread::sleep(Duration::from_secs(30));
        }
        "fatal" => {
            let f = ControlRecord::Fatal {
                reason: "bind endpoint 10: Busy".into(),
            };
            ctl.write_all(&f.to_frame()).unwrap();
            std::thread::sleep(Duration::from_secs(30));
        }
        "records-then-exit" => {
            let c = ControlRecord::Counters(Counters::default());
            ctl.write_all(&c.to_frame()).unwrap();
            std::process::exit(4);
        }
        other => panic!("no role {other}"),
    }
}

fn double(name: &str, d: &std::path::Path) -> (ProcessBackend, VmSpec) {
    let exe = std::env::current_exe().unwrap();
    let backend = ProcessBackend::new(exe).with_args([
        "--exact",
        "role_double",
        "--nocapture",
        "--test-threads=1",
    ]);
    let mut s = spec(name);
    s.control = Some(d.join(format!("{name}.ctl")));
    (backend, s)
}

#[test]
fn exit_codes_and_signals_are_reported() {
    Machine::block_on(async {
        let mut m = sh("echo hello; echo oops >&2; exit 3")
            .start(&spec("a"))
            .unwrap();
        let e = m.wait().await;
        assert_eq!(e, Exit::Code(3));
        assert!(!e.success());
        assert_eq!(e.to_string(), "exited with status 3");
        // stdout and stderr are the console (read apart, so in no set order between them).
        for line in ["hello", "oops"] {
            m.wait_console(line, Duration::from_secs(2)).await.unwrap();
        }
        assert_eq!(m.count_console("o"), 2);
        let mut m = sh("kill -9 $$").start(&spec("b")).unwrap();
        assert_eq!(m.wait().await, Exit::Signal(9));
        assert_eq!(m.try_wait(), Some(Exit::Signal(9)));
        assert_eq!(Exit::Signal(9).to_string(), "killed by signal 9 (SIGKILL)");
        let mut m = sh("exit 0").start(&spec("c")).unwrap();
        assert!(m.wait().await.success());
    });
}

#[test]
fn a_missing_program_is_a_named_error() {
    let e = ProcessBackend::new("/nonexistent/double")
        .start(&spec("x"))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/double") && msg.contains("'x'"),
        "{msg}"
    );
}

#[test]
fn the_spec_reaches_the_program_as_json() {
    Machine::block_on(async {
        let s = spec("json");
        let mut m = sh("printf '%s\\n' \"$DVS_VM_SPEC\"").start(&s).unwrap();
        assert!(m.wait().await.success());
        m.wait_console("{", Duration::from_secs(2)).await.unwrap();
        let got: VmSpec = serde_json::from_str(&m.console_lines()[0]).unwrap();
        assert_eq!(got, s);
    });
}

#[test]
fn stop_terms_then_kills_the_group() {
    Machine::block_on(async {
        // A machine that ends on SIGTERM.
        let mut m = sh("exec sleep 100").start(&spec("t")).unwrap();
        assert_eq!(m.try_wait(), None);
        let e = m.stop(Duration::from_secs(5)).await;
        assert_eq!(e, Exit::Signal(libc::SIGTERM));
        // A machine that ignores it: killed after the grace time, its children too.
        let mut m = sh("trap '' TERM; sleep 100 & echo $!; wait")
            .start(&spec("k"))
            .unwrap();
        let line = m.wait_console("", Duration::from_secs(2)).await.unwrap();
        let child: i32 = line.trim().parse().unwrap();
        let t0 = std::time::Instant::now();
        let e = m.stop(Duration::from_millis(200)).await;
        assert_eq!(e, Exit::Signal(libc::SIGKILL));
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_gone(child).await;
        // Stopping an ended machine says how it ended.
        assert_eq!(
            m.stop(Duration::from_secs(1)).await,
            Exit::Signal(libc::SIGKILL)
        );
    });
}

/// Waits until `pid` is no process (or only a zombie).
async fn assert_gone(pid: i32) {
    for _ in 0..200 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        if stat.is_empty() || state == Some("Z") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("process {pid} outlived its machine");
}

#[test]
fn no_orphans_when_the_machine_exits_or_is_dropped() {
    Machine::block_on(async {
        // The machine's leader exits; what it left behind in its group goes too.
        let mut m = sh("sleep 100 & echo $!; exit 0").start(&spec("o")).unwrap();
        let line = m.wait_console("", Duration::from_secs(2)).await.unwrap();
        let child: i32 = line.trim().parse().unwrap();
        assert!(m.wait().await.success());
        assert_gone(child).await;
        // Dropping the handle kills and reaps the machine and its children.
        let m = sh("sleep 100 & echo $!; wait").start(&spec("d")).unwrap();
        let line = m.wait_console("", Duration::from_secs(2)).await.unwrap();
        let child: i32 = line.trim().parse().unwrap();
        let leader = m.pid().unwrap() as i32;
        drop(m);
        assert_gone(child).await;
        assert!(
            !std::path::Path::new(&format!("/proc/{leader}")).exists(),
            "the leader is reaped, not a zombie"
        );
    });
}

#[test]
fn a_console_file_gets_stdout_and_stderr() {
    let d = dir("file");
    let log = d.join("m.log");
    std::fs::write(&log, "earlier boot\n").unwrap();
    let mut s = spec("f");
    s.console = ConsoleSink::File(log.clone());
    Machine::block_on(async {
        let mut m = sh("echo out; echo err >&2").start(&s).unwrap();
        assert!(m.wait().await.success());
        assert_eq!(m.console_path(), Some(log.as_path()));
        assert!(m.console_lines().is_empty());
        assert!(m
            .wait_console("x", Duration::from_millis(10))
            .await
            .is_err());
    });
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "earlier boot\nout\nerr\n"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_console_that_says_ready_is_not_ready() {
    let d = dir("liar");
    let mut s = spec("liar");
    s.control = Some(d.join("liar.ctl"));
    Machine::block_on(async {
        let mut m = sh("echo 'dvs: ready dc=1 ep=10'; sleep 100")
            .start(&s)
            .unwrap();
        m.wait_console("dvs: ready", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            m.ready(Duration::from_millis(300)).await,
            Err(ReadyError::Timeout(Duration::from_millis(300)))
        );
        assert!(m.seen().is_empty());
        m.kill();
        // It never connected; once it is gone, so is the channel.
        assert_eq!(m.next_event().await, MachineEvent::Exited(Exit::Signal(9)));
        assert_eq!(
            m.ready(Duration::from_secs(1)).await,
            Err(ReadyError::Exited(Exit::Signal(9)))
        );
    });
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn ready_comes_from_the_record() {
    let d = dir("ready");
    let (backend, s) = double("ready", &d);
    Machine::block_on(async {
        let mut m = backend.start(&s).unwrap();
        let r = m.ready(Duration::from_secs(10)).await.unwrap();
        assert_eq!(r, ready_record());
        // The records before Ready stay visible; the garbage is skipped.
        assert!(
            matches!(m.seen(), [ControlRecord::Counters(c), ControlRecord::Ready(_)] if c.frames_in == 3)
        );
        // Asking again answers at once.
        assert_eq!(m.ready(Duration::ZERO).await.unwrap(), r);
        // Records after it come as events.
        assert!(matches!(
            m.next_event().await,
            MachineEvent::Record(Ok(ControlRecord::Counters(_)))
        ));
        assert_eq!(
            m.stop(Duration::from_secs(2)).await,
            Exit::Signal(libc::SIGTERM)
        );
        assert_eq!(
            m.next_event().await,
            MachineEvent::Exited(Exit::Signal(libc::SIGTERM))
        );
        assert_eq!(m.next_record().await, None);
    });
    // The socket file goes with the machine.
    assert!(!s.control.as_ref().unwrap().exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_garbage_frame_is_an_error_event() {
    let d = dir("garbage");
    let (backend, s) = double("ready", &d);
    Machine::block_on(async {
        let mut m = backend.start(&s).unwrap();
        assert_eq!(
            m.next_event().await,
            MachineEvent::Record(Err(RecordError::Malformed))
        );
        assert!(matches!(
            m.next_event().await,
            MachineEvent::Record(Ok(ControlRecord::Counters(_)))
        ));
    });
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn fatal_and_early_exit_end_the_wait_for_ready() {
    let d = dir("fatal");
    let (backend, s) = double("fatal", &d);
    Machine::block_on(async {
        let mut m = backend.start(&s).unwrap();
        assert_eq!(
            m.ready(Duration::from_secs(10)).await,
            Err(ReadyError::Fatal("bind endpoint 10: Busy".into()))
        );
        let (backend, s) = double("records-then-exit", &d);
        let mut m = backend.start(&s).unwrap();
        assert_eq!(
            m.ready(Duration::from_secs(10)).await,
            Err(ReadyError::Exited(Exit::Code(4)))
        );
        assert!(matches!(m.seen(), [ControlRecord::Counters(_)]));
        // A machine without a control channel can never be ready.
        let mut m = sh("sleep 100").start(&spec("none")).unwrap();
        assert_eq!(
            m.ready(Duration::from_secs(5)).await,
            Err(ReadyError::ChannelClosed)
        );
    });
    let _ = std::fs::remove_dir_all(&d);
}
