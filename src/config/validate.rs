//! Semantic checks of a [`Config`] that do not depend on the machine: values
//! in range, names unique, sections that other keys need, formats of the
//! strings the rest of mailpin parses. Each problem names its key path and
//! says what to write instead. Also the warnings: valid settings that are
//! probably not what was meant.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::error::{ConfigError, ConfigErrors, ConfigWarning};
use super::schema::{HealthCheck, PemSource, Protocol, TlsMode};
use super::Config;

/// The smallest `server.max_line` accepted, in bytes.
pub const MIN_MAX_LINE: usize = 1024;
/// The largest `server.max_line` accepted, in bytes.
pub const MAX_MAX_LINE: usize = 1 << 20;

/// Every semantic problem of `config`, in schema order.
pub(crate) fn validate(config: &Config) -> ConfigErrors {
    let mut errors = ConfigErrors::new();
    check_server(config, &mut errors);
    check_tls(config, &mut errors);
    check_listeners(config, &mut errors);
    check_backends(config, &mut errors);
    check_health(config, &mut errors);
    check_cluster(config, &mut errors);
    check_prelogin_limits(config, &mut errors);
    check_connection_limits(config, &mut errors);
    super::admin::check_admin(config, &mut errors);
    super::live_move::check_live_move(config, &mut errors);
    errors
}

fn error(errors: &mut ConfigErrors, path: impl Into<String>, message: impl Into<String>) {
    errors.push(ConfigError::new(path, message));
}

fn require_positive(errors: &mut ConfigErrors, path: &str, duration: Duration) {
    if duration.is_zero() {
        error(errors, path, "must be greater than 0");
    }
}

/// `server.sasl_mechanisms`: known, routable mechanisms, at least one.
fn check_sasl_mechanisms(names: &[String], errors: &mut ConfigErrors) {
    use crate::proto::sasl_passthrough::{not_routable, Mechanism};
    const PATH: &str = "server.sasl_mechanisms";
    if names.is_empty() {
        error(
            errors,
            PATH,
            "must list at least one mechanism, or no client could log in",
        );
    }
    for name in names {
        if Mechanism::parse(name.as_bytes()).is_some() {
            continue;
        }
        let known: Vec<&str> = Mechanism::ALL.iter().map(|m| m.name()).collect();
        let message = match not_routable(name) {
            Some(why) => format!("{name:?} cannot be offered by a proxy: {why}"),
            None => format!(
                "{name:?} is not a mechanism mailpin can pass through (known: {})",
                known.join(", ")
            ),
        };
        error(errors, PATH, message);
    }
}

fn check_server(config: &Config, errors: &mut ConfigErrors) {
    let server = &config.server;
    if let Err(message) = check_user_key(&server.user_key) {
        error(errors, "server.user_key", message);
    }
    require_positive(errors, "server.prelogin_timeout", server.prelogin_timeout);
    check_sasl_mechanisms(&server.sasl_mechanisms, errors);
    require_positive(errors, "server.handshake_timeout", server.handshake_timeout);
    require_positive(errors, "server.stall_timeout", server.stall_timeout);
    if !server.keepalive_idle.is_zero() {
        for (path, value) in [
            ("server.keepalive_idle", server.keepalive_idle),
            ("server.keepalive_interval", server.keepalive_interval),
        ] {
            if value < Duration::from_secs(1) || value > Duration::from_secs(32767) {
                error(
                    errors,
                    path,
                    "must be between 1s and 32767s (the kernel counts whole seconds); \
                     keepalive_idle = \"0s\" turns keepalive off",
                );
            }
        }
        if !(1..=127).contains(&server.keepalive_probes) {
            error(
                errors,
                "server.keepalive_probes",
                format!("{} is out of range (1 to 127)", server.keepalive_probes),
            );
        }
    }
    if server.max_line < MIN_MAX_LINE {
        error(
            errors,
            "server.max_line",
            format!(
                "{} is too small (at least {MIN_MAX_LINE} bytes; the default 8192 fits any login line)",
                server.max_line
            ),
        );
    } else if server.max_line > MAX_MAX_LINE {
        error(
            errors,
            "server.max_line",
            format!(
                "{} is too large (at most {MAX_MAX_LINE} bytes; the default is 8192)",
                server.max_line
            ),
        );
    }
    if server.max_bad_commands == 0 {
        error(errors, "server.max_bad_commands", "must be at least 1");
    }
}

/// The codes a user key format may use.
const USER_KEY_CODES: [&str; 6] = ["%u", "%n", "%d", "%Lu", "%Ln", "%Ld"];

