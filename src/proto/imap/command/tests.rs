//! Tests of the IMAP command reader, including hostile input.

use super::*;
use std::time::{Duration, Instant};

/// What one call of [`CommandReader::next`] produced, other than NeedMore.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Continue,
    Command(Command),
    Error(ParseError),
}

/// Calls `next` until it needs more input; returns what it produced.
fn drain_events(reader: &mut CommandReader, buf: &mut Vec<u8>) -> Vec<Event> {
    let mut events = Vec::new();
    for _ in 0..10_000 {
        match reader.next(buf) {
            Ok(Step::NeedMore) => return events,
            Ok(Step::Continue) => events.push(Event::Continue),
            Ok(Step::Command(cmd)) => events.push(Event::Command(cmd)),
            Err(err) => events.push(Event::Error(err)),
        }
    }
    panic!("reader did not settle within 10000 calls");
}

/// Feeds `input` whole, with default limits.
fn events(input: &[u8]) -> Vec<Event> {
    events_with(Limits::default(), input)
}

fn events_with(limits: Limits, input: &[u8]) -> Vec<Event> {
    let mut reader = CommandReader::new(limits);
    let mut buf = input.to_vec();
    drain_events(&mut reader, &mut buf)
}

/// Feeds `input` one byte at a time.
fn events_bytewise(limits: Limits, input: &[u8]) -> Vec<Event> {
    let mut reader = CommandReader::new(limits);
    let mut buf = Vec::new();
    let mut all = Vec::new();
    for &b in input {
        buf.push(b);
        all.extend(drain_events(&mut reader, &mut buf));
    }
    all
}

/// The single command `input` holds.
fn command(input: &[u8]) -> Command {
    match events(input).as_slice() {
        [Event::Command(cmd)] => cmd.clone(),
        other => panic!("expected one command, got {other:?}"),
    }
}

/// The single error `input` causes.
fn error(input: &[u8]) -> ParseError {
    match events(input).as_slice() {
        [Event::Error(err)] => err.clone(),
        other => panic!("expected one error, got {other:?}"),
    }
}

fn atom(text: &str) -> Arg {
    Arg::Atom(text.to_owned())
}

fn quoted(bytes: &[u8]) -> Arg {
    Arg::Quoted(bytes.to_vec())
}

fn literal(bytes: &[u8]) -> Arg {
    Arg::Literal(bytes.to_vec())
}

fn syntax(tag: Option<&str>, reason: &'static str) -> ParseError {
    ParseError::Syntax {
        tag: tag.map(str::to_owned),
        reason,
    }
}

#[test]
fn typical_login() {
    let cmd = command(b"a1 LOGIN user@example.com secret\r\n");
    assert_eq!(cmd.tag, "a1");
    assert_eq!(cmd.name, "LOGIN");
    assert_eq!(cmd.args, vec![atom("user@example.com"), atom("secret")]);
    assert_eq!(cmd.astring(0), Some(&b"user@example.com"[..]));
    assert_eq!(cmd.astring(2), None);
}

#[test]
fn command_names_are_upper_cased_tags_are_not() {
    let cmd = command(b"aBc capability\r\n");
    assert_eq!((cmd.tag.as_str(), cmd.name.as_str()), ("aBc", "CAPABILITY"));
    assert!(cmd.args.is_empty());
}

#[test]
fn bare_lf_ends_a_line() {
    assert_eq!(command(b"a NOOP\n").name, "NOOP");
}

#[test]
fn quoted_strings_unescape() {
    let cmd = command(b"A1 LOGIN \"ali\\\"ce\" \"p\\\\w\"\r\n");
    assert_eq!(cmd.args, vec![quoted(b"ali\"ce"), quoted(b"p\\w")]);
    let cmd = command(b"A1 LOGIN \"\" \"j\xc3\xb6rg (x)\"\r\n");
    assert_eq!(cmd.args, vec![quoted(b""), quoted("jörg (x)".as_bytes())]);
}

