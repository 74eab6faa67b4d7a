//! Boots the real VOS image under QEMU and checks it from the host (issue 4's qemu-tests).
//! Each test has bounded waits, and every QEMU is killed and reaped when its `Vm` drops.

use m3ipc_core::wire::{FrameRepr, Kind};
use m3ipc_core::{DcId, Endpoint, Message};
use qemu_tests::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const DC: u16 = 1;
const GUEST_EP: u32 = 10;
const HOST_EP: u32 = 500;

fn accel() -> Accel {
    let a = Accel::detect();
    eprintln!("qemu-tests: accelerator {}", a.name());
    a
}

fn secs(a: Accel, s: u64) -> Duration {
    a.timeout(Duration::from_secs(s))
}

/// Boots echo on a dgram fabric NIC and returns (vm, harness, tempdir).
fn boot_echo(a: Accel, machine: Machine, mem: u32, extra: &str) -> (Vm, Harness, TempDir) {
    let dir = TempDir::new();
    let (guest, host) = (dir.0.join("guest.sock"), dir.0.join("host.sock"));
    let harness = Harness::new(DC, &[HOST_EP], &host, &guest);
    let mut spec = VmSpec::new(
        machine,
        a,
        &format!("dc={DC} ep={GUEST_EP} svc=echo {extra}"),
    );
    spec.mem_mib = mem;
    spec.nics.push(NicBackend::Dgram { guest, host });
    let mut vm = Vm::start(&spec);
    vm.wait_line("dvs: ready", secs(a, 10))
        .unwrap_or_else(|e| panic!("{e}"));
    (vm, harness, dir)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

fn http(port: u16, req: &str, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8(out).map_err(|e| e.to_string())
}

#[test]
fn boot_ready_microvm() {
    let _g = exclusive();
    let a = accel();
    let mut vm = Vm::start(&VmSpec::new(Machine::Microvm, a, "dc=1 ep=10 svc=echo"));
    let line = vm
        .wait_line("dvs: ready", secs(a, 10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("dc=1 ep=10"), "ready line: {line}");
}

#[test]
fn boot_ready_q35() {
    let _g = exclusive();
    let a = accel();
    let mut spec = VmSpec::new(Machine::Q35, a, "dc=1 ep=10 svc=echo,http ip=10.0.2.15/24");
    spec.nics.push(NicBackend::User { hostfwd: None });
    let mut vm = Vm::start(&spec);
    let line = vm
        .wait_line("dvs: ready", secs(a, 10))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        line.contains("nics=52:54:00:12:34:10"),
        "q35 NIC not found: {line}"
    );
}

#[test]
fn http_get_through_publish_nic() {
    http_checks(Machine::Microvm);
}

#[test]
fn http_get_through_publish_nic_q35() {
    http_checks(Machine::Q35);
}

/// Two NICs (dgram fabric, user-net publish); HTTP and UDP echo through the publish NIC.
fn http_checks(machine: Machine) {
    let _g = exclusive();
    let a = accel();
    let port = free_port();
    let dir = TempDir::new();
    let mut spec = VmSpec::new(
        machine,
        a,
        "dc=1 ep=10 svc=http,echo,udp-echo ip=10.1.0.2/24 pub_ip=10.0.2.15/24 pub_gw=10.0.2.2",
    );
    spec.nics.push(NicBackend::Dgram {
        guest: dir.0.join("g.sock"),
        host: dir.0.join("h.sock"),
    });
    spec.nics.push(NicBackend::User {
        hostfwd: Some(port),
    });
    let mut vm = Vm::start(&spec);
    vm.wait_line("dvs: ready", secs(a, 10))
        .unwrap_or_else(|e| panic!("{e}"));
    let t = secs(a, 5);
    let r = http(
        port,
        "GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.starts_with("HTTP/1.1 200 OK"), "response: {r}");
    assert!(
        r.contains("Content-Length: 15") && r.ends_with("hello from dvs\n"),
        "response: {r}"
    );
    let r = http(port, "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(r.starts_with("HTTP/1.1 404"), "response: {r}");
    let r = http(
        port,
        "POST / HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.starts_with("HTTP/1.1 405") && r.contains("Allow: GET, HEAD"),
        "response: {r}"
    );
    let r = http(port, "garbage\r\n\r\n", t).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.starts_with("HTTP/1.1 400"), "response: {r}");
    let r = http(port, "HEAD /big HTTP/1.1\r\nConnection: close\r\n\r\n", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        r.contains("Content-Length: 65536") && r.ends_with("\r\n\r\n"),
        "HEAD response: {r}"
    );
    // Keep-alive: two requests on one connection, then the 64 KiB page.
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(t)).expect("timeout");
    s.write_all(b"GET /hello.txt HTTP/1.1\r\n\r\nGET /hello.txt HTTP/1.1\r\n\r\nGET /big HTTP/1.1\r\nConnection: close\r\n\r\n").expect("write");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        text.matches("HTTP/1.1 200 OK").count(),
        3,
        "keep-alive responses: {}",
        &text[..text.len().min(600)]
    );
    assert!(out.len() > 65536, "big page truncated: {} bytes", out.len());
    // UDP echo on the same NIC.
    let u = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    u.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("udp timeout");
    let mut got = None;
    for _ in 0..10 {
        u.send_to(b"dvs udp echo", ("127.0.0.1", port))
            .expect("udp send");
        let mut b = [0u8; 64];
        if let Ok(n) = u.recv(&mut b) {
            got = Some(b[..n].to_vec());
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(&b"dvs udp echo"[..]), "no UDP echo");
    // Several clients at once.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || http(port, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", t))
        })
        .collect();
    for c in clients {
        let r = c
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.starts_with("HTTP/1.1 200 OK"), "concurrent response: {r}");
    }
}