/// Checks a `server.user_key` format: literal text and the codes `%u`, `%n`,
/// `%d`, `%Lu`, `%Ln`, `%Ld`, with at least one code.
pub fn check_user_key(format: &str) -> Result<(), String> {
    const HINT: &str = "use %u, %n, %d, or %Lu, %Ln, %Ld to lower-case";
    let mut codes = 0;
    let mut rest = format;
    while let Some(percent) = rest.find('%') {
        rest = &rest[percent..];
        let Some(code) = USER_KEY_CODES.iter().find(|code| rest.starts_with(**code)) else {
            let shown: String = rest.chars().take(3).collect();
            let shown = if shown.starts_with("%L") {
                shown
            } else {
                shown.chars().take(2).collect()
            };
            return Err(format!("{shown:?} in {format:?} is not a code ({HINT})"));
        };
        codes += 1;
        rest = &rest[code.len()..];
    }
    if codes == 0 {
        return Err(format!(
            "{format:?} has no % code, so every user would get the same key ({HINT}; the default is \"%Lu\")"
        ));
    }
    Ok(())
}

fn check_pem_source(errors: &mut ConfigErrors, path: &str, source: &PemSource) {
    let empty = match source {
        PemSource::File(file) => file.as_os_str().is_empty(),
        PemSource::Memory(pem) => pem.trim().is_empty(),
    };
    if empty {
        error(errors, path, "must not be empty (the path of a PEM file)");
    }
}

fn check_tls(config: &Config, errors: &mut ConfigErrors) {
    if let Some(tls) = &config.tls {
        check_pem_source(errors, "tls.cert", &tls.cert);
        check_pem_source(errors, "tls.key", &tls.key);
    }
}

fn check_listeners(config: &Config, errors: &mut ConfigErrors) {
    if config.listen.is_empty() {
        error(
            errors,
            "listen",
            "no listeners (add a [[listen]] section, e.g. protocol = \"imap\", addr = \"0.0.0.0:993\")",
        );
    }
    let mut first_use: HashMap<SocketAddr, String> = HashMap::new();
    for (index, listen) in config.listen.iter().enumerate() {
        let path = format!("listen[{index}]");
        if listen.tls != TlsMode::None && config.tls.is_none() {
            error(
                errors,
                format!("{path}.tls"),
                format!(
                    "\"{}\" needs a [tls] section with cert and key (or set tls = \"none\")",
                    listen.tls
                ),
            );
        }
        if listen.proxy_protocol && listen.proxy_trusted.is_empty() {
            error(
                errors,
                format!("{path}.proxy_trusted"),
                "is empty, but proxy_protocol = true (list the load balancers' networks, e.g. proxy_trusted = [\"10.0.0.0/8\"])",
            );
        }
        // Port 0 asks the kernel for a free port: two of those never clash.
        if listen.addr.port() != 0 {
            if let Some(first) = first_use.get(&listen.addr) {
                error(
                    errors,
                    format!("{path}.addr"),
                    format!("{} is already used by {first}", listen.addr),
                );
            } else {
                first_use.insert(listen.addr, path);
            }
        }
    }
    if let Some(first) = first_use.get(&config.admin.listen) {
        error(
            errors,
            "admin.listen",
            format!("{} is already used by {first}", config.admin.listen),
        );
    }
}

fn check_backends(config: &Config, errors: &mut ConfigErrors) {
    let defaults = &config.backends;
    for protocol in Protocol::ALL {
        let port = match protocol {
            Protocol::Imap => defaults.imap,
            Protocol::Pop3 => defaults.pop3,
            Protocol::Lmtp => defaults.lmtp,
            Protocol::Sieve => defaults.sieve,
        };
        if port == 0 {
            error(
                errors,
                format!("backends.{protocol}"),
                "0 is not a port (expected a number from 1 to 65535)",
            );
        }
    }
    require_positive(errors, "backends.connect_timeout", defaults.connect_timeout);

    if config.backend.is_empty() {
        error(
            errors,
            "backend",
            "no backends (add a [[backend]] section with name and host)",
        );
    }
    let mut first_use: HashMap<&str, usize> = HashMap::new();
    for (index, backend) in config.backend.iter().enumerate() {
        let path = format!("backend[{index}]");
        if let Err(message) = check_backend_name(&backend.name) {
            error(errors, format!("{path}.name"), message);
        } else if let Some(first) = first_use.get(backend.name.as_str()) {
            error(
                errors,
                format!("{path}.name"),
                format!(
                    "{:?} is already used by backend[{first}] (names must be unique)",
                    backend.name
                ),
            );
        } else {
            first_use.insert(&backend.name, index);
        }
        if let Err(message) = check_host(&backend.host) {
            error(errors, format!("{path}.host"), message);
        }
        if backend.weight == 0 {
            error(
                errors,
                format!("{path}.weight"),
                "must be greater than 0 (to take no new users, drain the backend: mailpin ctl backend NAME drain)",
            );
        }
        let overrides = [
            ("imap", backend.imap),
            ("pop3", backend.pop3),
            ("lmtp", backend.lmtp),
            ("sieve", backend.sieve),
        ];
        for (key, port) in overrides {
            if port == Some(0) {
                error(
                    errors,
                    format!("{path}.{key}"),
                    "0 is not a port (expected a number from 1 to 65535)",
                );
            }
        }
        if let Some(timeout) = backend.connect_timeout {
            require_positive(errors, &format!("{path}.connect_timeout"), timeout);
        }
    }
}

