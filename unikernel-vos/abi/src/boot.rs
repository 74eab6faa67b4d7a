//! The boot configuration of a VOS instance: one typed value, built and checked by the host,
//! carried on the kernel command line as `dvs.cfg=<hex of postcard bytes>`.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// The command-line word that carries the configuration.
pub const CMDLINE_KEY: &str = "dvs.cfg";

/// Version of the encoding; the first byte of the encoded value. A guest refuses any other.
pub const BOOT_CONFIG_VERSION: u8 = 3;

/// Largest vcopy buffer a configuration may ask for (the guest's RAM bounds it further).
pub const MAX_BUFFER: u32 = 1 << 30;

/// Largest encoded configuration (bytes before hex), far above any real one.
pub const MAX_ENCODED: usize = 2048;

/// A service a VOS instance can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Service {
    /// HTTP/1.1 server on TCP port 80.
    Http,
    /// M3-IPC echo server on every endpoint but the bench client's; offers a vcopy buffer.
    Echo,
    /// M3-IPC benchmark client (the first endpoint) against `bench.peer`.
    IpcBench,
    /// UDP echo on port 7.
    UdpEcho,
    /// Block server over the instance's virtio-blk device, on `storage.disk`.
    Disk,
    /// File server on `storage.fs`, storing its blocks on the disk server at `storage.disk`.
    Fs,
    /// Tries a TCP connection to each `probe=` target and reports whether it was reached (a test's look
    /// at what a guest can reach; it serves nothing).
    NetProbe,
}

impl Service {
    /// Every service.
    pub const ALL: [Service; 7] = [
        Service::Http,
        Service::Echo,
        Service::IpcBench,
        Service::UdpEcho,
        Service::Disk,
        Service::Fs,
        Service::NetProbe,
    ];

    /// The name users write (`http`, `echo`, `ipc-bench`, `udp-echo`).
    pub const fn name(self) -> &'static str {
        match self {
            Service::Http => "http",
            Service::Echo => "echo",
            Service::IpcBench => "ipc-bench",
            Service::UdpEcho => "udp-echo",
            Service::Disk => "disk",
            Service::Fs => "fs",
            Service::NetProbe => "net-probe",
        }
    }

    /// The service of a name.
    pub fn parse(name: &str) -> Result<Service, ConfigError> {
        Service::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| ConfigError::UnknownService(name.into()))
    }

    /// True for services that speak IP (and so need an address).
    pub const fn needs_ip(self) -> bool {
        matches!(self, Service::Http | Service::UdpEcho | Service::NetProbe)
    }

    /// True for services that speak M3-IPC (and so need endpoints).
    pub const fn needs_endpoint(self) -> bool {
        matches!(
            self,
            Service::Echo | Service::IpcBench | Service::Disk | Service::Fs
        )
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An IPv4 address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cidr {
    /// The address.
    pub addr: [u8; 4],
    /// Prefix length (0..=32).
    pub prefix: u8,
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for o in out.iter_mut() {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl Cidr {
    /// Parses `A.B.C.D/P` (or `A.B.C.D`, taken as /24).
    pub fn parse(s: &str) -> Result<Cidr, ConfigError> {
        let bad = || ConfigError::BadValue {
            key: "ip",
            value: s.into(),
            why: "expected A.B.C.D/PREFIX",
        };
        let (a, p) = s.split_once('/').unwrap_or((s, "24"));
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Cidr {
            addr: parse_ipv4(a).ok_or_else(bad)?,
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.addr;
        write!(f, "{a}.{b}.{c}.{d}/{}", self.prefix)
    }
}

/// The IPv4 set-up of one NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address and prefix.
    pub cidr: Cidr,
    /// Default gateway.
    pub gateway: Option<[u8; 4]>,
}

/// The benchmark client's knobs (service `ipc-bench`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// The endpoint it calls.
    pub peer: Option<u32>,
    /// Sendrecs to run (`n=`).
    pub sendrecs: u32,
    /// Bytes to vcopy to the peer and back (`vcopy=`; 0 skips).
    pub vcopy: u32,
    /// Notifications to send back to back after the sendrecs (`notify_n=`; 0 skips).
    pub notifies: u32,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            peer: None,
            sendrecs: 1000,
            vcopy: 65536,
            notifies: 0,
        }
    }
}

