//! A reference model of the file system (a map of full paths), the operations the randomized
//! tests run, and a walk that reads a whole tree out of a mounted file system.
#![allow(dead_code)]

use dvs_fs::{BlockDevice, Error, FileSystem, Kind, OpenFlags};
use std::collections::BTreeMap;

/// A node of the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(Vec<u8>),
}

/// The whole tree, `/` excluded: full path → node.
pub type Tree = BTreeMap<String, Node>;

/// The paths the random operations pick from (so that they collide often).
pub const PATHS: &[&str] = &[
    "/a", "/b", "/d0", "/d1", "/d0/a", "/d0/b", "/d0/d2", "/d0/d2/a", "/d1/a", "/a/x",
];

/// One operation.
#[derive(Clone, Debug)]
pub enum Op {
    Create {
        path: usize,
        exclusive: bool,
    },
    Write {
        path: usize,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        path: usize,
        size: u64,
    },
    Fsync {
        path: usize,
    },
    Mkdir {
        path: usize,
    },
    Unlink {
        path: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Sync,
}

impl Op {
    /// True if the operation commits when it succeeds.
    pub fn commits(&self) -> bool {
        matches!(
            self,
            Op::Fsync { .. } | Op::Mkdir { .. } | Op::Unlink { .. } | Op::Rename { .. } | Op::Sync
        )
    }
}

pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed))
        .collect()
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

/// The model's view of `path`: the fs's lookup rules, with the fs's error order.
fn resolve(t: &Tree, path: &str) -> Result<Option<Node>, Error> {
    let mut cur = String::new();
    let mut node = Some(Node::Dir);
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        match node {
            Some(Node::Dir) => {}
            Some(Node::File(_)) => return Err(Error::NotDir),
            None => return Err(Error::NotFound),
        }
        cur.push('/');
        cur.push_str(comp);
        node = t.get(&cur).cloned();
    }
    Ok(node)
}

fn resolve_parent(t: &Tree, path: &str) -> Result<(), Error> {
    match resolve(t, parent(path))? {
        Some(Node::Dir) => Ok(()),
        Some(Node::File(_)) => Err(Error::NotDir),
        None => Err(Error::NotFound),
    }
}

fn is_empty_dir(t: &Tree, p: &str) -> bool {
    let pre = format!("{p}/");
    !t.keys().any(|k| k.starts_with(&pre))
}

/// Applies `op` to the model; returns what the fs must answer (`NoSpace` is never predicted).
pub fn model_apply(t: &mut Tree, op: &Op) -> Result<(), Error> {
    match *op {
        Op::Create { path, exclusive } => {
            let p = PATHS[path];
            resolve_parent(t, p)?;
            match t.get(p) {
                Some(_) if exclusive => Err(Error::Exists),
                Some(Node::Dir) => Err(Error::IsDir),
                Some(Node::File(_)) => Ok(()),
                None => {
                    t.insert(p.to_string(), Node::File(Vec::new()));
                    Ok(())
                }
            }
        }
        Op::Write {
            path,
            offset,
            len,
            seed,
        } => {
            let p = PATHS[path];
            resolve_parent(t, p)?;
            match t.get_mut(p) {
                None => Err(Error::NotFound),
                Some(Node::Dir) => Err(Error::IsDir),
                Some(Node::File(c)) => {
                    if len > 0 {
                        let end = offset as usize + len;
                        if c.len() < end {
                            c.resize(end, 0);
                        }
                        c[offset as usize..end].copy_from_slice(&data(len, seed));
                    }
                    Ok(())
                }
            }
        }
        Op::Truncate { path, size } => {
            let p = PATHS[path];
            resolve_parent(t, p)?;
            match t.get_mut(p) {
                None => Err(Error::NotFound),
                Some(Node::Dir) => Err(Error::IsDir),
                Some(Node::File(c)) => {
                    c.resize(size as usize, 0);
                    Ok(())
                }
            }
        }
        Op::Fsync { path } => {
            let p = PATHS[path];
            resolve_parent(t, p)?;
            match t.get(p) {
                None => Err(Error::NotFound),
                Some(Node::Dir) => Err(Error::IsDir),
                Some(Node::File(_)) => Ok(()),
            }
        }
        Op::Mkdir { path } => {
            let p = PATHS[path];
            resolve_parent(t, p)?;
            if t.contains_key(p) {
                return Err(Error::Exists);
            }
            t.insert(p.to_string(), Node::Dir);
            Ok(())
        }
        Op::Unlink { path } => {
            let p = PATHS[path];
            resolve_parent(t, p)?;
            match t.get(p) {
                None => Err(Error::NotFound),
                Some(Node::Dir) if !is_empty_dir(t, p) => Err(Error::NotEmpty),
                Some(_) => {
                    t.remove(p);
                    Ok(())
                }
            }
        }
        Op::Rename { from, to } => {
            let (f, to) = (PATHS[from], PATHS[to]);
            resolve_parent(t, f)?;
            resolve_parent(t, to)?;
            let src = t.get(f).cloned().ok_or(Error::NotFound)?;
            if f == to {
                return Ok(());
            }
            if src == Node::Dir && (parent(to) == f || parent(to).starts_with(&format!("{f}/"))) {
                return Err(Error::Invalid {
                    what: "a directory cannot move into itself",
                });
            }
            match (&src, t.get(to)) {
                (_, Some(Node::Dir)) => return Err(Error::Exists),
                (Node::Dir, Some(_)) => return Err(Error::NotDir),
                _ => {}
            }
            let pre = format!("{f}/");
            let moved: Vec<(String, Node)> = t
                .iter()
                .filter(|(k, _)| k.as_str() == f || k.starts_with(&pre))
                .map(|(k, v)| (format!("{to}{}", &k[f.len()..]), v.clone()))
                .collect();
            t.retain(|k, _| !(k.as_str() == f || k.starts_with(&pre)));
            t.extend(moved);
            Ok(())
        }
        Op::Sync => Ok(()),
    }
}

