//! `dvs apply dc.toml`: a declarative DC manifest (images, instances and where they run), deployed across
//! the cluster. Applying the same manifest twice changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::config::BackendKind;
use crate::images::Manifest as ImageManifest;
use crate::instances::Publish;
use crate::instances::{InstanceSpec, RestartPolicy};
use crate::volumes::{valid_volume_name, ByteSize, VolumeRequest};

/// The manifest file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcManifest {
    /// The DC (by number or name).
    pub dc: DcRef,
    /// Images the instances use, pushed to the nodes that lack them.
    #[serde(default, rename = "image")]
    pub images: Vec<ImageEntry>,
    /// The instances.
    #[serde(default, rename = "instance")]
    pub instances: Vec<InstanceEntry>,
}

/// Which DC.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcRef {
    /// Number.
    pub id: Option<u16>,
    /// Name.
    pub name: Option<String>,
}

/// An image file and its manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// Name the instances use.
    pub name: String,
    /// Kernel ELF (relative to the manifest file).
    pub path: PathBuf,
    /// Image manifest JSON (default: the ELF path with `.manifest.json` in place of `.elf`).
    pub manifest: Option<PathBuf>,
}

/// One instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceEntry {
    /// Name.
    pub name: String,
    /// Image name (an `[[image]]` entry) or reference already on the node.
    pub image: String,
    /// Node to run on.
    pub node: u16,
    /// Endpoints.
    #[serde(default)]
    pub endpoints: Vec<u32>,
    /// Services.
    #[serde(default)]
    pub services: Vec<String>,
    /// Memory in MiB.
    pub memory: Option<u32>,
    /// Fabric IP with prefix.
    pub ip: Option<String>,
    /// Extra command-line words.
    #[serde(default)]
    pub args: Vec<String>,
    /// Published TCP ports, `[ADDR:]HOST:GUEST` (ADDR an IPv4 address, default 127.0.0.1).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Backend override (`process`: the node's process program, for test doubles).
    pub backend: Option<BackendKind>,
    /// Arguments of the process program (with `backend = "process"`).
    #[serde(default)]
    pub process_args: Vec<String>,
    /// Volumes on its node, `[{ name = "data", size = "64M" }]`: created on first use, kept until
    /// `dvs volume rm`; they stay on `node` (an instance with volumes is not moved to another node).
    #[serde(default)]
    pub volumes: Vec<VolumeRequest>,
    /// Host limits of its machine where the node confines instances:
    /// `limits = { memory_mib = 160, cpu_percent = 100, pids = 64 }` (each optional).
    #[serde(default)]
    pub limits: crate::instances::LimitsSpec,
}

/// A loaded image: bytes and manifest with its sha256.
pub struct LoadedImage {
    /// Kernel bytes.
    pub bytes: Vec<u8>,
    /// Manifest (sha256 filled in).
    pub manifest: ImageManifest,
}

/// Reads an image ELF and its manifest JSON, computing the sha256; a version without `+` gets
/// `+<first 8 digits of the sha256>` (`0.1.0` → `0.1.0+ebe0d670`).
pub fn load_image(elf: &Path, manifest: Option<&Path>) -> anyhow::Result<LoadedImage> {
    let bytes = std::fs::read(elf).with_context(|| format!("reading image {}", elf.display()))?;
    let mpath = manifest
        .map(Path::to_owned)
        .unwrap_or_else(|| elf.with_extension("manifest.json"));
    let text = std::fs::read(&mpath)
        .with_context(|| format!("reading image manifest {}", mpath.display()))?;
    let mut m: ImageManifest =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", mpath.display()))?;
    let sha = crate::images::sha256_hex(&bytes);
    if !m.sha256.is_empty() && m.sha256 != sha {
        bail!(
            "{} says sha256 {} but {} hashes to {sha}",
            mpath.display(),
            m.sha256,
            elf.display()
        );
    }
    // Images are immutable by name and version: a version without build metadata gets the build's own
    // (the sha256's first 8 digits), so that rebuilding an image makes a new version instead of a conflict.
    if !m.version.contains('+') {
        let base = if m.version.is_empty() {
            "0"
        } else {
            &m.version
        };
        m.version = format!("{base}+{}", &sha[..8]);
    }
    m.sha256 = sha;
    Ok(LoadedImage { bytes, manifest: m })
}

