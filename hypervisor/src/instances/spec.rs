//! What an instance is: its spec as users give it, its state and view as the API shows them, and the pure
//! functions around them (name check, MAC address, the VOS boot configuration).

use dvs_vos_abi::control::{Counters, Ready, Report};
use dvs_vos_abi::{BootConfig, Cidr, IpConfig, Service};
use serde::{Deserialize, Serialize};

use crate::config::BackendKind;
use crate::images::ImageError;
use crate::volumes::{VolumeError, VolumeRequest};

/// A host TCP port (on `addr`) published as a guest TCP port: the node's publish gateway listens on
/// `addr:host` and carries each client to the guest over the instance's publish NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The host address listened on (absent in older records: 127.0.0.1).
    #[serde(default = "Publish::default_addr")]
    pub addr: std::net::Ipv4Addr,
    /// Host TCP port.
    pub host: u16,
    /// Guest TCP port.
    pub guest: u16,
}

impl Publish {
    /// Where a port is published unless an address is given: the host's loopback.
    pub const DEFAULT_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

    fn default_addr() -> std::net::Ipv4Addr {
        Publish::DEFAULT_ADDR
    }

    /// `addr:host` as a socket address.
    pub fn listen(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from((self.addr, self.host))
    }
}

impl std::fmt::Display for Publish {
    /// `HOST:GUEST`, or `ADDR:HOST:GUEST` when the address is not the default.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.addr != Publish::DEFAULT_ADDR {
            write!(f, "{}:", self.addr)?;
        }
        write!(f, "{}:{}", self.host, self.guest)
    }
}

impl std::str::FromStr for Publish {
    type Err = String;
    /// `[ADDR:]HOST:GUEST`: ADDR an IPv4 address (default 127.0.0.1), HOST and GUEST TCP ports 1-65535.
    fn from_str(s: &str) -> Result<Publish, String> {
        let (rest, g) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("'{s}': expected [ADDR:]HOST:GUEST"))?;
        let (a, h) = match rest.rsplit_once(':') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let port = |p: &str| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("'{p}' in '{s}' is not a port (1-65535)")),
            Ok(n) => Ok(n),
        };
        let addr = match a {
            None => Publish::DEFAULT_ADDR,
            Some(a) => a
                .parse()
                .map_err(|_| format!("'{a}' in '{s}' is not an IPv4 address"))?,
        };
        Ok(Publish {
            addr,
            host: port(h)?,
            guest: port(g)?,
        })
    }
}

/// The publish NIC's address (the guest's end of the publish link).
pub const PUBLISH_IP: &str = "10.0.2.15/24";
/// The publish NIC's gateway: the node's publish gateway on the link.
pub const PUBLISH_GW: [u8; 4] = [10, 0, 2, 2];

/// What to do when an instance's machine exits by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Leave it exited or failed.
    #[default]
    Never,
    /// Boot it again if it failed (non-zero exit or killed).
    OnFailure,
    /// Boot it again whenever it exits.
    Always,
}

/// What a user asks for: one instance of an image in a DC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Unique on the node: `[a-z0-9-]`, at most 32 characters.
    pub name: String,
    /// Image reference: sha256 (or a prefix), `name:version` or `name`.
    pub image: String,
    /// DC number.
    pub dc: u16,
    /// Endpoints the instance holds.
    #[serde(default)]
    pub endpoints: Vec<u32>,
    /// Services to run (`http`, `echo`, `ipc-bench`, `udp-echo`).
    #[serde(default)]
    pub services: Vec<String>,
    /// Memory in MiB (default: the image's).
    #[serde(default)]
    pub memory: Option<u32>,
    /// Fabric IPv4 address with prefix (`10.1.0.2/24`).
    #[serde(default)]
    pub ip: Option<String>,
    /// Settings of the boot configuration, `key=value` (`peer=20`, `n=1000`...; see `dvs_vos_abi::boot::SETTINGS`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Host TCP ports published as guest TCP ports (`[ADDR:]HOST:GUEST`).
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Run this instance with another backend than the node's (`process`: the node's `process_program`, for
    /// test doubles).
    #[serde(default)]
    pub backend: Option<BackendKind>,
    /// Arguments of the process program (a role double's role and knobs); only with the process backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub process_args: Vec<String>,
    /// Volumes of its DC on this node, attached as virtio-blk drives in this order (created on first use,
    /// kept until `dvs volume rm`; see `crate::volumes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeRequest>,
    /// Host limits of its machine where the node confines instances (see [`LimitsSpec`]).
    #[serde(default, skip_serializing_if = "LimitsSpec::is_default")]
    pub limits: LimitsSpec,
}