/// Backend names appear in admin URLs and metrics labels: 1-64 characters
/// of ASCII letters, digits, `.`, `_` and `-`.
pub fn check_backend_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.len() > 64 || !name.chars().all(allowed) {
        return Err(format!(
            "{name:?} is not a valid name (1-64 letters, digits, '.', '_' or '-': it appears in admin URLs)"
        ));
    }
    Ok(())
}

/// A backend host is an IP address or a DNS host name, without a port.
pub fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("must not be empty (an IP address or host name)".to_owned());
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if host.starts_with('[') && host.ends_with(']') {
        return Err(format!(
            "{host:?}: write an IPv6 address without brackets, e.g. \"2001:db8::1\""
        ));
    }
    if host.parse::<SocketAddr>().is_ok()
        || host
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        return Err(format!(
            "{host:?} must not include a port (set the imap, pop3, lmtp or sieve key instead)"
        ));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if host.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "{host:?} is not an IP address or host name (e.g. \"10.0.0.11\" or \"mail1.example.net\")"
        ));
    }
    Ok(())
}

fn check_health(config: &Config, errors: &mut ConfigErrors) {
    let health = &config.health;
    require_positive(errors, "health.interval", health.interval);
    require_positive(errors, "health.timeout", health.timeout);
    if health.fall == 0 {
        error(errors, "health.fall", "must be at least 1");
    }
    if health.rise == 0 {
        error(errors, "health.rise", "must be at least 1");
    }
    if health.check == HealthCheck::Login {
        if health.login_user.as_deref().is_none_or(str::is_empty) {
            error(
                errors,
                "health.login_user",
                "required when check = \"login\" (a test account on every backend)",
            );
        }
        if health.login_password.is_none() {
            error(
                errors,
                "health.login_password",
                "required when check = \"login\"",
            );
        }
    }
}

fn check_cluster(config: &Config, errors: &mut ConfigErrors) {
    if let Some(cluster) = &config.cluster {
        super::cluster::check_cluster(cluster, errors);
    }
}

/// The smallest `limits.literal_max` and `limits.sasl_max` accepted, bytes.
pub const MIN_PRELOGIN_SIZE: usize = 1024;
/// The largest `limits.literal_max` and `limits.sasl_max` accepted, bytes.
pub const MAX_PRELOGIN_SIZE: usize = 1 << 20;
/// The largest `limits.prelogin_bytes` accepted, bytes.
pub const MAX_PRELOGIN_BYTES: usize = 64 << 20;
/// The largest `limits.prelogin_commands` accepted.
pub const MAX_PRELOGIN_COMMANDS: u32 = 100_000;

