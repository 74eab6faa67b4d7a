//! The store against a real etcd member (Debian's etcd-server, started by each test on free loopback ports).

use std::time::{Duration, Instant};

use dvs_etcd::member::LocalMember;
use dvs_etcd::{ClusterMap, DcInfo, EndpointOwner, EtcdError, Expect, NodeInfo, Store};

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dvs-etcd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn node(id: u16) -> NodeInfo {
    NodeInfo {
        id,
        proxy: format!("10.9.0.{id}:7001").parse().unwrap(),
        api: format!("10.9.0.{id}:7000").parse().unwrap(),
    }
}

fn dc(id: u16, name: &str, nodes: &[u16]) -> DcInfo {
    DcInfo {
        id,
        name: name.into(),
        nodes: nodes.to_vec(),
        limit: Default::default(),
        quota: Default::default(),
    }
}

async fn store(m: &LocalMember) -> Store {
    Store::connect(&[m.addrs.client_url()], "/dvs-test")
        .await
        .unwrap()
}

#[tokio::test]
async fn a_cluster_file_seeds_etcd_once_then_etcd_is_the_truth() {
    let dir = tempdir("seed");
    let m = LocalMember::single(&dir).unwrap();
    let s = store(&m).await;
    let map = ClusterMap {
        nodes: vec![node(1), node(2)],
        dcs: vec![dc(1, "web", &[1, 2])],
    };
    assert!(s.seed(&map).await.unwrap());
    let other = ClusterMap {
        nodes: vec![node(7)],
        dcs: vec![],
    };
    assert!(!s.seed(&other).await.unwrap(), "seeded already");
    let state = s.state().await.unwrap();
    assert_eq!(state.map(), map);
    assert!(state.alive.is_empty());
    // A node joins (again: a no-op); its id with other addresses is refused.
    s.join(&node(3)).await.unwrap();
    s.join(&node(3)).await.unwrap();
    let mut impostor = node(3);
    impostor.api = "10.9.9.9:7000".parse().unwrap();
    assert!(matches!(
        s.join(&impostor).await,
        Err(EtcdError::NodeTaken(3))
    ));
    assert_eq!(s.state().await.unwrap().nodes.len(), 3);
    // A wrong address is an error at connect, not a hang.
    let t0 = Instant::now();
    assert!(Store::connect(&["http://127.0.0.1:1".into()], "/x")
        .await
        .is_err());
    assert!(t0.elapsed() < Duration::from_secs(12));
}

#[tokio::test]
async fn a_lapsed_lease_takes_the_node_out_within_one_ttl() {
    let dir = tempdir("lease");
    let m = LocalMember::single(&dir).unwrap();
    let s = store(&m).await;
    s.join(&node(1)).await.unwrap();
    s.join(&node(2)).await.unwrap();
    let watch = s.watch().await.unwrap();
    let ttl = Duration::from_secs(1);
    let one = s.membership(1, ttl).await.unwrap();
    let two = s.membership(2, ttl).await.unwrap();
    let both = watch
        .wait_for(Duration::from_secs(5), |st| st.alive.len() == 2)
        .await;
    assert!(both.is_some(), "both alive: {:?}", watch.current());
    // Kept alive past several TTLs.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(watch.current().alive.len(), 2);
    assert!(!one.is_lost());
    // Node 2 crashes (no revoke): its key goes when the lease runs out, and the watch says so.
    let t0 = Instant::now();
    drop(two);
    let gone = watch
        .wait_for(Duration::from_secs(5), |st| !st.alive.contains(&2))
        .await
        .expect("node 2 taken out");
    let took = t0.elapsed();
    assert!(gone.alive.contains(&1));
    // etcd expires a lease between its TTL and TTL plus its own check period (~0.5 s).
    assert!(took <= ttl + Duration::from_millis(1500), "took {took:?}");
    // Leaving is at once.
    let t0 = Instant::now();
    one.leave().await.unwrap();
    watch
        .wait_for(Duration::from_secs(2), |st| st.alive.is_empty())
        .await
        .expect("node 1 left");
    assert!(t0.elapsed() < ttl);
}

