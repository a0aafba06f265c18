//! A small blocking HTTP/1.1 client for the director's admin API (the
//! `cluster` scenario reads `/metrics` and `/users/U` and posts moves).
//! One request per connection, every read and write bounded by a timeout,
//! the answer bounded in size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long one admin request may take (a move across directors waits for
/// every director to close its sessions).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read (a `/metrics` page is a few tens of KiB).
const MAX_ANSWER: u64 = 4 << 20;

/// An admin answer: HTTP status and body.
#[derive(Debug, Clone)]
pub struct AdminAnswer {
    /// The HTTP status code.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Sends `method path` to the admin API at `addr` and reads the answer.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Result<AdminAnswer, String> {
    let fail = |e: std::io::Error| format!("admin {method} {path} at {addr}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(fail)?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(fail)?;
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(fail)?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).map_err(fail)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("admin {method} {path}: no HTTP answer"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("admin {method} {path}: bad status line"))?;
    Ok(AdminAnswer {
        status,
        body: body.to_owned(),
    })
}

/// The sum of every sample of the metric `name` whose labels contain
/// `label` (e.g. `result="created"`; "" for all) on `/metrics` at `addr`.
pub fn metric(addr: SocketAddr, name: &str, label: &str) -> Result<f64, String> {
    let answer = request(addr, "GET", "/metrics")?;
    Ok(metric_in(&answer.body, name, label))
}

/// [`metric`] over a `/metrics` page already read.
pub fn metric_in(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let series_name = series.split('{').next()?;
            (series_name == name && series.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The backend `GET /users/U` names for `user`, or `None` (404, or not
/// assigned).
pub fn user_backend(addr: SocketAddr, user: &str) -> Result<Option<String>, String> {
    let answer = request(addr, "GET", &format!("/users/{user}"))?;
    if answer.status == 404 {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(&answer.body)
        .map_err(|e| format!("GET /users/{user}: {e}: {}", answer.body))?;
    Ok(value["backend"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_the_samples_with_the_label() {
        let page = "# HELP x\n# TYPE mailpin_cluster_claims_total counter\n\
mailpin_cluster_claims_total{result=\"created\"} 5\n\
mailpin_cluster_claims_total{result=\"adopted\"} 2\n\
mailpin_cluster_claims_total_other 9\nmailpin_moves_total 3\n";
        assert_eq!(
            metric_in(page, "mailpin_cluster_claims_total", "created"),
            5.0
        );
        assert_eq!(metric_in(page, "mailpin_cluster_claims_total", ""), 7.0);
        assert_eq!(metric_in(page, "mailpin_moves_total", ""), 3.0);
        assert_eq!(metric_in(page, "mailpin_nothing", ""), 0.0);
    }
}
