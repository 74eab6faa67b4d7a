//! `dvs node status`, `dvs ps`, `dvs dc ls`: what the cluster runs.

use super::{print_json, Ctx, PsOutput};
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
    match super::control::view(ctx).await {
        Ok(v) => super::control::print_members(&v),
        Err(e) => println!("  cluster: unknown ({e:#})"),
    }
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

pub(super) async fn ps(ctx: &Ctx, output: PsOutput) -> anyhow::Result<()> {
    let (instances, down) = all_instances(ctx).await?;
    if output == PsOutput::Json {
        return print_json(
            &serde_json::json!({ "instances": instances, "unreachable_nodes": down }),
        );
    }
    let wide = output == PsOutput::Wide;
    print!("{}", ps_table(&instances, wide));
    if !down.is_empty() {
        eprintln!("(nodes {down:?} did not answer)");
    }
    Ok(())
}

/// The `dvs ps` table (`wide`: with pid, CPU time, memory, boots and the last exit).
pub(super) fn ps_table(instances: &[InstanceView], wide: bool) -> String {
    let mut s = format!(
        "{:<16} {:>4} {:>4} {:<8} {:<14} {:<16} {:<20} {:<12}",
        "NAME", "NODE", "DC", "STATE", "ENDPOINTS", "SERVICES", "PUBLISH", "IMAGE"
    );
    if wide {
        s.push_str(&format!(
            " {:>8} {:>9} {:>8} {:>5}  LAST EXIT",
            "PID", "CPU s", "MEM MiB", "BOOTS"
        ));
    }
    s.push('\n');
    for i in instances {
        let join = |v: Vec<String>| v.join(",");
        let eps = join(i.spec.endpoints.iter().map(u32::to_string).collect());
        let publ = join(i.spec.publish.iter().map(|p| p.to_string()).collect());
        let state = format!("{:?}", i.state).to_lowercase();
        let image = i.image_sha256.get(..12).unwrap_or(&i.image_sha256);
        s.push_str(&format!(
            "{:<16} {:>4} {:>4} {:<8} {:<14} {:<16} {:<20} {:<12}",
            i.spec.name,
            i.node,
            i.spec.dc,
            state,
            eps,
            i.spec.services.join(","),
            publ,
            image
        ));
        if wide {
            let pid = i.pid.map_or("-".into(), |p| p.to_string());
            let (cpu, mem) = i.usage.map_or(("-".into(), "-".into()), |u| {
                (
                    format!("{:.2}", u.cpu_ns as f64 / 1e9),
                    format!("{:.1}", u.memory_bytes as f64 / (1 << 20) as f64),
                )
            });
            let last = i.last_exit.as_deref().unwrap_or("-");
            s.push_str(&format!(
                " {pid:>8} {cpu:>9} {mem:>8} {:>5}  {last}",
                i.boots
            ));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_adds_columns_and_short_images_do_not_panic() {
        let spec = crate::instances::InstanceSpec::new("web", "vos", 1);
        let v: InstanceView = serde_json::from_value(serde_json::json!({
            "spec": spec, "node": 2, "image_sha256": "abc", "state": "running", "last_exit": null,
            "boots": 3, "pid": 42, "mac": "", "cmdline": "", "boot_config": null, "gen": 1,
            "backend": "qemu", "guest": {"ready": null, "counters": null, "reports": [], "fatal": null,
            "bad_records": 0}, "usage": {"cpu_ns": 1500000000u64, "memory_bytes": 10485760u64}, "rev": 1
        }))
        .unwrap();
        let narrow = ps_table(std::slice::from_ref(&v), false);
        let wide = ps_table(&[v], true);
        assert!(narrow.contains("web") && !narrow.contains("BOOTS"));
        let row = wide.lines().nth(1).unwrap();
        assert!(
            row.contains(" 42 ") && row.contains("1.50") && row.contains("10.0"),
            "{row}"
        );
    }
}
