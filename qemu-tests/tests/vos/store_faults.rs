//! The web server on a file server whose disk fails it: a full disk (507, nothing written before
//! is harmed, the space of a cut upload and of deleted files comes back) and a disk whose
//! superblocks are damaged (refused with a reason, every request 503, the disk left as it was).

use super::*;
use std::os::unix::fs::FileExt;

/// A small drive, so that it fills in a few PUTs.
const SMALL_MIB: u64 = 8;
const FILE: usize = 1 << 20;

/// PUT `data` at `path`: the response.
fn put(vm: &Machine, port: u16, path: &str, data: &[u8], t: Duration) -> Resp {
    let mut req = format!(
        "PUT {path} HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    )
    .into_bytes();
    req.extend_from_slice(data);
    exchange_once_more(port, &req, t)
        .unwrap_or_else(|e| panic!("PUT {path}: {e}\nconsole:\n{}", console(vm)))
}

fn delete(vm: &Machine, port: u16, path: &str, t: Duration) -> Resp {
    let req = format!("DELETE {path} HTTP/1.1\r\nConnection: close\r\n\r\n");
    exchange_once_more(port, req.as_bytes(), t)
        .unwrap_or_else(|e| panic!("DELETE {path}: {e}\nconsole:\n{}", console(vm)))
}

/// An 8 MiB drive filled with 1 MiB PUTs: the one that does not fit is answered 507 and leaves no
/// trace; every file stored before reads back byte-exact, also after a reboot; deleting two
/// files gives their space back (two more PUTs fit).
#[test]
fn web_on_a_full_disk_answers_507_and_loses_nothing() {
    let _g = exclusive();
    let a = accel();
    let port = free_port();
    let dir = TempDir::new().expect("scratch dir");
    let image = dir.join("small.img");
    sparse_image(&image, SMALL_MIB);
    let vm = all_in_one(&dir, a, "web-full", port, &image);
    let t = secs(a, 60);
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let full = loop {
        let i = stored.len();
        assert!(i < 16, "an 8 MiB drive took {i} files of 1 MiB");
        let path = format!("/d/f{i}.bin");
        let data = pattern(FILE, 0x0f11_0000 + i as u32);
        let r = put(&vm, port, &path, &data, t);
        match r.status {
            201 => stored.push((path, data)),
            507 => break r,
            s => panic!("PUT {path}: {s} {}\nconsole:\n{}", r.head, console(&vm)),
        }
    };
    assert!(
        stored.len() >= 4,
        "only {} files of 1 MiB fit on an 8 MiB drive",
        stored.len()
    );
    let why = String::from_utf8_lossy(&full.body).into_owned();
    eprintln!(
        "web-full: {} files of 1 MiB fit on {SMALL_MIB} MiB; then: {why}",
        stored.len()
    );
    assert!(why.contains("507"), "the 507's text: {why}");
    let check_all = |vm: &Machine, stored: &[(String, Vec<u8>)], when: &str| {
        for (path, data) in stored {
            let r = get(vm, port, path, "", t);
            assert_eq!(r.status, 200, "GET {path} {when}: {}", r.head);
            assert!(r.body == *data, "GET {path} {when}: the bytes differ");
        }
        let r = get(vm, port, "/d/", "", t);
        let list = String::from_utf8_lossy(&r.body).into_owned();
        let listed = list.matches("</a> ").count();
        assert_eq!(listed, stored.len(), "listing {when}: {list}");
    };
    check_all(&vm, &stored, "after the 507");
    // The refused upload's partial file is gone and deleted files give their blocks back: after
    // two deletes, two files of the same size fit again.
    let n = stored.len();
    for (path, _) in stored.drain(..2) {
        assert_eq!(delete(&vm, port, &path, t).status, 204, "DELETE {path}");
    }
    for i in 0..2 {
        let path = format!("/d/again{i}.bin");
        let data = pattern(FILE, 0x0a6a_0000 + i);
        let r = put(&vm, port, &path, &data, t);
        assert_eq!(
            r.status,
            201,
            "PUT {path} after deleting two of {n} files: {}\nconsole:\n{}",
            r.head,
            console(&vm)
        );
        stored.push((path, data));
    }
    check_all(&vm, &stored, "after the deletes");
    drop(vm);
    let vm = all_in_one(&dir, a, "web-full2", port, &image);
    check_all(&vm, &stored, "after a reboot");
}

/// A disk the web server once wrote, whose two superblocks are then damaged: the file server
/// refuses it (a ServiceDown record naming the damage), GET and PUT answer 503 saying the disk
/// holds no usable file system, and not a byte of the disk changes (never "repaired").
#[test]
fn web_on_a_corrupt_disk_refuses_and_writes_nothing() {
    let _g = exclusive();
    let a = accel();
    let port = free_port();
    let dir = TempDir::new().expect("scratch dir");
    let image = dir.join("web.img");
    sparse_image(&image, SMALL_MIB);
    let t = secs(a, 60);
    {
        let vm = all_in_one(&dir, a, "web-pre", port, &image);
        let r = put(&vm, port, "/kept.txt", b"written before the damage", t);
        assert_eq!(r.status, 201, "PUT: {}", r.head);
    }
    {
        // Field `blocks` (bytes 24..32) of both slots: their CRCs no longer match.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .expect("open image");
        for slot in [0u64, 4096] {
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, slot + 24).expect("read superblock");
            b[0] ^= 0x5a;
            f.write_all_at(&b, slot + 24).expect("damage superblock");
        }
    }
    let before = std::fs::read(&image).expect("read image");
    let mut vm = all_in_one(&dir, a, "web-corrupt", port, &image);
    let rec = wait_record(&mut vm, t, "ServiceDown of fs", |r| {
        matches!(
            r,
            ControlRecord::ServiceDown {
                service: Service::Fs,
                ..
            }
        )
    });
    if let ControlRecord::ServiceDown { reason, .. } = rec {
        assert!(
            reason.contains("corrupt") && reason.contains("refused"),
            "ServiceDown reason: {reason}"
        );
    }
    let r = get(&vm, port, "/kept.txt", "", t);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 503, "GET on a corrupt disk: {} {body}", r.head);
    assert!(
        body.contains("no usable file system"),
        "GET on a corrupt disk: {body}"
    );
    let r = put(&vm, port, "/new.txt", b"must not land", t);
    assert_eq!(r.status, 503, "PUT on a corrupt disk: {}", r.head);
    drop(vm);
    let after = std::fs::read(&image).expect("read image");
    assert!(after == before, "the refused disk was written");
}
