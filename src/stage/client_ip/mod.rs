//! The client's IP address.
//!
//! It is the TCP peer, unless the peer is one of `server.trusted_proxies`.
//! Then `X-Forwarded-For` is read from the right: trusted hops are skipped
//! and the first untrusted address is the client. A hop that does not parse
//! stops the walk (everything left of it could be forged), leaving the last
//! trusted hop as the client. An untrusted peer's `X-Forwarded-For` is never
//! read, so it cannot dodge an IP limit or an allow-list.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderMap, Request};
use ipnet::IpNet;

use crate::body::GatewayBody;
use crate::compile::CompileCx;
use crate::pipeline::{Phases, RequestCx, Stage, Verdict};

pub static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The trusted proxy networks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `192.168.1.7` or `::1`; returns the bad entries on failure.
    pub fn parse(entries: &[String]) -> Result<Self, Vec<String>> {
        let mut nets = Vec::new();
        let mut bad = Vec::new();
        for entry in entries {
            let entry = entry.trim();
            match entry.parse::<IpNet>() {
                Ok(net) => nets.push(net.trunc()),
                Err(_) => match entry.parse::<IpAddr>() {
                    Ok(ip) => nets.push(IpNet::from(ip)),
                    Err(_) => bad.push(entry.to_string()),
                },
            }
        }
        if bad.is_empty() {
            Ok(TrustedProxies(nets))
        } else {
            Err(bad)
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) become plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` hop: `1.2.3.4`, `1.2.3.4:80`, `::1` or `[::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    hop.parse::<SocketAddr>().ok().map(|s| canonical(s.ip()))
}

/// The client address for a request from `peer` with these headers.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    // Header lines in order, each a comma list; walk the hops right to left.
    let lines: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for line in lines.iter().rev() {
        let Ok(line) = std::str::from_utf8(line) else {
            return client;
        };
        for hop in line.rsplit(',') {
            match parse_hop(hop) {
                Some(ip) if trusted.contains(ip) => client = ip,
                Some(ip) => return ip,
                None => return client,
            }
        }
    }
    client
}

pub struct ClientIpStage {
    pub trusted: TrustedProxies,
}

/// Compiles `[server] trusted_proxies`.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let trusted = match TrustedProxies::parse(&cx.config.server.trusted_proxies) {
        Ok(t) => t,
        Err(bad) => {
            cx.problems.at(
                "server.trusted_proxies",
                format!("not IP addresses or CIDR ranges: {}", bad.join(", ")),
            );
            TrustedProxies::default()
        }
    };
    Some(Arc::new(ClientIpStage { trusted }))
}

impl Stage for ClientIpStage {
    fn name(&self) -> &'static str {
        "client_ip"
    }

    fn phases(&self) -> Phases {
        Phases::EARLY
    }

    fn early<'a>(&'a self, cx: &'a mut RequestCx, req: &'a mut Request<GatewayBody>) -> Verdict<'a> {
        let peer = canonical(cx.peer.ip());
        cx.peer_trusted = self.trusted.contains(peer);
        cx.client_ip = if cx.peer_trusted {
            client_ip(peer, req.headers(), &self.trusted)
        } else {
            peer
        };
        cx.https = cx.connection.is_tls()
            || cx.peer_trusted
                && req
                    .headers()
                    .get("x-forwarded-proto")
                    .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
        Verdict::CONTINUE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn client_ip_table() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "::1".into()]).unwrap();
        let cases: &[(&str, &[&str], &str)] = &[
            // Untrusted peers: the header is ignored.
            ("203.0.113.9", &["1.1.1.1"], "203.0.113.9"),
            ("203.0.113.9", &[], "203.0.113.9"),
            // Trusted peer: right-most untrusted hop.
            ("10.0.0.1", &["1.1.1.1"], "1.1.1.1"),
            ("10.0.0.1", &["6.6.6.6, 1.1.1.1, 10.0.0.2"], "1.1.1.1"),
            ("10.0.0.1", &["6.6.6.6", "1.1.1.1, 10.0.0.2"], "1.1.1.1"),
            ("10.0.0.1", &["1.1.1.1:4444"], "1.1.1.1"),
            ("10.0.0.1", &["[2001:db8::1]:80"], "2001:db8::1"),
            ("10.0.0.1", &["::ffff:1.1.1.1"], "1.1.1.1"),
            // All hops trusted: the left-most.
            ("10.0.0.1", &["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
            // Garbage stops the walk at the last trusted hop.
            ("10.0.0.1", &["1.1.1.1, garbage, 10.0.0.2"], "10.0.0.2"),
            ("10.0.0.1", &["garbage"], "10.0.0.1"),
            ("10.0.0.1", &[], "10.0.0.1"),
            ("::1", &["1.1.1.1"], "1.1.1.1"),
            ("::ffff:10.0.0.1", &["1.1.1.1"], "1.1.1.1"),
        ];
        for (peer, headers, want) in cases {
            assert_eq!(
                client_ip(ip(peer), &xff(headers), &trusted),
                ip(want),
                "{peer} {headers:?}"
            );
        }
    }

    #[test]
    fn the_stage_believes_forwarding_only_from_a_trusted_peer() {
        let stage = ClientIpStage {
            trusted: TrustedProxies::parse(&["127.0.0.0/8".into()]).unwrap(),
        };
        let mut req = Request::new(GatewayBody::Empty);
        req.headers_mut()
            .insert(&X_FORWARDED_FOR, "203.0.113.5".parse().unwrap());
        let mut cx = RequestCx::for_test();
        let _ = stage.early(&mut cx, &mut req);
        assert!(cx.peer_trusted);
        assert_eq!(cx.client_ip, ip("203.0.113.5"));

        let untrusting = ClientIpStage {
            trusted: TrustedProxies::default(),
        };
        let mut cx = RequestCx::for_test();
        let _ = untrusting.early(&mut cx, &mut req);
        assert!(!cx.peer_trusted);
        assert_eq!(cx.client_ip, ip("127.0.0.1"));
    }

    #[test]
    fn bad_proxy_entries_are_reported() {
        assert_eq!(
            TrustedProxies::parse(&["10.0.0.0/8".into(), "ten".into(), "10.0.0.0/33".into()]).unwrap_err(),
            vec!["ten".to_string(), "10.0.0.0/33".to_string()]
        );
    }
}
