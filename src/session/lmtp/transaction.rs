//! One LMTP mail transaction split over the backends of its recipients.
//!
//! Each backend gets its share of the envelope as one pipelined group
//! (RFC 2920) when it announced PIPELINING — `MAIL FROM` if the transaction
//! is new to it, its `RCPT TO`s, and `DATA` when the client pipelined that
//! too — and the replies are read afterwards, in order. The backends work
//! at the same time: commands, each piece of the message and the final
//! replies go to and come from all of them concurrently. A backend that
//! fails fails only its own recipients, with `451 4.4.0`; the replies the
//! client gets are always one per recipient, in RCPT order, each its own
//! backend's.

use std::rc::Rc;
use std::sync::Arc;

use tracing::{info, warn};

use crate::backend::client_info::ClientInfo;
use crate::backend::lmtp::{open, LmtpBackend, COMMAND_TIMEOUT, DELIVERY_TIMEOUT};
use crate::backend::BackendError;
use crate::proto::smtp::Reply;
use crate::route::backends::{Backend, BackendId, BackendSet};
use crate::session::lmtp::join::join_all;

/// Backend connections whose last transaction ended cleanly, kept for the
/// client's next transaction (one per backend).
pub type IdlePool = Vec<(BackendId, LmtpBackend)>;

/// A recipient the router placed on a backend, before the backend answered.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The recipient's user key (as the router counts it).
    pub key: String,
    /// The backend the router chose.
    pub backend: BackendId,
    /// The client's `RCPT TO:` line, without CRLF.
    pub line: Vec<u8>,
}

/// One mail transaction: from MAIL to the end of the message or RSET.
pub struct Transaction {
    mail_line: Vec<u8>,
    backends: Vec<TxBackend>,
    accepted: Vec<Recipient>,
    /// Recipients asked for so far, accepted or not (for the RCPT cap).
    pub attempted: usize,
    /// The message is coming in BDAT chunks.
    pub bdat: bool,
}

/// A backend taking part in a transaction.
struct TxBackend {
    id: BackendId,
    name: Arc<str>,
    conn: Option<LmtpBackend>,
    /// `MAIL FROM` has gone to this backend in this transaction.
    started: bool,
    /// Its reply to a `DATA` sent ahead, pipelined after its RCPTs.
    data_reply: Option<Reply>,
    /// It takes the message (354 to DATA, or BDAT chunks sent to it).
    in_message: bool,
    /// Why this backend can no longer deliver; the reply its recipients get.
    failed: Option<Reply>,
}

/// A recipient the backend accepted.
struct Recipient {
    key: String,
    backend: usize,
}

/// The `451 4.4.0` a failed backend's recipients get.
pub fn temp_failure(name: &str) -> Reply {
    Reply::new(
        451,
        &format!("4.4.0 Delivery server {name} failed, try again later"),
    )
}

/// The commands for one backend in one step, and where its replies go.
struct Group {
    backend: usize,
    /// Indexes into the step's recipients.
    rcpts: Vec<usize>,
    /// `DATA` follows the RCPTs.
    data: bool,
}

impl Transaction {
    /// A transaction started by the client's `MAIL FROM:` line (no CRLF).
    pub fn new(mail_line: Vec<u8>) -> Transaction {
        Transaction {
            mail_line,
            backends: Vec::new(),
            accepted: Vec::new(),
            attempted: 0,
            bdat: false,
        }
    }

    /// No recipient has been accepted yet.
    pub fn has_recipients(&self) -> bool {
        !self.accepted.is_empty()
    }

    /// The accepted recipients' keys and backends (to release them).
    pub fn recipients(&self) -> impl Iterator<Item = (&str, BackendId)> {
        self.accepted
            .iter()
            .map(|r| (r.key.as_str(), self.backends[r.backend].id))
    }

