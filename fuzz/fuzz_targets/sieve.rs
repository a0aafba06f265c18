//! Fuzzes the ManageSieve parsers (`proto::sieve`): command lines,
//! literal markers, response statuses, and the quoting of strings.
//!
//! Every input line is parsed; a literal marker must be at most nine
//! digits. The input is also quoted with `quote` and parsed back: a quoted
//! string gives the same bytes, a literal gives a non-synchronising marker
//! of its length followed by the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpin::proto::sieve::{self, LiteralMarker, SieveArg};
use mailpin_fuzz::MAX_COMMAND_LINE;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_COMMAND_LINE {
            continue;
        }
        let mut args = Vec::new();
        if let Ok(Some(marker)) = sieve::parse_line(line, &mut args) {
            assert!(marker.len <= 999_999_999);
            assert!(line.ends_with(b"}"));
        }
        let _ = sieve::response_status(line);
    }

    let quoted = sieve::quote(data);
    let mut args = Vec::new();
    if quoted.starts_with(b"\"") {
        assert_eq!(sieve::parse_line(&quoted, &mut args), Ok(None));
        assert_eq!(args, vec![SieveArg::String(data.to_vec())]);
    } else {
        let header_end = quoted
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("literal header");
        let marker = sieve::parse_line(&quoted[..header_end], &mut args);
        assert_eq!(
            marker,
            Ok(Some(LiteralMarker {
                len: data.len(),
                sync: false
            }))
        );
        assert!(args.is_empty());
        assert_eq!(&quoted[header_end + 2..], data);
    }
});
