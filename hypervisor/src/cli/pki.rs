//! `dvs cluster init` and `dvs node cert`: the cluster CA and the node certificates that peer links use for
//! mutual TLS (see `dvs_proxy::tls`). Keys are written 0600 and never overwritten without `--force`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dvs_proxy::tls::{issue_node_cert, new_cluster_ca, node_dns_name, Pem};
use m3ipc_core::NodeId;

/// `dvs cluster ...`.
#[derive(Subcommand, Debug)]
pub(super) enum ClusterCmd {
    /// Make the cluster CA: DIR/ca.pem (certificate, give it to every node) and DIR/ca.key (keep it safe: it
    /// makes nodes). Refuses to overwrite an existing CA without --force.
    #[command(after_help = "Then issue a certificate per node:
  dvs node cert n1 --id 1 --dir pki       -> pki/n1.pem, pki/n1.key
and name them in each node.toml:
  tls = { ca = \"pki/ca.pem\", cert = \"pki/n1.pem\", key = \"pki/n1.key\" }")]
    Init {
        /// Folder for the CA files (created if missing).
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// A name for the cluster, written into the CA's common name (for people).
        #[arg(long, default_value = "dvs")]
        name: String,
        /// Replace an existing CA (every node certificate of the old one stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue a node's API server certificate (DIR/NAME-api.pem, DIR/NAME-api.key, 0600) from the CA in DIR,
    /// naming the addresses clients reach the API at, for node.toml's `api_tls` (the node then holds no CA key).
    #[command(after_help = "Example:
  dvs cluster api-cert n1 --addr 10.0.0.1 --dir pki        -> pki/n1-api.pem, pki/n1-api.key
  dvs cluster credentials n1 --role admin --dir pki       -> what n1 presents to other nodes (migration)
In n1's node.toml:
  api_listen = \"10.0.0.1:7070\"
  api_tls = { ca = \"pki/ca.pem\", cert = \"pki/n1-api.pem\", key = \"pki/n1-api.key\", credentials = \"pki/n1.credentials.toml\" }")]
    ApiCert {
        /// The node's name (`[a-z0-9][a-z0-9-]{0,62}`): the files' names.
        name: String,
        /// An IP address or DNS name clients use for this node's API, repeatable (localhost, 127.0.0.1 and
        /// ::1 are always in).
        #[arg(long, required = true)]
        addr: Vec<String>,
        /// The folder of the CA (from `dvs cluster init`); the files go there too.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue an API credential file (URL, CA, client certificate and key, role in the certificate) from the
    /// CA in DIR, for nodes whose `api_ca` is that CA. Written 0600; never overwritten without --force.
    #[command(after_help = "Example:
  dvs cluster credentials alice --role read-only --url https://10.0.0.1:7070 --dir pki
      -> pki/alice.credentials.toml; then: dvs --credentials pki/alice.credentials.toml ps
In node.toml, to issue the nodes' API certificates from the same CA:
  api_ca = { cert = \"pki/ca.pem\", key = \"pki/ca.key\" }")]
    Credentials {
        /// The client's name (`[a-z0-9][a-z0-9-]{0,62}`): the certificate's common name and the file's name.
        name: String,
        /// admin (everything) or read-only (GET only; changes are refused with 403).
        #[arg(long)]
        role: crate::auth::Role,
        /// The API URL the file points at (the node `dvs` talks to without --node).
        #[arg(long, default_value = "https://127.0.0.1:7070")]
        url: String,
        /// The folder of the CA (from `dvs cluster init`).
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Where to write the file (default: DIR/NAME.credentials.toml).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
}

/// `dvs node cert NAME --id ID`.
#[derive(Args, Debug)]
#[command(after_help = "Example:
  dvs node cert n2 --id 2 --dir pki       -> pki/n2.pem, pki/n2.key (certificate for node-2.dvs)")]
