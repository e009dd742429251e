//! JSON Schema validation of request bodies, by the `jsonschema` crate
//! (drafts 4 to 2020-12; the draft comes from `$schema`, 2020-12 when
//! absent). Formats are checked, `pattern` uses the linear-time `regex`
//! engine, and no `$ref` is fetched from the network or disk.
//!
//! One format is ours: `date-not-future`, a `YYYY-MM-DD` date no later
//! than today (UTC), for "a start date, not in the future" (JSON Schema
//! cannot compare with today's date).
//!
//! Error messages are the crate's with the offending value masked: a 422
//! never echoes what the client sent (it may be a password).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::error::FieldError;

pub struct Schema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A `YYYY-MM-DD` date as days since 1970-01-01, if it is one.
pub fn parse_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = &text[r];
        s.bytes().all(|c| c.is_ascii_digit()).then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month[(month - 1) as usize] {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

fn today() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / 86_400) as i64
}

/// The `date-not-future` format.
pub fn date_not_future(text: &str) -> bool {
    parse_date(text).is_some_and(|day| day <= today())
}

impl Schema {
    /// Compiles a schema document.
    pub fn compile(document: &Value) -> Result<Schema, String> {
        jsonschema::options()
            .should_validate_formats(true)
            .with_pattern_options(jsonschema::PatternOptions::regex())
            .with_format("date-not-future", date_not_future)
            .build(document)
            .map(|validator| Schema { validator })
            .map_err(|e| format!("the schema is not valid: {}", e.masked()))
    }

    /// Adds a problem for each way `doc` breaks the schema, up to `cap`.
    pub fn check(&self, doc: &Value, errors: &mut Vec<FieldError>, cap: usize) {
        // Most bodies are valid, and `is_valid` stops at the first failure
        // without building errors: measured at a third of `iter_errors`'s
        // cost on bench/body-2k.json.
        if self.validator.is_valid(doc) {
            return;
        }
        for error in self.validator.iter_errors(doc) {
            if errors.len() >= cap {
                return;
            }
            let mut pointer = error.instance_path().as_str().to_string();
            // A missing property is reported where it should have been.
            if let jsonschema::error::ValidationErrorKind::Required {
                property: Value::String(name),
            } = error.kind()
            {
                pointer.push('/');
                pointer.push_str(&super::pointer_segment(name));
            }
            errors.push(FieldError {
                pointer,
                detail: error.masked().to_string(),
            });
        }
    }

    pub fn is_valid(&self, doc: &Value) -> bool {
        self.validator.is_valid(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_are_checked_strictly() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2024-02-29"), Some(19_782));
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-1-01",
            "20240101",
            "2024-01-01T00:00:00Z",
            "+024-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert!(date_not_future("2020-05-01"));
        assert!(!date_not_future("9999-12-31"));
    }

    #[test]
    fn errors_carry_pointers_and_never_the_value() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["days", "start"],
            "properties": {
                "days": {"type": "integer", "minimum": 1, "maximum": 3650},
                "start": {"type": "string", "format": "date-not-future"},
                "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
            },
        }))
        .unwrap();
        let mut errors = Vec::new();
        schema.check(
            &json!({"days": 5000, "start": "9999-01-01", "code": "hunter2"}),
            &mut errors,
            20,
        );
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers.len(), 3, "{errors:?}");
        for p in ["/days", "/start", "/code"] {
            assert!(pointers.contains(&p), "{errors:?}");
        }
        let text = format!("{errors:?}");
        assert!(
            !text.contains("5000") && !text.contains("9999") && !text.contains("hunter2"),
            "{text}"
        );
        let mut errors = Vec::new();
        schema.check(&json!({"days": 10}), &mut errors, 20);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].pointer, "/start");
        assert!(schema.is_valid(&json!({"days": 10, "start": "2020-01-01"})));
        assert!(Schema::compile(&json!({"type": "nonsense"})).is_err());
    }
}
