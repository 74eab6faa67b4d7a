//! Checks of what requests carry: names, image versions, and kernel images (a strict ELF64 header check).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// True for a valid name of an instance, image or volume: `[a-z0-9][a-z0-9-]{0,62}` (so never `.`, `/`,
/// `..`, upper case, spaces or control characters).
pub fn valid_name(n: &str) -> bool {
    crate::volumes::valid_volume_name(n)
}

/// `Ok` for a [`valid_name`], else a message naming `what` and the value (escaped, shortened).
pub fn check_name(what: &str, n: &str) -> Result<(), String> {
    if valid_name(n) {
        return Ok(());
    }
    Err(format!(
        "{what} '{}': use [a-z0-9][a-z0-9-]{{0,62}} (lower-case letters, digits and dashes, starting with a \
         letter or digit, at most 63)",
        shown(n)
    ))
}

/// True for an image version: `[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}` (e.g. `0.1.0`, `1.2.0+ebe0d670`).
pub fn valid_version(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'_' | b'-'))
}

/// `s` escaped for a message and cut at 80 characters.
pub fn shown(s: &str) -> String {
    let e: String = s.escape_debug().collect();
    if e.chars().count() > 80 {
        format!("{}...", e.chars().take(80).collect::<String>())
    } else {
        e
    }
}

const EHDR: usize = 64;
const PHDR: usize = 56;
const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Checks that the file at `path` is a kernel QEMU can load: ELF64, little-endian, version 1, `ET_EXEC`,
/// x86_64, with a program header table inside the file holding at least one `PT_LOAD` segment, every
/// `PT_LOAD` inside the file and no larger in the file than in memory. The message says what is wrong.
pub fn check_elf_file(path: &Path) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("reading the image: {e}"))?;
    let len = f
        .metadata()
        .map_err(|e| format!("reading the image: {e}"))?
        .len();
    let mut h = [0u8; EHDR];
    f.read_exact(&mut h)
        .map_err(|_| format!("not an ELF file: {len} bytes, shorter than an ELF64 header"))?;
    if h[..4] != *b"\x7fELF" {
        return Err("not an ELF file (no \\x7fELF magic)".into());
    }
    if h[4] != 2 {
        return Err(format!("not an ELF64 file (class {})", h[4]));
    }
    if h[5] != 1 {
        return Err("not a little-endian ELF file".into());
    }
    if h[6] != 1 || u32_at(&h, 20) != 1 {
        return Err("ELF version is not 1".into());
    }
    let e_type = u16_at(&h, 16);
    if e_type != ET_EXEC {
        return Err(format!(
            "ELF type {e_type}, not an executable (ET_EXEC): a kernel is linked at a fixed address"
        ));
    }
    let machine = u16_at(&h, 18);
    if machine != EM_X86_64 {
        return Err(format!("ELF machine {machine}, not x86_64 (62)"));
    }
    let (phoff, ehsize, phentsize, phnum) = (
        u64_at(&h, 32),
        u16_at(&h, 52),
        u16_at(&h, 54),
        u16_at(&h, 56),
    );
    if usize::from(ehsize) != EHDR {
        return Err(format!("ELF header size {ehsize}, not 64"));
    }
    if usize::from(phentsize) != PHDR {
        return Err(format!("program header size {phentsize}, not 56"));
    }
    if phnum == 0 {
        return Err("no program headers (nothing to load)".into());
    }
    let table = u64::from(phnum) * PHDR as u64;
    if phoff < EHDR as u64 || phoff.checked_add(table).is_none_or(|end| end > len) {
        return Err(format!(
            "program header table ({phnum} at offset {phoff}) is outside the file ({len} bytes)"
        ));
    }
    let mut t = vec![0u8; table as usize];
    f.seek(SeekFrom::Start(phoff))
        .and_then(|_| f.read_exact(&mut t))
        .map_err(|e| format!("reading the program headers: {e}"))?;
    let mut loads = 0;
    for (i, p) in t.chunks_exact(PHDR).enumerate() {
        if u32_at(p, 0) != PT_LOAD {
            continue;
        }
        loads += 1;
        let (offset, filesz, memsz) = (u64_at(p, 8), u64_at(p, 32), u64_at(p, 40));
        if offset.checked_add(filesz).is_none_or(|end| end > len) {
            return Err(format!(
                "PT_LOAD segment {i} ({filesz} bytes at offset {offset}) is outside the file ({len} bytes)"
            ));
        }
        if filesz > memsz {
            return Err(format!(
                "PT_LOAD segment {i} is larger in the file ({filesz}) than in memory ({memsz})"
            ));
        }
    }
    if loads == 0 {
        return Err("no PT_LOAD segment (nothing to load)".into());
    }
    Ok(())
}

