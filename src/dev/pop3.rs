//! The dev POP3 server (RFC 1939, RFC 5034 AUTH with the mechanisms of
//! [`crate::dev::auth`], Dovecot's XCLIENT): any user with the dev password
//! (or, over OAuth, any token); the mailbox is the user's INBOX in the
//! shared [`Store`], so mail delivered over LMTP or appended over IMAP can
//! be read here. DELE marks `\Deleted`; QUIT expunges.

use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::dev::auth::{run_exchange, DevSasl, Framing, DEV_MECHANISMS};
use crate::dev::protocols::Liveness;
use crate::dev::registry::LiveSession;
use crate::dev::store::{FlagChange, Store, INBOX};
use crate::io::write_bytes;
use crate::proto::client_input::ClientInput;
use crate::proto::pop3::{parse_command, pass_argument};

const IDLE: Duration = Duration::from_secs(600);

/// Serves one POP3 connection; a logged-in session is live in `liveness`
/// until QUIT or the end of the connection.
pub(crate) async fn serve(mut conn: TcpStream, store: Store, liveness: Liveness, password: String) {
    let mut input = ClientInput::new();
    if write_bytes(&mut conn, b"+OK dev POP3 ready.\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut user: Option<String> = None;
    let mut logged_in: Option<String> = None;
    let mut live: Option<LiveSession> = None;
    let mut uids: Vec<u32> = Vec::new();
    let mut deleted: Vec<u32> = Vec::new();
    loop {
        let Ok(line) = input.line(&mut conn, 65536, Instant::now() + IDLE).await else {
            return;
        };
        let Some(cmd) = parse_command(&line) else {
            if write_bytes(&mut conn, b"-ERR Unknown command.\r\n")
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        let arg_num = |i: usize| -> Option<usize> {
            std::str::from_utf8(cmd.args.get(i)?).ok()?.parse().ok()
        };
        let reply: Vec<u8> = match (cmd.keyword.as_str(), logged_in.as_deref()) {
            ("CAPA", _) => {
                format!("+OK\r\nUSER\r\nSASL {DEV_MECHANISMS}\r\nUIDL\r\nTOP\r\nRESP-CODES\r\nXCLIENT\r\n.\r\n")
                    .into_bytes()
            }
            ("XCLIENT", None) => b"+OK\r\n".to_vec(),
            ("NOOP", _) => b"+OK\r\n".to_vec(),
            ("QUIT", _) => {
                if let Some(u) = &logged_in {
                    let _ = store.expunge(u, INBOX, Some(&deleted));
                }
                drop(live.take());
                let _ = write_bytes(&mut conn, b"+OK Bye.\r\n").await;
                return;
            }
            ("USER", None) => {
                user = cmd
                    .args
                    .first()
                    .map(|u| String::from_utf8_lossy(u).into_owned());
                b"+OK\r\n".to_vec()
            }
            ("PASS", None) | ("AUTH", None) => {
                let who = if cmd.keyword == "PASS" {
                    user.take()
                        .zip(pass_argument(&line))
                        .filter(|(_, p)| *p == password.as_bytes())
                        .map(|(u, _)| u)
                } else {
                    let mech = cmd.args.first().copied().unwrap_or_default();
                    match DevSasl::start(mech, &password) {
                        Some(exchange) => {
                            let initial = cmd.args.get(1).copied();
                            let run = run_exchange(&mut conn, &mut input, exchange, initial, Framing::Pop3);
                            match run.await {
                                Ok(who) => who,
                                Err(()) => return,
                            }
                        }
                        None => None,
                    }
                };
                match who {
                    Some(u) => {
                        store.ensure_user(&u);
                        uids = store.uids(&u, INBOX).map(|(_, u)| u).unwrap_or_default();
                        live = liveness.login(&u);
                        logged_in = Some(u);
                        b"+OK Logged in.\r\n".to_vec()
                    }
                    _ => b"-ERR [AUTH] Authentication failed.\r\n".to_vec(),
                }
            }
            (_, None) => b"-ERR Log in first.\r\n".to_vec(),
            ("STAT", Some(u)) => {
                let msgs = store.messages(u, INBOX, &uids).unwrap_or_default();
                let size: usize = msgs.iter().map(|m| m.body.len()).sum();
                format!("+OK {} {size}\r\n", msgs.len()).into_bytes()
            }
            ("LIST" | "UIDL", Some(u)) => {
                let msgs = store.messages(u, INBOX, &uids).unwrap_or_default();
                let mut out = b"+OK\r\n".to_vec();
                for (i, m) in msgs.iter().enumerate() {
                    let v = if cmd.keyword == "LIST" {
                        m.body.len()
                    } else {
                        m.uid as usize
                    };
                    out.extend_from_slice(format!("{} {v}\r\n", i + 1).as_bytes());
                }
                out.extend_from_slice(b".\r\n");
                out
            }
            ("RETR" | "TOP", Some(u)) => match arg_num(0).and_then(|n| uids.get(n.wrapping_sub(1)))
            {
                Some(&uid) => {
                    let msg = store.messages(u, INBOX, &[uid]).unwrap_or_default();
                    let mut out = b"+OK\r\n".to_vec();
                    if let Some(m) = msg.first() {
                        for l in m.body.split_inclusive(|&b| b == b'\n') {
                            if l.starts_with(b".") {
                                out.push(b'.');
                            }
                            out.extend_from_slice(l);
                        }
                        if !out.ends_with(b"\n") {
                            out.extend_from_slice(b"\r\n");
                        }
                    }
                    out.extend_from_slice(b".\r\n");
                    out
                }
                None => b"-ERR No such message.\r\n".to_vec(),
            },
            ("DELE", Some(u)) => match arg_num(0).and_then(|n| uids.get(n.wrapping_sub(1))) {
                Some(&uid) => {
                    let _ = store.change_flags(
                        u,
                        INBOX,
                        &[uid],
                        FlagChange::Add,
                        &["\\Deleted".to_string()],
                    );
                    deleted.push(uid);
                    b"+OK Deleted.\r\n".to_vec()
                }
                None => b"-ERR No such message.\r\n".to_vec(),
            },
            ("RSET", Some(u)) => {
                let _ = store.change_flags(
                    u,
                    INBOX,
                    &deleted,
                    FlagChange::Remove,
                    &["\\Deleted".to_string()],
                );
                deleted.clear();
                b"+OK\r\n".to_vec()
            }
            _ => b"-ERR Unknown command.\r\n".to_vec(),
        };
        if write_bytes(&mut conn, &reply).await.is_err() {
            return;
        }
    }
}