/// Where the storage servers listen. In an instance that runs the service, its endpoint (one of
/// `endpoints`); elsewhere, the endpoint its clients call (`disk_ep=`, `fs_ep=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageConfig {
    /// The disk server's endpoint.
    pub disk: Option<u32>,
    /// The file server's endpoint.
    pub fs: Option<u32>,
}

/// Everything a VOS instance is told at boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    /// The DC the instance belongs to.
    pub dc: u16,
    /// Incarnation of this boot (grows from boot to boot; the high half of M3-IPC sequence numbers).
    pub incarnation: u32,
    /// Endpoints the instance binds.
    pub endpoints: Vec<u32>,
    /// Services it runs.
    pub services: Vec<Service>,
    /// The fabric NIC's address (first NIC).
    pub fabric: Option<IpConfig>,
    /// The publish NIC's address (second NIC).
    pub publish: Option<IpConfig>,
    /// Size of each echo endpoint's vcopy buffer (`buf=`).
    pub echo_buffer: u32,
    /// The benchmark client's knobs.
    pub bench: BenchConfig,
    /// Iterations of the in-guest local sendrec loop at boot (`local_n=`; 0 skips).
    pub local_sendrecs: u32,
    /// Seconds between counter records (`stats=`; 0: only on change, at most once a second).
    pub stats_interval_s: u32,
    /// How long the loop keeps polling after the last work before it halts (`spin_us=`).
    pub spin_us: u32,
    /// Where the disk and file servers listen.
    pub storage: StorageConfig,
    /// The web server's limits and timeouts.
    pub http: HttpConfig,
    /// The fabric NIC's MTU (`mtu=`): the largest Ethernet payload (M3-IPC header + data) it
    /// sends and receives, [`MIN_MTU`]..=[`MAX_MTU`]. Above 1500 only vcopy data frames grow;
    /// the host must set it only when the port behind the NIC carries frames that large.
    pub mtu: u32,
    /// Longest the loop polls, µs, before it halts while an answer from another instance is due
    /// (`call_spin_us=`; a sendrec, send or vcopy in flight): it polls for twice the recent
    /// median answer time, at least `spin_us`, at most this. 0 (the default): only `spin_us` —
    /// on a 2-core host the longer poll was bimodal guest to guest (0.75x or 2.5x the median),
    /// as two polling vCPUs starve the QEMU threads that carry their frames.
    pub call_spin_us: u32,
    /// What service net-probe tries to reach (`probe=A.B.C.D:PORT`, repeatable, at most [`MAX_PROBES`]).
    pub probes: Vec<ProbeTarget>,
}

/// A TCP address service net-probe tries to connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTarget {
    /// IPv4 address.
    pub addr: [u8; 4],
    /// TCP port.
    pub port: u16,
}

/// Most `probe=` targets one configuration may hold.
pub const MAX_PROBES: usize = 16;

/// Smallest fabric MTU (plain Ethernet).
pub const MIN_MTU: u32 = 1500;
/// Largest fabric MTU (the largest frame a virtual link carries).
pub const MAX_MTU: u32 = 65535;

/// The web server's connection slots and timeouts (`http_slots=`, `http_idle_ms=`,
/// `http_head_ms=`, `http_body_ms=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpConfig {
    /// Connections served at once (1..=[`MAX_HTTP_SLOTS`]); a few spare listening sockets come on top.
    pub slots: u32,
    /// A keep-alive connection with no request byte for this long is closed, ms.
    pub idle_ms: u32,
    /// A request head not complete this long after its first byte is answered 408, ms.
    pub head_ms: u32,
    /// A request body that makes no progress for this long is answered 408, ms.
    pub body_ms: u32,
}

