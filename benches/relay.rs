//! Throughput of mailpin's relay loop (`mailpin::relay::relay`) on one
//! io_uring core, against the same transfer without the relay.
//!
//! Everything runs on one monoio io_uring runtime, as on one director core:
//! a *source* task writes [`PAYLOAD`] bytes in 64 KiB writes into a
//! loopback TCP socket and half-closes it, and a *sink* reads until end of
//! stream (plain 64 KiB reads on a plain socket; mailpin's `ReadSide` on a
//! TLS one). In between, one of:
//!
//! * `direct`: nothing, the source's socket is the sink's peer (the
//!   baseline: two TCP endpoints, one core);
//! * `relay-copy`: mailpin's relay, copying through a 64 KiB buffer from
//!   the core's pool (the default, `server.splice = false`);
//! * `relay-splice`: the relay with `server.splice = true` (socket → pipe →
//!   socket in the kernel);
//! * `reference-bare-copy`: not mailpin's code, the simplest one-way copy
//!   loop (a 64 KiB read always pending, no readiness wait): what the hop
//!   itself costs, apart from the relay's design;
//! * `tls-direct`: the source is a TLS 1.3 client (monoio-rustls, AES-128-GCM,
//!   aws-lc-rs) and the sink reads from mailpin's own server `TlsStream`
//!   (decryption in the sink): the TLS baseline;
//! * `tls-relay`: the client's TLS is terminated by mailpin's `TlsStream`
//!   and the relay pumps the plaintext to a plain socket read by the sink,
//!   as a director does between a TLS client and its backend.
//!
//! The clock runs from the source's first write to the sink's end of
//! stream; connecting and the TLS handshake happen before it starts. The
//! source, relay and sink share the one core, so the cost of the relay per
//! byte is `1 / relay − 1 / direct` (see PERF.md).
//!
//! ```text
//! cargo bench --bench relay
//! ```

use std::future::pending;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailpin::io::ReadSide;
use mailpin::relay::{relay, RelayEnd, RelayOptions};
use mailpin::tls::{DevCert, MinVersion, Provider, TlsSettings};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};

/// Bytes moved per transfer (one criterion iteration).
const PAYLOAD: usize = 16 << 20;

/// The source's write size, and the sink's read size.
const CHUNK: usize = 64 << 10;

/// Bound on the server side of the handshake (it never comes near).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What sits between the source and the sink.
#[derive(Clone, Copy)]
enum Path {
    /// Source and sink are the two ends of one TCP connection.
    Direct,
    /// mailpin's relay between two TCP connections, copying or splicing.
    Relay { splice: bool },
    /// Not mailpin's relay: the bare one-way copy loop [`bare_copy`].
    BareCopy,
    /// A TLS client writes; the sink reads from mailpin's `TlsStream`.
    TlsDirect,
    /// A TLS client writes; mailpin's `TlsStream` and relay hand the
    /// plaintext on to a TCP connection the sink reads.
    TlsRelay,
}

/// The TLS side of the set-up: mailpin's server config and a client that
/// trusts its certificate.
struct Tls {
    server: Arc<ServerConfig>,
    connector: monoio_rustls::TlsConnector,
    name: ServerName<'static>,
}

fn tls_setup() -> Tls {
    let cert = DevCert::generate().expect("development certificate");
    let settings = TlsSettings {
        min_version: MinVersion::Tls13,
        provider: Provider::AwsLcRs,
    };
    let server = mailpin::tls::server_config_from_pem(
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
        settings,
    )
    .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("certificate PEM");
    roots.add(der).expect("root");
    // AES-128-GCM, as most mail clients negotiate it, and as benches/limits.rs
    // measures rustls alone.
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let client = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        server,
        connector: monoio_rustls::TlsConnector::from(Arc::new(client)),
        name: ServerName::try_from("localhost").expect("server name"),
    }
}

/// A connected pair of loopback sockets with `TCP_NODELAY`: (connecting
/// end, accepted end).
async fn pair(listener: &TcpListener, addr: SocketAddr) -> (TcpStream, TcpStream) {
    let (connected, accepted) = monoio::join!(TcpStream::connect_addr(addr), listener.accept());
    let (connected, accepted) = (connected.expect("connect"), accepted.expect("accept").0);
    // As the director sets on its sockets; without it the handshake's
    // small writes wait for delayed ACKs (40 ms each).
    connected.set_nodelay(true).expect("TCP_NODELAY");
    accepted.set_nodelay(true).expect("TCP_NODELAY");
    (connected, accepted)
}

/// Writes [`PAYLOAD`] bytes in [`CHUNK`]-sized writes, half-closes, then
/// reads until the other side closes too (so no unread bytes make the close
/// a reset).
async fn source<S: AsyncReadRent + AsyncWriteRent>(mut stream: S) {
    let mut buf: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    for _ in 0..PAYLOAD / CHUNK {
        let (res, back) = stream.write_all(buf).await;
        res.expect("source write");
        buf = back;
    }
    stream.shutdown().await.expect("source shutdown");
    loop {
        let (res, back) = stream.read(buf).await;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => buf = back,
        }
    }
}

