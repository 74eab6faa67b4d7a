//! A host-side fake instance: a process that opens the instance's end of a VM port like QEMU would and runs an
//! m3ipc-core engine with the VOS's services (`echo`, `ipc-bench`) and the same command-line words. It lets the
//! proxy and the cluster logic be tested without VMs, and serves as a LAN probe (`arp=`) and a spoofing guest
//! (`spoof=`) in the cluster test. It prints what it does on stdout, which the node keeps as its console log.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context};
use dvs_proxy::port::{PortKind, VmEnd};
use m3ipc_core::engine::{Completion, Engine, EngineConfig, Event};
use m3ipc_core::wire::ethernet::{EthernetHeader, ETH_HEADER_LEN};
use m3ipc_core::wire::{FrameRepr, Kind, ETHERTYPE_M3IPC, MAX_FRAME};
use m3ipc_core::{DcId, Endpoint, Instant, Message};

const ETHERTYPE_ARP: u16 = 0x0806;

/// The command-line words the fake understands (the VOS's, plus `arp`, `spoof`, `notify_n`, `timeout_ms`).
#[derive(Clone, Debug, Default)]
pub struct FakeConfig {
    /// DC.
    pub dc: u16,
    /// Endpoints; the first serves echo, the last is the bench client.
    pub endpoints: Vec<u32>,
    /// Services: echo, ipc-bench (http is accepted and ignored).
    pub services: Vec<String>,
    /// Fabric IPv4 address.
    pub ip: Option<Ipv4Addr>,
    /// Bench peer endpoint.
    pub peer: Option<u32>,
    /// Sendrecs the bench runs (0 = none).
    pub n: u64,
    /// Bytes the bench vcopies to the peer and back (0 = none).
    pub vcopy: u64,
    /// Echo's vcopy buffer size.
    pub buf: u64,
    /// Seconds between progress lines (0 = none).
    pub stats: u64,
    /// Incarnation.
    pub inc: Option<u32>,
    /// Notifications the bench sends after its sendrecs.
    pub notify_n: u64,
    /// Per-call timeout.
    pub timeout_ms: u64,
    /// IPv4 address to ask for with ARP (LAN probe).
    pub arp: Option<Ipv4Addr>,
    /// Endpoint to send frames as, which this instance does not hold (boundary probe).
    pub spoof: Option<u32>,
}

fn size(v: &str) -> Option<u64> {
    let (n, mult) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 1024),
        b'M' | b'm' => (&v[..v.len() - 1], 1 << 20),
        _ => (v, 1),
    };
    n.parse::<u64>().ok()?.checked_mul(mult)
}