#[test]
fn sendrec_and_vcopy_through_dgram_netdev() {
    let _g = exclusive();
    let a = accel();
    let size = 4 << 20;
    let (vm, mut h, _dir) = boot_echo(a, Machine::Microvm, 48, &format!("buf={size}"));
    let t = secs(a, 2);
    for i in 0..1000u32 {
        let mut m = Message::new(0x100 + i);
        m.set_u32(0, i);
        m.set_u64(1, 0xdead_beef_0000 + i as u64);
        let r = h
            .sendrec(HOST_EP, GUEST_EP, m, t)
            .unwrap_or_else(|e| panic!("sendrec {i}: {e}"));
        assert_eq!(
            (r.mtype, r.payload),
            (m.mtype, m.payload),
            "reply {i} differs"
        );
        assert_eq!(r.source, Endpoint(GUEST_EP));
    }
    // 4 MiB both ways, byte-exact.
    let pattern: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1])
        .collect();
    h.engine
        .set_buffer(Endpoint(HOST_EP), pattern.clone())
        .expect("host buffer");
    let vt = secs(a, 60);
    let n = h
        .vcopy(HOST_EP, HOST_EP, 0, GUEST_EP, 0, size as u64, vt)
        .unwrap_or_else(|e| panic!("push: {e}\nconsole:\n{}", vm.output()));
    assert_eq!(n, size as u64);
    h.engine
        .set_buffer(Endpoint(HOST_EP), vec![0u8; size])
        .expect("host buffer");
    let n = h
        .vcopy(HOST_EP, GUEST_EP, 0, HOST_EP, 0, size as u64, vt)
        .unwrap_or_else(|e| panic!("pull: {e}\nconsole:\n{}", vm.output()));
    assert_eq!(n, size as u64);
    let back = h.engine.buffer(Endpoint(HOST_EP)).expect("host buffer");
    assert!(
        back == &pattern[..],
        "4 MiB round trip differs at byte {:?}",
        back.iter().zip(&pattern).position(|(x, y)| x != y)
    );
}

