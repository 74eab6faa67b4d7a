//! Volumes: named disk images of a DC on one node, created on first use by an instance that asks for them,
//! kept until an explicit `dvs volume rm`, attached to the instance's machine as a virtio-blk drive.
//!
//! A volume is `<data_dir>/volumes/dc-<dc>/<name>.img` (a sparse file: it takes disk space only where the
//! guest wrote) and `<name>.json` beside it (its [`VolumeRecord`]). The path is made here from the DC number
//! and a checked name (`[a-z0-9][a-z0-9-]{0,62}`), never taken from a request. A volume is attached to at
//! most one instance of the node at a time: from the instance's `run` until it is stopped (deleted); an
//! instance that exited or failed keeps it until then. A volume survives instance restarts, daemon restarts
//! (the restore path claims it again) and the instance's deletion; a volume does not follow a migration.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dvs_instance::Drive;
use serde::{Deserialize, Serialize};

/// The smallest volume (1 MiB).
pub const MIN_VOLUME: u64 = 1 << 20;
/// The default of `max_volume` in node.toml (16 GiB).
pub const DEFAULT_MAX_VOLUME: u64 = 16 << 30;
/// The most volumes one instance may ask for.
pub const MAX_VOLUMES_PER_INSTANCE: usize = 8;
/// A volume's size is a multiple of this (a disk sector).
pub const SECTOR: u64 = 512;

/// A number of bytes written with an optional binary suffix: `512`, `64K`, `64M`, `16G`, `1T`
/// (K = 1024). It is serialized as that text and read from text or a plain integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `<digits>[K|M|G|T]` (upper or lower case); an error names the text and says what is expected.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let (digits, shift) = match t.as_bytes().last() {
            Some(b'K' | b'k') => (&t[..t.len() - 1], 10),
            Some(b'M' | b'm') => (&t[..t.len() - 1], 20),
            Some(b'G' | b'g') => (&t[..t.len() - 1], 30),
            Some(b'T' | b't') => (&t[..t.len() - 1], 40),
            _ => (t, 0),
        };
        let bad = || {
            format!("size '{s}': expected a number with an optional K, M, G or T suffix (e.g. 64M)")
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("size '{s}' is too large"))
    }
}

impl std::fmt::Display for ByteSize {
    /// The largest unit that divides it exactly (`64M`, `1536K`, `1000`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<ByteSize, String> {
        ByteSize::parse(s)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            N(u64),
            S(String),
        }
        match Text::deserialize(d)? {
            Text::N(n) => Ok(ByteSize(n)),
            Text::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A volume an instance asks for: `{ name = "data", size = "64M" }` (in a DC manifest) or `data:64M`
/// (`dvs run --volume`). The size is kept as text here and checked by the node (a bad one is a 400 that
/// names it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRequest {
    /// The volume's name in the instance's DC: `[a-z0-9][a-z0-9-]{0,62}`.
    pub name: String,
    /// Its size: `<digits>[K|M|G|T]`, at least 1M, at most the node's `max_volume`.
    pub size: String,
}

impl std::str::FromStr for VolumeRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<VolumeRequest, String> {
        let (name, size) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}': expected NAME:SIZE, e.g. data:64M"))?;
        Ok(VolumeRequest {
            name: name.into(),
            size: size.into(),
        })
    }
}

/// True for a valid volume name: `[a-z0-9][a-z0-9-]{0,62}` (so never `.`, `/` or `..`).
pub fn valid_volume_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// What the node keeps about a volume (`<name>.json` beside its image).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// The DC.
    pub dc: u16,
    /// The name.
    pub name: String,
    /// Size in bytes (the image file's length).
    pub size: u64,
    /// When it was created (Unix seconds).
    pub created: u64,
    /// The instance it is attached to, if any.
    pub attached: Option<String>,
}

