//! Integration tests of the embedded development IMAP backends: real
//! backends on 127.0.0.1:0, driven over real sockets by a small blocking
//! IMAP client (and by curl when it is installed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use mailpin::dev::{spawn_backends, DevBackendConfig, DevBackends, Registry, Store};

/// A bound on every blocking read, so a broken server fails a test
/// instead of hanging it (not used for synchronisation).
const READ_GUARD: Duration = Duration::from_secs(10);

fn start(names: &[&str]) -> DevBackends {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let configs = names
        .iter()
        .map(|n| DevBackendConfig::new(*n, any))
        .collect();
    spawn_backends(configs, Store::new(), Registry::new()).expect("dev backends start")
}

/// A blocking IMAP client that reads whole responses, literals included.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_tag: u32,
}

impl Client {
    /// Connects and reads the greeting.
    fn connect(addr: SocketAddr) -> (Self, String) {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_GUARD)).unwrap();
        let mut client = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            next_tag: 1,
        };
        let greeting = client.response_line();
        (client, greeting)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// One response line, with any literal it announces appended, and the
    /// rest of the line after the literal; CRLFs kept inside, stripped at
    /// the end. Empty at end of stream.
    fn response_line(&mut self) -> String {
        let mut all = Vec::new();
        loop {
            let mut line = Vec::new();
            self.reader.read_until(b'\n', &mut line).unwrap();
            if line.is_empty() {
                break;
            }
            all.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line).into_owned();
            let trimmed = text.trim_end();
            let literal = trimmed
                .strip_suffix('}')
                .and_then(|t| t.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok());
            match literal {
                Some(n) => {
                    let mut body = vec![0; n];
                    self.reader.read_exact(&mut body).unwrap();
                    all.extend_from_slice(&body);
                }
                None => break,
            }
        }
        String::from_utf8_lossy(&all).trim_end().to_string()
    }

    /// Sends `tag command` and returns (untagged lines, tagged line).
    fn run(&mut self, command: &str) -> (Vec<String>, String) {
        let tag = format!("t{}", self.next_tag);
        self.next_tag += 1;
        self.send(format!("{tag} {command}\r\n").as_bytes());
        self.until_tagged(&tag)
    }

    fn until_tagged(&mut self, tag: &str) -> (Vec<String>, String) {
        let mut untagged = Vec::new();
        for _ in 0..100_000 {
            let line = self.response_line();
            assert!(
                !line.is_empty(),
                "connection closed while waiting for {tag}"
            );
            if line.starts_with(&format!("{tag} ")) {
                return (untagged, line);
            }
            untagged.push(line);
        }
        panic!("no tagged response for {tag}");
    }

    fn login(&mut self, user: &str) {
        let (_, done) = self.run(&format!("LOGIN {user} dev"));
        assert!(done.contains(" OK "), "login failed: {done}");
    }

    /// Reads until the server closes; returns what came.
    fn rest(&mut self) -> String {
        let mut rest = String::new();
        let _ = self.reader.read_to_string(&mut rest);
        rest
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn greeting_capability_and_login() {
    let backends = start(&["b1"]);
    let (mut c, greeting) = Client::connect(backends.addr("b1").unwrap());
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1 "),
        "{greeting}"
    );
    assert!(greeting.contains("AUTH=PLAIN") && greeting.ends_with("b1 ready"));
    let (caps, ok) = c.run("CAPABILITY");
    assert!(caps[0].contains("SASL-IR") && caps[0].contains("IDLE"));
    assert!(ok.starts_with("t1 OK"));
    let (_, bad) = c.run("SELECT INBOX");
    assert!(bad.starts_with("t2 BAD"), "{bad}");
    let (_, unknown) = c.run("FROBNICATE");
    assert_eq!(unknown, "t3 BAD Unknown command");
    let (_, no) = c.run("LOGIN alice wrong");
    assert_eq!(no, "t4 NO [AUTHENTICATIONFAILED] Authentication failed.");
    let (_, ok) = c.run("LOGIN alice dev");
    assert!(ok.starts_with("t5 OK [CAPABILITY"), "{ok}");
    assert_eq!(
        backends.registry().sessions_of("alice"),
        vec![("b1".into(), 1)]
    );
    let (bye, ok) = c.run("LOGOUT");
    assert_eq!(bye, vec!["* BYE Logging out"]);
    assert!(ok.starts_with("t6 OK"));
    assert_eq!(c.rest(), "");
}

