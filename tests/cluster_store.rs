//! The assignment store against a real 3-member etcd: two directors (two
//! cluster threads, on different etcd members) claiming the same users at
//! once always agree on one backend per user, exactly one of them creates
//! each assignment, and a burst of claims goes through the group commit.
//! Login routing does not use the store yet; this tests the store itself.
#![cfg(feature = "cluster")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpin::cluster::store::Claim;
use mailpin::cluster::{start, ClusterHandle};
use mailpin::cluster_link::ClusterLink;
use mailpin::config::ClusterConfig;
use support::etcd::{require_etcd, EtcdCluster};

/// A cluster thread named `name` talking first to `endpoints`, holding a
/// lease (waits for it).
fn member(name: &str, endpoints: Vec<String>) -> (ClusterHandle, Arc<ClusterLink>) {
    let config = ClusterConfig {
        etcd: endpoints,
        prefix: "/store-test".into(),
        name: name.into(),
        lease_ttl: Duration::from_secs(3),
        ..ClusterConfig::default()
    };
    let link = Arc::new(ClusterLink::new(name));
    let handle = start(&config, link.clone(), Vec::new(), None, "test".into()).expect("start");
    let t = Instant::now();
    while link.fence.is_fenced() {
        assert!(t.elapsed() < Duration::from_secs(15), "{name}: no lease");
        std::thread::sleep(Duration::from_millis(20));
    }
    (handle, link)
}

fn answer(rx: flume::Receiver<Result<Claim, String>>) -> Claim {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("an answer in time")
        .expect("a claim")
}

#[test]
fn two_directors_racing_for_the_same_users_agree_on_one_backend_each() {
    if !require_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let urls: Vec<String> = etcd.members().iter().map(|m| m.url()).collect();
    // d1 starts on member 0, d2 on member 1: different connections, as
    // two director hosts would have.
    let (h1, _) = member("d1", urls.clone());
    let mut rotated = urls.clone();
    rotated.rotate_left(1);
    let (h2, _) = member("d2", rotated);
    let (s1, s2) = (h1.store(), h2.store());

    const USERS: usize = 300;
    let t = Instant::now();
    // Each user is claimed by both at once, each asking a different backend.
    let pending: Vec<_> = (0..USERS)
        .map(|i| {
            let user = format!("user{i:04}");
            (s1.claim(&user, "b1"), s2.claim(&user, "b2"))
        })
        .collect();
    let mut created = [0usize; 2];
    for (a, b) in pending {
        let (a, b) = (answer(a), answer(b));
        assert_eq!(a.backend, b.backend, "split: {a:?} vs {b:?}");
        assert_eq!(a.by, b.by);
        assert!(a.created ^ b.created, "exactly one creates: {a:?} {b:?}");
        created[usize::from(b.created)] += 1;
        let expected = if a.created { "b1" } else { "b2" };
        assert_eq!(a.backend, expected);
    }
    let took = t.elapsed();
    eprintln!(
        "{} claims in {took:?} ({:.0}/s); created by d1 {}, by d2 {}",
        USERS * 2,
        (USERS * 2) as f64 / took.as_secs_f64(),
        created[0],
        created[1]
    );
    // A later claim adopts the agreed backend whatever it asks for.
    let again = answer(s2.claim("user0000", "b9"));
    assert!(!again.created);
    assert_ne!(again.backend, "b9");
    // Keys that need escaping round-trip as well.
    let odd = answer(s1.claim("a/b%c", "b1"));
    assert_eq!(odd.backend, "b1");
    assert_eq!(answer(s2.claim("a/b%c", "b2")).backend, "b1");
}
