//! Property test of the record layer against rustls' buffered API: a
//! rustls `ClientConnection` (read_tls/write_tls) talks to mailpin's
//! server side ([`super::driver::ServerDriver`] over [`super::records`])
//! while both ciphertext streams are cut at random points, from single
//! bytes (inside record headers) to whole flights, and read into random
//! buffer sizes. For every seed the handshake must complete, the plaintext
//! must arrive intact both ways and both close_notify alerts must arrive.
//!
//! The randomness is a fixed-seed SplitMix64, so a failure names the seed
//! that reproduces it.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, SupportedProtocolVersion};

use super::driver::ServerDriver;
use crate::tls::{server_config_from_pem, DevCert, TlsSettings};

/// How many random sessions the test runs (half TLS 1.3, half TLS 1.2).
const SEEDS: u64 = 256;

/// Most steps one session may take; each step moves at least one byte
/// once the handshake has started, so a session needing more is stuck.
const MAX_STEPS: usize = 200_000;

/// SplitMix64: small, deterministic, good enough to pick cut points.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Heads or tails.
    fn coin(&mut self) -> bool {
        self.next() & 1 == 0
    }

    /// A number in `1..=max`.
    fn upto(&mut self, max: usize) -> usize {
        (self.next() % max as u64) as usize + 1
    }

    /// A cut size: a few bytes (inside a 5-byte record header), a small
    /// piece, part of a record, or more than one record, equally often.
    fn cut(&mut self) -> usize {
        let max = [5, 64, 2_000, 40_000][(self.next() % 4) as usize];
        self.upto(max)
    }

    /// A message of random bytes: often short (a command line),
    /// sometimes spanning several 16 KiB records.
    fn message(&mut self) -> Vec<u8> {
        let len = match self.next() % 3 {
            0 => self.upto(40),
            1 => self.upto(3_000),
            _ => self.upto(40_000),
        };
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The server's configuration and a client configuration per version,
/// trusting the server's certificate.
struct Configs {
    server: Arc<ServerConfig>,
    tls13: Arc<ClientConfig>,
    tls12: Arc<ClientConfig>,
}

fn configs() -> Configs {
    let dev = DevCert::generate().expect("dev cert");
    let server = server_config_from_pem(
        dev.cert_pem.as_bytes(),
        dev.key_pem.as_bytes(),
        TlsSettings::default(),
    )
    .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(dev.cert_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let client = |version: &'static SupportedProtocolVersion| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        Arc::new(config)
    };
    Configs {
        server,
        tls13: client(&rustls::version::TLS13),
        tls12: client(&rustls::version::TLS12),
    }
}

/// One direction's plaintext, written in random pieces.
struct Outgoing {
    data: Vec<u8>,
    sent: usize,
}

impl Outgoing {
    /// The next piece: up to `max` bytes.
    fn next_piece(&mut self, max: usize) -> &[u8] {
        let end = (self.sent + max).min(self.data.len());
        let piece = &self.data[self.sent..end];
        self.sent = end;
        piece
    }

    fn done(&self) -> bool {
        self.sent == self.data.len()
    }
}

/// Moves up to `rng.cut()` bytes from the front of `wire` to the caller.
fn cut_front(wire: &mut Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let n = rng.cut().min(wire.len());
    wire.drain(..n).collect()
}

/// Once the handshake is done, seals the server's next piece of `down`
/// onto `to_client`; returns whether it did.
fn server_replies(
    seed: u64,
    server: &mut ServerDriver,
    down: &mut Outgoing,
    to_client: &mut Vec<u8>,
    rng: &mut Rng,
) -> bool {
    if server.is_handshaking() || down.done() {
        return false;
    }
    let piece = down.next_piece(rng.upto(512)).to_vec();
    let wire = server
        .send(&piece, false)
        .unwrap_or_else(|e| panic!("seed {seed}: server send failed: {e}"));
    to_client.extend_from_slice(&wire);
    true
}

/// Runs one session with `seed`; panics (naming the seed) on a mismatch.
fn session(configs: &Configs, seed: u64) {
    let mut rng = Rng(seed);
    let (client_config, version) = if seed.is_multiple_of(2) {
        (&configs.tls13, rustls::ProtocolVersion::TLSv1_3)
    } else {
        (&configs.tls12, rustls::ProtocolVersion::TLSv1_2)
    };
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = ClientConnection::new(client_config.clone(), name).expect("client");
    let mut server = ServerDriver::new(configs.server.clone()).expect("server");

    let mut up = Outgoing {
        data: rng.message(),
        sent: 0,
    };
    let mut down = Outgoing {
        data: rng.message(),
        sent: 0,
    };
    // Half the sessions queue their first command before the handshake,
    // so it rides with the client's Finished.
    if rng.coin() {
        let piece = up.next_piece(rng.cut()).to_vec();
        client.writer().write_all(&piece).expect("client write");
    }

    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let (mut server_got, mut client_got) = (Vec::new(), Vec::new());
    let mut closing = false;
    for _ in 0..MAX_STEPS {
        // A reader that drains everything, or one that takes a single
        // buffer and leaves complete records for later.
        let room = rng.cut();
        let plain = if rng.coin() {
            server.process(room)
        } else {
            server.read(room)
        };
        server_got.extend_from_slice(
            &plain.unwrap_or_else(|e| panic!("seed {seed}: server failed: {e}")),
        );
        to_client.extend_from_slice(&server.take_outgoing());

        // The client's records, cut at a random point, arrive through a
        // socket read; half the time the server writes while that read is
        // in flight, which may consume records the reader left.
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("client write_tls");
        }
        let mut reply_sent = false;
        if !to_server.is_empty() {
            let piece = cut_front(&mut to_server, &mut rng);
            let read = server.begin_read();
            if rng.coin() {
                reply_sent = server_replies(seed, &mut server, &mut down, &mut to_client, &mut rng);
            }
            server.complete_read(read, &piece);
        }
        if !reply_sent {
            server_replies(seed, &mut server, &mut down, &mut to_client, &mut rng);
        }
        if !client.is_handshaking() {
            // Up to four writes, a record (or more) each.
            for _ in 0..rng.upto(4) {
                let piece = up.next_piece(rng.cut()).to_vec();
                if !piece.is_empty() {
                    client.writer().write_all(&piece).expect("client write");
                }
            }
        }

        // The server's records, cut at a random point.
        if !to_client.is_empty() {
            let piece = cut_front(&mut to_client, &mut rng);
            let mut rest = &piece[..];
            while !rest.is_empty() {
                client.read_tls(&mut rest).expect("client read_tls");
                client
                    .process_new_packets()
                    .unwrap_or_else(|e| panic!("seed {seed}: client failed: {e}"));
                match client.reader().read_to_end(&mut client_got) {
                    Ok(_) => {}
                    Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "seed {seed}"),
                }
            }
        }

        let all_delivered = server_got.len() == up.data.len()
            && client_got.len() == down.data.len()
            && to_server.is_empty()
            && to_client.is_empty()
            && !client.wants_write();
        if all_delivered && !closing {
            client.send_close_notify();
            let wire = server.send(&[], true).expect("server close_notify");
            to_client.extend_from_slice(&wire);
            closing = true;
        } else if all_delivered && closing && server.peer_closed() {
            break;
        }
    }

    assert!(closing, "seed {seed}: the session did not finish");
    assert_eq!(server.protocol_version(), Some(version), "seed {seed}");
    assert!(
        server_got == up.data,
        "seed {seed}: the server read other plaintext than the client sent"
    );
    assert!(
        client_got == down.data,
        "seed {seed}: the client read other plaintext than the server sent"
    );
    assert!(
        server.peer_closed(),
        "seed {seed}: the client's close_notify did not arrive"
    );
    let mut rest = Vec::new();
    assert_eq!(
        client.reader().read_to_end(&mut rest).ok(),
        Some(0),
        "seed {seed}: the server's close_notify did not arrive"
    );
    assert_eq!(server.held_bytes(), 0, "seed {seed}: buffers left behind");
}

#[test]
fn random_record_splits_deliver_the_same_plaintext_both_ways() {
    let configs = configs();
    for seed in 0..SEEDS {
        session(&configs, seed);
    }
}