#[test]
fn hostile_frames_are_dropped_and_counted() {
    let _g = exclusive();
    let a = accel();
    let (vm, mut h, _dir) = boot_echo(a, Machine::Microvm, 16, "");
    let t = secs(a, 2);
    h.sendrec(HOST_EP, GUEST_EP, Message::new(1), t)
        .unwrap_or_else(|e| panic!("first sendrec: {e}"));
    // A valid SendRec frame to mutate.
    let payload = [0u8; 60];
    let good = FrameRepr {
        kind: Kind::SendRec,
        dc: DcId(DC),
        flags: 0,
        src: Endpoint(HOST_EP + 1),
        dst: Endpoint(GUEST_EP),
        seq: 1 << 32 | 1,
        aux: 0,
        code: 0,
        payload: &payload,
    };
    let mut buf = vec![0u8; good.buffer_len()];
    good.emit(&mut buf).expect("emit");
    let mut seed = 0x1234_5678u32;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut sent_bad = 0;
    for i in 0..200 {
        // Garbage of random length and bytes with the M3-IPC EtherType.
        let len = (rnd() % 1400) as usize;
        let g: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        h.send_m3(&g).expect("send garbage");
        // Truncated valid frames.
        h.send_m3(&buf[..(i % buf.len().max(1)).min(buf.len() - 1)])
            .expect("send truncated");
        sent_bad += 2;
    }
    // Wrong DC, spoofed source (the guest's own endpoint), runt and foreign-EtherType frames.
    let mut wrong = buf.clone();
    wrong[4..6].copy_from_slice(&99u16.to_be_bytes());
    h.send_m3(&wrong).expect("send wrong dc");
    let spoof = FrameRepr {
        src: Endpoint(GUEST_EP),
        dst: Endpoint(GUEST_EP),
        ..good
    };
    let mut sp = vec![0u8; spoof.buffer_len()];
    spoof.emit(&mut sp).expect("emit");
    h.send_m3(&sp).expect("send spoofed");
    h.send_raw(&[1, 2, 3]).expect("send runt");
    let mut foreign = vec![0xffu8; 60];
    foreign[12] = 0x12;
    foreign[13] = 0x34;
    h.send_raw(&foreign).expect("send foreign");
    // Still serving.
    for i in 0..10u32 {
        let mut m = Message::new(2);
        m.set_u32(0, i);
        let r = h
            .sendrec(HOST_EP, GUEST_EP, m, t)
            .unwrap_or_else(|e| panic!("sendrec after garbage: {e}"));
        assert_eq!(r.u32_at(0), Some(i));
    }
    // The counters line reflects the drops (printed when idle, at most once a second).
    let deadline = std::time::Instant::now() + secs(a, 8);
    loop {
        let out = vm.output();
        let last = out
            .lines()
            .rfind(|l| l.starts_with("dvs: stats"))
            .unwrap_or("")
            .to_string();
        let bad = field(&last, "bad_frames").unwrap_or(0);
        let wrong_dc = field(&last, "wrong_dc").unwrap_or(0);
        let spoofed = field(&last, "spoofed").unwrap_or(0);
        if bad >= sent_bad / 2
            && wrong_dc >= 1
            && spoofed >= 1
            && field(&last, "echo_replied").unwrap_or(0) >= 11
        {
            assert!(
                !out.contains("PANIC") && !out.contains("FATAL"),
                "guest crashed:\n{out}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counters never showed the drops (sent {sent_bad} bad); last: {last}\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_command_line_exits_nonzero_with_message() {
    let _g = exclusive();
    let a = accel();
    for (cmdline, says) in [
        ("dc=1 ep=10 svc=echo bogus", "'bogus'"),
        ("ep=10 svc=echo", "missing dc"),
        ("dc=1 ep=10 svc=teapot", "unknown service 'teapot'"),
        ("dc=1 ep=abc svc=echo", "ep=abc"),
    ] {
        let mut vm = Vm::start(&VmSpec::new(Machine::Microvm, a, cmdline));
        let st = vm
            .wait_exit(secs(a, 10))
            .unwrap_or_else(|| panic!("guest with '{cmdline}' did not exit"));
        assert!(
            !st.success() && st.code().is_some_and(|c| c != 0),
            "exit status {st:?} for '{cmdline}'"
        );
        let out = vm.output();
        assert!(
            out.contains("dvs: FATAL bad command line") && out.contains(says),
            "'{cmdline}': console:\n{out}"
        );
    }
}

#[test]
fn idle_instance_uses_little_cpu() {
    let _g = exclusive();
    let a = accel();
    let (vm, mut h, _dir) = boot_echo(a, Machine::Microvm, 16, "");
    let t = secs(a, 2);
    h.sendrec(HOST_EP, GUEST_EP, Message::new(1), t)
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(1500));
    let before = vm.cpu_ticks().expect("cpu ticks");
    let start = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let used = vm.cpu_ticks().expect("cpu ticks") - before;
    let wall = start.elapsed().as_secs_f64();
    let pct = used as f64 / (wall * 100.0) * 100.0;
    eprintln!(
        "qemu-tests: idle CPU {pct:.2}% of one core over {wall:.1} s ({})",
        a.name()
    );
    assert!(pct < 5.0, "idle instance used {pct:.2}% of a core");
    let r = h
        .sendrec(HOST_EP, GUEST_EP, Message::new(7), t)
        .unwrap_or_else(|e| panic!("sendrec after idle: {e}"));
    assert_eq!(r.mtype, 7);
    // A halted guest wakes on the device interrupt, not on some later timer.
    let mut lat = Vec::new();
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        let t0 = std::time::Instant::now();
        h.sendrec(HOST_EP, GUEST_EP, Message::new(i), t)
            .unwrap_or_else(|e| panic!("spaced sendrec {i}: {e}"));
        lat.push(t0.elapsed());
    }
    lat.sort();
    eprintln!(
        "qemu-tests: sendrec to a halted guest: median {:?} ({})",
        lat[10],
        a.name()
    );
    assert!(
        lat[10] < Duration::from_millis(3),
        "halted guest answers in {:?} (median): lost wake-ups?",
        lat[10]
    );
}

#[test]
fn ipc_bench_against_local_echo() {
    let _g = exclusive();
    let a = accel();
    let mut spec = VmSpec::new(
        Machine::Microvm,
        a,
        "dc=1 ep=10,11 svc=echo,ipc-bench peer=11 n=2000 vcopy=262144 buf=262144 local_n=1000",
    );
    spec.mem_mib = 16;
    let mut vm = Vm::start(&spec);
    let t = secs(a, 15);
    let local = vm
        .wait_line("dvs: local-sendrec", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(field(&local, "ns_per_call").is_some(), "{local}");
    let line = vm
        .wait_line("dvs: bench sendrec", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        field(&line, "n") == Some(2000)
            && field(&line, "median_ns").is_some()
            && field(&line, "p99_ns").is_some(),
        "{line}"
    );
    let v = vm
        .wait_line("dvs: bench vcopy", t)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(field(&v, "bytes"), Some(262144), "{v}");
    assert!(!vm.output().contains("FAILED"), "{}", vm.output());
}

#[test]
fn guest_to_guest_over_dgram_pair() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new();
    let (pa, pb) = (dir.0.join("a.sock"), dir.0.join("b.sock"));
    let mut server = VmSpec::new(Machine::Microvm, a, "dc=1 ep=20 svc=echo buf=1048576");
    server.nics.push(NicBackend::Dgram {
        guest: pb.clone(),
        host: pa.clone(),
    });
    let mut srv = Vm::start(&server);
    srv.wait_line("dvs: ready", secs(a, 10))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut client = VmSpec::new(
        Machine::Microvm,
        a,
        "dc=1 ep=10 svc=ipc-bench peer=20 n=1000 vcopy=1048576",
    );
    client.nics.push(NicBackend::Dgram {
        guest: pa,
        host: pb,
    });
    let mut cli = Vm::start(&client);
    let t = secs(a, 20);
    let line = cli
        .wait_line("dvs: bench sendrec", t)
        .unwrap_or_else(|e| panic!("{e}\nserver:\n{}", srv.output()));
    assert_eq!(field(&line, "n"), Some(1000), "{line}");
    let v = cli
        .wait_line("dvs: bench vcopy", t)
        .unwrap_or_else(|e| panic!("{e}\nserver:\n{}", srv.output()));
    assert!(!v.contains("FAILED"), "{v}");
    eprintln!("qemu-tests: guest-to-guest {line}\nqemu-tests: {v}");
}

#[test]
fn gratuitous_arp_arp_and_icmp_echo_on_the_fabric_nic() {
    let _g = exclusive();
    let a = accel();
    let dir = TempDir::new();
    let (guest, host) = (dir.0.join("guest.sock"), dir.0.join("host.sock"));
    let mut h = Harness::new(DC, &[HOST_EP], &host, &guest);
    let mut spec = VmSpec::new(Machine::Microvm, a, "dc=1 ep=10 svc=echo ip=10.1.0.2/24");
    spec.nics.push(NicBackend::Dgram { guest, host });
    let mut vm = Vm::start(&spec);
    vm.wait_line("dvs: ready", secs(a, 10))
        .unwrap_or_else(|e| panic!("{e}"));
    let (guest_ip, host_ip) = ([10, 1, 0, 2], [10, 1, 0, 1]);
    // The gratuitous ARP sent at start.
    let deadline = std::time::Instant::now() + secs(a, 5);
    let guest_mac = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no gratuitous ARP from the guest"
        );
        let Some(f) = h.recv_raw(Duration::from_millis(200)) else {
            continue;
        };
        if f.len() >= 42 && f[12..14] == [8, 6] && f[28..32] == guest_ip && f[38..42] == guest_ip {
            let mut m = [0u8; 6];
            m.copy_from_slice(&f[6..12]);
            break m;
        }
    };
    // Ping it; answer its ARP request for us.
    let deadline = std::time::Instant::now() + secs(a, 5);
    let mut tries = 0;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no ICMP echo reply after {tries} pings\n{}",
            vm.output()
        );
        tries += 1;
        let ping = icmp_echo_frame(
            (HOST_MAC, host_ip),
            (guest_mac, guest_ip),
            0x1234,
            tries,
            b"dvs-ping",
        );
        h.send_raw(&ping)
            .unwrap_or_else(|e| panic!("send ping: {e}\n{}", vm.output()));
        let until = std::time::Instant::now() + Duration::from_millis(300);
        let mut replied = false;
        while let Some(f) = h.recv_raw(until.saturating_duration_since(std::time::Instant::now())) {
            if f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == [0, 1] && f[38..42] == host_ip {
                let reply = arp_frame(2, HOST_MAC, host_ip, guest_mac, guest_ip, guest_mac);
                h.send_raw(&reply).expect("send ARP reply");
            } else if f.len() >= 42
                && f[12..14] == [8, 0]
                && f[23] == 1
                && f[34] == 0
                && f[38..40] == [0x12, 0x34]
            {
                assert!(f.ends_with(b"dvs-ping"), "echo payload differs");
                replied = true;
                break;
            }
            if std::time::Instant::now() >= until {
                break;
            }
        }
        if replied {
            break;
        }
    }
}