/// Reads a plain socket until end of stream with plain 64 KiB reads (no
/// readiness wait), returns how many bytes came, and closes.
async fn sink_tcp(mut r: TcpStream) -> usize {
    let mut buf = Vec::with_capacity(CHUNK);
    let mut total = 0;
    loop {
        let (res, back) = r.read(buf).await;
        let n = res.expect("sink read");
        if n == 0 {
            return total;
        }
        total += n;
        buf = back;
    }
}

/// A reference copy loop, not mailpin's: 64 KiB pool buffers like the
/// relay, but one direction only and no readiness wait before a read (a
/// read is always pending, holding its buffer). The simplest copy there is,
/// to tell the cost of the hop from the cost of the relay's design.
async fn bare_copy(mut from: TcpStream, mut to: TcpStream) -> u64 {
    let mut moved = 0;
    loop {
        let (res, buf) = from.read(mailpin::bufpool::take()).await;
        let n = res.expect("copy read");
        if n == 0 {
            mailpin::bufpool::give(buf);
            to.shutdown().await.expect("copy shutdown");
            return moved;
        }
        let (res, buf) = to.write_all(buf).await;
        mailpin::bufpool::give(buf);
        res.expect("copy write");
        moved += n as u64;
    }
}

/// Reads until end of stream, returns how many bytes came, and closes.
async fn sink<R: ReadSide>(mut r: R) -> usize {
    let mut buf = Vec::with_capacity(CHUNK);
    let mut total = 0;
    loop {
        r.readable().await.expect("sink readable");
        let (res, back) = r.read_into(buf).await;
        let n = res.expect("sink read");
        if n == 0 {
            return total;
        }
        total += n;
        buf = back;
        buf.clear();
    }
}

/// One transfer of [`PAYLOAD`] bytes along `path`; returns the time from
/// the first write to the sink's end of stream.
async fn transfer(path: Path, listener: &TcpListener, addr: SocketAddr, tls: &Tls) -> Duration {
    let (received, took) = match path {
        Path::Direct => {
            let (src, dst) = pair(listener, addr).await;
            let started = Instant::now();
            let source = monoio::spawn(source(src));
            let received = sink_tcp(dst).await;
            let took = started.elapsed();
            source.await;
            (received, took)
        }
        Path::Relay { splice } => {
            let (src, client_side) = pair(listener, addr).await;
            let (backend_side, dst) = pair(listener, addr).await;
            let started = Instant::now();
            let relayed = monoio::spawn(relay(
                client_side,
                backend_side,
                Vec::new(),
                Vec::new(),
                pending::<Vec<u8>>(),
                RelayOptions {
                    splice,
                    ..RelayOptions::default()
                },
            ));
            let source = monoio::spawn(source(src));
            let received = sink_tcp(dst).await;
            let took = started.elapsed();
            source.await;
            let (end, stats) = relayed.await;
            assert_eq!(end, RelayEnd::Client);
            assert_eq!(stats.up, PAYLOAD as u64);
            (received, took)
        }
        Path::BareCopy => {
            let (src, client_side) = pair(listener, addr).await;
            let (backend_side, dst) = pair(listener, addr).await;
            let started = Instant::now();
            let copied = monoio::spawn(bare_copy(client_side, backend_side));
            let source = monoio::spawn(source(src));
            let received = sink_tcp(dst).await;
            let took = started.elapsed();
            source.await;
            assert_eq!(copied.await, PAYLOAD as u64);
            (received, took)
        }
        Path::TlsDirect | Path::TlsRelay => {
            let (src, server_side) = pair(listener, addr).await;
            let (client, server) = monoio::join!(
                tls.connector.connect(tls.name.clone(), src),
                mailpin::tls::accept(server_side, &tls.server, HANDSHAKE_TIMEOUT)
            );
            let client = client.expect("client handshake");
            let server = server.expect("server handshake");
            if let Path::TlsDirect = path {
                let started = Instant::now();
                let source = monoio::spawn(source(client));
                let received = sink(server).await;
                let took = started.elapsed();
                source.await;
                (received, took)
            } else {
                let (backend_side, dst) = pair(listener, addr).await;
                let started = Instant::now();
                let relayed = monoio::spawn(relay(
                    server,
                    backend_side,
                    Vec::new(),
                    Vec::new(),
                    pending::<Vec<u8>>(),
                    RelayOptions::default(),
                ));
                let source = monoio::spawn(source(client));
                let received = sink_tcp(dst).await;
                let took = started.elapsed();
                source.await;
                let (end, stats) = relayed.await;
                assert_eq!(end, RelayEnd::Client);
                assert_eq!(stats.up, PAYLOAD as u64);
                (received, took)
            }
        }
    };
    assert_eq!(received, PAYLOAD, "the sink got every byte");
    took
}

fn bench_relay(c: &mut Criterion) {
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .enable_timer()
        .build()
        .expect("io_uring runtime");
    let tls = tls_setup();
    let mut group = c.benchmark_group("relay_16MiB");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let paths = [
        ("direct", Path::Direct),
        ("relay-copy", Path::Relay { splice: false }),
        ("relay-splice", Path::Relay { splice: true }),
        ("reference-bare-copy", Path::BareCopy),
        ("tls-direct", Path::TlsDirect),
        ("tls-relay", Path::TlsRelay),
    ];
    for (label, path) in paths {
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                    let addr = listener.local_addr().expect("local address");
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += transfer(path, &listener, addr, &tls).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_relay);
criterion_main!(benches);
