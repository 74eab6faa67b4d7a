//! What a running machine uses on the host: CPU time and resident memory, read from `/proc/<pid>`.
//!
//! Read from the machine process itself (all of its threads: the vCPUs and QEMU's I/O thread), so the figures
//! are the same whether or not the machine is confined in a cgroup.

use serde::{Deserialize, Serialize};

/// A machine process's use of the host, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time used since it started (user + system, all threads), nanoseconds; the resolution is the
    /// kernel's clock tick (usually 10 ms).
    pub cpu_ns: u64,
    /// Resident memory, bytes (guest RAM it has touched, and QEMU's own).
    pub memory_bytes: u64,
}

/// The usage of process `pid`, or `None` when it is gone or `/proc` says something unexpected.
pub fn of_pid(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    parse(&stat, &status, u64::try_from(ticks_per_s).ok()?)
}

/// `Usage` from the text of `/proc/PID/stat` and `/proc/PID/status`, with `ticks_per_s` clock ticks a second.
pub fn parse(stat: &str, status: &str, ticks_per_s: u64) -> Option<Usage> {
    if ticks_per_s == 0 {
        return None;
    }
    // The command name (field 2) is in parentheses and may hold spaces and ')': fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state (3), ..., utime is field 14 and stime 15, i.e. the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    let cpu_ns = u64::try_from(u128::from(ticks) * 1_000_000_000 / u128::from(ticks_per_s)).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Usage {
        cpu_ns,
        memory_bytes: rss_kib.saturating_mul(1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tqemu\nVmPeak:\t  900 kB\nVmRSS:\t   81234 kB\nThreads:\t3\n";

    #[test]
    fn reads_cpu_and_memory() {
        let stat = "4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        let u = parse(stat, STATUS, 100).expect("parses");
        assert_eq!(u.cpu_ns, 3_000_000_000);
        assert_eq!(u.memory_bytes, 81234 * 1024);
    }

    #[test]
    fn a_name_with_spaces_and_parentheses_does_not_shift_fields() {
        let stat = "7 (a) b) c) R 1 7 7 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0";
        assert_eq!(
            parse(stat, STATUS, 100).map(|u| u.cpu_ns),
            Some(100_000_000)
        );
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        assert_eq!(parse("", STATUS, 100), None);
        assert_eq!(parse("1 (x) S", STATUS, 100), None);
        assert_eq!(parse("1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 1", "", 100), None);
        assert_eq!(parse("1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 1", STATUS, 0), None);
    }

    #[test]
    fn this_process_has_usage() {
        let u = of_pid(std::process::id()).expect("own /proc entry");
        assert!(u.memory_bytes > 0);
    }
}
