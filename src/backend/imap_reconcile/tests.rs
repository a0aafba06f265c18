//! Tests of the pure reconcile parts: UID sets, their difference, the
//! sequence numbers of EXPUNGE, VANISHED, the FETCH lines per extension,
//! and that the session tracker ends with the new view's count.

use super::*;
use crate::proto::imap::tracker::ImapTracker;

fn set(text: &str) -> UidSet {
    UidSet::parse(text.as_bytes()).unwrap()
}

fn update(uid: u32, flags: &str, modseq: u64) -> FlagUpdate {
    FlagUpdate {
        uid,
        flags: flags.as_bytes().to_vec(),
        modseq,
    }
}

fn text(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

const PLAIN: ClientExtensions = ClientExtensions {
    condstore: false,
    qresync: false,
};

#[test]
fn uid_sets_parse_merge_and_refuse_what_is_not_ascending() {
    let mut pushed = UidSet::default();
    for uid in [1, 2, 3, 7, 9, 10] {
        pushed.push(uid).unwrap();
    }
    assert_eq!(pushed.to_text(), "1:3,7,9:10");
    assert!(pushed.push(10).is_err());
    let s = set("1:3,4,7,9:12");
    assert_eq!(s.to_text(), "1:4,7,9:12");
    assert_eq!((s.len(), s.min(), s.max()), (9, Some(1), Some(12)));
    assert_eq!(set("5:2").to_text(), "2:5");
    assert_eq!(UidSet::parse(b"3,2"), None, "descending");
    assert_eq!(UidSet::parse(b"1:4,3"), None, "overlapping");
    assert_eq!(UidSet::parse(b"0"), None, "UIDs start at 1");
    assert_eq!(UidSet::parse(b"1,,2"), None);
    assert_eq!(UidSet::parse(b"*"), None);
    let many: Vec<String> = (0..=MAX_UID_RANGES)
        .map(|i| (2 * i + 1).to_string())
        .collect();
    assert_eq!(UidSet::parse(many.join(",").as_bytes()), None, "capped");
}

#[test]
fn the_difference_of_two_sets_is_every_uid_of_one_missing_in_the_other() {
    let old = set("1:10,20:25,30");
    let new = set("2,4:8,21:24,30:31");
    assert_eq!(old.minus(&new).to_text(), "1,3,9:10,20,25");
    assert_eq!(new.minus(&old).to_text(), "31");
    assert!(old.minus(&old).is_empty());
    assert_eq!(old.minus(&UidSet::default()), old);
    assert!(UidSet::default().minus(&old).is_empty());
    // Brute force against the same sets, UID by UID.
    let has = |s: &UidSet, u: u32| s.positions().of(u).is_some();
    let expect: Vec<u32> = (1..40)
        .filter(|u| has(&old, *u) && !has(&new, *u))
        .collect();
    let got: Vec<u32> = {
        let mut v: Vec<u32> = old.minus(&new).descending().collect();
        v.reverse();
        v
    };
    assert_eq!(got, expect);
}

#[test]
fn sequence_numbers_are_positions_in_the_set() {
    let s = set("3:5,9,20:21");
    let p = s.positions();
    let seqs: Vec<Option<u64>> = [3, 5, 6, 9, 20, 21, 22, 1]
        .iter()
        .map(|u| p.of(*u))
        .collect();
    assert_eq!(
        seqs,
        [
            Some(1),
            Some(3),
            None,
            Some(4),
            Some(5),
            Some(6),
            None,
            None
        ]
    );
}

#[test]
fn expunges_go_out_highest_first_with_the_clients_sequence_numbers() {
    // The client knows UIDs 1..=6 as 1..=6; 2, 3 and 6 are gone, 7 is new.
    let (old, new) = (set("1:6"), set("1,4:5,7"));
    let views = Views {
        old: &old,
        new: &new,
        updates: &[],
        flag_lists: &[],
        old_flags: None,
    };
    let (out, done) = reconcile(&views, PLAIN).unwrap();
    assert_eq!(
        text(&out),
        ["* 6 EXPUNGE", "* 3 EXPUNGE", "* 2 EXPUNGE", "* 4 EXISTS"]
    );
    assert_eq!(
        done,
        Reconciled {
            expunged: 3,
            appended: 1,
            flags: 0
        }
    );
    // The tracker, fed the same lines, ends with the new view's count.
    let mut t = ImapTracker::new();
    t.client_bytes(b"a SELECT INBOX\r\n");
    t.backend_bytes(b"* 6 EXISTS\r\na OK done\r\n");
    t.backend_bytes(&out);
    assert_eq!(u64::from(t.exists()), new.len());
}

#[test]
fn a_qresync_client_gets_one_vanished_and_the_count_again() {
    let (old, new) = (set("1:6"), set("1,4:5"));
    let q = ClientExtensions {
        condstore: true,
        qresync: true,
    };
    let views = Views {
        old: &old,
        new: &new,
        updates: &[update(4, "\\Seen", 9)],
        flag_lists: &[],
        old_flags: None,
    };
    let (out, _) = reconcile(&views, q).unwrap();
    assert_eq!(
        text(&out),
        [
            "* VANISHED 2:3,6",
            "* 3 EXISTS",
            "* 2 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (9))"
        ]
    );
    let mut t = ImapTracker::new();
    t.client_bytes(b"e ENABLE QRESYNC\r\n");
    t.backend_bytes(b"* ENABLED QRESYNC\r\ne OK\r\n");
    t.client_bytes(b"a SELECT INBOX\r\n");
    t.backend_bytes(b"* 6 EXISTS\r\n* OK [UIDVALIDITY 5] x\r\na OK done\r\n");
    t.client_bytes(b"i IDLE\r\n");
    t.backend_bytes(b"+ idling\r\n");
    t.backend_bytes(&out);
    assert_eq!(t.movable().unwrap().exists, 3, "the count is known again");
}

#[test]
fn flag_changes_carry_modseq_only_for_condstore_and_uid_only_for_qresync() {
    let (old, new) = (set("1:3"), set("2:3"));
    let updates = [update(3, "\\Flagged $Work", 12), update(1, "\\Seen", 11)];
    let lists = [
        b"* FLAGS (\\Seen \\Flagged $Work)".to_vec(),
        b"* OK [PERMANENTFLAGS (\\Seen \\Flagged $Work \\*)] Flags permitted.".to_vec(),
    ];
    let views = Views {
        old: &old,
        new: &new,
        updates: &updates,
        flag_lists: &lists,
        old_flags: Some(b"* FLAGS (\\Seen \\Flagged $Work)"),
    };
    let (plain, done) = reconcile(&views, PLAIN).unwrap();
    assert_eq!(
        text(&plain),
        [
            "* 1 EXPUNGE",
            "* FLAGS (\\Seen \\Flagged $Work)",
            "* OK [PERMANENTFLAGS (\\Seen \\Flagged $Work \\*)] Flags permitted.",
            "* 2 FETCH (FLAGS (\\Flagged $Work))"
        ],
        "UID 1 is expunged: no FETCH for it"
    );
    assert_eq!(done.flags, 1);
    assert!(!String::from_utf8_lossy(&plain).contains("MODSEQ"));
    let condstore = ClientExtensions {
        condstore: true,
        qresync: false,
    };
    let (c, _) = reconcile(&views, condstore).unwrap();
    assert_eq!(
        text(&c).last().unwrap(),
        "* 2 FETCH (FLAGS (\\Flagged $Work) MODSEQ (12))"
    );
    // System flags only, the same keyword list: the lists are not repeated.
    let only_seen = [update(2, "\\Seen", 5)];
    let views = Views {
        updates: &only_seen,
        ..views
    };
    let (out, _) = reconcile(&views, PLAIN).unwrap();
    assert_eq!(text(&out), ["* 1 EXPUNGE", "* 1 FETCH (FLAGS (\\Seen))"]);
    // A keyword the client was not told of: the lists go first.
    let views = Views {
        old_flags: Some(b"* FLAGS (\\Seen \\Flagged)"),
        ..views
    };
    let (out, _) = reconcile(&views, PLAIN).unwrap();
    assert_eq!(text(&out)[1], "* FLAGS (\\Seen \\Flagged $Work)");
    assert_eq!(text(&out).len(), 4);
}

#[test]
fn what_cannot_be_reconciled_safely_is_an_error() {
    // A UID below the highest the client knows appeared: not one history.
    let (old, new) = (set("1,5"), set("1,3,5"));
    let views = Views {
        old: &old,
        new: &new,
        updates: &[],
        flag_lists: &[],
        old_flags: None,
    };
    assert!(reconcile(&views, PLAIN).is_err());
    // Too many EXPUNGE lines (a QRESYNC client would get one VANISHED).
    let max = u32::try_from(MAX_EXPUNGES).unwrap() + 2;
    let old = set(&format!("1:{max}"));
    let new = set("1");
    let views = Views {
        old: &old,
        new: &new,
        updates: &[],
        flag_lists: &[],
        old_flags: None,
    };
    assert!(reconcile(&views, PLAIN).is_err());
    let q = ClientExtensions {
        condstore: true,
        qresync: true,
    };
    assert_eq!(
        text(&reconcile(&views, q).unwrap().0),
        [format!("* VANISHED 2:{max}"), "* 1 EXISTS".to_string()]
    );
    // Nothing changed: nothing said.
    let same = set("1:4");
    let views = Views {
        old: &same,
        new: &same,
        updates: &[],
        flag_lists: &[],
        old_flags: None,
    };
    let (out, done) = reconcile(&views, PLAIN).unwrap();
    assert!(out.is_empty() && !done.any());
}

#[test]
fn listed_uids_and_fetch_flag_lines_are_read() {
    assert_eq!(
        listed(b"* 3 FETCH (UID 7)"),
        Listed::Message { seq: 3, uid: 7 }
    );
    assert_eq!(
        listed(b"* 3 FETCH (UID 7 MODSEQ (12))"),
        Listed::Message { seq: 3, uid: 7 }
    );
    assert_eq!(
        listed(b"* 3 FETCH (UID 7 FLAGS (\\Seen))"),
        Listed::OtherFetch
    );
    assert_eq!(listed(b"* 3 FETCH (FLAGS (\\Seen))"), Listed::OtherFetch);
    assert_eq!(listed(b"* 3 EXPUNGE"), Listed::NotFetch);
    assert_eq!(listed(b"* OK [UIDVALIDITY 3] x"), Listed::NotFetch);
    let mut list = Listing::default();
    for (seq, uid) in [(1, 1), (2, 2), (3, 5), (4, 6), (5, 9)] {
        list.add(seq, uid).unwrap();
    }
    assert!(list.add(7, 10).is_err(), "a sequence number skipped");
    assert!(list.add(6, 9).is_err(), "a UID not above the last");
    assert_eq!(list.finish().to_text(), "1:2,5:6,9");
    assert_eq!(
        flag_fetch(b"* 2 FETCH (UID 7 MODSEQ (15) FLAGS (\\Seen \\Recent $x))"),
        Some(update(7, "\\Seen $x", 15))
    );
    assert_eq!(
        flag_fetch(b"* 2 FETCH (FLAGS () UID 7 MODSEQ (15))"),
        Some(update(7, "", 15))
    );
    assert_eq!(flag_fetch(b"* 2 FETCH (FLAGS (\\Seen))"), None, "no UID");
    assert_eq!(flag_fetch(b"* 2 EXPUNGE"), None);
    assert_eq!(
        flag_fetch(b"* 2 FETCH (UID 7 RFC822.SIZE 5 FLAGS () MODSEQ (1))"),
        None
    );
}
