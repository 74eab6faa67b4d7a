//! `dvs top`: per-instance CPU, memory and message rates across the cluster, refreshed live.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::instances::InstanceView;

/// One sample of one instance: when, its CPU time, memory and its port's frame counters.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    view: InstanceView,
    frames_in: u64,
    frames_out: u64,
}

async fn sample(ctx: &Ctx) -> anyhow::Result<(BTreeMap<(u16, String), Sample>, Vec<u16>)> {
    let mut out = BTreeMap::new();
    let mut down = vec![];
    for (id, c) in ctx.nodes().await? {
        let (Ok(list), Ok(stats)) = (c.instances().await, c.counters().await) else {
            down.push(id);
            continue;
        };
        let at = Instant::now();
        for v in list {
            let port = stats.ports.get(&v.spec.name);
            let (frames_in, frames_out) = port.map_or((0, 0), |p| (p.tx.frames, p.rx.frames));
            out.insert(
                (id, v.spec.name.clone()),
                Sample {
                    at,
                    view: v,
                    frames_in,
                    frames_out,
                },
            );
        }
    }
    Ok((out, down))
}

/// Per second, from `a` to `b`.
fn rate(a: u64, b: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    b.saturating_sub(a) as f64 / secs
}

/// The table of the change from `before` to `now`.
fn table(
    before: &BTreeMap<(u16, String), Sample>,
    now: &BTreeMap<(u16, String), Sample>,
) -> String {
    let mut s = format!(
        "{:<16} {:>4} {:>4} {:<8} {:>6} {:>9} {:>10} {:>10}\n",
        "NAME", "NODE", "DC", "STATE", "CPU%", "MEM MiB", "IN/s", "OUT/s"
    );
    for (key, b) in now {
        let a = before.get(key).unwrap_or(b);
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let (cpu, mem) = match (a.view.usage, b.view.usage) {
            (Some(x), Some(y)) if secs > 0.0 => (
                format!(
                    "{:.1}",
                    y.cpu_ns.saturating_sub(x.cpu_ns) as f64 / 1e9 / secs * 100.0
                ),
                format!("{:.1}", y.memory_bytes as f64 / (1 << 20) as f64),
            ),
            (_, Some(y)) => (
                "-".into(),
                format!("{:.1}", y.memory_bytes as f64 / (1 << 20) as f64),
            ),
            _ => ("-".into(), "-".into()),
        };
        s.push_str(&format!(
            "{:<16} {:>4} {:>4} {:<8} {:>6} {:>9} {:>10.0} {:>10.0}\n",
            b.view.spec.name,
            key.0,
            b.view.spec.dc,
            format!("{:?}", b.view.state).to_lowercase(),
            cpu,
            mem,
            rate(a.frames_in, b.frames_in, secs),
            rate(a.frames_out, b.frames_out, secs),
        ));
    }
    s
}

/// `dvs top [--once] [--interval S]`: two samples `interval` apart, then (unless `once`) a new table every
/// interval, the screen cleared between tables when stdout is a terminal.
pub(super) async fn top(ctx: &Ctx, once: bool, interval: Duration) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let (mut before, _) = sample(ctx).await?;
    loop {
        tokio::time::sleep(interval).await;
        let (now, down) = sample(ctx).await?;
        if tty && !once {
            print!("\x1b[2J\x1b[H");
        }
        print!("{}", table(&before, &now));
        if !down.is_empty() {
            println!("(nodes {down:?} did not answer)");
        }
        if once {
            return Ok(());
        }
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_and_never_negative() {
        assert_eq!(rate(100, 300, 2.0), 100.0);
        assert_eq!(
            rate(300, 100, 2.0),
            0.0,
            "a restarted counter is no negative rate"
        );
        assert_eq!(rate(0, 10, 0.0), 0.0);
    }
}
