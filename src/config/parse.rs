//! Reading configuration text into a [`Config`], collecting every syntax,
//! type and unknown-key error with its key path and line/column.
//!
//! serde stops at the first error of a struct, so the document is first
//! parsed into a spanned TOML tree, then each section (and each element of
//! `[[listen]]` and `[[backend]]`) is deserialized on its own. When a
//! section fails, the offending key is taken out and the section tried
//! again, so that several bad keys in one table are all reported. The key
//! path of an error is found from its span in the tree.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::error::{ConfigError, ConfigErrors, Location};
use super::Config;

/// The top-level keys of the schema, in the order the reference config uses.
const SECTIONS: [&str; 10] = [
    "server", "tls", "listen", "backends", "backend", "health", "admin", "cluster", "limits", "log",
];

/// Parses `text` into a [`Config`] without semantic validation. Every
/// problem found carries a key path and a location in `text`.
pub(crate) fn parse_config(text: &str) -> Result<(Config, Document<'_>), ConfigErrors> {
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    let document = Document { text, root };
    if !syntax_errors.is_empty() {
        let mut errors = ConfigErrors::new();
        for error in syntax_errors {
            let location = error
                .span()
                .map(|span| Location::of_offset(text, span.start));
            let mut problem = ConfigError::new("", format!("TOML syntax: {}", error.message()));
            problem.set_location_if_unknown(location);
            errors.push(problem);
        }
        return Err(errors);
    }

    let mut errors = ConfigErrors::new();
    let table = document.root.get_ref();
    for (key, _) in table.iter() {
        if !SECTIONS.contains(&key.get_ref().as_ref()) {
            errors.push(
                ConfigError::new(
                    key.get_ref().as_ref(),
                    format!(
                        "unknown key (the sections are {})",
                        SECTIONS.map(|s| format!("`{s}`")).join(", ")
                    ),
                )
                .at(Location::of_offset(text, key.span().start)),
            );
        }
    }

    let mut config = Config::default();
    if let Some(value) = table.get("server") {
        config.server = document
            .section(value, "server", &mut errors)
            .unwrap_or_default();
    }
    if let Some(value) = table.get("tls") {
        config.tls = document.section(value, "tls", &mut errors);
    }
    if let Some(value) = table.get("listen") {
        config.listen = document.array_of_tables(value, "listen", &mut errors);
    }
    if let Some(value) = table.get("backends") {
        config.backends = document
            .section(value, "backends", &mut errors)
            .unwrap_or_default();
    }
    if let Some(value) = table.get("backend") {
        config.backend = document.array_of_tables(value, "backend", &mut errors);
    }
    if let Some(value) = table.get("health") {
        config.health = document
            .section(value, "health", &mut errors)
            .unwrap_or_default();
    }
    if let Some(value) = table.get("admin") {
        config.admin = document
            .section(value, "admin", &mut errors)
            .unwrap_or_default();
    }
    if let Some(value) = table.get("cluster") {
        config.cluster = document.section(value, "cluster", &mut errors);
    }
    if let Some(value) = table.get("limits") {
        config.limits = document
            .section(value, "limits", &mut errors)
            .unwrap_or_default();
    }
    if let Some(value) = table.get("log") {
        config.log = document
            .section(value, "log", &mut errors)
            .unwrap_or_default();
    }

    if errors.is_empty() {
        Ok((config, document))
    } else {
        Err(errors)
    }
}

/// The parsed TOML tree of a configuration, kept to locate keys by path.
pub(crate) struct Document<'i> {
    text: &'i str,
    root: Spanned<DeTable<'i>>,
}

impl<'i> Document<'i> {
    /// The location of the key at `path` (such as `backend[2].weight`), or
    /// of its nearest ancestor present in the text; `None` if not even the
    /// first segment is.
    pub(crate) fn locate_path(&self, path: &str) -> Option<Location> {
        let mut found: Option<usize> = None;
        let mut table = Some(self.root.get_ref());
        for segment in path.split('.') {
            let (name, indices) = split_indices(segment);
            let Some((key, mut entry)) = table.and_then(|t| t.get_key_value(name)) else {
                break;
            };
            found = Some(key.span().start);
            let mut complete = true;
            for index in indices {
                match entry.get_ref() {
                    DeValue::Array(items) if index < items.len() => {
                        entry = &items[index];
                        found = Some(entry.span().start);
                    }
                    _ => {
                        complete = false;
                        break;
                    }
                }
            }
            table = match (complete, entry.get_ref()) {
                (true, DeValue::Table(t)) => Some(t),
                _ => None,
            };
        }
        found.map(|offset| Location::of_offset(self.text, offset))
    }

    /// Deserializes one table-valued section, reporting every bad key.
    fn section<T: DeserializeOwned>(
        &self,
        value: &Spanned<DeValue<'i>>,
        path: &str,
        errors: &mut ConfigErrors,
    ) -> Option<T> {
        if !matches!(value.get_ref(), DeValue::Table(_)) {
            errors.push(
                ConfigError::new(
                    path,
                    format!("must be a table (write [{path}] on its own line)"),
                )
                .at(Location::of_offset(self.text, value.span().start)),
            );
            return None;
        }
        self.deserialize_reporting_all(value.clone(), path, errors)
    }

