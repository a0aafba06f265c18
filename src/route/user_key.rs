//! The user key: the part of a login name that decides where a user lives.
//!
//! `server.user_key` is a small template: `%u` is the whole login name, `%n`
//! its local part (before the first `@`), `%d` its domain (after it, empty
//! when there is none); an `L` after the `%` lower-cases the value, and `%%`
//! is a literal percent sign. Everything else is copied as it stands. Two
//! logins with the same key always go to the same backend, so `%Ld` keeps a
//! whole domain (and its shared folders) together.
//!
//! A login name with a control character (NUL above all, which SASL PLAIN
//! uses as its separator) is never a user: [`check_login_name`] refuses it
//! before any key is made or any backend contacted.

use std::fmt;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field { field: Field, lower: bool },
}

/// Which part of the login name a `%` code stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Whole,
    Local,
    Domain,
}

/// A parsed `server.user_key` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeyFormat {
    parts: Vec<Part>,
}

/// Why a template was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKeyError(String);

impl fmt::Display for UserKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserKeyError {}

impl Default for UserKeyFormat {
    /// `%Lu`: the whole login name, lower-cased.
    fn default() -> Self {
        UserKeyFormat {
            parts: vec![Part::Field {
                field: Field::Whole,
                lower: true,
            }],
        }
    }
}

impl UserKeyFormat {
    /// Parses a template such as `%Lu`, `%Ld` or `%n@example.com`.
    pub fn parse(template: &str) -> Result<Self, UserKeyError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = template.chars();
        let mut has_field = false;
        while let Some(c) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            let mut code = chars.next();
            if code == Some('%') {
                text.push('%');
                continue;
            }
            let lower = code == Some('L');
            if lower {
                code = chars.next();
            }
            let field = match code {
                Some('u') => Field::Whole,
                Some('n') => Field::Local,
                Some('d') => Field::Domain,
                Some(other) => {
                    return Err(UserKeyError(format!(
                        "unknown code %{}{other} (use %u, %n, %d, optionally with L: %Lu)",
                        if lower { "L" } else { "" }
                    )))
                }
                None => {
                    return Err(UserKeyError(
                        "ends in the middle of a % code (use %u, %n, %d, %Lu, %Ln, %Ld or %%)"
                            .into(),
                    ))
                }
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Field { field, lower });
            has_field = true;
        }
        if !has_field {
            return Err(UserKeyError(
                "uses no % code, so every user would share one key (e.g. \"%Lu\")".into(),
            ));
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(UserKeyFormat { parts })
    }

    /// The key of a login name.
    pub fn key(&self, login: &str) -> String {
        let (local, domain) = match login.split_once('@') {
            Some((l, d)) => (l, d),
            None => (login, ""),
        };
        let mut out = String::with_capacity(login.len());
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field { field, lower } => {
                    let value = match field {
                        Field::Whole => login,
                        Field::Local => local,
                        Field::Domain => domain,
                    };
                    if *lower {
                        out.extend(value.chars().flat_map(char::to_lowercase));
                    } else {
                        out.push_str(value);
                    }
                }
            }
        }
        out
    }
}

/// Which identity of a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLoginName {
    /// The user name (SASL authcid, LOGIN/USER name) has a control character.
    User,
    /// The authorization identity (SASL authzid) has a control character.
    Authzid,
}

impl fmt::Display for BadLoginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadLoginName::User => "user name contains a control character",
            BadLoginName::Authzid => "authorization identity contains a control character",
        })
    }
}

impl std::error::Error for BadLoginName {}

/// Whether `name` may be a login name: no control character (C0 with NUL,
/// DEL, C1). Only the decoded name is checked, so SASL PLAIN's NUL
/// separators never reach here.
pub fn is_valid_login_name(name: &str) -> bool {
    !name.chars().any(char::is_control)
}

/// Checks a login's identities, `user` and the optional `authzid`.
pub fn check_login_name(user: &str, authzid: Option<&str>) -> Result<(), BadLoginName> {
    if !is_valid_login_name(user) {
        return Err(BadLoginName::User);
    }
    if authzid.is_some_and(|z| !is_valid_login_name(z)) {
        return Err(BadLoginName::Authzid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, login: &str) -> String {
        UserKeyFormat::parse(t).unwrap().key(login)
    }

    #[test]
    fn default_is_whole_name_lower_cased() {
        assert_eq!(
            UserKeyFormat::default().key("Alice@Example.COM"),
            "alice@example.com"
        );
        assert_eq!(
            UserKeyFormat::parse("%Lu").unwrap(),
            UserKeyFormat::default()
        );
    }

    #[test]
    fn local_part_and_domain() {
        assert_eq!(key("%n", "Bob@Example.com"), "Bob");
        assert_eq!(key("%Ln", "Bob@Example.com"), "bob");
        assert_eq!(key("%Ld", "Bob@Example.com"), "example.com");
        assert_eq!(key("%d", "bob"), "");
        assert_eq!(key("%n", "bob"), "bob");
        assert_eq!(key("%Ln", "a@b@c"), "a");
        assert_eq!(key("%d", "a@b@c"), "b@c");
    }

    #[test]
    fn literal_text_and_percent() {
        assert_eq!(key("%Ln@corp", "Bob@x"), "bob@corp");
        assert_eq!(key("100%%-%u", "x"), "100%-x");
    }

    #[test]
    fn lower_cases_unicode() {
        assert_eq!(key("%Lu", "ÄRGER@Ü.de"), "ärger@ü.de");
    }

    #[test]
    fn control_characters_are_no_login_names() {
        assert_eq!(check_login_name("alice@example.com", None), Ok(()));
        assert_eq!(check_login_name("jörg", Some("admin")), Ok(()));
        for bad in [
            "user0001\0user0002",
            "a\tb",
            "a\r\nb",
            "x\u{7f}",
            "x\u{85}",
            "\u{1b}[31m",
        ] {
            assert_eq!(
                check_login_name(bad, None),
                Err(BadLoginName::User),
                "{bad:?}"
            );
            assert_eq!(
                check_login_name("alice", Some(bad)),
                Err(BadLoginName::Authzid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_bad_templates() {
        assert!(UserKeyFormat::parse("%x").unwrap_err().0.contains("%x"));
        assert!(UserKeyFormat::parse("%Lx").unwrap_err().0.contains("%Lx"));
        assert!(UserKeyFormat::parse("%").is_err());
        assert!(UserKeyFormat::parse("%L").is_err());
        assert!(UserKeyFormat::parse("static")
            .unwrap_err()
            .0
            .contains("no % code"));
        assert!(UserKeyFormat::parse("%%").is_err());
    }
}
