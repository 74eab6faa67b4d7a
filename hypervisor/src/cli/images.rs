//! `dvs image push`, `dvs image ls`, and the upload with progress bars that `dvs apply` uses too.

use std::io::IsTerminal;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::{print_json, Ctx};
use crate::client::NodeClient;
use crate::manifest::{load_image, LoadedImage};

fn bar(len: u64, msg: String) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(msg);
    pb
}

fn hash_with_progress(bytes: &[u8]) -> String {
    let pb = bar(bytes.len() as u64, "sha256".into());
    let mut h = Sha256::new();
    for chunk in bytes.chunks(1 << 20) {
        h.update(chunk);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    hex::encode(h.finalize())
}

pub(super) async fn upload(c: &NodeClient, img: &LoadedImage, label: String) -> anyhow::Result<()> {
    // Said before the upload: a node refuses an oversized image as it streams in, and the client may see
    // only the closed connection then.
    let len = img.bytes.len() as u64;
    if let Some(max) = c.status().await.ok().and_then(|s| s.max_image) {
        if len > max {
            bail!(
                "{} is {len} bytes: {} takes images of at most {max} bytes (max_image in its node.toml)",
                img.manifest.name,
                c.url()
            );
        }
    }
    let pb = bar(img.bytes.len() as u64, label);
    let chunks: Vec<bytes::Bytes> = img
        .bytes
        .chunks(64 << 10)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let pb2 = pb.clone();
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
        pb2.inc(c.len() as u64);
        Ok::<_, std::io::Error>(c)
    }));
    let r = c
        .push_image(&img.manifest, reqwest::Body::wrap_stream(stream))
        .await;
    pb.finish_and_clear();
    r.with_context(|| format!("pushing {} to {}", img.manifest.name, c.url()))?;
    Ok(())
}

pub(super) async fn push(
    ctx: &Ctx,
    file: &std::path::Path,
    manifest: Option<&std::path::Path>,
    all: bool,
) -> anyhow::Result<()> {
    let img = load_image(file, manifest)?;
    let sha = hash_with_progress(&img.bytes);
    let targets: Vec<(String, NodeClient)> = if all {
        ctx.nodes()
            .await?
            .into_iter()
            .map(|(id, c)| (format!("node {id}"), c))
            .collect()
    } else {
        vec![(ctx.node.url().to_string(), ctx.node.clone())]
    };
    for (label, c) in targets {
        upload(&c, &img, format!("{} -> {label}", img.manifest.name)).await?;
        let check = c.image(&sha).await?;
        if !check.verified {
            bail!(
                "{label} stored {} but it does not re-hash to {sha}",
                img.manifest.name
            );
        }
        println!(
            "pushed {} {} sha256:{sha} to {label} (verified)",
            img.manifest.name, img.manifest.version
        );
    }
    Ok(())
}

pub(super) async fn image_ls(ctx: &Ctx) -> anyhow::Result<()> {
    let images = ctx.node.images().await?;
    if ctx.json {
        return print_json(&images);
    }
    println!(
        "{:<12} {:<10} {:<14} {:>10} {:>6}  SERVICES",
        "NAME", "VERSION", "SHA256", "SIZE", "MEM"
    );
    for i in images {
        let m = &i.manifest;
        println!(
            "{:<12} {:<10} {:<14} {:>10} {:>5}M  {}",
            m.name,
            m.version,
            &m.sha256[..12],
            i.size,
            m.memory,
            m.services.join(",")
        );
    }
    Ok(())
}