#[test]
fn login_with_synchronising_and_plus_literals() {
    let backends = start(&["b1"]);
    let (mut c, _) = Client::connect(backends.addr("b1").unwrap());
    c.send(b"a LOGIN {5}\r\n");
    assert!(c.response_line().starts_with('+'));
    c.send(b"alice {3}\r\n");
    assert!(c.response_line().starts_with('+'));
    c.send(b"dev\r\n");
    let (_, ok) = c.until_tagged("a");
    assert!(ok.starts_with("a OK"), "{ok}");

    let (mut c, _) = Client::connect(backends.addr("b1").unwrap());
    c.send(b"b LOGIN {3+}\r\nbob {3+}\r\ndev\r\n");
    let (_, ok) = c.until_tagged("b");
    assert!(ok.starts_with("b OK"), "{ok}");
}

#[test]
fn authenticate_plain_with_and_without_initial_response() {
    let backends = start(&["b1"]);
    let addr = backends.addr("b1").unwrap();

    let (mut c, _) = Client::connect(addr);
    let (_, ok) = c.run(&format!("AUTHENTICATE PLAIN {}", b64(b"\0carol\0dev")));
    assert!(ok.starts_with("t1 OK"), "{ok}");

    let (mut c, _) = Client::connect(addr);
    c.send(b"x AUTHENTICATE PLAIN\r\n");
    assert_eq!(c.response_line(), "+");
    c.send(format!("{}\r\n", b64(b"\0carol\0dev")).as_bytes());
    let (_, ok) = c.until_tagged("x");
    assert!(ok.starts_with("x OK"), "{ok}");

    let (mut c, _) = Client::connect(addr);
    c.send(b"y AUTHENTICATE PLAIN\r\n");
    assert_eq!(c.response_line(), "+");
    c.send(b"*\r\n");
    let (_, bad) = c.until_tagged("y");
    assert!(bad.starts_with("y BAD"), "{bad}");

    let (_, no) = c.run(&format!("AUTHENTICATE PLAIN {}", b64(b"\0carol\0nope")));
    assert!(no.contains("NO [AUTHENTICATIONFAILED]"), "{no}");
    assert_eq!(
        backends.registry().sessions_of("carol"),
        vec![("b1".into(), 2)]
    );
}

