//! Path rules. A path is absolute (`/` then names joined by single `/`), at most [`MAX_PATH`]
//! bytes; a name is 1..=[`MAX_NAME`] bytes, not `.` or `..`, with no `/`, NUL or other ASCII
//! control character. `/` alone is the root. No trailing `/`, no `//`.

use crate::error::{Error, Result};

/// Longest path in bytes.
pub const MAX_PATH: usize = 1024;
/// Longest name (one path component) in bytes.
pub const MAX_NAME: usize = 255;

/// True if `name` is a valid single component.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b < 0x20 || b == 0x7f)
}

/// The components of `path` (none for `/`), or `InvalidPath`.
pub fn components(path: &str) -> Result<impl Iterator<Item = &str> + Clone> {
    if path.len() > MAX_PATH || !path.starts_with('/') {
        return Err(Error::InvalidPath);
    }
    let rest = &path[1..];
    if !rest.is_empty() && !rest.split('/').all(valid_name) {
        return Err(Error::InvalidPath);
    }
    Ok(rest.split('/').filter(|c| !c.is_empty()))
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
        assert_eq!(split_last("/a/b").unwrap(), ("/a", "b"));
        assert_eq!(split_last("/a").unwrap(), ("/", "a"));
        assert!(split_last("/").is_err());
    }
}