/// A volume as `GET /v1/volumes` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    /// The DC.
    pub dc: u16,
    /// The name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes the image takes on the host's disk now (it is sparse: what the guest wrote).
    pub allocated: u64,
    /// When it was created (Unix seconds).
    pub created: u64,
    /// The instance of this node it is attached to.
    pub attached: Option<String>,
    /// The image file on the node.
    pub path: PathBuf,
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A bad name, size or request (400).
    #[error("{0}")]
    Invalid(String),
    /// No such volume (404).
    #[error("no volume '{name}' in DC {dc} on this node")]
    NotFound {
        /// The DC.
        dc: u16,
        /// The name.
        name: String,
    },
    /// Attached to an instance (409).
    #[error("volume '{name}' of DC {dc} is attached to instance '{instance}' (a volume serves one instance at a time; `dvs stop {instance}` detaches it)")]
    Attached {
        /// The DC.
        dc: u16,
        /// The name.
        name: String,
        /// The instance holding it.
        instance: String,
    },
    /// It exists with another size (409): volumes are neither grown nor shrunk.
    #[error("volume '{name}' of DC {dc} exists with {have}, the spec asks for {want}: volumes are not resized (growing is not supported yet, shrinking would lose data); ask for {have}, or `dvs volume rm --dc {dc} {name}` to start over without its data")]
    Size {
        /// The DC.
        dc: u16,
        /// The name.
        name: String,
        /// Its size.
        have: ByteSize,
        /// The size asked for.
        want: ByteSize,
    },
    /// Its record is there but its image is not, or the file system failed (500).
    #[error("{0}")]
    Io(String),
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The volumes of one node.
pub struct VolumeStore {
    root: PathBuf,
    max: u64,
    inner: Mutex<BTreeMap<(u16, String), VolumeRecord>>,
}

