//! What a file's leading bytes say it is, for the types whose signatures
//! are unambiguous; an upload whose bytes say something else than its
//! declared type is refused. Executables are always recognised, so one
//! cannot arrive as `image/png`.

/// The media type the leading bytes show, if they show one.
pub fn sniff(data: &[u8]) -> Option<&'static str> {
    const SIGNATURES: &[(&[u8], &str)] = &[
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xd8\xff", "image/jpeg"),
        (b"GIF87a", "image/gif"),
        (b"GIF89a", "image/gif"),
        (b"%PDF-", "application/pdf"),
        (b"PK\x03\x04", "application/zip"),
        (b"\x1f\x8b", "application/gzip"),
        (b"MZ", "application/x-msdownload"),
        (b"\x7fELF", "application/x-executable"),
        (b"\xcf\xfa\xed\xfe", "application/x-mach-binary"),
        (b"\xca\xfe\xba\xbe", "application/x-mach-binary"),
        (b"#!", "text/x-shellscript"),
    ];
    if data.len() >= 12 && &data[..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    SIGNATURES
        .iter()
        .find(|(magic, _)| data.starts_with(magic))
        .map(|(_, media)| *media)
}

/// Whether `data` may be of the declared type: the bytes show that type,
/// or show nothing and the type has no signature to check. Office formats
/// (`.docx`, `.xlsx`) are zip files, so a zip signature matches them.
pub fn agrees(declared: &str, data: &[u8]) -> bool {
    let zip_based =
        declared.starts_with("application/vnd.openxmlformats") || declared == "application/epub+zip";
    match sniff(data) {
        Some(found) => found == declared || (found == "application/zip" && zip_based),
        None => !has_signature(declared),
    }
}

fn has_signature(media: &str) -> bool {
    matches!(
        media,
        "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
            | "application/pdf"
            | "application/zip"
            | "application/gzip"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_must_agree_with_the_bytes() {
        assert!(agrees("image/png", b"\x89PNG\r\n\x1a\nrest"));
        assert!(!agrees("image/png", b"MZ\x90\x00"));
        assert!(!agrees("image/png", b"hello"));
        assert!(agrees("text/plain", b"hello"));
        assert!(!agrees("text/plain", b"\x7fELF\x02"));
        assert!(!agrees("text/plain", b"#!/bin/sh\nrm -rf /"));
        assert!(agrees(
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            b"PK\x03\x04"
        ));
        assert!(agrees("image/webp", b"RIFF\x00\x00\x00\x00WEBPVP8 "));
    }
}
