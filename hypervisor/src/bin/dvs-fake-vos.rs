//! `dvs-fake-vos (--dgram PROXY_SOCK VM_SOCK | --stream SOCK) --mac MAC -- CMDLINE...`: a host-side fake
//! instance (see `dvs_hypervisor::fakevos`). The node's `fake` backend starts it in place of QEMU.

use anyhow::{bail, Context};
use dvs_hypervisor::fakevos;
use dvs_proxy::port::PortKind;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut port, mut mac, mut cmdline) = (None, [0x02, 0, 0, 0, 0, 1], String::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dgram" => {
                let p = it.next().context("--dgram PROXY_SOCK VM_SOCK")?;
                let v = it.next().context("--dgram PROXY_SOCK VM_SOCK")?;
                port = Some(PortKind::Dgram {
                    proxy_path: p.into(),
                    vm_path: v.into(),
                });
            }
            "--stream" => {
                port = Some(PortKind::Stream {
                    path: it.next().context("--stream SOCK")?.into(),
                })
            }
            "--mac" => {
                mac = fakevos::parse_mac(it.next().context("--mac MAC")?).context("bad --mac")?
            }
            "--" => cmdline = it.by_ref().cloned().collect::<Vec<_>>().join(" "),
            other => bail!("unknown argument '{other}'"),
        }
    }
    let Some(port) = port else {
        bail!(
            "usage: dvs-fake-vos (--dgram PROXY_SOCK VM_SOCK | --stream SOCK) --mac MAC -- CMDLINE"
        )
    };
    fakevos::run(port, mac, &cmdline).await
}
