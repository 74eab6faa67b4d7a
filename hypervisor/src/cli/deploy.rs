//! `dvs run` and `dvs apply`: starting instances, one by one or from a DC manifest.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context};

use super::cluster::all_instances;
use super::images::upload;
use super::{print_json, Ctx, RunArgs};
use crate::client::{ClientError, NodeClient};
use crate::config::BackendKind;
use crate::instances::{InstanceSpec, RestartPolicy, RunRequest, State};
use crate::manifest::{load_image, DcManifest};
use crate::volumes::ByteSize;

pub(super) async fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let dc = cluster.dc_by_name(&a.dc).ok_or_else(|| {
        anyhow!(ClientError::Api {
            url: ctx.node.url().into(),
            status: 404,
            code: "dc".into(),
            body_error: format!("DC '{}' is not in the cluster (see `dvs dc ls`)", a.dc),
        })
    })?;
    let restart: RestartPolicy =
        serde_json::from_value(serde_json::Value::String(a.restart.clone()))
            .map_err(|_| anyhow!("--restart {}: use never, on-failure or always", a.restart))?;
    let name = a.name.unwrap_or_else(|| {
        format!(
            "{}-{}",
            a.image.split(':').next().unwrap_or("vm"),
            a.ep.first().copied().unwrap_or(0)
        )
    });
    let spec = InstanceSpec {
        name,
        image: a.image,
        dc: dc.id,
        endpoints: a.ep,
        services: a.svc,
        memory: a.mem,
        ip: a.ip,
        args: a.arg,
        publish: a.publish,
        restart,
        backend: (a.process || !a.process_arg.is_empty()).then_some(BackendKind::Process),
        process_args: a.process_arg,
        volumes: a.volume,
        limits: crate::instances::LimitsSpec {
            memory_mib: a.limit_mem,
            cpu_percent: a.limit_cpu,
            pids: a.limit_pids,
        },
    };
    let c = match a.on {
        Some(id) => ctx.client_of(id).await?,
        None => ctx.node.clone(),
    };
    let v = c
        .run(&RunRequest {
            spec,
            takeover_gen: None,
        })
        .await?;
    if ctx.json {
        return print_json(&v);
    }
    println!(
        "started {} on node {} in DC {} (endpoints {:?})",
        v.spec.name, v.node, v.spec.dc, v.spec.endpoints
    );
    Ok(())
}

/// Refuses, before anything is stopped, volumes that node `node` holds with another size or for another
/// instance (the node would refuse them too, but only after the old instance was stopped).
async fn check_volumes(c: &NodeClient, spec: &InstanceSpec, node: u16) -> anyhow::Result<()> {
    let have = c
        .volumes()
        .await
        .with_context(|| format!("listing the volumes of node {node}"))?;
    for want in &spec.volumes {
        let Some(v) = have.iter().find(|v| v.dc == spec.dc && v.name == want.name) else {
            continue;
        };
        let size = ByteSize::parse(&want.size)
            .map_err(|e| anyhow!("instance '{}': volume '{}': {e}", spec.name, want.name))?;
        if size.0 != v.size {
            bail!(
                "instance '{}': volume '{}' exists on node {node} with {}, the manifest asks for {}: volumes are \
                 not resized (ask for {}, or `dvs volume rm --dc {} {}` to start over without its data)",
                spec.name,
                want.name,
                ByteSize(v.size),
                want.size,
                ByteSize(v.size),
                spec.dc,
                want.name
            );
        }
        if let Some(other) = v.attached.as_ref().filter(|a| **a != spec.name) {
            bail!(
                "instance '{}': volume '{}' on node {node} is attached to instance '{other}'",
                spec.name,
                want.name
            );
        }
    }
    Ok(())
}

