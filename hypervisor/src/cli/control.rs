//! `dvs dc create/delete`, `dvs node join/remove`, and the control-plane part of `dvs node status`: live
//! changes of a cluster on etcd (a node with a static cluster file refuses them: 409 `static_cluster`).

use anyhow::{anyhow, Context};
use dvs_proxy::{DcInfo, NodeInfo};

use super::{print_json, Ctx};
use crate::control::ControlView;

/// `dvs dc create NAME --id N --nodes 1,2`.
pub(super) async fn dc_create(
    ctx: &Ctx,
    name: &str,
    id: u16,
    nodes: Vec<u16>,
) -> anyhow::Result<()> {
    let dc = DcInfo {
        id,
        name: name.into(),
        nodes,
        limit: Default::default(),
        quota: Default::default(),
    };
    ctx.node
        .post_json("/v1/dcs", &dc)
        .await
        .with_context(|| format!("creating DC {id} '{name}'"))?;
    println!("created DC {id} '{name}' on nodes {:?}", dc.nodes);
    Ok(())
}

/// `dvs dc delete DC` (number or name).
pub(super) async fn dc_delete(ctx: &Ctx, dc: &str) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let id = cluster
        .dc_by_name(dc)
        .map(|d| d.id)
        .ok_or_else(|| anyhow!("no DC '{dc}' in the cluster"))?;
    ctx.node
        .delete_json(&format!("/v1/dcs/{id}"))
        .await
        .with_context(|| format!("deleting DC {id}"))?;
    println!("deleted DC {id}");
    Ok(())
}

/// `dvs node join --id N --proxy ADDR --api ADDR`: registers a member before its daemon starts.
pub(super) async fn node_join(ctx: &Ctx, node: NodeInfo) -> anyhow::Result<()> {
    ctx.node
        .post_json("/v1/nodes", &node)
        .await
        .with_context(|| format!("adding node {}", node.id))?;
    println!(
        "node {} is a member (proxy {}, API {}); start its daemon with etcd in its node.toml",
        node.id, node.proxy, node.api
    );
    Ok(())
}

/// `dvs node remove N`.
pub(super) async fn node_remove(ctx: &Ctx, id: u16) -> anyhow::Result<()> {
    ctx.node
        .delete_json(&format!("/v1/nodes/{id}"))
        .await
        .with_context(|| format!("removing node {id}"))?;
    println!("node {id} removed from the cluster");
    Ok(())
}

/// The node's view of the control plane (`GET /v1/control`).
pub(super) async fn view(ctx: &Ctx) -> anyhow::Result<ControlView> {
    let v = ctx.node.get_json("/v1/control").await?;
    Ok(serde_json::from_value(v)?)
}

/// `dvs dc ls --owners` and `dvs node status`'s membership lines.
pub(super) fn print_members(v: &ControlView) {
    if v.mode != "etcd" {
        println!("  cluster: static (the cluster file)");
        return;
    }
    println!(
        "  cluster: etcd {} at revision {}, this node's lease {:x} (TTL {} s)",
        v.endpoints.join(","),
        v.revision,
        v.lease,
        v.lease_ttl_s
    );
    for m in &v.members {
        println!(
            "  member node {}: {} (proxy {}, API {})",
            m.node.id,
            if m.alive { "alive" } else { "DEAD (no lease)" },
            m.node.proxy,
            m.node.api
        );
    }
}

/// `dvs owners`: which instance owns each endpoint (etcd clusters).
pub(super) async fn owners(ctx: &Ctx) -> anyhow::Result<()> {
    let v = view(ctx).await?;
    if ctx.json {
        return print_json(&v.owners);
    }
    if v.mode != "etcd" {
        println!("the cluster is static (no etcd): owners are in `dvs api /v1/directory`");
        return Ok(());
    }
    println!(
        "{:>4} {:>10} {:>4} {:<16} {:>18}",
        "DC", "ENDPOINT", "NODE", "INSTANCE", "GEN"
    );
    for o in &v.owners {
        println!(
            "{:>4} {:>10} {:>4} {:<16} {:>18}",
            o.dc, o.ep, o.node, o.instance, o.gen
        );
    }
    Ok(())
}

/// `dvs console`: asks the node for a console login link and prints it.
pub(super) async fn console(ctx: &Ctx, url_only: bool) -> anyhow::Result<()> {
    let v = ctx
        .node
        .post_json("/v1/console/login", &serde_json::json!({}))
        .await
        .context("asking the node for a console login link")?;
    let path = v["path"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the node's answer has no login path: {v}"))?;
    let url = format!("{}{path}", ctx.node.url().trim_end_matches('/'));
    if url_only || ctx.json {
        if ctx.json {
            return print_json(
                &serde_json::json!({ "url": url, "expires_s": v["expires_s"], "role": v["role"] }),
            );
        }
        println!("{url}");
        return Ok(());
    }
    println!("{url}");
    println!(
        "open it in a browser within {} s (it works once; the session is {}). The node's certificate comes from \
         its API CA: import that CA (the `ca` of your credential file) or accept the certificate once.",
        v["expires_s"].as_u64().unwrap_or(120),
        v["role"].as_str().unwrap_or("?"),
    );
    Ok(())
}

/// `dvs node drain N [--to M]`: migrates every instance of node N away, one at a time.
pub(super) async fn node_drain(ctx: &Ctx, node: u16, to: Option<u16>) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let nodes = ctx.nodes().await?;
    let source = nodes
        .get(&node)
        .ok_or_else(|| anyhow!("node {node} is not in the cluster"))?;
    let (all, down) = super::cluster::all_instances(ctx).await?;
    if down.contains(&node) {
        anyhow::bail!("node {node} does not answer: its instances cannot be moved by a migration");
    }
    // Instances per node as they will be: each move counts where it lands.
    let mut load: std::collections::BTreeMap<u16, usize> = std::collections::BTreeMap::new();
    for i in &all {
        *load.entry(i.node).or_default() += 1;
    }
    let mut moved = Vec::new();
    let mut kept = Vec::new();
    for v in all.iter().filter(|i| i.node == node) {
        let name = &v.spec.name;
        if !v.spec.volumes.is_empty() {
            kept.push(format!(
                "{name} (volumes {}: a volume cannot follow yet)",
                crate::instances::volume_names(&v.spec)
            ));
            continue;
        }
        let dest = match to {
            Some(t) => Some(t),
            None => cluster
                .dc(m3ipc_core::DcId(v.spec.dc))
                .map(|dc| dc.nodes.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|n| *n != node && !down.contains(n) && nodes.contains_key(n))
                .min_by_key(|n| (load.get(n).copied().unwrap_or(0), *n)),
        };
        let Some(dest) = dest else {
            kept.push(format!(
                "{name} (no other node of DC {} answers)",
                v.spec.dc
            ));
            continue;
        };
        match source.migrate(name, dest).await {
            Ok(r) => {
                println!(
                    "moved {name}: node {node} -> node {dest} in {} ms",
                    r.took_ms
                );
                *load.entry(dest).or_default() += 1;
                moved.push(name.clone());
            }
            Err(e) => kept.push(format!("{name} (migrating to node {dest}: {e})")),
        }
    }
    if ctx.json {
        print_json(&serde_json::json!({ "node": node, "moved": moved, "kept": kept }))?;
    }
    if !kept.is_empty() {
        anyhow::bail!(
            "node {node}: {} instance(s) moved, {} stay: {}",
            moved.len(),
            kept.len(),
            kept.join("; ")
        );
    }
    if !ctx.json {
        println!("node {node} is empty: {} instance(s) moved", moved.len());
    }
    Ok(())
}
