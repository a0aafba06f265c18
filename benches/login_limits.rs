//! The connection and login limits on the hot path: what a new connection
//! pays to be counted before login, what a login pays to look up its
//! address's failures, and what the owner core pays to count a login
//! session against the per-user limits.
//!
//! Run: `cargo bench --bench login_limits`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mailpin::config::{Forward, LimitsConfig, Protocol};
use mailpin::limits::Limits;
use mailpin::route::backends::{Backend, BackendSet};
use mailpin::route::shard::{SessionLimits, SessionOrigin, ShardTable};

/// 10 000 distinct client addresses.
fn addresses() -> Vec<IpAddr> {
    (0..10_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect()
}

fn prelogin(c: &mut Criterion) {
    let limits = Limits::new(&LimitsConfig::default(), 1);
    let ips = addresses();
    // Background: one waiting connection from each of 5 000 addresses.
    let held: Vec<_> = ips[..5_000]
        .iter()
        .map(|ip| limits.enter_prelogin(*ip).unwrap())
        .collect();
    let mut i = 0;
    c.bench_function("prelogin_enter_leave_5k_addresses_waiting", |b| {
        b.iter(|| {
            i = (i + 7919) % ips.len();
            drop(black_box(limits.enter_prelogin(ips[i]).unwrap()));
        })
    });
    drop(held);
    let mut i = 0;
    c.bench_function("auth_penalty_lookup", |b| {
        b.iter(|| {
            i = (i + 7919) % ips.len();
            black_box(limits.auth_penalty(ips[i]))
        })
    });
}

fn shard_with_origins(c: &mut Criterion) {
    let addr: SocketAddr = "127.0.0.1:143".parse().unwrap();
    let set = BackendSet::new(
        (0..10u16)
            .map(|i| {
                Backend::new(
                    i,
                    &format!("mail{i}"),
                    "127.0.0.1".into(),
                    [addr; Protocol::COUNT],
                    100,
                    Forward::Id,
                    Duration::from_secs(2),
                )
            })
            .collect(),
    );
    let limits = SessionLimits {
        per_user: 0,
        per_user_ip: 10,
    };
    let mut table = ShardTable::with_limits(Duration::from_secs(900), limits);
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("user{i}@example.com"))
        .collect();
    let origin = |i: usize| SessionOrigin {
        ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32 % 3)),
        protocol: Protocol::Imap,
    };
    // Every user holds three sessions from three addresses.
    for k in &keys {
        for n in 0..3 {
            table
                .acquire(k, &set, Protocol::Imap, &[], Some(origin(n)))
                .unwrap();
        }
    }
    let mut i = 0;
    c.bench_function("shard_acquire_release_with_origin_100k_users", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let key = &keys[i];
            let o = Some(origin(i));
            let backend = table
                .acquire(black_box(key), &set, Protocol::Imap, &[], o)
                .unwrap();
            table.release(key, backend, o, Instant::now());
        })
    });
}

criterion_group!(benches, prelogin, shard_with_origins);
criterion_main!(benches);