pub(super) async fn apply(ctx: &Ctx, file: &std::path::Path, prune: bool) -> anyhow::Result<()> {
    let m = DcManifest::load(file)?;
    let cluster = ctx.cluster().await?;
    let dc = match (&m.dc.id, &m.dc.name) {
        (Some(id), _) => cluster.dc(m3ipc_core::DcId(*id)),
        (None, Some(name)) => cluster.dc_by_name(name),
        (None, None) => bail!("{}: [dc] needs id or name", file.display()),
    }
    .ok_or_else(|| anyhow!("{}: DC {:?} is not in the cluster", file.display(), m.dc))?
    .clone();
    let nodes = ctx.nodes().await?;
    let mut images = BTreeMap::new();
    for e in &m.images {
        images.insert(e.name.clone(), load_image(&e.path, e.manifest.as_deref())?);
    }
    let shas: BTreeMap<String, String> = images
        .iter()
        .map(|(k, v)| (k.clone(), v.manifest.sha256.clone()))
        .collect();
    let (existing, down) = all_instances(ctx).await?;
    let mut changed = 0;
    for entry in &m.instances {
        let spec = m.spec(entry, dc.id, &shas)?;
        let c = nodes.get(&entry.node).ok_or_else(|| {
            anyhow!(
                "instance '{}': node {} is not in the cluster",
                entry.name,
                entry.node
            )
        })?;
        if down.contains(&entry.node) {
            bail!(
                "instance '{}': node {} does not answer",
                entry.name,
                entry.node
            );
        }
        let found = existing
            .iter()
            .find(|i| i.spec.name == spec.name && i.spec.dc == dc.id);
        if let Some(cur) = found {
            if cur.spec == spec && cur.state == State::Running {
                println!("unchanged {} (node {})", spec.name, cur.node);
                continue;
            }
            if cur.node != entry.node && !cur.spec.volumes.is_empty() {
                bail!(
                    "instance '{}' runs on node {} with volumes ({}); the manifest puts it on node {}, but a volume \
                     cannot follow an instance to another node yet: keep node = {} (its volumes stay there until \
                     `dvs volume rm`)",
                    spec.name,
                    cur.node,
                    crate::instances::volume_names(&cur.spec),
                    entry.node,
                    cur.node
                );
            }
        }
        if !spec.volumes.is_empty() {
            check_volumes(c, &spec, entry.node).await?;
        }
        if let Some(cur) = found {
            if let Some(old) = nodes.get(&cur.node) {
                old.stop(&spec.name)
                    .await
                    .with_context(|| format!("replacing {}", spec.name))?;
            }
        }
        if let Some(img) = images.get(&entry.image) {
            if c.image(&img.manifest.sha256).await.is_err() {
                upload(
                    c,
                    img,
                    format!("{} -> node {}", img.manifest.name, entry.node),
                )
                .await?;
                println!("pushed image {} to node {}", img.manifest.name, entry.node);
            }
        }
        let v = c
            .run(&RunRequest {
                spec,
                takeover_gen: None,
            })
            .await
            .with_context(|| format!("starting {} on node {}", entry.name, entry.node))?;
        println!(
            "{} {} (node {}, endpoints {:?})",
            if found.is_some() {
                "replaced"
            } else {
                "created"
            },
            v.spec.name,
            v.node,
            v.spec.endpoints
        );
        changed += 1;
    }
    let listed: Vec<&str> = m.instances.iter().map(|i| i.name.as_str()).collect();
    for extra in existing
        .iter()
        .filter(|i| i.spec.dc == dc.id && !listed.contains(&i.spec.name.as_str()))
    {
        if prune {
            if let Some(c) = nodes.get(&extra.node) {
                c.stop(&extra.spec.name).await?;
                println!("pruned {} (node {})", extra.spec.name, extra.node);
                changed += 1;
            }
        } else {
            println!(
                "kept {} (node {}): not in the manifest (use --prune to stop it)",
                extra.spec.name, extra.node
            );
        }
    }
    println!("DC {} ({}): {} change(s)", dc.id, dc.name, changed);
    Ok(())
}