/// Runs `op` on the file system.
pub fn fs_apply<D: BlockDevice>(fs: &mut FileSystem<D>, op: &Op) -> Result<(), Error> {
    let open = |fs: &mut FileSystem<D>, p: usize| fs.open(PATHS[p], OpenFlags::EXISTING);
    match *op {
        Op::Create { path, exclusive } => {
            let flags = if exclusive {
                OpenFlags::CREATE_NEW
            } else {
                OpenFlags::CREATE
            };
            fs.open(PATHS[path], flags).map(|_| ())
        }
        Op::Write {
            path,
            offset,
            len,
            seed,
        } => {
            let fh = open(fs, path)?;
            fs.write_at(fh, offset, &data(len, seed)).map(|_| ())
        }
        Op::Truncate { path, size } => {
            let fh = open(fs, path)?;
            fs.truncate(fh, size)
        }
        Op::Fsync { path } => {
            let fh = open(fs, path)?;
            fs.fsync(fh)
        }
        Op::Mkdir { path } => fs.mkdir(PATHS[path]),
        Op::Unlink { path } => fs.unlink(PATHS[path]),
        Op::Rename { from, to } => fs.rename(PATHS[from], PATHS[to]),
        Op::Sync => fs.sync(),
    }
}

/// Reads the whole tree out of the file system.
pub fn snapshot<D: BlockDevice>(fs: &mut FileSystem<D>) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec![String::from("/")];
    while let Some(dir) = todo.pop() {
        for e in fs.readdir(&dir).expect("readdir") {
            let p = if dir == "/" {
                format!("/{}", e.name)
            } else {
                format!("{dir}/{}", e.name)
            };
            match e.kind {
                Kind::Dir => {
                    out.insert(p.clone(), Node::Dir);
                    todo.push(p);
                }
                Kind::File => {
                    let fh = fs.open(&p, OpenFlags::EXISTING).expect("open");
                    let mut buf = vec![0u8; e.size as usize];
                    let n = fs.read_at(fh, 0, &mut buf).expect("read");
                    assert_eq!(n as u64, e.size, "short read of {p}");
                    out.insert(p, Node::File(buf));
                }
            }
        }
    }
    out
}

/// A small deterministic generator (xorshift64*), so a failing seed can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// Indices into [`PATHS`] meant for files and for directories (a few picks cross over, so that
/// the error paths run too).
pub const FILES: &[usize] = &[0, 1, 4, 5, 7, 8];
/// See [`FILES`].
pub const DIRS: &[usize] = &[2, 3, 6];

/// A random operation for a file system of block size `bs`, mostly ones that succeed.
pub fn random_op(r: &mut Rng, bs: u64) -> Op {
    let pick = |r: &mut Rng, set: &[usize]| {
        if r.chance(1, 10) {
            r.below(PATHS.len() as u64) as usize
        } else {
            set[r.below(set.len() as u64) as usize]
        }
    };
    match r.below(20) {
        0..=3 => Op::Create {
            path: pick(r, FILES),
            exclusive: r.chance(1, 4),
        },
        4..=9 => Op::Write {
            path: pick(r, FILES),
            offset: r.below(4 * bs),
            len: r.below(3 * bs) as usize,
            seed: r.next() as u8,
        },
        10 => Op::Truncate {
            path: pick(r, FILES),
            size: r.below(5 * bs),
        },
        11..=13 => Op::Fsync {
            path: pick(r, FILES),
        },
        14 => Op::Mkdir {
            path: pick(r, DIRS),
        },
        15..=16 => Op::Unlink {
            path: pick(r, FILES),
        },
        17..=18 => Op::Rename {
            from: pick(r, FILES),
            to: pick(r, FILES),
        },
        _ => Op::Sync,
    }
}
