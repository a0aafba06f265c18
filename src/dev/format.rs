//! Small pieces of IMAP response syntax for the dev backends: strings,
//! flag lists, dates, sequence sets, and the message parts FETCH returns.
//!
//! Everything here is pure (bytes in, bytes out) so it is tested without
//! sockets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Appends `s` as an IMAP string: quoted when it is short and plain,
/// a literal `{n}\r\n...` otherwise.
pub fn push_string(out: &mut Vec<u8>, s: &[u8]) {
    let utf8 = std::str::from_utf8(s).is_ok();
    let plain = s.len() < 1024
        && s.iter()
            .all(|&b| (0x20..0x7f).contains(&b) || b >= 0x80 && utf8);
    if plain {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        push_literal(out, s);
    }
}

/// Appends `s` as an IMAP string, or `NIL` when absent.
pub fn push_nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => push_string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Appends `s` as a literal: `{len}\r\n` and the bytes.
pub fn push_literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// A parenthesised, space-separated flag list: `(\Seen $Junk)`.
pub fn flag_list(flags: &[String]) -> String {
    format!("({})", flags.join(" "))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic
/// Gregorian (the "days from civil" algorithm, run backwards).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month 1-12, day 1-31) → days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// An INTERNALDATE in IMAP form, in UTC: `"28-Nov-2026 12:41:36 +0000"`
/// (quotes included).
pub fn internal_date(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "\"{:02}-{}-{:04} {:02}:{:02}:{:02} +0000\"",
        d,
        MONTHS[(m - 1) as usize],
        y,
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Parses an IMAP date-time as APPEND gives it, `7-Feb-1994 21:52:25 -0800`
/// (day may be space-padded); `None` when malformed.
pub fn parse_date_time(s: &str) -> Option<SystemTime> {
    let mut parts = s.split_whitespace();
    let date = parts.next()?;
    let time = parts.next()?;
    let zone = parts.next()?;
    let mut dmy = date.split('-');
    let day: u32 = dmy.next()?.parse().ok()?;
    let month_name = dmy.next()?;
    let month = MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(month_name))? as u32
        + 1;
    let year: i64 = dmy.next()?.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (hms.next()??, hms.next()??, hms.next()??);
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || se > 60 || zone.len() != 5 {
        return None;
    }
    let sign = match zone.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let zh: i64 = zone.get(1..3)?.parse().ok()?;
    let zm: i64 = zone.get(3..5)?.parse().ok()?;
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + se
        - sign * (zh * 3600 + zm * 60);
    if secs >= 0 {
        Some(UNIX_EPOCH + Duration::from_secs(secs as u64))
    } else {
        Some(UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()))
    }
}

/// Parses an IMAP sequence set (`1:*`, `2,4:6`, `*`) against the largest
/// number in use (`*`), returning every number it names, ascending and
/// without duplicates. Numbers above `max` are kept (the caller drops those
/// that name nothing). `None` when the syntax is wrong.
pub fn parse_sequence_set(s: &str, max: u32) -> Option<Vec<u32>> {
    let number = |p: &str| -> Option<u32> {
        if p == "*" {
            Some(max)
        } else {
            p.parse::<u32>().ok().filter(|n| *n > 0)
        }
    };
    let mut out = Vec::new();
    for range in s.split(',') {
        let (lo, hi) = match range.split_once(':') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(range)?;
                (n, n)
            }
        };
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        // Clamp open ranges to what exists, so `1:4294967295` stays cheap.
        let hi = if hi > max { max.max(lo) } else { hi };
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// The header block of a message: everything up to and including the
/// blank line that ends it (the whole message when there is none).
pub fn header_of(msg: &[u8]) -> &[u8] {
    match find(msg, b"\r\n\r\n") {
        Some(i) => &msg[..i + 4],
        None => match find(msg, b"\n\n") {
            Some(i) => &msg[..i + 2],
            None => msg,
        },
    }
}

/// The text (body) of a message: everything after the header block.
pub fn text_of(msg: &[u8]) -> &[u8] {
    &msg[header_of(msg).len()..]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The header fields of `msg`, each with its continuation lines, as raw
/// byte slices ending in their line break.
fn header_fields(msg: &[u8]) -> Vec<&[u8]> {
    let header = header_of(msg);
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < header.len() {
        let Some(nl) = header[i..].iter().position(|&b| b == b'\n') else {
            break;
        };
        let end = i + nl + 1;
        let next_is_continuation = matches!(header.get(end), Some(b' ' | b'\t'));
        if !next_is_continuation {
            let field = &header[start..end];
            if field != b"\r\n" && field != b"\n" {
                fields.push(field);
            }
            start = end;
        }
        i = end;
    }
    fields
}

fn field_name(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    &field[..end]
}

/// `BODY[HEADER.FIELDS (..)]` (or `.NOT` when `exclude`): the named
/// header fields, followed by the blank line.
pub fn header_fields_subset(msg: &[u8], names: &[String], exclude: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for field in header_fields(msg) {
        let name = field_name(field);
        let named = names
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name.trim_ascii()));
        if named != exclude {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The unfolded value of the first header field called `name`.
pub fn header_value(msg: &[u8], name: &str) -> Option<Vec<u8>> {
    header_fields(msg).into_iter().find_map(|field| {
        if !field_name(field)
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            return None;
        }
        let value = &field[field_name(field).len() + 1..];
        let unfolded: Vec<u8> = value
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        Some(unfolded.trim_ascii().to_vec())
    })
}

/// Appends an address list for ENVELOPE: the first address of the header
/// value as `((name NIL mailbox host))`, or `NIL`.
fn push_address_list(out: &mut Vec<u8>, value: Option<&[u8]>) {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        out.extend_from_slice(b"NIL");
        return;
    };
    let first = value.split(|&b| b == b',').next().unwrap_or(value);
    let (name, addr) = match (
        first.iter().position(|&b| b == b'<'),
        first.iter().position(|&b| b == b'>'),
    ) {
        (Some(lt), Some(gt)) if lt < gt => {
            let name = first[..lt].trim_ascii();
            let name = name
                .strip_prefix(b"\"")
                .and_then(|n| n.strip_suffix(b"\""))
                .unwrap_or(name);
            (
                Some(name).filter(|n| !n.is_empty()),
                first[lt + 1..gt].trim_ascii(),
            )
        }
        _ => (None, first.trim_ascii()),
    };
    let (mailbox, host) = match addr.iter().rposition(|&b| b == b'@') {
        Some(at) => (&addr[..at], Some(&addr[at + 1..])),
        None => (addr, None),
    };
    out.extend_from_slice(b"((");
    push_nstring(out, name);
    out.extend_from_slice(b" NIL ");
    push_string(out, mailbox);
    out.push(b' ');
    push_nstring(out, host);
    out.extend_from_slice(b"))");
}