impl VolumeStore {
    /// Opens (creating) `<data_dir>/volumes`, reading every record. Attachments start empty: the instances
    /// restored after this claim their volumes again ([`VolumeStore::reconcile`] then writes the rest down).
    pub fn open(data_dir: &Path, max: ByteSize) -> anyhow::Result<VolumeStore> {
        use anyhow::Context;
        let root = data_dir.join("volumes");
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        // Absolute: the path goes to QEMU, whose working directory need not be the daemon's.
        let root = std::fs::canonicalize(&root)
            .with_context(|| format!("resolving {}", root.display()))?;
        let mut map = BTreeMap::new();
        for dir in std::fs::read_dir(&root)
            .with_context(|| format!("reading {}", root.display()))?
            .flatten()
        {
            let dname = dir.file_name().to_string_lossy().into_owned();
            let Some(dc) = dname
                .strip_prefix("dc-")
                .and_then(|d| d.parse::<u16>().ok())
            else {
                tracing::warn!("volumes: ignoring {}", dir.path().display());
                continue;
            };
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                if path.extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                let rec = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<VolumeRecord>(&b).ok());
                match rec {
                    Some(mut r) if r.dc == dc && r.name == stem && valid_volume_name(stem) => {
                        r.attached = None;
                        map.insert((dc, r.name.clone()), r);
                    }
                    _ => tracing::warn!("volumes: skipping unreadable record {}", path.display()),
                }
            }
        }
        Ok(VolumeStore {
            root,
            max: max.0,
            inner: Mutex::new(map),
        })
    }

    fn dir(&self, dc: u16) -> PathBuf {
        self.root.join(format!("dc-{dc}"))
    }

    /// The image of volume `name` (a name [`VolumeStore::check`] accepted) of DC `dc`.
    pub(crate) fn image_of(&self, dc: u16, name: &str) -> PathBuf {
        self.dir(dc).join(format!("{name}.img"))
    }

    fn record_path(&self, dc: u16, name: &str) -> PathBuf {
        self.dir(dc).join(format!("{name}.json"))
    }

    fn write_record(&self, r: &VolumeRecord) -> Result<(), VolumeError> {
        let path = self.record_path(r.dc, &r.name);
        let tmp = path.with_extension("json.tmp");
        let io = |e: std::io::Error| VolumeError::Io(format!("writing {}: {e}", path.display()));
        let json = serde_json::to_vec_pretty(r).map_err(|e| VolumeError::Io(e.to_string()))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Checks an instance's volume requests on their own (names, sizes, bounds, duplicates): the names and
    /// sizes in bytes, in order. Nothing is touched.
    pub fn check(&self, reqs: &[VolumeRequest]) -> Result<Vec<(String, u64)>, VolumeError> {
        if reqs.len() > MAX_VOLUMES_PER_INSTANCE {
            return Err(VolumeError::Invalid(format!(
                "{} volumes asked for: at most {MAX_VOLUMES_PER_INSTANCE} per instance",
                reqs.len()
            )));
        }
        let mut out: Vec<(String, u64)> = Vec::new();
        for r in reqs {
            if !valid_volume_name(&r.name) {
                return Err(VolumeError::Invalid(format!(
                    "volume name '{}': use 1-63 of a-z, 0-9 and -, starting with a letter or digit",
                    r.name.escape_debug()
                )));
            }
            if out.iter().any(|(n, _)| *n == r.name) {
                return Err(VolumeError::Invalid(format!(
                    "volume '{}' is asked for twice",
                    r.name
                )));
            }
            let size = ByteSize::parse(&r.size)
                .map_err(|e| VolumeError::Invalid(format!("volume '{}': {e}", r.name)))?;
            if size.0 < MIN_VOLUME || !size.0.is_multiple_of(SECTOR) {
                return Err(VolumeError::Invalid(format!(
                    "volume '{}': size {} ({} bytes): a volume is at least {} and a multiple of {SECTOR} bytes",
                    r.name,
                    r.size,
                    size.0,
                    ByteSize(MIN_VOLUME)
                )));
            }
            out.push((r.name.clone(), size.0));
        }
        Ok(out)
    }

    /// Attaches the volumes `reqs` of DC `dc` to `instance`, creating those that do not exist yet (sparse
    /// files of the size asked for): their drives, in order. All or nothing: an error leaves every
    /// attachment as it was (volumes created by the call stay, empty).
    pub fn claim(
        &self,
        dc: u16,
        instance: &str,
        reqs: &[VolumeRequest],
    ) -> Result<Vec<Drive>, VolumeError> {
        let wanted = self.check(reqs)?;
        let mut map = crate::instances::lock(&self.inner);
        // 1. Check everything against what exists, changing nothing.
        for (name, size) in &wanted {
            match map.get(&(dc, name.clone())) {
                Some(r) => {
                    if let Some(holder) = r.attached.as_ref().filter(|h| *h != instance) {
                        return Err(VolumeError::Attached {
                            dc,
                            name: name.clone(),
                            instance: holder.clone(),
                        });
                    }
                    if r.size != *size {
                        return Err(VolumeError::Size {
                            dc,
                            name: name.clone(),
                            have: ByteSize(r.size),
                            want: ByteSize(*size),
                        });
                    }
                    let img = self.image_of(dc, name);
                    let len = std::fs::metadata(&img).map(|m| m.len());
                    if len.as_ref().ok() != Some(&r.size) {
                        return Err(VolumeError::Io(format!(
                            "volume '{name}' of DC {dc}: its image {} is {} (its record says {} bytes); \
                             nothing was attached — `dvs volume rm --dc {dc} {name}` forgets it",
                            img.display(),
                            match len {
                                Ok(l) => format!("{l} bytes"),
                                Err(e) => format!("unreadable ({e})"),
                            },
                            r.size
                        )));
                    }
                }
                None => {
                    if *size > self.max {
                        return Err(VolumeError::Invalid(format!(
                            "volume '{name}': size {} is above this node's max_volume {}",
                            ByteSize(*size),
                            ByteSize(self.max)
                        )));
                    }
                }
            }
        }
        // 2. Create what is missing, then attach.
        for (name, size) in &wanted {
            let key = (dc, name.clone());
            if map.contains_key(&key) {
                continue;
            }
            let rec = self.create(dc, name, *size)?;
            map.insert(key, rec);
        }
        let mut drives = Vec::new();
        let mut changed: Vec<(u16, String)> = Vec::new();
        for (name, _) in &wanted {
            let key = (dc, name.clone());
            if let Some(r) = map.get_mut(&key) {
                if r.attached.as_deref() != Some(instance) {
                    r.attached = Some(instance.into());
                    changed.push(key.clone());
                }
                let rec = r.clone();
                if let Err(e) = self.write_record(&rec) {
                    for k in changed {
                        if let Some(r) = map.get_mut(&k) {
                            r.attached = None;
                            let _ = self.write_record(r);
                        }
                    }
                    return Err(e);
                }
            }
            drives.push(Drive {
                path: self.image_of(dc, name),
                read_only: false,
            });
        }
        Ok(drives)
    }

    /// Creates the sparse image of a new volume and its record (an image left alone by a crash before its
    /// record was written is adopted as it is, never truncated).
    fn create(&self, dc: u16, name: &str, size: u64) -> Result<VolumeRecord, VolumeError> {
        let dir = self.dir(dc);
        std::fs::create_dir_all(&dir)
            .map_err(|e| VolumeError::Io(format!("creating {}: {e}", dir.display())))?;
        let img = self.image_of(dc, name);
        let io = |e: std::io::Error| VolumeError::Io(format!("creating {}: {e}", img.display()));
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&img);
        let size = match opened {
            Ok(f) => {
                f.set_len(size).map_err(io)?;
                f.sync_all().map_err(io)?;
                size
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let len = std::fs::metadata(&img).map_err(io)?.len();
                tracing::warn!(
                    "volume {name} of DC {dc}: adopting {} ({len} bytes) that has no record",
                    img.display()
                );
                if len != size {
                    return Err(VolumeError::Size {
                        dc,
                        name: name.into(),
                        have: ByteSize(len),
                        want: ByteSize(size),
                    });
                }
                len
            }
            Err(e) => return Err(io(e)),
        };
        let rec = VolumeRecord {
            dc,
            name: name.into(),
            size,
            created: now_secs(),
            attached: None,
        };
        self.write_record(&rec)?;
        tracing::info!("volume {name} of DC {dc}: created, {}", ByteSize(size));
        Ok(rec)
    }

    /// Detaches every volume of DC `dc` attached to `instance` (its data stays).
    pub fn release(&self, dc: u16, instance: &str) {
        let mut map = crate::instances::lock(&self.inner);
        for r in map.values_mut() {
            if r.dc == dc && r.attached.as_deref() == Some(instance) {
                r.attached = None;
                if let Err(e) = self.write_record(r) {
                    tracing::warn!("volume {} of DC {dc}: {e}", r.name);
                }
            }
        }
    }

    /// Writes down every record whose file does not say what the node knows now (after the restore: the
    /// attachments of instances that did not come back are cleared).
    pub fn reconcile(&self) {
        let map = crate::instances::lock(&self.inner);
        for r in map.values() {
            let on_disk = std::fs::read(self.record_path(r.dc, &r.name))
                .ok()
                .and_then(|b| serde_json::from_slice::<VolumeRecord>(&b).ok());
            if on_disk.as_ref() != Some(r) {
                if let Err(e) = self.write_record(r) {
                    tracing::warn!("volume {} of DC {}: {e}", r.name, r.dc);
                }
            }
        }
    }

    /// Every volume of the node, by DC and name.
    pub fn list(&self) -> Vec<VolumeView> {
        let map = crate::instances::lock(&self.inner);
        map.values().map(|r| self.view_of(r)).collect()
    }

    fn view_of(&self, r: &VolumeRecord) -> VolumeView {
        let path = self.image_of(r.dc, &r.name);
        let allocated = std::fs::metadata(&path)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0);
        VolumeView {
            dc: r.dc,
            name: r.name.clone(),
            size: r.size,
            allocated,
            created: r.created,
            attached: r.attached.clone(),
            path,
        }
    }

    /// Removes volume `name` of DC `dc`: its image (and so its data) and its record; what it was. Refused
    /// while it is attached.
    pub fn remove(&self, dc: u16, name: &str) -> Result<VolumeView, VolumeError> {
        if !valid_volume_name(name) {
            return Err(VolumeError::Invalid(format!(
                "volume name '{}': use 1-63 of a-z, 0-9 and -, starting with a letter or digit",
                name.escape_debug()
            )));
        }
        let mut map = crate::instances::lock(&self.inner);
        let key = (dc, name.to_string());
        let r = map.get(&key).ok_or_else(|| VolumeError::NotFound {
            dc,
            name: name.into(),
        })?;
        if let Some(instance) = &r.attached {
            return Err(VolumeError::Attached {
                dc,
                name: name.into(),
                instance: instance.clone(),
            });
        }
        let view = self.view_of(r);
        let img = self.image_of(dc, name);
        match std::fs::remove_file(&img) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(VolumeError::Io(format!("removing {}: {e}", img.display())));
            }
        }
        let rec = self.record_path(dc, name);
        match std::fs::remove_file(&rec) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(VolumeError::Io(format!("removing {}: {e}", rec.display())));
            }
        }
        map.remove(&key);
        tracing::info!("volume {name} of DC {dc}: removed");
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, size: &str) -> VolumeRequest {
        VolumeRequest {
            name: name.into(),
            size: size.into(),
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        for (s, n) in [
            ("512", 512),
            ("64K", 64 << 10),
            ("64M", 64 << 20),
            ("16G", 16 << 30),
            ("2t", 2 << 40),
            ("1m", 1 << 20),
        ] {
            assert_eq!(ByteSize::parse(s), Ok(ByteSize(n)), "{s}");
        }
        for bad in [
            "",
            "M",
            "-1M",
            "1.5G",
            "64MB",
            "1 M",
            "0x10",
            "99999999999999T",
        ] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ByteSize(64 << 20).to_string(), "64M");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1536K");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert_eq!(
            serde_json::from_str::<ByteSize>("\"16G\"").unwrap(),
            ByteSize(16 << 30)
        );
        assert_eq!(
            serde_json::from_str::<ByteSize>("4096").unwrap(),
            ByteSize(4096)
        );
        assert!(serde_json::from_str::<ByteSize>("\"lots\"").is_err());
    }

    #[test]
    fn names_are_checked() {
        for ok in ["data", "0", "a-b-9", &"x".repeat(63)] {
            assert!(valid_volume_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "Data",
            "a/b",
            "..",
            ".",
            "a.img",
            "a_b",
            "a b",
            "%2e%2e",
            &"x".repeat(64),
        ] {
            assert!(!valid_volume_name(bad), "{bad}");
        }
        assert_eq!("data:64M".parse::<VolumeRequest>(), Ok(req("data", "64M")));
        assert!("data".parse::<VolumeRequest>().is_err());
    }

    #[test]
    fn a_volume_is_created_sparse_claimed_once_and_removed_when_free() {
        let dir = std::env::temp_dir().join(format!("dvs-volumes-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = VolumeStore::open(&dir, ByteSize(64 << 20)).unwrap();
        let d = store.claim(1, "web", &[req("data", "32M")]).unwrap();
        assert_eq!(d[0].path, dir.join("volumes/dc-1/data.img"));
        let m = std::fs::metadata(&d[0].path).unwrap();
        assert_eq!(m.len(), 32 << 20);
        assert!(m.blocks() * 512 < 1 << 20, "sparse: {} blocks", m.blocks());
        // The same instance may claim again (a restore); another may not; another size is refused.
        store.claim(1, "web", &[req("data", "32M")]).unwrap();
        let e = store.claim(1, "other", &[req("data", "32M")]).unwrap_err();
        assert!(matches!(e, VolumeError::Attached { .. }), "{e}");
        assert!(e.to_string().contains("attached to instance 'web'"), "{e}");
        // The same name in another DC is another volume.
        store.claim(2, "other", &[req("data", "32M")]).unwrap();
        store.release(1, "web");
        let e = store.claim(1, "web", &[req("data", "48M")]).unwrap_err();
        assert!(
            e.to_string()
                .contains("exists with 32M, the spec asks for 48M"),
            "{e}"
        );
        let e = store.claim(1, "web", &[req("big", "65M")]).unwrap_err();
        assert!(
            e.to_string().contains("above this node's max_volume 64M"),
            "{e}"
        );
        for (r, want) in [
            (req("../x", "1M"), "volume name '../x'"),
            (req("ok", "1K"), "at least 1M"),
            (req("ok", "64MB"), "size '64MB'"),
        ] {
            let e = store.claim(1, "web", &[r]).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = store
            .claim(1, "web", &[req("a", "1M"), req("a", "1M")])
            .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        // All or nothing: a refused claim attaches nothing.
        store.claim(1, "x", &[req("held", "1M")]).unwrap();
        store
            .claim(1, "web", &[req("data", "32M"), req("held", "1M")])
            .unwrap_err();
        assert!(store
            .list()
            .iter()
            .any(|v| v.name == "data" && v.attached.is_none()));

        // The store comes back from its records, with attachments cleared until claimed again.
        drop(store);
        let store = VolumeStore::open(&dir, ByteSize(64 << 20)).unwrap();
        assert!(store.list().iter().all(|v| v.attached.is_none()));
        store.claim(1, "x", &[req("held", "1M")]).unwrap();
        store.reconcile();
        let rec: VolumeRecord =
            serde_json::from_slice(&std::fs::read(dir.join("volumes/dc-2/data.json")).unwrap())
                .unwrap();
        assert_eq!(rec.attached, None, "other's attachment was cleared on disk");
        let e = store.remove(1, "held").unwrap_err();
        assert!(matches!(e, VolumeError::Attached { .. }), "{e}");
        store.remove(1, "data").unwrap();
        assert!(!dir.join("volumes/dc-1/data.img").exists());
        assert!(!dir.join("volumes/dc-1/data.json").exists());
        assert!(matches!(
            store.remove(1, "data"),
            Err(VolumeError::NotFound { .. })
        ));
        assert!(matches!(
            store.remove(1, "../../etc"),
            Err(VolumeError::Invalid(_))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