/// The smallest image [`check_elf_file`] accepts: an x86_64 `ET_EXEC` ELF64 whose one `PT_LOAD` segment
/// holds `payload` at 1 MiB. It boots nothing: for tests whose machines are role doubles.
pub fn minimal_elf(payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; EHDR + PHDR];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // little-endian
    b[6] = 1; // EV_CURRENT
    b[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // entry
    b[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // phoff
    b[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    b[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    let p = EHDR;
    let off = (EHDR + PHDR) as u64;
    let len = payload.len() as u64;
    b[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
    b[p + 4..p + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    b[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
    b[p + 16..p + 24].copy_from_slice(&0x10_0000u64.to_le_bytes()); // vaddr
    b[p + 24..p + 32].copy_from_slice(&0x10_0000u64.to_le_bytes()); // paddr
    b[p + 32..p + 40].copy_from_slice(&len.to_le_bytes());
    b[p + 40..p + 48].copy_from_slice(&len.to_le_bytes());
    b[p + 48..p + 56].copy_from_slice(&0x1000u64.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8]) -> Result<(), String> {
        let path = std::env::temp_dir().join(format!(
            "dvs-elf-{}-{}",
            std::process::id(),
            crate::images::sha256_hex(bytes)
        ));
        std::fs::write(&path, bytes).unwrap();
        let r = check_elf_file(&path);
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn elf_headers_are_checked_strictly() {
        let good = minimal_elf(b"payload");
        check(&good).unwrap();
        let with = |o: usize, v: &[u8]| {
            let mut b = good.clone();
            b[o..o + v.len()].copy_from_slice(v);
            b
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not a kernel".to_vec(), "shorter"),
            (with(0, b"\x7fELG"), "magic"),
            (with(4, &[1]), "ELF64"),
            (with(5, &[2]), "little-endian"),
            (with(16, &3u16.to_le_bytes()), "ET_EXEC"),
            (with(18, &183u16.to_le_bytes()), "x86_64"),
            (with(56, &0u16.to_le_bytes()), "no program headers"),
            (with(56, &1000u16.to_le_bytes()), "outside the file"),
            (with(32, &u64::MAX.to_le_bytes()), "outside the file"),
            (with(64, &2u32.to_le_bytes()), "no PT_LOAD"),
            (
                with(64 + 32, &1_000_000u64.to_le_bytes()),
                "outside the file",
            ),
            (with(64 + 40, &1u64.to_le_bytes()), "larger in the file"),
            (good[..good.len() - 1].to_vec(), "outside the file"),
        ];
        for (bytes, want) in cases {
            let e = check(&bytes).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn names_and_versions() {
        for ok in ["a", "vos", "web-1", "0", &"a".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "A",
            "a_b",
            "a.b",
            "..",
            "a/b",
            "a b",
            "a\0",
            &"a".repeat(64),
            "é",
        ] {
            assert!(check_name("name", bad).is_err(), "{bad:?}");
        }
        for ok in ["1", "0.1.0", "1.2.0+ebe0d670", "2024-01-02_rc1"] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in ["", ".1", "1/2", "1 2", "../x", &"1".repeat(65)] {
            assert!(!valid_version(bad), "{bad:?}");
        }
    }
}