/// Host limits of an instance's machine (its cgroup), where the node confines instances; each one
/// absent takes its default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Memory of the machine process, MiB: guest RAM plus QEMU's own (default: the guest's memory
    /// plus [`LimitsSpec::OVERHEAD_MIB`]). Past it the kernel kills the machine, and `dvs ps` says so.
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// CPU, percent of one core (default 150: the vCPU and QEMU's I/O thread).
    #[serde(default)]
    pub cpu_percent: Option<u32>,
    /// Processes and threads (default 128).
    #[serde(default)]
    pub pids: Option<u32>,
}

impl LimitsSpec {
    /// What QEMU itself needs beside guest RAM, MiB (a microvm VOS: about 20).
    pub const OVERHEAD_MIB: u32 = 96;

    /// True when every limit takes its default.
    pub fn is_default(&self) -> bool {
        *self == LimitsSpec::default()
    }

    /// The limits of a machine with `guest_mib` of RAM, or why they cannot be.
    pub fn resolve(&self, guest_mib: u32) -> Result<dvs_instance::Limits, String> {
        let memory = self
            .memory_mib
            .unwrap_or(guest_mib.saturating_add(Self::OVERHEAD_MIB));
        let min = guest_mib.saturating_add(16);
        if memory < min {
            return Err(format!(
                "limits.memory_mib = {memory}: at least the guest's {guest_mib} MiB and 16 MiB for QEMU ({min})"
            ));
        }
        let cpu = self.cpu_percent.unwrap_or(150);
        if !(1..=6400).contains(&cpu) {
            return Err(format!("limits.cpu_percent = {cpu}: from 1 to 6400"));
        }
        let pids = self.pids.unwrap_or(128);
        if !(16..=4096).contains(&pids) {
            return Err(format!("limits.pids = {pids}: from 16 to 4096"));
        }
        Ok(dvs_instance::Limits {
            memory_mib: u64::from(memory),
            cpu_percent: cpu,
            pids,
        })
    }
}

impl InstanceSpec {
    /// A spec of instance `name` of `image` in DC `dc`, with no endpoints, services or settings.
    pub fn new(name: &str, image: &str, dc: u16) -> InstanceSpec {
        InstanceSpec {
            name: name.into(),
            image: image.into(),
            dc,
            endpoints: Vec::new(),
            services: Vec::new(),
            memory: None,
            ip: None,
            args: Vec::new(),
            publish: Vec::new(),
            restart: RestartPolicy::Never,
            backend: None,
            process_args: Vec::new(),
            volumes: Vec::new(),
            limits: LimitsSpec::default(),
        }
    }
}

/// A request to boot an instance; `takeover_gen` marks the new home of a migrating instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRequest {
    /// The instance.
    pub spec: InstanceSpec,
    /// Set by a migration: bind the endpoints with at least this generation, although another node holds them.
    #[serde(default)]
    pub takeover_gen: Option<u64>,
}

/// Where an instance is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being booted: the machine runs but has not sent its Ready record yet.
    Starting,
    /// The machine sent its Ready record (on its control channel; console text never counts).
    Running,
    /// Stopped on request.
    Stopped,
    /// The machine exited by itself with success.
    Exited,
    /// The machine failed (non-zero exit, killed, or could not start).
    Failed,
}

/// Reports kept in [`GuestView::reports`].
pub const REPORTS_KEPT: usize = 64;

/// What the guest told the host on its control channel (the current boot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestView {
    /// Its Ready record, once sent.
    pub ready: Option<Ready>,
    /// Its latest counters.
    pub counters: Option<Counters>,
    /// Its reports (benchmark results, failures), the last 64.
    pub reports: Vec<Report>,
    /// Why it failed, if it sent a Fatal record.
    pub fatal: Option<String>,
    /// Control frames that did not decode.
    pub bad_records: u64,
}

/// An instance as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceView {
    /// The spec.
    pub spec: InstanceSpec,
    /// The node holding it.
    pub node: u16,
    /// Resolved image sha256.
    pub image_sha256: String,
    /// State.
    pub state: State,
    /// Why it last exited or failed.
    pub last_exit: Option<String>,
    /// Times booted since the daemon started.
    pub boots: u32,
    /// Machine process id.
    pub pid: Option<u32>,
    /// When its current machine started, Unix seconds (none while it has none): its uptime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// Fabric MAC.
    pub mac: String,
    /// The kernel command line of the last boot (`dvs.cfg=<hex>`).
    pub cmdline: String,
    /// The boot configuration of the last boot.
    pub boot_config: Option<BootConfig>,
    /// Binding generation of its endpoints.
    pub gen: u64,
    /// Which backend runs it.
    pub backend: String,
    /// What the guest reported on its control channel.
    pub guest: GuestView,
    /// The publish gateway's counters, for an instance with published ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<dvs_publish::Counters>,
    /// What its machine uses on the host now (CPU time, resident memory), while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<dvs_instance::Usage>,
    /// Revision of this view on its node: grows on every change (`GET /v1/instances/{name}?wait_after=REV`).
    pub rev: u64,
}