#[test]
fn sendrec_and_vcopy_on_q35() {
    let _g = exclusive();
    let a = accel();
    let (vm, mut h, _dir) = boot_echo(a, Machine::Q35, 16, "buf=262144");
    let t = secs(a, 2);
    for i in 0..200u32 {
        let mut m = Message::new(i);
        m.set_u32(0, i);
        let r = h
            .sendrec(HOST_EP, GUEST_EP, m, t)
            .unwrap_or_else(|e| panic!("sendrec {i}: {e}\n{}", vm.output()));
        assert_eq!(r.payload, m.payload);
    }
    let data: Vec<u8> = (0..262144u32).map(|i| (i * 7) as u8).collect();
    h.engine
        .set_buffer(Endpoint(HOST_EP), data.clone())
        .expect("buffer");
    h.vcopy(HOST_EP, HOST_EP, 0, GUEST_EP, 0, 262144, secs(a, 20))
        .unwrap_or_else(|e| panic!("push: {e}\n{}", vm.output()));
    h.engine
        .set_buffer(Endpoint(HOST_EP), vec![0; 262144])
        .expect("buffer");
    h.vcopy(HOST_EP, GUEST_EP, 0, HOST_EP, 0, 262144, secs(a, 20))
        .unwrap_or_else(|e| panic!("pull: {e}\n{}", vm.output()));
    assert!(
        h.engine.buffer(Endpoint(HOST_EP)) == Some(&data[..]),
        "q35 vcopy round trip differs"
    );
}

