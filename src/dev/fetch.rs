//! FETCH for the dev backends: which data items a client asked for, and
//! how each is written for one message.
//!
//! Supported items: `FLAGS`, `UID`, `RFC822.SIZE`, `INTERNALDATE`,
//! `ENVELOPE` (first address of each header only), `BODYSTRUCTURE` and
//! `BODY` (the message as one text/plain part), `RFC822`,
//! `RFC822.HEADER`, `RFC822.TEXT`, and `BODY[section]` / `BODY.PEEK[section]`
//! with sections ``(empty), `HEADER`, `TEXT`, `MIME`, `1`,
//! `HEADER.FIELDS (..)` and `HEADER.FIELDS.NOT (..)`, each with an optional
//! partial `<offset.length>`. The macros `ALL`, `FAST` and `FULL` expand as
//! RFC 3501 says.

use std::io::Write;

use super::format;
use super::store::Message;
use crate::proto::imap::command::Arg;

/// Which part of a message a `BODY[...]` item names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    /// `BODY[]`: the whole message.
    Full,
    /// `BODY[HEADER]`: the header block.
    Header,
    /// `BODY[TEXT]` (and `BODY[1]` of a single-part message).
    Text,
    /// `BODY[HEADER.FIELDS (..)]` or, when `exclude`, `.NOT`.
    Fields {
        /// The field names listed.
        names: Vec<String>,
        /// Whether the names are excluded (`.NOT`) rather than selected.
        exclude: bool,
    },
}

/// One FETCH data item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// `FLAGS`.
    Flags,
    /// `UID`.
    Uid,
    /// `RFC822.SIZE`.
    Size,
    /// `INTERNALDATE`.
    InternalDate,
    /// `ENVELOPE`.
    Envelope,
    /// `BODYSTRUCTURE` (or `BODY` when `extensible` is false).
    Structure {
        /// Whether the client asked for BODYSTRUCTURE rather than BODY.
        extensible: bool,
    },
    /// A piece of the message's bytes.
    Body {
        /// The part asked for.
        section: Section,
        /// `<offset.length>`, if given.
        partial: Option<(usize, usize)>,
        /// Whether fetching leaves `\Seen` alone (`.PEEK`, RFC822.HEADER).
        peek: bool,
        /// How the item is named in the response, e.g. `BODY[HEADER]<0>`.
        label: String,
    },
}

impl Item {
    /// Whether fetching this item sets `\Seen`.
    pub fn sets_seen(&self) -> bool {
        matches!(self, Item::Body { peek: false, .. })
    }
}