/// Most web server connection slots a configuration may ask for.
pub const MAX_HTTP_SLOTS: u32 = 1024;

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            slots: 64,
            idle_ms: 10_000,
            head_ms: 5_000,
            body_ms: 5_000,
        }
    }
}

/// The `key=value` settings a user may add (`dvs run --arg`), with what they set.
pub const SETTINGS: &[(&str, &str)] = &[
    ("gw", "fabric default gateway (A.B.C.D)"),
    ("peer", "endpoint the ipc-bench client calls"),
    ("n", "sendrecs the ipc-bench client runs"),
    (
        "vcopy",
        "bytes the ipc-bench client vcopies to its peer and back",
    ),
    ("notify_n", "notifications the ipc-bench client sends"),
    ("buf", "bytes of each echo endpoint's vcopy buffer"),
    ("local_n", "iterations of the in-guest local sendrec loop"),
    ("stats", "seconds between counter records"),
    ("spin_us", "microseconds of polling before the loop halts"),
    (
        "call_spin_us",
        "most microseconds of polling before halting while a remote answer is due",
    ),
    ("mtu", "fabric NIC MTU, 1500..=65535 (larger vcopy frames)"),
    (
        "disk_ep",
        "endpoint of the disk server (served here with service disk)",
    ),
    (
        "fs_ep",
        "endpoint of the file server (served here with service fs)",
    ),
    ("http_slots", "connections the web server serves at once"),
    (
        "http_idle_ms",
        "ms a keep-alive connection may sit idle before it is closed",
    ),
    (
        "http_head_ms",
        "ms from a request's first byte to the end of its head (then 408)",
    ),
    (
        "http_body_ms",
        "ms a request body may make no progress (then 408)",
    ),
    (
        "probe",
        "A.B.C.D:PORT service net-probe tries to reach (repeatable)",
    ),
];

/// Why a configuration is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A setting word is not `key=value`.
    NotKeyValue(String),
    /// A setting key that does not exist.
    UnknownKey(String),
    /// A value that does not fit its key.
    BadValue {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        why: &'static str,
    },
    /// An unknown service name.
    UnknownService(String),
    /// Endpoint 0 or `ANY` (u32::MAX).
    ReservedEndpoint(u32),
    /// An endpoint listed twice.
    DuplicateEndpoint(u32),
    /// A rule between fields is broken.
    Inconsistent(&'static str),
    /// No `dvs.cfg=` word on the command line.
    Missing,
    /// More than one `dvs.cfg=` word.
    Repeated,
    /// The word is not hex or is too long.
    BadEncoding,
    /// An encoding version this build does not speak.
    Version(u8),
    /// The bytes do not decode to a configuration.
    Decode,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotKeyValue(w) => write!(f, "'{w}': expected key=value"),
            ConfigError::UnknownKey(k) => {
                write!(f, "unknown setting '{k}' (settings: ")?;
                for (i, (key, _)) in SETTINGS.iter().enumerate() {
                    write!(f, "{}{key}", if i > 0 { ", " } else { "" })?;
                }
                f.write_str(")")
            }
            ConfigError::BadValue { key, value, why } => write!(f, "{key}={value}: {why}"),
            ConfigError::UnknownService(s) => write!(
                f,
                "unknown service '{s}' (services: http, echo, ipc-bench, udp-echo)"
            ),
            ConfigError::ReservedEndpoint(e) => write!(f, "endpoint {e} is reserved"),
            ConfigError::DuplicateEndpoint(e) => write!(f, "endpoint {e} is given twice"),
            ConfigError::Inconsistent(why) => f.write_str(why),
            ConfigError::Missing => write!(f, "no {CMDLINE_KEY}= word on the command line"),
            ConfigError::Repeated => write!(f, "{CMDLINE_KEY}= is given more than once"),
            ConfigError::BadEncoding => write!(
                f,
                "{CMDLINE_KEY}= is not hex of at most {MAX_ENCODED} bytes"
            ),
            ConfigError::Version(v) => write!(
                f,
                "{CMDLINE_KEY}= has encoding version {v}, this VOS speaks {BOOT_CONFIG_VERSION}"
            ),
            ConfigError::Decode => {
                write!(f, "{CMDLINE_KEY}= does not decode to a boot configuration")
            }
        }
    }
}

