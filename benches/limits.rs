//! The limits of this machine that the director is compared with:
//! memcpy, one loopback TCP connection, and rustls' bulk encryption and
//! decryption on one core.
//!
//! * `memcpy`: `copy_from_slice` of a cache-hot 16 KiB and 64 KiB block
//!   (a TLS record, a relay buffer), and of a 64 MiB region in 64 KiB
//!   blocks (main memory).
//! * `loopback_tcp`: one TCP connection over 127.0.0.1 between two std
//!   threads, 64 KiB writes and reads, 16 MiB per iteration (both cores:
//!   the ceiling a relay on loopback is measured against).
//! * `rustls_bulk`: TLS 1.3 application data between an in-memory
//!   `ClientConnection` and `ServerConnection` (aws-lc-rs), 16 KiB records:
//!   `encrypt` times the client's `writer().write_all` + `write_tls`,
//!   `decrypt` the server's `read_tls` + `process_new_packets` +
//!   `reader().read`, each on one core, for AES-128-GCM, AES-256-GCM and
//!   ChaCha20-Poly1305.
//!
//! The rustls handshake rate per core is `benches/tls_handshake.rs`.
//!
//! ```text
//! cargo bench --bench limits
//! ```

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailpin::tls::{DevCert, MinVersion, Provider, TlsSettings};
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConnection, SupportedCipherSuite};

/// Plaintext per TLS record: the TLS maximum.
const RECORD: usize = 16 << 10;

/// Bytes per loopback TCP iteration.
const TCP_PAYLOAD: usize = 16 << 20;

/// Write and read size on the loopback connection.
const TCP_CHUNK: usize = 64 << 10;

fn short(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
}

fn bench_memcpy(c: &mut Criterion) {
    let mut group = c.benchmark_group("memcpy");
    short(&mut group);
    for (label, size) in [("16KiB", 16usize << 10), ("64KiB", 64 << 10)] {
        let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut dst = vec![0u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(label, |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
    }
    let region = 64usize << 20;
    let src: Vec<u8> = (0..region).map(|i| i as u8).collect();
    let mut dst = vec![0u8; region];
    group.throughput(Throughput::Bytes(region as u64));
    group.bench_function("64MiB-in-64KiB-blocks", |b| {
        b.iter(|| {
            for (to, from) in dst
                .chunks_mut(64 << 10)
                .zip(black_box(&src).chunks(64 << 10))
            {
                to.copy_from_slice(from);
            }
            black_box(&mut dst);
        })
    });
    group.finish();
}

/// One loopback connection: a writer thread sends `n` bytes whenever it
/// is asked to; the benchmark thread reads them.
fn bench_loopback_tcp(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (ask, asked) = mpsc::channel::<usize>();
    let writer = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let chunk = vec![7u8; TCP_CHUNK];
        while let Ok(mut n) = asked.recv() {
            while n > 0 {
                let len = n.min(TCP_CHUNK);
                stream.write_all(&chunk[..len]).expect("write");
                n -= len;
            }
        }
    });
    let (mut reader, _) = listener.accept().expect("accept");
    let mut buf = vec![0u8; TCP_CHUNK];
    let mut group = c.benchmark_group("loopback_tcp");
    short(&mut group);
    group.throughput(Throughput::Bytes(TCP_PAYLOAD as u64));
    group.bench_function("1-conn-64KiB-writes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                ask.send(TCP_PAYLOAD).expect("writer thread alive");
                let mut left = TCP_PAYLOAD;
                while left > 0 {
                    let n = reader.read(&mut buf).expect("read");
                    assert!(n > 0, "the writer closed early");
                    left -= n;
                }
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
    drop(ask);
    writer.join().expect("writer thread");
}

/// A client and a server connection after their handshake, both idle.
fn established(suite: SupportedCipherSuite) -> (ClientConnection, ServerConnection) {
    let cert = DevCert::generate().expect("development certificate");
    let settings = TlsSettings {
        min_version: MinVersion::Tls13,
        provider: Provider::AwsLcRs,
    };
    let server_cfg = mailpin::tls::server_config_from_pem(
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
        settings,
    )
    .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("certificate PEM"))
        .expect("root");
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let client_cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("server name");
    let mut client = ClientConnection::new(Arc::new(client_cfg), name).expect("client");
    let mut server = ServerConnection::new(server_cfg).expect("server");
    let mut wire = Vec::new();
    for _ in 0..10 {
        move_records(&mut client, &mut server, &mut wire);
        move_records(&mut server, &mut client, &mut wire);
        if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    assert_eq!(
        client.negotiated_cipher_suite().map(|s| s.suite()),
        Some(suite.suite())
    );
    (client, server)
}

/// Moves every record `from` has queued into `to` and processes it,
/// discarding any plaintext.
fn move_records<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
    wire: &mut Vec<u8>,
) {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).expect("write_tls");
    }
    let mut plain = [0u8; RECORD];
    decrypt(to, wire, &mut plain);
}

/// Feeds `wire` to `to` and reads out the plaintext; returns its length.
fn decrypt<B>(to: &mut rustls::ConnectionCommon<B>, wire: &[u8], plain: &mut [u8]) -> usize {
    let mut rest = wire;
    let mut got = 0;
    while !rest.is_empty() {
        to.read_tls(&mut rest).expect("read_tls");
        to.process_new_packets().expect("process_new_packets");
        loop {
            match to.reader().read(plain) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("reader: {e}"),
            }
        }
    }
    got
}

/// Which side of a record's trip the clock measures.
#[derive(Clone, Copy)]
enum Phase {
    /// Client: plaintext in, record out.
    Encrypt,
    /// Server: record in, plaintext out.
    Decrypt,
}

fn bench_rustls_bulk(c: &mut Criterion) {
    let mut group = c.benchmark_group("rustls_bulk_16KiB_records");
    short(&mut group);
    group.throughput(Throughput::Bytes(RECORD as u64));
    let suites = [
        ("aes-128-gcm", cipher_suite::TLS13_AES_128_GCM_SHA256),
        ("aes-256-gcm", cipher_suite::TLS13_AES_256_GCM_SHA384),
        (
            "chacha20-poly1305",
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for (label, suite) in suites {
        let (mut client, mut server) = established(suite);
        let data: Vec<u8> = (0..RECORD).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::with_capacity(RECORD + 1024);
        let mut plain = vec![0u8; RECORD];
        for (phase_label, phase) in [("encrypt", Phase::Encrypt), ("decrypt", Phase::Decrypt)] {
            group.bench_function(format!("{label}/{phase_label}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        wire.clear();
                        let started = Instant::now();
                        client.writer().write_all(&data).expect("encrypt");
                        while client.wants_write() {
                            client.write_tls(&mut wire).expect("write_tls");
                        }
                        let encrypted = Instant::now();
                        let got = decrypt(&mut server, &wire, &mut plain);
                        let decrypted = Instant::now();
                        assert_eq!(got, RECORD);
                        total += match phase {
                            Phase::Encrypt => encrypted - started,
                            Phase::Decrypt => decrypted - encrypted,
                        };
                    }
                    black_box(&plain);
                    total
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_memcpy, bench_loopback_tcp, bench_rustls_bulk);
criterion_main!(benches);
