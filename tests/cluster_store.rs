//! The assignment store against a real 3-member etcd, through the port the
//! cores use: two directors (two cluster threads, on different etcd
//! members) claiming the same users at once always agree on one backend
//! per user, and a burst of claims goes through the group commit; an
//! assignment to a backend one director cannot use is replaced only when
//! no other director serves the user, and a release lets it be; a user
//! no director serves any more leaves etcd.
#![cfg(feature = "cluster")]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpin::cluster::{start, ClusterHandle};
use mailpin::cluster_link::{ClaimAnswer, ClusterLink, ControlRequest};
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

/// The backend agreed (panics on a refusal).
fn answer(rx: flume::Receiver<ClaimAnswer>) -> String {
    match rx
        .recv_timeout(Duration::from_secs(10))
        .expect("an answer in time")
    {
        ClaimAnswer::Agreed(b) => b.into(),
        ClaimAnswer::Refused(why) => panic!("refused: {why}"),
    }
}

/// Whether the claim was refused.
fn refused(rx: flume::Receiver<ClaimAnswer>) -> bool {
    matches!(
        rx.recv_timeout(Duration::from_secs(10))
            .expect("an answer in time"),
        ClaimAnswer::Refused(_)
    )
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
    let (_h1, l1) = member("d1", urls.clone());
    let mut rotated = urls.clone();
    rotated.rotate_left(1);
    let (_h2, l2) = member("d2", rotated);
    let (s1, s2) = (l1.port.clone(), l2.port.clone());
    let none = || -> Box<[Box<str>]> { Box::new([]) };
    let all = || -> Box<[Box<str>]> { Box::new(["b1".into(), "b2".into(), "b3".into()]) };

    const USERS: usize = 300;
    let t = Instant::now();
    // Each user is claimed by both at once, each asking a different backend.
    let pending: Vec<_> = (0..USERS)
        .map(|i| {
            let user = format!("user{i:04}");
            (
                s1.claim(&user, "b1", none(), all()),
                s2.claim(&user, "b2", none(), all()),
            )
        })
        .collect();
    let mut chosen = [0usize; 2];
    for (a, b) in pending {
        let (a, b) = (answer(a), answer(b));
        assert_eq!(a, b, "split");
        chosen[usize::from(a == "b2")] += 1;
    }
    let took = t.elapsed();
    eprintln!(
        "{} claims in {took:?} ({:.0}/s); b1 (d1's choice) {}, b2 (d2's) {}",
        USERS * 2,
        (USERS * 2) as f64 / took.as_secs_f64(),
        chosen[0],
        chosen[1]
    );
    // A later claim adopts the agreed backend whatever it asks for.
    let agreed = answer(s1.claim("user0000", "b1", none(), all()));
    assert_eq!(answer(s2.claim("user0000", "b9", none(), all())), agreed);
    // Keys that need escaping round-trip as well.
    assert_eq!(answer(s1.claim("a/b%c", "b1", none(), all())), "b1");
    assert_eq!(answer(s2.claim("a/b%c", "b2", none(), all())), "b1");

    // "a/b%c" is on b1 and both directors serve it. d1 cannot use b1 (it
    // is down there): d2 still serves the user on b1, so d1 may not move
    // it — refused, and the assignment stays.
    let b1_unusable = || -> Box<[Box<str>]> { Box::new(["b1".into()]) };
    assert!(refused(s1.claim("a/b%c", "b3", b1_unusable(), all())));
    assert_eq!(answer(s2.claim("a/b%c", "b2", none(), all())), "b1");
    // d2 releases the user. b1 is down for d1 alone (the cluster has not
    // given it up): d1 still may not move the user (refused whether or not
    // the release has landed yet).
    l2.port.release("a/b%c");
    assert!(refused(s1.claim("a/b%c", "b3", b1_unusable(), all())));
    // Once b1 is no backend of d1 (removed from its configuration), d1
    // replaces the assignment, and d2 follows it on its next claim.
    let without_b1 = || -> Box<[Box<str>]> { Box::new(["b2".into(), "b3".into()]) };
    let t = Instant::now();
    let moved = loop {
        let rx = s1.claim("a/b%c", "b3", none(), without_b1());
        match rx.recv_timeout(Duration::from_secs(10)).expect("an answer") {
            ClaimAnswer::Agreed(b) => break b,
            ClaimAnswer::Refused(_) => {
                assert!(t.elapsed() < Duration::from_secs(5), "never replaced");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(&*moved, "b3");
    assert_eq!(answer(s2.claim("a/b%c", "b2", none(), all())), "b3");

    // A user nobody serves any more is forgotten: once its only director
    // released it, its assignment leaves etcd (as a lone director forgets
    // a user after server.user_expire).
    assert_eq!(answer(s1.claim("lonely", "b2", none(), all())), "b2");
    assert!(lookup(&l1, "lonely").is_some());
    l1.port.release("lonely");
    let t = Instant::now();
    while lookup(&l1, "lonely").is_some() {
        assert!(t.elapsed() < Duration::from_secs(5), "never forgotten");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One still served by the other director stays. (d1 releases it, then
    // a marker only d1 served: once the marker is gone, d1 has looked at
    // "shared" too.)
    assert_eq!(answer(s1.claim("shared", "b1", none(), all())), "b1");
    assert_eq!(answer(s2.claim("shared", "b2", none(), all())), "b1");
    assert_eq!(answer(s1.claim("marker", "b1", none(), all())), "b1");
    l1.port.release("shared");
    l1.port.release("marker");
    let t = Instant::now();
    while lookup(&l1, "marker").is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "marker never forgotten"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lookup(&l2, "shared").as_deref(), Some("b1"));
}

/// Where etcd says `user` is, asked through `link`'s port.
fn lookup(link: &ClusterLink, user: &str) -> Option<String> {
    let (reply, rx) = flume::bounded(1);
    assert!(link.port.ask(ControlRequest::Lookup {
        user: user.into(),
        reply,
    }));
    rx.recv_timeout(Duration::from_secs(10))
        .expect("an answer")
        .expect("etcd answered")
        .map(|(b, _)| b.into())
}