fn num(key: &'static str, v: &str) -> Result<u32, ConfigError> {
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse::<u32>().ok(),
    };
    parsed.ok_or_else(|| ConfigError::BadValue {
        key,
        value: v.into(),
        why: "not a number in 0..=4294967295",
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl BootConfig {
    /// A configuration for DC `dc`, boot `incarnation`, with the defaults of every knob.
    pub fn new(dc: u16, incarnation: u32) -> BootConfig {
        BootConfig {
            dc,
            incarnation,
            endpoints: Vec::new(),
            services: Vec::new(),
            fabric: None,
            publish: None,
            echo_buffer: 16384,
            bench: BenchConfig::default(),
            local_sendrecs: 0,
            stats_interval_s: 0,
            spin_us: 300,
            storage: StorageConfig::default(),
            http: HttpConfig::default(),
            mtu: MIN_MTU,
            call_spin_us: 0,
            probes: Vec::new(),
        }
    }

    /// Applies one `key=value` setting (see [`SETTINGS`]).
    pub fn apply(&mut self, word: &str) -> Result<(), ConfigError> {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| ConfigError::NotKeyValue(word.into()))?;
        match k {
            "gw" => {
                let gw = parse_ipv4(v).ok_or_else(|| ConfigError::BadValue {
                    key: "gw",
                    value: v.into(),
                    why: "not an IPv4 address",
                })?;
                let fabric = self
                    .fabric
                    .as_mut()
                    .ok_or(ConfigError::Inconsistent("gw= needs a fabric address (ip)"))?;
                fabric.gateway = Some(gw);
            }
            "peer" => self.bench.peer = Some(num("peer", v)?),
            "n" => self.bench.sendrecs = num("n", v)?,
            "vcopy" => self.bench.vcopy = num("vcopy", v)?,
            "notify_n" => self.bench.notifies = num("notify_n", v)?,
            "buf" => self.echo_buffer = num("buf", v)?,
            "local_n" => self.local_sendrecs = num("local_n", v)?,
            "stats" => self.stats_interval_s = num("stats", v)?,
            "spin_us" => self.spin_us = num("spin_us", v)?,
            "call_spin_us" => self.call_spin_us = num("call_spin_us", v)?,
            "mtu" => self.mtu = num("mtu", v)?,
            "disk_ep" => self.storage.disk = Some(num("disk_ep", v)?),
            "fs_ep" => self.storage.fs = Some(num("fs_ep", v)?),
            "http_slots" => self.http.slots = num("http_slots", v)?,
            "http_idle_ms" => self.http.idle_ms = num("http_idle_ms", v)?,
            "http_head_ms" => self.http.head_ms = num("http_head_ms", v)?,
            "http_body_ms" => self.http.body_ms = num("http_body_ms", v)?,
            "probe" => {
                let bad = |why| ConfigError::BadValue {
                    key: "probe",
                    value: v.into(),
                    why,
                };
                let (addr, port) = v.rsplit_once(':').ok_or(bad("not A.B.C.D:PORT"))?;
                let addr = parse_ipv4(addr).ok_or(bad("not an IPv4 address"))?;
                let port = port.parse::<u16>().map_err(|_| bad("not a port number"))?;
                if self.probes.len() >= MAX_PROBES {
                    return Err(bad("more than 16 probe= targets"));
                }
                self.probes.push(ProbeTarget { addr, port });
            }
            _ => return Err(ConfigError::UnknownKey(k.into())),
        }
        Ok(())
    }

    /// Checks the rules between fields; the host calls it before booting, the guest after decoding.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, &ep) in self.endpoints.iter().enumerate() {
            if ep == 0 || ep == u32::MAX {
                return Err(ConfigError::ReservedEndpoint(ep));
            }
            if self.endpoints[..i].contains(&ep) {
                return Err(ConfigError::DuplicateEndpoint(ep));
            }
        }
        if self.services.is_empty() {
            return Err(ConfigError::Inconsistent(
                "no service to run (services: http, echo, ipc-bench, udp-echo)",
            ));
        }
        if self.services.iter().any(|s| s.needs_endpoint()) && self.endpoints.is_empty() {
            return Err(ConfigError::Inconsistent(
                "services echo and ipc-bench need at least one endpoint",
            ));
        }
        if self.services.contains(&Service::NetProbe) && self.probes.is_empty() {
            return Err(ConfigError::Inconsistent(
                "service net-probe needs probe=A.B.C.D:PORT (one or more)",
            ));
        }
        if self.services.contains(&Service::IpcBench) && self.bench.peer.is_none() {
            return Err(ConfigError::Inconsistent(
                "service ipc-bench needs peer=<endpoint>",
            ));
        }
        if self.services.iter().any(|s| s.needs_ip())
            && self.fabric.is_none()
            && self.publish.is_none()
        {
            return Err(ConfigError::Inconsistent(
                "services http and udp-echo need an IP address (ip, or a published port)",
            ));
        }
        for (service, ep, key) in [
            (Service::Disk, self.storage.disk, "disk_ep"),
            (Service::Fs, self.storage.fs, "fs_ep"),
        ] {
            if !self.runs(service) {
                continue;
            }
            match ep {
                Some(ep) if self.endpoints.contains(&ep) => {}
                Some(_) => {
                    return Err(ConfigError::Inconsistent(match key {
                        "disk_ep" => {
                            "service disk: disk_ep must be one of the instance's endpoints"
                        }
                        _ => "service fs: fs_ep must be one of the instance's endpoints",
                    }))
                }
                None => {
                    return Err(ConfigError::Inconsistent(match key {
                        "disk_ep" => "service disk needs disk_ep=<one of its endpoints>",
                        _ => "service fs needs fs_ep=<one of its endpoints>",
                    }))
                }
            }
        }
        if self.runs(Service::Http) && self.storage.fs.is_some() && self.http_endpoint().is_none() {
            return Err(ConfigError::Inconsistent(
                "service http with fs_ep= needs an endpoint of its own to call the file server from (one that is not disk_ep, fs_ep or the ipc-bench client's)",
            ));
        }
        if self.runs(Service::Fs) && self.storage.disk.is_none() {
            return Err(ConfigError::Inconsistent(
                "service fs needs disk_ep=<the disk server's endpoint>",
            ));
        }
        if self.http.slots == 0 || self.http.slots > MAX_HTTP_SLOTS {
            return Err(ConfigError::BadValue {
                key: "http_slots",
                value: format!("{}", self.http.slots),
                why: "not in 1..=1024",
            });
        }
        for (key, v) in [
            ("http_idle_ms", self.http.idle_ms),
            ("http_head_ms", self.http.head_ms),
            ("http_body_ms", self.http.body_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::BadValue {
                    key,
                    value: format!("{v}"),
                    why: "a timeout of 0 ms would close every connection at once",
                });
            }
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(ConfigError::BadValue {
                key: "mtu",
                value: format!("{}", self.mtu),
                why: "not in 1500..=65535",
            });
        }
        for (key, v) in [("buf", self.echo_buffer), ("vcopy", self.bench.vcopy)] {
            if v > MAX_BUFFER {
                return Err(ConfigError::BadValue {
                    key,
                    value: format!("{v}"),
                    why: "larger than 1 GiB",
                });
            }
        }
        Ok(())
    }

    /// Whether the instance serves `s`.
    pub fn runs(&self, s: Service) -> bool {
        self.services.contains(&s)
    }

    /// The endpoint the web server calls the file server (`storage.fs`) from, keeping its files
    /// there: with service http and `fs_ep=` set, the first of `endpoints` that is not the
    /// ipc-bench client's (the first, with ipc-bench), `disk_ep` or `fs_ep`. `None` otherwise
    /// (files in RAM).
    pub fn http_endpoint(&self) -> Option<u32> {
        if !self.runs(Service::Http) {
            return None;
        }
        let fs = self.storage.fs?;
        let skip = usize::from(self.runs(Service::IpcBench));
        self.endpoints
            .iter()
            .skip(skip)
            .copied()
            .find(|&e| e != fs && Some(e) != self.storage.disk)
    }

    /// The encoded value: version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = alloc::vec![BOOT_CONFIG_VERSION];
        // Serialising into a Vec cannot fail for these types.
        if let Ok(body) = postcard::to_allocvec(self) {
            out.extend_from_slice(&body);
        }
        out
    }

    /// Decodes and validates an encoded value.
    pub fn decode(bytes: &[u8]) -> Result<BootConfig, ConfigError> {
        let (&v, body) = bytes.split_first().ok_or(ConfigError::Decode)?;
        if v != BOOT_CONFIG_VERSION {
            return Err(ConfigError::Version(v));
        }
        let (cfg, rest): (BootConfig, &[u8]) =
            postcard::take_from_bytes(body).map_err(|_| ConfigError::Decode)?;
        if !rest.is_empty() {
            return Err(ConfigError::Decode);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The kernel command-line word `dvs.cfg=<hex>`.
    pub fn to_cmdline_word(&self) -> String {
        let bytes = self.encode();
        let mut s = String::with_capacity(CMDLINE_KEY.len() + 1 + 2 * bytes.len());
        s.push_str(CMDLINE_KEY);
        s.push('=');
        for b in bytes {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    /// Finds, decodes and validates the `dvs.cfg=` word of a kernel command line. Other words
    /// (QEMU's `virtio_mmio.device=`) are left to their readers.
    pub fn from_cmdline(cmdline: &str) -> Result<BootConfig, ConfigError> {
        let prefix = CMDLINE_KEY.len() + 1;
        let mut words = cmdline.split_ascii_whitespace().filter(|w| {
            w.len() >= prefix && w.starts_with(CMDLINE_KEY) && w.as_bytes()[prefix - 1] == b'='
        });
        let word = words.next().ok_or(ConfigError::Missing)?;
        if words.next().is_some() {
            return Err(ConfigError::Repeated);
        }
        let hex = &word.as_bytes()[prefix..];
        if hex.len() % 2 != 0 || hex.len() > 2 * MAX_ENCODED {
            return Err(ConfigError::BadEncoding);
        }
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        for pair in hex.chunks_exact(2) {
            let (hi, lo) = (hex_nibble(pair[0]), hex_nibble(pair[1]));
            match (hi, lo) {
                (Some(h), Some(l)) => bytes.push(h << 4 | l),
                _ => return Err(ConfigError::BadEncoding),
            }
        }
        BootConfig::decode(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn probe_targets_are_typed_and_bounded() {
        let mut c = BootConfig::new(1, 1);
        c.services = vec![Service::NetProbe];
        c.fabric = Some(IpConfig {
            cidr: Cidr {
                addr: [10, 1, 0, 3],
                prefix: 24,
            },
            gateway: None,
        });
        assert!(matches!(c.validate(), Err(ConfigError::Inconsistent(_))));
        c.apply("probe=10.1.0.2:80").unwrap();
        assert_eq!(
            c.probes,
            vec![ProbeTarget {
                addr: [10, 1, 0, 2],
                port: 80
            }]
        );
        c.validate().unwrap();
        for bad in [
            "probe=10.1.0.2",
            "probe=10.1.0:80",
            "probe=10.1.0.2:70000",
            "probe=x:1",
        ] {
            assert!(
                matches!(
                    c.apply(bad),
                    Err(ConfigError::BadValue { key: "probe", .. })
                ),
                "{bad}"
            );
        }
        for _ in 1..MAX_PROBES {
            c.apply("probe=1.2.3.4:5").unwrap();
        }
        assert!(c.apply("probe=1.2.3.4:5").is_err(), "past MAX_PROBES");
    }

    fn web() -> BootConfig {
        let mut c = BootConfig::new(3, 42);
        c.endpoints = vec![10, 11];
        c.services = vec![Service::Http, Service::Echo];
        c.fabric = Some(IpConfig {
            cidr: Cidr::parse("10.1.0.2/24").unwrap(),
            gateway: None,
        });
        c
    }

    #[test]
    fn round_trips_through_the_command_line() {
        let mut c = web();
        c.apply("gw=10.1.0.1").unwrap();
        c.apply("stats=1").unwrap();
        let line = alloc::format!(
            "virtio_mmio.device=512@0xfeb00000:12 {} acpi=off",
            c.to_cmdline_word()
        );
        assert_eq!(BootConfig::from_cmdline(&line), Ok(c));
    }

    #[test]
    fn refuses_what_is_not_ours() {
        assert_eq!(
            BootConfig::from_cmdline("dc=1 ep=3"),
            Err(ConfigError::Missing)
        );
        let w = web().to_cmdline_word();
        assert_eq!(
            BootConfig::from_cmdline(&alloc::format!("{w} {w}")),
            Err(ConfigError::Repeated)
        );
        assert_eq!(
            BootConfig::from_cmdline("dvs.cfg=zz"),
            Err(ConfigError::BadEncoding)
        );
        assert_eq!(
            BootConfig::from_cmdline("dvs.cfg=0"),
            Err(ConfigError::BadEncoding)
        );
        assert_eq!(
            BootConfig::from_cmdline("dvs.cfg=07"),
            Err(ConfigError::Version(7))
        );
        assert_eq!(
            BootConfig::from_cmdline("dvs.cfg=03ff"),
            Err(ConfigError::Decode)
        );
        let mut long = w.clone();
        long.push_str("00");
        assert_eq!(BootConfig::from_cmdline(&long), Err(ConfigError::Decode));
    }

    #[test]
    fn decoding_validates() {
        let mut c = web();
        c.endpoints = vec![10, 10];
        assert_eq!(
            BootConfig::decode(&c.encode()),
            Err(ConfigError::DuplicateEndpoint(10))
        );
        c.endpoints = vec![0];
        assert_eq!(c.validate(), Err(ConfigError::ReservedEndpoint(0)));
        let mut c = web();
        c.fabric = None;
        assert!(matches!(c.validate(), Err(ConfigError::Inconsistent(_))));
        let mut c = web();
        c.services.push(Service::IpcBench);
        assert!(c.validate().is_err(), "ipc-bench without a peer");
        c.apply("peer=20").unwrap();
        assert_eq!(c.validate(), Ok(()));
        c.apply("buf=2147483648").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn settings_are_checked() {
        let mut c = web();
        assert!(matches!(c.apply("n"), Err(ConfigError::NotKeyValue(_))));
        let e = c.apply("bogus=1").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown setting 'bogus' (settings: gw, peer"),
            "{e}"
        );
        assert!(c.apply("n=-1").is_err());
        assert!(c.apply("gw=10.1.0").is_err());
        c.apply("n=0x10").unwrap();
        assert_eq!(c.bench.sendrecs, 16);
        let mut no_ip = BootConfig::new(1, 1);
        assert!(no_ip.apply("gw=10.0.0.1").is_err());
    }

    #[test]
    fn http_settings_are_checked() {
        let mut c = web();
        assert_eq!(c.http, HttpConfig::default());
        c.apply("http_slots=4").unwrap();
        c.apply("http_body_ms=700").unwrap();
        c.apply("mtu=9000").unwrap();
        c.apply("call_spin_us=800").unwrap();
        assert_eq!((c.mtu, c.call_spin_us), (9000, 800));
        assert!(c.validate().is_ok());
        for bad in ["mtu=1499", "mtu=65536"] {
            let mut d = c.clone();
            d.apply(bad).unwrap();
            assert!(
                matches!(d.validate(), Err(ConfigError::BadValue { key: "mtu", .. })),
                "{bad} is refused"
            );
        }
        assert_eq!((c.http.slots, c.http.body_ms), (4, 700));
        let line = c.to_cmdline_word();
        assert_eq!(BootConfig::from_cmdline(&line), Ok(c.clone()));
        for bad in [
            "http_slots=0",
            "http_slots=1025",
            "http_idle_ms=0",
            "http_head_ms=0",
        ] {
            let mut d = c.clone();
            d.apply(bad).unwrap();
            assert!(
                matches!(d.validate(), Err(ConfigError::BadValue { .. })),
                "{bad}: {:?}",
                d.validate()
            );
        }
        assert!(c.apply("http_slots=x").is_err());
    }

    #[test]
    fn storage_endpoints_are_checked() {
        let mut c = BootConfig::new(1, 1);
        c.endpoints = vec![30, 31];
        c.services = vec![Service::Disk];
        assert!(c.validate().is_err(), "disk without disk_ep");
        c.apply("disk_ep=32").unwrap();
        assert!(c.validate().is_err(), "disk_ep not ours");
        c.apply("disk_ep=30").unwrap();
        assert_eq!(c.validate(), Ok(()));
        c.services.push(Service::Fs);
        assert!(c.validate().is_err(), "fs without fs_ep");
        c.apply("fs_ep=31").unwrap();
        assert_eq!(c.validate(), Ok(()));
        let mut remote = BootConfig::new(1, 1);
        remote.endpoints = vec![40];
        remote.services = vec![Service::Fs];
        remote.apply("fs_ep=40").unwrap();
        assert!(remote.validate().is_err(), "fs needs a disk server");
        remote.apply("disk_ep=30").unwrap();
        assert_eq!(remote.validate(), Ok(()));
    }

    #[test]
    fn http_on_fs_needs_its_own_endpoint() {
        let mut c = BootConfig::new(1, 1);
        c.endpoints = vec![30, 31];
        c.services = vec![Service::Http, Service::Disk, Service::Fs];
        c.fabric = Some(IpConfig {
            cidr: Cidr::parse("10.1.0.2/24").unwrap(),
            gateway: None,
        });
        c.apply("disk_ep=30").unwrap();
        c.apply("fs_ep=31").unwrap();
        assert_eq!(c.http_endpoint(), None);
        assert!(
            c.validate().is_err(),
            "http on fs without an endpoint of its own"
        );
        c.endpoints.push(32);
        assert_eq!(c.http_endpoint(), Some(32));
        assert_eq!(c.validate(), Ok(()));
        // Elsewhere: fs served by another instance, http calls it from its only endpoint.
        let mut web = BootConfig::new(1, 1);
        web.endpoints = vec![40];
        web.services = vec![Service::Http];
        web.fabric = c.fabric;
        web.apply("fs_ep=41").unwrap();
        assert_eq!(web.http_endpoint(), Some(40));
        assert_eq!(web.validate(), Ok(()));
        // Without fs_ep the files stay in RAM and no endpoint is needed.
        web.storage.fs = None;
        web.endpoints.clear();
        assert_eq!(web.http_endpoint(), None);
        assert_eq!(web.validate(), Ok(()));
    }

    #[test]
    fn cidrs_and_services_parse() {
        assert_eq!(Cidr::parse("10.1.0.2").unwrap().prefix, 24);
        assert_eq!(
            Cidr::parse("10.1.0.2/16").unwrap().to_string(),
            "10.1.0.2/16"
        );
        for bad in [
            "10.1.0.2/33",
            "10.1.0",
            "10.1.0.256",
            "a.b.c.d",
            "10.1.0.2/x",
            "1.2.3.4.5",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        for s in Service::ALL {
            assert_eq!(Service::parse(s.name()), Ok(s));
        }
        assert!(Service::parse("ftp").is_err());
    }

    proptest::proptest! {
        #[test]
        fn hostile_words_never_panic(s in "\\PC{0,300}") {
            let _ = BootConfig::from_cmdline(&s);
            let _ = BootConfig::from_cmdline(&alloc::format!("dvs.cfg={s}"));
        }

        #[test]
        fn hostile_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = BootConfig::decode(&b);
            let mut v = vec![BOOT_CONFIG_VERSION];
            v.extend_from_slice(&b);
            let _ = BootConfig::decode(&v);
        }
    }
}