#[tokio::test]
async fn dcs_are_created_and_deleted_live_and_watchers_see_it() {
    let dir = tempdir("dcs");
    let m = LocalMember::single(&dir).unwrap();
    let (a, b) = (store(&m).await, store(&m).await);
    a.join(&node(1)).await.unwrap();
    a.join(&node(2)).await.unwrap();
    let watch = b.watch().await.unwrap();
    a.create_dc(&dc(5, "shop", &[1, 2])).await.unwrap();
    let seen = watch
        .wait_for(Duration::from_secs(5), |st| st.dcs.contains_key(&5))
        .await
        .expect("the watcher sees DC 5");
    assert_eq!(seen.map().dcs, vec![dc(5, "shop", &[1, 2])]);
    for (bad, why) in [
        (dc(5, "other", &[1]), "id taken"),
        (dc(6, "shop", &[1]), "name taken"),
        (dc(7, "x", &[9]), "unknown node"),
    ] {
        let e = a.create_dc(&bad).await.unwrap_err();
        assert!(
            matches!(e, EtcdError::DcTaken(_) | EtcdError::DcNode { .. }),
            "{why}: {e}"
        );
    }
    // Two creations of one id race: one wins.
    let (p, q) = (dc(8, "p", &[1]), dc(8, "q", &[2]));
    let (r1, r2) = tokio::join!(a.create_dc(&p), b.create_dc(&q));
    assert_eq!(
        u8::from(r1.is_ok()) + u8::from(r2.is_ok()),
        1,
        "{r1:?} {r2:?}"
    );
    // A DC with an owned endpoint stays; released, it goes.
    let owner = EndpointOwner {
        node: 1,
        instance: "web".into(),
        gen: 1,
    };
    let owned = a.claim(5, 80, &owner, Expect::Absent).await.unwrap();
    assert!(matches!(
        a.delete_dc(5).await,
        Err(EtcdError::DcInUse {
            dc: 5,
            endpoints: 1
        })
    ));
    a.release(5, 80, owned.revision).await.unwrap();
    a.delete_dc(5).await.unwrap();
    watch
        .wait_for(Duration::from_secs(5), |st| !st.dcs.contains_key(&5))
        .await
        .expect("the watcher sees DC 5 go");
    assert!(matches!(a.delete_dc(5).await, Err(EtcdError::NoSuchDc(5))));
    // A node a DC lists cannot be removed; one that is alive cannot either.
    let listed = a.state().await.unwrap().dcs[&8].nodes[0];
    assert!(matches!(
        a.remove_node(listed).await,
        Err(EtcdError::DcNode { dc: 8, .. })
    ));
    a.join(&node(3)).await.unwrap();
    let live = a.membership(3, Duration::from_secs(2)).await.unwrap();
    assert!(matches!(
        a.remove_node(3).await,
        Err(EtcdError::NodeAlive(3))
    ));
    live.leave().await.unwrap();
    a.remove_node(3).await.unwrap();
    assert!(!a.state().await.unwrap().nodes.contains_key(&3));
}