    /// Asks each recipient's backend to take it and returns the replies
    /// for the client, one per recipient in order. A backend new to the
    /// transaction is opened first (or taken from `idle`); with
    /// `then_data`, `DATA` goes to every backend with recipients right
    /// after its RCPTs, for [`Transaction::start_data`] to use.
    pub async fn add_recipients(
        &mut self,
        rcpts: &[Routed],
        set: &BackendSet,
        client: &ClientInfo,
        idle: &mut IdlePool,
        then_data: bool,
    ) -> Vec<Reply> {
        let mut replies: Vec<Option<Reply>> = vec![None; rcpts.len()];
        let mut groups: Vec<Group> = Vec::new();
        for (i, r) in rcpts.iter().enumerate() {
            let Some(backend) = set.get(r.backend) else {
                replies[i] = Some(Reply::new(
                    451,
                    "4.4.0 Delivery server vanished, try again later",
                ));
                continue;
            };
            let index = self.backend_index(backend);
            match groups.iter_mut().find(|g| g.backend == index) {
                Some(g) => g.rcpts.push(i),
                None => groups.push(Group {
                    backend: index,
                    rcpts: vec![i],
                    data: then_data,
                }),
            }
        }
        if then_data {
            for (index, _) in self.backends.iter().enumerate() {
                let has = self.accepted.iter().any(|r| r.backend == index);
                if has && !groups.iter().any(|g| g.backend == index) {
                    groups.push(Group {
                        backend: index,
                        rcpts: Vec::new(),
                        data: true,
                    });
                }
            }
        }
        // Connections kept from the last transaction, for the backends new
        // to this one.
        let mut reused: Vec<Option<LmtpBackend>> = Vec::with_capacity(groups.len());
        for g in &groups {
            let b = &self.backends[g.backend];
            let keep = if !b.started && b.conn.is_none() && b.failed.is_none() {
                idle.iter()
                    .position(|(id, _)| *id == b.id)
                    .map(|pos| idle.swap_remove(pos).1)
            } else {
                None
            };
            reused.push(keep);
        }
        let mail_line = &self.mail_line;
        let answers = {
            let mut slots: Vec<Option<&mut TxBackend>> =
                self.backends.iter_mut().map(Some).collect();
            let work = groups.iter().zip(reused).filter_map(|(g, kept)| {
                let b = slots[g.backend].take()?;
                let lines: Vec<Vec<u8>> = g.rcpts.iter().map(|&i| rcpts[i].line.clone()).collect();
                let backend = set.get(b.id);
                Some(b.run_group(backend, client, mail_line, lines, g.data, kept))
            });
            join_all(work).await
        };
        let mut taken: Vec<(usize, Recipient)> = Vec::new();
        for (g, answer) in groups.iter().zip(answers) {
            for (&i, reply) in g.rcpts.iter().zip(answer) {
                if reply.is_positive() {
                    info!(user = %rcpts[i].key, backend = %self.backends[g.backend].name, "recipient");
                    taken.push((
                        i,
                        Recipient {
                            key: rcpts[i].key.clone(),
                            backend: g.backend,
                        },
                    ));
                }
                replies[i] = Some(reply);
            }
        }
        // `accepted` follows RCPT order, not backend order.
        taken.sort_by_key(|(i, _)| *i);
        self.accepted.extend(taken.into_iter().map(|(_, r)| r));
        replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Reply::new(451, "4.4.0 Try again later")))
            .collect()
    }

    /// The index of `backend` in this transaction, added if new.
    fn backend_index(&mut self, backend: &Backend) -> usize {
        if let Some(i) = self.backends.iter().position(|b| b.id == backend.id) {
            return i;
        }
        self.backends.push(TxBackend {
            id: backend.id,
            name: backend.name.clone(),
            conn: None,
            started: false,
            data_reply: None,
            in_message: false,
            failed: None,
        });
        self.backends.len() - 1
    }

    /// Has every backend with recipients take the message (`DATA`, unless
    /// it went ahead already). `Err` with the reply for the client when
    /// none will.
    pub async fn start_data(&mut self) -> Result<(), Reply> {
        let accepted = &self.accepted;
        let mut asked = Vec::new();
        for (i, b) in self.backends.iter_mut().enumerate() {
            let has = accepted.iter().any(|r| r.backend == i);
            if !has {
                // A backend that took DATA with no recipient waits for a
                // message it will not get: it cannot be reused.
                if b.data_reply.take().is_some_and(|r| r.code == 354) {
                    b.conn = None;
                }
                continue;
            }
            if b.conn.is_some() {
                asked.push(b);
            }
        }
        let replies = join_all(asked.iter_mut().map(|b| async move {
            match b.data_reply.take() {
                Some(r) => Ok(r),
                None => b.send_one(b"DATA").await,
            }
        }))
        .await;
        let mut first_refusal = None;
        for (b, reply) in asked.into_iter().zip(replies) {
            let reply = match reply {
                Ok(r) if r.code == 354 => {
                    b.in_message = true;
                    continue;
                }
                Ok(r) => r,
                Err(e) => {
                    warn!(backend = %b.name, error = %e, "delivery server failed at DATA");
                    temp_failure(&b.name)
                }
            };
            first_refusal.get_or_insert(reply.clone());
            b.fail(reply);
        }
        if self.backends.iter().any(|b| b.in_message) {
            return Ok(());
        }
        Err(first_refusal
            .unwrap_or_else(|| Reply::new(451, "4.4.0 No delivery server, try again later")))
    }

    /// Starts a BDAT message: every backend with recipients takes the
    /// chunks, except one without CHUNKING, whose recipients fail.
    pub fn start_bdat(&mut self) {
        self.bdat = true;
        for (i, b) in self.backends.iter_mut().enumerate() {
            if !self.accepted.iter().any(|r| r.backend == i) {
                continue;
            }
            match b.conn.as_ref() {
                Some(c) if c.chunking => b.in_message = true,
                Some(_) => {
                    warn!(backend = %b.name, "delivery server lacks CHUNKING");
                    b.fail(Reply::new(
                        451,
                        "4.4.0 Delivery server does not take BDAT, try again with DATA",
                    ));
                }
                None => {}
            }
        }
    }

    /// Writes `bytes` to every backend taking the message, all at once; one
    /// that fails is dropped and its recipients get `451 4.4.0`. Returns the
    /// buffer for reuse when it can.
    pub async fn stream(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        let shared = Rc::new(bytes);
        join_all(
            self.backends
                .iter_mut()
                .filter(|b| b.in_message && b.conn.is_some())
                .map(|b| {
                    let piece = shared.clone();
                    async move {
                        let Some(conn) = b.conn.as_mut() else {
                            return;
                        };
                        if let Err(e) = conn.send_shared(piece).await {
                            warn!(backend = %b.name, error = %e, "delivery server failed during the message");
                            b.fail(temp_failure(&b.name));
                        }
                    }
                }),
        )
        .await;
        Rc::try_unwrap(shared).unwrap_or_default()
    }

    /// After a BDAT chunk that is not the last: each backend taking the
    /// message answers it once.
    pub async fn chunk_replies(&mut self) {
        join_all(
            self.backends
                .iter_mut()
                .filter(|b| b.in_message && b.conn.is_some())
                .map(|b| async move {
                    let Some(conn) = b.conn.as_mut() else {
                        return;
                    };
                    match conn.reply(COMMAND_TIMEOUT).await {
                        Ok(r) if r.is_positive() => {}
                        Ok(r) => b.fail(r),
                        Err(e) => {
                            warn!(backend = %b.name, error = %e, "delivery server failed at BDAT");
                            b.fail(temp_failure(&b.name));
                        }
                    }
                }),
        )
        .await;
    }

    /// After the end of the message: one reply per accepted recipient, in
    /// RCPT order, each from its own backend (read from all backends at
    /// once). Returns the replies' wire form and how many were positive.
    pub async fn final_replies(&mut self) -> (Vec<u8>, usize) {
        let accepted = &self.accepted;
        let per_backend = join_all(self.backends.iter_mut().enumerate().map(|(i, b)| {
            let count = accepted.iter().filter(|r| r.backend == i).count();
            b.read_final(count)
        }))
        .await;
        let mut next = vec![0usize; self.backends.len()];
        let mut out = Vec::new();
        let mut delivered = 0;
        for r in &self.accepted {
            let n = next[r.backend];
            next[r.backend] += 1;
            let reply = per_backend[r.backend]
                .get(n)
                .cloned()
                .unwrap_or_else(|| temp_failure(&self.backends[r.backend].name));
            if reply.is_positive() {
                delivered += 1;
            }
            out.extend_from_slice(&reply.wire);
        }
        info!(
            recipients = self.accepted.len(),
            delivered,
            backends = self.backends.len(),
            "message delivered"
        );
        (out, delivered)
    }

    /// Ends a transaction whose message was delivered: connections that
    /// took part cleanly go to `idle` for the next transaction; the rest
    /// are closed.
    pub fn keep_connections(self, idle: &mut IdlePool) {
        for b in self.backends {
            match b.conn {
                Some(conn) if b.in_message => idle.push((b.id, conn)),
                Some(conn) => {
                    monoio::spawn(conn.quit());
                }
                None => {}
            }
        }
    }

    /// Ends the transaction politely (RSET, LHLO, end of session): every
    /// backend connection is closed with QUIT.
    pub fn close(self) {
        for b in self.backends {
            if let Some(conn) = b.conn {
                monoio::spawn(conn.quit());
            }
        }
    }

    /// Ends the transaction inside a message: connections are dropped
    /// without the end of data, so no backend delivers a partial message.
    pub fn abort(self) {
        drop(self.backends);
    }
}