/// Why an instance request failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Bad spec.
    #[error("{0}")]
    Invalid(String),
    /// The boot configuration the spec makes is refused.
    #[error("instance '{name}': {why}")]
    BootConfig {
        /// The instance.
        name: String,
        /// What is wrong, with the value.
        why: String,
    },
    /// Name in use on this node.
    #[error("an instance named '{0}' already exists on this node")]
    NameTaken(String),
    /// A published port cannot be listened on (in use on this node).
    #[error("instance '{name}': {why}")]
    PortTaken {
        /// The instance.
        name: String,
        /// Which address and why.
        why: String,
    },
    /// Endpoint held elsewhere.
    #[error("endpoint {ep} of DC {dc} is taken ({holder})")]
    EndpointTaken {
        /// DC.
        dc: u16,
        /// Endpoint.
        ep: u32,
        /// Who holds it.
        holder: String,
    },
    /// DC unknown or not on this node.
    #[error("{0}")]
    Dc(String),
    /// The instance would take its DC past the DC's quota on this node.
    #[error("{0}")]
    Quota(String),
    /// No such instance.
    #[error("no instance '{0}' on this node")]
    NotFound(String),
    /// Image problem.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Volume problem (bad request, attached elsewhere, another size).
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

pub(crate) fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A MAC address for an instance: locally administered, derived from DC and name (stable across boots).
pub(crate) fn mac_for(dc: u16, name: &str) -> [u8; 6] {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let [a, b, c, ..] = h.to_be_bytes();
    [0x02, 0x64, dc as u8, a, b, c]
}

