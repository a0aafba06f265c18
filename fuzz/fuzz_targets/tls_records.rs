//! Fuzzes mailpin's TLS record layer (`tls::records`, driven through
//! `tls::driver`): client ciphertext, cut into pieces as socket reads
//! deliver it, is fed to a server session, with the server sometimes
//! writing while a read is in flight.
//!
//! Input: a cut seed byte, the reader's buffer size byte, then the
//! ciphertext (the seeds are real ClientHellos). The session never keeps
//! more unconsumed ciphertext than it was given, never holds more than a
//! bounded amount of buffers, and once it fails every later pass fails
//! with the same error.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use mailpin::tls::driver::ServerDriver;
use mailpin::tls::{server_config_from_pem, DevCert, TlsSettings};
use mailpin_fuzz::Cuts;
use rustls::ServerConfig;

/// Most buffer bytes a session may hold: a partial handshake message of
/// rustls' largest (64 KiB) with record headers, plus one socket read.
const MAX_HELD: usize = 160 * 1024;

fn server_config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dev = DevCert::generate().expect("dev cert");
            server_config_from_pem(
                dev.cert_pem.as_bytes(),
                dev.key_pem.as_bytes(),
                TlsSettings::default(),
            )
            .expect("server config")
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let [seed, room, cipher @ ..] = data else {
        return;
    };
    let mut cuts = Cuts::new(*seed);
    let pieces = cuts.split(cipher);
    let mut server = ServerDriver::new(server_config()).expect("server");
    let mut fed = 0usize;
    let mut failed: Option<rustls::Error> = None;
    for piece in pieces {
        let read = server.begin_read();
        if cuts.next_u64() & 3 == 0 {
            // A write while the read is in flight: refused during the
            // handshake, sealed after it.
            let _ = server.send(b"* OK still here\r\n", false);
        }
        server.complete_read(read, piece);
        fed += piece.len();
        assert!(
            server.unconsumed() <= fed,
            "more ciphertext kept than given"
        );
        match server.process(usize::from(*room)) {
            Ok(_) => assert!(failed.is_none(), "a failed session read again"),
            Err(e) => {
                if let Some(first) = &failed {
                    assert_eq!(first, &e, "a failed session changed its error");
                }
                failed = Some(e);
            }
        }
        let _ = server.take_outgoing();
        assert!(server.held_bytes() <= MAX_HELD, "buffers over the bound");
    }
});
