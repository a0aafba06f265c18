//! The cost of following an IMAP session for live moves (issue 12): the
//! passive tracker (`mailpin::proto::imap::tracker::ImapTracker`) fed what
//! a relay passes, in 64 KiB chunks as the relay reads them.
//!
//! * `fetch-bodies`: a backend answering `UID FETCH n BODY.PEEK[]` with
//!   1 MiB literals (a client downloading mail): the literal bytes are
//!   skipped by counting;
//! * `flag-lines`: `* n FETCH (UID n FLAGS (\Seen))` lines back to back (a
//!   client syncing flags of a large mailbox): every byte is a line byte;
//! * `commands`: client command lines (`UID FETCH`, `UID STORE`, `NOOP`).
//!
//! Run: `cargo bench --bench imap_tracker`. Compare with the relay's
//! figures in PERF.md (the tracker runs on the same core, per byte).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailpin::proto::imap::tracker::ImapTracker;

const CHUNK: usize = 64 << 10;

fn fetch_bodies() -> Vec<u8> {
    let body = vec![b'x'; 1 << 20];
    let mut out = Vec::new();
    for n in 1..=16 {
        out.extend_from_slice(
            format!("* {n} FETCH (UID {n} BODY[] {{{}}}\r\n", body.len()).as_bytes(),
        );
        out.extend_from_slice(&body);
        out.extend_from_slice(format!(")\r\nf{n} OK Fetch completed.\r\n").as_bytes());
    }
    out
}

fn flag_lines() -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = 1;
    while out.len() < 16 << 20 {
        out.extend_from_slice(format!("* {n} FETCH (UID {n} FLAGS (\\Seen))\r\n").as_bytes());
        n += 1;
    }
    out
}

fn commands() -> Vec<u8> {
    let mut out = Vec::new();
    let mut n = 1;
    while out.len() < 4 << 20 {
        out.extend_from_slice(
            format!(
                "a{n} UID FETCH {n} (FLAGS)\r\nb{n} UID STORE {n} +FLAGS (\\Seen)\r\nc{n} NOOP\r\n"
            )
            .as_bytes(),
        );
        n += 1;
    }
    out
}

fn tracker(c: &mut Criterion) {
    let mut g = c.benchmark_group("imap_tracker");
    for (name, bytes, down) in [
        ("fetch-bodies", fetch_bodies(), true),
        ("flag-lines", flag_lines(), true),
        ("commands", commands(), false),
    ] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut t = ImapTracker::new();
                for chunk in bytes.chunks(CHUNK) {
                    if down {
                        t.backend_bytes(black_box(chunk));
                    } else {
                        t.client_bytes(black_box(chunk));
                    }
                }
                black_box(t.exists())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, tracker);
criterion_main!(benches);
