//! `mailpin run --dev`: a director with everything it needs, at once.
//!
//! Starts three embedded dev backends (see [`crate::dev`]) on loopback over
//! one shared in-memory store, makes a fresh self-signed certificate, and
//! builds the director's configuration around them: IMAP with STARTTLS on
//! 10143 (LOGIN allowed before TLS, dev mode only) and implicit TLS on
//! 10993, POP3 (STLS) on 10110, LMTP on 10024 and ManageSieve (STARTTLS)
//! on 14190, all on 127.0.0.1. Each dev backend serves all four protocols
//! over the one store. Any user name logs in with password `dev`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use crate::config::{Backend, Config, Listen, PemSource, Protocol, TlsConfig, TlsMode};
use crate::dev::{
    spawn_backends, spawn_protocol_servers, DevBackendConfig, DevBackends, DevProtocolServers,
    Registry, Store, DEV_PASSWORD,
};
use crate::prepare::LaunchError;
use crate::tls::DevCert;

/// Where the dev director listens.
#[derive(Debug, Clone, Copy)]
pub struct DevPorts {
    /// IMAP with STARTTLS.
    pub imap: u16,
    /// IMAP over implicit TLS.
    pub imaps: u16,
    /// POP3 with STLS.
    pub pop3: u16,
    /// LMTP.
    pub lmtp: u16,
    /// ManageSieve with STARTTLS.
    pub sieve: u16,
}

impl DevPorts {
    /// The documented ports: 10143, 10993, 10110, 10024 and 14190.
    pub const STANDARD: DevPorts = DevPorts {
        imap: 10143,
        imaps: 10993,
        pop3: 10110,
        lmtp: 10024,
        sieve: 14190,
    };

    /// Ports the kernel picks (for tests that run side by side).
    pub const EPHEMERAL: DevPorts = DevPorts {
        imap: 0,
        imaps: 0,
        pop3: 0,
        lmtp: 0,
        sieve: 0,
    };
}

/// A dev setup: the director's configuration and the backends behind it.
pub struct DevSetup {
    /// The director configuration (certificate in memory).
    pub config: Config,
    /// The running dev backends; dropping them stops them.
    pub backends: DevBackends,
    /// Their POP3, LMTP and ManageSieve servers; dropping them stops them.
    pub protocols: DevProtocolServers,
    /// Where the certificate was written, for clients to trust.
    pub cert_path: Option<PathBuf>,
}

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Starts the dev backends and builds the configuration around them.
pub fn setup(ports: DevPorts) -> Result<DevSetup, LaunchError> {
    let cert = DevCert::generate().map_err(|e| LaunchError(format!("dev certificate: {e}")))?;
    let cert_dir = std::env::temp_dir().join("mailpin-dev");
    let cert_path = cert.write_to(&cert_dir).ok().map(|(c, _)| c);

    let names = ["dev1", "dev2", "dev3"];
    let configs = names
        .iter()
        .map(|n| DevBackendConfig::new(*n, SocketAddr::from((LOOPBACK, 0))))
        .collect();
    let store = Store::default();
    let backends = spawn_backends(configs, store.clone(), Registry::new())
        .map_err(|e| LaunchError(format!("dev backends: {e}")))?;
    let protocols = spawn_protocol_servers(&names, store, DEV_PASSWORD)
        .map_err(|e| LaunchError(format!("dev POP3/LMTP/ManageSieve servers: {e}")))?;

    let config = Config {
        tls: Some(TlsConfig {
            cert: PemSource::Memory(cert.cert_pem.clone()),
            key: PemSource::Memory(cert.key_pem.clone()),
            min_version: Default::default(),
        }),
        listen: vec![
            listen(Protocol::Imap, ports.imap, TlsMode::Starttls),
            listen(Protocol::Imap, ports.imaps, TlsMode::Implicit),
            listen(Protocol::Pop3, ports.pop3, TlsMode::Starttls),
            listen(Protocol::Lmtp, ports.lmtp, TlsMode::None),
            listen(Protocol::Sieve, ports.sieve, TlsMode::Starttls),
        ],
        backend: backends
            .addrs()
            .iter()
            .map(|(name, addr)| {
                let mut b = Backend::new(name.clone(), addr.ip().to_string());
                b.imap = Some(addr.port());
                if let Some(p) = protocols.addr(name) {
                    b.pop3 = Some(p.pop3.port());
                    b.lmtp = Some(p.lmtp.port());
                    b.sieve = Some(p.sieve.port());
                }
                b
            })
            .collect(),
        ..Config::default()
    };
    Ok(DevSetup {
        config,
        backends,
        protocols,
        cert_path,
    })
}

fn listen(protocol: Protocol, port: u16, tls: TlsMode) -> Listen {
    let mut l = Listen::new(protocol, SocketAddr::from((LOOPBACK, port)));
    l.tls = tls;
    l.plaintext_auth = true;
    l
}

/// The banner `run --dev` prints once the director runs.
pub fn banner(setup: &DevSetup, listen_addrs: &[SocketAddr], admin: Option<SocketAddr>) -> String {
    let mut out = String::from("\nmailpin is running in dev mode.\n\n");
    for (l, addr) in setup.config.listen.iter().zip(listen_addrs) {
        out.push_str(&format!(
            "  {:<5} {:<9} {addr}\n",
            l.protocol.as_str(),
            l.tls.as_str()
        ));
    }
    if let Some(admin) = admin {
        out.push_str(&format!(
            "  admin {:<9} http://{admin}/  (status page; mailpin ctl status)\n",
            "http"
        ));
    }
    out.push_str("\n  backends (embedded, one shared in-memory store):\n");
    for (name, addr) in setup.backends.addrs() {
        out.push_str(&format!("    {name}  {addr}\n"));
    }
    out.push_str(&format!(
        "\n  users: any name, password \"{DEV_PASSWORD}\" (LOGIN allowed before STARTTLS in dev mode)\n"
    ));
    if let Some(p) = &setup.cert_path {
        out.push_str(&format!("  certificate: {}\n", p.display()));
    }
    if let (Some(plain), Some(tls)) = (listen_addrs.first(), listen_addrs.get(1)) {
        out.push_str(&format!(
            "\n  try:\n    curl --url imap://{plain}/ --user alice:{DEV_PASSWORD}\n    \
             curl --insecure --url imaps://{tls}/INBOX --user alice:{DEV_PASSWORD}\n"
        ));
    }
    out.push_str("\n  stop with Ctrl-C\n");
    out
}
