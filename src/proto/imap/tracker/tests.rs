//! Tests of the passive session tracker: IDLE, SELECT, counts, literals
//! split across chunks, blockers.

use super::*;

fn selected_idle() -> ImapTracker {
    let mut t = ImapTracker::new();
    t.client_bytes(b"a1 SELECT INBOX\r\n");
    t.backend_bytes(b"* FLAGS (\\Seen)\r\n* 3 EXISTS\r\n* OK [UIDVALIDITY 1700] UIDs valid\r\na1 OK [READ-WRITE] Select completed.\r\n");
    t.client_bytes(b"a2 IDLE\r\n");
    t.backend_bytes(b"+ idling\r\n");
    t
}

#[test]
fn an_idle_session_in_a_selected_mailbox_is_movable_with_what_to_replay() {
    let t = selected_idle();
    let s = t.movable().unwrap();
    assert_eq!(s.select, Some(("SELECT", &b"INBOX"[..])));
    assert_eq!((s.uidvalidity, s.exists), (1700, 3));
    assert_eq!(s.idle_tag, Some(&b"a2"[..]));
    assert!(!s.condstore);
}

#[test]
fn counts_follow_exists_and_expunge_and_done_ends_movability() {
    let mut t = selected_idle();
    t.backend_bytes(b"* 4 EXISTS\r\n* 2 EXPUNGE\r\n* 1 FETCH (FLAGS (\\Seen))\r\n");
    assert_eq!(t.movable().unwrap().exists, 3);
    t.client_bytes(b"DONE\r\n");
    assert_eq!(t.movable().unwrap_err(), "not idling");
    t.backend_bytes(b"a2 OK Idle completed.\r\n");
    assert_eq!(t.movable().unwrap_err(), "not idling");
}

#[test]
fn a_command_before_the_continuation_or_a_partial_line_is_not_movable() {
    let mut t = ImapTracker::new();
    t.client_bytes(b"a1 EXAMINE \"Sent Items\"\r\n");
    t.backend_bytes(b"* 0 EXISTS\r\na1 OK [READ-ONLY] done\r\n");
    t.client_bytes(b"a2 IDLE\r\n");
    assert!(t.movable().is_err(), "no + yet");
    t.backend_bytes(b"+ idl");
    assert!(t.movable().is_err(), "half a line");
    t.backend_bytes(b"ing\r\n");
    let s = t.movable().unwrap();
    assert_eq!(s.select, Some(("EXAMINE", &b"\"Sent Items\""[..])));
    t.client_bytes(b"DO");
    assert!(t.movable().is_err());
}

#[test]
fn literals_are_skipped_even_when_split_and_containing_line_ends() {
    let mut t = selected_idle();
    t.client_bytes(b"DONE\r\n");
    t.backend_bytes(b"a2 OK done\r\n");
    t.client_bytes(b"a3 UID FETCH 1 BODY[]\r\n");
    t.backend_bytes(b"* 1 FETCH (UID 1 BODY[] {12}\r\na9 OK fake\r");
    t.backend_bytes(b"\n)\r\n* 9 EXISTS\r\na3 OK Fetch completed.\r\n");
    t.client_bytes(b"a4 IDLE\r\n");
    t.backend_bytes(b"+ idling\r\n");
    let s = t.movable().unwrap();
    assert_eq!(s.exists, 9, "the literal's 'a9 OK' was not read as a reply");
    assert_eq!(s.idle_tag, Some(&b"a4"[..]));
}

#[test]
fn an_unauthenticated_style_idle_free_session_moves_only_without_commands() {
    let mut t = ImapTracker::new();
    assert!(t.movable().unwrap().select.is_none());
    t.client_bytes(b"x LIST \"\" *\r\n");
    assert!(t.movable().is_err());
    t.backend_bytes(b"* LIST () \"/\" INBOX\r\nx OK done\r\n");
    assert!(t.movable().is_ok());
}

