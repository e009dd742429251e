//! Uploads through the real server with a real clamd: file count and size
//! limits, declared types and the bytes that must agree with them, an
//! infected file refused (422, `upload.infected`, never upstream), the
//! scanner down failing closed (503) or open as configured, over TCP and a
//! Unix socket, with `portcullis_upload_scans_total`.

mod common;

use common::clamav::{Clamd, TEST_MALWARE};
use common::*;
use std::time::Duration;

fn routes(clamd: &str, on_error: &str) -> String {
    format!(
        r#"
[clamav]
address = "{clamd}"
timeout = "5s"
on_error = "{on_error}"

[[routes]]
id = "avatars"
path = "/avatars"
upstream = "app"
auth = ["none"]
uploads = {{ max_files = 2, max_file_size = "1KiB", allowed_types = ["image/png", "text/plain"] }}

[[routes]]
id = "docs"
path = "/docs"
upstream = "app"
auth = ["none"]
uploads = {{ max_total_size = "4KiB" }}

[[routes]]
id = "unscanned"
path = "/unscanned"
upstream = "app"
auth = ["none"]
uploads = {{ scan = false }}
"#
    )
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";

/// One part: `(field, Some((filename, type)) for a file, bytes)`.
type Part<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [u8]);

/// A multipart body.
fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, file, data) in parts {
        body.extend_from_slice(b"--XyZ\r\n");
        match file {
            Some((name, media)) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\nContent-Type: {media}\r\n\r\n")
                    .as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--XyZ--\r\n");
    body
}

async fn upload(gw: &portcullis::Gateway, path: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(format!("http://{}{path}", gw.public_addr()))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_types_and_malware_are_refused_before_the_upstream() {
    let clamd = Clamd::start().await;
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config(
        "production",
        &upstream.url(),
        &routes(&clamd.address(), "closed"),
    ))
    .await;

    let good = multipart(&[
        ("note", None, b"hi"),
        ("avatar", Some(("me.png", "image/png")), PNG),
    ]);
    let r = upload(&gw, "/avatars", good.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.last().body, good, "the upstream gets the same bytes");

    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            multipart(&[
                ("a", Some(("1.png", "image/png")), PNG),
                ("b", Some(("2.png", "image/png")), PNG),
                ("c", Some(("3.png", "image/png")), PNG),
            ]),
            422,
            "/c",
        ),
        (
            multipart(&[("big", Some(("big.png", "image/png")), &[b'x'; 2048])]),
            413,
            "",
        ),
        (
            multipart(&[("doc", Some(("a.pdf", "application/pdf")), b"%PDF-1.7")]),
            422,
            "/doc",
        ),
        (
            multipart(&[("avatar", Some(("evil.png", "image/png")), b"MZ\x90\x00\x03")]),
            422,
            "/avatar",
        ),
        (
            multipart(&[("notes", Some(("run.txt", "text/plain")), b"#!/bin/sh\nid\n")]),
            422,
            "/notes",
        ),
        (
            multipart(&[("notes", Some(("x.txt", "text/plain")), TEST_MALWARE)]),
            422,
            "/notes",
        ),
    ];
    for (body, status, pointer) in cases {
        let doc = assert_problem(upload(&gw, "/avatars", body).await, status).await;
        if !pointer.is_empty() {
            assert_eq!(doc["errors"][0]["pointer"], pointer, "{doc}");
        }
    }
    assert_problem(
        upload(
            &gw,
            "/docs",
            multipart(&[("f", Some(("f.bin", "application/octet-stream")), &[0u8; 5000])]),
        )
        .await,
        413,
    )
    .await;
    let r = client()
        .post(format!("http://{}/avatars", gw.public_addr()))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body("--XyZ\r\nno headers end")
        .send()
        .await
        .unwrap();
    assert_problem(r, 400).await;

    // Parts multer would not call files (`FILENAME=`, RFC 5987's
    // `filename*=`, a plain field) are still scanned.
    for disposition in [
        "form-data; name=\"f\"; FILENAME=\"x.exe\"",
        "form-data; name=\"f\"; filename*=UTF-8''x.exe",
        "form-data; name=\"f\"",
    ] {
        let mut body = format!("--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n").into_bytes();
        body.extend_from_slice(TEST_MALWARE);
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        assert_problem(upload(&gw, "/docs", body).await, 422).await;
    }
    assert_eq!(
        upstream.count(),
        1,
        "no refused upload reached the upstream: {:?}",
        upstream
            .received()
            .iter()
            .map(|r| (r.target.clone(), r.body.len()))
            .collect::<Vec<_>>()
    );

    // The infected file is named in the audit log by signature, not content.
    let events = audit_events(&gw, Some("upload.infected")).await;
    assert_eq!(events.len(), 4, "the text file and the three parts above");
    assert!(
        events
            .iter()
            .all(|e| e.event.details["signature"] == "Portcullis.Test.Pattern.UNOFFICIAL")
    );
    let fields: Vec<&str> = events
        .iter()
        .map(|e| e.event.details["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields.iter().filter(|f| **f == "notes").count(), 1, "{fields:?}");
    assert_eq!(fields.iter().filter(|f| **f == "f").count(), 3, "{fields:?}");
    // Infected files anywhere in a clean-looking request are found, and a
    // route without type rules still scans.
    let mixed = multipart(&[
        ("ok", Some(("ok.txt", "text/plain")), b"fine"),
        (
            "bad",
            Some(("bad.bin", "application/octet-stream")),
            &[b"prefix ".as_slice(), TEST_MALWARE].concat(),
        ),
    ]);
    assert_problem(upload(&gw, "/docs", mixed.clone()).await, 422).await;
    // A route that opts out of scanning passes it.
    assert_eq!(upload(&gw, "/unscanned", mixed).await.status(), 200);
    let metrics = metrics_text(gw.admin_addr()).await;
    assert_eq!(
        metric(&metrics, "portcullis_upload_scans_total{result=\"infected\"}"),
        5.0
    );
    assert!(metric(&metrics, "portcullis_upload_scans_total{result=\"clean\"}") >= 2.0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scanner_that_is_down_fails_closed_or_open_as_configured() {
    let mut clamd = Clamd::start().await;
    let upstream = TestUpstream::start().await;
    // Over the Unix socket this time.
    let socket = clamd.socket.display().to_string();
    let closed = start_gateway(&config("production", &upstream.url(), &routes(&socket, "closed"))).await;
    let open = start_gateway(&config("production", &upstream.url(), &routes(&socket, "open"))).await;
    let body = multipart(&[("doc", Some(("a.txt", "text/plain")), b"clean text")]);
    assert_eq!(upload(&closed, "/docs", body.clone()).await.status(), 200);
    assert_problem(
        upload(
            &closed,
            "/docs",
            multipart(&[("doc", Some(("a.txt", "text/plain")), TEST_MALWARE)]),
        )
        .await,
        422,
    )
    .await;

    clamd.stop();
    let doc = assert_problem(upload(&closed, "/docs", body.clone()).await, 503).await;
    assert!(doc["detail"].as_str().unwrap().contains("scanned"), "{doc}");
    assert_eq!(
        upload(&open, "/docs", body).await.status(),
        200,
        "fails open when told to"
    );
    assert_eq!(upstream.count(), 2);
    let admin = closed.admin_addr();
    wait_until_async("the scan error count", Duration::from_secs(5), async || {
        metric(
            &metrics_text(admin).await,
            "portcullis_upload_scans_total{result=\"error\"}",
        ) == 1.0
    })
    .await;
    closed.shutdown().await;
    open.shutdown().await;
}