    /// Deserializes every element of an array-of-tables section such as
    /// `[[listen]]`; elements with errors are left out.
    fn array_of_tables<T: DeserializeOwned>(
        &self,
        value: &Spanned<DeValue<'i>>,
        path: &str,
        errors: &mut ConfigErrors,
    ) -> Vec<T> {
        let DeValue::Array(items) = value.get_ref() else {
            errors.push(
                ConfigError::new(
                    path,
                    format!("must be an array of tables (write [[{path}]], with two brackets)"),
                )
                .at(Location::of_offset(self.text, value.span().start)),
            );
            return Vec::new();
        };
        let mut parsed = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{index}]");
            if !matches!(item.get_ref(), DeValue::Table(_)) {
                errors.push(
                    ConfigError::new(item_path, "must be a table")
                        .at(Location::of_offset(self.text, item.span().start)),
                );
                continue;
            }
            if let Some(element) = self.deserialize_reporting_all(item.clone(), &item_path, errors)
            {
                parsed.push(element);
            }
        }
        parsed
    }

    /// Deserializes a table; on an error at some key, records it, drops that
    /// key and tries again, so every bad key of the table is reported.
    /// Returns `None` if anything was wrong.
    fn deserialize_reporting_all<T: DeserializeOwned>(
        &self,
        mut value: Spanned<DeValue<'i>>,
        path: &str,
        errors: &mut ConfigErrors,
    ) -> Option<T> {
        let mut removed: Vec<String> = Vec::new();
        let attempts = match value.get_ref() {
            DeValue::Table(table) => table.len() + 1,
            _ => 1,
        };
        for _ in 0..attempts {
            let error = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(parsed) if removed.is_empty() => return Some(parsed),
                Ok(_) => return None,
                Err(error) => error,
            };
            if let Some(field) = missing_field(error.message()) {
                // A key we dropped is now "missing": already reported.
                if !removed.iter().any(|r| r == field) {
                    errors.push(
                        ConfigError::new(format!("{path}.{field}"), "required key is missing")
                            .at(Location::of_offset(self.text, value.span().start)),
                    );
                }
                return None;
            }
            let span = error.span().unwrap_or_else(|| value.span());
            let (sub_path, top_key) = locate_span(&value, &span, path);
            errors.push(
                ConfigError::new(sub_path, config_wording(error.message()))
                    .at(Location::of_offset(self.text, span.start)),
            );
            let (Some(key), DeValue::Table(table)) = (top_key, value.get_mut()) else {
                return None;
            };
            table.remove(key.as_str());
            removed.push(key);
        }
        None
    }
}

/// serde's message in the words of a config file: "key" rather than "field".
fn config_wording(message: &str) -> String {
    match message.strip_prefix("unknown field `") {
        Some(rest) => format!("unknown key `{rest}"),
        None => message.to_owned(),
    }
}

/// The field name in serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// Splits `listen[0]` into `("listen", [0])`; malformed indices end the list.
fn split_indices(segment: &str) -> (&str, Vec<usize>) {
    let Some(open) = segment.find('[') else {
        return (segment, Vec::new());
    };
    let indices = segment[open..]
        .split('[')
        .skip(1)
        .map_while(|part| part.strip_suffix(']')?.parse().ok())
        .collect();
    (&segment[..open], indices)
}

/// The deepest key path under `value` (a table at `path`) whose key or value
/// holds `span`, and the top-level key of `value` on the way there.
fn locate_span(
    value: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &str,
) -> (String, Option<String>) {
    let within = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    let mut sub_path = path.to_owned();
    let mut top_key = None;
    let mut current = value;
    // Each step goes one level deeper; the bound is far beyond any real nesting.
    for _ in 0..64 {
        let next = match current.get_ref() {
            DeValue::Table(table) => table.iter().find_map(|(key, entry)| {
                (within(key.span()) || within(entry.span())).then(|| {
                    let name = key.get_ref().to_string();
                    sub_path.push('.');
                    sub_path.push_str(&name);
                    if top_key.is_none() {
                        top_key = Some(name);
                    }
                    entry
                })
            }),
            DeValue::Array(items) => items.iter().enumerate().find_map(|(index, item)| {
                within(item.span()).then(|| {
                    sub_path.push_str(&format!("[{index}]"));
                    item
                })
            }),
            _ => None,
        };
        match next {
            Some(next) => current = next,
            None => break,
        }
    }
    (sub_path, top_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_indices() {
        assert_eq!(split_indices("listen[0]"), ("listen", vec![0]));
        assert_eq!(split_indices("etcd[1][2]"), ("etcd", vec![1, 2]));
        assert_eq!(split_indices("server"), ("server", vec![]));
        assert_eq!(split_indices("bad[x]"), ("bad", vec![]));
    }

    #[test]
    fn reads_missing_field_messages() {
        assert_eq!(missing_field("missing field `addr`"), Some("addr"));
        assert_eq!(missing_field("unknown field `x`"), None);
    }

    #[test]
    fn locates_paths_in_the_text() {
        let text = "[server]\ncores = 2\n\n[[backend]]\nname = \"a\"\n\n[[backend]]\nname = \"b\"\nweight = 0\n";
        let (root, errors) = DeTable::parse_recoverable(text);
        assert!(errors.is_empty());
        let document = Document { text, root };
        assert_eq!(
            document.locate_path("server.cores"),
            Some(Location { line: 2, column: 1 })
        );
        assert_eq!(
            document.locate_path("backend[1].weight"),
            Some(Location { line: 9, column: 1 })
        );
        // A key that is absent falls back to its nearest ancestor.
        assert_eq!(
            document.locate_path("backend[1].host").map(|l| l.line),
            Some(7)
        );
        assert_eq!(document.locate_path("health.timeout"), None);
    }
}