#[test]
fn select_and_fetch_the_welcome_message() {
    let backends = start(&["b1"]);
    let (mut c, _) = Client::connect(backends.addr("b1").unwrap());
    c.login("dave");
    let (untagged, ok) = c.run("SELECT INBOX");
    assert!(untagged.contains(&"* 1 EXISTS".to_string()), "{untagged:?}");
    assert!(untagged.iter().any(|l| l.starts_with("* OK [UIDVALIDITY ")));
    assert!(untagged.iter().any(|l| l.starts_with("* OK [UIDNEXT 2]")));
    assert!(untagged.iter().any(|l| l.starts_with("* FLAGS (")));
    assert!(ok.contains("OK [READ-WRITE]"));
    let (data, ok) = c.run("FETCH 1 (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(ok.starts_with("t3 OK"), "{ok}");
    assert!(
        data[0].starts_with("* 1 FETCH (UID 1 FLAGS () RFC822.SIZE "),
        "{data:?}"
    );
    assert!(data[0].contains("Subject: Welcome to mailpin"));
    let (data, _) = c.run("FETCH 1:* BODY[]");
    assert!(data[0].contains("Hello dave"), "{data:?}");
    assert!(
        data[0].contains("FLAGS (\\Seen)"),
        "BODY[] sets \\Seen: {data:?}"
    );
    let (data, _) = c.run("UID FETCH 1 (ENVELOPE INTERNALDATE BODYSTRUCTURE)");
    assert!(
        data[0].contains("ENVELOPE (NIL \"Welcome to mailpin\""),
        "{data:?}"
    );
    let (list, _) = c.run("LIST \"\" *");
    assert_eq!(list, vec!["* LIST (\\HasNoChildren) \"/\" \"INBOX\""]);
}

#[test]
fn append_fetch_store_search_expunge() {
    let backends = start(&["b1"]);
    let (mut c, _) = Client::connect(backends.addr("b1").unwrap());
    c.login("erin");
    let (_, ok) = c.run("CREATE Archive");
    assert!(ok.starts_with("t2 OK"), "{ok}");
    let msg = "Subject: appended\r\n\r\nhello there\r\n";
    c.send(
        format!(
            "a APPEND INBOX (\\Flagged) \"7-Feb-1994 21:52:25 -0800\" {{{}}}\r\n",
            msg.len()
        )
        .as_bytes(),
    );
    assert!(c.response_line().starts_with('+'));
    c.send(format!("{msg}\r\n").as_bytes());
    let (_, ok) = c.until_tagged("a");
    assert!(
        ok.contains("[APPENDUID ") && ok.ends_with("2] Append completed."),
        "{ok}"
    );
    let (status, _) = c.run("STATUS INBOX (MESSAGES UNSEEN UIDNEXT)");
    assert_eq!(
        status,
        vec!["* STATUS \"INBOX\" (MESSAGES 2 UNSEEN 2 UIDNEXT 3)"]
    );
    c.run("SELECT INBOX");
    let (data, _) = c.run("UID FETCH 2 (FLAGS INTERNALDATE BODY.PEEK[TEXT])");
    assert!(data[0].contains("FLAGS (\\Flagged)"), "{data:?}");
    assert!(data[0].contains("\"08-Feb-1994 05:52:25 +0000\""));
    assert!(data[0].contains("BODY[TEXT] {13}\r\nhello there"));
    let (stored, _) = c.run("STORE 1 +FLAGS (\\Seen \\Deleted)");
    assert_eq!(stored, vec!["* 1 FETCH (FLAGS (\\Seen \\Deleted))"]);
    let (found, _) = c.run("SEARCH UNSEEN");
    assert_eq!(found, vec!["* SEARCH 2"]);
    let (found, _) = c.run("UID SEARCH SEEN");
    assert_eq!(found, vec!["* SEARCH 1"]);
    let (found, _) = c.run("UID SEARCH UID 1:*");
    assert_eq!(found, vec!["* SEARCH 1 2"]);
    let (gone, _) = c.run("EXPUNGE");
    assert_eq!(gone, vec!["* 1 EXPUNGE"]);
    let (copied, ok) = c.run("COPY 1 Archive");
    assert!(copied.is_empty() && ok.contains("[COPYUID "), "{ok}");
    let (silent, _) = c.run("STORE 1 FLAGS.SILENT (\\Answered)");
    assert!(silent.is_empty());
    let (_, ok) = c.run("UNSELECT");
    assert!(ok.contains("OK"));
    let (list, _) = c.run("LIST \"\" %");
    assert_eq!(list.len(), 2, "{list:?}");
    let (_, ok) = c.run("DELETE Archive");
    assert!(ok.contains("OK"));
}

#[test]
fn idle_reports_mail_appended_by_another_session_and_by_delivery() {
    let backends = start(&["b1"]);
    let addr = backends.addr("b1").unwrap();
    let (mut idler, _) = Client::connect(addr);
    idler.login("frank");
    idler.run("SELECT INBOX");
    idler.send(b"i IDLE\r\n");
    assert_eq!(idler.response_line(), "+ idling");

    let (mut other, _) = Client::connect(addr);
    other.login("frank");
    other.send(b"a APPEND INBOX {6+}\r\nhello!\r\n");
    let (_, ok) = other.until_tagged("a");
    assert!(ok.starts_with("a OK"));
    assert_eq!(idler.response_line(), "* 2 EXISTS");

    backends
        .store()
        .deliver("frank", "INBOX", vec![b'x'; 5000])
        .unwrap();
    assert_eq!(idler.response_line(), "* 3 EXISTS");

    idler.send(b"DONE\r\n");
    let (_, ok) = idler.until_tagged("i");
    assert_eq!(ok, "i OK Idle completed.");
    let (data, _) = idler.run("FETCH 3 RFC822.SIZE");
    assert_eq!(data, vec!["* 3 FETCH (RFC822.SIZE 5000)"]);
}

#[test]
fn registry_counts_a_user_live_on_two_backends_as_a_violation() {
    let backends = start(&["b1", "b2"]);
    let (mut one, _) = Client::connect(backends.addr("b1").unwrap());
    one.login("grace");
    let (mut again, _) = Client::connect(backends.addr("b1").unwrap());
    again.login("grace");
    assert_eq!(backends.registry().violation_count(), 0);
    let (mut two, _) = Client::connect(backends.addr("b2").unwrap());
    two.login("Grace");
    let registry = backends.registry();
    assert_eq!(
        registry.users_on_several_backends(),
        vec![(
            "grace".to_string(),
            vec!["b1".to_string(), "b2".to_string()]
        )]
    );
    let violations = registry.violations();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].backend, "b2");
    assert_eq!(violations[0].others, vec!["b1".to_string()]);
    two.run("LOGOUT");
    assert_eq!(two.rest(), "");
    // The server drops the session right after the tagged OK; the registry
    // entry goes with it, which the client sees as end of stream above.
    let sessions = registry.sessions_of("grace");
    assert_eq!(sessions, vec![("b1".to_string(), 2)]);
}

