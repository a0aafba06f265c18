//! Director configurations for the protocol interop tests: listeners of
//! any protocol in front of a [`DovecotCluster`], every backend port set.

use super::DovecotCluster;

/// One `[[listen]]` block: protocol, TLS mode and extra TOML lines.
pub struct ListenSpec<'a> {
    /// `imap`, `pop3`, `lmtp` or `sieve`.
    pub protocol: &'a str,
    /// `none`, `starttls` or `implicit`.
    pub tls: &'a str,
    /// Extra lines for the block (`proxy_protocol = true`, ...).
    pub extra: &'a str,
}

impl<'a> ListenSpec<'a> {
    /// A plaintext listener that allows passwords before TLS.
    pub fn plain(protocol: &'a str) -> ListenSpec<'a> {
        ListenSpec {
            protocol,
            tls: "none",
            extra: "",
        }
    }
}

/// A director config: `[server]` with `server_extra` lines, a `[tls]`
/// section when `cert` is given, the listeners on 127.0.0.1:0 in order,
/// and every instance of `cluster` as a backend with `backend_extra` lines.
pub fn config(
    cluster: &DovecotCluster,
    cert: Option<(&std::path::Path, &std::path::Path)>,
    server_extra: &str,
    listeners: &[ListenSpec],
    backend_extra: &str,
) -> String {
    let mut c = format!("[server]\ncores = 2\n{server_extra}\n\n");
    if let Some((cert, key)) = cert {
        c.push_str(&format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n\n"));
    }
    for l in listeners {
        c.push_str(&format!(
            "[[listen]]\nprotocol = \"{}\"\naddr = \"127.0.0.1:0\"\ntls = \"{}\"\nplaintext_auth = true\n{}\n\n",
            l.protocol, l.tls, l.extra
        ));
    }
    for inst in cluster.instances() {
        c.push_str(&format!(
            "[[backend]]\nname = \"{}\"\nhost = \"{}\"\nimap = {}\npop3 = {}\nlmtp = {}\nsieve = {}\n{backend_extra}\n\n",
            inst.name(),
            inst.addr(),
            inst.imap_port(),
            inst.pop3_port(),
            inst.lmtp_port(),
            inst.sieve_port(),
        ));
    }
    c
}

/// The backend the director put `user` on, from its `recipient` or
/// `logged in` log lines.
pub fn backend_of(log: &str, user: &str, cluster: &DovecotCluster) -> Option<String> {
    let names_user = |l: &str| {
        ["user=", "user=\""].iter().any(|prefix| {
            let needle = format!("{prefix}{user}");
            l.match_indices(&needle).any(|(i, _)| {
                !l[i + needle.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '@')
            })
        })
    };
    log.lines().filter(|l| names_user(l)).find_map(|l| {
        cluster
            .instances()
            .iter()
            .map(|i| i.name().to_string())
            .find(|n| {
                l.contains(&format!("backend={n}")) || l.contains(&format!("backend=\"{n}\""))
            })
    })
}