pub(super) struct CertArgs {
    /// The node's name (`[a-z0-9][a-z0-9-]{0,62}`): the certificate's common name and the files' names.
    name: String,
    /// The node's id in the cluster file: the certificate names `node-<ID>.dvs`, which is what peers check.
    #[arg(long)]
    id: u16,
    /// The folder of the cluster CA (from `dvs cluster init`); the node's files go there too.
    #[arg(long, default_value = "pki")]
    dir: PathBuf,
    /// Replace existing files of this node.
    #[arg(long)]
    force: bool,
}

/// Runs `dvs cluster ...`.
pub(super) fn cluster(cmd: ClusterCmd) -> anyhow::Result<()> {
    let (dir, name, force) = match cmd {
        ClusterCmd::Init { dir, name, force } => (dir, name, force),
        ClusterCmd::Credentials {
            name,
            role,
            url,
            dir,
            out,
            force,
        } => return credentials(&name, role, &url, &dir, out, force),
        ClusterCmd::ApiCert {
            name,
            addr,
            dir,
            force,
        } => return api_cert(&name, &addr, &dir, force),
    };
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    refuse_overwrite(&[&cert, &key], force, "a cluster CA")?;
    let ca = new_cluster_ca(&name).context("making the cluster CA")?;
    write_pair(&dir, &cert, &key, &ca, force)?;
    println!(
        "cluster CA written: {} (certificate) and {} (private key, 0600)",
        cert.display(),
        key.display()
    );
    println!(
        "next: `dvs node cert NAME --id ID --dir {}` for each node",
        dir.display()
    );
    Ok(())
}

/// Runs `dvs cluster credentials`.
fn credentials(
    name: &str,
    role: crate::auth::Role,
    url: &str,
    dir: &Path,
    out: Option<PathBuf>,
    force: bool,
) -> anyhow::Result<()> {
    if !valid_name(name) {
        bail!("client name '{name}': use [a-z0-9][a-z0-9-]{{0,62}} (lower-case letters, digits, dashes)");
    }
    if !url.starts_with("https://") {
        bail!("--url '{url}': the API is served over TLS: https://HOST:PORT");
    }
    let ca = read_ca(dir)?;
    let out = out.unwrap_or_else(|| dir.join(format!("{name}.credentials.toml")));
    refuse_overwrite(&[&out], force, &format!("credentials '{name}'"))?;
    let creds = crate::auth::issue_credentials(&ca, name, role, url)
        .with_context(|| format!("issuing credentials with the CA in {}", dir.display()))?;
    creds
        .save(&out, force)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{role} credentials for '{name}' written: {} (0600; it holds a private key)",
        out.display()
    );
    println!(
        "use: dvs --credentials {} ps   (or DVS_CREDENTIALS)",
        out.display()
    );
    Ok(())
}

/// Runs `dvs cluster api-cert`.
fn api_cert(name: &str, addrs: &[String], dir: &Path, force: bool) -> anyhow::Result<()> {
    if !valid_name(name) {
        bail!("node name '{name}': use [a-z0-9][a-z0-9-]{{0,62}} (lower-case letters, digits, dashes)");
    }
    let mut names = crate::auth::server_names(&[]);
    for a in addrs {
        let ok = a.parse::<std::net::IpAddr>().is_ok()
            || (!a.is_empty()
                && a.len() <= 253
                && a.split('.').all(|l| !l.is_empty() && valid_name(l)));
        if !ok {
            bail!(
                "--addr '{}': an IP address or a DNS name",
                crate::validate::shown(a)
            );
        }
        if !names.contains(a) {
            names.push(a.clone());
        }
    }
    let ca = read_ca(dir)?;
    let (cert, key) = (
        dir.join(format!("{name}-api.pem")),
        dir.join(format!("{name}-api.key")),
    );
    refuse_overwrite(
        &[&cert, &key],
        force,
        &format!("node '{name}''s API certificate"),
    )?;
    let pem = crate::auth::issue_server_cert(&ca, &names)
        .with_context(|| format!("issuing with the CA in {}", dir.display()))?;
    write_pair(dir, &cert, &key, &pem, force)?;
    println!(
        "API certificate of '{name}' for {} written: {} and {} (0600)",
        names.join(", "),
        cert.display(),
        key.display()
    );
    println!(
        "in its node.toml: api_tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        dir.join("ca.pem").display(),
        cert.display(),
        key.display()
    );
    Ok(())
}

