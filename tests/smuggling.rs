//! Request-smuggling shapes sent as raw bytes: each is refused with 400 and
//! nothing reaches the upstream.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_shapes_are_refused_before_the_upstream() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let cases: &[(&str, &str)] = &[
        (
            "CL.TE",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
        ),
        (
            "TE.CL",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        ),
        (
            "two different Content-Lengths",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 8\r\n\r\nabcSMUGGLED",
        ),
        (
            "two equal Content-Lengths",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "Content-Length list",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
        ),
        (
            "signed Content-Length",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
        ),
        (
            "Transfer-Encoding twice",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "gzip, chunked",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunked, identity",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        (
            "xchunked",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "space before colon",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE on HTTP/1.0",
            "POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        ("no Host on HTTP/1.1", "GET / HTTP/1.1\r\n\r\n"),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        (
            "bad chunk size",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        ),
        ("NUL in header", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"),
    ];
    for (name, request) in cases {
        let before = upstream.count();
        let answer = raw(gw.public_addr(), request.as_bytes()).await;
        // hyper refuses some shapes while parsing, before a request exists;
        // either way the answer is 400 (or the connection closes) and the
        // upstream sees nothing.
        if !answer.is_empty() {
            assert_eq!(raw_status(&answer), 400, "{name}: {answer}");
        }
        assert_eq!(upstream.count(), before, "{name} reached the upstream");
        assert!(
            !upstream
                .received()
                .iter()
                .any(|r| r.body.windows(8).any(|w| w == b"SMUGGLED"))
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_smuggling_shape_pipelined_behind_a_good_request_is_refused() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let answer = raw(
        gw.public_addr(),
        b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
          POST /second HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400 Bad Request"), "{answer}");
    // The connection closes after the refusal: /third is never read.
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
    let targets: Vec<String> = upstream.received().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/first"]);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_from_the_gateway_are_problem_documents() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let answer = raw(
        gw.public_addr(),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 400);
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("\"request_id\""), "{answer}");
    assert!(
        answer.contains("both Content-Length and Transfer-Encoding"),
        "{answer}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_chunked_request_still_works_after_refusals() {
    let upstream = TestUpstream::start().await;
    let gw = start_gateway(&config("development", &upstream.url(), PUBLIC_ROOT)).await;
    let answer = raw(
        gw.public_addr(),
        b"POST /ok HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&answer), 200, "{answer}");
    assert_eq!(upstream.last().body, "hello");
    gw.shutdown().await;
}