impl DcManifest {
    /// Reads a manifest file.
    pub fn load(path: &Path) -> anyhow::Result<DcManifest> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        DcManifest::parse(&text, path)
    }

    /// Parses manifest text read from `path` (image paths become relative to its folder).
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<DcManifest> {
        let mut m: DcManifest =
            toml::from_str(text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for i in &mut m.images {
            i.path = base.join(&i.path);
            i.manifest = i.manifest.as_ref().map(|p| base.join(p));
        }
        let mut names = BTreeMap::new();
        for i in &m.instances {
            if names.insert(i.name.clone(), ()).is_some() {
                bail!("{}: instance '{}' is listed twice", path.display(), i.name);
            }
            for v in &i.volumes {
                if !valid_volume_name(&v.name) {
                    bail!(
                        "{}: instance '{}': volume name '{}': use 1-63 of a-z, 0-9 and -, starting with a letter or digit",
                        path.display(),
                        i.name,
                        v.name.escape_debug()
                    );
                }
                ByteSize::parse(&v.size).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: instance '{}': volume '{}': {e}",
                        path.display(),
                        i.name,
                        v.name
                    )
                })?;
            }
        }
        Ok(m)
    }

    /// The instance spec of `entry` in DC `dc`, with images named in `[[image]]` replaced by their sha256.
    pub fn spec(
        &self,
        entry: &InstanceEntry,
        dc: u16,
        shas: &BTreeMap<String, String>,
    ) -> anyhow::Result<InstanceSpec> {
        let publish = entry
            .publish
            .iter()
            .map(|p| p.parse::<Publish>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("instance '{}'", entry.name))?;
        Ok(InstanceSpec {
            name: entry.name.clone(),
            image: shas
                .get(&entry.image)
                .cloned()
                .unwrap_or_else(|| entry.image.clone()),
            dc,
            endpoints: entry.endpoints.clone(),
            services: entry.services.clone(),
            memory: entry.memory,
            ip: entry.ip.clone(),
            args: entry.args.clone(),
            publish,
            restart: entry.restart,
            backend: entry.backend,
            process_args: entry.process_args.clone(),
            volumes: entry.volumes.clone(),
            limits: entry.limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[dc]
name = "web"
[[image]]
name = "vos"
path = "../images/vos.elf"
[[instance]]
name = "web"
image = "vos"
node = 1
endpoints = [10]
services = ["http", "echo"]
publish = ["8080:80", "0.0.0.0:8081:81"]
restart = "on-failure"
volumes = [{ name = "data", size = "64M" }]
"#;

    #[test]
    fn a_manifest_becomes_specs_with_image_digests() {
        let m = DcManifest::parse(TEXT, Path::new("examples/web-dc.toml")).unwrap();
        assert_eq!(m.images[0].path, Path::new("examples/../images/vos.elf"));
        let shas = BTreeMap::from([("vos".to_string(), "ab".repeat(32))]);
        let spec = m.spec(&m.instances[0], 1, &shas).unwrap();
        assert_eq!(spec.image, "ab".repeat(32));
        assert_eq!(
            spec.publish,
            vec![
                Publish {
                    addr: Publish::DEFAULT_ADDR,
                    host: 8080,
                    guest: 80
                },
                Publish {
                    addr: std::net::Ipv4Addr::UNSPECIFIED,
                    host: 8081,
                    guest: 81
                }
            ]
        );
        assert_eq!(spec.restart, RestartPolicy::OnFailure);
        assert_eq!(
            spec.volumes,
            vec![VolumeRequest {
                name: "data".into(),
                size: "64M".into()
            }]
        );
    }

    #[test]
    fn bad_manifests_are_refused_with_the_reason() {
        let twice = format!("{TEXT}\n[[instance]]\nname = \"web\"\nimage = \"vos\"\nnode = 2\n");
        let e = DcManifest::parse(&twice, Path::new("m.toml")).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let typo = TEXT.replace("endpoints", "endpoint");
        assert!(DcManifest::parse(&typo, Path::new("m.toml")).is_err());
        let m = DcManifest::parse(
            &TEXT.replace("\"8080:80\"", "\"8080\""),
            Path::new("m.toml"),
        )
        .unwrap();
        assert!(m.spec(&m.instances[0], 1, &BTreeMap::new()).is_err());
        for (from, to, want) in [
            ("\"data\"", "\"../data\"", "volume name '../data'"),
            ("\"64M\"", "\"64 MB\"", "volume 'data': size '64 MB'"),
            ("size = ", "bytes = ", "unknown field `bytes`"),
        ] {
            let e = DcManifest::parse(&TEXT.replace(from, to), Path::new("m.toml")).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{e:#}");
        }
    }
}
