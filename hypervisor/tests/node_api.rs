//! One node in-process with the fake backend: the API's happy path and its errors, as the CLI sees them.

use std::net::TcpListener;
use std::time::Duration;

use dvs_hypervisor::client::{ClientError, NodeClient};
use dvs_hypervisor::config::{Accel, BackendKind, NetdevKind, NodeConfig};
use dvs_hypervisor::images::{sha256_hex, Manifest};
use dvs_hypervisor::instances::{InstanceSpec, RestartPolicy, RunRequest, State};
use dvs_proxy::{ClusterMap, DcInfo, NodeInfo};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spec(
    name: &str,
    image: &str,
    dc: u16,
    eps: &[u32],
    svc: &[&str],
    args: &[&str],
) -> InstanceSpec {
    InstanceSpec {
        name: name.into(),
        image: image.into(),
        dc,
        endpoints: eps.to_vec(),
        services: svc.iter().map(|s| s.to_string()).collect(),
        memory: None,
        ip: None,
        args: args.iter().map(|s| s.to_string()).collect(),
        publish: vec![],
        restart: RestartPolicy::Never,
        backend: None,
    }
}

fn code(e: ClientError) -> String {
    e.code().unwrap_or("none").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_with_fake_instances() {
    std::env::set_var("DVS_FAKE_VOS", env!("CARGO_BIN_EXE_dvs-fake-vos"));
    let dir = std::env::temp_dir().join(format!("dvs-node-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let api = format!("127.0.0.1:{}", free_port());
    let cluster = ClusterMap {
        nodes: vec![NodeInfo {
            id: 1,
            proxy: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            api: api.parse().unwrap(),
        }],
        dcs: vec![
            DcInfo {
                id: 1,
                name: "one".into(),
                nodes: vec![1],
            },
            DcInfo {
                id: 2,
                name: "elsewhere".into(),
                nodes: vec![],
            },
        ],
    };
    let cfg = NodeConfig {
        node: 1,
        cluster: dir.join("cluster.toml"),
        data_dir: dir.clone(),
        backend: BackendKind::Fake,
        netdev: NetdevKind::Stream,
        accel: Accel::Auto,
        qemu: "qemu-system-x86_64".into(),
        api_listen: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(dvs_hypervisor::daemon::serve(cfg, cluster, async move {
        let _ = stop_rx.await;
    }));
    let c = NodeClient::new(&api);
    for _ in 0..100 {
        if c.status().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An image: refused when the bytes do not match, stored and verified when they do.
    let kernel = b"not a kernel: fake instances ignore it".to_vec();
    let sha = sha256_hex(&kernel);
    let mut m = Manifest {
        name: "vos".into(),
        version: "1".into(),
        sha256: "0".repeat(64),
        memory: 16,
        services: vec![],
    };
    assert_eq!(
        code(c.push_image(&m, kernel.clone().into()).await.unwrap_err()),
        "image"
    );
    m.sha256 = sha.clone();
    c.push_image(&m, kernel.into()).await.unwrap();
    assert!(c.image("vos").await.unwrap().verified);

    // Two instances talk; the errors a user meets come back with their codes.
    let run = |s: InstanceSpec| RunRequest {
        spec: s,
        takeover_gen: None,
    };
    c.run(&run(spec("echo", "vos", 1, &[20], &["echo"], &[])))
        .await
        .unwrap();
    let taken = c
        .run(&run(spec("echo2", "vos", 1, &[20], &["echo"], &[])))
        .await
        .unwrap_err();
    assert_eq!(code(taken), "endpoint_taken");
    assert_eq!(
        code(
            c.run(&run(spec("echo", "vos", 1, &[21], &["echo"], &[])))
                .await
                .unwrap_err()
        ),
        "name_taken"
    );
    assert_eq!(
        code(
            c.run(&run(spec("x", "nope", 1, &[22], &["echo"], &[])))
                .await
                .unwrap_err()
        ),
        "image"
    );
    assert_eq!(
        code(
            c.run(&run(spec("x", "vos", 2, &[22], &["echo"], &[])))
                .await
                .unwrap_err()
        ),
        "dc"
    );
    assert_eq!(
        code(
            c.run(&run(spec("x", "vos", 9, &[22], &["echo"], &[])))
                .await
                .unwrap_err()
        ),
        "dc"
    );
    assert_eq!(
        code(
            c.run(&run(spec("Bad/Name", "vos", 1, &[22], &["echo"], &[])))
                .await
                .unwrap_err()
        ),
        "invalid"
    );
    c.run(&run(spec(
        "bench",
        "vos",
        1,
        &[10, 11],
        &["ipc-bench"],
        &["peer=20", "n=200"],
    )))
    .await
    .unwrap();
    let mut log = String::new();
    for _ in 0..200 {
        log = c.logs("bench", None).await.unwrap_or_default();
        if log.contains("dvs: bench summary") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log.contains("dvs: bench sendrec n=200 "), "{log}");
    assert_eq!(c.instance("echo").await.unwrap().state, State::Running);
    let counters = c.counters().await.unwrap();
    assert!(counters.ports["bench"].rx.frames >= 200);
    assert!(c
        .directory()
        .await
        .unwrap()
        .iter()
        .any(|p| p.ep == 20 && p.port.as_deref() == Some("echo")));

    assert_eq!(
        code(c.logs("..%2F..%2Fetc%2Fpasswd", None).await.unwrap_err()),
        "not_found"
    );

    // Stopping forgets the instance and frees its endpoint.
    c.stop("echo").await.unwrap();
    assert_eq!(code(c.instance("echo").await.unwrap_err()), "not_found");
    c.run(&run(spec("echo2", "vos", 1, &[20], &["echo"], &[])))
        .await
        .unwrap();

    let _ = stop_tx.send(());
    node.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