impl TxBackend {
    /// Marks the backend failed for this transaction with `reply`, dropping
    /// its connection.
    fn fail(&mut self, reply: Reply) {
        self.conn = None;
        self.in_message = false;
        self.failed = Some(reply);
    }

    /// Sends one command and reads its reply; a failure fails the backend.
    async fn send_one(&mut self, line: &[u8]) -> Result<Reply, BackendError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(BackendError::Protocol("no connection".into()));
        };
        let (mut replies, err) = conn.commands(&[line.to_vec()]).await;
        match (replies.pop(), err) {
            (Some(r), _) => Ok(r),
            (None, Some(e)) => Err(e),
            (None, None) => Err(BackendError::Protocol("no reply".into())),
        }
    }

    /// Sends this backend its part of one step — `MAIL FROM` first if the
    /// transaction is new to it, then `lines` (RCPTs) and `DATA` if asked —
    /// and returns one reply per line of `lines`, in order. A connection
    /// from the last transaction (`kept`) that turns out closed is replaced
    /// by a new one before anything is lost.
    async fn run_group(
        &mut self,
        backend: Option<&Backend>,
        client: &ClientInfo,
        mail_line: &[u8],
        lines: Vec<Vec<u8>>,
        data: bool,
        kept: Option<LmtpBackend>,
    ) -> Vec<Reply> {
        let count = lines.len();
        if self.failed.is_none() && self.conn.is_none() && !self.started {
            self.conn = match kept {
                Some(conn) => Some(conn),
                None => self.connect(backend, client).await,
            };
        }
        let Some(conn) = self.conn.as_mut() else {
            let failed = self.failed.clone();
            return vec![failed.unwrap_or_else(|| temp_failure(&self.name)); count];
        };
        let mut batch = Vec::with_capacity(count + 2);
        let with_mail = !self.started;
        if with_mail {
            batch.push(conn.mail_command(mail_line));
        }
        batch.extend(lines);
        if data {
            batch.push(b"DATA".to_vec());
        }
        let (mut replies, mut err) = conn.commands(&batch).await;
        if with_mail && replies.is_empty() && err.is_some() {
            // Nothing was answered: the kept connection had been closed.
            // A fresh one gets the same commands.
            if let Some(mut fresh) = self.connect(backend, client).await {
                batch[0] = fresh.mail_command(mail_line);
                (replies, err) = fresh.commands(&batch).await;
                self.conn = Some(fresh);
            }
        }
        self.started = true;
        let mut replies = replies.into_iter();
        if with_mail {
            match replies.next() {
                Some(mail) if mail.is_positive() => {}
                Some(mail) => {
                    warn!(backend = %self.name, reply = %mail.text(), "delivery server refused MAIL");
                    if let Some(conn) = self.conn.take() {
                        monoio::spawn(conn.quit());
                    }
                    self.failed = Some(mail.clone());
                    return vec![mail; count];
                }
                None => err = err.or(Some(BackendError::Protocol("no reply".into()))),
            }
        }
        let mut out: Vec<Reply> = replies.by_ref().take(count).collect();
        if data {
            self.data_reply = replies.next();
        }
        if let Some(e) = err {
            warn!(backend = %self.name, error = %e, "delivery server failed");
            let failure = temp_failure(&self.name);
            self.fail(failure.clone());
            out.resize(count, failure);
        }
        out
    }

    /// Opens a new connection; `None` (and the backend failed) if it cannot.
    async fn connect(
        &mut self,
        backend: Option<&Backend>,
        client: &ClientInfo,
    ) -> Option<LmtpBackend> {
        let Some(backend) = backend else {
            self.failed = Some(temp_failure(&self.name));
            return None;
        };
        match open(backend, client).await {
            Ok(conn) => Some(conn),
            Err(e) => {
                warn!(backend = %self.name, error = %e, "delivery server unavailable");
                self.failed = Some(temp_failure(&self.name));
                None
            }
        }
    }

    /// Reads the replies of `count` recipients after the end of the
    /// message; a backend that fails gives `451 4.4.0` for the rest.
    async fn read_final(&mut self, count: usize) -> Vec<Reply> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let Some(conn) = self.conn.as_mut().filter(|_| self.in_message) else {
                let failure = self
                    .failed
                    .clone()
                    .unwrap_or_else(|| temp_failure(&self.name));
                out.resize(count, failure);
                break;
            };
            match conn.reply(DELIVERY_TIMEOUT).await {
                Ok(r) => out.push(r),
                Err(e) => {
                    warn!(backend = %self.name, error = %e, "delivery server failed after the message");
                    self.fail(temp_failure(&self.name));
                }
            }
        }
        out
    }
}
