//! # dvs-instance — the host-side instance layer
//!
//! One place for what "an instance" is on the host, used by the node daemon, the qemu-tests
//! harness, the benches and the cluster fixture:
//! - [`spec`]: the typed [`VmSpec`] (machine, accelerator, kernel and its [`dvs_vos_abi::BootConfig`],
//!   NICs, console, control socket);
//! - [`qemu`]: the VM spec → QEMU command line ([`qemu_args`], the only code in the tree that knows
//!   QEMU's flags) and [`QemuBackend`];
//! - [`backend`]: the [`VmBackend`] trait and [`ProcessBackend`] (a host program as the machine,
//!   for test doubles named for their role);
//! - [`confine`]: a machine's cgroup and limits, and what QEMU drops to once started;
//! - [`machine`]: the [`Machine`] handle (exit, stop, control records, readiness, console);
//! - [`usage`]: a running machine's CPU time and resident memory;
//! - [`port`]: the one engine-over-a-port loop ([`EnginePort`] on a [`DgramPort`] or
//!   [`StreamPort`]).
//!
//! Readiness comes only from the control channel's Ready record ([`Machine::ready`]), never from
//! console text.
#![warn(missing_docs)]

pub mod backend;
pub mod confine;
pub mod console_log;
pub mod machine;
pub mod port;
pub mod qemu;
pub mod spec;
pub mod usage;

use std::path::PathBuf;

pub use backend::{die_with_parent, ProcessBackend, VmBackend, SPEC_ENV};
pub use confine::{Cgroup, ConfineError, Confinement, Limits};
pub use machine::{Exit, ExitWatch, Machine, MachineEvent, ReadyError};
pub use port::{DgramPort, EnginePort, FramePort, StreamPort};
pub use qemu::{qemu_args, QemuBackend};
pub use spec::{
    mac_string, parse_mac, Accel, ConsoleSink, Drive, Kernel, MachineType, Nic, NicBackend, VmSpec,
};
pub use usage::Usage;

/// Why an instance-layer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The machine's program could not be started.
    #[error("starting machine '{name}' ({program}): {error}", program = program.display())]
    Spawn {
        /// The instance.
        name: String,
        /// The program.
        program: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The console file could not be opened.
    #[error("console file {path}: {error}", path = path.display())]
    Console {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The control socket could not be made.
    #[error("control socket {path}: {error}", path = path.display())]
    Control {
        /// The socket path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The spec could not be written as JSON for a process machine.
    #[error("spec of machine '{name}' as JSON: {error}")]
    SpecJson {
        /// The instance.
        name: String,
        /// Why.
        error: String,
    },
    /// The machine could not be confined (its cgroup).
    #[error("confining machine '{name}': {error}")]
    Confine {
        /// The instance.
        name: String,
        /// Why.
        error: ConfineError,
    },
    /// An engine could not bind an endpoint.
    #[error("binding endpoint {ep} of DC {dc}: {code}")]
    Bind {
        /// The DC.
        dc: u16,
        /// The endpoint.
        ep: u32,
        /// The engine's error code.
        code: String,
    },
}
