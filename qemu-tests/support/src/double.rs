//! What every role double shares: the machine's [`VmSpec`] (JSON in `DVS_VM_SPEC`, as a
//! `dvs_instance::ProcessBackend` gives it), the role's knobs (`key=value` program arguments), the control
//! channel (COBS-framed `ControlRecord`s, like a guest's second UART) and the fabric NIC as a
//! [`FramePort`] under an [`EnginePort`].

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use dvs_instance::port::{DgramPort, EnginePort, FramePort, StreamPort};
use dvs_instance::spec::{NicBackend, VmSpec};
use dvs_instance::SPEC_ENV;
use dvs_vos_abi::{BootConfig, ControlRecord, Counters, Ready, Report, Service};
use m3ipc_core::Endpoint;

/// Why a double could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum DoubleError {
    /// `DVS_VM_SPEC` is missing or not a VmSpec.
    #[error("{SPEC_ENV}: {0}")]
    Spec(String),
    /// A knob is missing or bad.
    #[error("{0}")]
    Usage(String),
    /// The NIC or the control socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// The engine refused something.
    #[error("{0}")]
    Engine(String),
}

/// An io error with what was being done.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DoubleError {
    let what = what.into();
    move |source| DoubleError::Io { what, source }
}

/// The fabric NIC of a double: whichever socket the spec plugs it into.
#[derive(Debug)]
pub enum Nic {
    /// `NicBackend::Stream`: the double connects, like QEMU's `-netdev stream`.
    Stream(StreamPort),
    /// `NicBackend::Dgram`: the double binds `local` and sends to `remote`.
    Dgram(DgramPort),
}

impl FramePort for Nic {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Nic::Stream(p) => p.send(frame),
            Nic::Dgram(p) => p.send(frame),
        }
    }

    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        match self {
            Nic::Stream(p) => p.recv(buf, timeout),
            Nic::Dgram(p) => p.recv(buf, timeout),
        }
    }
}

/// The `key=value` knobs of a role.
#[derive(Clone, Debug, Default)]
pub struct Knobs(BTreeMap<String, String>);

impl Knobs {
    /// Parses `key=value` words; anything else is a usage error.
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Knobs, DoubleError> {
        let mut m = BTreeMap::new();
        for w in words {
            let w = w.as_ref();
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| DoubleError::Usage(format!("'{w}': expected key=value")))?;
            m.insert(k.to_string(), v.to_string());
        }
        Ok(Knobs(m))
    }

    /// Refuses keys not in `allowed`.
    pub fn only(&self, role: &str, allowed: &[&str]) -> Result<(), DoubleError> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(DoubleError::Usage(format!(
                "{role}: unknown knob '{k}' (knobs: {})",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// A number knob, or `default`.
    pub fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, DoubleError> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| DoubleError::Usage(format!("{key}={v}: not a number"))),
        }
    }

    /// An optional number knob.
    pub fn opt_num<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, DoubleError> {
        self.0
            .get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| DoubleError::Usage(format!("{key}={v}: not a number")))
            })
            .transpose()
    }

    /// An optional IPv4 knob (`A.B.C.D`, a `/prefix` is ignored).
    pub fn ip(&self, key: &str) -> Result<Option<Ipv4Addr>, DoubleError> {
        self.0
            .get(key)
            .map(|v| {
                v.split('/')
                    .next()
                    .unwrap_or(v)
                    .parse()
                    .map_err(|_| DoubleError::Usage(format!("{key}={v}: not an IPv4 address")))
            })
            .transpose()
    }
}

/// A running double: its spec, boot configuration and control channel.
pub struct Double {
    /// The machine spec.
    pub spec: VmSpec,
    /// The boot configuration in the spec (a default one for DC 1 if the spec has a raw command line).
    pub cfg: BootConfig,
    /// The role's name (for console lines).
    pub role: &'static str,
    ctl: Option<UnixStream>,
}

impl Double {
    /// Reads the spec from `DVS_VM_SPEC` and connects the control channel (if the spec has one).
    pub fn from_env(role: &'static str) -> Result<Double, DoubleError> {
        let json = std::env::var(SPEC_ENV).map_err(|_| DoubleError::Spec("not set".into()))?;
        let spec: VmSpec =
            serde_json::from_str(&json).map_err(|e| DoubleError::Spec(e.to_string()))?;
        let cfg = spec
            .boot_config()
            .cloned()
            .unwrap_or_else(|| BootConfig::new(1, 1));
        let ctl = match &spec.control {
            Some(path) => Some(
                UnixStream::connect(path)
                    .map_err(io_err(format!("control socket {}", path.display())))?,
            ),
            None => None,
        };
        Ok(Double {
            spec,
            cfg,
            role,
            ctl,
        })
    }

