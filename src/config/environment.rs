//! Checks of a [`Config`] against the machine it is about to run on: the
//! certificate and key files exist, are readable and hold what they should,
//! and `server.cores` does not exceed the CPUs this process may use.
//!
//! Kept apart from [`super::validate`] so that a config built in code (with
//! in-memory PEM) or checked on another host can skip them.

use std::io;
use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::{ConfigError, ConfigErrors};
use super::schema::PemSource;
use super::Config;

/// Every problem of `config` on this machine.
pub(crate) fn check_environment(config: &Config) -> ConfigErrors {
    let mut errors = ConfigErrors::new();
    if let Some(tls) = &config.tls {
        if let PemSource::File(path) = &tls.cert {
            if let Err(message) = check_cert_file(path) {
                errors.push(ConfigError::new("tls.cert", message));
            }
        }
        if let PemSource::File(path) = &tls.key {
            if let Err(message) = check_key_file(path) {
                errors.push(ConfigError::new("tls.key", message));
            }
        }
    }
    if let Err(message) = check_cores(config.server.cores, usable_cpus()) {
        errors.push(ConfigError::new("server.cores", message));
    }
    super::admin::check_admin_environment(config, &mut errors);
    if let Some(cluster) = &config.cluster {
        super::cluster::check_cluster_environment(cluster, &mut errors);
    }
    errors
}

/// How many CPUs this process may be pinned to (what the runtime uses).
pub fn usable_cpus() -> usize {
    core_affinity::get_core_ids().map_or(0, |ids| ids.len())
}

/// `cores` is valid if 0 (all) or at most `available`. An unknown count
/// (`available` = 0) accepts anything.
fn check_cores(cores: usize, available: usize) -> Result<(), String> {
    if available > 0 && cores > available {
        return Err(format!(
            "{cores} is more than the {available} CPUs this process may run on (use 0 for all of them)"
        ));
    }
    Ok(())
}

/// Reads a whole file, turning the usual failures into a message with a hint.
fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        io::ErrorKind::PermissionDenied => format!(
            "{} is not readable by this user (check its owner and mode)",
            path.display()
        ),
        io::ErrorKind::IsADirectory => format!("{} is a directory, not a file", path.display()),
        _ => format!("{} cannot be read: {error}", path.display()),
    })
}

/// The file must hold at least one PEM certificate and nothing malformed.
fn check_cert_file(path: &Path) -> Result<(), String> {
    let bytes = read_file(path)?;
    let mut certificates = 0usize;
    for item in CertificateDer::pem_slice_iter(&bytes) {
        match item {
            Ok(_) => certificates += 1,
            Err(error) => {
                return Err(format!(
                    "{} is not valid PEM ({})",
                    path.display(),
                    pem_error_summary(&error)
                ))
            }
        }
    }
    if certificates == 0 {
        return Err(format!(
            "{} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks, leaf first)",
            path.display()
        ));
    }
    Ok(())
}

/// The file must hold a PEM private key.
fn check_key_file(path: &Path) -> Result<(), String> {
    let bytes = read_file(path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(_) => Ok(()),
        Err(pem::Error::NoItemsFound) => Err(format!(
            "{} holds no private key (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
            path.display()
        )),
        Err(error) => Err(format!(
            "{} is not valid PEM ({})",
            path.display(),
            pem_error_summary(&error)
        )),
    }
}

/// A short description of a PEM error that never quotes the file's contents.
fn pem_error_summary(error: &pem::Error) -> &'static str {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "bad base64 inside a section",
        pem::Error::Io(_) => "read error",
        pem::Error::NoItemsFound => "nothing found",
        _ => "malformed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::TlsConfig;
    use crate::config::values::TlsVersion;
    use std::path::PathBuf;

    /// A scratch directory removed when dropped.
    struct ScratchDir(PathBuf);

    impl ScratchDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("mailpin-config-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn self_signed() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    fn with_tls(cert: PemSource, key: PemSource) -> Config {
        Config {
            tls: Some(TlsConfig {
                cert,
                key,
                min_version: TlsVersion::Tls12,
            }),
            ..Config::default()
        }
    }

    #[test]
    fn good_files_pass() {
        let dir = ScratchDir::new("good");
        let (cert, key) = self_signed();
        let config = with_tls(
            PemSource::File(dir.write("cert.pem", &cert)),
            PemSource::File(dir.write("key.pem", &key)),
        );
        assert!(check_environment(&config).is_empty());
    }

    #[test]
    fn missing_files_are_reported_with_their_keys() {
        let config = with_tls(
            PemSource::File("/nonexistent/mailpin/cert.pem".into()),
            PemSource::File("/nonexistent/mailpin/key.pem".into()),
        );
        let errors = check_environment(&config);
        assert_eq!(
            errors.to_string(),
            "tls.cert: /nonexistent/mailpin/cert.pem does not exist\n\
             tls.key: /nonexistent/mailpin/key.pem does not exist"
        );
    }

    #[test]
    fn swapped_or_empty_files_are_reported() {
        let dir = ScratchDir::new("swapped");
        let (cert, key) = self_signed();
        let config = with_tls(
            PemSource::File(dir.write("cert.pem", &key)),
            PemSource::File(dir.write("key.pem", &cert)),
        );
        let errors = check_environment(&config);
        assert_eq!(errors.len(), 2, "{errors}");
        assert!(
            errors.errors()[0]
                .message()
                .contains("holds no certificate"),
            "{errors}"
        );
        assert!(
            errors.errors()[1]
                .message()
                .contains("holds no private key"),
            "{errors}"
        );
        // The key's contents never appear in a message.
        assert!(!errors.to_string().contains(&key[40..80]));
    }

    #[test]
    fn a_directory_is_not_a_file() {
        let dir = ScratchDir::new("dir");
        let config = with_tls(
            PemSource::File(dir.0.clone()),
            PemSource::Memory("x".into()),
        );
        let errors = check_environment(&config);
        assert_eq!(errors.len(), 1, "{errors}");
        assert!(
            errors.errors()[0].message().contains("is a directory"),
            "{errors}"
        );
    }

    #[test]
    fn in_memory_pem_is_not_checked_here() {
        let config = with_tls(
            PemSource::Memory("cert".into()),
            PemSource::Memory("key".into()),
        );
        assert!(check_environment(&config).is_empty());
    }

    #[test]
    fn cores_must_fit_the_machine() {
        assert_eq!(check_cores(0, 2), Ok(()));
        assert_eq!(check_cores(2, 2), Ok(()));
        assert_eq!(
            check_cores(3, 2),
            Err(
                "3 is more than the 2 CPUs this process may run on (use 0 for all of them)"
                    .to_owned()
            )
        );
        assert_eq!(check_cores(64, 0), Ok(()));
    }
}
