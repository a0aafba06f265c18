//! The checks of `[admin]`: who may use the admin API (its token, the
//! token file, the Unix socket and its mode, the extra `Host` names), with
//! the semantic checks, the machine checks (the token file can be read, the
//! socket's directory exists) and the warnings (a public listener without
//! a token, a token file others may read).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::{ConfigError, ConfigErrors, ConfigWarning};
use super::validate::check_host;
use super::values::Secret;
use super::Config;

/// The longest Unix socket path the kernel takes (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Tokens shorter than this are allowed but warned about.
pub const SHORT_TOKEN: usize = 16;

/// A bearer token is RFC 6750's `b64token`: letters, digits and
/// `-._~+/`, then `=` padding; never empty.
pub fn check_bearer_token(token: &str) -> Result<(), String> {
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(
            "is not a bearer token (letters, digits and -._~+/ with = at the end only, \
             e.g. the output of `openssl rand -hex 32`)"
                .to_owned(),
        )
    }
}

/// Reads the token in `path`: its content without the trailing newline.
pub fn read_token_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        std::io::ErrorKind::PermissionDenied => format!(
            "{} is not readable by this user (check its owner and mode)",
            path.display()
        ),
        _ => format!("{} cannot be read: {error}", path.display()),
    })?;
    let token = text.trim_end_matches(['\n', '\r']);
    check_bearer_token(token)
        .map_err(|message| format!("{}: the content {message}", path.display()))?;
    Ok(Secret::new(token))
}

/// Semantic checks of `[admin]`.
pub(crate) fn check_admin(config: &Config, errors: &mut ConfigErrors) {
    let admin = &config.admin;
    let mut error = |path: &str, message: String| errors.push(ConfigError::new(path, message));
    let token = admin.token.expose();
    if !token.is_empty() {
        if let Err(message) = check_bearer_token(token) {
            error("admin.token", message);
        }
        if !admin.token_file.as_os_str().is_empty() {
            error(
                "admin.token_file",
                "is set as well as admin.token: set only one of them".to_owned(),
            );
        }
    }
    let socket = admin.socket.as_os_str();
    if socket.len() > MAX_SOCKET_PATH {
        error(
            "admin.socket",
            format!(
                "{} is {} bytes long, more than the {MAX_SOCKET_PATH} a Unix socket path may have",
                admin.socket.display(),
                socket.len()
            ),
        );
    }
    if admin.socket_mode != 0o600 && admin.socket_mode != 0o660 {
        error(
            "admin.socket_mode",
            format!(
                "0o{:o} is not allowed: use 0o600 (the director's user only) or 0o660 (and its group)",
                admin.socket_mode
            ),
        );
    }
    for (index, name) in admin.names.iter().enumerate() {
        if let Err(message) = check_name(name) {
            error(&format!("admin.names[{index}]"), message);
        }
    }
}

/// An `admin.names` entry: a host name or IP address, optionally `:port`
/// (IPv6 addresses in brackets then).
fn check_name(name: &str) -> Result<(), String> {
    let port_sep = if name.starts_with('[') {
        name.find("]:").map(|i| i + 1)
    } else {
        name.rfind(':').filter(|_| name.matches(':').count() == 1)
    };
    let host = match port_sep {
        Some(i) => {
            let port = &name[i + 1..];
            port.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{name:?}: {port:?} is not a port"))?;
            &name[..i]
        }
        None => name,
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(());
    }
    check_host(bare).map_err(|_| {
        format!(
            "{name:?} is not a host name, with or without :port (e.g. \"director.example.net\")"
        )
    })
}

/// Checks of `[admin]` on this machine: the token file can be read and
/// holds a token, the socket's directory exists.
pub(crate) fn check_admin_environment(config: &Config, errors: &mut ConfigErrors) {
    let admin = &config.admin;
    if !admin.token_file.as_os_str().is_empty() {
        if let Err(message) = read_token_file(&admin.token_file) {
            errors.push(ConfigError::new("admin.token_file", message));
        }
    }
    if let Some(dir) = admin
        .socket
        .parent()
        .filter(|_| !admin.socket.as_os_str().is_empty())
    {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            errors.push(ConfigError::new(
                "admin.socket",
                format!("its directory {} does not exist", dir.display()),
            ));
        }
    }
}

