//! The roles of `dvs-double`: each is a host program playing a machine that a real VOS never plays (a
//! spoofing, probing, lying or garbage-sending peer), or a benchmark baseline without a VM. Each is run as
//! `dvs-double ROLE [key=value ...]` with the machine's spec in `DVS_VM_SPEC` (a `ProcessBackend` machine),
//! and reports through the control channel like a guest: Ready, then Report / Counters records.
//!
//! | role | does | knobs |
//! | --- | --- | --- |
//! | `spoofer` | sends M3-IPC frames as an endpoint it does not hold, then `Report::Injected` | `as=EP` (required), `to=EP` (default: the boot config's bench peer), `count=10` |
//! | `arp-probe` | asks who-has an IPv4 address, then `Report::Arp` with the answer or None; answers ARP for its own address | `ask=A.B.C.D` (required), `ip=` (default: the fabric address), `wait_ms=1500` |
//! | `console-liar` | prints `dvs: ready` on its console, never sends Ready; sends one Counters record (so a test knows the host read past the lie) | none |
//! | `garbage` | sends malformed frames (bad magic, truncated, runts, wrong ethertype), then `Report::Injected` | `count=32` |
//! | `host-echo` | echo server on every endpoint of the boot config (an engine over the proxy, no VM): the baseline of a VOS echo | `buf=` (default: the boot config's echo buffer) |
//! | `host-bench` | the ipc-bench client on the first endpoint against `bench.peer`: sendrecs, notifies, vcopy; `Report::Sendrecs` / `Notifies` / `Vcopy` / `Failed` like the VOS | `timeout_ms=5000` |
//!
//! After its job every role stays up (serving its port) until it is stopped, like a guest does.

mod arp_probe;
mod bench;
mod console_liar;
mod echo;
mod garbage;
mod spoofer;

use crate::double::{Double, DoubleError, Knobs};

/// The role names, for usage messages.
pub const ROLES: &[&str] = &[
    "spoofer",
    "arp-probe",
    "console-liar",
    "garbage",
    "host-echo",
    "host-bench",
];

/// Runs role `role` with `knobs` (the program's arguments after the role).
pub fn run(role: &str, knobs: &[String]) -> Result<(), DoubleError> {
    let knobs = Knobs::parse(knobs)?;
    match role {
        "spoofer" => spoofer::run(Double::from_env("spoofer")?, &knobs),
        "arp-probe" => arp_probe::run(Double::from_env("arp-probe")?, &knobs),
        "console-liar" => console_liar::run(Double::from_env("console-liar")?, &knobs),
        "garbage" => garbage::run(Double::from_env("garbage")?, &knobs),
        "host-echo" => echo::run(Double::from_env("host-echo")?, &knobs),
        "host-bench" => bench::run(Double::from_env("host-bench")?, &knobs),
        other => Err(DoubleError::Usage(format!(
            "unknown role '{other}' (roles: {})",
            ROLES.join(", ")
        ))),
    }
}
