//! Fuzzes the IMAP command reader (`proto::imap::command`).
//!
//! Input: a cut seed byte, a limits byte, then the client's byte stream.
//! The stream is parsed twice, whole and cut into pieces, and both must
//! give the same commands, continuation requests and errors (except that
//! a line found too long before its end arrived may lack its tag). Every
//! call may only drain the buffer from the front; commands respect the
//! limits (size, literal size, list depth); after AUTHENTICATE one raw
//! line is taken with `take_line`, as the session does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailpin::proto::imap::command::{Arg, CommandReader, Limits, ParseError, Step, MAX_LIST_DEPTH};
use mailpin_fuzz::Cuts;

/// What the reader reported, in order.
#[derive(Debug, PartialEq)]
enum Event {
    Command(mailpin::proto::imap::command::Command),
    Continue,
    Line(Vec<u8>),
    Error(ParseError),
}

/// Whether the cut stream's event `cut` matches the whole stream's
/// `whole`. A line found too long before its end arrived may be reported
/// before its tag is complete, so without the tag.
fn same_event(whole: &Event, cut: &Event) -> bool {
    if let (Event::Error(w), Event::Error(c)) = (whole, cut) {
        // A line that is both too long and too large a command is either,
        // depending on which bound the cut lets the reader see first; the
        // session answers both the same way (`* BYE`, close).
        if too_big(w) && too_big(c) {
            return true;
        }
    }
    match (whole, cut) {
        (
            Event::Error(ParseError::LineTooLong { .. }),
            Event::Error(ParseError::LineTooLong { tag: None }),
        )
        | (
            Event::Error(ParseError::CommandTooLarge { .. }),
            Event::Error(ParseError::CommandTooLarge { tag: None }),
        ) => true,
        _ => whole == cut,
    }
}

fn limits(selector: u8) -> Limits {
    if selector & 0x80 == 0 {
        return Limits::default();
    }
    let max_line = 8 + usize::from(selector & 0x1f) * 8;
    Limits {
        max_line,
        max_literal: usize::from((selector >> 5) & 3) * 40,
        max_command: max_line * 3,
    }
}

/// Checks an argument against the limits; returns its list depth.
fn check_arg(arg: &Arg, limits: &Limits) -> usize {
    match arg {
        Arg::Literal(octets) => {
            assert!(octets.len() <= limits.max_literal, "literal over the limit");
            0
        }
        Arg::Atom(atom) => {
            assert!(!atom.is_empty(), "empty atom");
            0
        }
        Arg::List(items) => {
            1 + items
                .iter()
                .map(|a| check_arg(a, limits))
                .max()
                .unwrap_or(0)
        }
        Arg::Quoted(_) | Arg::Nil => 0,
    }
}

/// `after` must be what is left of `before` once bytes are drained from
/// its front.
fn assert_drained_from_front(before: &[u8], after: &[u8]) {
    assert!(after.len() <= before.len(), "the reader grew the buffer");
    assert_eq!(
        after,
        &before[before.len() - after.len()..],
        "the reader changed kept bytes"
    );
}

fn run(pieces: &[&[u8]], limits: Limits) -> Vec<Event> {
    let mut reader = CommandReader::new(limits);
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let mut want_line = false;
    for piece in pieces {
        buf.extend_from_slice(piece);
        // Every round drains bytes, asks for a literal (at least 3 bytes
        // of `{N}` each) or waits for the next piece.
        let max_rounds = 2 * buf.len() + 2;
        for round in 0.. {
            assert!(round <= max_rounds, "the reader makes no progress");
            let before = buf.clone();
            assert!(reader.wants(&buf) >= 1);
            if want_line {
                match reader.take_line(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(line)) => {
                        assert!(line.len() <= limits.max_line, "line over the limit");
                        assert!(!line.contains(&b'\n'));
                        want_line = false;
                        events.push(Event::Line(line));
                    }
                    Err(e) => {
                        want_line = false;
                        events.push(Event::Error(e));
                    }
                }
                assert_drained_from_front(&before, &buf);
                continue;
            }
            let step = reader.next(&mut buf);
            assert_drained_from_front(&before, &buf);
            match step {
                Ok(Step::NeedMore) => break,
                Ok(Step::Continue) => events.push(Event::Continue),
                Ok(Step::Command(command)) => {
                    // After a line too long, the rest of it is dropped with
                    // the next command; otherwise only the command went.
                    let after_long_line = matches!(
                        events.last(),
                        Some(Event::Error(ParseError::LineTooLong { .. }))
                    );
                    let consumed = before.len() - buf.len();
                    assert!(
                        after_long_line || consumed <= limits.max_command,
                        "command over the limit"
                    );
                    assert!(!command.tag.is_empty() && !command.tag.contains('+'));
                    assert!(!command.name.is_empty());
                    assert_eq!(command.name, command.name.to_ascii_uppercase());
                    for arg in &command.args {
                        assert!(check_arg(arg, &limits) <= MAX_LIST_DEPTH, "lists too deep");
                    }
                    want_line = command.name == "AUTHENTICATE";
                    events.push(Event::Command(command));
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    let close = e.must_close();
                    events.push(Event::Error(e));
                    if close {
                        return events;
                    }
                }
            }
        }
    }
    events
}

/// A size error: the pre-login session says `* BYE` and closes on it, so
/// nothing the reader reports after it is ever used.
fn too_big(e: &ParseError) -> bool {
    matches!(
        e,
        ParseError::LineTooLong { .. } | ParseError::CommandTooLarge { .. }
    )
}

/// The events up to and including the first size error (see [`too_big`]).
fn until_too_big(events: Vec<Event>) -> Vec<Event> {
    let mut kept = Vec::with_capacity(events.len());
    for e in events {
        let stop = matches!(&e, Event::Error(p) if too_big(p));
        kept.push(e);
        if stop {
            break;
        }
    }
    kept
}

fuzz_target!(|data: &[u8]| {
    let [seed, selector, stream @ ..] = data else {
        return;
    };
    let limits = limits(*selector);
    let whole = until_too_big(run(&[stream], limits));
    let cut = until_too_big(run(&Cuts::new(*seed).split(stream), limits));
    assert!(
        whole.len() == cut.len() && whole.iter().zip(&cut).all(|(w, c)| same_event(w, c)),
        "cutting the stream changed what was parsed:\n whole: {whole:?}\n   cut: {cut:?}"
    );
});