impl FakeConfig {
    /// Parses `key=value` words; unknown keys are an error, like in the VOS.
    pub fn parse(cmdline: &str) -> anyhow::Result<FakeConfig> {
        let mut c = FakeConfig {
            n: 1000,
            buf: 65536,
            timeout_ms: 5000,
            ..Default::default()
        };
        for word in cmdline.split_ascii_whitespace() {
            let (k, v) = word
                .split_once('=')
                .with_context(|| format!("'{word}': expected key=value"))?;
            let num = || size(v).with_context(|| format!("{k}={v}: not a number"));
            match k {
                "dc" => c.dc = num()? as u16,
                "ep" => {
                    c.endpoints = v
                        .split(',')
                        .map(|e| e.parse().with_context(|| format!("ep={v}")))
                        .collect::<Result<_, _>>()?
                }
                "svc" => c.services = v.split(',').map(String::from).collect(),
                "ip" => {
                    c.ip = Some(
                        v.split('/')
                            .next()
                            .unwrap_or(v)
                            .parse()
                            .with_context(|| format!("ip={v}"))?,
                    )
                }
                "peer" => c.peer = Some(num()? as u32),
                "n" => c.n = num()?,
                "vcopy" => c.vcopy = num()?,
                "buf" => c.buf = num()?,
                "stats" => c.stats = num()?,
                "inc" => c.inc = Some(num()? as u32),
                "notify_n" => c.notify_n = num()?,
                "timeout_ms" => c.timeout_ms = num()?,
                "arp" => c.arp = Some(v.parse().with_context(|| format!("arp={v}"))?),
                "spoof" => c.spoof = Some(num()? as u32),
                "gw" | "pub_ip" | "pub_gw" | "local_n" => {}
                _ => bail!("unknown key '{k}' in '{word}'"),
            }
        }
        if c.dc == 0 {
            bail!("missing dc=<id>");
        }
        if c.services.iter().any(|s| s == "ipc-bench") && c.peer.is_none() {
            bail!("svc=ipc-bench needs peer=<endpoint>");
        }
        Ok(c)
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

struct Bench {
    ep: Endpoint,
    peer: Endpoint,
    issued: u64,
    ok: u64,
    mismatched: u64,
    errors: BTreeMap<String, u64>,
    lat_us: Vec<u64>,
    sent_at: u64,
    started_at: u64,
    phase: Phase,
    vcopy_started: u64,
    push_us: u64,
}

#[derive(Default, PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    #[default]
    Sendrec,
    Notify,
    Push,
    Pull,
    Done,
}

struct Fake {
    cfg: FakeConfig,
    mac: [u8; 6],
    engine: Engine,
    start: std::time::Instant,
    echo: Option<Endpoint>,
    served: u64,
    notified: u64,
    bench: Option<Bench>,
    arp_answer: Option<[u8; 6]>,
}

impl Fake {
    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as u64)
    }

    fn timeout(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.cfg.timeout_ms))
    }

    fn start_services(&mut self) -> anyhow::Result<()> {
        let now = self.now();
        let eps: Vec<Endpoint> = self.cfg.endpoints.iter().map(|&e| Endpoint(e)).collect();
        for &ep in &eps {
            self.engine
                .bind(ep)
                .map_err(|e| anyhow::anyhow!("bind {ep}: {e}"))?;
        }
        if self.cfg.services.iter().any(|s| s == "echo") {
            let ep = *eps.first().context("svc=echo needs ep=")?;
            self.engine
                .set_buffer(ep, vec![0; self.cfg.buf as usize])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            self.engine
                .receive(now, ep, Endpoint::ANY, None)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            self.echo = Some(ep);
        }
        if self.cfg.services.iter().any(|s| s == "ipc-bench") {
            let ep = *eps.last().context("svc=ipc-bench needs ep=")?;
            if Some(ep) == self.echo && eps.len() == 1 {
                bail!("echo and ipc-bench need two endpoints (ep=A,B)");
            }
            let len = (self.cfg.vcopy as usize) * 2;
            let mut buf = vec![0u8; len];
            for (i, b) in buf.iter_mut().take(len / 2).enumerate() {
                *b = (i as u32).wrapping_mul(2654435761).to_be_bytes()[0];
            }
            self.engine
                .set_buffer(ep, buf)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let peer = Endpoint(self.cfg.peer.unwrap_or_default());
            self.bench = Some(Bench {
                ep,
                peer,
                issued: 0,
                ok: 0,
                mismatched: 0,
                errors: BTreeMap::new(),
                lat_us: Vec::with_capacity(self.cfg.n.min(1 << 20) as usize),
                sent_at: 0,
                started_at: self.now().as_micros(),
                phase: Phase::Sendrec,
                vcopy_started: 0,
                push_us: 0,
            });
            self.bench_next();
        }
        Ok(())
    }

    /// Starts the bench's next call.
    fn bench_next(&mut self) {
        let now = self.now();
        let timeout = self.timeout();
        let (n, vcopy, notify_n) = (self.cfg.n, self.cfg.vcopy, self.cfg.notify_n);
        let Some(b) = self.bench.as_mut() else { return };
        loop {
            match b.phase {
                Phase::Sendrec if b.issued < n => {
                    let mut msg = Message::new(1);
                    msg.set_u64(0, b.issued);
                    b.sent_at = now.as_micros();
                    match self.engine.sendrec(now, b.ep, b.peer, msg, timeout) {
                        Ok(()) => {
                            b.issued += 1;
                            return;
                        }
                        Err(e) => {
                            println!(
                                "dvs: bench FAILED sendrec {} to {}: {e:?}",
                                b.issued, b.peer.0
                            );
                            b.issued += 1;
                            *b.errors.entry(format!("{e:?}")).or_default() += 1;
                            continue;
                        }
                    }
                }
                Phase::Sendrec => {
                    print_bench_done(b, now.as_micros().saturating_sub(b.started_at));
                    b.phase = Phase::Notify;
                }
                Phase::Notify => {
                    for _ in 0..notify_n {
                        let _ = self.engine.notify(now, b.ep, b.peer);
                    }
                    if notify_n > 0 {
                        println!("dvs: bench notify sent={notify_n}");
                    }
                    b.phase = Phase::Push;
                }
                Phase::Push if vcopy > 0 => {
                    b.vcopy_started = now.as_micros();
                    if let Err(e) = self.engine.vcopy(
                        now,
                        b.ep,
                        b.ep,
                        0,
                        b.peer,
                        0,
                        vcopy,
                        timeout.map(|t| t * 10),
                    ) {
                        println!("dvs: bench FAILED vcopy {vcopy} bytes: push {e:?}");
                        b.phase = Phase::Done;
                        continue;
                    }
                    return;
                }
                Phase::Pull => {
                    b.vcopy_started = now.as_micros();
                    if let Err(e) = self.engine.vcopy(
                        now,
                        b.ep,
                        b.peer,
                        0,
                        b.ep,
                        vcopy,
                        vcopy,
                        timeout.map(|t| t * 10),
                    ) {
                        println!("dvs: bench FAILED vcopy {vcopy} bytes: pull {e:?}");
                        b.phase = Phase::Done;
                        continue;
                    }
                    return;
                }
                Phase::Push | Phase::Done => {
                    if b.phase != Phase::Done {
                        b.phase = Phase::Done;
                    }
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        let now = self.now();
        match ev {
            Event::Done { ep, result } if Some(ep) == self.echo => {
                match result {
                    Ok(Completion::Received { msg, needs_reply }) => {
                        if msg.is_notify() {
                            self.notified += 1;
                        } else {
                            self.served += 1;
                        }
                        if needs_reply {
                            let _ = self.engine.reply(now, ep, msg.source, msg);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => println!("dvs: echo receive failed: {e:?}"),
                }
                let _ = self.engine.receive(now, ep, Endpoint::ANY, None);
            }
            Event::Done { ep, result } if self.bench.as_ref().is_some_and(|b| b.ep == ep) => {
                let vcopy = self.cfg.vcopy;
                let b = self.bench.as_mut().expect("checked");
                match (b.phase, result) {
                    (Phase::Sendrec, Ok(Completion::Replied(msg))) => {
                        if msg.u64_at(0) == Some(b.issued - 1) {
                            b.ok += 1;
                        } else {
                            println!(
                                "dvs: bench FAILED sendrec {}: reply payload differs",
                                b.issued - 1
                            );
                            b.mismatched += 1;
                        }
                        b.lat_us.push(now.as_micros().saturating_sub(b.sent_at));
                    }
                    (Phase::Sendrec, r) => {
                        let why = r
                            .err()
                            .map_or("UnexpectedAnswer".to_string(), |e| format!("{e:?}"));
                        println!(
                            "dvs: bench FAILED sendrec {} to {}: {why}",
                            b.issued - 1,
                            b.peer.0
                        );
                        *b.errors.entry(why).or_default() += 1;
                    }
                    (Phase::Push, Ok(_)) => {
                        b.push_us = now.as_micros() - b.vcopy_started;
                        b.phase = Phase::Pull;
                    }
                    (Phase::Pull, Ok(_)) => {
                        let pull_us = now.as_micros() - b.vcopy_started;
                        let buf = self.engine.buffer(ep).unwrap_or_default();
                        let half = vcopy as usize;
                        let exact = buf.len() == 2 * half && buf[..half] == buf[half..];
                        println!(
                            "dvs: bench vcopy bytes={vcopy} push_us={} pull_us={} push_mb_s={} pull_mb_s={} exact={exact}",
                            b.push_us,
                            pull_us,
                            vcopy / b.push_us.max(1),
                            vcopy / pull_us.max(1)
                        );
                        b.phase = Phase::Done;
                    }
                    (phase, r) => {
                        println!(
                            "dvs: bench FAILED vcopy {vcopy} bytes: {phase:?} {:?}",
                            r.err()
                        );
                        b.phase = Phase::Done;
                    }
                }
                self.bench_next();
            }
            Event::NotifyFailed { dst, error, .. } => {
                println!("dvs: bench FAILED notify to {}: {error:?}", dst.0)
            }
            Event::Done { .. } => {}
        }
    }

    fn progress(&self) {
        let st = self.engine.stats();
        println!(
            "dvs: stats echo_received={} echo_replied={} notify_received={} frames_in={} frames_out={} \
             duplicates={} retransmits={} migrated_resends={} notify_coalesced={}",
            self.served,
            self.served,
            self.notified,
            st.frames_in,
            st.frames_out,
            st.duplicates,
            st.retransmits,
            st.migrated_resends,
            st.notify_coalesced
        );
        if let Some(b) = &self.bench {
            if b.phase == Phase::Sendrec {
                println!(
                    "dvs: bench progress ok={} failed={} mismatched={} errors={:?}",
                    b.ok,
                    failed(b),
                    b.mismatched,
                    b.errors
                );
            }
        }
    }

    fn wrap(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; ETH_HEADER_LEN + frame.len()];
        let eth = EthernetHeader {
            dst: [0xff; 6],
            src: self.mac,
            ethertype: ETHERTYPE_M3IPC,
        };
        eth.emit(&mut out).expect("room for the header");
        out[ETH_HEADER_LEN..].copy_from_slice(frame);
        out
    }

    /// Answers ARP requests for our address; notes answers to our own probe.
    fn on_arp(&mut self, eth: &EthernetHeader, p: &[u8]) -> Option<Vec<u8>> {
        if p.len() < 28 || p[0..2] != [0, 1] || p[2..4] != [8, 0] {
            return None;
        }
        let op = u16::from_be_bytes([p[6], p[7]]);
        let tpa = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
        let spa = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
        if op == 2 && Some(spa) == self.cfg.arp {
            let mut sha = [0u8; 6];
            sha.copy_from_slice(&p[8..14]);
            self.arp_answer = Some(sha);
        }
        let me = self.cfg.ip?;
        (op == 1 && tpa == me).then(|| arp_frame(2, self.mac, me, eth.src, spa))
    }
}

fn arp_frame(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let dst = if op == 1 { [0xff; 6] } else { tha };
    let mut f = vec![0u8; ETH_HEADER_LEN];
    EthernetHeader {
        dst,
        src: sha,
        ethertype: ETHERTYPE_ARP,
    }
    .emit(&mut f)
    .expect("room");
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f.resize(60, 0);
    f
}

fn failed(b: &Bench) -> u64 {
    b.errors.values().sum()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn print_bench_done(b: &mut Bench, elapsed_us: u64) {
    b.lat_us.sort_unstable();
    if failed(b) == 0 && b.mismatched == 0 {
        println!(
            "dvs: bench sendrec n={} median_ns={} p99_ns={} ops_per_s={}",
            b.issued,
            percentile(&b.lat_us, 0.5) * 1000,
            percentile(&b.lat_us, 0.99) * 1000,
            b.issued * 1_000_000 / elapsed_us.max(1)
        );
    }
    println!(
        "dvs: bench summary n={} ok={} failed={} mismatched={} errors={:?}",
        b.issued,
        b.ok,
        failed(b),
        b.mismatched,
        b.errors
    );
}

/// Runs a fake instance on the instance's end of `port` until killed.
pub async fn run(port: PortKind, mac: [u8; 6], cmdline: &str) -> anyhow::Result<()> {
    let cfg = FakeConfig::parse(cmdline)?;
    let inc = cfg.inc.unwrap_or_else(|| {
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            / 100) as u32
    });
    let mut vm = open_with_retry(&port).await?;
    let engine = Engine::new(EngineConfig::new(DcId(cfg.dc), inc));
    let mut fake = Fake {
        cfg,
        mac,
        engine,
        start: std::time::Instant::now(),
        echo: None,
        served: 0,
        notified: 0,
        bench: None,
        arp_answer: None,
    };
    println!(
        "dvs: ready dc={} ep={:?} svc={:?} ip={:?} mac={} (host-side fake instance, not a VM)",
        fake.cfg.dc,
        fake.cfg.endpoints,
        fake.cfg.services,
        fake.cfg.ip,
        fmt_mac(&mac)
    );
    // Say hello on the LAN (a gratuitous ARP): the proxy learns the port is up.
    if let Some(ip) = fake.cfg.ip {
        vm.send(&arp_frame(1, mac, ip, [0; 6], ip)).await?;
    } else {
        vm.send(&arp_frame(
            1,
            mac,
            Ipv4Addr::UNSPECIFIED,
            [0; 6],
            Ipv4Addr::UNSPECIFIED,
        ))
        .await?;
    }
    fake.start_services()?;
    if let Some(target) = fake.cfg.arp {
        let me = fake.cfg.ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        for _ in 0..3 {
            vm.send(&arp_frame(1, mac, me, [0; 6], target)).await?;
        }
    }
    if let Some(as_ep) = fake.cfg.spoof {
        let dst = Endpoint(fake.cfg.peer.unwrap_or(1));
        let msg = [0u8; 60];
        let repr = FrameRepr {
            kind: Kind::Send,
            dc: DcId(fake.cfg.dc),
            flags: 0,
            src: Endpoint(as_ep),
            dst,
            seq: 1,
            aux: 0,
            code: 0,
            payload: &msg,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf)?;
        for _ in 0..10 {
            vm.send(&fake.wrap(&buf)).await?;
        }
        println!("dvs: spoof sent 10 frames as endpoint {as_ep} to {}", dst.0);
    }
    let mut rx = vec![0u8; 65536];
    let mut tx = vec![0u8; MAX_FRAME];
    let tick = Duration::from_secs(fake.cfg.stats.max(1));
    let mut next_tick = tokio::time::Instant::now() + tick;
    let arp_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut arp_reported = fake.cfg.arp.is_none();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let now = fake.now();
        while let Some(n) = fake.engine.poll_transmit(now, &mut tx) {
            let frame = fake.wrap(&tx[..n]);
            vm.send(&frame).await?;
        }
        while let Some(ev) = fake.engine.poll_event() {
            fake.on_event(ev);
        }
        if fake.engine.has_transmit() {
            continue;
        }
        if !arp_reported
            && (fake.arp_answer.is_some() || tokio::time::Instant::now() >= arp_deadline)
        {
            let target = fake.cfg.arp.unwrap_or(Ipv4Addr::UNSPECIFIED);
            match fake.arp_answer {
                Some(m) => println!("dvs: arp {target} is-at {}", fmt_mac(&m)),
                None => println!("dvs: arp {target} no answer"),
            }
            arp_reported = true;
        }
        let wake = fake
            .engine
            .poll_timeout()
            .map(|t| {
                let d = Duration::from_micros(t.as_micros().saturating_sub(fake.now().as_micros()));
                tokio::time::Instant::now() + d
            })
            .unwrap_or(next_tick)
            .min(next_tick)
            .min(if arp_reported {
                next_tick
            } else {
                arp_deadline
            });
        tokio::select! {
            r = vm.recv(&mut rx) => {
                let n = r.context("VM port closed")?;
                let Ok((eth, payload)) = EthernetHeader::parse(&rx[..n]) else { continue };
                match eth.ethertype {
                    ETHERTYPE_M3IPC => {
                        let now = fake.now();
                        fake.engine.handle_frame(now, payload);
                    }
                    ETHERTYPE_ARP => {
                        if let Some(answer) = fake.on_arp(&eth, payload) {
                            vm.send(&answer).await?;
                        }
                    }
                    _ => {}
                }
            }
            _ = term.recv() => {
                fake.progress();
                println!("dvs: stopping (SIGTERM)");
                return Ok(());
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = fake.now();
                fake.engine.handle_timeout(now);
                if tokio::time::Instant::now() >= next_tick {
                    next_tick += tick;
                    if fake.cfg.stats > 0 {
                        fake.progress();
                    }
                }
            }
        }
    }
}

async fn open_with_retry(port: &PortKind) -> anyhow::Result<VmEnd> {
    let mut last = None;
    for _ in 0..50 {
        match VmEnd::open(port).await {
            Ok(vm) => return Ok(vm),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no port"))
        .context(format!("opening {port:?}")))
}
