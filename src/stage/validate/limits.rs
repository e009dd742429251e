//! Structural limits on any JSON body, schema or not: nesting depth,
//! string length (keys too) and array length. A walk over the parsed
//! document that allocates only when it reports.

use serde_json::Value;

use crate::error::FieldError;

/// The limits; every one is bounded.
#[derive(Debug, Clone, Copy)]
pub struct JsonLimits {
    pub max_depth: usize,
    /// In characters (as JSON Schema's `maxLength` counts).
    pub max_string_length: usize,
    pub max_array_length: usize,
}

impl JsonLimits {
    pub const DEFAULT: JsonLimits = JsonLimits {
        max_depth: 32,
        max_string_length: 100_000,
        max_array_length: 10_000,
    };
}

/// A step of the path to the value being looked at.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The JSON pointer (RFC 6901) of a path.
fn pointer(path: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        out.push('/');
        match step {
            Step::Key(key) => out.push_str(&super::pointer_segment(key)),
            Step::Index(i) => out.push_str(&i.to_string()),
        }
    }
    out
}

fn too_long(text: &str, max: usize) -> bool {
    // Bytes bound characters from above: most strings never need counting.
    text.len() > max && text.chars().count() > max
}

struct Walk<'e> {
    limits: JsonLimits,
    errors: &'e mut Vec<FieldError>,
    cap: usize,
}

impl Walk<'_> {
    fn report(&mut self, path: &[Step<'_>], detail: String) {
        if self.errors.len() < self.cap {
            self.errors.push(FieldError {
                pointer: pointer(path),
                detail,
            });
        }
    }

    fn value<'v>(&mut self, value: &'v Value, path: &mut Vec<Step<'v>>) {
        if self.errors.len() >= self.cap {
            return;
        }
        let depth = path.len() + 1;
        match value {
            Value::String(text) if too_long(text, self.limits.max_string_length) => {
                let max = self.limits.max_string_length;
                self.report(path, format!("is longer than {max} characters"));
            }
            Value::Array(_) | Value::Object(_) if depth > self.limits.max_depth => {
                let max = self.limits.max_depth;
                self.report(path, format!("is nested deeper than {max} levels"));
            }
            Value::Array(items) => {
                if items.len() > self.limits.max_array_length {
                    let max = self.limits.max_array_length;
                    self.report(path, format!("has more than {max} items"));
                    return;
                }
                for (i, item) in items.iter().enumerate() {
                    path.push(Step::Index(i));
                    self.value(item, path);
                    path.pop();
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    path.push(Step::Key(key));
                    if too_long(key, self.limits.max_string_length) {
                        let max = self.limits.max_string_length;
                        self.report(path, format!("has a name longer than {max} characters"));
                    } else {
                        self.value(item, path);
                    }
                    path.pop();
                }
            }
            _ => {}
        }
    }
}

/// Adds a problem for each limit the document breaks, up to `cap` in all.
pub fn check(value: &Value, limits: JsonLimits, errors: &mut Vec<FieldError>, cap: usize) {
    Walk { limits, errors, cap }.value(value, &mut Vec::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(value: &Value, limits: JsonLimits) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        check(value, limits, &mut errors, 20);
        errors.into_iter().map(|e| (e.pointer, e.detail)).collect()
    }

    #[test]
    fn each_limit_is_reported_at_its_pointer() {
        let limits = JsonLimits {
            max_depth: 3,
            max_string_length: 5,
            max_array_length: 2,
        };
        let doc = json!({
            "ok": "abcde",
            "long": "abcdef",
            "wide": [1, 2, 3],
            "a/b": {"d": {"e": {}}},
            "names": {"tööö": 1, "éééééé": 2},
        });
        let found = problems(&doc, limits);
        assert!(
            found.contains(&("/long".into(), "is longer than 5 characters".into())),
            "{found:?}"
        );
        assert!(
            found.contains(&("/wide".into(), "has more than 2 items".into())),
            "{found:?}"
        );
        assert!(
            found.contains(&("/a~1b/d/e".into(), "is nested deeper than 3 levels".into())),
            "{found:?}"
        );
        assert!(
            found.contains(&(
                "/names/éééééé".into(),
                "has a name longer than 5 characters".into()
            )),
            "{found:?}"
        );
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(problems(&json!({"x": [[1]]}), limits).is_empty());
    }
}