#[tokio::test]
async fn endpoint_ownership_changes_are_compare_and_swap() {
    let dir = tempdir("owners");
    let m = LocalMember::single(&dir).unwrap();
    let s = store(&m).await;
    for id in 1..=3 {
        s.join(&node(id)).await.unwrap();
    }
    let owner = |node: u16, gen: u64| EndpointOwner {
        node,
        instance: format!("i{node}"),
        gen,
    };
    // Eight first claims at once, from separate connections: exactly one wins, the others learn who.
    let mut tasks = vec![];
    for n in 0..8u16 {
        let st = store(&m).await;
        let o = owner(n % 3 + 1, 1);
        tasks.push(tokio::spawn(async move {
            st.claim(1, 40, &o, Expect::Absent).await
        }));
    }
    let mut won = vec![];
    for t in tasks {
        match t.await.unwrap() {
            Ok(o) => won.push(o),
            Err(EtcdError::Conflict { current, .. }) => assert!(current.is_some()),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let first = won.pop().unwrap();
    assert_eq!(s.owner(1, 40).await.unwrap(), Some(first.clone()));
    // A handover from the revision read; a second one from the same revision loses.
    let next = owner(first.owner.node % 3 + 1, 2);
    let moved = s
        .claim(1, 40, &next, Expect::Revision(first.revision))
        .await
        .unwrap();
    let late = s
        .claim(1, 40, &owner(9, 2), Expect::Revision(first.revision))
        .await;
    assert!(matches!(late, Err(EtcdError::Conflict { current: Some(ref c), .. }) if *c == moved));
    // A takeover needs the owner dead: refused while its lease holds, accepted once it lapsed.
    let holder = s
        .membership(moved.owner.node, Duration::from_secs(1))
        .await
        .unwrap();
    let taker = owner(if moved.owner.node == 1 { 2 } else { 1 }, 3);
    let dead = Expect::DeadOwner {
        revision: moved.revision,
        node: moved.owner.node,
    };
    assert!(matches!(
        s.claim(1, 40, &taker, dead).await,
        Err(EtcdError::Conflict { .. })
    ));
    drop(holder);
    let watch = s.watch().await.unwrap();
    watch
        .wait_for(Duration::from_secs(5), |st| st.alive.is_empty())
        .await
        .expect("the holder's lease lapsed");
    let taken = s.claim(1, 40, &taker, dead).await.unwrap();
    assert_eq!(s.owners().await.unwrap(), vec![(1, 40, taken)]);
}

#[tokio::test]
async fn a_node_that_cannot_reach_etcd_loses_its_lease_within_one_ttl() {
    let dir = tempdir("lost");
    let mut m = LocalMember::single(&dir).unwrap();
    let s = store(&m).await;
    let ttl = Duration::from_secs(1);
    let me = s.membership(1, ttl).await.unwrap();
    tokio::time::sleep(ttl * 2).await;
    assert!(!me.is_lost());
    let t0 = Instant::now();
    m.kill();
    tokio::time::timeout(ttl * 3, me.lost())
        .await
        .expect("lease lost noticed");
    assert!(t0.elapsed() <= ttl + ttl / 2, "took {:?}", t0.elapsed());
    assert!(me.is_lost());
}

#[tokio::test]
async fn a_dead_nodes_instance_record_moves_to_one_survivor() {
    let dir = tempdir("instances");
    let m = LocalMember::single(&dir).unwrap();
    let s = store(&m).await;
    let holder = s.membership(3, Duration::from_secs(1)).await.unwrap();
    s.put_instance(3, "web", b"{\"spec\":1}").await.unwrap();
    s.put_instance(3, "db", b"{\"spec\":2}").await.unwrap();
    let recs = s.instances_on(3).await.unwrap();
    assert_eq!(
        recs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["db", "web"]
    );
    let (_, spec, rev) = recs[1].clone();
    assert!(
        !s.move_instance(3, "web", rev, 1, &spec).await.unwrap(),
        "node 3 is alive"
    );
    holder.leave().await.unwrap();
    // Two survivors race for it: one wins.
    let (a, b) = (store(&m).await, store(&m).await);
    let (r1, r2) = tokio::join!(
        a.move_instance(3, "web", rev, 1, &spec),
        b.move_instance(3, "web", rev, 2, &spec)
    );
    assert_eq!(u8::from(r1.unwrap()) + u8::from(r2.unwrap()), 1);
    let on = |n| {
        let s = s.clone();
        async move { s.instances_on(n).await.unwrap().len() }
    };
    assert_eq!((on(1).await + on(2).await, on(3).await), (1, 1));
    s.delete_instance(3, "db").await.unwrap();
    assert_eq!(on(3).await, 0);
}
