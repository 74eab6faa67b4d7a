//! `dvs node status`, `dvs ps`, `dvs dc ls`: what the cluster runs.

use super::{print_json, Ctx};
use crate::instances::InstanceView;

pub(super) async fn node_status(ctx: &Ctx) -> anyhow::Result<()> {
    let s = ctx.node.status().await?;
    if ctx.json {
        let counters = ctx.node.counters().await?;
        return print_json(&serde_json::json!({ "status": s, "counters": counters }));
    }
    println!(
        "node {} (dvs {}), up {} s, backend {}",
        s.node, s.version, s.uptime_s, s.backend
    );
    for (id, up) in &s.peers {
        println!("  peer node {id}: {}", if *up { "up" } else { "DOWN" });
    }
    println!("  {} instances, {} images", s.instances, s.images);
    let c = ctx.node.counters().await?;
    for (name, p) in &c.ports {
        println!(
            "  port {name}: rx {} frames, tx {} frames, drops: {}",
            p.rx.frames, p.tx.frames, p.drops
        );
    }
    for (id, p) in &c.peers {
        println!(
            "  link to node {id}: tx {} frames in {} writes, rx {} frames, drops: {}",
            p.tx.frames, p.writes, p.rx.frames, p.drops
        );
    }
    for (id, d) in &c.dcs {
        let r = &d.refused;
        println!(
            "  DC {id}: {} M3-IPC and {} LAN frames; refused: unknown {} (of which to another DC's endpoints {}) unreachable {} dead {} migrated {}; drops: {}",
            d.m3ipc.frames,
            d.lan.frames,
            r.unknown_destination,
            r.other_dc,
            r.node_unreachable,
            r.dead_destination,
            r.migrated,
            d.drops
        );
    }
    Ok(())
}

/// Instances of every node; nodes that do not answer are listed apart.
pub(super) async fn all_instances(ctx: &Ctx) -> anyhow::Result<(Vec<InstanceView>, Vec<u16>)> {
    let mut all = vec![];
    let mut down = vec![];
    for (id, c) in ctx.nodes().await? {
        match c.instances().await {
            Ok(v) => all.extend(v),
            Err(_) => down.push(id),
        }
    }
    Ok((all, down))
}

pub(super) async fn dc_ls(ctx: &Ctx) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let (instances, down) = all_instances(ctx).await?;
    if ctx.json {
        let dcs: Vec<_> = cluster
            .dcs
            .iter()
            .map(|d| {
                let inst: Vec<_> = instances.iter().filter(|i| i.spec.dc == d.id).map(|i| &i.spec.name).collect();
                serde_json::json!({ "id": d.id, "name": d.name, "nodes": d.nodes, "instances": inst })
            })
            .collect();
        return print_json(&dcs);
    }
    println!(
        "{:<4} {:<12} {:<12} {:>9}  ENDPOINTS",
        "ID", "NAME", "NODES", "INSTANCES"
    );
    for d in &cluster.dcs {
        let mine: Vec<_> = instances.iter().filter(|i| i.spec.dc == d.id).collect();
        let mut eps: Vec<u32> = mine
            .iter()
            .flat_map(|i| i.spec.endpoints.iter().copied())
            .collect();
        eps.sort_unstable();
        let nodes = d
            .nodes
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{:<4} {:<12} {:<12} {:>9}  {:?}",
            d.id,
            d.name,
            nodes,
            mine.len(),
            eps
        );
    }
    if !down.is_empty() {
        eprintln!("(nodes {down:?} did not answer)");
    }
    Ok(())
}

pub(super) async fn ps(ctx: &Ctx) -> anyhow::Result<()> {
    let (instances, down) = all_instances(ctx).await?;
    if ctx.json {
        return print_json(
            &serde_json::json!({ "instances": instances, "unreachable_nodes": down }),
        );
    }
    println!(
        "{:<16} {:>4} {:>4} {:<8} {:<14} {:<16} {:<20} IMAGE",
        "NAME", "NODE", "DC", "STATE", "ENDPOINTS", "SERVICES", "PUBLISH"
    );
    for i in &instances {
        let eps = i
            .spec
            .endpoints
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let publ = i
            .spec
            .publish
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let state = format!("{:?}", i.state).to_lowercase();
        println!(
            "{:<16} {:>4} {:>4} {:<8} {:<14} {:<16} {:<20} {}",
            i.spec.name,
            i.node,
            i.spec.dc,
            state,
            eps,
            i.spec.services.join(","),
            publ,
            &i.image_sha256[..12]
        );
    }
    if !down.is_empty() {
        eprintln!("(nodes {down:?} did not answer)");
    }
    Ok(())
}
