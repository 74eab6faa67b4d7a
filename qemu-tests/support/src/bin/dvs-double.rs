//! `dvs-double ROLE [key=value ...]`: a host program run as a machine (`dvs_instance::ProcessBackend`, the
//! node's `process` backend) that plays a role a real VOS never plays. The machine's spec is JSON in
//! `DVS_VM_SPEC`. Roles and knobs: see `dvs_test_support::roles` (and qemu-tests/support/README.md).

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(role) = args.next() else {
        eprintln!(
            "usage: dvs-double ROLE [key=value ...]  (roles: {}; the machine spec in DVS_VM_SPEC)",
            dvs_test_support::roles::ROLES.join(", ")
        );
        return ExitCode::from(2);
    };
    let knobs: Vec<String> = args.collect();
    match dvs_test_support::roles::run(&role, &knobs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dvs-double {role}: {e}");
            ExitCode::FAILURE
        }
    }
}