    /// Prints a console line (`dvs-double ROLE: ...`).
    pub fn say(&self, line: &str) {
        println!("dvs-double {}: {line}", self.role);
        let _ = io::stdout().flush();
    }

    /// Sends a control record (a no-op without a control channel).
    pub fn record(&mut self, rec: &ControlRecord) -> Result<(), DoubleError> {
        if let Some(ctl) = self.ctl.as_mut() {
            ctl.write_all(&rec.to_frame())
                .map_err(io_err("writing to the control channel"))?;
        }
        Ok(())
    }

    /// Sends a report.
    pub fn report(&mut self, r: Report) -> Result<(), DoubleError> {
        self.say(&format!("report {r:?}"));
        self.record(&ControlRecord::Report(r))
    }

    /// Sends counters.
    pub fn counters(&mut self, c: Counters) -> Result<(), DoubleError> {
        self.record(&ControlRecord::Counters(c))
    }

    /// Sends the Ready record for `endpoints` and `services`, with the fabric MAC.
    pub fn ready(&mut self, endpoints: &[u32], services: &[Service]) -> Result<(), DoubleError> {
        let macs = self.spec.nics.iter().map(|n| n.mac).collect();
        self.say(&format!("ready (endpoints {endpoints:?})"));
        self.record(&ControlRecord::Ready(Ready {
            version: dvs_vos_abi::control::CONTROL_VERSION,
            dc: self.cfg.dc,
            endpoints: endpoints.to_vec(),
            services: services.to_vec(),
            macs,
            tsc_mhz: 0,
            init_us: 0,
        }))
    }

    /// The fabric MAC (the first NIC's).
    pub fn mac(&self) -> [u8; 6] {
        self.spec.nics.first().map_or([2, 0, 0, 0, 0, 1], |n| n.mac)
    }

    /// The fabric IPv4 address of the boot configuration.
    pub fn fabric_ip(&self) -> Option<Ipv4Addr> {
        self.cfg.fabric.map(|f| Ipv4Addr::from(f.cidr.addr))
    }

    /// Opens the fabric NIC (the first) and puts an engine on it holding `endpoints`.
    pub fn engine(&self, endpoints: &[u32]) -> Result<EnginePort<Nic>, DoubleError> {
        let nic = self
            .spec
            .nics
            .first()
            .ok_or_else(|| DoubleError::Usage("the machine has no NIC".into()))?;
        let port = match &nic.backend {
            NicBackend::Stream { path } => Nic::Stream(
                StreamPort::connect(path, Duration::from_secs(10))
                    .map_err(io_err(format!("NIC {}", path.display())))?,
            ),
            NicBackend::Dgram { local, remote } => Nic::Dgram(
                DgramPort::bind(local, remote)
                    .map_err(io_err(format!("NIC {}", local.display())))?,
            ),
            NicBackend::VhostUser { path } => {
                return Err(DoubleError::Usage(format!(
                    "NIC {}: a process double cannot be a vhost-user frontend (the node gives doubles stream NICs)",
                    path.display()
                )))
            }
        };
        let eps: Vec<Endpoint> = endpoints.iter().map(|&e| Endpoint(e)).collect();
        let mut ep = EnginePort::with_incarnation(
            port,
            self.cfg.dc,
            self.cfg.incarnation.max(1),
            &eps,
            nic.mac,
        )
        .map_err(|e| DoubleError::Engine(e.to_string()))?;
        ep.spin = Duration::from_micros(u64::from(self.cfg.spin_us));
        Ok(ep)
    }
}

/// Serves the port until it fails (the node closed it): answers nothing but lets the engine run. What a
/// double does after its job, like a guest that stays up.
pub fn idle(port: &mut EnginePort<Nic>) -> Result<(), DoubleError> {
    loop {
        port.poll(Duration::from_secs(1))
            .map_err(io_err("NIC closed"))?;
        while port.next_event().is_some() {}
    }
}
