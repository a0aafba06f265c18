//! Pre-login parsing cost: the IMAP commands a client sends before it is
//! routed (LOGIN plain and with literals, AUTHENTICATE PLAIN with an
//! initial response, a typical ID) and SASL PLAIN decoding.
//!
//! Run with `cargo bench --bench prelogin`; criterion reports time per
//! operation (one whole command parsed from a fresh buffer).

use criterion::{criterion_group, criterion_main, Criterion};
use mailpin::proto::imap::{CommandReader, Limits, Step};
use mailpin::proto::sasl;
use std::hint::black_box;

/// Parses `input` (one complete command, any continuations included) and
/// returns the command, as a connection would after reading it all.
fn parse_one(reader: &mut CommandReader, buf: &mut Vec<u8>, input: &[u8]) -> usize {
    buf.clear();
    buf.extend_from_slice(input);
    loop {
        match reader.next(buf) {
            Ok(Step::Command(cmd)) => return cmd.args.len(),
            Ok(Step::Continue) => {}
            Ok(Step::NeedMore) | Err(_) => panic!("benchmark input is not one complete command"),
        }
    }
}

fn bench_commands(c: &mut Criterion) {
    let cases: [(&str, &[u8]); 4] = [
        ("login", b"a1 LOGIN user@example.com secret\r\n"),
        (
            "login_literals",
            b"a1 LOGIN {16}\r\nuser@example.com {6}\r\nsecret\r\n",
        ),
        (
            "authenticate_plain_ir",
            b"a1 AUTHENTICATE PLAIN AHVzZXJAZXhhbXBsZS5jb20Ac2VjcmV0\r\n",
        ),
        (
            "id_8_fields",
            b"a1 ID (\"name\" \"Thunderbird\" \"version\" \"128.3.1\" \"os\" \"Linux\" \
              \"os-version\" \"6.8\" \"vendor\" \"Mozilla\" \"support-url\" NIL \
              \"date\" \"2024-10-01\" \"x-originating-ip\" \"192.0.2.7\")\r\n",
        ),
    ];
    let mut group = c.benchmark_group("imap_parse");
    for (name, input) in cases {
        let mut reader = CommandReader::new(Limits::default());
        let mut buf = Vec::with_capacity(4096);
        group.bench_function(name, |b| {
            b.iter(|| parse_one(&mut reader, &mut buf, black_box(input)))
        });
    }
    group.finish();
}

fn bench_sasl(c: &mut Criterion) {
    let answer: &[u8] = b"AHVzZXJAZXhhbXBsZS5jb20Ac2VjcmV0";
    c.bench_function("sasl_plain_decode", |b| {
        b.iter(|| sasl::decode_plain(black_box(answer)).map(|c| c.user.len()))
    });
}

criterion_group!(benches, bench_commands, bench_sasl);
criterion_main!(benches);
