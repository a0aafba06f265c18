//! Routing hot paths: the rendezvous ranking, one shard's table, and the
//! cross-core round trip of a login on a core that does not own the user.
//!
//! Run: `cargo bench --bench routing`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mailpin::config::{Forward, Protocol};
use mailpin::mailbox::mailbox;
use mailpin::route::backends::{Backend, BackendId, BackendSet};
use mailpin::route::router::{owner_of, CorePost, Router, RouterMsg};
use mailpin::route::shard::ShardTable;

fn backends(n: usize) -> BackendSet {
    let addr: SocketAddr = "127.0.0.1:143".parse().unwrap();
    BackendSet::new(
        (0..n)
            .map(|i| {
                Backend::new(
                    i as BackendId,
                    &format!("mail{i}"),
                    "127.0.0.1".into(),
                    [addr; Protocol::COUNT],
                    100,
                    Forward::Id,
                    Duration::from_secs(2),
                )
            })
            .collect(),
    )
}

fn ranking(c: &mut Criterion) {
    let mut g = c.benchmark_group("hrw_first_choice");
    for n in [3, 10, 50] {
        let set = backends(n);
        let keys: Vec<String> = (0..1024).map(|i| format!("user{i}@example.com")).collect();
        let mut i = 0;
        g.bench_with_input(BenchmarkId::from_parameter(n), &set, |b, set| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(set.first_choice(black_box(&keys[i]), Protocol::Imap, &[]))
            })
        });
    }
    g.finish();
}

fn shard_table(c: &mut Criterion) {
    let set = backends(10);
    let mut table = ShardTable::new(Duration::from_secs(900));
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("user{i}@example.com"))
        .collect();
    for k in &keys {
        table.acquire(k, &set, Protocol::Imap, &[], None).unwrap();
    }
    let mut i = 0;
    c.bench_function("shard_acquire_release_100k_users", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let key = &keys[i];
            let backend = table
                .acquire(black_box(key), &set, Protocol::Imap, &[], None)
                .unwrap();
            table.release(key, backend, None, Instant::now());
        })
    });
}

/// A login on core 0 for a user owned by core 1: request through core 1's
/// mailbox, answer through core 0's, then the release message.
fn cross_core_round_trip(c: &mut Criterion) {
    let set = Arc::new(backends(10));
    let (tx0, rx0) = mailbox::<RouterMsg>();
    let (tx1, rx1) = mailbox::<RouterMsg>();
    let post: Arc<dyn CorePost> = Arc::new(vec![tx0, tx1]);
    let owner_set = set.clone();
    let owner_post = post.clone();
    let owner = std::thread::spawn(move || {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if let Some(c) = cores.get(1) {
            core_affinity::set_for_current(*c);
        }
        let router = Router::new(
            1,
            2,
            owner_post,
            owner_set,
            ShardTable::new(Duration::from_secs(900)),
        );
        let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            while let Some(m) = rx1.recv().await {
                router.handle(m);
            }
        });
    });
    let key = (0..1000)
        .map(|i| format!("user{i}"))
        .find(|k| owner_of(k, 2) == 1)
        .unwrap();
    let router = Router::new(0, 2, post, set, ShardTable::new(Duration::from_secs(900)));
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    c.bench_function("cross_core_acquire_round_trip", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let replies = async {
                    while let Some(m) = rx0.recv().await {
                        router.handle(m);
                    }
                };
                let work = async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let backend = router
                            .acquire(&key, Protocol::Imap, &[], None)
                            .await
                            .unwrap();
                        router.release(&key, backend, None);
                    }
                    start.elapsed()
                };
                monoio::select! {
                    t = work => t,
                    _ = replies => Duration::ZERO,
                }
            })
        })
    });
    // The owner thread keeps serving until the process exits.
    drop(owner);
}

criterion_group!(benches, ranking, shard_table, cross_core_round_trip);
criterion_main!(benches);
