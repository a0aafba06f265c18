//! The self-signed certificate of `mailpin run --dev`.
//!
//! A fresh ECDSA P-256 key and certificate for `localhost`, `127.0.0.1` and
//! `::1`, made at start-up with rcgen. The PEM can be written to a directory
//! so a mail client can be told to trust it.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The names the development certificate is valid for.
pub const DEV_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// File name of the certificate written by [`DevCert::write_to`].
pub const CERT_FILE: &str = "mailpin-dev-cert.pem";
/// File name of the private key written by [`DevCert::write_to`].
pub const KEY_FILE: &str = "mailpin-dev-key.pem";

/// A self-signed certificate and its private key, both PEM.
#[derive(Clone)]
pub struct DevCert {
    /// The certificate (one `CERTIFICATE` block).
    pub cert_pem: String,
    /// The PKCS#8 private key (one `PRIVATE KEY` block).
    pub key_pem: String,
}

impl std::fmt::Debug for DevCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("DevCert").finish_non_exhaustive()
    }
}

impl DevCert {
    /// Makes a fresh ECDSA P-256 certificate for [`DEV_NAMES`].
    pub fn generate() -> Result<DevCert, rcgen::Error> {
        let names: Vec<String> = DEV_NAMES.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mailpin development certificate");
        let cert = params.self_signed(&key)?;
        Ok(DevCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the certificate and key into `dir` (created if missing) as
    /// [`CERT_FILE`] and [`KEY_FILE`], the key readable by the owner only.
    /// Returns the two paths.
    pub fn write_to(&self, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir)?;
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        fs::write(&cert_path, &self.cert_pem)?;
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut key_file = options.open(&key_path)?;
        key_file.write_all(self.key_pem.as_bytes())?;
        Ok((cert_path, key_path))
    }
}