/// Valid `[admin]` settings that are probably mistakes.
pub(crate) fn admin_warnings(config: &Config) -> Vec<ConfigWarning> {
    let admin = &config.admin;
    let mut warnings = Vec::new();
    let mut warn = |path: &str, message: String| {
        warnings.push(ConfigWarning {
            path: path.to_owned(),
            message,
        })
    };
    if !admin.listen.ip().is_loopback() && !admin.has_token() {
        warn(
            "admin.listen",
            format!(
                "{} is not a loopback address, and the admin API has no token (admin.token): whoever reaches it can move users and take backends down",
                admin.listen
            ),
        );
    }
    let token = admin.token.expose();
    if !token.is_empty() && token.len() < SHORT_TOKEN {
        warn(
            "admin.token",
            format!("is shorter than {SHORT_TOKEN} characters: easy to guess"),
        );
    }
    if !admin.token_file.as_os_str().is_empty() {
        if let Ok(meta) = std::fs::metadata(&admin.token_file) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warn(
                    "admin.token_file",
                    format!(
                        "{} has mode 0o{mode:o}: others than its owner may read the token (chmod 600)",
                        admin.token_file.display()
                    ),
                );
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        for good in ["abc", "a-b.c_d~e+f/g==", "0123456789abcdef"] {
            assert_eq!(check_bearer_token(good), Ok(()), "{good}");
        }
        for bad in ["", "a b", "==", "a=b", "tök", "a\n"] {
            assert!(check_bearer_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        for good in [
            "director.example.net",
            "director.example.net:9120",
            "10.0.0.5",
            "10.0.0.5:443",
            "[2001:db8::1]:9120",
            "2001:db8::1",
        ] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "bad name", "host:0", "host:x", "http://host"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod config_tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::config::Config;

    fn errors_of(admin: &str) -> String {
        let text = format!(
            "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:143\"\ntls = \"none\"\nplaintext_auth = true\n\n\
             [[backend]]\nname = \"a\"\nhost = \"127.0.0.2\"\n\n[admin]\n{admin}\n"
        );
        match Config::from_toml_str(&text) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn admin_keys_parse_and_validate() {
        assert_eq!(
            errors_of(
                "token = \"abc-0123456789abcdef\"\nsocket = \"/run/m.sock\"\nsocket_mode = 0o660\n\
                 names = [\"d.example.net\", \"d.example.net:8443\"]\nmetrics_public = false"
            ),
            ""
        );
        let e = errors_of("token = \"abc\"\ntoken_file = \"t\"");
        assert!(
            e.contains("admin.token_file: is set as well as admin.token"),
            "{e}"
        );
        let e = errors_of("token = \"has space\"");
        assert!(e.contains("admin.token: is not a bearer token"), "{e}");
        let e = errors_of("socket_mode = 0o666");
        assert!(e.contains("admin.socket_mode: 0o666 is not allowed"), "{e}");
        let e = errors_of(&format!("socket = \"/{}\"", "s".repeat(120)));
        assert!(
            e.contains("admin.socket:") && e.contains("more than the 107"),
            "{e}"
        );
        let e = errors_of("names = [\"ok.example\", \"bad name\"]");
        assert!(e.contains("admin.names[1]:"), "{e}");
        let e = errors_of("tokne = \"x\"");
        assert!(e.contains("tokne"), "a misspelt key is an error: {e}");
    }

    #[test]
    fn token_file_is_relative_to_the_config_and_checked() {
        let dir = std::env::temp_dir().join(format!("mailpin-admin-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("mailpin.toml");
        std::fs::write(
            &config,
            "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:143\"\ntls = \"none\"\nplaintext_auth = true\n\n\
             [[backend]]\nname = \"a\"\nhost = \"127.0.0.2\"\n\n[admin]\ntoken_file = \"admin-token\"\nsocket = \"run/admin.sock\"\n",
        )
        .unwrap();
        let e = Config::load(&config).unwrap_err().to_string();
        assert!(e.contains("admin-token does not exist"), "{e}");
        assert!(e.contains("admin.socket: its directory"), "{e}");
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::write(dir.join("admin-token"), "tok-0123456789abcdef\n").unwrap();
        std::fs::set_permissions(
            dir.join("admin-token"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let loaded = Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.admin.token_file, dir.join("admin-token"));
        assert_eq!(loaded.admin.socket, dir.join("run/admin.sock"));
        let warnings: Vec<String> = loaded.warnings().iter().map(ToString::to_string).collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("admin.token_file") && w.contains("0o640")),
            "{warnings:?}"
        );
        std::fs::write(dir.join("admin-token"), "two words\n").unwrap();
        let e = Config::load(&config).unwrap_err().to_string();
        assert!(e.contains("is not a bearer token"), "{e}");
        assert!(!e.contains("two words"), "the content is never shown: {e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_public_listener_without_a_token_is_warned_about() {
        let text = "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:143\"\ntls = \"none\"\nplaintext_auth = true\n\n\
                    [[backend]]\nname = \"a\"\nhost = \"127.0.0.2\"\n\n[admin]\nlisten = \"0.0.0.0:9120\"\n";
        let warned = |text: &str| {
            Config::from_toml_str(text)
                .unwrap()
                .warnings()
                .iter()
                .any(|w| w.path == "admin.listen")
        };
        assert!(warned(text));
        assert!(!warned(&format!(
            "{text}token = \"tok-0123456789abcdef\"\n"
        )));
    }
}