/// The pre-login input bounds of `[limits]`: each size in range, and the
/// whole-phase byte budget at least as large as any one line, literal or
/// SASL response (else that limit could never be reached).
fn check_prelogin_limits(config: &Config, errors: &mut ConfigErrors) {
    let limits = &config.limits;
    for (path, value, default) in [
        ("limits.literal_max", limits.literal_max, 16384),
        ("limits.sasl_max", limits.sasl_max, 32768),
    ] {
        if !(MIN_PRELOGIN_SIZE..=MAX_PRELOGIN_SIZE).contains(&value) {
            error(
                errors,
                path,
                format!(
                    "{value} is out of range (from {MIN_PRELOGIN_SIZE} to {MAX_PRELOGIN_SIZE} bytes; the default is {default})"
                ),
            );
        }
    }
    // Sizes out of range are reported on their own key.
    let largest = [
        ("server.max_line", config.server.max_line, MAX_MAX_LINE),
        ("limits.literal_max", limits.literal_max, MAX_PRELOGIN_SIZE),
        ("limits.sasl_max", limits.sasl_max, MAX_PRELOGIN_SIZE),
    ]
    .into_iter()
    .filter(|(_, v, max)| v <= max)
    .map(|(name, v, _)| (name, v))
    .max_by_key(|(_, v)| *v);
    if let Some((name, size)) = largest.filter(|(_, v)| limits.prelogin_bytes < *v) {
        error(
            errors,
            "limits.prelogin_bytes",
            format!(
                "{} is smaller than {name} ({size}): a client could not send one whole {}; use at least {size} (the default is 262144)",
                limits.prelogin_bytes,
                match name {
                    "server.max_line" => "command line",
                    "limits.literal_max" => "literal",
                    _ => "SASL response",
                }
            ),
        );
    } else if limits.prelogin_bytes > MAX_PRELOGIN_BYTES {
        error(
            errors,
            "limits.prelogin_bytes",
            format!(
                "{} is too large (at most {MAX_PRELOGIN_BYTES} bytes; the default is 262144)",
                limits.prelogin_bytes
            ),
        );
    }
    if limits.prelogin_commands == 0 {
        error(
            errors,
            "limits.prelogin_commands",
            "must be at least 1 (the default is 50)",
        );
    } else if limits.prelogin_commands > MAX_PRELOGIN_COMMANDS {
        error(
            errors,
            "limits.prelogin_commands",
            format!(
                "{} is too large (at most {MAX_PRELOGIN_COMMANDS}; the default is 50)",
                limits.prelogin_commands
            ),
        );
    }
}

/// An etcd endpoint: `http://HOST[:PORT][/]` or `https://…`.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let bad = || format!("{url:?} is not an http(s) URL (expected e.g. \"http://127.0.0.1:2379\")");
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.contains(['@', ' ', '?', '#']) {
        return Err(bad());
    }
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        // [v6]:port
        let (v6, after) = bracketed.split_once(']').ok_or_else(bad)?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        if !after.is_empty() {
            check_url_port(after.strip_prefix(':').ok_or_else(bad)?).map_err(|()| bad())?;
        }
        return Ok(());
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => {
                check_url_port(port).map_err(|()| bad())?;
                host
            }
            None => authority,
        }
    };
    check_host(host).map_err(|_| bad())
}

fn check_url_port(port: &str) -> Result<(), ()> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(()),
    }
}

/// Settings that work but are probably not what was meant.
pub(crate) fn warnings(config: &Config) -> Vec<ConfigWarning> {
    let mut warnings = Vec::new();
    let mut warn = |path: String, message: String| warnings.push(ConfigWarning { path, message });
    for (index, listen) in config.listen.iter().enumerate() {
        let path = format!("listen[{index}]");
        if listen.protocol.has_login() && listen.tls == TlsMode::None && !listen.plaintext_auth {
            warn(
                path.clone(),
                "clients can never log in here: tls = \"none\" and plaintext_auth = false (use tls = \"starttls\", or plaintext_auth = true on trusted networks)".to_owned(),
            );
        }
        if listen.protocol.has_login()
            && listen.plaintext_auth
            && listen.tls != TlsMode::Implicit
            && !listen.addr.ip().is_loopback()
        {
            warn(
                format!("{path}.plaintext_auth"),
                format!(
                    "passwords may cross the network unencrypted on {} (keep plaintext_auth for loopback and trusted networks)",
                    listen.addr
                ),
            );
        }
        if !listen.proxy_protocol && !listen.proxy_trusted.is_empty() {
            warn(
                format!("{path}.proxy_trusted"),
                "is ignored because proxy_protocol = false".to_owned(),
            );
        }
    }
    let health = &config.health;
    if health.check != HealthCheck::Login
        && (health.login_user.is_some() || health.login_password.is_some())
    {
        warn(
            "health.login_user".to_owned(),
            format!(
                "login_user and login_password are ignored because check = \"{}\" (they are used by check = \"login\")",
                health.check.as_str()
            ),
        );
    }
    warnings.extend(super::admin::admin_warnings(config));
    warnings
}

/// The largest `limits.prelogin_total` accepted: the per-address table is
/// sized from it.
pub const MAX_PRELOGIN_TOTAL: u32 = 1_000_000;