#[test]
fn bad_quoted_strings_are_syntax_errors() {
    let unterminated = syntax(Some("A1"), "unterminated quoted string");
    assert_eq!(error(b"A1 LOGIN \"alice\r\n"), unterminated);
    assert_eq!(error(b"A1 LOGIN \"a\\\"\r\n"), unterminated);
    let escape = syntax(Some("A1"), "invalid escape in quoted string");
    assert_eq!(error(b"A1 LOGIN \"a\\nb\" x\r\n"), escape);
    let ctl = syntax(Some("A1"), "NUL or CR in quoted string");
    assert_eq!(error(b"A1 LOGIN \"a\0b\" x\r\n"), ctl);
    assert_eq!(error(b"A1 LOGIN \"a\rb\" x\r\n"), ctl);
}

#[test]
fn synchronising_literals_ask_to_continue_once_each() {
    let mut reader = CommandReader::default();
    let mut buf = b"A1 LOGIN {5}\r\n".to_vec();
    assert_eq!(reader.next(&mut buf), Ok(Step::Continue));
    assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
    assert_eq!(reader.wants(&buf), 5);
    buf.extend_from_slice(b"ali");
    assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
    assert_eq!(reader.wants(&buf), 2);
    buf.extend_from_slice(b"ce {3}\r\n");
    assert_eq!(reader.next(&mut buf), Ok(Step::Continue));
    assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
    buf.extend_from_slice(b"pwd\r\nA2 NOOP");
    let Ok(Step::Command(cmd)) = reader.next(&mut buf) else {
        panic!("expected the LOGIN command");
    };
    assert_eq!(cmd.name, "LOGIN");
    assert_eq!(cmd.args, vec![literal(b"alice"), literal(b"pwd")]);
    assert_eq!(buf, b"A2 NOOP", "pipelined bytes stay in the buffer");
}

#[test]
fn literal_login_in_one_buffer() {
    let got = events(b"A1 LOGIN {5}\r\nalice {3}\r\npwd\r\n");
    let cmd = Command {
        tag: "A1".into(),
        name: "LOGIN".into(),
        args: vec![literal(b"alice"), literal(b"pwd")],
    };
    assert_eq!(
        got,
        vec![Event::Continue, Event::Continue, Event::Command(cmd)]
    );
}

#[test]
fn literal_octets_are_not_parsed() {
    let cmd = command(b"A1 LOGIN {6+}\r\n(\"\0\r\n{ pw\r\n");
    assert_eq!(cmd.args, vec![literal(b"(\"\0\r\n{"), atom("pw")]);
}

#[test]
fn literal_followed_by_more_arguments_and_inside_lists() {
    let cmd = command(b"A1 ID (\"name\" {3+}\r\nabc \"v\" NIL) x\r\n");
    let list = Arg::List(vec![
        quoted(b"name"),
        literal(b"abc"),
        quoted(b"v"),
        Arg::Nil,
    ]);
    assert_eq!(cmd.args, vec![list, atom("x")]);
}

#[test]
fn non_synchronising_literals_do_not_ask_to_continue() {
    let got = events(b"A1 LOGIN {5+}\r\nalice {3+}\r\npwd\r\n");
    assert!(
        matches!(got.as_slice(), [Event::Command(c)] if c.args == vec![literal(b"alice"), literal(b"pwd")])
    );
}

#[test]
fn literal8_reads_as_a_literal() {
    let got = events(b"A1 APPEND INBOX ~{3}\r\nabc\r\n");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], Event::Continue);
    assert!(matches!(&got[1], Event::Command(c) if c.args == vec![atom("INBOX"), literal(b"abc")]));
}

#[test]
fn empty_literal() {
    assert_eq!(
        command(b"A1 LOGIN {0+}\r\n x\r\n").args,
        vec![literal(b""), atom("x")]
    );
}

#[test]
fn bad_literal_announcements() {
    let end = syntax(Some("A1"), "a literal announcement must end the line");
    assert_eq!(error(b"A1 LOGIN {5} x\r\n"), end);
    let size = syntax(Some("A1"), "invalid literal size");
    assert_eq!(error(b"A1 LOGIN {}\r\n"), size);
    assert_eq!(error(b"A1 LOGIN {-1}\r\n"), size);
    let form = syntax(Some("A1"), "invalid literal announcement");
    assert_eq!(error(b"A1 LOGIN {5\r\n"), form);
    assert_eq!(error(b"A1 LOGIN {5-}\r\n"), form);
}

