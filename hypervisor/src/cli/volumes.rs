//! `dvs volume ls` and `dvs volume rm`: the volumes of every node.

use anyhow::{anyhow, bail};
use serde::Serialize;

use super::{print_json, Ctx};
use crate::client::ClientError;
use crate::volumes::{valid_volume_name, ByteSize, VolumeView};

/// One volume of one node (`dvs volume ls --json`).
#[derive(Serialize)]
struct NodeVolume {
    node: u16,
    #[serde(flatten)]
    volume: VolumeView,
}

/// `1.5M`, `8.0K`, `512`: a byte count for people.
fn human(n: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n >= 1u64 << shift {
            if n.is_multiple_of(1u64 << shift) {
                return ByteSize(n).to_string();
            }
            return format!("{:.1}{unit}", n as f64 / (1u64 << shift) as f64);
        }
    }
    n.to_string()
}

/// Volumes of every node; nodes that do not answer are listed apart.
async fn all_volumes(ctx: &Ctx) -> anyhow::Result<(Vec<NodeVolume>, Vec<u16>)> {
    let mut all = vec![];
    let mut down = vec![];
    for (id, c) in ctx.nodes().await? {
        match c.volumes().await {
            Ok(v) => all.extend(v.into_iter().map(|volume| NodeVolume { node: id, volume })),
            Err(ClientError::Unreachable { .. }) => down.push(id),
            Err(e) => return Err(anyhow!(e).context(format!("listing the volumes of node {id}"))),
        }
    }
    Ok((all, down))
}

pub(super) async fn ls(ctx: &Ctx) -> anyhow::Result<()> {
    let (all, down) = all_volumes(ctx).await?;
    if ctx.json {
        return print_json(&all);
    }
    let cluster = ctx.cluster().await?;
    println!(
        "{:<5} {:<14} {:<24} {:>8} {:>10}  ATTACHED TO",
        "NODE", "DC", "NAME", "SIZE", "ON DISK"
    );
    for v in &all {
        let dc = cluster
            .dc(m3ipc_core::DcId(v.volume.dc))
            .map(|d| format!("{} ({})", v.volume.dc, d.name))
            .unwrap_or_else(|| v.volume.dc.to_string());
        println!(
            "{:<5} {:<14} {:<24} {:>8} {:>10}  {}",
            v.node,
            dc,
            v.volume.name,
            ByteSize(v.volume.size).to_string(),
            human(v.volume.allocated),
            v.volume.attached.as_deref().unwrap_or("-")
        );
    }
    for id in down {
        println!("node {id} did not answer");
    }
    Ok(())
}

pub(super) async fn rm(ctx: &Ctx, dc: &str, name: &str, on: Option<u16>) -> anyhow::Result<()> {
    if !valid_volume_name(name) {
        bail!("volume name '{name}': use 1-63 of a-z, 0-9 and -, starting with a letter or digit");
    }
    let cluster = ctx.cluster().await?;
    let dc = cluster.dc_by_name(dc).ok_or_else(|| {
        anyhow!(ClientError::Api {
            url: ctx.node.url().into(),
            status: 404,
            code: "dc".into(),
            body_error: format!("DC '{dc}' is not in the cluster (see `dvs dc ls`)"),
        })
    })?;
    let node = match on {
        Some(id) => id,
        None => {
            let (all, down) = all_volumes(ctx).await?;
            let holders: Vec<u16> = all
                .iter()
                .filter(|v| v.volume.dc == dc.id && v.volume.name == name)
                .map(|v| v.node)
                .collect();
            match holders[..] {
                [one] => one,
                [] => {
                    let note = if down.is_empty() {
                        String::new()
                    } else {
                        format!(" (nodes {down:?} did not answer)")
                    };
                    return Err(anyhow!(ClientError::Api {
                        url: ctx.node.url().into(),
                        status: 404,
                        code: "not_found".into(),
                        body_error: format!("no volume '{name}' in DC {} on any node{note}", dc.id),
                    }));
                }
                _ => bail!(
                    "volume '{name}' of DC {} is on nodes {holders:?}: say which with --on NODE",
                    dc.id
                ),
            }
        }
    };
    let c = ctx.client_of(node).await?;
    let v = c.remove_volume(dc.id, name).await?;
    if ctx.json {
        return print_json(&NodeVolume { node, volume: v });
    }
    println!(
        "removed volume {name} of DC {} on node {node} ({}, its data is gone)",
        dc.id,
        ByteSize(v.size)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn byte_counts_read_well() {
        assert_eq!(super::human(0), "0");
        assert_eq!(super::human(4096), "4K");
        assert_eq!(super::human(12 << 10), "12K");
        assert_eq!(super::human(1536 << 10), "1.5M");
        assert_eq!(super::human(64 << 20), "64M");
    }
}
