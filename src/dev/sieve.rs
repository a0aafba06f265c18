//! The dev ManageSieve server (RFC 5804): any user with the dev password;
//! scripts live in memory per dev server thread, keyed by user. It answers
//! CAPABILITY, AUTHENTICATE (the mechanisms of `crate::dev::auth`), XCLIENT, LISTSCRIPTS, PUTSCRIPT,
//! GETSCRIPT, SETACTIVE, DELETESCRIPT, CHECKSCRIPT, HAVESPACE, NOOP and
//! LOGOUT; scripts are stored, not compiled.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::dev::auth::{run_exchange, DevSasl, Framing};
use crate::io::write_bytes;
use crate::proto::client_input::ClientInput;
use crate::proto::sieve::{parse_line, quote, SieveArg};

const IDLE: Duration = Duration::from_secs(600);
const MAX_SCRIPT: usize = 1 << 20;

/// One user's scripts and the active one.
#[derive(Default)]
struct Scripts {
    scripts: BTreeMap<Vec<u8>, Vec<u8>>,
    active: Option<Vec<u8>>,
}

thread_local! {
    static SCRIPTS: RefCell<BTreeMap<String, Scripts>> = const { RefCell::new(BTreeMap::new()) };
}

const CAPABILITIES: &str = "\"IMPLEMENTATION\" \"mailpin dev\"\r\n\"SASL\" \"PLAIN\"\r\n\"SIEVE\" \"fileinto reject envelope vacation\"\r\n\"VERSION\" \"1.0\"\r\n\"XCLIENT\"\r\n";

/// Serves one ManageSieve connection.
pub(crate) async fn serve(mut conn: TcpStream, password: String) {
    let mut input = ClientInput::new();
    let greeting = format!("{CAPABILITIES}OK \"dev ManageSieve ready.\"\r\n");
    if write_bytes(&mut conn, greeting.as_bytes()).await.is_err() {
        return;
    }
    let mut user: Option<String> = None;
    loop {
        let deadline = Instant::now() + IDLE;
        let mut args = Vec::new();
        let complete = loop {
            let Ok(line) = input.line(&mut conn, 65536, deadline).await else {
                return;
            };
            match parse_line(&line, &mut args) {
                Ok(None) => break true,
                Ok(Some(lit)) if lit.len <= MAX_SCRIPT => {
                    match input.exact(&mut conn, lit.len, deadline).await {
                        Ok(b) => args.push(SieveArg::String(b)),
                        Err(_) => return,
                    }
                }
                _ => break false,
            }
        };
        let authenticate = matches!(args.first(), Some(SieveArg::Atom(a)) if a.eq_ignore_ascii_case("AUTHENTICATE"));
        let reply = if complete && authenticate && user.is_none() {
            let mech = args
                .get(1)
                .and_then(SieveArg::as_string)
                .unwrap_or_default();
            match DevSasl::start(mech, &password) {
                None => "NO \"Unsupported authentication mechanism.\"\r\n".to_string(),
                Some(exchange) => {
                    let initial = args.get(2).and_then(SieveArg::as_string);
                    match run_exchange(&mut conn, &mut input, exchange, initial, Framing::Sieve)
                        .await
                    {
                        Err(()) => return,
                        Ok(Some(u)) => {
                            user = Some(u);
                            "OK \"Logged in.\"\r\n".to_string()
                        }
                        Ok(None) => "NO \"Authentication failed.\"\r\n".to_string(),
                    }
                }
            }
        } else if complete {
            answer(&args, &mut user)
        } else {
            "NO \"Syntax error.\"\r\n".to_string()
        };
        if write_bytes(&mut conn, reply.as_bytes()).await.is_err() || reply.starts_with("OK \"Bye")
        {
            return;
        }
    }
}

fn answer(args: &[SieveArg], user: &mut Option<String>) -> String {
    let Some(SieveArg::Atom(name)) = args.first() else {
        return "NO \"Expected a command.\"\r\n".into();
    };
    let s = |i: usize| args.get(i).and_then(SieveArg::as_string);
    let with = |u: &str, f: &mut dyn FnMut(&mut Scripts) -> String| {
        SCRIPTS.with(|m| f(m.borrow_mut().entry(u.to_string()).or_default()))
    };
    match (name.to_ascii_uppercase().as_str(), user.as_deref()) {
        ("CAPABILITY", _) => format!("{CAPABILITIES}OK \"Capability completed.\"\r\n"),
        ("NOOP", _) => "OK \"NOOP completed.\"\r\n".into(),
        ("LOGOUT", _) => "OK \"Bye.\"\r\n".into(),
        ("XCLIENT", None) => "OK \"Updated.\"\r\n".into(),
        (_, None) => "NO \"Authenticate first.\"\r\n".into(),
        ("LISTSCRIPTS", Some(u)) => with(u, &mut |sc| {
            let mut out = String::new();
            for name in sc.scripts.keys() {
                out.push_str(&String::from_utf8_lossy(&quote(name)));
                if sc.active.as_ref() == Some(name) {
                    out.push_str(" ACTIVE");
                }
                out.push_str("\r\n");
            }
            out + "OK \"Listscripts completed.\"\r\n"
        }),
        ("PUTSCRIPT", Some(u)) => match (s(1), s(2)) {
            (Some(n), Some(body)) => with(u, &mut |sc| {
                sc.scripts.insert(n.to_vec(), body.to_vec());
                "OK \"Putscript completed.\"\r\n".into()
            }),
            _ => "NO \"PUTSCRIPT needs a name and a script.\"\r\n".into(),
        },
        ("GETSCRIPT", Some(u)) => with(u, &mut |sc| match s(1).and_then(|n| sc.scripts.get(n)) {
            Some(body) => format!(
                "{{{}}}\r\n{}\r\nOK \"Getscript completed.\"\r\n",
                body.len(),
                String::from_utf8_lossy(body)
            ),
            None => "NO (NONEXISTENT) \"There is no script by that name.\"\r\n".into(),
        }),
        ("SETACTIVE", Some(u)) => with(u, &mut |sc| match s(1) {
            Some(b"") => {
                sc.active = None;
                "OK \"Setactive completed.\"\r\n".into()
            }
            Some(n) if sc.scripts.contains_key(n) => {
                sc.active = Some(n.to_vec());
                "OK \"Setactive completed.\"\r\n".into()
            }
            _ => "NO (NONEXISTENT) \"There is no script by that name.\"\r\n".into(),
        }),
        ("DELETESCRIPT", Some(u)) => with(u, &mut |sc| match s(1) {
            Some(n) if sc.active.as_deref() == Some(n) => {
                "NO (ACTIVE) \"You may not delete an active script.\"\r\n".into()
            }
            Some(n) if sc.scripts.remove(n).is_some() => {
                "OK \"Deletescript completed.\"\r\n".into()
            }
            _ => "NO (NONEXISTENT) \"There is no script by that name.\"\r\n".into(),
        }),
        ("CHECKSCRIPT" | "HAVESPACE", Some(_)) => "OK\r\n".into(),
        _ => "NO \"Unknown command.\"\r\n".into(),
    }
}