#[test]
fn huge_literal_announcements_are_refused_before_continuing() {
    let max = error(b"A1 LOGIN {18446744073709551615}\r\n");
    assert_eq!(
        max,
        ParseError::LiteralTooLarge {
            tag: Some("A1".into()),
            size: Some(u64::MAX),
            non_sync: false
        }
    );
    assert!(!max.must_close());
    let beyond = error(b"A1 LOGIN {99999999999999999999}\r\n");
    assert_eq!(
        beyond,
        ParseError::LiteralTooLarge {
            tag: Some("A1".into()),
            size: None,
            non_sync: false
        }
    );
}

#[test]
fn literal_over_the_limit() {
    let limit = Limits::default().max_literal;
    let ok = format!("A1 X {{{limit}}}\r\n");
    assert_eq!(events(ok.as_bytes()), vec![Event::Continue]);
    let over = format!("A1 X {{{}}}\r\n", limit + 1);
    let err = error(over.as_bytes());
    assert!(
        matches!(&err, ParseError::LiteralTooLarge { size: Some(n), non_sync: false, .. } if *n == limit as u64 + 1)
    );
    let over_plus = format!("A1 X {{{}+}}\r\n", limit + 1);
    let err = error(over_plus.as_bytes());
    assert!(matches!(
        err,
        ParseError::LiteralTooLarge { non_sync: true, .. }
    ));
    assert!(err.must_close(), "the client sends the octets regardless");
}

#[test]
fn refused_sync_literal_resynchronises_on_the_next_line() {
    let got = events(b"A1 X {999999}\r\nA2 NOOP\r\n");
    assert_eq!(got.len(), 2);
    assert!(matches!(
        &got[0],
        Event::Error(ParseError::LiteralTooLarge { .. })
    ));
    assert!(matches!(&got[1], Event::Command(c) if c.tag == "A2"));
}

#[test]
fn command_size_limit_counts_literals() {
    let limits = Limits {
        max_line: 100,
        max_literal: 100,
        max_command: 150,
    };
    let got = events_with(limits, b"A1 X {90+}\r\n");
    assert!(got.is_empty(), "{got:?}");
    let mut input = b"A1 X {90+}\r\n".to_vec();
    input.extend_from_slice(&[b'a'; 90]);
    input.extend_from_slice(b" {90+}\r\n");
    let got = events_with(limits, &input);
    let err = ParseError::CommandTooLarge {
        tag: Some("A1".into()),
    };
    assert!(err.must_close());
    assert_eq!(got, vec![Event::Error(err)]);
}

