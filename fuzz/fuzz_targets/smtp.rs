//! Fuzzes the LMTP/SMTP parsers (`proto::smtp`): command lines, paths,
//! mailboxes, MAIL parameters, BDAT, reply lines and the end of DATA.
//!
//! Input: a cut seed byte, then text whose lines are parsed as commands
//! and replies, and which is also streamed through the DATA scanner whole
//! and in pieces. Parsed parts must be slices of their line; a path never
//! holds CR, LF or NUL; the DATA scanner must find the same end either
//! way, never report more bytes than it was given, and end its output
//! with CRLF.CRLF (or be just `.CRLF`) with every LF preceded by CR.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpin::proto::smtp::{self, DotScanner};
use mailpin_fuzz::MAX_COMMAND_LINE;
use mailpin_fuzz::Cuts;

/// Whether `part` is a slice of `whole`'s memory (its suffix, here).
fn is_suffix_of(part: &[u8], whole: &[u8]) -> bool {
    whole.ends_with(part)
}

fn command_line(line: &[u8]) {
    let _ = smtp::parse_reply_line(line).map(|(code, _)| assert!(code < 1000));
    let Some(command) = smtp::parse_command(line) else {
        return;
    };
    assert!(!command.verb.is_empty() && command.verb.len() <= 8);
    assert!(command.verb.bytes().all(|b| b.is_ascii_uppercase()));
    assert!(is_suffix_of(command.rest, line));
    for keyword in [&b"FROM:"[..], b"TO:"] {
        let Some(arg) = smtp::strip_keyword(command.rest, keyword) else {
            continue;
        };
        assert!(is_suffix_of(arg, command.rest));
        if let Ok(path) = smtp::parse_path(arg) {
            assert!(!path.inner.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
            assert!(is_suffix_of(path.params, arg));
            assert!(!path.params.starts_with(b" "));
            if let Some(user) = smtp::mailbox_user(path.inner) {
                assert!(!user.is_empty());
            }
        }
    }
    if let Some(kept) = smtp::filter_mail_params(line, |_| false) {
        assert!(
            line.starts_with(&kept),
            "dropping every parameter keeps a prefix"
        );
    }
    if let Some(all) = smtp::filter_mail_params(line, |_| true) {
        assert!(all.len() <= line.len());
    }
    if let Some((size, _last)) = smtp::parse_bdat(command.rest) {
        let plain = size.to_string();
        assert_eq!(smtp::parse_bdat(plain.as_bytes()), Some((size, false)));
    }
}

/// Feeds `pieces` to a DOT scanner; returns the output and how many input
/// bytes the body took, if its end was found.
fn scan(pieces: &[&[u8]]) -> (Vec<u8>, Option<usize>) {
    let mut scanner = DotScanner::new();
    let mut out = Vec::new();
    let mut fed = 0;
    for piece in pieces {
        if let Some(n) = scanner.feed(piece, &mut out) {
            assert!(
                n >= 1 && n <= piece.len(),
                "the scanner took more than it was given"
            );
            return (out, Some(fed + n));
        }
        fed += piece.len();
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let [seed, text @ ..] = data else {
        return;
    };
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() <= MAX_COMMAND_LINE {
            command_line(line);
        }
    }
    let (whole_out, whole_end) = scan(&[text]);
    let (cut_out, cut_end) = scan(&Cuts::new(*seed).split(text));
    assert_eq!(whole_end, cut_end, "cutting the body moved its end");
    assert_eq!(whole_out, cut_out, "cutting the body changed it");
    for (i, &b) in whole_out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && whole_out[i - 1] == b'\r', "bare LF in the output");
        }
    }
    if whole_end.is_some() {
        assert!(
            whole_out == b".\r\n" || whole_out.ends_with(b"\r\n.\r\n"),
            "the body did not end with CRLF.CRLF"
        );
    }
});
