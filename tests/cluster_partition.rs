//! A director cut off from etcd by a real network partition: etcd's three
//! members live in their own network namespace behind a veth link, the
//! director (and its Dovecot backend) outside; the test takes the link
//! down. The director must close its sessions (backend side first) and
//! refuse logins *before* etcd lets its lease expire — its registration is
//! still in etcd, seen from inside the namespace, when its session is
//! closed. A second director inside the namespace (still with etcd)
//! becomes the leader only after that lease has expired, and may take the
//! cut-off director's user elsewhere only then. The cut-off director
//! serves again once the link is back.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpin::cluster_link::{ClaimAnswer, ClusterLink};
use mailpin::config::ClusterConfig;

use support::mailpin::{http, Mailpin};
use support::netns::{require_netns, PartitionedEtcd};
use support::{require_dovecot, DovecotCluster, DovecotOptions, LineClient};

fn fenced(m: &Mailpin) -> Option<bool> {
    let (_, body) = http(
        m.admin,
        &format!(
            "GET /cluster HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            m.admin
        ),
    );
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["etcd"]["fenced"].as_bool()
}

fn wait_until(m: &Mailpin, limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_partitioned_director_fences_before_its_lease_expires_and_rejoins() {
    if !require_netns() || !require_dovecot() {
        return;
    }
    let dovecot = DovecotCluster::start(1, DovecotOptions::default());
    let inst = dovecot.instance(0);
    let etcd = PartitionedEtcd::start();
    let config = format!(
        "[server]\ncores = 1\n\n[cluster]\netcd = {}\nprefix = \"/part\"\nname = \"d1\"\nlease_ttl = \"4s\"\n\n\
         [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n\
         [[backend]]\nname = \"b0\"\nhost = \"{}\"\nimap = {}\n",
        etcd.toml_endpoints(),
        inst.addr(),
        inst.imap_port()
    );
    let d1 = Mailpin::start(&config, 1);
    wait_until(&d1, Duration::from_secs(15), "serving", || {
        fenced(&d1) == Some(false)
    });
    assert!(etcd.has_key("/part/v1/directors/d1"));
    // d2: a cluster thread (no listeners) inside etcd's namespace, started
    // after d1 leads, so it follows.
    let d2_config = ClusterConfig {
        etcd: etcd.inside_urls(),
        prefix: "/part".into(),
        name: "d2".into(),
        lease_ttl: Duration::from_secs(4),
        ..ClusterConfig::default()
    };
    let d2_link = Arc::new(ClusterLink::new("d2"));
    let link = d2_link.clone();
    let _d2 = etcd.run_inside(move || {
        mailpin::cluster::start(&d2_config, link, Vec::new(), None, "inside".into()).expect("d2")
    });
    wait_until(&d1, Duration::from_secs(15), "d2 follows d1", || {
        let v = d2_link.view();
        v.leader.as_deref() == Some("d1") && v.directors.len() == 2
    });
    let user = dovecot.user(1);
    let mut held = LineClient::connect(d1.listen[0]).expect("connect");
    held.read_line().expect("greeting");
    assert!(held.imap(&format!("LOGIN {user} pass")).unwrap().is_ok());

    etcd.cut();
    let cut = Instant::now();
    // d2 (still with etcd) wants the user elsewhere — its backend b0 is
    // none of d2's — and asks every 100 ms: it may have it only once d1's
    // lease has expired.
    let claimer = {
        let port = d2_link.port.clone();
        let user = user.clone();
        std::thread::spawn(move || {
            let known: Box<[Box<str>]> = Box::new(["b1".into()]);
            while cut.elapsed() < Duration::from_secs(20) {
                let answer = port
                    .claim(&user, "b1", Box::new([]), known.clone())
                    .recv_timeout(Duration::from_secs(5));
                if let Ok(ClaimAnswer::Agreed(b)) = answer {
                    return Some((Instant::now(), b));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            None
        })
    };
    let mut bye = String::new();
    while let Ok(line) = held.read_line() {
        bye.push_str(&line);
    }
    let fenced_after = cut.elapsed();
    // The lease must still be alive in etcd when the session is gone.
    let still_registered = etcd.has_key("/part/v1/directors/d1");
    eprintln!(
        "fenced {fenced_after:?} after the cut: {bye:?}; still registered: {still_registered}"
    );
    assert!(bye.contains("BYE [UNAVAILABLE]"), "{bye:?}\n{}", d1.log());
    assert!(
        still_registered,
        "etcd expired the lease before the director closed its session"
    );
    assert_eq!(
        d2_link.view().leader.as_deref(),
        Some("d1"),
        "d2 took over before d1 had fenced"
    );
    assert!(fenced_after < Duration::from_secs(4), "{fenced_after:?}");
    assert!(
        dovecot.instance(0).who().iter().all(|w| w.user != user),
        "the backend session outlived the fence"
    );
    let mut c = LineClient::connect(d1.listen[0]).expect("connect");
    c.read_line().expect("greeting");
    let t = Instant::now();
    let r = c.imap(&format!("LOGIN {user} pass")).unwrap();
    assert!(r.status.starts_with("NO [UNAVAILABLE]"), "{}", r.status);
    assert!(t.elapsed() < Duration::from_secs(1));

    // etcd lets the lease go only after its TTL (4 s after the last
    // keepalive it got).
    let t = Instant::now();
    let mut last_seen = Instant::now();
    while etcd.has_key("/part/v1/directors/d1") {
        last_seen = Instant::now();
        assert!(t.elapsed() < Duration::from_secs(15), "lease never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let expired_after = cut.elapsed();
    let (moved_at, to) = claimer
        .join()
        .expect("the claimer")
        .expect("d2 got the user once d1's lease had expired");
    eprintln!(
        "d2 moved the user to {to} {:?} after the cut",
        moved_at - cut
    );
    assert_eq!(&*to, "b1");
    assert!(
        moved_at > last_seen,
        "d2 moved the user while d1's lease was alive"
    );
    d2_link.port.release(&user);
    eprintln!("lease expired in etcd {expired_after:?} after the cut");
    assert!(expired_after > fenced_after);
    // The director that still has etcd takes over only now.
    let t = Instant::now();
    wait_until(&d1, Duration::from_secs(5), "d2 leads", || {
        d2_link.view().leader.as_deref() == Some("d2")
    });
    eprintln!("d2 leads {:?} after the cut", cut.elapsed());
    assert!(t.elapsed() < Duration::from_secs(3));

    etcd.heal();
    let t = Instant::now();
    wait_until(&d1, Duration::from_secs(20), "serving again", || {
        fenced(&d1) == Some(false)
    });
    eprintln!("serving again {:?} after the link came back", t.elapsed());
    assert!(etcd.has_key("/part/v1/directors/d1"));
    // d1 takes its user back (d2 released it; b1 is none of d1's).
    wait_until(
        &d1,
        Duration::from_secs(10),
        "the user logs in again",
        || {
            let mut c = LineClient::connect(d1.listen[0]).expect("connect");
            c.read_line().expect("greeting");
            c.imap(&format!("LOGIN {user} pass")).unwrap().is_ok()
        },
    );
    wait_until(&d1, Duration::from_secs(10), "d2 sees d1 back", || {
        d2_link.view().directors.len() == 2
    });
}
