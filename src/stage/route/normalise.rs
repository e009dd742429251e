//! Path normalisation, so a route sees one spelling of every path.
//!
//! Segments are percent-decoded, `.` and `..` are resolved (also when
//! written `%2e` or `%2E`), empty segments from doubled slashes are dropped,
//! and the result is re-encoded canonically. What cannot be normalised
//! safely is refused instead of guessed at: an encoded `/` or `\`, any `\`,
//! NUL or other control characters, malformed `%` escapes, bytes that are
//! not UTF-8 once decoded, and dot segments carrying a `;parameter` (the
//! `..;/` trick some Java servers resolve as `..`).
//!
//! The upstream is sent the normalised path, so `/api/../admin` reaches
//! `/admin` only if `/admin` itself is routed to that upstream.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error("the path contains an encoded slash or a backslash")]
    EncodedSeparator,
    #[error("the path contains a control character")]
    ControlCharacter,
    #[error("the path is not valid UTF-8 once decoded")]
    NotUtf8,
    #[error("the path contains a dot segment with parameters")]
    DotWithParameters,
}

/// A normalised path: `decoded` for matching, `encoded` for the upstream.
#[derive(Debug, PartialEq, Eq)]
pub struct NormalPath<'a> {
    pub decoded: Cow<'a, str>,
    pub encoded: Cow<'a, str>,
}

/// Characters re-encoded in a path segment: controls, space, and those with
/// meaning elsewhere in a URI (`#`, `?`, `%`) or commonly mishandled.
/// `is_plain` sends any of them down the slow path; keep the two in step.
const SEGMENT_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'^')
    .add(b'[')
    .add(b']');

