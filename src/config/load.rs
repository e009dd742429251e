//! Reading the config: the TOML file, `PORTCULLIS_…` environment overrides,
//! and error reports that point at the file and line (or the environment
//! variable) responsible, with the nearest valid key for a typo.
//!
//! Environment overrides: `PORTCULLIS_<SECTION>__<KEY>` sets `section.key`
//! (double underscore between levels, so keys keep their single
//! underscores), `PORTCULLIS_ROUTES__0__UPSTREAM` sets `routes[0].upstream`,
//! and `PORTCULLIS_ENVIRONMENT` sets `environment`. The value is read as a
//! TOML value when it parses as one (`true`, `10`, `["a", "b"]`,
//! `{ env = "X" }`) and as a string otherwise. Other `PORTCULLIS_` variables
//! (secrets referenced by `{ env = … }`, test settings) are not config keys
//! and are left alone.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::Config;

/// Where a config came from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file on disk; relative paths inside it resolve against its folder.
    File(PathBuf),
    /// Text built by the program itself (quickstart, tests), with a name for messages.
    Text { name: String, text: String },
}

/// One problem in a config, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigError {
    /// `portcullis.toml:12` or `environment variable PORTCULLIS_X`, when known.
    pub location: Option<String>,
    /// The key, as `server.listen` or `routes[2].auth`, when known.
    pub key: Option<String>,
    /// What the key belongs to, in words (`route `/api``), when that helps.
    pub context: Option<String>,
    pub message: String,
    /// Offset in the combined text, for ordering.
    offset: Option<usize>,
}

impl ConfigError {
    /// Where the problem is in the file and overrides, for sorting.
    pub fn position(&self) -> Option<usize> {
        self.offset
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        }
        match (&self.key, &self.context) {
            (Some(key), Some(context)) => write!(f, "{key} ({context}): ")?,
            (Some(key), None) => write!(f, "{key}: ")?,
            (None, Some(context)) => write!(f, "{context}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a config, in file order where possible.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A parsed config, with what is needed to point at its keys later.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// Folder that relative paths in the config resolve against.
    pub base_dir: PathBuf,
    /// Where it came from, to re-read on reload.
    pub source: Source,
    origin: Origin,
}

/// Maps offsets in the combined text (file, then each override) to places.
#[derive(Debug, Clone, Default)]
struct Origin {
    name: String,
    file_text: String,
    /// Start offset and variable name of each environment override.
    overrides: Vec<(usize, String)>,
    /// Key path -> offset of the key, for semantic errors found later.
    keys: HashMap<String, usize>,
}

impl Origin {
    fn describe(&self, offset: usize) -> String {
        if offset <= self.file_text.len() {
            let line = self.file_text[..offset].matches('\n').count() + 1;
            return format!("{}:{line}", self.name);
        }
        let name = self
            .overrides
            .iter()
            .rev()
            .find(|(start, _)| *start <= offset)
            .map(|(_, name)| name.as_str())
            .unwrap_or("?");
        format!("environment variable {name}")
    }
}

impl LoadedConfig {
    /// An error about `key`, located in the file if the key was written there.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.error_near(key, key, message)
    }

    /// An error about `key`, located where `key` was written, or else
    /// where `near` was (the table of a key left at its default).
    pub fn error_near(&self, key: &str, near: &str, message: impl Into<String>) -> ConfigError {
        let offset = self
            .origin
            .keys
            .get(key)
            .or_else(|| self.origin.keys.get(near))
            .copied();
        ConfigError {
            location: offset.map(|offset| self.origin.describe(offset)),
            key: Some(key.to_string()),
            message: message.into(),
            offset,
            ..ConfigError::default()
        }
    }

    /// Whether the file or environment wrote this key (rather than a default).
    pub fn was_written(&self, key: &str) -> bool {
        self.origin.keys.contains_key(key)
    }

    /// The text of the file as read.
    pub fn file_text(&self) -> &str {
        &self.origin.file_text
    }
}

const ENV_PREFIX: &str = "PORTCULLIS_";

/// `PORTCULLIS_*` variables that set config keys, sorted for stable output.
pub fn config_env_vars() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| env_key_path(k).is_some())
        .collect();
    vars.sort();
    vars
}

/// `PORTCULLIS_SERVER__ADMIN_LISTEN` -> `["server", "admin_listen"]`.
fn env_key_path(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if rest == "ENVIRONMENT" {
        return Some(vec!["environment".into()]);
    }
    if !rest.contains("__") {
        return None;
    }
    Some(rest.split("__").map(|s| s.to_ascii_lowercase()).collect())
}

