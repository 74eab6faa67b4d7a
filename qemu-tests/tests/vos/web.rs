//! The web server on the file server: the all-in-one VOS (`services=[http, disk, fs]` over a
//! sparse virtio-blk drive) serving PUT / GET / Range / listing / DELETE through the publish NIC,
//! its files surviving a reboot on the same image; and a web server whose file server is away
//! answering 503 within the call timeout, never hanging.

use super::*;
use dvs_instance::Drive;
use std::path::Path;

const DISK_EP: u32 = 20;
const FS_EP: u32 = 21;
const WEB_EP: u32 = 22;
const IMAGE_MIB: u64 = 64;
const BIG: usize = 10 << 20;

/// A web guest and the publish gateway its publish NIC is on (dropped after the machine); it
/// derefs to the [`Machine`].
pub struct WebVm {
    vm: Machine,
    _gw: Published,
}

impl std::ops::Deref for WebVm {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        &self.vm
    }
}

impl std::ops::DerefMut for WebVm {
    fn deref_mut(&mut self) -> &mut Machine {
        &mut self.vm
    }
}

/// Boots a web guest on `endpoints` / `services` with `settings`, its publish NIC on a publish
/// gateway (as the node runs it) that carries host `port` (on 127.0.0.1) to guest port 80,
/// `image` as its drive (if any), `mem` MiB of RAM.
fn boot_fs_web(
    dir: &TempDir,
    a: Accel,
    name: &str,
    port: u16,
    (endpoints, services, settings): (&[u32], &[Service], &[&str]),
    image: Option<&Path>,
    mem: u32,
) -> WebVm {
    let mut cfg = config(endpoints, services, settings);
    cfg.publish = ip("10.0.2.15/24", Some([10, 0, 2, 2]));
    let mut spec = vos(dir, name, MachineType::Microvm, a, Kernel::Config(cfg));
    spec.memory_mib = mem;
    let gw = Published::on_port(&dir.join(&format!("{name}-pub.sock")), port, 80);
    spec.nics.push(gw.nic(nic_mac(0)));
    if let Some(image) = image {
        spec.drives.push(Drive {
            path: image.to_path_buf(),
            read_only: false,
        });
    }
    let mut vm = start(&spec);
    ready(&mut vm, a);
    WebVm { vm, _gw: gw }
}

fn all_in_one(dir: &TempDir, a: Accel, name: &str, port: u16, image: &Path) -> WebVm {
    boot_fs_web(
        dir,
        a,
        name,
        port,
        (
            &[DISK_EP, FS_EP, WEB_EP],
            &[Service::Http, Service::Disk, Service::Fs],
            &[&format!("disk_ep={DISK_EP}"), &format!("fs_ep={FS_EP}")],
        ),
        Some(image),
        16,
    )
}

/// [`exchange`]: one attempt. (It tried twice while the publish NIC was QEMU's user networking,
/// whose listen backlog of 1 dropped a connection made right behind another; the publish gateway
/// takes them all.) The name stays for its callers.
fn exchange_once_more(port: u16, req: &[u8], t: Duration) -> Result<Resp, String> {
    exchange(port, req, t)
}

/// GET `path` (Connection: close) with `extra` header lines; the response.
fn get(vm: &Machine, port: u16, path: &str, extra: &str, t: Duration) -> Resp {
    let req = format!("GET {path} HTTP/1.1\r\n{extra}Connection: close\r\n\r\n");
    exchange(port, req.as_bytes(), t)
        .unwrap_or_else(|e| panic!("GET {path}: {e}\nconsole:\n{}", console(vm)))
}

fn mib_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

