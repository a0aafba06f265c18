//! SEARCH for the dev backends: parse the search keys of a command and
//! test them against a message.
//!
//! Supported keys: `ALL`, `ANSWERED`, `DELETED`, `DRAFT`, `FLAGGED`,
//! `SEEN`, `NEW`, `OLD`, `RECENT` and their `UN` forms, `KEYWORD`,
//! `UNKEYWORD`, `UID set`, a bare sequence set, `NOT`, `OR`, parenthesised
//! groups, `SUBJECT`/`FROM`/`TO`/`CC`/`BCC`/`HEADER name`, `BODY`, `TEXT`
//! (case-insensitive substring), `LARGER`, `SMALLER`, and the date keys
//! `BEFORE`/`ON`/`SINCE` (and the `SENT` forms, which use the internal date
//! too). A leading `CHARSET x` is accepted and ignored.

use std::time::{Duration, SystemTime};

use super::format;
use super::store::Message;
use crate::proto::imap::command::Arg;

/// One search key, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    /// Every message.
    All,
    /// Messages with (or, when `negated`, without) a flag.
    Flag {
        /// The flag, e.g. `\Seen`.
        flag: String,
        /// Whether the key is the UN form.
        negated: bool,
    },
    /// Messages whose sequence number is listed.
    Seq(Vec<u32>),
    /// Messages whose UID is listed.
    Uid(Vec<u32>),
    /// Messages not matching the inner key.
    Not(Box<Key>),
    /// Messages matching either key.
    Or(Box<Key>, Box<Key>),
    /// Messages matching all keys.
    And(Vec<Key>),
    /// Messages with `needle` in header field `field` (any case).
    Header {
        /// The header field name.
        field: String,
        /// What to look for.
        needle: Vec<u8>,
    },
    /// Messages with `needle` in the text (`whole`: anywhere).
    Contains {
        /// What to look for.
        needle: Vec<u8>,
        /// Whether headers count too (TEXT) or only the body (BODY).
        whole: bool,
    },
    /// Messages larger (`larger`) or smaller than `size` octets.
    Size {
        /// The size to compare with.
        size: usize,
        /// Whether the key is LARGER rather than SMALLER.
        larger: bool,
    },
    /// Messages by internal date: day boundaries in UTC.
    Date {
        /// The start of the day named.
        day: SystemTime,
        /// -1 before, 0 on, 1 since.
        relation: i8,
    },
}

/// What a search key is evaluated against.
pub struct Candidate<'a> {
    /// The message.
    pub message: &'a Message,
    /// Its sequence number in the session's view.
    pub seq: u32,
}

/// Parses the arguments of SEARCH. `max_seq` and `max_uid` resolve `*`.
/// `Err` carries the text of a BAD response.
pub fn parse(args: &[Arg], max_seq: u32, max_uid: u32) -> Result<Key, String> {
    let mut args = args;
    if let Some(Arg::Atom(a)) = args.first() {
        if a.eq_ignore_ascii_case("CHARSET") {
            args = args.get(2..).ok_or("CHARSET needs a name")?;
        }
    }
    let mut keys = Vec::new();
    let mut rest = args;
    while !rest.is_empty() {
        let (key, after) = parse_key(rest, max_seq, max_uid)?;
        keys.push(key);
        rest = after;
    }
    if keys.is_empty() {
        return Err("SEARCH needs a key".into());
    }
    Ok(if keys.len() == 1 {
        keys.remove(0)
    } else {
        Key::And(keys)
    })
}

fn text_arg(args: &[Arg]) -> Result<(Vec<u8>, &[Arg]), String> {
    let first = args.first().ok_or("search key needs an argument")?;
    let value = first.as_astring().ok_or("search key needs a string")?;
    Ok((value.to_vec(), &args[1..]))
}

fn flag(flag: &str, negated: bool) -> Key {
    Key::Flag {
        flag: flag.to_string(),
        negated,
    }
}

