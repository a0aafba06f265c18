//! POP3 command lines and status replies (RFC 1939, RFC 2449, RFC 5034).
//!
//! A POP3 command is a keyword of 3–4 letters, case-insensitive, followed by
//! arguments separated by single spaces (RFC 1939 §3). Before login the
//! director only looks at the keyword and at most two arguments; everything
//! it forwards goes out exactly as it came. Line lengths are bounded by the
//! reader (`server.max_line`, see `session::limits`).

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pop3Command<'a> {
    /// The keyword, upper-cased.
    pub keyword: String,
    /// The arguments, split on single spaces (empty ones kept, so `USER  x`
    /// is an error the caller can see).
    pub args: Vec<&'a [u8]>,
}

/// Splits a command line (without CRLF) into keyword and arguments; `None`
/// when the keyword is missing or not 3–4 ASCII letters.
pub fn parse_command(line: &[u8]) -> Option<Pop3Command<'_>> {
    let mut parts = line.split(|&b| b == b' ');
    let keyword = parts.next()?;
    if !(3..=4).contains(&keyword.len()) || !keyword.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let keyword = String::from_utf8(keyword.to_ascii_uppercase()).ok()?;
    let args = if line.len() == keyword.len() {
        Vec::new()
    } else {
        parts.collect()
    };
    Some(Pop3Command { keyword, args })
}

/// The `PASS` argument: everything after `PASS ` as it is, since RFC 1939
/// §7 lets a password contain spaces.
pub fn pass_argument(line: &[u8]) -> Option<&[u8]> {
    if line.len() < 5 || !line[..5].eq_ignore_ascii_case(b"PASS ") {
        return None;
    }
    Some(&line[5..])
}

/// The status of a POP3 reply line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// `-ERR`.
    Err,
    /// `+ ` (a SASL continuation, RFC 5034).
    Continue,
}

/// Reads the status of a reply line; `None` if it is none of the three.
pub fn reply_status(line: &[u8]) -> Option<Reply> {
    if line.len() >= 3 && line[..3].eq_ignore_ascii_case(b"+OK") {
        Some(Reply::Ok)
    } else if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"-ERR") {
        Some(Reply::Err)
    } else if line == b"+" || line.starts_with(b"+ ") {
        Some(Reply::Continue)
    } else {
        None
    }
}

/// The XCLIENT command Dovecot's POP3 login accepts from
/// `login_trusted_networks` (Dovecot 2.3 `pop3-login`): client address,
/// port, session id and hop count, space-separated `NAME=VALUE` pairs.
pub fn xclient_command(addr: std::net::IpAddr, port: u16, session: &str, ttl: u8) -> String {
    format!("XCLIENT ADDR={addr} PORT={port} SESSION={session} TTL={ttl}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keywords_case_insensitively() {
        let c = parse_command(b"user Alice").unwrap();
        assert_eq!(c.keyword, "USER");
        assert_eq!(c.args, vec![&b"Alice"[..]]);
        let c = parse_command(b"CAPA").unwrap();
        assert!(c.args.is_empty());
        let c = parse_command(b"AUTH PLAIN AGJvYgBz").unwrap();
        assert_eq!(c.args.len(), 2);
        assert_eq!(
            parse_command(b"USER  x").unwrap().args,
            vec![&b""[..], &b"x"[..]]
        );
    }

    #[test]
    fn refuses_bad_keywords() {
        assert_eq!(parse_command(b""), None);
        assert_eq!(parse_command(b"AB"), None);
        assert_eq!(parse_command(b"ABCDE"), None);
        assert_eq!(parse_command(b"US3R x"), None);
        assert_eq!(parse_command(b" USER"), None);
    }

    #[test]
    fn password_keeps_spaces() {
        assert_eq!(pass_argument(b"PASS a b  c"), Some(&b"a b  c"[..]));
        assert_eq!(pass_argument(b"pass x"), Some(&b"x"[..]));
        assert_eq!(pass_argument(b"PASS"), None);
        assert_eq!(pass_argument(b"USER x"), None);
    }

    #[test]
    fn reply_statuses() {
        assert_eq!(reply_status(b"+OK Dovecot ready."), Some(Reply::Ok));
        assert_eq!(
            reply_status(b"-ERR [AUTH] Authentication failed."),
            Some(Reply::Err)
        );
        assert_eq!(reply_status(b"+ "), Some(Reply::Continue));
        assert_eq!(reply_status(b"+"), Some(Reply::Continue));
        assert_eq!(reply_status(b"* OK"), None);
    }

    #[test]
    fn xclient_line() {
        assert_eq!(
            xclient_command("192.0.2.1".parse().unwrap(), 5000, "abc", 5),
            "XCLIENT ADDR=192.0.2.1 PORT=5000 SESSION=abc TTL=5\r\n"
        );
    }
}
