//! Applying a DC manifest to a cluster: what `dvs apply` and the web console's "apply" do.
//!
//! For each instance of the manifest: left alone when it runs as the manifest says, else (re)started on its
//! node, its image pushed there first when the manifest brings the image's bytes. Instances of the DC that
//! the manifest does not list are kept, or stopped with `prune`. Everything goes through the nodes' APIs
//! ([`NodeClient`]), so the checks (names, claims on etcd, quotas) are the API's.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context};
use dvs_proxy::ClusterMap;

use crate::client::NodeClient;
use crate::instances::{InstanceSpec, InstanceView, RunRequest, State};
use crate::manifest::{DcManifest, LoadedImage};
use crate::volumes::ByteSize;

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Instances started, replaced or pruned.
    pub changed: usize,
    /// The instances it (re)started: (node, name).
    pub started: Vec<(u16, String)>,
}

/// What an apply works with: the cluster as its nodes answered just before.
pub struct Apply<'a> {
    /// The cluster map (DCs and nodes).
    pub cluster: &'a ClusterMap,
    /// A client for every node, by id.
    pub nodes: &'a BTreeMap<u16, NodeClient>,
    /// Every instance of the cluster, as the nodes listed them.
    pub existing: &'a [InstanceView],
    /// Nodes that did not answer.
    pub down: &'a [u16],
    /// The images the manifest brings (`[[image]]` with a path), by the name its instances use.
    pub images: &'a BTreeMap<String, LoadedImage>,
    /// Stop the DC's instances that the manifest does not list.
    pub prune: bool,
}

impl Apply<'_> {
    /// Applies `m` (named `what` in errors), pushing images with `upload(client, image, node)` where a node
    /// lacks one, and telling `out` each line of progress. Returns what changed.
    pub async fn run(
        &self,
        m: &DcManifest,
        what: &str,
        upload: impl AsyncFn(&NodeClient, &LoadedImage, u16) -> anyhow::Result<()>,
        out: &mut (dyn FnMut(String) + Send),
    ) -> anyhow::Result<Applied> {
        let cluster = self.cluster;
        let dc = match (&m.dc.id, &m.dc.name) {
            (Some(id), _) => cluster.dc(m3ipc_core::DcId(*id)),
            (None, Some(name)) => cluster.dc_by_name(name),
            (None, None) => bail!("{what}: [dc] needs id or name"),
        }
        .ok_or_else(|| anyhow!("{what}: DC {:?} is not in the cluster", m.dc))?
        .clone();
        let (nodes, images, existing, down) = (self.nodes, self.images, self.existing, self.down);
        let shas: BTreeMap<String, String> = images
            .iter()
            .map(|(k, v)| (k.clone(), v.manifest.sha256.clone()))
            .collect();
        let mut changed = 0;
        let mut started = Vec::new();
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
                    out(format!("unchanged {} (node {})", spec.name, cur.node));
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
                    upload(c, img, entry.node).await?;
                    out(format!(
                        "pushed image {} to node {}",
                        img.manifest.name, entry.node
                    ));
                }
            }
            let v = c
                .run(&RunRequest {
                    spec,
                    takeover_gen: None,
                })
                .await
                .with_context(|| format!("starting {} on node {}", entry.name, entry.node))?;
            out(format!(
                "{} {} (node {}, endpoints {:?})",
                if found.is_some() {
                    "replaced"
                } else {
                    "created"
                },
                v.spec.name,
                v.node,
                v.spec.endpoints
            ));
            started.push((v.node, v.spec.name.clone()));
            changed += 1;
        }
        let listed: Vec<&str> = m.instances.iter().map(|i| i.name.as_str()).collect();
        for extra in existing
            .iter()
            .filter(|i| i.spec.dc == dc.id && !listed.contains(&i.spec.name.as_str()))
        {
            if self.prune {
                if let Some(c) = nodes.get(&extra.node) {
                    c.stop(&extra.spec.name).await?;
                    out(format!("pruned {} (node {})", extra.spec.name, extra.node));
                    changed += 1;
                }
            } else {
                out(format!(
                    "kept {} (node {}): not in the manifest (use --prune to stop it)",
                    extra.spec.name, extra.node
                ));
            }
        }
        out(format!("DC {} ({}): {} change(s)", dc.id, dc.name, changed));
        Ok(Applied { changed, started })
    }
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
