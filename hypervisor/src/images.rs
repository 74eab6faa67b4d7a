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
    /// Images are immutable: this name and version (or these bytes) are stored already as something else.
    #[error("{0}")]
    Taken(String),
    /// The bytes are not a kernel the node can boot.
    #[error("not a loadable kernel: {0}")]
    NotElf(String),
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
    /// Held from the conflict check to the rename, so that two pushes cannot both take a name and version.
    lock: std::sync::Arc<std::sync::Mutex<()>>,
}

/// A file being uploaded into the store (`images/.upload-*.tmp`): removed when dropped, unless it was
/// stored ([`ImageStore::put_file`] takes it).
#[derive(Debug)]
pub struct Upload {
    path: PathBuf,
}

impl Upload {
    /// Where the bytes go.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
        // Uploads a crashed daemon left behind.
        if let Ok(dir) = std::fs::read_dir(&root) {
            for e in dir.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') && n.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(ImageStore {
            root,
            lock: Default::default(),
        })
    }

    /// Checks what a push announces before any byte is read: the digest's form, the manifest's name
    /// (`[a-z0-9][a-z0-9-]{0,62}`) and version, and that images stay immutable: `Ok(Some(image))` when these
    /// bytes are stored already under this name and version (the push is a no-op), [`ImageError::Taken`] when
    /// the name and version hold other bytes or these bytes another name or version.
    pub fn check_push(
        &self,
        sha256: &str,
        manifest: &Manifest,
    ) -> Result<Option<Image>, ImageError> {
        use crate::validate::{check_name, shown, valid_version};
        if !is_digest(sha256) {
            return Err(ImageError::BadDigest(shown(sha256)));
        }
        check_name("image name", &manifest.name).map_err(ImageError::BadManifest)?;
        if !valid_version(&manifest.version) {
            return Err(ImageError::BadManifest(format!(
                "image version '{}': use [A-Za-z0-9][A-Za-z0-9.+_-]{{0,63}} (e.g. 0.1.0 or 0.1.0+{})",
                shown(&manifest.version),
                &sha256[..8]
            )));
        }
        if manifest.memory == 0 || manifest.memory > 1 << 20 {
            return Err(ImageError::BadManifest(format!(
                "memory {} MiB: between 1 and {}",
                manifest.memory,
                1 << 20
            )));
        }
        for svc in &manifest.services {
            check_name("service", svc).map_err(ImageError::BadManifest)?;
        }
        for i in self.list()? {
            let m = &i.manifest;
            let same_name = m.name == manifest.name && m.version == manifest.version;
            match (same_name, m.sha256 == sha256) {
                (true, true) => return Ok(Some(i)),
                (true, false) => {
                    return Err(ImageError::Taken(format!(
                        "image {}:{} exists with sha256 {} (images are immutable: push these bytes under \
                         another version)",
                        m.name, m.version, m.sha256
                    )))
                }
                (false, true) => {
                    return Err(ImageError::Taken(format!(
                        "these bytes (sha256 {sha256}) are stored already as image {}:{}",
                        m.name, m.version
                    )))
                }
                (false, false) => {}
            }
        }
        Ok(None)
    }

    /// A new, empty upload file in the store's folder (so that storing it is a rename).
    pub fn upload(&self) -> Result<(Upload, std::fs::File), ImageError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = self.root.join(format!(
            ".upload-{}-{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok((Upload { path }, file))
    }

    /// Stores the uploaded file `upload`, whose bytes hash to `actual`, as image `sha256` with `manifest`:
    /// refused (and the upload removed) when `actual` is not `sha256`, when it is not a loadable ELF
    /// ([`crate::validate::check_elf_file`]), or when [`ImageStore::check_push`] refuses.
    pub fn put_file(
        &self,
        sha256: &str,
        upload: Upload,
        actual: &str,
        mut manifest: Manifest,
    ) -> Result<Image, ImageError> {
        if actual != sha256 {
            return Err(ImageError::Mismatch {
                expected: crate::validate::shown(sha256),
                actual: actual.into(),
            });
        }
        crate::validate::check_elf_file(upload.path()).map_err(ImageError::NotElf)?;
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stored) = self.check_push(sha256, &manifest)? {
            return Ok(stored);
        }
        manifest.sha256 = sha256.into();
        let dir = self.root.join(sha256);
        let tmp = self.root.join(format!(".{sha256}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ImageError::BadManifest(e.to_string()))?;
        let stored = std::fs::write(tmp.join("manifest.json"), json)
            .and_then(|()| std::fs::rename(upload.path(), tmp.join("kernel.elf")))
            .and_then(|()| {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::rename(&tmp, &dir)
            });
        if let Err(e) = stored {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io(&dir)(e));
        }
        self.load(sha256)
    }

    /// Stores `kernel` with `manifest` after the checks of [`ImageStore::put_file`]. Idempotent.
    pub fn put(
        &self,
        sha256: &str,
        kernel: &[u8],
        manifest: Manifest,
    ) -> Result<Image, ImageError> {
        use std::io::Write;
        if let Some(stored) = self.check_push(sha256, &manifest)? {
            return Ok(stored);
        }
        let (upload, mut f) = self.upload()?;
        f.write_all(kernel)
            .and_then(|()| f.sync_all())
            .map_err(io(upload.path()))?;
        self.put_file(sha256, upload, &sha256_hex(kernel), manifest)
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
        let elf = crate::validate::minimal_elf(b"kernel");
        let data = &elf[..];
        let sha = sha256_hex(data);
        assert!(matches!(
            store.put(&"0".repeat(64), data, manifest("vos")),
            Err(ImageError::Mismatch { .. })
        ));
        assert!(matches!(
            store.put("xyz", data, manifest("vos")),
            Err(ImageError::BadDigest(_))
        ));
        let not_elf = b"\x7fELF not really";
        assert!(matches!(
            store.put(&sha256_hex(not_elf), not_elf, manifest("vos")),
            Err(ImageError::NotElf(_))
        ));
        for bad in ["", "Vos", "a/b", "..", "vos:1"] {
            assert!(matches!(
                store.put(&sha, data, manifest(bad)),
                Err(ImageError::BadManifest(_))
            ));
        }
        let img = store.put(&sha, data, manifest("vos")).unwrap();
        assert_eq!(img.size, data.len() as u64);
        // Immutable: the same push again is a no-op; other bytes under vos:1, or these bytes as vos:2, are not.
        assert_eq!(store.put(&sha, data, manifest("vos")).unwrap(), img);
        let other = crate::validate::minimal_elf(b"other");
        assert!(matches!(
            store.put(&sha256_hex(&other), &other, manifest("vos")),
            Err(ImageError::Taken(_))
        ));
        let mut v2 = manifest("vos");
        v2.version = "2".into();
        assert!(matches!(
            store.put(&sha, data, v2),
            Err(ImageError::Taken(_))
        ));
        // Nothing but the one image is left in the store's folder.
        let names: Vec<_> = std::fs::read_dir(dir.join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![sha.clone()]);
        let store = ImageStore::open(&dir).unwrap();
        assert_eq!(store.find("vos").unwrap(), img);
        assert_eq!(store.find("vos:1").unwrap(), img);
        assert_eq!(store.find(&sha[..10]).unwrap(), img);
        assert!(store.verify(&img).unwrap());
        assert!(matches!(store.find("nope"), Err(ImageError::NotFound(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
