//! LMTP/SMTP wire syntax (RFC 5321, RFC 2033, RFC 3030): command lines,
//! reverse and forward paths, numbered replies, and the end of DATA.
//!
//! Everything here is pure and incremental where the wire is: [`DotScanner`]
//! finds the `CRLF . CRLF` that ends a DATA body across any chunking, so the
//! message can be streamed through a bounded buffer. Command lines are
//! bounded by the reader (`server.max_line`, see `session::limits`).

/// A command line split into its verb and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpCommand<'a> {
    /// The verb, upper-cased (`LHLO`, `MAIL`, `RCPT`, ...).
    pub verb: String,
    /// Everything after the verb and one space, as sent.
    pub rest: &'a [u8],
}

/// Splits a command line (without CRLF); `None` when the verb is not
/// ASCII letters.
pub fn parse_command(line: &[u8]) -> Option<SmtpCommand<'_>> {
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = &line[..end];
    if verb.is_empty() || verb.len() > 8 || !verb.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let rest = line.get(end + 1..).unwrap_or_default();
    Some(SmtpCommand {
        verb: String::from_utf8(verb.to_ascii_uppercase()).ok()?,
        rest,
    })
}

/// Strips a case-insensitive `FROM:` or `TO:` keyword (and any spaces
/// after it, which some clients send).
pub fn strip_keyword<'a>(rest: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    if rest.len() < keyword.len() || !rest[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let mut r = &rest[keyword.len()..];
    while let [b' ', tail @ ..] = r {
        r = tail;
    }
    Some(r)
}

/// A path `<...>` and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path<'a> {
    /// The bytes between the angle brackets.
    pub inner: &'a [u8],
    /// The ESMTP parameters after the path (leading spaces removed).
    pub params: &'a [u8],
}

/// Parses `<path> [params]`, honouring quoted local parts (which may hold
/// `>` and escaped characters).
pub fn parse_path(arg: &[u8]) -> Result<Path<'_>, &'static str> {
    let Some(body) = arg.strip_prefix(b"<") else {
        return Err("path must be enclosed in <>");
    };
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in body.iter().enumerate() {
        if matches!(b, b'\r' | b'\n' | 0) {
            // Not even escaped (RFC 5321 quoted-pairSMTP is %d92 %d32-126).
            return Err("control character in path");
        }
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                let mut params = &body[i + 1..];
                if !params.is_empty() && params[0] != b' ' {
                    return Err("garbage after path");
                }
                while let [b' ', tail @ ..] = params {
                    params = tail;
                }
                return Ok(Path {
                    inner: &body[..i],
                    params,
                });
            }
            _ => {}
        }
    }
    Err("unterminated path")
}

/// The mailbox of a forward path as a login name: a source route
/// (`@a,@b:`) dropped, a quoted local part unquoted, the domain kept.
/// `None` when the mailbox is empty or not UTF-8.
pub fn mailbox_user(inner: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(inner).ok()?;
    let text = if text.starts_with('@') {
        text.split_once(':')?.1
    } else {
        text
    };
    if text.is_empty() {
        return None;
    }
    let (local, domain) = if let Some(quoted) = text.strip_prefix('"') {
        let mut local = String::new();
        let mut chars = quoted.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => local.push(chars.next()?.1),
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => local.push(c),
            }
        }
        let rest = &quoted[end?..];
        let domain = match rest {
            "" => None,
            r => Some(r.strip_prefix('@')?),
        };
        (local, domain)
    } else {
        match text.rsplit_once('@') {
            Some((l, d)) => (l.to_owned(), Some(d)),
            None => (text.to_owned(), None),
        }
    };
    if local.is_empty() {
        return None;
    }
    Some(match domain {
        Some(d) if !d.is_empty() => format!("{local}@{d}"),
        Some(_) => return None,
        None => local,
    })
}

/// Rewrites a `MAIL FROM:<path> params` line keeping only the parameters
/// for which `keep(NAME)` (upper-cased keyword) is true; the path and the
/// kept parameters stay byte for byte. `None` when the line is not a MAIL
/// command with a path.
pub fn filter_mail_params(line: &[u8], keep: impl Fn(&str) -> bool) -> Option<Vec<u8>> {
    let cmd = parse_command(line)?;
    let arg = strip_keyword(cmd.rest, b"FROM:")?;
    let path = parse_path(arg).ok()?;
    let head = line.len() - path.params.len();
    let mut out = line[..head].to_vec();
    while out.last() == Some(&b' ') {
        out.pop();
    }
    for param in path.params.split(|&b| b == b' ').filter(|p| !p.is_empty()) {
        let name = param.split(|&b| b == b'=').next().unwrap_or_default();
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        if keep(&name) {
            out.push(b' ');
            out.extend_from_slice(param);
        }
    }
    Some(out)
}

