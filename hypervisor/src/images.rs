//! The image store: kernel ELFs with their manifests, content-addressed by sha256 under
//! `<data_dir>/images/<sha256>/{kernel.elf,manifest.json}`, verified on upload, kept across restarts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An image's manifest: what it is and what it can run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Image name (e.g. `vos`).
    pub name: String,
    /// Version string.
    #[serde(default)]
    pub version: String,
    /// sha256 of the kernel ELF, hex.
    pub sha256: String,
    /// Default memory in MiB.
    #[serde(
        default = "default_memory",
        alias = "memory_mib",
        alias = "default_memory_mib"
    )]
    pub memory: u32,
    /// Services the image can run.
    #[serde(default)]
    pub services: Vec<String>,
}

fn default_memory() -> u32 {
    64
}

/// Why the image store refused.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bytes do not hash to the announced sha256.
    #[error("image data hashes to {actual}, not the announced {expected}")]
    Mismatch {
        /// Announced.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Not a 64-hex-digit sha256.
    #[error("'{0}' is not a sha256 (64 hex digits)")]
    BadDigest(String),
    /// No image matches the reference.
    #[error("no image '{0}' on this node (push it with `dvs image push`)")]
    NotFound(String),
    /// Several images match a short reference.
    #[error("'{0}' names more than one image; give more of the sha256 or name:version")]
    Ambiguous(String),
    /// The manifest is unusable.
    #[error("bad manifest: {0}")]
    BadManifest(String),
    /// Disk trouble.
    #[error("image store at {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: std::io::Error,
    },
}

/// A stored image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Image {
    /// The manifest (its `sha256` is the image id).
    pub manifest: Manifest,
    /// Kernel size in bytes.
    pub size: u64,
    /// Path of the kernel ELF.
    pub kernel: PathBuf,
}

/// The store under one data directory.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl ImageStore {
    /// Opens (and creates) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<ImageStore, ImageError> {
        let root = data_dir.join("images");
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(ImageStore { root })
    }

    /// Stores `kernel` with `manifest` after checking that it hashes to `sha256`. Idempotent.
    pub fn put(
        &self,
        sha256: &str,
        kernel: &[u8],
        mut manifest: Manifest,
    ) -> Result<Image, ImageError> {
        if !is_digest(sha256) {
            return Err(ImageError::BadDigest(sha256.into()));
        }
        let actual = sha256_hex(kernel);
        if actual != sha256 {
            return Err(ImageError::Mismatch {
                expected: sha256.into(),
                actual,
            });
        }
        if manifest.name.is_empty() || manifest.name.contains([':', '/']) {
            return Err(ImageError::BadManifest(format!(
                "image name '{}'",
                manifest.name
            )));
        }
        manifest.sha256 = sha256.into();
        let dir = self.root.join(sha256);
        let tmp = self.root.join(format!(".{sha256}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        std::fs::write(tmp.join("kernel.elf"), kernel).map_err(io(&tmp))?;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ImageError::BadManifest(e.to_string()))?;
        std::fs::write(tmp.join("manifest.json"), json).map_err(io(&tmp))?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        self.load(sha256)
    }

    fn load(&self, sha256: &str) -> Result<Image, ImageError> {
        let dir = self.root.join(sha256);
        let mpath = dir.join("manifest.json");
        let text = std::fs::read(&mpath).map_err(io(&mpath))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| ImageError::BadManifest(e.to_string()))?;
        let kernel = dir.join("kernel.elf");
        let size = std::fs::metadata(&kernel).map_err(io(&kernel))?.len();
        Ok(Image {
            manifest,
            size,
            kernel,
        })
    }

    /// Every stored image, by name then version.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut v = vec![];
        for e in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let e = e.map_err(io(&self.root))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_digest(&name) {
                if let Ok(img) = self.load(&name) {
                    v.push(img);
                }
            }
        }
        v.sort_by(|a, b| {
            (&a.manifest.name, &a.manifest.version).cmp(&(&b.manifest.name, &b.manifest.version))
        });
        Ok(v)
    }

    /// Finds an image by sha256 (or a unique prefix of at least 8 digits), `name:version` or `name` (the only
    /// or newest-stored image of that name).
    pub fn find(&self, reference: &str) -> Result<Image, ImageError> {
        let all = self.list()?;
        let by_sha: Vec<_> = all
            .iter()
            .filter(|i| reference.len() >= 8 && i.manifest.sha256.starts_with(reference))
            .collect();
        let hits: Vec<_> = if !by_sha.is_empty() {
            by_sha
        } else if let Some((name, version)) = reference.split_once(':') {
            all.iter()
                .filter(|i| i.manifest.name == name && i.manifest.version == version)
                .collect()
        } else {
            let named: Vec<_> = all
                .iter()
                .filter(|i| i.manifest.name == reference)
                .collect();
            let newest = named
                .iter()
                .max_by_key(|i| std::fs::metadata(&i.kernel).and_then(|m| m.modified()).ok());
            newest.map(|i| vec![*i]).unwrap_or_default()
        };
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ImageError::NotFound(reference.into())),
            _ => Err(ImageError::Ambiguous(reference.into())),
        }
    }

    /// Re-hashes a stored image (a check that the disk still holds what was uploaded).
    pub fn verify(&self, image: &Image) -> Result<bool, ImageError> {
        let bytes = std::fs::read(&image.kernel).map_err(io(&image.kernel))?;
        Ok(sha256_hex(&bytes) == image.manifest.sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            version: "1".into(),
            sha256: String::new(),
            memory: 32,
            services: vec!["echo".into()],
        }
    }

    #[test]
    fn put_verifies_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("dvs-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = ImageStore::open(&dir).unwrap();
        let data = b"\x7fELF not really";
        let sha = sha256_hex(data);
        assert!(matches!(
            store.put(&"0".repeat(64), data, manifest("vos")),
            Err(ImageError::Mismatch { .. })
        ));
        assert!(matches!(
            store.put("xyz", data, manifest("vos")),
            Err(ImageError::BadDigest(_))
        ));
        let img = store.put(&sha, data, manifest("vos")).unwrap();
        assert_eq!(img.size, data.len() as u64);
        let store = ImageStore::open(&dir).unwrap();
        assert_eq!(store.find("vos").unwrap(), img);
        assert_eq!(store.find("vos:1").unwrap(), img);
        assert_eq!(store.find(&sha[..10]).unwrap(), img);
        assert!(store.verify(&img).unwrap());
        assert!(matches!(store.find("nope"), Err(ImageError::NotFound(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
