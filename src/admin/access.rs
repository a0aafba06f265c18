//! Who may use the admin API, checked before any endpoint runs.
//!
//! Over TCP, in this order:
//! 1. `Host` must name this listener: the address the connection came in
//!    on, `localhost` with its port, or one of `admin.names`. A page on a
//!    foreign site that re-points its DNS name at this address (DNS
//!    rebinding) sends its own name and is refused (403).
//! 2. A request that may change state (anything but `GET`/`HEAD`) must not
//!    look like a cross-site browser request: no `Content-Type` other than
//!    `application/json` (an HTML form sends urlencoded, multipart or
//!    text/plain), no body without one, no `Origin` but this listener's
//!    own, no `Sec-Fetch-Site: cross-site` (403).
//! 3. With a token configured, `Authorization: Bearer TOKEN` (401 without
//!    it, compared in constant time), except for `GET /metrics` when
//!    `admin.metrics_public` and the two static documents, `GET /` (the
//!    status page asks for the token itself) and `GET /openapi.json`.
//!
//! Over the Unix socket the file's permissions decide: no checks.
//! The token is never logged nor put in an answer.

use std::net::{IpAddr, SocketAddr};

use crate::admin::http::{Request, Response};
use crate::config::{read_token_file, AdminConfig, Secret};

/// How a request reached the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP, accepted on this local address.
    Tcp {
        /// The local address of the connection (the listener's, or for a
        /// wildcard listener the address the client connected to).
        local: SocketAddr,
    },
    /// The Unix socket (`admin.socket`).
    Unix,
}

/// The access rules of one admin API.
#[derive(Debug, Clone)]
pub struct Access {
    token: Option<Secret>,
    metrics_public: bool,
    names: Vec<String>,
}

impl Access {
    /// Rules with an optional token, `/metrics` public or not, and extra
    /// `Host` names (with or without `:port`).
    pub fn new(token: Option<Secret>, metrics_public: bool, names: &[String]) -> Access {
        Access {
            token: token.filter(|t| !t.expose().is_empty()),
            metrics_public,
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// The rules of `[admin]`, reading `admin.token_file` if set.
    pub fn from_config(admin: &AdminConfig) -> Result<Access, String> {
        let token = if !admin.token.expose().is_empty() {
            Some(admin.token.clone())
        } else if !admin.token_file.as_os_str().is_empty() {
            Some(read_token_file(&admin.token_file).map_err(|e| format!("admin.token_file: {e}"))?)
        } else {
            None
        };
        Ok(Access::new(token, admin.metrics_public, &admin.names))
    }

    /// True when requests over TCP need a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `Ok` when `req` may go on; otherwise the 401 or 403 to answer.
    pub fn check(&self, req: &Request, transport: Transport) -> Result<(), Response> {
        let Transport::Tcp { local } = transport else {
            return Ok(());
        };
        match req.header("host") {
            None => return Err(Response::error(403, "a Host header is required")),
            Some(host) if !self.host_allowed(host, local) => {
                return Err(Response::error(
                    403,
                    "the Host header does not name this admin API (add the name to admin.names)",
                ))
            }
            Some(_) => {}
        }
        if !matches!(req.method.as_str(), "GET" | "HEAD") {
            self.check_not_cross_site(req, local)?;
        }
        match &self.token {
            Some(token) if !self.is_public(req) => check_bearer(req, token),
            _ => Ok(()),
        }
    }

    /// Requests that need no token.
    fn is_public(&self, req: &Request) -> bool {
        req.method == "GET"
            && (req.path == "/"
                || req.path == "/openapi.json"
                || (req.path == "/metrics" && self.metrics_public))
    }

    /// Refuses what a browser sends from a foreign page: a form post, or
    /// anything with a foreign `Origin`.
    fn check_not_cross_site(&self, req: &Request, local: SocketAddr) -> Result<(), Response> {
        match req.header("content-type") {
            Some(ct) if !is_json(ct) => return Err(Response::error(
                403,
                "a request body must be Content-Type: application/json (form posts are refused)",
            )),
            None if req.has_body => {
                return Err(Response::error(
                    403,
                    "a request body must be Content-Type: application/json",
                ))
            }
            _ => {}
        }
        if let Some(origin) = req.header("origin") {
            let host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .filter(|h| !h.contains('/'));
            if !host.is_some_and(|h| self.host_allowed(h, local)) {
                return Err(Response::error(
                    403,
                    "cross-site requests are refused (the Origin is not this admin API)",
                ));
            }
        }
        if req
            .header("sec-fetch-site")
            .is_some_and(|s| s.eq_ignore_ascii_case("cross-site"))
        {
            return Err(Response::error(403, "cross-site requests are refused"));
        }
        Ok(())
    }

    /// True when `host` (a `Host` value, `name[:port]`) names this listener
    /// or one of the configured names.
    pub fn host_allowed(&self, host: &str, local: SocketAddr) -> bool {
        let host = host.to_ascii_lowercase();
        let Some((name, port)) = split_host(&host) else {
            return false;
        };
        let own_ip = match local.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        if port.unwrap_or(80) == local.port() && (name == own_ip || name == "localhost") {
            return true;
        }
        self.names.iter().any(|allowed| match split_host(allowed) {
            Some((allowed_name, None)) => allowed_name == name,
            Some((allowed_name, Some(allowed_port))) => {
                allowed_name == name && port.unwrap_or(80) == allowed_port
            }
            None => false,
        })
    }
}

/// `name[:port]` (IPv6 in brackets) into its parts; `None` if the port is
/// not a number.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let port_sep = if host.starts_with('[') {
        host.find("]:").map(|i| i + 1)
    } else {
        host.rfind(':').filter(|_| host.matches(':').count() == 1)
    };
    match port_sep {
        Some(i) => Some((&host[..i], Some(host[i + 1..].parse().ok()?))),
        None => Some((host, None)),
    }
}