/// The ENVELOPE of a message (RFC 3501 7.4.2), from its Date, Subject,
/// From, Sender, Reply-To, To, Cc, Bcc, In-Reply-To and Message-ID
/// headers. Only the first address of each address header is reported;
/// RFC 2047 encoded words are passed through as they are.
pub fn envelope(msg: &[u8]) -> Vec<u8> {
    let h = |name: &str| header_value(msg, name);
    let from = h("From");
    let mut out = Vec::with_capacity(256);
    out.push(b'(');
    push_nstring(&mut out, h("Date").as_deref());
    out.push(b' ');
    push_nstring(&mut out, h("Subject").as_deref());
    out.push(b' ');
    push_address_list(&mut out, from.as_deref());
    out.push(b' ');
    push_address_list(&mut out, h("Sender").or_else(|| from.clone()).as_deref());
    out.push(b' ');
    push_address_list(&mut out, h("Reply-To").or_else(|| from.clone()).as_deref());
    for name in ["To", "Cc", "Bcc"] {
        out.push(b' ');
        push_address_list(&mut out, h(name).as_deref());
    }
    out.push(b' ');
    push_nstring(&mut out, h("In-Reply-To").as_deref());
    out.push(b' ');
    push_nstring(&mut out, h("Message-ID").as_deref());
    out.push(b')');
    out
}

/// A BODYSTRUCTURE for the message as one single text/plain part (the dev
/// store does not parse MIME): type, charset, size and line count.
pub fn body_structure(msg: &[u8]) -> String {
    let text = text_of(msg);
    let lines = text.iter().filter(|&&b| b == b'\n').count();
    format!(
        "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"UTF-8\") NIL NIL \"8BIT\" {} {})",
        text.len(),
        lines
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_quote_or_become_literals() {
        let mut out = Vec::new();
        push_string(&mut out, b"a \"b\" \\c");
        assert_eq!(out, b"\"a \\\"b\\\" \\\\c\"");
        out.clear();
        push_string(&mut out, b"two\r\nlines");
        assert_eq!(out, b"{10}\r\ntwo\r\nlines");
    }

    #[test]
    fn dates_round_trip() {
        let t = parse_date_time("7-Feb-1994 21:52:25 -0800").unwrap();
        assert_eq!(internal_date(t), "\"08-Feb-1994 05:52:25 +0000\"");
        let t = parse_date_time(" 1-Jan-1970 00:00:00 +0000").unwrap();
        assert_eq!(t, UNIX_EPOCH);
        assert_eq!(parse_date_time("31-Foo-2020 00:00:00 +0000"), None);
        assert_eq!(parse_date_time("1-Jan-2020 25:00:00 +0000"), None);
    }

    #[test]
    fn sequence_sets() {
        assert_eq!(parse_sequence_set("1:*", 3), Some(vec![1, 2, 3]));
        assert_eq!(parse_sequence_set("2,4:6", 9), Some(vec![2, 4, 5, 6]));
        assert_eq!(parse_sequence_set("*", 7), Some(vec![7]));
        assert_eq!(parse_sequence_set("5:3,4", 9), Some(vec![3, 4, 5]));
        assert_eq!(parse_sequence_set("1:4294967295", 2), Some(vec![1, 2]));
        assert_eq!(parse_sequence_set("0", 2), None);
        assert_eq!(parse_sequence_set("a", 2), None);
    }

    const MSG: &[u8] =
        b"From: \"A B\" <a@example.org>\r\nSubject: hi\r\n there\r\nTo: c@d\r\n\r\nbody\r\n";

    #[test]
    fn header_and_text() {
        assert!(header_of(MSG).ends_with(b"c@d\r\n\r\n"));
        assert_eq!(text_of(MSG), b"body\r\n");
        assert_eq!(header_value(MSG, "subject").unwrap(), b"hi there");
        assert_eq!(
            header_fields_subset(MSG, &["TO".into()], false),
            b"To: c@d\r\n\r\n"
        );
        assert_eq!(
            header_fields_subset(MSG, &["From".into(), "To".into()], true),
            b"Subject: hi\r\n there\r\n\r\n"
        );
    }

    #[test]
    fn envelope_is_well_formed() {
        let env = String::from_utf8(envelope(MSG)).unwrap();
        assert_eq!(
            env,
            "(NIL \"hi there\" ((\"A B\" NIL \"a\" \"example.org\")) \
             ((\"A B\" NIL \"a\" \"example.org\")) ((\"A B\" NIL \"a\" \"example.org\")) \
             ((NIL NIL \"c\" \"d\")) NIL NIL NIL NIL)"
        );
    }
}