/// Reads the CA of `dvs cluster init` from `dir`.
fn read_ca(dir: &Path) -> anyhow::Result<Pem> {
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !ca_cert.exists() || !ca_key.exists() {
        bail!(
            "no cluster CA in {} (ca.pem and ca.key): run `dvs cluster init --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    Ok(Pem {
        cert: read(&ca_cert)?,
        key: read(&ca_key)?,
    })
}

/// Runs `dvs node cert`.
pub(super) fn node_cert(args: &CertArgs) -> anyhow::Result<()> {
    let CertArgs {
        name,
        id,
        dir,
        force,
    } = args;
    if !valid_name(name) {
        bail!("node name '{name}': use [a-z0-9][a-z0-9-]{{0,62}} (lower-case letters, digits, dashes)");
    }
    let (ca_cert, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !ca_cert.exists() || !ca_key.exists() {
        bail!(
            "no cluster CA in {} (ca.pem and ca.key): run `dvs cluster init --dir {}` first",
            dir.display(),
            dir.display()
        );
    }
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let ca = Pem {
        cert: read(&ca_cert)?,
        key: read(&ca_key)?,
    };
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    refuse_overwrite(&[&cert, &key], *force, &format!("node '{name}'"))?;
    let pem = issue_node_cert(&ca, name, NodeId(*id)).with_context(|| {
        format!(
            "issuing the certificate of node {id} with the CA in {}",
            dir.display()
        )
    })?;
    write_pair(dir, &cert, &key, &pem, *force)?;
    println!(
        "node certificate for {} (node {id}, '{name}') written: {} and {} (0600)",
        node_dns_name(NodeId(*id)),
        cert.display(),
        key.display()
    );
    println!(
        "in node {id}'s node.toml: tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}",
        ca_cert.display(),
        cert.display(),
        key.display()
    );
    Ok(())
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && b.len() <= 63 && ok(&b[0]) && b.iter().all(|c| ok(c) || *c == b'-')
}

fn refuse_overwrite(paths: &[&Path], force: bool, what: &str) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} exists: {what} is already there; not overwriting it (use --force to replace it)",
            p.display()
        );
    }
    Ok(())
}

/// Writes the certificate and the key (both 0600; the folder is created 0700 if missing).
fn write_pair(dir: &Path, cert: &Path, key: &Path, pem: &Pem, force: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    for (path, text) in [(key, &pem.key), (cert, &pem.cert)] {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).mode(0o600);
        if force {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let mut f = opts
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_cert_makes_files_a_node_can_use_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("dvs-pki-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let init = |force| ClusterCmd::Init {
            dir: dir.clone(),
            name: "t".into(),
            force,
        };
        cluster(init(false)).unwrap();
        let e = cluster(init(false)).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        let args = |name: &str, force| CertArgs {
            name: name.into(),
            id: 2,
            dir: dir.clone(),
            force,
        };
        node_cert(&args("n2", false)).unwrap();
        assert!(node_cert(&args("n2", false)).is_err());
        node_cert(&args("n2", true)).unwrap();
        assert!(node_cert(&args("Bad_Name", false)).is_err());
        use std::os::unix::fs::PermissionsExt;
        for f in ["ca.key", "ca.pem", "n2.key", "n2.pem"] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let files = dvs_proxy::tls::TlsFiles {
            ca: "ca.pem".into(),
            cert: "n2.pem".into(),
            key: "n2.key".into(),
        }
        .relative_to(&dir);
        dvs_proxy::tls::PeerTls::load(&files, NodeId(2)).unwrap();
        let e = dvs_proxy::tls::PeerTls::load(&files, NodeId(3)).unwrap_err();
        assert!(e.to_string().contains("node-3.dvs"), "{e}");
        // A CA replaced with --force no longer vouches for the old node certificate.
        cluster(init(true)).unwrap();
        assert!(dvs_proxy::tls::PeerTls::load(&files, NodeId(2)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
