//! Secrets: how the config refers to them, how they are resolved, and the
//! rules that keep weak or placeholder values out of production.
//!
//! A secret is written `{ env = "NAME" }` or `{ file = "/run/secrets/x" }`.
//! A plain string is accepted only in development. Resolved values live in
//! [`SecretValue`], whose `Debug` never shows the bytes, so a secret cannot
//! reach a log line by accident.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Where the config says a secret comes from.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(
    untagged,
    expecting = "a secret: { env = \"NAME\" } or { file = \"PATH\" } (a plain string only in development)"
)]
pub enum SecretRef {
    Env { env: String },
    File { file: PathBuf },
    Inline(String),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SecretRef::Env { env } => write!(f, "env:{env}"),
            SecretRef::File { file } => write!(f, "file:{}", file.display()),
            SecretRef::Inline(_) => f.write_str("inline:<redacted>"),
        }
    }
}

/// A resolved secret. The bytes are never printed.
#[derive(Clone)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.len() == presented.len() && bool::from(self.0.as_slice().ct_eq(presented))
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SecretValue(<{} bytes redacted>)", self.0.len())
    }
}

/// Why a secret could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable `{0}` is not set")]
    EnvMissing(String),
    #[error("environment variable `{0}` is empty")]
    EnvEmpty(String),
    #[error("secret file `{0}` cannot be read: {1}")]
    FileUnreadable(String, String),
    #[error("secret file `{0}` is empty")]
    FileEmpty(String),
    #[error("inline secret is empty")]
    InlineEmpty,
}

impl SecretRef {
    /// Reads the secret. File contents lose one trailing newline, as written
    /// by `echo` or most secret managers.
    pub fn resolve(&self, base_dir: &Path) -> Result<SecretValue, SecretError> {
        match self {
            SecretRef::Env { env } => match std::env::var_os(env) {
                None => Err(SecretError::EnvMissing(env.clone())),
                Some(v) if v.is_empty() => Err(SecretError::EnvEmpty(env.clone())),
                Some(v) => Ok(SecretValue(v.into_encoded_bytes())),
            },
            SecretRef::File { file } => {
                let path = base_dir.join(file);
                let mut bytes = std::fs::read(&path)
                    .map_err(|e| SecretError::FileUnreadable(path.display().to_string(), e.to_string()))?;
                if bytes.ends_with(b"\n") {
                    bytes.pop();
                    if bytes.ends_with(b"\r") {
                        bytes.pop();
                    }
                }
                if bytes.is_empty() {
                    return Err(SecretError::FileEmpty(path.display().to_string()));
                }
                Ok(SecretValue(bytes))
            }
            SecretRef::Inline(s) if s.is_empty() => Err(SecretError::InlineEmpty),
            SecretRef::Inline(s) => Ok(SecretValue(s.as_bytes().to_vec())),
        }
    }
}

/// The minimum length of a production secret.
pub const MIN_SECRET_BYTES: usize = 32;

/// Words that mark a value someone meant to replace. Matched case-insensitively
/// as substrings, after removing `-`, `_`, `.` and spaces.
const PLACEHOLDER_WORDS: &[&str] = &[
    "changeme",
    "changethis",
    "changeinproduction",
    "replaceme",
    "yoursecret",
    "secretkey",
    "yourkey",
    "placeholder",
    "devonly",
    "donotuse",
    "notsecret",
    "insecure",
    "example",
    "default",
    "password",
    "todo",
    "fixme",
    "xxxxxx",
    "123456",
    "abcdef",
    "qwerty",
];

/// Returns why a secret is not fit for production, or `None` if it is.
pub fn weakness(bytes: &[u8]) -> Option<String> {
    if bytes.len() < MIN_SECRET_BYTES {
        return Some(format!(
            "is {} bytes long; production needs at least {MIN_SECRET_BYTES} (run `portcullis secret generate`)",
            bytes.len()
        ));
    }
    let folded: String = String::from_utf8_lossy(bytes)
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .collect();
    if folded == "secret" || folded.starts_with("secret") && folded.len() < 40 {
        return Some("looks like a placeholder (`secret…`)".into());
    }
    if let Some(word) = PLACEHOLDER_WORDS.iter().find(|w| folded.contains(*w)) {
        return Some(format!("looks like a placeholder (contains `{word}`)"));
    }
    if let Some(why) = low_entropy(bytes) {
        return Some(why);
    }
    None
}

/// Catches repeated characters, short repeated patterns and values drawn
/// from very few symbols. A random 32-byte value, hex or base64 encoded,
/// passes easily: hex has 16 symbols at 4 bits each.
fn low_entropy(bytes: &[u8]) -> Option<String> {
    let mut counts = [0u32; 256];
    for b in bytes {
        counts[*b as usize] += 1;
    }
    let distinct = counts.iter().filter(|c| **c > 0).count();
    if distinct <= 4 {
        return Some(format!(
            "uses only {distinct} distinct characters (repeated characters)"
        ));
    }
    for period in 1..=bytes.len() / 3 {
        if bytes.iter().enumerate().all(|(i, b)| *b == bytes[i % period]) {
            return Some(format!("repeats a {period}-character pattern"));
        }
    }
    let n = bytes.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum();
    // Shannon entropy per character; random hex is ~3.7-4, random base64 ~5.
    if entropy < 3.0 {
        return Some(format!(
            "has low entropy ({entropy:.1} bits per character); use a random value"
        ));
    }
    None
}

/// A fresh 256-bit secret, URL-safe base64 without padding (43 characters).
pub fn generate() -> String {
    loop {
        let bytes: [u8; 32] = rand::random();
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // About one value in 25,000 spells a placeholder word such as `todo`
        // by chance; draw again rather than hand out a secret `check` refuses.
        if weakness(text.as_bytes()).is_none() {
            return text;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_strong() {
        for _ in 0..200 {
            let s = generate();
            assert_eq!(s.len(), 43);
            assert_eq!(weakness(s.as_bytes()), None, "{s}");
        }
        // Random hex (as from `openssl rand -hex 32`) is accepted too.
        let hex = hex::encode(rand::random::<[u8; 32]>());
        assert_eq!(weakness(hex.as_bytes()), None);
    }

    #[test]
    fn weak_secrets_are_named() {
        let weak = [
            "your-secret-key-here-change-in-production",
            "dev-only-secret-key-do-not-use-in-production",
            "changeme",
            "secret",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababababababab",
            "0123012301230123012301230123012301230123",
            "supersecretpasswordsupersecretpassword12",
            "short-but-random-Zq8",
            "my-app-example-key-for-testing-only-000000",
        ];
        for s in weak {
            assert!(weakness(s.as_bytes()).is_some(), "{s} should be refused");
        }
    }

    #[test]
    fn secret_values_never_print() {
        let v = SecretValue::new(b"hunter2-hunter2-hunter2-hunter2-x".to_vec());
        assert!(!format!("{v:?}").contains("hunter2"));
        let r = SecretRef::Inline("hunter2".into());
        assert!(!format!("{r:?}").contains("hunter2"));
        assert!(v.matches(b"hunter2-hunter2-hunter2-hunter2-x"));
        assert!(!v.matches(b"hunter2"));
    }

    #[test]
    fn files_lose_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "abc\n").unwrap();
        let v = SecretRef::File { file: "s".into() }.resolve(dir.path()).unwrap();
        assert_eq!(v.expose(), b"abc");
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        assert!(matches!(
            SecretRef::File { file: "empty".into() }.resolve(dir.path()),
            Err(SecretError::FileEmpty(_))
        ));
    }
}