#[test]
fn send_and_notify_reach_the_echo_task() {
    let _g = exclusive();
    let a = accel();
    let (mut vm, mut h, _dir) = boot_echo(a, Machine::Microvm, 16, "");
    let t = secs(a, 2);
    for i in 0..10u32 {
        let now = h.now();
        h.engine
            .send(
                now,
                Endpoint(HOST_EP),
                Endpoint(GUEST_EP),
                Message::new(i),
                Some(t),
            )
            .unwrap_or_else(|e| panic!("send {i}: {e:?}"));
        match h.wait_done(Endpoint(HOST_EP), t + Duration::from_millis(100)) {
            Ok(m3ipc_core::Completion::Sent) => {}
            other => panic!("send {i}: {other:?}"),
        }
    }
    let now = h.now();
    h.engine
        .notify(now, Endpoint(HOST_EP), Endpoint(GUEST_EP))
        .unwrap_or_else(|e| panic!("notify: {e:?}"));
    // The notification is delivered when the engine sees it acknowledged; then a sendrec
    // shows the echo task is still serving.
    let r = h
        .sendrec(HOST_EP, GUEST_EP, Message::new(99), t)
        .unwrap_or_else(|e| panic!("sendrec after send/notify: {e}"));
    assert_eq!(r.mtype, 99);
    // 10 sends + 1 notification + 1 sendrec received, 1 reply.
    let line = vm
        .wait_line("echo_received=12", secs(a, 5))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(field(&line, "echo_replied") == Some(1), "{line}");
}
