//! The checks of the live-move keys (issue 12): `server.live_move`,
//! `backends.master_user` and `backends.master_password_file`, and the
//! reading of the master password, at start and on every reload, from the
//! file (never from the config text, never logged).

use std::path::Path;

use super::error::{ConfigError, ConfigErrors};
use super::values::Secret;
use super::Config;

/// The longest master user name or password accepted, in bytes (SASL
/// PLAIN carries both in one line).
pub const MAX_MASTER_FIELD: usize = 255;

/// Semantic checks: a master user needs its password file and the other
/// way round, and the name must fit in a SASL PLAIN message.
pub(crate) fn check_live_move(config: &Config, errors: &mut ConfigErrors) {
    let b = &config.backends;
    let user_set = !b.master_user.is_empty();
    let file_set = !b.master_password_file.as_os_str().is_empty();
    if user_set && !file_set {
        errors.push(ConfigError::new(
            "backends.master_password_file",
            "is empty but backends.master_user is set: name the file holding the master password",
        ));
    }
    if file_set && !user_set {
        errors.push(ConfigError::new(
            "backends.master_user",
            "is empty but backends.master_password_file is set: name the Dovecot master user",
        ));
    }
    if user_set {
        if let Err(message) = check_field(&b.master_user) {
            errors.push(ConfigError::new("backends.master_user", message));
        }
    }
}

/// A SASL PLAIN field: no NUL or other control character, not too long.
fn check_field(value: &str) -> Result<(), String> {
    if value.len() > MAX_MASTER_FIELD {
        return Err(format!("is longer than {MAX_MASTER_FIELD} bytes"));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err("contains a control character".to_owned());
    }
    Ok(())
}

/// Reads the master password: the file's first line, without its line end.
pub fn read_master_password(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => format!("{} does not exist", path.display()),
        std::io::ErrorKind::PermissionDenied => format!(
            "{} is not readable by this user (check its owner and mode)",
            path.display()
        ),
        _ => format!("{} cannot be read: {error}", path.display()),
    })?;
    let password = text.lines().next().unwrap_or("");
    if password.is_empty() {
        return Err(format!(
            "{}: the first line is empty: write the master password there",
            path.display()
        ));
    }
    check_field(password).map_err(|m| format!("{}: the password {m}", path.display()))?;
    Ok(Secret::new(password))
}

/// Machine checks: reads the master password file into the config (so a
/// start and a reload both use the file's current content).
pub(crate) fn load_master_password(config: &mut Config, errors: &mut ConfigErrors) {
    let file = &config.backends.master_password_file;
    if file.as_os_str().is_empty() {
        return;
    }
    match read_master_password(file) {
        Ok(secret) => config.backends.master_password = secret,
        Err(message) => errors.push(ConfigError::new("backends.master_password_file", message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:1143\"\nplaintext_auth = true\n[[backend]]\nname = \"a\"\nhost = \"127.0.0.1\"\n";

    #[test]
    fn defaults_keep_older_configs_valid() {
        let config = Config::from_toml_str(BASE).unwrap();
        assert!(config.server.live_move);
        assert!(config.backends.master_user.is_empty());
        assert!(!config.backends.has_master_user());
    }

    #[test]
    fn a_master_user_needs_its_password_file_and_the_other_way_round() {
        let text = format!("[backends]\nmaster_user = \"mailpin\"\n{BASE}");
        let e = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(e.contains("backends.master_password_file"), "{e}");
        let text = format!("[backends]\nmaster_password_file = \"m.pass\"\n{BASE}");
        let e = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(e.contains("backends.master_user"), "{e}");
        let text =
            format!("[backends]\nmaster_user = \"a\\u0001\"\nmaster_password_file = \"m\"\n{BASE}");
        let e = Config::from_toml_str(&text).unwrap_err().to_string();
        assert!(e.contains("control character"), "{e}");
    }

    #[test]
    fn the_password_is_read_relative_to_the_config_file_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("mailpin-master-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("master.pass"), "s3cret\n").unwrap();
        let text = format!(
            "[server]\nlive_move = true\n[backends]\nmaster_user = \"mailpin\"\nmaster_password_file = \"master.pass\"\n{BASE}"
        );
        std::fs::write(dir.join("mailpin.toml"), &text).unwrap();
        let config = Config::load(dir.join("mailpin.toml")).unwrap();
        assert_eq!(config.backends.master_password.expose(), "s3cret");
        assert!(config.backends.has_master_user());
        assert!(!format!("{config:?}").contains("s3cret"));
        std::fs::write(dir.join("master.pass"), "\n").unwrap();
        let e = Config::load(dir.join("mailpin.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("first line is empty"), "{e}");
        std::fs::remove_file(dir.join("master.pass")).unwrap();
        let e = Config::load(dir.join("mailpin.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
