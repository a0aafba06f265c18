//! Durations in the configuration: `"500ms"`, `"2s"`, `"15m"`, `"1h"`.
//!
//! A duration is a non-negative whole number followed directly by one unit:
//! `ms` (milliseconds), `s` (seconds), `m` (minutes) or `h` (hours). No
//! fractions, no spaces, no compound forms: `"1500ms"` rather than `"1.5s"`.
//! [`parse_duration`] reads one, [`format_duration`] writes one back in the
//! largest unit that represents it exactly, and the `deserialize*` helpers
//! plug the parser into serde for the config schema.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Why a duration string was rejected. Its `Display` is a complete sentence
/// fragment with a hint, ready to follow a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// The string was empty (or only whitespace).
    Empty,
    /// A number with no unit, such as `"5"`.
    MissingUnit(String),
    /// A number followed by something that is not `ms`, `s`, `m` or `h`.
    UnknownUnit(String),
    /// A leading minus sign.
    Negative(String),
    /// A decimal point or other non-digit in the number.
    NotANumber(String),
    /// The value does not fit in a `Duration` (or in a `u64` of its unit).
    Overflow(String),
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: &str =
            "a whole number and a unit: ms, s, m or h, e.g. \"500ms\", \"2s\", \"15m\"";
        match self {
            Self::Empty => write!(f, "empty duration (expected {UNITS})"),
            Self::MissingUnit(s) => {
                write!(
                    f,
                    "{s:?} has no unit (expected {UNITS}; \"{s}s\" means {s} seconds)"
                )
            }
            Self::UnknownUnit(s) => write!(f, "{s:?} has an unknown unit (expected {UNITS})"),
            Self::Negative(s) => write!(f, "{s:?} is negative (durations are 0 or more)"),
            Self::NotANumber(s) => write!(
                f,
                "{s:?} is not a duration (expected {UNITS}; no fractions: \"1500ms\", not \"1.5s\")"
            ),
            Self::Overflow(s) => write!(f, "{s:?} is too large a duration"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses a configuration duration such as `"500ms"`, `"2s"`, `"15m"` or
/// `"1h"`. Leading and trailing whitespace is ignored.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    if trimmed.starts_with('-') {
        return Err(DurationError::Negative(trimmed.to_owned()));
    }
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits_end);
    if number.is_empty() || unit.starts_with(['.', ',']) || unit.starts_with(char::is_whitespace) {
        return Err(DurationError::NotANumber(trimmed.to_owned()));
    }
    if unit.is_empty() {
        return Err(DurationError::MissingUnit(trimmed.to_owned()));
    }
    let overflow = || DurationError::Overflow(trimmed.to_owned());
    let count: u64 = number.parse().map_err(|_| overflow())?;
    match unit {
        "ms" => Ok(Duration::from_millis(count)),
        "s" => Ok(Duration::from_secs(count)),
        "m" => count
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(overflow),
        "h" => count
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(overflow),
        _ => Err(DurationError::UnknownUnit(trimmed.to_owned())),
    }
}

/// Writes a duration the way the configuration spells it, in the largest
/// unit that represents it exactly: `1h`, `15m`, `2s`, `500ms`. Sub-millisecond
/// parts (which the parser never produces) are rounded down.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if millis.is_multiple_of(3_600_000) {
        format!("{}h", millis / 3_600_000)
    } else if millis.is_multiple_of(60_000) {
        format!("{}m", millis / 60_000)
    } else if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// The serde visitor behind [`deserialize`]: accepts only strings, so that a
/// bare number (`timeout = 5`) gets the "no unit" hint rather than a silent
/// guess at its unit.
struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"500ms\", \"2s\", \"15m\" or \"1h\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Duration, E> {
        Err(E::custom(DurationError::MissingUnit(number.to_string())))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Duration, E> {
        Err(E::custom(DurationError::MissingUnit(number.to_string())))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Duration, E> {
        Err(E::custom(DurationError::NotANumber(number.to_string())))
    }
}

/// Serde `deserialize_with` helper for a required [`Duration`] key.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

/// Serde `deserialize_with` helper for an optional [`Duration`] key (an
/// override that is absent unless written).
pub fn deserialize_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    deserializer.deserialize_any(DurationVisitor).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("   "), Err(DurationError::Empty));
    }

    #[test]
    fn rejects_a_number_without_unit() {
        let err = parse_duration("5").unwrap_err();
        assert_eq!(err, DurationError::MissingUnit("5".into()));
        assert!(err.to_string().contains("\"5s\" means 5 seconds"), "{err}");
    }

    #[test]
    fn rejects_unknown_unit() {
        assert_eq!(
            parse_duration("5x"),
            Err(DurationError::UnknownUnit("5x".into()))
        );
        assert_eq!(
            parse_duration("5sec"),
            Err(DurationError::UnknownUnit("5sec".into()))
        );
        assert_eq!(
            parse_duration("5d"),
            Err(DurationError::UnknownUnit("5d".into()))
        );
    }

    #[test]
    fn rejects_negative() {
        assert_eq!(
            parse_duration("-1s"),
            Err(DurationError::Negative("-1s".into()))
        );
    }

    #[test]
    fn rejects_fractions_and_junk() {
        assert_eq!(
            parse_duration("1.5s"),
            Err(DurationError::NotANumber("1.5s".into()))
        );
        assert_eq!(
            parse_duration("s"),
            Err(DurationError::NotANumber("s".into()))
        );
        assert_eq!(
            parse_duration("2 s"),
            Err(DurationError::NotANumber("2 s".into()))
        );
    }

    #[test]
    fn rejects_overflow() {
        let huge = "99999999999999999999999s";
        assert_eq!(
            parse_duration(huge),
            Err(DurationError::Overflow(huge.into()))
        );
        let hours = format!("{}h", u64::MAX / 3600 + 1);
        assert_eq!(
            parse_duration(&hours),
            Err(DurationError::Overflow(hours.clone()))
        );
        let minutes = format!("{}m", u64::MAX);
        assert_eq!(
            parse_duration(&minutes),
            Err(DurationError::Overflow(minutes.clone()))
        );
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn format_then_parse_round_trips() {
        for text in ["500ms", "2s", "15m", "1h", "90s", "0s"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
    }
}