fn parse_key(args: &[Arg], max_seq: u32, max_uid: u32) -> Result<(Key, &[Arg]), String> {
    let (first, rest) = args.split_first().ok_or("search key missing")?;
    let atom = match first {
        Arg::List(inner) => return Ok((parse(inner, max_seq, max_uid)?, rest)),
        Arg::Atom(a) => a.to_ascii_uppercase(),
        _ => return Err("search key expected".into()),
    };
    let key = match atom.as_str() {
        "ALL" | "OLD" => Key::All,
        "NEW" | "RECENT" => Key::Not(Box::new(Key::All)),
        "ANSWERED" | "DELETED" | "DRAFT" | "FLAGGED" | "SEEN" => flag(
            &format!("\\{}{}", &atom[..1], atom[1..].to_lowercase()),
            false,
        ),
        "UNANSWERED" | "UNDELETED" | "UNDRAFT" | "UNFLAGGED" | "UNSEEN" => flag(
            &format!("\\{}{}", &atom[2..3], atom[3..].to_lowercase()),
            true,
        ),
        "KEYWORD" | "UNKEYWORD" => {
            let (kw, rest) = text_arg(rest)?;
            let key = flag(&String::from_utf8_lossy(&kw), atom == "UNKEYWORD");
            return Ok((key, rest));
        }
        "UID" => {
            let (set, rest) = text_arg(rest)?;
            let set = std::str::from_utf8(&set).map_err(|_| "bad UID set")?;
            let uids = format::parse_sequence_set(set, max_uid).ok_or("bad UID set")?;
            return Ok((Key::Uid(uids), rest));
        }
        "NOT" => {
            let (inner, rest) = parse_key(rest, max_seq, max_uid)?;
            return Ok((Key::Not(Box::new(inner)), rest));
        }
        "OR" => {
            let (a, rest) = parse_key(rest, max_seq, max_uid)?;
            let (b, rest) = parse_key(rest, max_seq, max_uid)?;
            return Ok((Key::Or(Box::new(a), Box::new(b)), rest));
        }
        "SUBJECT" | "FROM" | "TO" | "CC" | "BCC" => {
            let (needle, rest) = text_arg(rest)?;
            return Ok((
                Key::Header {
                    field: atom,
                    needle,
                },
                rest,
            ));
        }
        "HEADER" => {
            let (field, rest) = text_arg(rest)?;
            let (needle, rest) = text_arg(rest)?;
            let field = String::from_utf8_lossy(&field).into_owned();
            return Ok((Key::Header { field, needle }, rest));
        }
        "BODY" | "TEXT" => {
            let (needle, rest) = text_arg(rest)?;
            let whole = atom == "TEXT";
            return Ok((Key::Contains { needle, whole }, rest));
        }
        "LARGER" | "SMALLER" => {
            let (n, rest) = text_arg(rest)?;
            let size = std::str::from_utf8(&n)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or("size expected")?;
            let larger = atom == "LARGER";
            return Ok((Key::Size { size, larger }, rest));
        }
        "BEFORE" | "ON" | "SINCE" | "SENTBEFORE" | "SENTON" | "SENTSINCE" => {
            let (date, rest) = text_arg(rest)?;
            let date = String::from_utf8_lossy(&date);
            let day =
                format::parse_date_time(&format!("{date} 00:00:00 +0000")).ok_or("bad date")?;
            let relation = match atom.trim_start_matches("SENT") {
                "BEFORE" => -1,
                "ON" => 0,
                _ => 1,
            };
            return Ok((Key::Date { day, relation }, rest));
        }
        _ => {
            let seqs = format::parse_sequence_set(&atom, max_seq)
                .ok_or_else(|| format!("Unknown search key {atom}"))?;
            Key::Seq(seqs)
        }
    };
    Ok((key, rest))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

impl Key {
    /// Whether the candidate matches this key.
    pub fn matches(&self, c: &Candidate<'_>) -> bool {
        let m = c.message;
        match self {
            Key::All => true,
            Key::Flag { flag, negated } => m.has_flag(flag) != *negated,
            Key::Seq(seqs) => seqs.binary_search(&c.seq).is_ok(),
            Key::Uid(uids) => uids.binary_search(&m.uid).is_ok(),
            Key::Not(k) => !k.matches(c),
            Key::Or(a, b) => a.matches(c) || b.matches(c),
            Key::And(keys) => keys.iter().all(|k| k.matches(c)),
            Key::Header { field, needle } => {
                format::header_value(&m.body, field).is_some_and(|v| contains(&v, needle))
            }
            Key::Contains { needle, whole } => {
                let hay = if *whole {
                    &m.body[..]
                } else {
                    format::text_of(&m.body)
                };
                contains(hay, needle)
            }
            Key::Size { size, larger } => {
                if *larger {
                    m.body.len() > *size
                } else {
                    m.body.len() < *size
                }
            }
            Key::Date { day, relation } => {
                let next_day = *day + Duration::from_secs(86_400);
                match relation {
                    -1 => m.internal_date < *day,
                    0 => m.internal_date >= *day && m.internal_date < next_day,
                    _ => m.internal_date >= *day,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    fn atoms(s: &str) -> Vec<Arg> {
        s.split(' ').map(|a| Arg::Atom(a.to_string())).collect()
    }

    fn msg(uid: u32, flags: &[&str]) -> Message {
        Message {
            uid,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internal_date: UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 5),
            body: Arc::from(&b"Subject: Hello World\r\n\r\nbody text\r\n"[..]),
        }
    }

    fn hits(query: &str, msgs: &[Message]) -> Vec<u32> {
        let key = parse(&atoms(query), msgs.len() as u32, 99).unwrap();
        msgs.iter()
            .enumerate()
            .filter(|(i, m)| {
                key.matches(&Candidate {
                    message: m,
                    seq: *i as u32 + 1,
                })
            })
            .map(|(_, m)| m.uid)
            .collect()
    }

    #[test]
    fn flags_sets_and_logic() {
        let msgs = [
            msg(10, &["\\Seen"]),
            msg(11, &[]),
            msg(12, &["\\Seen", "\\Flagged"]),
        ];
        assert_eq!(hits("ALL", &msgs), vec![10, 11, 12]);
        assert_eq!(hits("UNSEEN", &msgs), vec![11]);
        assert_eq!(hits("SEEN NOT FLAGGED", &msgs), vec![10]);
        assert_eq!(hits("UID 11:*", &msgs), vec![11, 12]);
        assert_eq!(hits("2,3", &msgs), vec![11, 12]);
        assert_eq!(hits("OR FLAGGED UNSEEN", &msgs), vec![11, 12]);
        assert_eq!(hits("CHARSET UTF-8 UNSEEN", &msgs), vec![11]);
    }

    #[test]
    fn text_size_and_dates() {
        let msgs = [msg(1, &[])];
        assert_eq!(hits("SUBJECT world", &msgs), vec![1]);
        assert_eq!(hits("BODY subject", &msgs), Vec::<u32>::new());
        assert_eq!(hits("TEXT subject", &msgs), vec![1]);
        assert_eq!(hits("LARGER 10", &msgs), vec![1]);
        assert_eq!(hits("ON 4-Jan-1970", &msgs), vec![1]);
        assert_eq!(hits("SINCE 5-Jan-1970", &msgs), Vec::<u32>::new());
        assert!(parse(&atoms("BOGUS"), 1, 1).is_err());
    }
}