/// `application/json`, parameters allowed.
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// `Authorization: Bearer TOKEN` with the right token, or 401.
fn check_bearer(req: &Request, token: &Secret) -> Result<(), Response> {
    let challenge = |error: Option<&str>, message: &str| {
        let value = match error {
            Some(e) => format!("Bearer realm=\"mailpin\", error=\"{e}\""),
            None => "Bearer realm=\"mailpin\"".to_string(),
        };
        Response::error(401, message).with_header("WWW-Authenticate", value)
    };
    let Some(auth) = req.header("authorization") else {
        return Err(challenge(
            None,
            "this admin API needs Authorization: Bearer TOKEN (admin.token)",
        ));
    };
    let presented = auth
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match presented {
        Some(t) if constant_time_eq(t.as_bytes(), token.expose().as_bytes()) => Ok(()),
        _ => Err(challenge(Some("invalid_token"), "wrong admin token")),
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Transport = Transport::Tcp {
        local: SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9120),
    };

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut r = Request::new(method, path);
        r.headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        r
    }

    fn status(access: &Access, r: &Request) -> u16 {
        access.check(r, LOCAL).err().map_or(200, |resp| resp.status)
    }

    #[test]
    fn hosts() {
        let a = Access::new(
            None,
            true,
            &["director.example.net".into(), "d2:8443".into()],
        );
        let local = SocketAddr::from(([127, 0, 0, 1], 9120));
        for good in [
            "127.0.0.1:9120",
            "localhost:9120",
            "LOCALHOST:9120",
            "director.example.net",
            "director.example.net:9120",
            "d2:8443",
        ] {
            assert!(a.host_allowed(good, local), "{good}");
        }
        for bad in [
            "evil.example:9120",
            "127.0.0.1:9121",
            "127.0.0.1",
            "d2",
            "d2:9120",
            "127.0.0.1:x",
            "",
        ] {
            assert!(!a.host_allowed(bad, local), "{bad}");
        }
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9120));
        assert!(a.host_allowed("[::1]:9120", v6));
        assert!(!a.host_allowed("[::2]:9120", v6));
    }

    #[test]
    fn token_rules() {
        let a = Access::new(Some(Secret::new("s3cret-token")), true, &[]);
        let host = ("Host", "127.0.0.1:9120");
        assert_eq!(status(&a, &req("GET", "/status", &[host])), 401);
        for (authorization, expected) in [
            ("Bearer nope", 401),
            ("Basic s3cret-token", 401),
            ("Bearer s3cret-token-and-more", 401),
            ("bearer s3cret-token", 200),
            ("Bearer s3cret-token", 200),
        ] {
            let r = req("GET", "/status", &[host, ("Authorization", authorization)]);
            assert_eq!(status(&a, &r), expected, "{authorization}");
        }
        assert_eq!(status(&a, &req("GET", "/metrics", &[host])), 200);
        assert_eq!(status(&a, &req("GET", "/", &[host])), 200);
        assert_eq!(status(&a, &req("GET", "/openapi.json", &[host])), 200);
        let closed = Access::new(Some(Secret::new("s3cret-token")), false, &[]);
        assert_eq!(status(&closed, &req("GET", "/metrics", &[host])), 401);
        let unix = closed.check(&req("POST", "/backends/x/down", &[]), Transport::Unix);
        assert!(
            unix.is_ok(),
            "the socket's permissions are its access control"
        );
    }

    #[test]
    fn cross_site_posts_are_refused() {
        let a = Access::new(None, true, &[]);
        let host = ("Host", "127.0.0.1:9120");
        let post = |h: &[(&str, &str)]| status(&a, &req("POST", "/backends/b/drain", h));
        assert_eq!(post(&[host]), 200);
        assert_eq!(post(&[host, ("Content-Type", "application/json")]), 200);
        assert_eq!(
            post(&[host, ("Content-Type", "application/x-www-form-urlencoded")]),
            403
        );
        assert_eq!(
            post(&[host, ("Content-Type", "multipart/form-data; boundary=x")]),
            403
        );
        assert_eq!(post(&[host, ("Content-Type", "text/plain")]), 403);
        assert_eq!(post(&[host, ("Origin", "http://127.0.0.1:9120")]), 200);
        assert_eq!(post(&[host, ("Origin", "http://evil.example")]), 403);
        assert_eq!(post(&[host, ("Origin", "null")]), 403);
        assert_eq!(post(&[host, ("Sec-Fetch-Site", "cross-site")]), 403);
        assert_eq!(post(&[("Host", "evil.example:9120")]), 403);
        assert_eq!(post(&[]), 403, "no Host");
        let mut with_body = req("POST", "/backends/b/drain", &[host]);
        with_body.has_body = true;
        assert_eq!(status(&a, &with_body), 403);
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
