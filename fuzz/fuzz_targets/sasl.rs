//! Fuzzes SASL decoding (`proto::sasl`): PLAIN and LOGIN answers, initial
//! responses and the PLAIN message itself.
//!
//! Credentials read from an answer must survive `encode_plain` and
//! `decode_plain` unchanged, must print their password only as
//! `<redacted>`, and the decoders must agree with each other (`=` empty,
//! `*` cancel).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpin::proto::sasl::{self, Credentials, SaslError};

/// Checks the PLAIN round trip and the redaction of `credentials`.
fn check(credentials: &Credentials) {
    assert!(!credentials.user.is_empty());
    let wire = sasl::encode_plain(credentials);
    assert_eq!(
        &sasl::decode_plain(wire.as_bytes()).expect("round trip"),
        credentials
    );
    let shown = format!("{credentials:?}");
    assert!(shown.contains("<redacted>"));
    assert!(!shown.contains("password: ["), "the password was printed");
}

fuzz_target!(|data: &[u8]| {
    // The input as a decoded PLAIN message.
    if let Ok(credentials) = sasl::parse_plain(data) {
        check(&credentials);
    }
    // The input as answers on the wire.
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let response = sasl::decode_response(line);
        if line == sasl::CANCEL {
            assert_eq!(response, Err(SaslError::Cancelled));
        }
        let initial = sasl::decode_initial_response(line);
        if line == sasl::EMPTY_INITIAL_RESPONSE {
            assert_eq!(initial.as_deref().map(Vec::as_slice), Ok(&[][..]));
        } else {
            assert_eq!(initial, response);
        }
        if let Ok(credentials) = sasl::decode_plain(line) {
            check(&credentials);
            let message = initial.expect("decode_plain decoded it");
            assert_eq!(sasl::parse_plain(&message).as_ref(), Ok(&credentials));
        }
        if let Ok(user) = sasl::decode_login_user(line) {
            assert!(!user.is_empty());
        }
        let _ = sasl::decode_login_password(line);
    }
});