#[test]
fn id_fields_are_recorded_per_session() {
    let backends = start(&["b1"]);
    let (mut c, _) = Client::connect(backends.addr("b1").unwrap());
    let (id, ok) = c.run(
        "ID (\"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"50123\" \"x-session-id\" NIL)",
    );
    assert!(ok.starts_with("t1 OK"));
    assert!(
        id[0].starts_with("* ID (\"name\" \"mailpin-dev\""),
        "{id:?}"
    );
    c.login("heidi");
    let sessions = backends.sessions();
    let s = sessions.iter().find(|s| s.open).expect("open session");
    assert_eq!(s.backend, "b1");
    assert_eq!(s.user.as_deref(), Some("heidi"));
    assert_eq!(s.id_field("x-originating-ip"), Some("192.0.2.7"));
    assert_eq!(s.id_field("X-Originating-Port"), Some("50123"));
    assert_eq!(s.id_field("x-session-id"), None);
}

#[test]
fn kill_cuts_sessions_and_restart_serves_again() {
    let backends = start(&["b1", "b2"]);
    let addr = backends.addr("b1").unwrap();
    let (mut c, _) = Client::connect(addr);
    c.login("ivan");
    let (mut other, _) = Client::connect(backends.addr("b2").unwrap());
    other.login("judy");
    assert_eq!(backends.registry().sessions_on("b1"), 1);

    backends.kill("b1").unwrap();
    assert_eq!(c.rest(), "", "the killed backend says nothing");
    assert_eq!(backends.registry().sessions_on("b1"), 0);
    assert!(TcpStream::connect(addr).is_err(), "listener closed");
    let (_, ok) = other.run("NOOP");
    assert!(ok.starts_with("t2 OK"), "b2 lives on: {ok}");

    backends.restart("b1").unwrap();
    let (mut c, greeting) = Client::connect(addr);
    assert!(greeting.ends_with("b1 ready"));
    c.login("ivan");
    assert_eq!(backends.registry().sessions_on("b1"), 1);
    assert!(backends.kill("nope").is_err());
    backends.shutdown();
}

#[test]
fn many_idle_sessions_are_held() {
    let backends = start(&["b1"]);
    let addr = backends.addr("b1").unwrap();
    let mut clients: Vec<Client> = (0..200)
        .map(|i| {
            let (mut c, _) = Client::connect(addr);
            c.login(&format!("user{i}"));
            c
        })
        .collect();
    assert_eq!(backends.registry().sessions_on("b1"), 200);
    for c in clients.iter_mut() {
        let (_, ok) = c.run("NOOP");
        assert!(ok.contains("OK"));
    }
}

/// Drives a backend with curl's IMAP client, when curl is installed.
#[test]
fn curl_lists_mailboxes_and_fetches_a_message() {
    let Ok(version) = std::process::Command::new("curl").arg("--version").output() else {
        eprintln!("curl not installed: skipped");
        return;
    };
    assert!(version.status.success());
    let backends = start(&["b1"]);
    let addr = backends.addr("b1").unwrap();
    let curl = |url: String| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "10",
                "--user",
                "alice:dev",
                "--url",
                &url,
            ])
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "curl {url}: {:?}", out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = curl(format!("imap://{addr}/"));
    assert!(
        list.contains("* LIST (\\HasNoChildren) \"/\" \"INBOX\""),
        "{list}"
    );
    let message = curl(format!("imap://{addr}/INBOX;UID=1"));
    assert!(message.contains("Subject: Welcome to mailpin"), "{message}");
}
