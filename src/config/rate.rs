//! The rate-limit string grammar shared by routes, global defaults and key
//! records:
//!
//! ```text
//! <count> ("/" | "per") [<n>] <unit> ["per" <key>] ["burst" <count>]
//! unit := second | minute | hour | day | week | month (30 days) | year (365 days)
//!         (plurals and s, sec, m, min, h, d, w also accepted)
//! key  := ip | consumer | key | user | route | header:<name>
//! ```
//!
//! Examples: `"10/minute"`, `"10 per minute"`, `"1000 per day per key"`,
//! `"3 per hour per route"`, `"100 per 5 minutes per header:X-Tenant burst 20"`.
//! Without `per`, a limit counts per client IP (the flask-limiter default).

use std::fmt;
use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Deserializer};

/// What a rate limit counts by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Ip,
    Consumer,
    Key,
    User,
    Route,
    Header(HeaderName),
}

/// One parsed limit: `count` requests per `period`, counted by `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateSpec {
    pub count: u32,
    pub period: Duration,
    pub key: LimitKey,
    /// How many requests may arrive at once; defaults to `count`.
    pub burst: Option<u32>,
    /// The text as written, for messages and headers.
    pub text: String,
}

const UNITS: &[(&[&str], u64)] = &[
    (&["s", "sec", "secs", "second", "seconds"], 1),
    (&["m", "min", "mins", "minute", "minutes"], 60),
    (&["h", "hr", "hour", "hours"], 3_600),
    (&["d", "day", "days"], 86_400),
    (&["w", "week", "weeks"], 604_800),
    (&["month", "months"], 30 * 86_400),
    (&["y", "year", "years"], 365 * 86_400),
];

fn unit_seconds(word: &str) -> Option<u64> {
    let word = word.to_ascii_lowercase();
    UNITS
        .iter()
        .find(|(names, _)| names.contains(&word.as_str()))
        .map(|(_, secs)| *secs)
}

fn parse_key(word: &str) -> Result<LimitKey, String> {
    let lower = word.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "ip" => LimitKey::Ip,
        "consumer" => LimitKey::Consumer,
        "key" => LimitKey::Key,
        "user" => LimitKey::User,
        "route" => LimitKey::Route,
        _ => match lower.strip_prefix("header:") {
            Some(name) if !name.is_empty() => LimitKey::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("`{name}` is not a valid header name"))?,
            ),
            _ => {
                return Err(format!(
                    "unknown limit key `{word}`; use ip, consumer, key, user, route or header:NAME"
                ));
            }
        },
    })
}

pub fn parse_rate(text: &str) -> Result<RateSpec, String> {
    let spaced = text.replace('/', " / ");
    let mut words = spaced.split_whitespace().peekable();
    let bad = |why: &str| {
        format!("invalid rate limit `{text}`: {why} (e.g. \"10/minute\" or \"100 per hour per key\")")
    };

    let count: u32 = words
        .next()
        .and_then(|w| w.parse().ok())
        .filter(|c| *c > 0)
        .ok_or_else(|| bad("it must start with a positive whole number"))?;
    match words.next() {
        Some("/") => {}
        Some(w) if w.eq_ignore_ascii_case("per") => {}
        _ => return Err(bad("expected `/` or `per` after the count")),
    }
    // The period: `minute`, `5 minutes` or `60s`.
    let period_word = words.next().unwrap_or("");
    let digits = period_word
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(period_word.len());
    let (multiplier, unit_word) = if digits == 0 {
        (1, period_word)
    } else if digits == period_word.len() {
        (
            period_word
                .parse::<u64>()
                .map_err(|_| bad("the period is too long"))?,
            words.next().unwrap_or(""),
        )
    } else {
        let n = period_word[..digits]
            .parse::<u64>()
            .map_err(|_| bad("the period is too long"))?;
        (n, &period_word[digits..])
    };
    if multiplier == 0 {
        return Err(bad("the period cannot be zero"));
    }
    let unit = unit_seconds(unit_word)
        .ok_or_else(|| bad("expected a unit: second, minute, hour, day, week, month or year"))?;

    let mut key = LimitKey::Ip;
    let mut burst = None;
    while let Some(word) = words.next() {
        if word.eq_ignore_ascii_case("per") {
            let what = words.next().ok_or_else(|| bad("`per` needs a key"))?;
            key = parse_key(what).map_err(|e| bad(&e))?;
        } else if word.eq_ignore_ascii_case("burst") {
            let n: u32 = words
                .next()
                .and_then(|w| w.parse().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("`burst` needs a positive whole number"))?;
            burst = Some(n);
        } else {
            return Err(bad(&format!("unexpected `{word}`")));
        }
    }
    let seconds = multiplier
        .checked_mul(unit)
        .ok_or_else(|| bad("the period is too long"))?;
    Ok(RateSpec {
        count,
        period: Duration::from_secs(seconds),
        key,
        burst,
        text: text.trim().to_string(),
    })
}

