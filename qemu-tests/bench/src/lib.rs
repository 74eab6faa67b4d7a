//! # dvs-bench — the system benchmarks of `make bench`
//!
//! Benchmarks live here, not in the product crates. Binaries:
//! - `vos-bench` (scripts/bench-vos.sh): boots the real image through dvs-instance (`VmSpec`,
//!   `QemuBackend`, `Machine::ready`, the guest's `Report` records) and drives M3-IPC from the host
//!   through dvs-instance's `EnginePort`; one table, KVM and TCG columns.
//! - `dvs-netbench` (scripts/bench-cluster.sh): the raw TCP ping-pong / throughput baseline and,
//!   with the feature `grpc`, the tonic gRPC unary baseline ([`grpc`]).
//! - `dvs-bench` (scripts/bench-cluster.sh, scripts/bench-density.sh, scripts/bench.sh): waits on a
//!   node daemon's typed instance view (`guest.ready`, `guest.reports`), the density benchmark, and
//!   the merge of every part into `target/bench/summary.json`, and the web server benchmark against
//!   nginx (`dvs-bench http`, scripts/bench-http.sh) on the small load generator [`httpload`].
//!
//! Each benchmark writes its figures as one JSON object to `target/bench/<part>.json`
//! ([`Figures::write`]); `dvs-bench summary` merges them.
#![warn(missing_docs)]

#[cfg(feature = "grpc")]
pub mod grpc;
pub mod httpload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("../.."))
}

/// Where the parts and the summary go: `$DVS_BENCH_DIR`, else `<repo>/target/bench`.
pub fn out_dir() -> PathBuf {
    std::env::var_os("DVS_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/bench"))
}

/// Median and 99th percentile of integer samples (nearest rank); (0, 0) when empty.
pub fn median_p99_u64(mut v: Vec<u64>) -> (u64, u64) {
    if v.is_empty() {
        return (0, 0);
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

/// Median of float samples (NaN when empty).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// 99th percentile of float samples (NaN when empty).
pub fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// The figures of one benchmark part, by name (`kvm.boot_microvm_ms`, `tcp_pingpong.median_ns`).
/// Values are JSON: numbers where a figure was measured, a string saying why where it was not.
#[derive(Debug, Default, Clone)]
pub struct Figures(pub BTreeMap<String, serde_json::Value>);

impl Figures {
    /// No figures yet.
    pub fn new() -> Figures {
        Figures::default()
    }

    /// Sets a figure.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) {
        self.0.insert(name.into(), value.into());
    }

    /// Sets a measured number, or records why it is missing.
    pub fn set_result<T: Into<serde_json::Value> + Clone>(
        &mut self,
        name: impl Into<String>,
        r: &Result<T, String>,
    ) {
        let v = match r {
            Ok(v) => v.clone().into(),
            Err(e) => serde_json::Value::String(format!("failed: {e}")),
        };
        self.0.insert(name.into(), v);
    }

    /// Writes the figures to `<out_dir>/<part>.json`; the path written.
    pub fn write(&self, part: &str) -> std::io::Result<PathBuf> {
        let dir = out_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{part}.json"));
        let text = serde_json::to_string_pretty(&self.0).map_err(std::io::Error::other)?;
        std::fs::write(&path, text + "\n")?;
        Ok(path)
    }
}

/// Prints rows as a Markdown table with aligned columns (the first row is the head).
pub fn print_table<const N: usize>(head: [&str; N], rows: &[[String; N]]) {
    let mut w = [0usize; N];
    for r in rows
        .iter()
        .map(|r| r.each_ref().map(|s| s.as_str()))
        .chain([head])
    {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |r: [&str; N]| {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(w[i] - c.chars().count())))
            .collect();
        println!("| {} |", cells.join(" | "));
    };
    line(head);
    println!(
        "|{}|",
        w.iter()
            .map(|n| "-".repeat(n + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        line(r.each_ref().map(|s| s.as_str()));
    }
}

/// CPU time (user + system) of process `pid` in clock ticks, from /proc/PID/stat.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("read /proc/{pid}/stat: {e}"))?;
    // Fields after the command name (in parentheses, may contain spaces) start at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("malformed /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("no utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("no stime")?;
    Ok(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Resident memory of process `pid` in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// `MemAvailable` of /proc/meminfo in KiB.
pub fn mem_available_kib() -> Result<u64, String> {
    let s =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("read /proc/meminfo: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no MemAvailable in /proc/meminfo".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(median_p99_u64(vec![]), (0, 0));
        assert_eq!(median_p99_u64((1..=100).rev().collect()), (51, 99));
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(median(&mut v), 51.0);
        assert_eq!(p99(&mut v), 100.0);
    }

    #[test]
    fn figures_write_json() {
        let dir = std::env::temp_dir().join(format!("dvs-bench-test-{}", std::process::id()));
        std::env::set_var("DVS_BENCH_DIR", &dir);
        let mut f = Figures::new();
        f.set("a.median_ns", 12u64);
        f.set_result::<f64>("b", &Err("no kvm".into()));
        let p = f.write("part").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(v["a.median_ns"], 12);
        assert_eq!(v["b"], "failed: no kvm");
        let _ = std::fs::remove_dir_all(dir);
    }
}
