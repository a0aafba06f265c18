//! What the director prepares from a checked configuration before it runs
//! anything: the backend set (host names resolved once) and the TLS server
//! configuration. Shared by the start (`launch`) and a reload
//! (`control::reload`), so neither depends on the other.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use crate::config::{Config, PemSource, Protocol, TlsMode, TlsVersion};
use crate::route::backends::{Backend, BackendId, BackendSet};
use crate::tls::{server_config_from_pem, server_config_from_pem_files, MinVersion, TlsSettings};

/// Why the director could not be started from a configuration.
#[derive(Debug)]
pub struct LaunchError(pub String);

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LaunchError {}

/// Resolves every backend's host for every protocol, once.
pub fn backend_set(config: &Config) -> Result<BackendSet, LaunchError> {
    let mut backends = Vec::new();
    for (i, b) in config.resolved_backends().into_iter().enumerate() {
        let id = BackendId::try_from(i)
            .map_err(|_| LaunchError("too many backends (at most 65535)".into()))?;
        let mut addrs = Vec::with_capacity(Protocol::ALL.len());
        for p in Protocol::ALL {
            let port = b.port(p);
            let addr: SocketAddr = (b.host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| {
                    LaunchError(format!(
                        "backend {}: cannot resolve host {:?}: {e}",
                        b.name, b.host
                    ))
                })?
                .next()
                .ok_or_else(|| {
                    LaunchError(format!(
                        "backend {}: host {:?} has no address",
                        b.name, b.host
                    ))
                })?;
            addrs.push(addr);
        }
        let addrs: [SocketAddr; 4] = addrs
            .try_into()
            .map_err(|_| LaunchError("internal: protocol count".into()))?;
        let mut backend = Backend::new(
            id,
            &b.name,
            b.host.clone(),
            addrs,
            b.weight,
            b.forward,
            b.connect_timeout,
        );
        // Health is checked per protocol port, for the protocols served.
        backend.check_only(|p| config.listen.iter().any(|l| l.protocol == p));
        backends.push(backend);
    }
    Ok(BackendSet::new(backends))
}

/// The TLS server configuration, if any listener uses TLS.
pub fn tls_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, LaunchError> {
    if config.listen.iter().all(|l| l.tls == TlsMode::None) {
        return Ok(None);
    }
    let Some(tls) = &config.tls else {
        return Err(LaunchError(
            "a listener uses TLS but [tls] is missing".into(),
        ));
    };
    let settings = TlsSettings {
        min_version: match tls.min_version {
            TlsVersion::Tls12 => MinVersion::Tls12,
            TlsVersion::Tls13 => MinVersion::Tls13,
        },
        ..TlsSettings::default()
    };
    let built = match (&tls.cert, &tls.key) {
        (PemSource::File(c), PemSource::File(k)) => server_config_from_pem_files(c, k, settings),
        (PemSource::Memory(c), PemSource::Memory(k)) => {
            server_config_from_pem(c.as_bytes(), k.as_bytes(), settings)
        }
        _ => {
            return Err(LaunchError(
                "tls.cert and tls.key must both be files".into(),
            ))
        }
    };
    built
        .map(Some)
        .map_err(|e| LaunchError(format!("TLS: {e}")))
}