#[test]
fn blockers_make_the_session_unmovable_for_good() {
    for command in [
        &b"c COMPRESS DEFLATE\r\n"[..],
        b"c NOTIFY SET (selected MessageNew)\r\n",
        b"c UID SEARCH RETURN (SAVE) ALL\r\n",
        b"c FETCH $ (FLAGS)\r\n",
        b"c SEARCH RETURN (UPDATE) ALL\r\n",
    ] {
        let mut t = selected_idle();
        t.client_bytes(b"DONE\r\n");
        t.backend_bytes(b"a2 OK done\r\n");
        t.client_bytes(command);
        t.backend_bytes(b"c OK done\r\nc2 OK x\r\n");
        t.client_bytes(b"a5 IDLE\r\n");
        t.backend_bytes(b"+ idling\r\n");
        assert!(t.movable().is_err(), "{}", String::from_utf8_lossy(command));
    }
}

#[test]
fn condstore_is_followed_from_enabled_and_from_commands() {
    let mut t = ImapTracker::new();
    t.client_bytes(b"e ENABLE QRESYNC\r\n");
    t.backend_bytes(b"* ENABLED QRESYNC\r\ne OK enabled\r\n");
    let s = t.movable().unwrap();
    assert!(s.qresync && s.condstore);
    let mut t = ImapTracker::new();
    t.client_bytes(b"s STATUS INBOX (HIGHESTMODSEQ)\r\n");
    t.backend_bytes(b"s OK done\r\n");
    assert!(t.movable().unwrap().condstore);
}

#[test]
fn a_failed_select_leaves_nothing_selected_and_vanished_lowers_the_count() {
    let mut t = selected_idle();
    t.client_bytes(b"DONE\r\n");
    t.backend_bytes(b"a2 OK done\r\n");
    t.client_bytes(b"b SELECT nosuch\r\n");
    t.backend_bytes(b"b NO Mailbox doesn't exist\r\n");
    assert_eq!(t.mailbox(), Mailbox::None);
    // 3 messages: VANISHED counts its UIDs, EARLIER changes nothing.
    let mut t = selected_idle();
    t.backend_bytes(b"* VANISHED 7,5:6\r\n");
    assert_eq!(t.movable().unwrap().exists, 0);
    let mut t = selected_idle();
    t.backend_bytes(b"* VANISHED 9\r\n* VANISHED (EARLIER) 1:4\r\n");
    assert_eq!(t.movable().unwrap().exists, 2);
    // More than the client has, or a set too long to count: unknown.
    let mut t = selected_idle();
    t.backend_bytes(b"* VANISHED 5:8\r\n");
    assert!(t.movable().is_err());
    t.backend_bytes(b"* 2 EXISTS\r\n");
    assert_eq!(t.movable().unwrap().exists, 2);
    let mut t = selected_idle();
    // Three UIDs, but past the head bound: not counted.
    let long = b"* VANISHED 4000000000:4000000000,4000000002:4000000002,4000000004\r\n";
    assert!(long.len() > RESPONSE_HEAD);
    t.backend_bytes(long);
    assert!(t.movable().is_err());
}

#[test]
fn a_long_tag_blocks_and_a_long_line_is_cut_not_kept() {
    let mut t = ImapTracker::new();
    let long = vec![b'x'; MAX_TAG + 1];
    t.client_bytes(&long);
    t.client_bytes(b" NOOP\r\n");
    assert_eq!(t.movable().unwrap_err(), "tag too long");
    let mut t = ImapTracker::new();
    let mut line = b"f UID FETCH ".to_vec();
    line.extend(std::iter::repeat_n(b'1', 10_000));
    line.extend_from_slice(b" (FLAGS)\r\n");
    t.client_bytes(&line);
    t.backend_bytes(b"f OK done\r\n");
    assert!(t.movable().is_err(), "CONDSTORE use unknown");
}
