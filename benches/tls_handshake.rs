//! Full TLS 1.3 server handshakes per second per core, in memory.
//!
//! A rustls client and server exchange records through a `Vec` (no
//! sockets). Only the **server's** CPU time is measured (creating the
//! `ServerConnection`, `read_tls` + `process_new_packets`, `write_tls`),
//! so the throughput criterion prints ("elem/s") is server handshakes per
//! second on one core. The server config comes from
//! `mailpin::tls::server_config`, with stateless tickets. Variants:
//! ECDSA P-256 and RSA-2048 certificates, ring and aws-lc-rs (each with its
//! default key-exchange groups: aws-lc-rs prefers X25519MLKEM768, ring
//! X25519), full and resumed (stateless ticket) handshakes.
//!
//! ```text
//! cargo bench --bench tls_handshake
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailpin::tls::{self, MinVersion, Provider, TlsSettings};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConfig, ServerConnection};

/// A certificate, its key, and a client config that trusts it.
struct Identity {
    label: &'static str,
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn identity(label: &'static str, rsa: bool) -> Identity {
    let key = if rsa {
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
    } else {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
    }
    .expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    Identity {
        label,
        cert: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

fn configs(id: &Identity, provider: Provider) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let settings = TlsSettings {
        min_version: MinVersion::Tls13,
        provider,
    };
    let key = PrivateKeyDer::Pkcs8(id.key_der.clone().into());
    let server = tls::server_config(vec![id.cert.clone()], key, settings).expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.cert.clone()).expect("root");
    let client = ClientConfig::builder_with_provider(Arc::new(provider.crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client))
}

/// Moves every pending record from `from` to `to`.
fn pump(from: &mut rustls::ConnectionCommon<impl Sized>, wire: &mut Vec<u8>) {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire).expect("write_tls");
    }
}

fn feed<T>(to: &mut rustls::ConnectionCommon<T>, mut wire: &[u8]) {
    while !wire.is_empty() {
        to.read_tls(&mut wire).expect("read_tls");
        to.process_new_packets().expect("process");
    }
}

/// One handshake, including the tickets the server sends after it; returns
/// the server's CPU time and how the handshake went.
fn handshake(
    server_cfg: &Arc<ServerConfig>,
    client_cfg: &Arc<ClientConfig>,
) -> (Duration, HandshakeKind) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = ClientConnection::new(client_cfg.clone(), name).expect("client");
    let mut wire = Vec::with_capacity(16 * 1024);
    let started = Instant::now();
    let mut server = ServerConnection::new(server_cfg.clone()).expect("server");
    let mut server_time = started.elapsed();
    for _ in 0..20 {
        pump(&mut client, &mut wire);
        let client_sent = !wire.is_empty();
        let t = Instant::now();
        feed(&mut server, &wire);
        pump(&mut server, &mut wire);
        server_time += t.elapsed();
        let server_sent = !wire.is_empty();
        feed(&mut client, &wire);
        if !client_sent && !server_sent {
            break;
        }
    }
    assert!(!server.is_handshaking() && !client.is_handshaking());
    let kind = server.handshake_kind().expect("handshake kind");
    black_box(&server);
    (server_time, kind)
}

fn bench_handshakes(c: &mut Criterion) {
    let identities = [identity("ecdsa-p256", false), identity("rsa-2048", true)];
    let mut group = c.benchmark_group("tls13_server_handshake");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    for id in &identities {
        for (provider, provider_label) in
            [(Provider::AwsLcRs, "aws-lc-rs"), (Provider::Ring, "ring")]
        {
            let (server_cfg, client_cfg) = configs(id, provider);
            // A client that never offers a ticket: every handshake is full.
            let mut full_only = (*client_cfg).clone();
            full_only.resumption = rustls::client::Resumption::disabled();
            let no_tickets = Arc::new(full_only);
            let name = format!("{}/{provider_label}/full", id.label);
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (t, kind) = handshake(&server_cfg, &no_tickets);
                        assert_eq!(kind, HandshakeKind::Full);
                        total += t;
                    }
                    total
                })
            });
            let name = format!("{}/{provider_label}/resumed", id.label);
            // Primes the client's ticket cache; every resumed handshake
            // brings new tickets, so the cache never runs dry.
            handshake(&server_cfg, &client_cfg);
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (t, kind) = handshake(&server_cfg, &client_cfg);
                        assert_eq!(kind, HandshakeKind::Resumed);
                        total += t;
                    }
                    total
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_handshakes);
criterion_main!(benches);
