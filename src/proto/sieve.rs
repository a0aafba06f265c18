//! ManageSieve command lines and strings (RFC 5804 §4).
//!
//! A command is an atom followed by arguments: atoms (numbers included),
//! quoted strings (`"..."` with `\"` and `\\` escapes) and literals
//! (`{N}` synchronising or `{N+}` non-synchronising, then N bytes after the
//! CRLF). [`parse_line`] takes one line at a time: when the line ends in a
//! literal marker it says how many bytes to read, and the caller feeds the
//! rest of the command as the next line. Sizes are the caller's to bound
//! (`server.max_line` and `[limits]`, see `session::limits`): a marker says
//! how long its literal is before a byte of it is read.

/// One argument of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SieveArg {
    /// An atom or number.
    Atom(String),
    /// A quoted string or a literal, unescaped.
    String(Vec<u8>),
}

impl SieveArg {
    /// The bytes of a string argument.
    pub fn as_string(&self) -> Option<&[u8]> {
        match self {
            SieveArg::String(s) => Some(s),
            SieveArg::Atom(_) => None,
        }
    }
}

/// A literal announced at the end of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiteralMarker {
    /// Its length in bytes.
    pub len: usize,
    /// `{N}`: the server must say `OK` before the client sends it... in
    /// ManageSieve the client may send it right away either way (RFC 5804
    /// §4 only has `{N+}` from clients), so both are read the same.
    pub sync: bool,
}

/// Parses one line (without CRLF) of a command, appending its arguments
/// to `args`. Returns the literal that ends the line, if any.
pub fn parse_line(
    line: &[u8],
    args: &mut Vec<SieveArg>,
) -> Result<Option<LiteralMarker>, &'static str> {
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' => i += 1,
            b'"' => {
                let mut out = Vec::new();
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err("unterminated quoted string"),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            match line.get(i + 1) {
                                Some(&c @ (b'"' | b'\\')) => out.push(c),
                                _ => return Err("bad escape in quoted string"),
                            }
                            i += 2;
                        }
                        Some(0) => return Err("NUL in quoted string"),
                        Some(&c) => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
                args.push(SieveArg::String(out));
            }
            b'{' => {
                let close = line[i..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or("unterminated literal marker")?
                    + i;
                if close + 1 != line.len() {
                    return Err("literal marker must end the line");
                }
                let inner = &line[i + 1..close];
                let (digits, sync) = match inner.strip_suffix(b"+") {
                    Some(d) => (d, false),
                    None => (inner, true),
                };
                if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
                    return Err("bad literal length");
                }
                let len: usize = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .ok_or("bad literal length")?;
                return Ok(Some(LiteralMarker { len, sync }));
            }
            c if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.' => {
                let end = line[i..]
                    .iter()
                    .position(|&b| b == b' ')
                    .map_or(line.len(), |p| p + i);
                let atom = &line[i..end];
                if !atom
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                {
                    return Err("bad character in atom");
                }
                args.push(SieveArg::Atom(String::from_utf8_lossy(atom).into_owned()));
                i = end;
            }
            _ => return Err("unexpected character"),
        }
    }
    Ok(None)
}

/// Writes `s` as a ManageSieve quoted string when it can be one, else as a
/// non-synchronising literal.
pub fn quote(s: &[u8]) -> Vec<u8> {
    let quotable = s.len() <= 1024 && !s.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0);
    let mut out = Vec::with_capacity(s.len() + 8);
    if quotable {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(format!("{{{}+}}\r\n", s.len()).as_bytes());
        out.extend_from_slice(s);
    }
    out
}

/// The status of a response line: `OK`, `NO` or `BYE` (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok,
    /// Failure.
    No,
    /// The server is closing the connection.
    Bye,
}

/// Reads the status word of a response line; `None` for data lines.
pub fn response_status(line: &[u8]) -> Option<Status> {
    let word = line.split(|&b| b == b' ').next().unwrap_or_default();
    if word.eq_ignore_ascii_case(b"OK") {
        Some(Status::Ok)
    } else if word.eq_ignore_ascii_case(b"NO") {
        Some(Status::No)
    } else if word.eq_ignore_ascii_case(b"BYE") {
        Some(Status::Bye)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8]) -> Result<(Vec<SieveArg>, Option<LiteralMarker>), &'static str> {
        let mut args = Vec::new();
        let lit = parse_line(line, &mut args)?;
        Ok((args, lit))
    }

    #[test]
    fn quoted_and_atoms() {
        let (args, lit) = parse(b"AUTHENTICATE \"PLAIN\" \"AGJvYgBz\"").unwrap();
        assert_eq!(lit, None);
        assert_eq!(
            args,
            vec![
                SieveArg::Atom("AUTHENTICATE".into()),
                SieveArg::String(b"PLAIN".to_vec()),
                SieveArg::String(b"AGJvYgBz".to_vec()),
            ]
        );
        let (args, _) = parse(b"NOOP \"a\\\"b\\\\\"").unwrap();
        assert_eq!(args[1], SieveArg::String(b"a\"b\\".to_vec()));
    }

    #[test]
    fn literal_markers() {
        let (args, lit) = parse(b"AUTHENTICATE \"PLAIN\" {12+}").unwrap();
        assert_eq!(args.len(), 2);
        assert_eq!(
            lit,
            Some(LiteralMarker {
                len: 12,
                sync: false
            })
        );
        assert_eq!(
            parse(b"X {3}").unwrap().1,
            Some(LiteralMarker { len: 3, sync: true })
        );
    }

    #[test]
    fn hostile_lines() {
        for bad in [
            &b"AUTHENTICATE \"PLAIN"[..],
            b"X \"a\\n\"",
            b"X {12+} \"more\"",
            b"X {}",
            b"X {9999999999+}",
            b"X {-1}",
            b"X (list)",
            b"X \"a\0b\"",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote(b"a\"b"), b"\"a\\\"b\"");
        assert_eq!(quote(b"a\r\nb"), b"{4+}\r\na\r\nb");
    }

    #[test]
    fn statuses() {
        assert_eq!(response_status(b"OK \"Logged in.\""), Some(Status::Ok));
        assert_eq!(response_status(b"no (TRYLATER) \"x\""), Some(Status::No));
        assert_eq!(response_status(b"BYE"), Some(Status::Bye));
        assert_eq!(response_status(b"\"SIEVE\" \"fileinto\""), None);
    }
}
