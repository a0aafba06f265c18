//! The etcd session: one client per endpoint, and which one to use.
//!
//! tonic's balancer keeps sending requests to a member that hangs (a
//! stopped process, a partition), so mailpin opens one client per
//! configured endpoint and each task (keepalive, watch, store) keeps its
//! own choice, moving to the next endpoint when a call on the one in use
//! fails or times out. Every client asks for `require-leader`, so a member
//! without quorum answers at once with "no leader" instead of hanging, has
//! a 2.5 s bound on unary calls and HTTP/2 keepalives every 5 s (etcd
//! closes connections that ping more often, breaking their streams).

use std::cell::RefCell;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::ClusterConfig;

/// The bound on one unary call.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(2500);
/// The bound on connecting to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 keepalive interval: etcd's `--grpc-keepalive-min-time` is 5 s.
pub const H2_KEEPALIVE: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive answer timeout.
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The configured endpoints and a lazily connected client for each.
pub struct Endpoints {
    urls: Vec<String>,
    options: ConnectOptions,
    clients: RefCell<Vec<Option<Client>>>,
}

impl Endpoints {
    /// The endpoints of `config`, with its TLS and credentials; reads the
    /// certificate and password files now.
    pub fn new(config: &ClusterConfig) -> Result<Endpoints, String> {
        let mut options = ConnectOptions::new()
            .with_require_leader(true)
            .with_timeout(CALL_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(H2_KEEPALIVE, H2_KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if config.etcd.iter().any(|e| e.starts_with("https://")) {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
            };
            // `ca` names the CA of the etcd servers; without it, the
            // system's roots.
            let mut tls = if config.ca.as_os_str().is_empty() {
                TlsOptions::new().with_native_roots()
            } else {
                TlsOptions::new().ca_certificate(Certificate::from_pem(read(&config.ca)?))
            };
            if !config.cert.as_os_str().is_empty() {
                tls = tls.identity(Identity::from_pem(read(&config.cert)?, read(&config.key)?));
            }
            options = options.with_tls(tls);
        }
        if !config.user.is_empty() {
            let password = config.read_password()?;
            options = options.with_user(config.user.clone(), password.expose().to_owned());
        }
        Ok(Endpoints {
            clients: RefCell::new(vec![None; config.etcd.len()]),
            urls: config.etcd.clone(),
            options,
        })
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Whether there are none (never, for a checked config).
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The URL of endpoint `index`.
    pub fn url(&self, index: usize) -> &str {
        &self.urls[index % self.urls.len()]
    }

    /// Every URL.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The endpoint after `index`.
    pub fn next(&self, index: usize) -> usize {
        (index + 1) % self.urls.len()
    }

    /// The client of endpoint `index`, connected now if it has none.
    pub async fn client(&self, index: usize) -> Result<Client, String> {
        let index = index % self.urls.len();
        if let Some(c) = self.clients.borrow()[index].clone() {
            return Ok(c);
        }
        let url = self.urls[index].clone();
        let connect = Client::connect([url.as_str()], Some(self.options.clone()));
        let client = match tokio::time::timeout(CONNECT_TIMEOUT + CALL_TIMEOUT, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("{url}: {e}")),
            Err(_) => return Err(format!("{url}: no answer to connect")),
        };
        self.clients.borrow_mut()[index] = Some(client.clone());
        Ok(client)
    }

    /// Forgets the client of endpoint `index` (its connection may hang):
    /// the next use connects afresh.
    pub fn drop_client(&self, index: usize) {
        let index = index % self.urls.len();
        self.clients.borrow_mut()[index] = None;
    }
}

/// Runs `call` with a bound, as text errors.
pub async fn bounded<T, E: std::fmt::Display>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}
