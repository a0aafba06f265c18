//! The shared in-memory mail store behind the development backends.
//!
//! Every dev backend — the three of `mailpin run --dev` and the simulated
//! backends of the load test — reads and writes one [`Store`], the way real
//! backends share one mail store. Users spring into being on first login
//! with an `INBOX` holding a welcome message; mailboxes hold messages with a
//! UID, flags, an internal date and their bytes.
//!
//! The store is thread-safe (`Arc<Mutex<..>>`) so tests and the load test
//! may deliver mail from any thread. Every method takes the lock, does its
//! work and lets go before returning: callers never hold it across an
//! `await`. Bodies are shared (`Arc<[u8]>`), so handing a message out is
//! cheap.
//!
//! Sessions that wait for new mail (IMAP IDLE) register a
//! [`MailboxWatcher`]; any append to that mailbox wakes it, from whatever
//! thread the append came.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::SystemTime;

/// The name of the mailbox every user has; matched case-insensitively.
pub const INBOX: &str = "INBOX";

/// The hierarchy delimiter of mailbox names.
pub const DELIMITER: char = '/';

/// The flag that marks a message as read.
pub const SEEN: &str = "\\Seen";

/// The flag that marks a message for removal by EXPUNGE.
pub const DELETED: &str = "\\Deleted";

/// What went wrong in a store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The mailbox does not exist.
    NoSuchMailbox,
    /// CREATE of a mailbox that exists already.
    AlreadyExists,
    /// DELETE or CREATE of a name that may not be changed (INBOX, empty).
    Forbidden,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreError::NoSuchMailbox => "Mailbox doesn't exist",
            StoreError::AlreadyExists => "Mailbox already exists",
            StoreError::Forbidden => "That mailbox name can't be changed",
        })
    }
}

impl std::error::Error for StoreError {}

/// One stored message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its UID in its mailbox; never reused within one UIDVALIDITY.
    pub uid: u32,
    /// Its flags, system flags spelled as in IMAP (`\Seen`), no duplicates.
    pub flags: Vec<String>,
    /// When it arrived (or the date APPEND gave).
    pub internal_date: SystemTime,
    /// The whole message, headers and body, as delivered.
    pub body: Arc<[u8]>,
}

impl Message {
    /// Whether the message carries `flag` (compared case-insensitively).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }
}

/// What SELECT and STATUS report about a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxStatus {
    /// The mailbox's UIDVALIDITY.
    pub uid_validity: u32,
    /// The UID the next message will get.
    pub uid_next: u32,
    /// Number of messages.
    pub messages: u32,
    /// Number of messages without `\Seen`.
    pub unseen: u32,
    /// Sequence number of the first message without `\Seen`, if any.
    pub first_unseen: Option<u32>,
}

/// How STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagChange {
    /// `FLAGS`: replace the set.
    Replace,
    /// `+FLAGS`: add to it.
    Add,
    /// `-FLAGS`: remove from it.
    Remove,
}

