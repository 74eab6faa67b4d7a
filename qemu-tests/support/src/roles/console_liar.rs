//! `console-liar`: prints the VOS's ready line on its console but never sends a Ready record. The host
//! must not take it as ready: readiness comes from the control channel only.

use dvs_vos_abi::Counters;

use crate::double::{idle, Double, DoubleError, Knobs};

pub(super) fn run(mut d: Double, knobs: &Knobs) -> Result<(), DoubleError> {
    knobs.only("console-liar", &[])?;
    let mut port = d.engine(&[])?;
    // The exact text a VOS prints when it is up; a host that greps the console would believe it.
    println!(
        "dvs: ready dc={} ep={:?} (console-liar: no Ready record follows)",
        d.cfg.dc, d.cfg.endpoints
    );
    // A record that is not Ready: once the host shows it, the host has read the channel past the lie.
    d.counters(Counters::default())?;
    idle(&mut port)
}
