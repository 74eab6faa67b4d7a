//! What an instance is: its spec as users give it, its state and view as the API shows them, and the pure
//! functions around them (name check, MAC address, kernel command line).

use serde::{Deserialize, Serialize};

use crate::backend::Publish;
use crate::config::BackendKind;
use crate::images::ImageError;

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
    /// Services to run (`http`, `echo`, `ipc-bench`).
    #[serde(default)]
    pub services: Vec<String>,
    /// Memory in MiB (default: the image's).
    #[serde(default)]
    pub memory: Option<u32>,
    /// Fabric IPv4 address with prefix (`10.1.0.2/24`).
    #[serde(default)]
    pub ip: Option<String>,
    /// More kernel command-line words (`peer=20`, `n=1000`...).
    #[serde(default)]
    pub args: Vec<String>,
    /// Host ports forwarded to guest ports.
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Run this instance with another backend than the node's (`fake` for host-side probes).
    #[serde(default)]
    pub backend: Option<BackendKind>,
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
    /// Being booted.
    Starting,
    /// The machine runs.
    Running,
    /// Stopped on request.
    Stopped,
    /// The machine exited by itself with success.
    Exited,
    /// The machine failed (non-zero exit, killed, or could not start).
    Failed,
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
    /// Fabric MAC.
    pub mac: String,
    /// The kernel command line of the last boot.
    pub cmdline: String,
    /// Binding generation of its endpoints.
    pub gen: u64,
    /// Which backend runs it.
    pub backend: String,
}

/// Why an instance request failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Bad spec.
    #[error("{0}")]
    Invalid(String),
    /// Name in use on this node.
    #[error("an instance named '{0}' already exists on this node")]
    NameTaken(String),
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
    /// No such instance.
    #[error("no instance '{0}' on this node")]
    NotFound(String),
    /// Image problem.
    #[error(transparent)]
    Image(#[from] ImageError),
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

/// The VOS kernel command line of `spec` for boot `inc`.
pub fn kernel_cmdline(s: &InstanceSpec, inc: u32) -> String {
    let mut words = vec![format!("dc={}", s.dc)];
    if !s.endpoints.is_empty() {
        words.push(format!(
            "ep={}",
            s.endpoints
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if !s.services.is_empty() {
        words.push(format!("svc={}", s.services.join(",")));
    }
    if let Some(ip) = &s.ip {
        words.push(format!("ip={ip}"));
    }
    if !s.publish.is_empty() {
        words.push("pub_ip=10.0.2.15/24".into());
        words.push("pub_gw=10.0.2.2".into());
    }
    words.push(format!("inc={inc}"));
    words.extend(s.args.iter().cloned());
    words.join(" ")
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
                host: 8080,
                guest: 80,
            }],
            restart: RestartPolicy::OnFailure,
            backend: None,
        }
    }

    #[test]
    fn cmdline_is_the_vos_one() {
        assert_eq!(
            kernel_cmdline(&spec(), 42),
            "dc=3 ep=10,11 svc=http,echo ip=10.1.0.2/24 pub_ip=10.0.2.15/24 pub_gw=10.0.2.2 inc=42 stats=1"
        );
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
}