/// The VOS boot configuration of `spec` for boot `inc`: endpoints, services, addresses, then the user's
/// `key=value` settings. `check` validates the rules between fields (a VOS refuses a configuration that
/// breaks them; role doubles run by the process backend are not held to them).
pub fn boot_config(s: &InstanceSpec, inc: u32, check: bool) -> Result<BootConfig, InstanceError> {
    let bad = |why: String| InstanceError::BootConfig {
        name: s.name.clone(),
        why,
    };
    let mut c = BootConfig::new(s.dc, inc);
    c.endpoints = s.endpoints.clone();
    for name in &s.services {
        let svc = Service::parse(name).map_err(|e| bad(format!("services: {e}")))?;
        if !c.services.contains(&svc) {
            c.services.push(svc);
        }
    }
    if let Some(ip) = &s.ip {
        let cidr = Cidr::parse(ip).map_err(|e| bad(format!("ip: {e}")))?;
        c.fabric = Some(IpConfig {
            cidr,
            gateway: None,
        });
    }
    if !s.publish.is_empty() {
        c.publish = Some(IpConfig {
            cidr: Cidr::parse(PUBLISH_IP).map_err(|e| bad(e.to_string()))?,
            gateway: Some(PUBLISH_GW),
        });
    }
    for word in &s.args {
        c.apply(word).map_err(|e| bad(format!("args: {e}")))?;
    }
    if check {
        c.validate().map_err(|e| bad(e.to_string()))?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            name: "web".into(),
            image: "vos".into(),
            dc: 3,
            endpoints: vec![10, 11],
            services: vec!["http".into(), "echo".into()],
            memory: None,
            ip: Some("10.1.0.2/24".into()),
            args: vec!["stats=1".into()],
            publish: vec![Publish {
                addr: Publish::DEFAULT_ADDR,
                host: 8080,
                guest: 80,
            }],
            restart: RestartPolicy::OnFailure,
            backend: None,
            process_args: vec![],
            volumes: vec![],
            limits: LimitsSpec::default(),
        }
    }

    #[test]
    fn limits_take_defaults_and_refuse_what_cannot_run() {
        let l = LimitsSpec::default().resolve(64).unwrap();
        assert_eq!(
            (l.memory_mib, l.cpu_percent, l.pids),
            (64 + u64::from(LimitsSpec::OVERHEAD_MIB), 150, 128)
        );
        let mut s = LimitsSpec {
            memory_mib: Some(70),
            ..Default::default()
        };
        assert!(s.resolve(64).unwrap_err().contains("at least"));
        s.memory_mib = Some(80);
        assert_eq!(s.resolve(64).unwrap().memory_mib, 80);
        s.cpu_percent = Some(0);
        assert!(s.resolve(64).unwrap_err().contains("cpu_percent"));
        s.cpu_percent = None;
        s.pids = Some(8);
        assert!(s.resolve(64).unwrap_err().contains("pids"));
        let toml: LimitsSpec = serde_json::from_str(r#"{"memory_mib": 128}"#).unwrap();
        assert_eq!(toml.memory_mib, Some(128));
        assert!(serde_json::from_str::<LimitsSpec>(r#"{"memory": 1}"#).is_err());
    }

    #[test]
    fn the_boot_config_is_the_spec() {
        let c = boot_config(&spec(), 42, true).unwrap();
        assert_eq!((c.dc, c.incarnation), (3, 42));
        assert_eq!(c.endpoints, vec![10, 11]);
        assert_eq!(c.services, vec![Service::Http, Service::Echo]);
        assert_eq!(c.fabric.unwrap().cidr.to_string(), "10.1.0.2/24");
        let p = c.publish.unwrap();
        assert_eq!(
            (p.cidr.to_string(), p.gateway),
            ("10.0.2.15/24".into(), Some([10, 0, 2, 2]))
        );
        assert_eq!(c.stats_interval_s, 1);
        assert_eq!(BootConfig::from_cmdline(&c.to_cmdline_word()).unwrap(), c);
    }

    #[test]
    fn bad_settings_are_refused_with_the_value() {
        let mut s = spec();
        s.args = vec!["bogus=1".into()];
        let e = boot_config(&s, 1, true).unwrap_err().to_string();
        assert!(
            e.contains("instance 'web'") && e.contains("unknown setting 'bogus'"),
            "{e}"
        );
        s.args = vec!["n=lots".into()];
        let e = boot_config(&s, 1, true).unwrap_err().to_string();
        assert!(e.contains("n=lots"), "{e}");
        s.args = vec![];
        s.services.push("ftp".into());
        let e = boot_config(&s, 1, true).unwrap_err().to_string();
        assert!(e.contains("unknown service 'ftp'"), "{e}");
        s.services = vec!["ipc-bench".into()];
        let e = boot_config(&s, 1, true).unwrap_err().to_string();
        assert!(e.contains("peer="), "{e}");
        // A role double is not held to the VOS's rules between fields, only to well-formed values.
        s.services = vec![];
        assert!(boot_config(&s, 1, false).is_ok());
        s.ip = Some("10.1.0".into());
        assert!(boot_config(&s, 1, false).is_err());
    }

    #[test]
    fn macs_are_stable_local_and_per_dc() {
        let a = mac_for(3, "web");
        assert_eq!(a, mac_for(3, "web"));
        assert_eq!(a[0] & 0x03, 0x02, "locally administered unicast");
        assert_ne!(a, mac_for(4, "web"));
        assert_ne!(a, mac_for(3, "web2"));
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("echo-2"));
        assert!(!valid_name("Echo"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(33)));
    }

    #[test]
    fn specs_round_trip_as_json() {
        let json = serde_json::to_string(&spec()).unwrap();
        assert_eq!(serde_json::from_str::<InstanceSpec>(&json).unwrap(), spec());
        assert!(serde_json::from_str::<InstanceSpec>(
            r#"{"name":"x","image":"v","dc":1,"bogus":1}"#
        )
        .is_err());
    }

    #[test]
    fn publish_takes_an_optional_address() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!((p.addr, p.host, p.guest), (Publish::DEFAULT_ADDR, 8080, 80));
        assert_eq!(p.to_string(), "8080:80");
        let p: Publish = "0.0.0.0:8080:80".parse().unwrap();
        assert_eq!(p.listen().to_string(), "0.0.0.0:8080");
        assert_eq!(p.to_string(), "0.0.0.0:8080:80");
        for (bad, want) in [
            ("8080", "expected [ADDR:]HOST:GUEST"),
            ("0:80", "'0' in '0:80' is not a port"),
            ("8080:x", "'x' in '8080:x' is not a port"),
            (
                "1.2.3:8080:80",
                "'1.2.3' in '1.2.3:8080:80' is not an IPv4 address",
            ),
            ("::1:8080:80", "is not an IPv4 address"),
            ("a:b:8080:80", "is not an IPv4 address"),
        ] {
            let e = bad.parse::<Publish>().unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        // A record written before the address existed reads as the loopback.
        let old: Publish = serde_json::from_str(r#"{"host":8080,"guest":80}"#).unwrap();
        assert_eq!(old.addr, Publish::DEFAULT_ADDR);
    }
}