/// Parses the items argument of FETCH (one atom or a list of them).
/// `Err` carries the text of a BAD response.
pub fn parse_items(arg: &Arg) -> Result<Vec<Item>, String> {
    let atoms: Vec<&str> = match arg {
        Arg::Atom(a) => vec![a.as_str()],
        Arg::List(list) => list
            .iter()
            .map(|a| match a {
                Arg::Atom(a) => Ok(a.as_str()),
                _ => Err("FETCH items must be atoms".to_string()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("FETCH items missing".to_string()),
    };
    let mut items = Vec::new();
    for atom in atoms {
        match atom.to_ascii_uppercase().as_str() {
            "ALL" => items.extend([Item::Flags, Item::InternalDate, Item::Size, Item::Envelope]),
            "FAST" => items.extend([Item::Flags, Item::InternalDate, Item::Size]),
            "FULL" => items.extend([
                Item::Flags,
                Item::InternalDate,
                Item::Size,
                Item::Envelope,
                Item::Structure { extensible: false },
            ]),
            _ => items.push(parse_item(atom)?),
        }
    }
    Ok(items)
}

fn parse_item(atom: &str) -> Result<Item, String> {
    let upper = atom.to_ascii_uppercase();
    let simple = match upper.as_str() {
        "FLAGS" => Some(Item::Flags),
        "UID" => Some(Item::Uid),
        "RFC822.SIZE" => Some(Item::Size),
        "INTERNALDATE" => Some(Item::InternalDate),
        "ENVELOPE" => Some(Item::Envelope),
        "BODYSTRUCTURE" => Some(Item::Structure { extensible: true }),
        "BODY" => Some(Item::Structure { extensible: false }),
        "RFC822" => Some(body(Section::Full, None, false, "RFC822".into())),
        "RFC822.HEADER" => Some(body(Section::Header, None, true, "RFC822.HEADER".into())),
        "RFC822.TEXT" => Some(body(Section::Text, None, false, "RFC822.TEXT".into())),
        _ => None,
    };
    if let Some(item) = simple {
        return Ok(item);
    }
    let (peek, rest) = if let Some(rest) = upper.strip_prefix("BODY.PEEK[") {
        (true, rest)
    } else if let Some(rest) = upper.strip_prefix("BODY[") {
        (false, rest)
    } else {
        return Err(format!("Unknown FETCH item {atom}"));
    };
    let close = rest
        .rfind(']')
        .ok_or_else(|| format!("Unterminated section in {atom}"))?;
    let section_text = &rest[..close];
    let after = &rest[close + 1..];
    let section = parse_section(section_text).ok_or_else(|| format!("Unknown section {atom}"))?;
    let partial = if after.is_empty() {
        None
    } else {
        let inner = after
            .strip_prefix('<')
            .and_then(|a| a.strip_suffix('>'))
            .ok_or_else(|| format!("Bad partial in {atom}"))?;
        let (offset, len) = inner
            .split_once('.')
            .ok_or_else(|| format!("Bad partial in {atom}"))?;
        let offset = offset
            .parse()
            .map_err(|_| format!("Bad partial in {atom}"))?;
        let len = len.parse().map_err(|_| format!("Bad partial in {atom}"))?;
        Some((offset, len))
    };
    // The response names the section as asked, without .PEEK, and a
    // partial by its offset only (RFC 3501 7.4.2).
    let original_section = &atom[atom.find('[').unwrap_or(0)..];
    let original_section = &original_section[..=original_section.rfind(']').unwrap_or(0)];
    let mut label = format!("BODY{original_section}");
    if let Some((offset, _)) = partial {
        label.push_str(&format!("<{offset}>"));
    }
    Ok(body(section, partial, peek, label))
}

fn body(section: Section, partial: Option<(usize, usize)>, peek: bool, label: String) -> Item {
    Item::Body {
        section,
        partial,
        peek,
        label,
    }
}

fn parse_section(text: &str) -> Option<Section> {
    let text = text.trim();
    match text {
        "" => return Some(Section::Full),
        "HEADER" => return Some(Section::Header),
        "TEXT" | "1" => return Some(Section::Text),
        "MIME" | "1.MIME" => return Some(Section::Header),
        _ => {}
    }
    let (exclude, list) = if let Some(rest) = text.strip_prefix("HEADER.FIELDS.NOT") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("HEADER.FIELDS") {
        (false, rest)
    } else {
        return None;
    };
    let inner = list.trim().strip_prefix('(')?.strip_suffix(')')?;
    let names = inner
        .split_whitespace()
        .map(|n| n.trim_matches('"').to_string())
        .collect();
    Some(Section::Fields { names, exclude })
}

/// Writes the parenthesised FETCH data of `msg` for `items` into `out`.
pub fn write_fetch(out: &mut Vec<u8>, seq: u32, msg: &Message, items: &[Item]) {
    let _ = write!(out, "* {seq} FETCH (");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        write_item(out, msg, item);
    }
    out.extend_from_slice(b")\r\n");
}

fn write_item(out: &mut Vec<u8>, msg: &Message, item: &Item) {
    match item {
        Item::Flags => {
            let _ = write!(out, "FLAGS {}", format::flag_list(&msg.flags));
        }
        Item::Uid => {
            let _ = write!(out, "UID {}", msg.uid);
        }
        Item::Size => {
            let _ = write!(out, "RFC822.SIZE {}", msg.body.len());
        }
        Item::InternalDate => {
            let _ = write!(
                out,
                "INTERNALDATE {}",
                format::internal_date(msg.internal_date)
            );
        }
        Item::Envelope => {
            out.extend_from_slice(b"ENVELOPE ");
            out.extend_from_slice(&format::envelope(&msg.body));
        }
        Item::Structure { extensible } => {
            let name = if *extensible { "BODYSTRUCTURE" } else { "BODY" };
            let _ = write!(out, "{name} {}", format::body_structure(&msg.body));
        }
        Item::Body {
            section,
            partial,
            label,
            ..
        } => {
            let owned;
            let bytes: &[u8] = match section {
                Section::Full => &msg.body,
                Section::Header => format::header_of(&msg.body),
                Section::Text => format::text_of(&msg.body),
                Section::Fields { names, exclude } => {
                    owned = format::header_fields_subset(&msg.body, names, *exclude);
                    &owned
                }
            };
            let bytes = match partial {
                Some((offset, len)) => {
                    let start = (*offset).min(bytes.len());
                    let end = start.saturating_add(*len).min(bytes.len());
                    &bytes[start..end]
                }
                None => bytes,
            };
            out.extend_from_slice(label.as_bytes());
            out.push(b' ');
            format::push_literal(out, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    fn msg() -> Message {
        Message {
            uid: 7,
            flags: vec!["\\Seen".into()],
            internal_date: UNIX_EPOCH,
            body: Arc::from(&b"Subject: x\r\nFrom: a@b\r\n\r\nhello\r\n"[..]),
        }
    }

    fn fetch(items: &str) -> String {
        let arg = if items.starts_with('(') {
            Arg::List(
                items[1..items.len() - 1]
                    .split(' ')
                    .map(|s| Arg::Atom(s.to_string()))
                    .collect(),
            )
        } else {
            Arg::Atom(items.to_string())
        };
        let items = parse_items(&arg).unwrap();
        let mut out = Vec::new();
        write_fetch(&mut out, 3, &msg(), &items);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn simple_items() {
        assert_eq!(
            fetch("(UID FLAGS RFC822.SIZE)"),
            "* 3 FETCH (UID 7 FLAGS (\\Seen) RFC822.SIZE 32)\r\n"
        );
        assert_eq!(
            fetch("INTERNALDATE"),
            "* 3 FETCH (INTERNALDATE \"01-Jan-1970 00:00:00 +0000\")\r\n"
        );
    }

    #[test]
    fn body_sections_and_partials() {
        assert_eq!(
            fetch("BODY.PEEK[TEXT]"),
            "* 3 FETCH (BODY[TEXT] {7}\r\nhello\r\n)\r\n"
        );
        assert_eq!(fetch("BODY[]<2.3>"), "* 3 FETCH (BODY[]<2> {3}\r\nbje)\r\n");
        assert_eq!(
            fetch("BODY.PEEK[HEADER.FIELDS (FROM)]"),
            "* 3 FETCH (BODY[HEADER.FIELDS (FROM)] {13}\r\nFrom: a@b\r\n\r\n)\r\n"
        );
        let items = parse_items(&Arg::Atom("BODY.PEEK[]".into())).unwrap();
        assert!(!items[0].sets_seen());
        let items = parse_items(&Arg::Atom("rfc822".into())).unwrap();
        assert!(items[0].sets_seen());
    }

    #[test]
    fn macros_and_errors() {
        assert_eq!(parse_items(&Arg::Atom("FAST".into())).unwrap().len(), 3);
        assert!(parse_items(&Arg::Atom("BODY[NOPE]".into())).is_err());
        assert!(parse_items(&Arg::Atom("BOGUS".into())).is_err());
        assert!(parse_items(&Arg::Atom("BODY[]<1>".into())).is_err());
    }
}