#[test]
fn sasl_ir_authenticate() {
    let cmd = command(b"A2 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(cmd.name, "AUTHENTICATE");
    assert_eq!(cmd.args, vec![atom("PLAIN"), atom("AGFsaWNlAHNlY3JldA==")]);
    let creds = crate::proto::sasl::decode_plain(cmd.astring(1).unwrap_or_default());
    let creds = creds.expect("valid PLAIN");
    assert_eq!(creds.user, "alice");
    assert_eq!(&**creds.password, b"secret");
    let empty = command(b"A3 AUTHENTICATE PLAIN =\r\n");
    assert_eq!(empty.args, vec![atom("PLAIN"), atom("=")]);
}

#[test]
fn id_with_nil() {
    let cmd = command(b"A1 ID (\"name\" \"x\" \"version\" NIL)\r\n");
    let list = Arg::List(vec![
        quoted(b"name"),
        quoted(b"x"),
        quoted(b"version"),
        Arg::Nil,
    ]);
    assert_eq!(cmd.args, vec![list]);
    assert_eq!(command(b"A1 ID NIL\r\n").args, vec![Arg::Nil]);
    let lower = command(b"A1 ID nil\r\n");
    assert_eq!(lower.args, vec![atom("nil")]);
    assert!(lower.args[0].is_nil());
    assert_eq!(Arg::Nil.as_astring(), Some(&b"NIL"[..]));
}

#[test]
fn lists_nest_and_may_be_empty() {
    let cmd = command(b"A1 X () ((a) (b c)) d\r\n");
    let inner = Arg::List(vec![
        Arg::List(vec![atom("a")]),
        Arg::List(vec![atom("b"), atom("c")]),
    ]);
    assert_eq!(cmd.args, vec![Arg::List(vec![]), inner, atom("d")]);
    assert_eq!(cmd.args[0].as_list(), Some(&[][..]));
}

#[test]
fn list_nesting_is_bounded() {
    let nested = |depth: usize| {
        let mut line = b"A1 X ".to_vec();
        line.extend(std::iter::repeat_n(b'(', depth));
        line.extend(std::iter::repeat_n(b')', depth));
        line.extend_from_slice(b"\r\n");
        line
    };
    assert!(matches!(
        events(&nested(MAX_LIST_DEPTH)).as_slice(),
        [Event::Command(_)]
    ));
    let too_deep = syntax(Some("A1"), "parenthesised lists nested too deeply");
    assert_eq!(error(&nested(MAX_LIST_DEPTH + 1)), too_deep);
    assert_eq!(error(&nested(1000)), too_deep);
}

#[test]
fn unbalanced_lists() {
    assert_eq!(
        error(b"A1 X (a\r\n"),
        syntax(Some("A1"), "unclosed parenthesised list")
    );
    assert_eq!(
        error(b"A1 X (\r\n"),
        syntax(Some("A1"), "unclosed parenthesised list")
    );
    assert_eq!(error(b"A1 X a)\r\n"), syntax(Some("A1"), "unbalanced ')'"));
    assert_eq!(
        error(b"A1 X (a )\r\n"),
        syntax(Some("A1"), "invalid character in argument")
    );
}

#[test]
fn fetch_items_with_sections_are_one_atom() {
    let cmd = command(b"A3 uid fetch 1:*,3 (FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048>)\r\n");
    assert_eq!(cmd.name, "UID");
    let items = Arg::List(vec![
        atom("FLAGS"),
        atom("BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.2048>"),
    ]);
    assert_eq!(cmd.args, vec![atom("fetch"), atom("1:*,3"), items]);
    let cmd = command(b"A4 FETCH 1 BODY[HEADER.FIELDS (\"X-A]\")]\r\n");
    assert_eq!(
        cmd.args,
        vec![atom("1"), atom("BODY[HEADER.FIELDS (\"X-A]\")]")]
    );
    assert_eq!(
        error(b"A5 FETCH 1 BODY[TEXT\r\n"),
        syntax(Some("A5"), "unterminated '[' in atom")
    );
}

#[test]
fn flags_and_wildcards_are_atoms() {
    let cmd = command(b"A4 STORE 1 +FLAGS (\\Seen \\Deleted)\r\n");
    let flags = Arg::List(vec![atom("\\Seen"), atom("\\Deleted")]);
    assert_eq!(cmd.args, vec![atom("1"), atom("+FLAGS"), flags]);
    assert_eq!(
        command(b"A5 LIST \"\" %\r\n").args,
        vec![quoted(b""), atom("%")]
    );
    assert_eq!(
        command(b"A5 LIST \"\" *\r\n").args,
        vec![quoted(b""), atom("*")]
    );
}

#[test]
fn empty_line_is_an_untagged_syntax_error_and_reading_goes_on() {
    let got = events(b"\r\nA1 NOOP\r\n");
    assert_eq!(got[0], Event::Error(syntax(None, "empty line")));
    assert!(matches!(&got[1], Event::Command(c) if c.tag == "A1"));
    assert_eq!(got.len(), 2);
}

#[test]
fn tags_with_odd_characters() {
    let odd = "a.b-c_1!#$&'=/?^|~]<>,:;@`";
    let cmd = command(format!("{odd} NOOP\r\n").as_bytes());
    assert_eq!(cmd.tag, odd);
    let tag = syntax(None, "invalid tag");
    assert_eq!(error(b"+a NOOP\r\n"), tag);
    assert_eq!(error(b"* NOOP\r\n"), tag);
    assert_eq!(error(b" NOOP\r\n"), tag);
    let bad_char = syntax(Some("a"), "invalid character in tag");
    assert_eq!(error(b"a+1 NOOP\r\n"), bad_char);
    assert_eq!(
        error(b"a*1 NOOP\r\n"),
        syntax(Some("a"), "invalid character in tag")
    );
    assert_eq!(
        error(b"a\\b NOOP\r\n"),
        syntax(Some("a"), "invalid character in tag")
    );
    assert_eq!(error(b"A1\r\n"), syntax(Some("A1"), "missing command name"));
    assert_eq!(
        error(b"A1 \r\n"),
        syntax(Some("A1"), "missing command name")
    );
    assert_eq!(
        error(b"A1 (X)\r\n"),
        syntax(Some("A1"), "missing command name")
    );
}

#[test]
fn spaces_must_be_single() {
    assert_eq!(error(b"A1 NOOP \r\n"), syntax(Some("A1"), "trailing space"));
    assert_eq!(
        error(b"A1 LOGIN a  b\r\n"),
        syntax(Some("A1"), "invalid character in argument")
    );
    assert_eq!(
        error(b"A1  NOOP\r\n"),
        syntax(Some("A1"), "missing command name")
    );
    let space = syntax(Some("A1"), "expected a space between arguments");
    assert_eq!(error(b"A1 X \"a\"b\r\n"), space);
    assert_eq!(error(b"A1 X (a)b\r\n"), space);
}

#[test]
fn nul_and_eight_bit_octets_outside_strings_are_syntax_errors() {
    assert_eq!(
        error(b"A1 LOGIN a\0b c\r\n"),
        syntax(Some("A1"), "invalid character in atom")
    );
    assert_eq!(
        error(b"A1 LOGIN \0 c\r\n"),
        syntax(Some("A1"), "invalid character in argument")
    );
    assert_eq!(
        error(b"A1 LOGIN j\xc3\xb6rg c\r\n"),
        syntax(Some("A1"), "invalid character in atom")
    );
    assert_eq!(
        error(b"A\0 NOOP\r\n"),
        syntax(Some("A"), "invalid character in tag")
    );
    assert_eq!(
        error(b"A1 NO\0OP\r\n"),
        syntax(Some("A1"), "expected a space between arguments")
    );
    let section = syntax(Some("A1"), "invalid character in '[...]'");
    assert_eq!(error(b"A1 FETCH 1 BODY[\0]\r\n"), section);
}

#[test]
fn cr_without_lf() {
    let mut reader = CommandReader::default();
    let mut buf = b"A1 NOOP\r".to_vec();
    assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
    buf.extend_from_slice(b"A2 NOOP\r\nA3 NOOP\r\n");
    let err = syntax(Some("A1"), "expected a space between arguments");
    assert_eq!(reader.next(&mut buf), Err(err));
    let Ok(Step::Command(cmd)) = reader.next(&mut buf) else {
        panic!("expected A3 after the bad line");
    };
    assert_eq!(cmd.tag, "A3");
}

#[test]
fn pipelined_commands_in_one_buffer() {
    let mut reader = CommandReader::default();
    let mut buf = b"a NOOP\r\nb CAPABILITY\nc LOGIN {1+}\r\nx y\r\nd LOG".to_vec();
    let tags: Vec<String> = drain_events(&mut reader, &mut buf)
        .into_iter()
        .map(|e| match e {
            Event::Command(c) => c.tag,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(tags, ["a", "b", "c"]);
    assert_eq!(buf, b"d LOG");
}

#[test]
fn byte_at_a_time_gives_the_same_results() {
    let inputs: [&[u8]; 9] = [
        b"a1 LOGIN user@example.com secret\r\n",
        b"A1 LOGIN {5}\r\nalice {3}\r\npwd\r\n",
        b"A1 LOGIN {5+}\r\nalice \"p\\\\w\"\nA2 ID (\"a\" NIL)\r\n",
        b"A1 LOGIN \"ali\\\"ce\" \"p\\\\w\"\r\n",
        b"\r\nA1 X ((a)\r\nA2 FETCH 1 BODY[HEADER.FIELDS (A B)]\r\n",
        b"A1 X {99999999999999999999}\r\nA2 NOOP\r\n",
        b"A1 NOOP\rA2 NOOP\r\n+ x\r\nA3 ID NIL\r\n",
        b"A1 X {3}\r\n\r\n\r\r\n",
        b"A1 LOGIN a\0b\r\nA2 X ~{2}\r\nab\r\n",
    ];
    for input in inputs {
        let whole = events(input);
        assert!(!whole.is_empty());
        assert_eq!(
            events_bytewise(Limits::default(), input),
            whole,
            "input {input:?}"
        );
    }
    let mut long = b"A1 X ".to_vec();
    long.extend_from_slice(&[b'x'; 9000]);
    long.extend_from_slice(b"\r\nA2 NOOP\r\n");
    let whole = events(&long);
    assert_eq!(events_bytewise(Limits::default(), &long), whole);
    assert!(
        matches!(&whole[0], Event::Error(ParseError::LineTooLong { tag: Some(t) }) if t == "A1")
    );
    assert!(matches!(&whole[1], Event::Command(c) if c.tag == "A2"));
}

#[test]
fn ten_megabyte_line_fails_fast_and_is_not_kept() {
    let mut reader = CommandReader::default();
    let mut buf = Vec::new();
    let chunk = [b'a'; 4096];
    let mut failed_at = None;
    for i in 0..(10 << 20) / chunk.len() {
        buf.extend_from_slice(&chunk);
        match reader.next(&mut buf) {
            Ok(Step::NeedMore) => {}
            Err(ParseError::LineTooLong { tag: None }) if failed_at.is_none() => {
                failed_at = Some(i)
            }
            other => panic!("chunk {i}: unexpected {other:?}"),
        }
        assert!(
            buf.len() <= Limits::default().max_line + chunk.len(),
            "chunk {i} kept {} bytes",
            buf.len()
        );
    }
    assert_eq!(failed_at, Some(2), "the third 4 KiB chunk passes 8 KiB");
    buf.extend_from_slice(b"tail\r\nA2 NOOP\r\n");
    assert!(matches!(reader.next(&mut buf), Ok(Step::Command(c)) if c.tag == "A2"));
}

#[test]
fn scanning_is_linear_in_the_input() {
    let limits = Limits {
        max_line: 32 << 20,
        max_literal: 0,
        max_command: 32 << 20,
    };
    let mut reader = CommandReader::new(limits);
    let mut buf = b"A1 X ".to_vec();
    let chunk = [b'a'; 4096];
    let started = Instant::now();
    for _ in 0..(10 << 20) / chunk.len() {
        buf.extend_from_slice(&chunk);
        assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
    }
    buf.extend_from_slice(b"\r\n");
    assert!(matches!(reader.next(&mut buf), Ok(Step::Command(_))));
    // Rescanning from the start on every chunk would read ~13 GB here.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn take_line_returns_raw_lines() {
    let mut reader = CommandReader::default();
    let mut buf = b"DO".to_vec();
    assert_eq!(reader.take_line(&mut buf), Ok(None));
    buf.extend_from_slice(b"NE\r\nAGFsaWNl\n*\r\nA1 NOOP\r\n");
    assert_eq!(reader.take_line(&mut buf), Ok(Some(b"DONE".to_vec())));
    assert_eq!(reader.take_line(&mut buf), Ok(Some(b"AGFsaWNl".to_vec())));
    assert_eq!(reader.take_line(&mut buf), Ok(Some(b"*".to_vec())));
    assert!(matches!(reader.next(&mut buf), Ok(Step::Command(c)) if c.tag == "A1"));
    assert!(buf.is_empty());
}

#[test]
fn take_line_and_next_may_alternate() {
    let mut reader = CommandReader::default();
    let mut buf = b"A1 NOOP".to_vec();
    assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
    buf.extend_from_slice(b"\r\nDONE");
    assert_eq!(reader.take_line(&mut buf), Ok(Some(b"A1 NOOP".to_vec())));
    assert_eq!(reader.take_line(&mut buf), Ok(None));
    buf.extend_from_slice(b"\r\nA2 NOOP\r\n");
    assert_eq!(reader.take_line(&mut buf), Ok(Some(b"DONE".to_vec())));
    assert!(matches!(reader.next(&mut buf), Ok(Step::Command(c)) if c.tag == "A2"));
    assert!(buf.is_empty());
}

#[test]
fn a_shrunken_buffer_restarts_instead_of_panicking() {
    let mut reader = CommandReader::default();
    let mut buf = b"A1 LOGIN {5}\r\nal".to_vec();
    assert_eq!(reader.next(&mut buf), Ok(Step::Continue));
    assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
    buf.clear();
    assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
    buf.extend_from_slice(b"A2 NOOP\r\n");
    assert!(matches!(reader.next(&mut buf), Ok(Step::Command(c)) if c.tag == "A2"));
}

#[test]
fn take_line_enforces_the_line_limit() {
    let limits = Limits {
        max_line: 8,
        ..Limits::default()
    };
    let mut reader = CommandReader::new(limits);
    let mut buf = b"12345678\r".to_vec();
    assert_eq!(reader.take_line(&mut buf), Ok(None));
    buf.extend_from_slice(b"\n123456789");
    assert_eq!(reader.take_line(&mut buf), Ok(Some(b"12345678".to_vec())));
    assert_eq!(
        reader.take_line(&mut buf),
        Err(ParseError::LineTooLong { tag: None })
    );
    assert!(buf.is_empty());
    buf.extend_from_slice(b"rest of it\nok\n");
    assert_eq!(reader.take_line(&mut buf), Ok(Some(b"ok".to_vec())));
    let mut buf = b"123456789\r\nok\n".to_vec();
    assert_eq!(
        reader.take_line(&mut buf),
        Err(ParseError::LineTooLong { tag: None })
    );
    assert_eq!(reader.take_line(&mut buf), Ok(Some(b"ok".to_vec())));
}

#[test]
fn take_line_within_has_its_own_bound() {
    let limits = Limits {
        max_line: 8,
        ..Limits::default()
    };
    let mut reader = CommandReader::new(limits);
    // A SASL answer longer than a command line may be allowed...
    let mut buf = b"0123456789abcdef\r\n".to_vec();
    assert_eq!(
        reader.take_line_within(&mut buf, 16),
        Ok(Some(b"0123456789abcdef".to_vec()))
    );
    // ...and one past its own bound is refused as soon as it passes it,
    // line end or not, without being kept.
    let mut buf = vec![b'A'; 17];
    assert_eq!(
        reader.take_line_within(&mut buf, 16),
        Err(ParseError::LineTooLong { tag: None })
    );
    assert!(buf.is_empty());
    let mut reader = CommandReader::new(limits);
    let mut buf = b"0123456789abcdefg\r\nok\n".to_vec();
    assert_eq!(
        reader.take_line_within(&mut buf, 16),
        Err(ParseError::LineTooLong { tag: None })
    );
    assert_eq!(reader.take_line(&mut buf), Ok(Some(b"ok".to_vec())));
}

#[test]
fn literals_streamed_into_one_command_stop_at_the_command_bound() {
    // A client sending {8192+} literals in one unfinished command: the
    // reader refuses once the whole command passes max_command, however
    // the bytes arrive, and never holds more than that plus one read.
    let limits = Limits {
        max_line: 8192,
        max_literal: 8192,
        max_command: 64 * 1024,
    };
    let mut reader = CommandReader::new(limits);
    let mut buf = b"a LOGIN {8192+}\r\n".to_vec();
    let mut sent = buf.len();
    let chunk: Vec<u8> = [vec![b'x'; 8192], b" {8192+}\r\n".to_vec()].concat();
    let err = loop {
        match reader.next(&mut buf) {
            Ok(Step::NeedMore) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
        assert!(buf.len() <= limits.max_command + chunk.len());
        buf.extend_from_slice(&chunk);
        sent += chunk.len();
        assert!(sent < 1 << 20, "never refused");
    };
    assert_eq!(
        err,
        ParseError::CommandTooLarge {
            tag: Some("a".into())
        }
    );
    assert!(err.must_close());
}

#[test]
fn debug_output_hides_credentials() {
    let cmd = command(b"A1 LOGIN alice hunter2\r\n");
    let shown = format!("{cmd:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("alice"),
        "{shown}"
    );
    let shown = format!("{:?}", command(b"A2 SELECT INBOX\r\n"));
    assert!(shown.contains("INBOX"), "{shown}");
}

#[test]
fn errors_report_tags_and_what_to_do() {
    let err = error(b"A9 LOGIN \"x\r\n");
    assert_eq!(err.tag(), Some("A9"));
    assert!(!err.must_close());
    assert_eq!(err.to_string(), "syntax error: unterminated quoted string");
    assert_eq!(error(b"\n").tag(), None);
}

/// xorshift64*: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_input_never_panics_and_never_over_consumes() {
    const ALPHABET: &[u8] = b"aA1 {}+~()\"\\[]<>.:*%\r\n\r\n\0\xff{5}{0}NIL";
    let limits = Limits {
        max_line: 64,
        max_literal: 16,
        max_command: 256,
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut commands = 0;
    for _ in 0..2000 {
        let mut reader = CommandReader::new(limits);
        let mut buf = Vec::new();
        for _ in 0..rng.below(20) + 1 {
            let len = rng.below(40);
            for _ in 0..len {
                let b = if rng.below(8) == 0 {
                    rng.next() as u8
                } else {
                    ALPHABET[rng.below(ALPHABET.len())]
                };
                buf.push(b);
            }
            for _ in 0..1000 {
                let before = buf.len();
                match reader.next(&mut buf) {
                    Ok(Step::NeedMore) => break,
                    Ok(Step::Continue) => {}
                    Ok(Step::Command(cmd)) => {
                        commands += 1;
                        assert!(buf.len() < before, "a command consumed nothing");
                        assert!(before - buf.len() <= limits.max_command);
                        assert!(!cmd.tag.is_empty() && !cmd.name.is_empty());
                    }
                    Err(_) => assert!(buf.len() <= before),
                }
            }
            let _ = reader.take_line(&mut buf);
        }
    }
    assert!(
        commands > 0,
        "the generator should produce some valid commands"
    );
}

/// Events up to and including the first one after which the connection
/// must be closed (what follows it is not meaningful).
fn until_close(mut events: Vec<Event>) -> Vec<Event> {
    if let Some(i) = events
        .iter()
        .position(|e| matches!(e, Event::Error(err) if err.must_close()))
    {
        events.truncate(i + 1);
    }
    events
}

#[test]
fn random_input_parses_the_same_whole_or_byte_at_a_time() {
    const PIECES: &[&[u8]] = &[
        b"a1",
        b" ",
        b"LOGIN",
        b"\"x\\\"y\"",
        b"{3}\r\n",
        b"{2+}\r\n",
        b"~{1}\r\n",
        b"(",
        b")",
        b"NIL",
        b"\r\n",
        b"\n",
        b"\r",
        b"\0",
        b"\xc3\xa9",
        b"BODY[A (B)]",
        b"abcdefgh",
        b"*",
        b"{99999999999999999999}\r\n",
    ];
    let limits = Limits {
        max_line: 48,
        max_literal: 8,
        max_command: 96,
    };
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut seen = [0usize; 3];
    for round in 0..3000 {
        let mut input = Vec::new();
        for _ in 0..rng.below(30) {
            input.extend_from_slice(PIECES[rng.below(PIECES.len())]);
        }
        input.splice(0..0, b"t ID ".iter().copied());
        let whole = until_close(events_with(limits, &input));
        let bytewise = until_close(events_bytewise(limits, &input));
        assert_eq!(bytewise, whole, "round {round}, input {input:?}");
        for event in &whole {
            match event {
                Event::Command(_) => seen[0] += 1,
                Event::Continue => seen[1] += 1,
                Event::Error(_) => seen[2] += 1,
            }
        }
    }
    assert!(seen.iter().all(|&n| n > 20), "too little variety: {seen:?}");
}
