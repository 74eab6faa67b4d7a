//! Network namespaces, veth pairs and a bridge as guards: each is made by `ip` and removed on drop, also while
//! a test panics. Names carry the test process's id, so runs do not collide and [`sweep_stale`] can remove
//! what a killed run left behind.

use std::process::Command;

/// Why an `ip` command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `ip` could not be started.
    #[error("running `ip {args}`: {source} (is iproute2 installed?)")]
    Spawn {
        /// The arguments.
        args: String,
        /// Why.
        source: std::io::Error,
    },
    /// `ip` exited non-zero.
    #[error("`ip {args}` failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Runs `ip ARGS`; an error names the command and what `ip` said.
pub fn ip(args: &[&str]) -> Result<String, NetError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A bridge in the root namespace with an address; deleted on drop.
#[derive(Debug)]
pub struct Bridge {
    name: String,
}

impl Bridge {
    /// Creates bridge `name` with address `cidr` (`10.217.0.254/24`) and sets it up.
    pub fn new(name: &str, cidr: &str) -> Result<Bridge, NetError> {
        ip(&["link", "add", name, "type", "bridge"])?;
        let b = Bridge { name: name.into() };
        ip(&["addr", "add", cidr, "dev", name])?;
        ip(&["link", "set", name, "up"])?;
        Ok(b)
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.name]);
    }
}

/// A network namespace; deleted on drop (which also deletes the veth ends inside it, and with them their
/// peers in the root namespace).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with its loopback up.
    pub fn new(name: &str) -> Result<Netns, NetError> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Joins the namespace to `bridge` with a veth pair: `host_if` on the bridge, `eth0` with `cidr` inside.
    pub fn attach(&self, bridge: &Bridge, host_if: &str, cidr: &str) -> Result<(), NetError> {
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", &self.name,
        ])?;
        ip(&["link", "set", host_if, "master", bridge.name(), "up"])?;
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", "eth0"])?;
        ip(&["-n", &self.name, "link", "set", "eth0", "up"])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and bridges named `<prefix><pid>...` whose process `pid` is gone (left by a run that
/// was killed before its guards could drop). Returns what it removed.
pub fn sweep_stale(ns_prefix: &str, link_prefix: &str) -> Vec<String> {
    let mut removed = Vec::new();
    let stale = |name: &str, prefix: &str| -> bool {
        name.strip_prefix(prefix)
            .map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !pid_alive(pid))
    };
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if stale(name, ns_prefix) && ip(&["netns", "del", name]).is_ok() {
                removed.push(name.to_string());
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            // "12: dvsbr123: <...>" or "13: dvs123v1@if2: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if stale(name, link_prefix) && ip(&["link", "del", name]).is_ok() {
                removed.push(name.to_string());
            }
        }
    }
    removed
}