/// A wake-up that a waiting session registers with a mailbox: it fires on
/// every message appended there, from any thread.
#[derive(Debug, Default)]
pub struct MailboxWatcher {
    changed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl MailboxWatcher {
    /// A new watcher, not yet fired.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Fires the watcher: marks it changed and wakes whoever waits.
    fn fire(&self) {
        self.changed.store(true, Ordering::Release);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }

    /// Waits until the watcher has fired since the last wait returned.
    pub async fn changed(&self) {
        poll_fn(|cx| {
            if self.changed.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            *lock(&self.waker) = Some(cx.waker().clone());
            // Re-check after registering, so a fire in between is not lost.
            if self.changed.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// One mailbox: its messages in UID order and who waits on it.
#[derive(Debug)]
struct Mailbox {
    uid_validity: u32,
    uid_next: u32,
    messages: Vec<Message>,
    watchers: Vec<Weak<MailboxWatcher>>,
}

impl Mailbox {
    fn new(uid_validity: u32) -> Self {
        Self {
            uid_validity,
            uid_next: 1,
            messages: Vec::new(),
            watchers: Vec::new(),
        }
    }

    fn append(&mut self, body: Arc<[u8]>, flags: Vec<String>, date: SystemTime) -> u32 {
        let uid = self.uid_next;
        self.uid_next += 1;
        self.messages.push(Message {
            uid,
            flags,
            internal_date: date,
            body,
        });
        self.watchers.retain(|w| match w.upgrade() {
            Some(watcher) => {
                watcher.fire();
                true
            }
            None => false,
        });
        uid
    }

    fn find(&self, uid: u32) -> Option<usize> {
        self.messages.binary_search_by_key(&uid, |m| m.uid).ok()
    }
}

/// One user's mailboxes, keyed by name (INBOX spelled [`INBOX`]).
#[derive(Debug, Default)]
struct Account {
    mailboxes: BTreeMap<String, Mailbox>,
}

#[derive(Debug)]
struct State {
    users: HashMap<String, Account>,
    /// Source of UIDVALIDITY values, so a recreated mailbox gets a new one.
    next_uid_validity: u32,
}

impl State {
    fn new_uid_validity(&mut self) -> u32 {
        let v = self.next_uid_validity;
        self.next_uid_validity = self.next_uid_validity.wrapping_add(1).max(1);
        v
    }

    fn account(&mut self, user: &str) -> &mut Account {
        let key = user_key(user);
        if !self.users.contains_key(&key) {
            let mut inbox = Mailbox::new(self.new_uid_validity());
            inbox.append(welcome_message(user).into(), Vec::new(), SystemTime::now());
            let mut account = Account::default();
            account.mailboxes.insert(INBOX.to_string(), inbox);
            self.users.insert(key.clone(), account);
        }
        self.users.get_mut(&key).expect("account inserted above")
    }

    fn mailbox(&mut self, user: &str, name: &str) -> Result<&mut Mailbox, StoreError> {
        self.account(user)
            .mailboxes
            .get_mut(&mailbox_key(name))
            .ok_or(StoreError::NoSuchMailbox)
    }
}

/// The shared in-memory store; cheap to clone (all clones are one store).
#[derive(Debug, Clone)]
pub struct Store {
    state: Arc<Mutex<State>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// Locks a mutex, carrying on if a panicking thread poisoned it (the data
/// is plain mail, always in a consistent state between statements).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The key a login name is stored under: lower-cased, so `Alice` and
/// `alice` share one account, as on most real servers.
fn user_key(user: &str) -> String {
    user.to_lowercase()
}

/// The key a mailbox name is stored under: `INBOX` in any case is INBOX,
/// every other name is kept as given.
fn mailbox_key(name: &str) -> String {
    if name.eq_ignore_ascii_case(INBOX) {
        INBOX.to_string()
    } else {
        name.to_string()
    }
}

/// The message every new account finds in its INBOX.
fn welcome_message(user: &str) -> Vec<u8> {
    let user: String = user.chars().filter(|c| !c.is_control()).collect();
    format!(
        "From: mailpin <postmaster@mailpin.invalid>\r\n\
         To: {user}\r\n\
         Subject: Welcome to mailpin\r\n\
         Message-ID: <welcome@mailpin.invalid>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Hello {user},\r\n\
         \r\n\
         this mailbox lives in the memory of a mailpin development backend.\r\n\
         Everything here disappears when mailpin stops.\r\n"
    )
    .into_bytes()
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                users: HashMap::new(),
                next_uid_validity: 1,
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Makes sure `user` has an account, creating it (INBOX with a welcome
    /// message) on first use. Logins call this.
    pub fn ensure_user(&self, user: &str) {
        self.state().account(user);
    }

    /// Whether `user` has an account yet.
    pub fn has_user(&self, user: &str) -> bool {
        self.state().users.contains_key(&user_key(user))
    }

    /// Puts a message of the given bytes into `user`'s `mailbox`, as a mail
    /// delivery would: no flags, arrival now. Creates the user if needed.
    /// Returns the new message's UID. Any session IDLE on that mailbox is
    /// woken.
    pub fn deliver(
        &self,
        user: &str,
        mailbox: &str,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<u32, StoreError> {
        self.append(user, mailbox, bytes.into(), Vec::new(), SystemTime::now())
    }

    /// Appends a message with the given flags and internal date (IMAP
    /// APPEND). Returns the new UID.
    pub fn append(
        &self,
        user: &str,
        mailbox: &str,
        bytes: Vec<u8>,
        flags: Vec<String>,
        date: SystemTime,
    ) -> Result<u32, StoreError> {
        let mut state = self.state();
        let mb = state.mailbox(user, mailbox)?;
        Ok(mb.append(bytes.into(), dedup_flags(flags), date))
    }

    /// The names of `user`'s mailboxes, INBOX first.
    pub fn mailboxes(&self, user: &str) -> Vec<String> {
        let mut state = self.state();
        let account = state.account(user);
        let mut names: Vec<String> = account.mailboxes.keys().cloned().collect();
        names.sort_by_key(|n| n != INBOX);
        names
    }

    /// Creates a mailbox. A trailing delimiter is dropped (RFC 3501 6.3.3).
    pub fn create(&self, user: &str, name: &str) -> Result<(), StoreError> {
        let name = name.trim_end_matches(DELIMITER);
        if name.is_empty() || name.eq_ignore_ascii_case(INBOX) {
            return Err(if name.is_empty() {
                StoreError::Forbidden
            } else {
                StoreError::AlreadyExists
            });
        }
        let mut state = self.state();
        let uid_validity = state.new_uid_validity();
        let account = state.account(user);
        if account.mailboxes.contains_key(name) {
            return Err(StoreError::AlreadyExists);
        }
        account
            .mailboxes
            .insert(name.to_string(), Mailbox::new(uid_validity));
        Ok(())
    }

    /// Deletes a mailbox and its messages. INBOX can't be deleted.
    pub fn delete(&self, user: &str, name: &str) -> Result<(), StoreError> {
        if name.eq_ignore_ascii_case(INBOX) {
            return Err(StoreError::Forbidden);
        }
        let mut state = self.state();
        match state.account(user).mailboxes.remove(name) {
            Some(_) => Ok(()),
            None => Err(StoreError::NoSuchMailbox),
        }
    }

    /// What SELECT and STATUS report about a mailbox.
    pub fn status(&self, user: &str, mailbox: &str) -> Result<MailboxStatus, StoreError> {
        let mut state = self.state();
        let mb = state.mailbox(user, mailbox)?;
        let first_unseen = mb
            .messages
            .iter()
            .position(|m| !m.has_flag(SEEN))
            .map(|i| i as u32 + 1);
        Ok(MailboxStatus {
            uid_validity: mb.uid_validity,
            uid_next: mb.uid_next,
            messages: mb.messages.len() as u32,
            unseen: mb.messages.iter().filter(|m| !m.has_flag(SEEN)).count() as u32,
            first_unseen,
        })
    }

    /// The UIDVALIDITY and the UIDs of all messages of a mailbox, in order:
    /// the message sequence a session shows its client.
    pub fn uids(&self, user: &str, mailbox: &str) -> Result<(u32, Vec<u32>), StoreError> {
        let mut state = self.state();
        let mb = state.mailbox(user, mailbox)?;
        Ok((mb.uid_validity, mb.messages.iter().map(|m| m.uid).collect()))
    }

    /// Copies of the messages with the given UIDs (missing ones skipped),
    /// in the order asked.
    pub fn messages(
        &self,
        user: &str,
        mailbox: &str,
        uids: &[u32],
    ) -> Result<Vec<Message>, StoreError> {
        let mut state = self.state();
        let mb = state.mailbox(user, mailbox)?;
        Ok(uids
            .iter()
            .filter_map(|uid| mb.find(*uid).map(|i| mb.messages[i].clone()))
            .collect())
    }

    /// Changes the flags of the messages with the given UIDs and returns
    /// them as they are afterwards.
    pub fn change_flags(
        &self,
        user: &str,
        mailbox: &str,
        uids: &[u32],
        change: FlagChange,
        flags: &[String],
    ) -> Result<Vec<Message>, StoreError> {
        let mut state = self.state();
        let mb = state.mailbox(user, mailbox)?;
        let mut changed = Vec::with_capacity(uids.len());
        for uid in uids {
            let Some(i) = mb.find(*uid) else { continue };
            let msg = &mut mb.messages[i];
            match change {
                FlagChange::Replace => msg.flags = dedup_flags(flags.to_vec()),
                FlagChange::Add => {
                    for f in flags {
                        if !msg.has_flag(f) {
                            msg.flags.push(f.clone());
                        }
                    }
                }
                FlagChange::Remove => msg
                    .flags
                    .retain(|have| !flags.iter().any(|f| f.eq_ignore_ascii_case(have))),
            }
            changed.push(msg.clone());
        }
        Ok(changed)
    }

    /// Removes the messages flagged `\Deleted` (only those among `only`,
    /// if given: UID EXPUNGE) and returns their UIDs in ascending order.
    pub fn expunge(
        &self,
        user: &str,
        mailbox: &str,
        only: Option<&[u32]>,
    ) -> Result<Vec<u32>, StoreError> {
        let mut state = self.state();
        let mb = state.mailbox(user, mailbox)?;
        let mut gone = Vec::new();
        mb.messages.retain(|m| {
            let doomed = m.has_flag(DELETED) && only.is_none_or(|uids| uids.contains(&m.uid));
            if doomed {
                gone.push(m.uid);
            }
            !doomed
        });
        Ok(gone)
    }

    /// Registers `watcher` to fire on every append to the mailbox, for as
    /// long as the caller keeps the `Arc` alive.
    pub fn watch(
        &self,
        user: &str,
        mailbox: &str,
        watcher: &Arc<MailboxWatcher>,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        let mb = state.mailbox(user, mailbox)?;
        mb.watchers.retain(|w| w.strong_count() > 0);
        mb.watchers.push(Arc::downgrade(watcher));
        Ok(())
    }
}

/// Drops repeated flags (case-insensitively), keeping the first spelling.
fn dedup_flags(flags: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(flags.len());
    for f in flags {
        if !out.iter().any(|have| have.eq_ignore_ascii_case(&f)) {
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_user_gets_inbox_with_welcome_message() {
        let store = Store::new();
        assert!(!store.has_user("alice"));
        store.ensure_user("Alice");
        assert!(store.has_user("alice"));
        assert_eq!(store.mailboxes("alice"), vec!["INBOX".to_string()]);
        let (_, uids) = store.uids("alice", "inbox").unwrap();
        assert_eq!(uids, vec![1]);
        let msgs = store.messages("alice", "INBOX", &uids).unwrap();
        assert!(msgs[0].body.starts_with(b"From: mailpin"));
    }

    #[test]
    fn deliver_assigns_increasing_uids_and_wakes_watchers() {
        let store = Store::new();
        let watcher = MailboxWatcher::new();
        store.watch("bob", "INBOX", &watcher).unwrap();
        assert_eq!(store.deliver("bob", "INBOX", vec![b'x'; 100]).unwrap(), 2);
        assert_eq!(store.deliver("bob", "INBOX", "y").unwrap(), 3);
        assert!(watcher.changed.load(Ordering::Acquire));
        let status = store.status("bob", "INBOX").unwrap();
        assert_eq!((status.messages, status.unseen, status.uid_next), (3, 3, 4));
        assert_eq!(
            store.deliver("bob", "Nope", "z"),
            Err(StoreError::NoSuchMailbox)
        );
    }

    #[test]
    fn flags_change_and_expunge() {
        let store = Store::new();
        store.deliver("carol", "INBOX", "m2").unwrap();
        let d = vec![DELETED.to_string(), SEEN.to_string()];
        store
            .change_flags("carol", "INBOX", &[1], FlagChange::Add, &d)
            .unwrap();
        let after = store
            .change_flags("carol", "INBOX", &[1], FlagChange::Remove, &[SEEN.into()])
            .unwrap();
        assert_eq!(after[0].flags, vec![DELETED.to_string()]);
        assert_eq!(store.expunge("carol", "INBOX", None).unwrap(), vec![1]);
        assert_eq!(store.uids("carol", "INBOX").unwrap().1, vec![2]);
    }

    #[test]
    fn create_and_delete_mailboxes() {
        let store = Store::new();
        store.create("dave", "Sent/").unwrap();
        assert_eq!(store.create("dave", "Sent"), Err(StoreError::AlreadyExists));
        assert_eq!(
            store.create("dave", "inbox"),
            Err(StoreError::AlreadyExists)
        );
        assert_eq!(store.mailboxes("dave"), vec!["INBOX", "Sent"]);
        assert_eq!(store.delete("dave", "INBOX"), Err(StoreError::Forbidden));
        store.delete("dave", "Sent").unwrap();
        assert_eq!(store.delete("dave", "Sent"), Err(StoreError::NoSuchMailbox));
    }
}
