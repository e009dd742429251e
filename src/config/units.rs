//! Parsers for the human-friendly values in the config file: durations
//! (`"30s"`, `"5m"`, `"90d"`, `"250ms"`) and sizes (`"1MiB"`, `"512KB"`, `"100"`).
//!
//! Both are deliberately strict: a number, optional whitespace and one known
//! unit. Anything else is an error that names the accepted units, so a typo
//! like `"30 secs"` is caught by `portcullis check` instead of meaning
//! something surprising at run time.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as `<number><unit>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

/// A byte size written as `<number><unit>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("sec", 1_000),
    ("m", 60_000),
    ("min", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
];

const SIZE_UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
];

/// Splits `"30 s"` into (30, "s"), rejecting empty numbers and signs.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim_start()))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration `{text}`: write a whole number and a unit (ms, s, m, h, d, w), e.g. \"30s\""
        )
    };
    let (number, unit) = split_number(text).ok_or_else(bad)?;
    let (_, millis) = DURATION_UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .ok_or_else(bad)?;
    number
        .checked_mul(*millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{text}` is too large"))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size `{text}`: write a whole number and a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. \"1MiB\""
        )
    };
    let (number, unit) = split_number(text).ok_or_else(bad)?;
    let (_, factor) = SIZE_UNITS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .ok_or_else(bad)?;
    number
        .checked_mul(*factor)
        .ok_or_else(|| format!("size `{text}` is too large"))
}

/// Formats a duration the way the config file writes it (largest exact unit).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, factor) in DURATION_UNITS.iter().rev() {
        if *factor > 1 && ms.is_multiple_of(*factor) && ms > 0 && unit.len() == 1 {
            return format!("{}{unit}", ms / factor);
        }
    }
    format!("{ms}ms")
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"1MiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(SizeVisitor)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("5 min", 300_000),
            ("250ms", 250),
            ("1h", 3_600_000),
            ("90d", 90 * 86_400_000),
            ("2w", 14 * 86_400_000),
            ("10S", 10_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)), "{text}");
        }
        for bad in [
            "",
            "s",
            "30",
            "-5s",
            "1.5h",
            "30 secs",
            "5y",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            ("1MiB", 1 << 20),
            ("16KiB", 16 << 10),
            ("512KB", 512_000),
            ("100", 100),
            ("100B", 100),
            ("2 GiB", 2 << 30),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "MiB", "1.5MiB", "1TB", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn duration_formatting_round_trips() {
        for text in ["30s", "5m", "1h", "90d", "250ms", "1w"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
