//! `dvs run` and `dvs apply`: starting instances, one by one or from a DC manifest.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context};

use super::cluster::all_instances;
use super::images::upload;
use super::{print_json, Ctx, RunArgs};
use crate::client::{ClientError, NodeClient};
use crate::config::BackendKind;
use crate::instances::{InstanceSpec, RestartPolicy, RunRequest};
use crate::manifest::{load_image, DcManifest};

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

pub(super) async fn apply(
    ctx: &Ctx,
    file: &std::path::Path,
    prune: bool,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let m = DcManifest::load(file)?;
    let cluster = ctx.cluster().await?;
    let nodes = ctx.nodes().await?;
    let mut images = BTreeMap::new();
    for e in &m.images {
        images.insert(e.name.clone(), load_image(&e.path, e.manifest.as_deref())?);
    }
    let (existing, down) = all_instances(ctx).await?;
    let plan = crate::apply::Apply {
        cluster: &cluster,
        nodes: &nodes,
        existing: &existing,
        down: &down,
        images: &images,
        prune,
    };
    let applied = plan
        .run(
            &m,
            &format!("{}", file.display()),
            async |c: &NodeClient, img: &crate::manifest::LoadedImage, node: u16| {
                upload(c, img, format!("{} -> node {node}", img.manifest.name)).await
            },
            &mut |line: String| println!("{line}"),
        )
        .await?;
    match wait {
        Some(timeout) => wait_running(&nodes, &applied.started, timeout).await,
        None => Ok(()),
    }
}

/// Waits until each started instance is running (a progress bar on a terminal); an instance that exits or
/// fails first, or is not running within `timeout`, is an error naming it and why.
async fn wait_running(
    nodes: &BTreeMap<u16, NodeClient>,
    started: &[(u16, String)],
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    use crate::instances::State;
    use std::io::IsTerminal;
    if started.is_empty() {
        return Ok(());
    }
    let pb = if std::io::stderr().is_terminal() {
        let pb = indicatif::ProgressBar::new(started.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:20}] {pos}/{len} running, {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    for (node, name) in started {
        let c = nodes
            .get(node)
            .ok_or_else(|| anyhow!("node {node} is not in the cluster"))?;
        pb.set_message(format!("waiting for {name} (node {node})"));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (v, done) = c
            .wait_instance(name, left, |v| {
                matches!(v.state, State::Running | State::Exited | State::Failed)
            })
            .await
            .with_context(|| format!("waiting for {name} on node {node}"))?;
        if !done || v.state != State::Running {
            pb.abandon();
            let why = v
                .last_exit
                .clone()
                .unwrap_or_else(|| format!("{:?}", v.state).to_lowercase());
            anyhow::bail!(
                "{name} on node {node} is not running after {} s: {why} (see `dvs logs {name}`)",
                timeout.as_secs()
            );
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    println!("{} instance(s) running", started.len());
    Ok(())
}
