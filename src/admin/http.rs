//! Just enough HTTP/1.1 for the admin API: one request per connection.
//!
//! Requests are parsed with `httparse` (a small, well-kept, allocation-free
//! parser) within fixed bounds: 16 KiB of head, 64 headers, and a body we
//! read and ignore up to 64 KiB (no endpoint takes one; chunked bodies are
//! refused). The headers are kept for the access checks (`Host`,
//! `Authorization`, `Content-Type`, `Origin`). Every response
//! closes the connection, which keeps the server trivially correct; admin
//! traffic is a few requests a minute.

use std::io;

use crate::io::{write_bytes, ReadSide};

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest body read (and ignored).
const MAX_BODY: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, percent-decoded per segment by [`Request::segments`].
    pub path: String,
    /// The raw query string (after `?`), if any.
    pub query: Option<String>,
    /// The minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// The headers, names as sent, values as UTF-8 (others are dropped).
    pub headers: Vec<(String, String)>,
    /// The request announced a body (`Content-Length` above 0).
    pub has_body: bool,
}

impl Request {
    /// A request without headers (for tests and internal callers).
    pub fn new(method: &str, target: &str) -> Request {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        Request {
            method: method.to_string(),
            path,
            query,
            version: 1,
            headers: Vec::new(),
            has_body: false,
        }
    }

    /// The value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path's segments, percent-decoded; `None` if one is not UTF-8
    /// after decoding or has a bad escape.
    pub fn segments(&self) -> Option<Vec<String>> {
        self.path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect()
    }

    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name)
                .then(|| percent_decode(&v.replace('+', " ")))
                .flatten()
        })
    }
}

/// Decodes `%XX` escapes; `None` on a bad escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The connection failed or closed early.
    Io(io::Error),
    /// Not HTTP, or over the bounds: answer 400.
    Malformed(String),
}

/// Reads one request head (and skips its body).
pub async fn read_request<R: ReadSide>(r: &mut R) -> Result<Request, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let mut request = Request::new(req.method.unwrap_or(""), req.path.unwrap_or("/"));
                request.version = req.version.unwrap_or(1);
                request.headers = req
                    .headers
                    .iter()
                    .filter_map(|h| {
                        let value = std::str::from_utf8(h.value).ok()?;
                        Some((h.name.to_string(), value.trim().to_string()))
                    })
                    .collect();
                if request.header("transfer-encoding").is_some() {
                    return Err(ReadError::Malformed(
                        "chunked request bodies are not accepted".into(),
                    ));
                }
                let body_len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .unwrap_or(0);
                request.has_body = body_len > 0;
                if body_len > MAX_BODY {
                    return Err(ReadError::Malformed("request body too large".into()));
                }
                let mut have = buf.len() - head_len;
                while have < body_len {
                    buf.clear();
                    buf.reserve(4096);
                    let (res, b) = r.read_into(std::mem::take(&mut buf)).await;
                    buf = b;
                    match res {
                        Ok(0) => break,
                        Ok(n) => have += n,
                        Err(e) => return Err(ReadError::Io(e)),
                    }
                }
                return Ok(request);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(ReadError::Malformed(format!("not an HTTP request: {e}"))),
        }
        if buf.len() >= MAX_HEAD {
            return Err(ReadError::Malformed("request head too large".into()));
        }
        buf.reserve(4096);
        let (res, b) = r.read_into(std::mem::take(&mut buf)).await;
        buf = b;
        match res {
            Ok(0) => return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
    /// Extra headers (`WWW-Authenticate`, `Allow`, security headers).
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response {
            status,
            content_type: "application/json",
            body,
            headers: vec![("Cache-Control", "no-store".into())],
        }
    }

    /// A response with a fixed body (a static document, metrics).
    pub fn bytes(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// This response with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": message.into() }))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes `resp` and nothing more (the caller closes).
pub async fn write_response<W: crate::io::WriteSide>(w: &mut W, resp: &Response) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&resp.body);
    write_bytes(w, &out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_path_segments_and_params() {
        let r = Request::new("POST", "/users/alice%40example.com/move?to=mail%202&x");
        assert_eq!(
            r.segments().unwrap(),
            vec!["users", "alice@example.com", "move"]
        );
        assert_eq!(r.param("to").as_deref(), Some("mail 2"));
        assert_eq!(r.param("x").as_deref(), Some(""));
        assert_eq!(r.param("y"), None);
    }

    #[test]
    fn bad_escapes_are_refused() {
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
    }
}