/// Reads and parses a config from a file or text, applying the given
/// environment overrides (normally [`config_env_vars`]).
pub fn load(source: &Source, env: &[(String, String)]) -> Result<LoadedConfig, ConfigErrors> {
    let (name, text, base_dir) = match source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    location: Some(path.display().to_string()),
                    message: format!("cannot read the config file: {e}"),
                    ..ConfigError::default()
                }])
            })?;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            (path.display().to_string(), text, dir)
        }
        Source::Text { name, text } => (name.clone(), text.clone(), PathBuf::from(".")),
    };
    let (config, origin) = parse(&name, &text, env)?;
    Ok(LoadedConfig {
        config,
        base_dir,
        source: source.clone(),
        origin,
    })
}

fn parse(name: &str, file_text: &str, env: &[(String, String)]) -> Result<(Config, Origin), ConfigErrors> {
    // One combined text: the file, then each override value on its own
    // line, so every span points at exactly one place.
    let mut combined = String::with_capacity(file_text.len() + 256);
    combined.push_str(file_text);
    let mut origin = Origin {
        name: name.to_string(),
        file_text: file_text.to_string(),
        ..Origin::default()
    };
    let mut override_ranges = Vec::new();
    for (var, value) in env {
        combined.push('\n');
        let start = combined.len();
        combined.push_str(value);
        origin.overrides.push((start, var.clone()));
        override_ranges.push(start..combined.len());
    }

    let mut root = DeTable::parse(&combined[..file_text.len()]).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            location: e.span().map(|s| origin.describe(s.start)),
            message: e.message().trim().to_string(),
            offset: e.span().map(|s| s.start),
            ..ConfigError::default()
        }])
    })?;

    let mut errors = Vec::new();
    for ((var, _), range) in env.iter().zip(override_ranges) {
        let path = env_key_path(var).expect("filtered by config_env_vars");
        let value = parse_override(&combined, range);
        let offset = value.span().start;
        if let Err(message) = set_path(root.get_mut(), &path, value) {
            let location = Some(format!("environment variable {var}"));
            errors.push((
                offset,
                ConfigError {
                    location,
                    message,
                    offset: Some(offset),
                    ..ConfigError::default()
                },
            ));
        }
    }

    index_keys(root.get_ref(), "", &mut origin.keys);

    // Deserialize; on an error that points at a key, note it, remove the key
    // and try again, so one run reports every such problem.
    for _ in 0..200 {
        let attempt = Config::deserialize(toml::de::Deserializer::from(root.clone()));
        let err = match attempt {
            Ok(config) if errors.is_empty() => return Ok((config, origin)),
            Ok(_) => break,
            Err(err) => err,
        };
        let removed = err
            .span()
            .and_then(|span| remove_entry_at(root.get_mut(), &span, ""));
        let key = removed.clone();
        let location = err.span().map(|s| origin.describe(s.start));
        let message = explain(err.message(), key.as_deref());
        let already = errors
            .iter()
            .any(|(_, e): &(usize, ConfigError)| e.message == message && e.location == location);
        if !already {
            let offset = err.span().map(|s| s.start).unwrap_or(usize::MAX);
            errors.push((
                offset,
                ConfigError {
                    location,
                    key,
                    message,
                    offset: err.span().map(|s| s.start),
                    ..ConfigError::default()
                },
            ));
        }
        if removed.is_none() {
            break;
        }
    }
    // serde visits keys in its own order; report them in file order.
    errors.sort_by_key(|(offset, _)| *offset);
    Err(ConfigErrors(errors.into_iter().map(|(_, e)| e).collect()))
}

/// An override value as TOML when it is one, else as a plain string.
fn parse_override<'i>(combined: &'i str, range: Range<usize>) -> Spanned<DeValue<'i>> {
    let text = &combined[range.clone()];
    match DeValue::parse(text) {
        Ok(value) => shift(value, range.start),
        Err(_) => Spanned::new(range, DeValue::String(text.into())),
    }
}

