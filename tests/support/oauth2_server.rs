//! A token introspection endpoint (RFC 7662) for Dovecot's `oauth2`
//! passdb in tests: a thread on 127.0.0.1 answering each POST
//! `token=<t>&...` with `{"active": true, "username": "<user>"}` when the
//! token is `valid-<user>`, and `{"active": false}` for any other token
//! (an expired or revoked one). Stopped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The token prefix that makes a token valid for the user after it.
pub const VALID_PREFIX: &str = "valid-";

/// A running introspection endpoint.
pub struct IntrospectionServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl IntrospectionServer {
    /// Starts the endpoint on a free port of 127.0.0.1.
    pub fn start() -> IntrospectionServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the introspection server");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, requests) = (stop.clone(), requests.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            requests.fetch_add(1, Ordering::Relaxed);
                            let _ = answer(stream);
                        }
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        IntrospectionServer {
            addr,
            stop,
            requests,
            thread: Some(thread),
        }
    }

    /// The URL for `introspection_url`.
    pub fn url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// Connections served so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for IntrospectionServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (headers, then a body of Content-Length bytes) and
/// answers it; the connection closes after.
fn answer(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(64 * 1024)];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body);
    let token = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .unwrap_or_default();
    let json = match token.strip_prefix(VALID_PREFIX) {
        Some(user) if !user.is_empty() => format!("{{\"active\": true, \"username\": \"{user}\"}}"),
        _ => "{\"active\": false}".to_owned(),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )?;
    stream.flush()
}
