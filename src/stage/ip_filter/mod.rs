//! IP allow and deny lists per route (`ip_filter = { allow = […], deny =
//! […] }`), as CIDRs or single addresses, on the client IP the client_ip
//! stage settled on (the first untrusted `X-Forwarded-For` hop behind a
//! trusted proxy, else the peer). A deny match refuses; a non-empty allow
//! list refuses every address outside it. IPv4-mapped IPv6 addresses
//! (`::ffff:10.0.0.1`) match as the IPv4 address they carry. Refusals are
//! 403 problem documents and `ip.rejected` audit events.

use std::net::IpAddr;
use std::sync::Arc;

use http::Request;
use ipnet::IpNet;
use serde::Deserialize;

use crate::body::GatewayBody;
use crate::compile::{CompileCx, Problems, RouteEntry};
use crate::enforce::{Enforcement, Mode, mode_for, protection};
use crate::error::GatewayError;
use crate::pipeline::{Phases, RequestCx, Route, Slot, Stage, Verdict};

/// A route's `ip_filter` table.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    /// Only these networks may use the route (any when empty).
    #[serde(default)]
    pub allow: Vec<String>,
    /// These networks may not, even inside `allow`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// `report`: let refused addresses through, counted and audited.
    pub mode: Option<Mode>,
}

pub struct RouteIpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    mode: Mode,
}

pub struct IpFilterStage {
    slot: Slot<RouteIpFilter>,
    audit: crate::audit::Audit,
    enforcement: Enforcement,
}

fn networks(texts: &[String], key: &str, route: &RouteEntry<'_>, problems: &mut Problems<'_>) -> Vec<IpNet> {
    texts
        .iter()
        .filter_map(|text| {
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    problems.in_route(
                        route,
                        key,
                        format!("`{text}` is not an IP address or CIDR such as 10.0.0.0/8"),
                    );
                    None
                }
            }
        })
        .collect()
}

/// Compiles every route's `ip_filter`; none: no stage.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    if cx.routes().iter().all(|r| r.config.ip_filter.is_none()) {
        return None;
    }
    let slot = cx.per_route(|route, problems| {
        let config = route.config.ip_filter.as_ref()?;
        if config.allow.is_empty() && config.deny.is_empty() {
            problems.in_route(route, "ip_filter", "list networks in `allow` or `deny`");
        }
        Some(RouteIpFilter {
            allow: networks(&config.allow, "ip_filter.allow", route, problems),
            deny: networks(&config.deny, "ip_filter.deny", route, problems),
            mode: mode_for(problems, route, protection::IP_FILTER, config.mode, None),
        })
    });
    Some(Arc::new(IpFilterStage {
        slot,
        audit: cx.runtime.audit.clone(),
        enforcement: Enforcement::new(cx),
    }))
}

impl RouteIpFilter {
    fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

impl Stage for IpFilterStage {
    fn name(&self) -> &'static str {
        "ip_filter"
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        _req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        let Some(filter) = route.get(self.slot) else {
            return Verdict::CONTINUE;
        };
        if filter.admits(cx.client_ip) {
            return Verdict::CONTINUE;
        }
        if filter.mode == Mode::Enforce {
            self.audit.emit(
                crate::audit::Event::new("ip.rejected", crate::audit::Severity::Notice).for_request(cx),
            );
        }
        let error = GatewayError::Forbidden("Requests from this address may not use this route.".into());
        Verdict::Ready(
            self.enforcement
                .refuse(cx, filter.mode, protection::IP_FILTER, error),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_wins_and_allow_limits_and_mapped_addresses_match_as_ipv4() {
        let filter = RouteIpFilter {
            allow: vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()],
            deny: vec!["10.6.6.0/24".parse().unwrap()],
            mode: Mode::Enforce,
        };
        let admits = |ip: &str| filter.admits(ip.parse().unwrap());
        assert!(admits("10.1.2.3"));
        assert!(admits("::ffff:10.1.2.3"));
        assert!(admits("2001:db8::1"));
        assert!(!admits("10.6.6.7"));
        assert!(!admits("::ffff:10.6.6.7"));
        assert!(!admits("192.168.1.1"));
        assert!(!admits("2001:db9::1"));
    }
}