impl<'de> Deserialize<'de> for RateSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_rate(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            LimitKey::Ip => f.write_str("ip"),
            LimitKey::Consumer => f.write_str("consumer"),
            LimitKey::Key => f.write_str("key"),
            LimitKey::User => f.write_str("user"),
            LimitKey::Route => f.write_str("route"),
            LimitKey::Header(name) => write!(f, "header:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn accepted_forms() {
        let cases: &[(&str, u32, u64, LimitKey, Option<u32>)] = &[
            ("10/minute", 10, 60, LimitKey::Ip, None),
            ("10 per minute", 10, 60, LimitKey::Ip, None),
            ("10/min per ip", 10, 60, LimitKey::Ip, None),
            ("1000 per day per key", 1000, 86_400, LimitKey::Key, None),
            ("1000/day per consumer", 1000, 86_400, LimitKey::Consumer, None),
            ("3 per hour per route", 3, 3_600, LimitKey::Route, None),
            ("20/minute per user burst 5", 20, 60, LimitKey::User, Some(5)),
            ("100 per 5 minutes", 100, 300, LimitKey::Ip, None),
            ("100/60s", 100, 60, LimitKey::Ip, None),
            ("5 PER HOUR PER KEY", 5, 3_600, LimitKey::Key, None),
            ("1 per month", 1, 30 * 86_400, LimitKey::Ip, None),
            (
                "50/second per header:X-Tenant",
                50,
                1,
                LimitKey::Header(HeaderName::from_static("x-tenant")),
                None,
            ),
        ];
        for (text, count, period, key, burst) in cases {
            let spec = parse_rate(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(spec.count, *count, "{text}");
            assert_eq!(spec.period, secs(*period), "{text}");
            assert_eq!(&spec.key, key, "{text}");
            assert_eq!(spec.burst, *burst, "{text}");
        }
    }

    #[test]
    fn rejected_forms() {
        for text in [
            "",
            "ten per minute",
            "0/minute",
            "10 minute",
            "10/fortnight",
            "10/minute per planet",
            "10/minute per header:",
            "10/minute per",
            "10/minute burst 0",
            "10/minute extra",
            "10/0 minutes",
            "-5/minute",
            "10/minute per header:bad header",
        ] {
            assert!(parse_rate(text).is_err(), "`{text}` should be rejected");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use rand::Rng;

    #[test]
    fn random_limit_strings_never_panic() {
        const WORDS: &[&str] = &[
            "10",
            "0",
            "/",
            "per",
            "minute",
            "5",
            "hours",
            "ip",
            "key",
            "header:",
            "header:X-A",
            "burst",
            "3",
            "99999999999999999999",
            "-1",
            "s",
            "year",
            " ",
            "route",
            "consumer",
        ];
        let mut rng = rand::rng();
        for _ in 0..50_000 {
            let text: Vec<&str> = (0..rng.random_range(0..8))
                .map(|_| WORDS[rng.random_range(0..WORDS.len())])
                .collect();
            let text = text.join(" ");
            if let Ok(spec) = parse_rate(&text) {
                assert!(spec.count > 0 && !spec.period.is_zero(), "{text}");
            }
        }
    }
}