/// Moves every span in a value parsed on its own to its place in the combined text.
fn shift(value: Spanned<DeValue<'_>>, by: usize) -> Spanned<DeValue<'_>> {
    let span = value.span();
    let span = span.start + by..span.end + by;
    let inner = match value.into_inner() {
        DeValue::Table(table) => {
            let mut out = DeTable::new();
            for (k, v) in table {
                let kspan = k.span();
                out.insert(
                    Spanned::new(kspan.start + by..kspan.end + by, k.into_inner()),
                    shift(v, by),
                );
            }
            DeValue::Table(out)
        }
        DeValue::Array(items) => {
            let mut out = DeArray::new();
            for item in items.iter() {
                out.push(shift(item.clone(), by));
            }
            DeValue::Array(out)
        }
        other => other,
    };
    Spanned::new(span, inner)
}

fn set_path<'i>(table: &mut DeTable<'i>, path: &[String], value: Spanned<DeValue<'i>>) -> Result<(), String> {
    let (first, rest) = path.split_first().expect("paths are never empty");
    let span = value.span();
    if rest.is_empty() {
        table.insert(Spanned::new(span, first.clone().into()), value);
        return Ok(());
    }
    // A table created here gets an empty span, so an error about the leaf
    // (which carries the value's span) never matches the whole table.
    let created = span.start..span.start;
    let entry = table
        .entry(Spanned::new(created.clone(), first.clone().into()))
        .or_insert_with(|| Spanned::new(created, DeValue::Table(DeTable::new())));
    match entry.get_mut() {
        DeValue::Table(inner) => set_path(inner, rest, value),
        DeValue::Array(items) => {
            let (index, rest) = rest.split_first().expect("checked above");
            let index: usize = index
                .parse()
                .map_err(|_| format!("`{first}` is a list; give an index, as {first}__0__…"))?;
            let item = items
                .get_mut(index)
                .ok_or_else(|| format!("`{first}` has no entry {index} in the file"))?;
            match (item.get_mut(), rest.is_empty()) {
                (DeValue::Table(inner), false) => set_path(inner, rest, value),
                (_, true) => {
                    *item = value;
                    Ok(())
                }
                _ => Err(format!("`{first}[{index}]` is not a table")),
            }
        }
        _ => Err(format!("`{first}` is a single value, not a table")),
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn index_keys(table: &DeTable<'_>, prefix: &str, out: &mut HashMap<String, usize>) {
    for (k, v) in table.iter() {
        let path = join(prefix, k.get_ref());
        out.insert(path.clone(), k.span().start);
        match v.get_ref() {
            DeValue::Table(inner) => index_keys(inner, &path, out),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    out.insert(item_path.clone(), item.span().start);
                    if let DeValue::Table(inner) = item.get_ref() {
                        index_keys(inner, &item_path, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Removes the table entry whose key or value has `span` (or whose array
/// holds a value with that span) and returns its path.
fn remove_entry_at(table: &mut DeTable<'_>, span: &Range<usize>, prefix: &str) -> Option<String> {
    let mut hit = None;
    for (k, v) in table.iter_mut() {
        let path = join(prefix, k.get_ref());
        if k.span() == *span || v.span() == *span {
            hit = Some((k.clone(), path));
            break;
        }
        match v.get_mut() {
            DeValue::Table(inner) => {
                if let Some(found) = remove_entry_at(inner, span, &path) {
                    return Some(found);
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    if item.span() == *span {
                        hit = Some((k.clone(), path.clone()));
                        break;
                    }
                    if let DeValue::Table(inner) = item.get_mut()
                        && let Some(found) = remove_entry_at(inner, span, &format!("{path}[{i}]"))
                    {
                        return Some(found);
                    }
                }
                if hit.is_some() {
                    break;
                }
            }
            _ => {}
        }
    }
    let (key, path) = hit?;
    table.remove(&key);
    Some(path)
}

/// Rewrites serde's messages into the config's own words, adding the
/// nearest valid key for an unknown one.
fn explain(message: &str, key: Option<&str>) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (unknown, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let valid: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let section = key
            .and_then(|k| k.rsplit_once('.'))
            .map(|(parent, _)| format!(" in `{parent}`"))
            .unwrap_or_else(|| " at the top level".into());
        let mut text = format!("unknown key `{unknown}`{section}");
        if let Some(best) = nearest(unknown, &valid) {
            text.push_str(&format!("; did you mean `{best}`?"));
        }
        if !valid.is_empty() {
            text.push_str(&format!(" (valid keys: {})", valid.join(", ")));
        }
        return text;
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (unknown, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let valid: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let mut text = format!("`{unknown}` is not one of: {}", valid.join(", "));
        if let Some(best) = nearest(unknown, &valid) {
            text.push_str(&format!("; did you mean `{best}`?"));
        }
        return text;
    }
    message.to_string()
}

/// The closest candidate by edit distance, if it is close enough to be a typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(&word.to_ascii_lowercase(), c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> Source {
        Source::Text {
            name: "test.toml".into(),
            text: t.into(),
        }
    }

    #[test]
    fn every_unknown_key_is_reported_with_line_and_suggestion() {
        let src = text(
            "environment = \"development\"\n[server]\nlisen = \"127.0.0.1:1\"\n\n[log]\nlevle = \"info\"\n[[routes]]\npath = \"/\"\nupstream = \"app\"\nmethod = [\"GET\"]\n",
        );
        let errors = load(&src, &[]).unwrap_err().0;
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{lines:#?}");
        assert!(
            lines[0].starts_with(
                "test.toml:3: server.lisen: unknown key `lisen` in `server`; did you mean `listen`?"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[1].starts_with("test.toml:6: log.levle:"), "{}", lines[1]);
        assert!(lines[1].contains("did you mean `level`?"));
        assert!(
            lines[2].starts_with("test.toml:10: routes[0].method:"),
            "{}",
            lines[2]
        );
        assert!(lines[2].contains("did you mean `methods`?"));
    }

    #[test]
    fn bad_values_are_reported_with_their_line() {
        let src = text("[server]\nheader_read_timeout = \"ten seconds\"\nmax_connections = \"lots\"\n");
        let errors = load(&src, &[]).unwrap_err().0;
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(errors[0].location.as_deref(), Some("test.toml:2"));
        assert!(errors[0].message.contains("invalid duration"));
        assert_eq!(errors[1].location.as_deref(), Some("test.toml:3"));
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let errors = load(&text("[server]\nlisten = \n"), &[]).unwrap_err().0;
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].location.as_deref(), Some("test.toml:2"));
    }

    #[test]
    fn environment_overrides_set_nested_keys() {
        let src = text(
            "[server]\nlisten = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"app\"\ntargets = [\"http://a\"]\n",
        );
        let env = vec![
            ("PORTCULLIS_SERVER__LISTEN".to_string(), "127.0.0.1:2".to_string()),
            ("PORTCULLIS_SERVER__MAX_CONNECTIONS".to_string(), "7".to_string()),
            (
                "PORTCULLIS_UPSTREAMS__0__TARGETS".to_string(),
                "[\"http://b\", \"http://c\"]".to_string(),
            ),
            ("PORTCULLIS_ENVIRONMENT".to_string(), "development".to_string()),
            (
                "PORTCULLIS_SECRETS__ADMIN_TOKEN".to_string(),
                "{ env = \"ADMIN\" }".to_string(),
            ),
        ];
        let loaded = load(&src, &env).unwrap();
        assert_eq!(loaded.config.server.listen, "127.0.0.1:2");
        assert_eq!(loaded.config.server.max_connections, 7);
        assert_eq!(loaded.config.upstreams[0].targets, ["http://b", "http://c"]);
        assert!(!loaded.config.environment.is_production());
        assert!(loaded.config.secrets.admin_token.is_some());
    }

    #[test]
    fn bad_environment_overrides_name_the_variable() {
        let env = vec![
            ("PORTCULLIS_SERVER__LISTN".to_string(), "x".to_string()),
            (
                "PORTCULLIS_SERVER__MAX_CONNECTIONS".to_string(),
                "many".to_string(),
            ),
        ];
        let errors = load(&text(""), &env).unwrap_err().0;
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(
            errors[0].location.as_deref(),
            Some("environment variable PORTCULLIS_SERVER__LISTN")
        );
        assert!(errors[0].message.contains("did you mean `listen`"));
        assert_eq!(
            errors[1].location.as_deref(),
            Some("environment variable PORTCULLIS_SERVER__MAX_CONNECTIONS")
        );
    }

    #[test]
    fn unrelated_variables_are_not_config() {
        assert_eq!(env_key_path("PORTCULLIS_SESSION_KEY"), None);
        assert_eq!(env_key_path("PORTCULLIS_TEST_DATABASE_URL"), None);
        assert_eq!(env_key_path("OTHER__THING"), None);
        assert_eq!(
            env_key_path("PORTCULLIS_SERVER__ADMIN_LISTEN"),
            Some(vec!["server".to_string(), "admin_listen".to_string()])
        );
    }
}