/// A `BDAT <size> [LAST]` argument.
pub fn parse_bdat(rest: &[u8]) -> Option<(u64, bool)> {
    let text = std::str::from_utf8(rest).ok()?;
    let mut parts = text.split(' ');
    let size = parts.next()?;
    if size.is_empty() || size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let size = size.parse().ok()?;
    let last = match parts.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((size, last))
}

/// One line of a numbered reply: its code and whether it is the last line.
pub fn parse_reply_line(line: &[u8]) -> Option<(u16, bool)> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code =
        (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    match line.get(3) {
        None | Some(b' ') => Some((code, true)),
        Some(b'-') => Some((code, false)),
        _ => None,
    }
}

/// A whole numbered reply, kept as the peer sent it (CRLF-terminated lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The reply's lines, each ending in CRLF.
    pub wire: Vec<u8>,
}

impl Reply {
    /// A one-line reply made by the director.
    pub fn new(code: u16, text: &str) -> Reply {
        Reply {
            code,
            wire: format!("{code} {text}\r\n").into_bytes(),
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The first line without its code and CRLF, for logs.
    pub fn text(&self) -> String {
        let line = self.wire.split(|&b| b == b'\n').next().unwrap_or_default();
        String::from_utf8_lossy(line.get(4..).unwrap_or_default())
            .trim_end()
            .to_owned()
    }
}

/// Finds the end of a DATA body (`.` alone on a line) in a stream of
/// chunks, and normalises bare LF line ends to CRLF on the way, so a
/// backend that insists on CRLF gets CRLF. Everything else — dot-stuffing
/// included — passes through unchanged.
#[derive(Debug, Clone)]
pub struct DotScanner {
    state: LineState,
    prev_cr: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// At the start of a line.
    Start,
    /// The line so far is `.`.
    Dot,
    /// The line so far is `.` CR.
    DotCr,
    /// Anywhere else.
    Middle,
}

impl Default for DotScanner {
    fn default() -> Self {
        DotScanner::new()
    }
}

impl DotScanner {
    /// A scanner at the start of a message.
    pub fn new() -> DotScanner {
        DotScanner {
            state: LineState::Start,
            prev_cr: false,
        }
    }

    /// Appends `input`'s bytes to `out` (bare LF made CRLF) up to and
    /// including the end-of-data line. Returns how many input bytes that
    /// took once the end is found, or `None` when all of `input` was body.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        out.reserve(input.len() + input.len() / 32);
        for (i, &b) in input.iter().enumerate() {
            match b {
                b'\n' => {
                    if !self.prev_cr {
                        out.push(b'\r');
                    }
                    out.push(b'\n');
                    self.prev_cr = false;
                    if matches!(self.state, LineState::Dot | LineState::DotCr) {
                        self.state = LineState::Start;
                        return Some(i + 1);
                    }
                    self.state = LineState::Start;
                    continue;
                }
                b'\r' => {
                    self.state = if self.state == LineState::Dot {
                        LineState::DotCr
                    } else {
                        LineState::Middle
                    };
                }
                b'.' if self.state == LineState::Start => self.state = LineState::Dot,
                _ => self.state = LineState::Middle,
            }
            self.prev_cr = b == b'\r';
            out.push(b);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_keywords() {
        let c = parse_command(b"rcpt TO:<a@b> NOTIFY=NEVER").unwrap();
        assert_eq!(c.verb, "RCPT");
        assert_eq!(
            strip_keyword(c.rest, b"TO:"),
            Some(&b"<a@b> NOTIFY=NEVER"[..])
        );
        assert_eq!(parse_command(b"DATA").unwrap().rest, b"");
        assert_eq!(parse_command(b"1234"), None);
        assert_eq!(parse_command(b""), None);
        assert_eq!(strip_keyword(b"from: <x>", b"FROM:"), Some(&b"<x>"[..]));
        assert_eq!(strip_keyword(b"FRO", b"FROM:"), None);
    }

    #[test]
    fn paths_with_quotes_and_params() {
        let p = parse_path(b"<\"a>b\"@x> SIZE=10 BODY=8BITMIME").unwrap();
        assert_eq!(p.inner, b"\"a>b\"@x");
        assert_eq!(p.params, b"SIZE=10 BODY=8BITMIME");
        assert_eq!(parse_path(b"<>").unwrap().inner, b"");
        assert!(parse_path(b"a@b").is_err());
        assert!(parse_path(b"<a@b").is_err());
        assert!(parse_path(b"<a@b>x").is_err());
        assert!(parse_path(b"<\"a\\\">\"@b>").is_ok());
    }

    /// Found by the `smtp` fuzz target: a backslash inside a quoted local
    /// part let NUL (or CR) into the path, to the login name and the
    /// backend's RCPT line.
    #[test]
    fn escaped_control_characters_are_refused_in_paths() {
        assert!(parse_path(b"<\"b\\\0 smith\"@e.com>").is_err());
        assert!(parse_path(b"<\"b\\\r\"@e.com>").is_err());
        assert!(parse_path(b"<\"b\\\\\"@e.com>").is_ok());
    }

    #[test]
    fn mailbox_users() {
        assert_eq!(
            mailbox_user(b"Alice@Example.com").as_deref(),
            Some("Alice@Example.com")
        );
        assert_eq!(
            mailbox_user(b"\"john doe\"@x.org").as_deref(),
            Some("john doe@x.org")
        );
        assert_eq!(mailbox_user(b"\"a\\\"b\"@x").as_deref(), Some("a\"b@x"));
        assert_eq!(mailbox_user(b"@r1,@r2:bob@x").as_deref(), Some("bob@x"));
        assert_eq!(mailbox_user(b"Postmaster").as_deref(), Some("Postmaster"));
        assert_eq!(mailbox_user(b"").as_deref(), None);
        assert_eq!(mailbox_user(b"@x").as_deref(), None);
        assert_eq!(mailbox_user(b"a@").as_deref(), None);
        assert_eq!(mailbox_user(b"\"unterminated@x").as_deref(), None);
        assert_eq!(
            mailbox_user("jörg@bücher.de".as_bytes()).as_deref(),
            Some("jörg@bücher.de")
        );
    }

    #[test]
    fn mail_parameters_are_filtered() {
        let line = b"MAIL FROM:<\"a b\"@x> SIZE=100 BODY=8BITMIME SMTPUTF8";
        let out = filter_mail_params(line, |n| n != "SIZE").unwrap();
        assert_eq!(out, b"MAIL FROM:<\"a b\"@x> BODY=8BITMIME SMTPUTF8");
        let out = filter_mail_params(b"mail from:<> size=5", |_| false).unwrap();
        assert_eq!(out, b"mail from:<>");
        assert_eq!(filter_mail_params(b"RCPT TO:<a>", |_| true), None);
    }

    #[test]
    fn bdat_arguments() {
        assert_eq!(parse_bdat(b"100"), Some((100, false)));
        assert_eq!(parse_bdat(b"0 LAST"), Some((0, true)));
        assert_eq!(parse_bdat(b"5 last"), Some((5, true)));
        assert_eq!(parse_bdat(b"-5"), None);
        assert_eq!(parse_bdat(b"5 LAST x"), None);
        assert_eq!(parse_bdat(b"99999999999999999999"), None);
        assert_eq!(parse_bdat(b""), None);
    }

    #[test]
    fn reply_lines() {
        assert_eq!(parse_reply_line(b"250-8BITMIME"), Some((250, false)));
        assert_eq!(parse_reply_line(b"250 OK"), Some((250, true)));
        assert_eq!(parse_reply_line(b"354"), Some((354, true)));
        assert_eq!(parse_reply_line(b"25x OK"), None);
        assert_eq!(parse_reply_line(b"250_OK"), None);
        let r = Reply::new(451, "4.4.0 Backend failed");
        assert_eq!(r.wire, b"451 4.4.0 Backend failed\r\n");
        assert_eq!(r.text(), "4.4.0 Backend failed");
        assert!(!r.is_positive());
    }

    fn scan_all(chunks: &[&[u8]]) -> (Vec<u8>, Option<(usize, usize)>) {
        let mut s = DotScanner::new();
        let mut out = Vec::new();
        for (ci, c) in chunks.iter().enumerate() {
            if let Some(n) = s.feed(c, &mut out) {
                return (out, Some((ci, n)));
            }
        }
        (out, None)
    }

    #[test]
    fn finds_the_end_across_chunks_and_keeps_dot_stuffing() {
        let msg: &[u8] = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nMAIL FROM:<>\r\n";
        for split in 0..msg.len() {
            let (out, end) = scan_all(&[&msg[..split], &msg[split..]]);
            let body_len = msg.len() - b"MAIL FROM:<>\r\n".len();
            assert_eq!(out, &msg[..body_len], "split at {split}");
            let (ci, n) = end.unwrap();
            let consumed = if ci == 0 { n } else { split + n };
            assert_eq!(consumed, body_len);
        }
    }

    #[test]
    fn bare_lf_becomes_crlf_and_ends_data() {
        let (out, end) = scan_all(&[b"a\nb\r\n.\n"]);
        assert_eq!(out, b"a\r\nb\r\n.\r\n");
        assert_eq!(end, Some((0, 7)));
    }

    #[test]
    fn empty_message_and_lookalikes() {
        assert_eq!(scan_all(&[b".\r\n"]).1, Some((0, 3)));
        let (out, end) = scan_all(&[b"x.\r\n.x\r\n. \r\n.\rz\r\n"]);
        assert_eq!(end, None);
        assert_eq!(out, b"x.\r\n.x\r\n. \r\n.\rz\r\n");
    }
}
