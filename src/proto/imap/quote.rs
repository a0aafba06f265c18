//! Writing IMAP strings: the smallest correct form for a value.
//!
//! A value goes out as an atom when every octet is an ASTRING-CHAR (and it
//! is not empty), as a quoted string when it is 7-bit text without CR, LF
//! or NUL, and as a literal otherwise (8-bit octets included, so the
//! output is valid for IMAP4rev1 servers, which do not accept 8-bit quoted
//! strings).
//!
//! Literals come in two styles ([`LiteralStyle`]): `{N}` is what servers
//! write in responses, and what a client writes when it will wait for a
//! continuation; `{N+}` (RFC 7888) lets a client send the octets at once
//! when the server advertises LITERAL+.

/// How a literal is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralStyle {
    /// `{N}`: responses, or commands that wait for `+` before the octets.
    Sync,
    /// `{N+}`: commands to a server that advertises LITERAL+ (RFC 7888).
    NonSync,
}

/// Whether `value` can be written as an atom (an astring without quotes).
pub fn is_astring_atom(value: &[u8]) -> bool {
    !value.is_empty()
        && value.iter().all(|&b| {
            (0x21..=0x7e).contains(&b)
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\')
        })
}

/// Whether `value` can be written as a quoted string: 7-bit, no NUL, CR
/// or LF.
pub fn is_quotable(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b != 0 && b != b'\r' && b != b'\n' && b < 0x80)
}

/// Appends `value` as an astring: atom, quoted string or literal.
pub fn write_astring(out: &mut Vec<u8>, value: &[u8], style: LiteralStyle) {
    if is_astring_atom(value) && !value.eq_ignore_ascii_case(b"NIL") {
        out.extend_from_slice(value);
    } else {
        write_string(out, value, style);
    }
}

/// Appends `value` as a string (never an atom): quoted or literal. Use it
/// where the grammar wants `string`, such as ID values.
pub fn write_string(out: &mut Vec<u8>, value: &[u8], style: LiteralStyle) {
    if is_quotable(value) {
        write_quoted(out, value);
    } else {
        write_literal(out, value, style);
    }
}

/// Appends `value` as an nstring: `NIL` for `None`, else as a string.
pub fn write_nstring(out: &mut Vec<u8>, value: Option<&[u8]>, style: LiteralStyle) {
    match value {
        Some(value) => write_string(out, value, style),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Appends `value` as a quoted string, escaping `"` and `\`. The caller
/// checks [`is_quotable`] first.
pub fn write_quoted(out: &mut Vec<u8>, value: &[u8]) {
    out.reserve(value.len() + 2);
    out.push(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Appends `value` as a literal: `{N}` or `{N+}`, CRLF, then the octets.
pub fn write_literal(out: &mut Vec<u8>, value: &[u8], style: LiteralStyle) {
    let plus = match style {
        LiteralStyle::Sync => "",
        LiteralStyle::NonSync => "+",
    };
    out.extend_from_slice(format!("{{{}{plus}}}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
}

/// `value` as an astring, with `{N}` if a literal is needed (the form for
/// responses).
pub fn quote_astring(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 2);
    write_astring(&mut out, value, LiteralStyle::Sync);
    out
}

/// `value` as a string (quoted or `{N}` literal), never an atom.
pub fn quote_string(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 2);
    write_string(&mut out, value, LiteralStyle::Sync);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_atoms() {
        assert_eq!(quote_astring(b"alice@example.com"), b"alice@example.com");
        assert_eq!(quote_astring(b"INBOX]"), b"INBOX]");
    }

    #[test]
    fn empty_specials_and_nil_are_quoted() {
        assert_eq!(quote_astring(b""), b"\"\"");
        assert_eq!(quote_astring(b"two words"), b"\"two words\"");
        assert_eq!(quote_astring(b"a*b"), b"\"a*b\"");
        assert_eq!(quote_astring(b"nil"), b"\"nil\"");
        assert_eq!(quote_astring(b"p\"w\\d"), b"\"p\\\"w\\\\d\"");
    }

    #[test]
    fn eight_bit_and_line_breaks_become_literals() {
        assert_eq!(quote_astring("jörg".as_bytes()), b"{5}\r\nj\xc3\xb6rg");
        assert_eq!(quote_astring(b"a\r\nb"), b"{4}\r\na\r\nb");
        assert_eq!(quote_astring(b"a\0b"), b"{3}\r\na\0b");
        let mut out = Vec::new();
        write_astring(&mut out, b"a\nb", LiteralStyle::NonSync);
        assert_eq!(out, b"{3+}\r\na\nb");
    }

    #[test]
    fn strings_are_never_atoms() {
        assert_eq!(quote_string(b"x"), b"\"x\"");
        let mut out = Vec::new();
        write_nstring(&mut out, None, LiteralStyle::Sync);
        out.push(b' ');
        write_nstring(&mut out, Some(b"v"), LiteralStyle::Sync);
        assert_eq!(out, b"NIL \"v\"");
    }
}
