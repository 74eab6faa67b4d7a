//! VOS instance specs the cluster tests run, and what their ipc-bench clients reported.

use dvs_hypervisor::instances::{InstanceSpec, InstanceView, State};
use dvs_vos_abi::Report;

use crate::api::describe;
use crate::cluster::Cluster;

/// A VOS instance.
pub fn vos(
    name: &str,
    dc: u16,
    eps: &[u32],
    svcs: &[&str],
    memory: Option<u32>,
    args: &[&str],
) -> InstanceSpec {
    let mut s = InstanceSpec::new(name, "vos", dc);
    s.endpoints = eps.to_vec();
    s.services = svcs.iter().map(|s| s.to_string()).collect();
    s.memory = memory;
    s.args = args.iter().map(|s| s.to_string()).collect();
    s
}

/// An ipc-bench client VOS on `ep` calling `peer` `n` times (no vcopy unless in `extra`).
pub fn client(name: &str, dc: u16, ep: u32, peer: u32, n: u32, extra: &[&str]) -> InstanceSpec {
    let mut args = vec![format!("peer={peer}"), format!("n={n}")];
    if !extra.iter().any(|a| a.starts_with("vcopy=")) {
        args.push("vcopy=0".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut s = vos(name, dc, &[ep], &["ipc-bench"], None, &[]);
    s.args = args;
    s
}

/// The reports its guest sent.
pub fn reports(v: &InstanceView) -> &[Report] {
    &v.guest.reports
}

/// How many sendrecs its ipc-bench client finished (once it reported them).
pub fn sendrecs_done(v: &InstanceView) -> Option<u32> {
    reports(v).iter().find_map(|r| match r {
        Report::Sendrecs { n, .. } => Some(*n),
        _ => None,
    })
}

/// Its ipc-bench client's first failure, described.
pub fn failure(v: &InstanceView) -> Option<String> {
    reports(v).iter().find_map(|r| match r {
        Report::Failed {
            step,
            index,
            peer,
            error,
            ..
        } => Some(format!("{step:?} {index} to {peer}: {error}")),
        _ => None,
    })
}

/// The bench client finished its sendrecs (or failed).
pub fn bench_done(v: &InstanceView) -> bool {
    sendrecs_done(v).is_some() || failure(v).is_some() || ended(v)
}

/// The machine is gone for good (no point waiting for it).
pub fn ended(v: &InstanceView) -> bool {
    matches!(v.state, State::Exited | State::Failed | State::Stopped) || v.guest.fatal.is_some()
}

/// The instance runs, or will never run (it ended).
pub fn running(v: &InstanceView) -> bool {
    v.state == State::Running || ended(v)
}

/// `Ok` when `cond`, else the error `what` says.
pub fn expect(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// Expects `v`'s sendrecs to have all been answered (`n` of them).
pub fn all_answered(v: &InstanceView, n: u32) -> Result<(), String> {
    expect(sendrecs_done(v) == Some(n) && failure(v).is_none(), || {
        format!(
            "expected Report::Sendrecs {{ n: {n} }} and no failure; got {}",
            describe(v)
        )
    })
}

/// Waits (up to `kvm_s` seconds under KVM, scaled for the accelerator) until instance `name` on `node`
/// satisfies `pred`; the error says what was awaited and the last view.
pub fn wait_for(
    c: &Cluster,
    node: u16,
    name: &str,
    what: &str,
    kvm_s: u64,
    pred: impl FnMut(&InstanceView) -> bool,
) -> Result<InstanceView, String> {
    c.api(node)
        .wait_view(
            name,
            what,
            c.deadline(std::time::Duration::from_secs(kvm_s)),
            pred,
        )
        .map_err(|e| e.to_string())
}

/// Waits until `name` on `node` runs (its Ready record arrived), failing if it ended instead.
pub fn ready(c: &Cluster, node: u16, name: &str) -> Result<InstanceView, String> {
    let v = wait_for(c, node, name, "state running (a Ready record)", 30, running)?;
    expect(v.state == State::Running, || {
        format!("{name} did not become ready: {}", describe(&v))
    })?;
    Ok(v)
}

/// The repository's root (for `images/vos.elf`).
pub fn root_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `dvs` binary: `$DVS_BIN`, else `dvs` in the target directory of the running test.
pub fn dvs_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("DVS_BIN") {
        return p.into();
    }
    // A test runs as target/<profile>/deps/<name>-<hash>; cargo puts dvs in target/<profile>/.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("dvs")))
        .unwrap_or_else(|| "dvs".into())
}
