//! Configuration problems: what is wrong, at which key, and where in the file.
//!
//! [`ConfigErrors`] collects every error found in one pass (syntax, types,
//! unknown keys, semantic checks, files) so that `mailpin check` can list them
//! all at once, one per line. [`ConfigWarning`] marks things that work but are
//! probably not what was meant; they never make a config invalid.

use std::fmt;
use std::path::{Path, PathBuf};

/// A 1-based line and column in the configuration text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column (in characters), starting at 1.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text`. Offsets past the end point
    /// just after the last character.
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
        Self {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    message: String,
    location: Option<Location>,
}

impl ConfigError {
    /// A problem at key `path` (such as `backend[2].weight`; empty when the
    /// problem is not tied to a key, like a TOML syntax error). `message`
    /// says what is wrong and, where it helps, what to write instead.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            location: None,
        }
    }

    /// The same problem, pinned to a place in the configuration text.
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    /// The key path, such as `listen[0].addr`; empty if there is none.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, with a hint.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where in the configuration text, when the problem came from a file or string.
    pub fn location(&self) -> Option<Location> {
        self.location
    }

    pub(crate) fn set_location_if_unknown(&mut self, location: Option<Location>) {
        if self.location.is_none() {
            self.location = location;
        }
    }
}

/// `path: message`, without the location (see [`ConfigErrors`] for the
/// located form).
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a configuration, in the order they were found.
///
/// `Display` writes one problem per line, no trailing newline; this is
/// exactly what `mailpin check` prints. A problem with a known location is
/// prefixed compiler-style with `FILE:LINE:COLUMN: ` when the config came
/// from a file, or `line L, column C: ` when it came from a string:
///
/// ```text
/// config/mailpin.toml:18:1: backend[2].weight: must be greater than 0 (to take no new users, drain the backend: mailpin ctl backend NAME drain)
/// listen: no listeners (add a [[listen]] section, e.g. protocol = "imap", addr = "0.0.0.0:993")
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors {
    source: Option<PathBuf>,
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// An empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one problem.
    pub fn push(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// Adds every problem of `other`.
    pub fn extend(&mut self, other: ConfigErrors) {
        self.errors.extend(other.errors);
    }

    /// Names the file the problems were found in (for the display prefix).
    pub fn with_source(mut self, path: &Path) -> Self {
        self.source = Some(path.to_owned());
        self
    }

    /// The file the problems were found in, if they came from one.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The problems, in the order they were found.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(())` if empty, else `Err(self)`.
    pub fn into_result(self) -> Result<(), ConfigErrors> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// Whether some problem is at exactly `path`; handy in tests.
    pub fn has_path(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.errors.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            match (&self.source, error.location) {
                (Some(file), Some(at)) => {
                    write!(f, "{}:{}:{}: ", file.display(), at.line, at.column)?
                }
                (None, Some(at)) => write!(f, "line {}, column {}: ", at.line, at.column)?,
                (_, None) => {}
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self {
            source: None,
            errors: vec![error],
        }
    }
}

/// Something in a valid configuration that is probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The key path, such as `health.timeout`.
    pub path: String,
    /// What looks wrong and why.
    pub message: String,
}

/// `warning: path: message`, one line.
impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}: {}", self.path, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_counts_lines_and_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(
            Location::of_offset(text, 0),
            Location { line: 1, column: 1 }
        );
        assert_eq!(
            Location::of_offset(text, 6),
            Location { line: 2, column: 1 }
        );
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(
            Location::of_offset(text, 12),
            Location { line: 2, column: 6 }
        );
        assert_eq!(
            Location::of_offset(text, 999),
            Location { line: 3, column: 1 }
        );
    }

    #[test]
    fn display_is_one_problem_per_line_with_prefixes() {
        let mut errors = ConfigErrors::new();
        errors.push(
            ConfigError::new("backend[2].weight", "must be greater than 0").at(Location {
                line: 14,
                column: 10,
            }),
        );
        errors.push(ConfigError::new("listen", "no listeners"));
        assert_eq!(
            errors.to_string(),
            "line 14, column 10: backend[2].weight: must be greater than 0\nlisten: no listeners"
        );
        let errors = errors.with_source(Path::new("mailpin.toml"));
        assert_eq!(
            errors.to_string(),
            "mailpin.toml:14:10: backend[2].weight: must be greater than 0\nlisten: no listeners"
        );
    }

    #[test]
    fn a_pathless_error_is_just_its_message() {
        assert_eq!(
            ConfigError::new("", "TOML syntax: oops").to_string(),
            "TOML syntax: oops"
        );
    }
}