/// PUT a 10 MiB file in a 16 MiB guest (streamed through the file server onto the drive), GET it
/// back byte-exact, a Range GET, the listing; reboot on the same image: the file is still there,
/// byte-exact; DELETE: 404 and gone from the listing.
#[test]
fn web_on_fs_put_get_reboot_delete() {
    let _g = exclusive();
    let a = accel();
    let port = free_port();
    let dir = TempDir::new().expect("scratch dir");
    let image = dir.join("web.img");
    sparse_image(&image, IMAGE_MIB);
    let vm = all_in_one(&dir, a, "web-fs", port, &image);
    let t = secs(a, 60);
    let data = pattern(BIG, 0x5eed_0010);
    let mut req = format!(
        "PUT /files/big.bin HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    )
    .into_bytes();
    req.extend_from_slice(&data);
    let t0 = Instant::now();
    let r = exchange(port, &req, t)
        .unwrap_or_else(|e| panic!("PUT 10 MiB: {e}\nconsole:\n{}", console(&vm)));
    let put = t0.elapsed();
    assert_eq!(
        r.status,
        201,
        "PUT 10 MiB: {}\nconsole:\n{}",
        r.head,
        console(&vm)
    );
    let t0 = Instant::now();
    let r = get(&vm, port, "/files/big.bin", "", t);
    let got = t0.elapsed();
    assert_eq!(r.status, 200, "GET 10 MiB: {}", r.head);
    assert_eq!(r.body.len(), data.len(), "GET 10 MiB: length");
    assert!(r.body == data, "GET 10 MiB: the bytes differ");
    eprintln!(
        "web-on-fs: PUT 10 MiB {:.1} MiB/s ({put:?}), GET {:.1} MiB/s ({got:?})",
        mib_s(BIG, put),
        mib_s(BIG, got)
    );
    // A second PUT of the same path replaces it (200).
    let small = pattern(5000, 7);
    let mut req =
        b"PUT /files/small.txt HTTP/1.1\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"
            .to_vec();
    req.extend_from_slice(&small);
    let r = exchange(port, &req, t).unwrap_or_else(|e| panic!("PUT small: {e}"));
    assert_eq!(r.status, 201, "PUT small: {}", r.head);
    let r = exchange(port, &req, t).unwrap_or_else(|e| panic!("PUT small again: {e}"));
    assert_eq!(r.status, 200, "PUT small again: {}", r.head);
    // Range.
    let (a0, b0) = (5_000_000usize, 5_999_999usize);
    let r = get(
        &vm,
        port,
        "/files/big.bin",
        &format!("Range: bytes={a0}-{b0}\r\n"),
        t,
    );
    assert_eq!(r.status, 206, "Range GET: {}", r.head);
    assert_eq!(
        r.field("content-range"),
        Some(format!("bytes {a0}-{b0}/{BIG}").as_str()),
        "{}",
        r.head
    );
    assert!(r.body == data[a0..=b0], "Range GET: the bytes differ");
    // Listings: the directory shows both files with their sizes; the root shows the directory
    // and not the uploads' temporary directory.
    let r = get(&vm, port, "/files/", "", t);
    assert_eq!(r.status, 200, "listing: {}", r.head);
    let list = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        list.contains("/files/big.bin</a> 10485760") && list.contains("/files/small.txt</a> 5000"),
        "listing of /files/: {list}"
    );
    let r = get(&vm, port, "/", "", t);
    let root = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        root.contains("/files/") && !root.contains(".dvs-put"),
        "listing of /: {root}"
    );
    // Reboot on the same image.
    drop(vm);
    let vm = all_in_one(&dir, a, "web-fs2", port, &image);
    let r = get(&vm, port, "/files/big.bin", "", t);
    assert_eq!(
        r.status,
        200,
        "GET after reboot: {}\nconsole:\n{}",
        r.head,
        console(&vm)
    );
    assert!(
        r.body == data,
        "GET after reboot: the bytes differ ({} bytes)",
        r.body.len()
    );
    // DELETE.
    let r = exchange(
        port,
        b"DELETE /files/big.bin HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .unwrap_or_else(|e| panic!("DELETE: {e}"));
    assert_eq!(r.status, 204, "DELETE: {}", r.head);
    let r = get(&vm, port, "/files/big.bin", "", t);
    assert_eq!(r.status, 404, "GET after DELETE: {}", r.head);
    let r = get(&vm, port, "/files/", "", t);
    let list = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        !list.contains("big.bin") && list.contains("small.txt"),
        "listing after DELETE: {list}"
    );
}

/// A web server whose `fs_ep` is an endpoint nobody serves: GET and PUT answer 503 within the
/// call timeout (8 s) plus slack, and the server still answers afterwards.
#[test]
fn web_with_fs_away_answers_503() {
    let _g = exclusive();
    let a = accel();
    let port = free_port();
    let dir = TempDir::new().expect("scratch dir");
    let vm = boot_fs_web(
        &dir,
        a,
        "web-nofs",
        port,
        (&[WEB_EP], &[Service::Http], &["fs_ep=23"]),
        None,
        32,
    );
    let limit = secs(a, 12);
    for _ in 0..2 {
        let t0 = Instant::now();
        let r = get(&vm, port, "/x.txt", "", secs(a, 30));
        let took = t0.elapsed();
        assert_eq!(
            r.status,
            503,
            "GET with fs away: {}\nconsole:\n{}",
            r.head,
            console(&vm)
        );
        assert!(
            took < limit,
            "GET with fs away took {took:?} (limit {limit:?})"
        );
    }
    let t0 = Instant::now();
    let r = exchange(
        port,
        b"PUT /y.txt HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        secs(a, 30),
    )
    .unwrap_or_else(|e| {
        panic!(
            "PUT with fs away: {e} after {:?}\nconsole:\n{}",
            t0.elapsed(),
            console(&vm)
        )
    });
    assert_eq!(r.status, 503, "PUT with fs away: {}", r.head);
    assert!(
        t0.elapsed() < limit,
        "PUT with fs away took {:?}",
        t0.elapsed()
    );
}

#[path = "store_faults.rs"]
mod store_faults;
