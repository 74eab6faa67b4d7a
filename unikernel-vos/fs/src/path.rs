//! Path rules, the one place they are written (the fs protocol re-exports [`check`] as
//! `validate_path`). A path is absolute (`/` then names joined by single `/`), UTF-8, at most
//! [`MAX_PATH`] bytes; a name is 1..=[`MAX_NAME`] bytes, not `.` or `..`, with no `/`, NUL or
//! other ASCII control character. `/` alone is the root. No trailing `/`, no `//`.

use core::fmt;

use crate::error::{Error, Result};

/// Longest path in bytes.
pub const MAX_PATH: usize = 1024;
/// Longest name (one path component) in bytes.
pub const MAX_NAME: usize = 255;

/// Why a path was refused by [`check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Longer than [`MAX_PATH`].
    TooLong {
        /// Its length.
        len: usize,
    },
    /// Not valid UTF-8.
    NotUtf8,
    /// Does not start with `/`.
    NotAbsolute,
    /// An empty component (`//`, or a trailing `/`).
    EmptyComponent,
    /// A `.` or `..` component.
    DotComponent,
    /// A component longer than [`MAX_NAME`].
    NameTooLong {
        /// Its length.
        len: usize,
    },
    /// A NUL or other ASCII control byte at this offset.
    BadByte {
        /// Offset in the path.
        at: usize,
    },
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PathError::TooLong { len } => write!(f, "path of {len} bytes; at most {MAX_PATH}"),
            PathError::NotUtf8 => f.write_str("path is not UTF-8"),
            PathError::NotAbsolute => f.write_str("path does not start with /"),
            PathError::EmptyComponent => f.write_str("empty path component"),
            PathError::DotComponent => f.write_str(". or .. in the path"),
            PathError::NameTooLong { len } => write!(f, "name of {len} bytes; at most {MAX_NAME}"),
            PathError::BadByte { at } => write!(f, "control byte at offset {at} of the path"),
        }
    }
}

fn control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Why `name` is not a valid single component (byte offsets are within `name`).
fn check_name(name: &str) -> core::result::Result<(), PathError> {
    match name {
        "" => Err(PathError::EmptyComponent),
        "." | ".." => Err(PathError::DotComponent),
        n if n.len() > MAX_NAME => Err(PathError::NameTooLong { len: n.len() }),
        n => match n.bytes().position(|b| b == b'/' || control(b)) {
            Some(at) if n.as_bytes()[at] == b'/' => Err(PathError::EmptyComponent),
            Some(at) => Err(PathError::BadByte { at }),
            None => Ok(()),
        },
    }
}

/// True if `name` is a valid single component.
pub fn valid_name(name: &str) -> bool {
    check_name(name).is_ok()
}

/// Checks a path given as bytes (as clients send them) and returns it as text.
pub fn check(bytes: &[u8]) -> core::result::Result<&str, PathError> {
    if bytes.len() > MAX_PATH {
        return Err(PathError::TooLong { len: bytes.len() });
    }
    if let Some(at) = bytes.iter().position(|&b| control(b)) {
        return Err(PathError::BadByte { at });
    }
    let s = core::str::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
    let rest = s.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    if !rest.is_empty() {
        rest.split('/').try_for_each(check_name)?;
    }
    Ok(s)
}

/// The components of `path` (none for `/`), or `InvalidPath`.
pub fn components(path: &str) -> Result<impl Iterator<Item = &str> + Clone> {
    check(path.as_bytes()).map_err(|_| Error::InvalidPath)?;
    Ok(path[1..].split('/').filter(|c| !c.is_empty()))
}

/// Splits a non-root path into its parent's components and its last name.
pub fn split_last(path: &str) -> Result<(&str, &str)> {
    let _valid = components(path)?;
    match path.rfind('/') {
        Some(i) if i + 1 < path.len() => {
            Ok((if i == 0 { "/" } else { &path[..i] }, &path[i + 1..]))
        }
        _ => Err(Error::Invalid {
            what: "the root has no name",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn accepts_and_refuses() {
        assert_eq!(components("/").unwrap().count(), 0);
        assert_eq!(components("/a/b").unwrap().collect::<Vec<_>>(), ["a", "b"]);
        for bad in [
            "", "a", "//", "/a/", "/a//b", "/..", "/a/./b", "/a\0", "/a\nb",
        ] {
            assert!(components(bad).is_err(), "{bad:?}");
        }
        let long = alloc::format!("/{}", "x".repeat(256));
        assert!(components(&long).is_err());
        assert!(components(&alloc::format!("/{}", "x".repeat(255))).is_ok());
        assert!(components("/a\u{7f}").is_err());
        let mut deep = alloc::string::String::new();
        while deep.len() <= MAX_PATH {
            deep.push_str("/yyyy");
        }
        assert_eq!(
            check(deep.as_bytes()),
            Err(PathError::TooLong { len: deep.len() })
        );
        assert!(components(&deep).is_err());
        assert_eq!(check(b"/a/\xff"), Err(PathError::NotUtf8));
        assert_eq!(check(b"/a/\x01"), Err(PathError::BadByte { at: 3 }));
        assert_eq!(split_last("/a/b").unwrap(), ("/a", "b"));
        assert_eq!(split_last("/a").unwrap(), ("/", "a"));
        assert!(split_last("/").is_err());
    }
}