/// `[limits]`, connection and login limits.
fn check_connection_limits(config: &Config, errors: &mut ConfigErrors) {
    let limits = &config.limits;
    if limits.prelogin_total > MAX_PRELOGIN_TOTAL {
        error(
            errors,
            "limits.prelogin_total",
            format!(
                "{} is too large (at most {MAX_PRELOGIN_TOTAL}; 0 turns the limit off)",
                limits.prelogin_total
            ),
        );
    }
    if limits.prelogin_total != 0 && limits.prelogin_per_ip > limits.prelogin_total {
        error(
            errors,
            "limits.prelogin_per_ip",
            format!(
                "{} is above limits.prelogin_total ({}), so it could never be reached; lower it or raise the total",
                limits.prelogin_per_ip, limits.prelogin_total
            ),
        );
    }
    if limits.sessions_per_user != 0 && limits.sessions_per_user_ip > limits.sessions_per_user {
        error(
            errors,
            "limits.sessions_per_user_ip",
            format!(
                "{} is above limits.sessions_per_user ({}), so it could never be reached; lower it or raise the per-user limit",
                limits.sessions_per_user_ip, limits.sessions_per_user
            ),
        );
    }
    if limits.logins_per_backend != 0 {
        require_positive(
            errors,
            "limits.login_queue_timeout",
            limits.login_queue_timeout,
        );
    }
    if limits.auth_penalty_max < limits.auth_failure_delay {
        error(
            errors,
            "limits.auth_penalty_max",
            "must be at least limits.auth_failure_delay (the penalty starts there and doubles up to this)",
        );
    }
    if limits.auth_penalty_max > Duration::from_secs(300) {
        error(
            errors,
            "limits.auth_penalty_max",
            "is longer than 5m: clients would time out before hearing the answer (Dovecot uses 15s)",
        );
    }
    if limits.auth_penalty_forget < Duration::from_secs(1) {
        error(
            errors,
            "limits.auth_penalty_forget",
            "must be at least 1s (failures are remembered with one-second resolution)",
        );
    }
    if limits.log_interval < Duration::from_secs(1) {
        error(
            errors,
            "limits.log_interval",
            "must be at least 1s (hits are throttled with one-second resolution)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_key_accepts_codes_and_literals() {
        for good in ["%u", "%Lu", "%Ln@%Ld", "user-%n.%d", "%Ld"] {
            assert_eq!(check_user_key(good), Ok(()), "{good}");
        }
    }

    #[test]
    fn user_key_rejects_unknown_codes() {
        assert_eq!(
            check_user_key("%x@%d").unwrap_err(),
            "\"%x\" in \"%x@%d\" is not a code (use %u, %n, %d, or %Lu, %Ln, %Ld to lower-case)"
        );
        assert!(check_user_key("%Lx").unwrap_err().starts_with("\"%Lx\" in"));
        assert!(check_user_key("%u%").unwrap_err().starts_with("\"%\" in"));
        assert!(check_user_key("%%u").unwrap_err().starts_with("\"%%\" in"));
    }

    #[test]
    fn user_key_needs_a_code() {
        let message = check_user_key("everyone").unwrap_err();
        assert!(message.contains("has no % code"), "{message}");
        assert!(check_user_key("").is_err());
    }

    #[test]
    fn hosts() {
        for good in [
            "10.0.0.11",
            "2001:db8::1",
            "mail1",
            "mail1.example.net",
            "mail-1.example.net.",
        ] {
            assert_eq!(check_host(good), Ok(()), "{good}");
        }
        assert!(check_host("10.0.0.11:143")
            .unwrap_err()
            .contains("must not include a port"));
        assert!(check_host("mail1:143")
            .unwrap_err()
            .contains("must not include a port"));
        assert!(check_host("[::1]")
            .unwrap_err()
            .contains("without brackets"));
        assert!(check_host("bad host")
            .unwrap_err()
            .contains("is not an IP address or host name"));
        assert!(check_host("-bad").is_err());
        assert!(check_host("a..b").is_err());
        assert!(check_host("").unwrap_err().contains("must not be empty"));
    }

    #[test]
    fn backend_names() {
        assert_eq!(check_backend_name("mail1.dc-2_a"), Ok(()));
        assert!(check_backend_name("").is_err());
        assert!(check_backend_name("a/b").is_err());
        assert!(check_backend_name("a b").is_err());
        assert!(check_backend_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn http_urls() {
        for good in [
            "http://127.0.0.1:2379",
            "https://etcd.example.net:2379",
            "http://etcd1",
            "http://[::1]:2379",
            "http://127.0.0.1:2379/",
        ] {
            assert_eq!(check_http_url(good), Ok(()), "{good}");
        }
        for bad in [
            "127.0.0.1:2379",
            "etcd://127.0.0.1:2379",
            "http://",
            "http://:2379",
            "http://host:99999",
            "http://host:0",
            "http://user@host",
            "http://[::1",
            "http://bad host",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad}");
        }
    }
}
