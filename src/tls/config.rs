//! Building the one `Arc<rustls::ServerConfig>` every core shares.
//!
//! The certificate chain and key come from PEM files or PEM bytes in memory
//! (parsed with `rustls_pki_types::pem::PemObject`). The config offers TLS 1.2
//! and 1.3, or 1.3 only, never asks for client certificates, and issues
//! stateless session tickets from the provider's rotating `Ticketer`: the
//! ticket keys live in the shared config, so a ticket issued on one core
//! resumes on any other.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The lowest TLS version a listener accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and TLS 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// The cryptography behind rustls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Provider {
    /// aws-lc-rs: the production choice (faster RSA, X25519MLKEM768).
    #[default]
    AwsLcRs,
    /// ring: kept for comparison in benchmarks.
    Ring,
}

impl Provider {
    /// The rustls crypto provider this names.
    pub fn crypto_provider(self) -> CryptoProvider {
        match self {
            Provider::AwsLcRs => rustls::crypto::aws_lc_rs::default_provider(),
            Provider::Ring => rustls::crypto::ring::default_provider(),
        }
    }

    fn ticketer(self) -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
        match self {
            Provider::AwsLcRs => rustls::crypto::aws_lc_rs::Ticketer::new(),
            Provider::Ring => rustls::crypto::ring::Ticketer::new(),
        }
    }
}

/// How the server side of TLS is set up, apart from the certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The lowest protocol version offered.
    pub min_version: MinVersion,
    /// The crypto provider.
    pub provider: Provider,
}

/// Why a server TLS configuration could not be built.
#[derive(Debug)]
pub enum TlsConfigError {
    /// The certificate file could not be read or is not PEM.
    ReadCert {
        /// The file named in the configuration.
        path: PathBuf,
        /// What went wrong.
        source: rustls_pki_types::pem::Error,
    },
    /// The private key file could not be read, is not PEM, or holds no key.
    ReadKey {
        /// The file named in the configuration.
        path: PathBuf,
        /// What went wrong.
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate PEM held no `CERTIFICATE` block.
    NoCertificate {
        /// Where the PEM came from (a path, or "memory").
        origin: String,
    },
    /// rustls refused the chain or key (e.g. the key does not match the
    /// certificate, or is of an unsupported type), or the ticketer failed.
    Rustls(rustls::Error),
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::ReadCert { path, source } => write!(
                f,
                "cannot read the TLS certificate chain from {}: {source} \
                 (expected a PEM file with one or more CERTIFICATE blocks)",
                path.display()
            ),
            TlsConfigError::ReadKey { path, source } => write!(
                f,
                "cannot read the TLS private key from {}: {source} \
                 (expected a PEM file with a PKCS#8, PKCS#1 or SEC1 private key)",
                path.display()
            ),
            TlsConfigError::NoCertificate { origin } => write!(
                f,
                "no CERTIFICATE block found in the TLS certificate PEM from {origin}"
            ),
            TlsConfigError::Rustls(e) => write!(
                f,
                "the TLS certificate or key was refused: {e} \
                 (check that the key belongs to the first certificate)"
            ),
        }
    }
}

impl std::error::Error for TlsConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsConfigError::ReadCert { source, .. } | TlsConfigError::ReadKey { source, .. } => {
                Some(source)
            }
            TlsConfigError::NoCertificate { .. } => None,
            TlsConfigError::Rustls(e) => Some(e),
        }
    }
}

impl From<rustls::Error> for TlsConfigError {
    fn from(e: rustls::Error) -> Self {
        TlsConfigError::Rustls(e)
    }
}

/// Builds the server config from a PEM certificate chain file (leaf first)
/// and a PEM private key file.
pub fn server_config_from_pem_files(
    cert_path: &Path,
    key_path: &Path,
    settings: TlsSettings,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsConfigError::ReadCert {
            path: cert_path.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            origin: cert_path.display().to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsConfigError::ReadKey {
        path: key_path.to_path_buf(),
        source,
    })?;
    server_config(chain, key, settings)
}

/// Builds the server config from PEM bytes held in memory (e.g. the
/// development certificate).
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    settings: TlsSettings,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let memory = || PathBuf::from("<memory>");
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsConfigError::ReadCert {
            path: memory(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            origin: "memory".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsConfigError::ReadKey {
        path: memory(),
        source,
    })?;
    server_config(chain, key, settings)
}

/// Builds the server config from a DER certificate chain (leaf first) and
/// its private key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    settings: TlsSettings,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match settings.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(settings.provider.crypto_provider()))
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.ticketer = settings.provider.ticketer()?;
    // Stateless tickets replace the session-ID cache: a shared cache would
    // sit behind a Mutex every core takes.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::DevCert;

    #[test]
    fn missing_certificate_file_names_the_path() {
        let err = server_config_from_pem_files(
            Path::new("/nonexistent/mailpin-cert.pem"),
            Path::new("/nonexistent/mailpin-key.pem"),
            TlsSettings::default(),
        )
        .expect_err("no such file");
        assert!(matches!(err, TlsConfigError::ReadCert { .. }));
        assert!(err.to_string().contains("/nonexistent/mailpin-cert.pem"));
    }

    #[test]
    fn key_of_another_certificate_is_refused() {
        let one = DevCert::generate().expect("cert");
        let other = DevCert::generate().expect("cert");
        let err = server_config_from_pem(
            one.cert_pem.as_bytes(),
            other.key_pem.as_bytes(),
            TlsSettings::default(),
        )
        .expect_err("mismatched key");
        assert!(matches!(err, TlsConfigError::Rustls(_)));
    }

    #[test]
    fn pem_without_certificate_is_refused() {
        let dev = DevCert::generate().expect("cert");
        let err = server_config_from_pem(
            dev.key_pem.as_bytes(),
            dev.key_pem.as_bytes(),
            TlsSettings::default(),
        )
        .expect_err("no certificate");
        assert!(matches!(err, TlsConfigError::NoCertificate { .. }));
    }

    #[test]
    fn both_providers_build_with_tickets() {
        let dev = DevCert::generate().expect("cert");
        for provider in [Provider::AwsLcRs, Provider::Ring] {
            for min_version in [MinVersion::Tls12, MinVersion::Tls13] {
                let settings = TlsSettings {
                    min_version,
                    provider,
                };
                let config = server_config_from_pem(
                    dev.cert_pem.as_bytes(),
                    dev.key_pem.as_bytes(),
                    settings,
                )
                .expect("config");
                assert!(config.ticketer.enabled());
            }
        }
    }
}