/// True when the raw path is already in normal form, which is the common
/// case and needs no allocation.
fn is_plain(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    let mut prev = 0u8;
    for &b in bytes {
        let odd = !(0x21..0x7f).contains(&b)
            || matches!(
                b,
                b'%' | b'\\'
                    | b'"'
                    | b'#'
                    | b'<'
                    | b'>'
                    | b'?'
                    | b'`'
                    | b'{'
                    | b'}'
                    | b'|'
                    | b'^'
                    | b'['
                    | b']'
            );
        if odd || (prev == b'/' && (b == b'/' || b == b'.')) {
            return false;
        }
        prev = b;
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one segment, refusing separators and control characters.
fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex);
            let lo = bytes.get(i + 2).copied().and_then(hex);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            i += 3;
            let decoded = hi << 4 | lo;
            if decoded == b'/' {
                return Err(PathError::EncodedSeparator);
            }
            decoded
        } else {
            i += 1;
            bytes[i - 1]
        };
        match b {
            b'\\' => return Err(PathError::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

/// Normalises the path of a request target (without its query).
pub fn normalise(raw: &str) -> Result<NormalPath<'_>, PathError> {
    if is_plain(raw) {
        return Ok(NormalPath {
            decoded: Cow::Borrowed(raw),
            encoded: Cow::Borrowed(raw),
        });
    }
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for raw_segment in rest.split('/') {
        let segment = decode_segment(raw_segment)?;
        let before_params = segment.split(';').next().unwrap_or("");
        if segment.contains(';') && (before_params == "." || before_params == "..") {
            return Err(PathError::DotWithParameters);
        }
        trailing_slash = true;
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => {
                segments.push(segment);
                trailing_slash = false;
            }
        }
    }
    let mut decoded = String::with_capacity(raw.len());
    let mut encoded = String::with_capacity(raw.len());
    for segment in &segments {
        decoded.push('/');
        decoded.push_str(segment);
        encoded.push('/');
        encoded.extend(utf8_percent_encode(segment, SEGMENT_ENCODE));
    }
    if trailing_slash || segments.is_empty() {
        decoded.push('/');
        encoded.push('/');
    }
    Ok(NormalPath {
        decoded: Cow::Owned(decoded),
        encoded: Cow::Owned(encoded),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api",
            "/api/v1/tasks",
            "/api/v1/tasks/",
            "/a-b_c~d.e/f:g@h!$&'()*+,;=",
        ] {
            let n = normalise(p).unwrap();
            assert!(matches!(n.decoded, Cow::Borrowed(_)), "{p}");
            assert_eq!(n.decoded, p);
            assert_eq!(n.encoded, p);
        }
    }

    #[test]
    fn normalisation_table() {
        let cases = [
            ("/api/../admin", "/admin", "/admin"),
            ("/api/./v1", "/api/v1", "/api/v1"),
            ("//api///v1//", "/api/v1/", "/api/v1/"),
            ("/api/%2e%2e/admin", "/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin", "/admin"),
            ("/api/.%2e/admin", "/admin", "/admin"),
            ("/api/%2e/v1", "/api/v1", "/api/v1"),
            ("/../../etc/passwd", "/etc/passwd", "/etc/passwd"),
            ("/api/v1/..", "/api/", "/api/"),
            ("/api/v1/.", "/api/v1/", "/api/v1/"),
            ("/..", "/", "/"),
            ("/%61pi/v1", "/api/v1", "/api/v1"),
            ("/files/a%20b", "/files/a b", "/files/a%20b"),
            ("/files/%E2%9C%93", "/files/\u{2713}", "/files/%E2%9C%93"),
            ("/q/%3F%23", "/q/?#", "/q/%3F%23"),
            ("/p/100%25", "/p/100%", "/p/100%25"),
            ("/.well-known/x", "/.well-known/x", "/.well-known/x"),
            ("/a/%2e%2e", "/", "/"),
            ("/a/..%2e", "/a/...", "/a/..."),
        ];
        for (raw, decoded, encoded) in cases {
            let n = normalise(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(n.decoded, decoded, "decoded {raw}");
            assert_eq!(n.encoded, encoded, "encoded {raw}");
            // Normal form is a fixed point.
            let again = normalise(&n.encoded).unwrap();
            assert_eq!(again.encoded, n.encoded, "fixed point {raw}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let cases = [
            ("api", PathError::NotAbsolute),
            ("/api%2fadmin", PathError::EncodedSeparator),
            ("/api%2Fadmin", PathError::EncodedSeparator),
            ("/api%5cadmin", PathError::EncodedSeparator),
            ("/api\\admin", PathError::EncodedSeparator),
            ("/api/..\\admin", PathError::EncodedSeparator),
            ("/api%00", PathError::ControlCharacter),
            ("/api%0d%0aX-Injected:1", PathError::ControlCharacter),
            ("/api%", PathError::BadEscape),
            ("/api%4", PathError::BadEscape),
            ("/api%zz", PathError::BadEscape),
            ("/api/%ff%fe", PathError::NotUtf8),
            ("/api/%c0%af", PathError::NotUtf8),
            ("/api/..;/admin", PathError::DotWithParameters),
            ("/api/.;x/admin", PathError::DotWithParameters),
            ("/api/%2e%2e;/admin", PathError::DotWithParameters),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise(raw), Err(want), "{raw}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use rand::Rng;

    /// Random paths built from the pieces attacks are made of.
    fn random_path(rng: &mut impl Rng) -> String {
        const PIECES: &[&str] = &[
            "/",
            "//",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%5c",
            "\\",
            ";",
            "a",
            "api",
            "admin",
            "%00",
            "%",
            "%4",
            "%zz",
            "%c0%af",
            "%e2%9c%93",
            "\u{e9}",
            "?",
            "#",
            " ",
            "%20",
            "%25",
            "~",
            "..;",
            "%2e%2e",
        ];
        let n = rng.random_range(0..12);
        let mut path = String::from("/");
        for _ in 0..n {
            path.push_str(PIECES[rng.random_range(0..PIECES.len())]);
        }
        path
    }

    #[test]
    fn random_paths_never_panic_and_normalise_to_a_fixed_point() {
        let mut rng = rand::rng();
        for _ in 0..50_000 {
            let raw = random_path(&mut rng);
            let Ok(n) = normalise(&raw) else { continue };
            assert!(n.decoded.starts_with('/'), "{raw:?} -> {n:?}");
            assert!(!n.encoded.contains("//"), "{raw:?} -> {n:?}");
            for segment in n.decoded.split('/') {
                assert!(segment != "." && segment != "..", "{raw:?} -> {n:?}");
            }
            let again = normalise(&n.encoded).unwrap_or_else(|e| panic!("{raw:?} -> {n:?} -> {e}"));
            assert_eq!(again.encoded, n.encoded, "{raw:?}");
            assert_eq!(again.decoded, n.decoded, "{raw:?}");
        }
    }
}
