//! Live changes of the cluster (what the etcd directory feeds the proxy): a node joins and leaves without a
//! restart, and a node the directory calls dead gets no link until it is alive again.

mod common;

use common::{free_port, wait_for};
use std::time::Duration;

use dvs_proxy::{ClusterMap, DcInfo, NodeInfo, Proxy, ProxyConfig};
use m3ipc_core::NodeId;

fn node(id: u16) -> NodeInfo {
    NodeInfo {
        id,
        proxy: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        api: "127.0.0.1:1".parse().unwrap(),
    }
}

fn dc(nodes: &[u16]) -> DcInfo {
    DcInfo {
        id: 1,
        name: "one".into(),
        nodes: nodes.to_vec(),
        limit: Default::default(),
        quota: Default::default(),
    }
}

#[tokio::test]
async fn nodes_join_leave_and_are_fenced_live() {
    let (n1, n2) = (node(1), node(2));
    let alone = ClusterMap {
        nodes: vec![n1.clone()],
        dcs: vec![dc(&[1])],
    };
    let both = ClusterMap {
        nodes: vec![n1.clone(), n2.clone()],
        dcs: vec![dc(&[1, 2])],
    };
    let p1 = Proxy::start(ProxyConfig::new(NodeId(1), alone.clone()).unwrap())
        .await
        .unwrap();
    // Node 2 knows node 1, but node 1 (the lower id, which dials) does not know node 2 yet: no link.
    let p2 = Proxy::start(ProxyConfig::new(NodeId(2), both.clone()).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!p1.peer_is_up(NodeId(2)) && !p2.peer_is_up(NodeId(1)));

    // Node 2 joins: node 1 takes the new map, and the link comes up without a restart.
    p1.set_cluster(both.clone()).await.unwrap();
    wait_for("link up", || {
        p1.peer_is_up(NodeId(2)) && p2.peer_is_up(NodeId(1))
    })
    .await;
    assert_eq!(p1.cluster(), both);

    // The directory says node 2 is dead: its link is cut at once and not dialled again.
    p1.set_alive(NodeId(2), false).await;
    wait_for("link cut", || !p1.peer_is_up(NodeId(2))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!p1.peer_is_up(NodeId(2)), "a fenced node gets no new link");
    // Alive again: the link comes back.
    p1.set_alive(NodeId(2), true).await;
    wait_for("link back", || p1.peer_is_up(NodeId(2))).await;

    // Node 2 leaves: its link goes, its counters too, and it is refused if it calls.
    p1.set_cluster(alone.clone()).await.unwrap();
    wait_for("link gone", || !p2.peer_is_up(NodeId(1))).await;
    assert!(!p1.stats().peers.contains_key(&2));
    // A map without this node is refused.
    let without_me = ClusterMap {
        nodes: vec![n2],
        dcs: vec![],
    };
    assert!(p1.set_cluster(without_me).await.is_err());
    p1.shutdown();
    p2.shutdown();
}
