//! Rate limiting: compiled limits, what each request is counted by, the
//! two backends (in-process by default, Redis for many instances) and the
//! response headers.
//!
//! Every limit is GCRA ([`gcra`]) with the same meaning in both backends.
//! A request must pass all of its limits, and a refused request consumes
//! none of them.
//!
//! Counters are scoped: a route's limits (its own `rate_limit`, or the
//! `[rate_limits] default` list, each route counting separately) count per
//! route; a key's own limit (from the key record) counts per key across all
//! routes and takes the place of the route's `per key` limits for requests
//! made with that key; `[api_keys] default_rate_limit` is the own limit of
//! keys that have none, added to (not replacing) the route's limits.
//! Limits before authentication count in scopes of their own, so they never
//! share a counter with a route's limits.
//!
//! [`Limiters`] is what a stage asks: the in-process limiter, or Redis with
//! its outage mode.

pub mod gcra;
pub mod local;
pub mod redis;

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::config::{LimitKey, OnOutage, RateSpec};
use gcra::{Check, Rate};
use local::LocalLimiter;
use redis::RedisLimiter;

/// The headers describing a request's tightest limit.
pub type LimitHeaders = [(HeaderName, HeaderValue); 5];

/// Where a limit's counters live.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Counted per route (by route ID).
    Route(Arc<str>),
    /// A route's limits before authentication.
    PreAuth(Arc<str>),
    /// Counted across the whole gateway, under this name (limits before
    /// authentication, failed authentications).
    Gateway(&'static str),
    /// A key's own limit: counted per key everywhere.
    KeyQuota,
}

/// A compiled limit.
#[derive(Clone, Debug)]
pub struct Limit {
    pub spec: RateSpec,
    pub rate: Rate,
    pub scope: Scope,
    /// The policy name in `RateLimit-Policy`.
    pub name: String,
    /// Identifies the counter family: scope, count, period and burst. A
    /// changed limit starts fresh counters.
    family: String,
    family_hash: u64,
    /// `X-RateLimit-Limit`, made once.
    count_header: HeaderValue,
}

impl Limit {
    pub fn new(spec: RateSpec, scope: Scope, name: String) -> Limit {
        let period_us = spec.period.as_micros() as i64;
        let rate = Rate::new(spec.count, period_us, spec.burst);
        let scope_text = match &scope {
            Scope::Route(id) => format!("route:{id}"),
            Scope::PreAuth(id) => format!("pre-auth:{id}"),
            Scope::Gateway(name) => format!("gateway:{name}"),
            Scope::KeyQuota => "key-quota".to_string(),
        };
        let family = format!(
            "{scope_text}:{}r{}us{}b:{}",
            rate.count, period_us, rate.burst, spec.key
        );
        let family_hash = stable_hash(family.as_bytes());
        Limit {
            count_header: HeaderValue::from(rate.count),
            spec,
            rate,
            scope,
            name,
            family,
            family_hash,
        }
    }

    /// A key's own limit (from its record or `[api_keys] default_rate_limit`).
    pub fn key_quota(spec: RateSpec) -> Limit {
        let name = format!("key-{}s", spec.period.as_secs());
        Limit::new(spec, Scope::KeyQuota, name)
    }

    /// `"name";q=100;w=60`, one item of `RateLimit-Policy`.
    pub fn policy_item(&self) -> String {
        let window = (self.rate.period_us / 1_000_000).max(1);
        let mut item = format!("\"{}\";q={};w={window}", self.name, self.rate.count);
        if self.rate.burst != self.rate.count {
            item.push_str(&format!(";burst={}", self.rate.burst));
        }
        item
    }
}

/// What the backends said about a request's limits.
pub enum Counted {
    /// One check per limit, in order.
    Checks(SmallVec<[Check; 4]>),
    /// Redis is down and `on_outage = "open"`: no limits apply.
    Unlimited,
    /// Redis is down and `on_outage = "closed"`: refuse with 503.
    Unavailable,
}

impl Counted {
    /// The checks to decide on, `None` when no limit applies (Redis down,
    /// `open`), or the 503 for Redis down with `closed`.
    pub fn checks(self) -> Result<Option<SmallVec<[Check; 4]>>, crate::error::GatewayError> {
        match self {
            Counted::Checks(checks) => Ok(Some(checks)),
            Counted::Unlimited => Ok(None),
            Counted::Unavailable => Err(crate::error::GatewayError::Unavailable(
                "Rate limiting is unavailable; try again shortly.".into(),
            )),
        }
    }
}

/// The rate-limit backends every limiting stage shares: the in-process
/// limiter, and Redis when `[redis]` is set.
#[derive(Clone)]
pub struct Limiters {
    pub local: Arc<LocalLimiter>,
    pub redis: Option<Arc<RedisLimiter>>,
}

impl Limiters {
    /// The in-process answer for (limit, subject) pairs, or what the outage
    /// mode says while Redis is down; `None` when Redis must be asked (see
    /// [`Limiters::check_shared`]).
    pub fn check_now(&self, limits: &[&Limit], subjects: &[Subject]) -> Option<Counted> {
        match &self.redis {
            None => Some(Counted::Checks(self.check_local(limits, subjects))),
            Some(redis) if !redis.is_healthy() => Some(self.outage(redis, limits, subjects)),
            Some(_) => None,
        }
    }

    /// Asks Redis (one round trip for all the limits), falling back to the
    /// outage mode if it does not answer.
    pub async fn check_shared(&self, limits: &[&Limit], subjects: &[Subject]) -> Counted {
        let Some(redis) = &self.redis else {
            return Counted::Checks(self.check_local(limits, subjects));
        };
        let keys: Vec<(String, Rate)> = limits
            .iter()
            .zip(subjects)
            .map(|(l, s)| (redis_key(&redis.prefix, l, s), l.rate))
            .collect();
        match redis.check(&keys).await {
            Some(checks) => Counted::Checks(checks.into_iter().collect()),
            None => self.outage(redis, limits, subjects),
        }
    }

    fn check_local(&self, limits: &[&Limit], subjects: &[Subject]) -> SmallVec<[Check; 4]> {
        let counters: SmallVec<[(u64, Rate); 4]> = limits
            .iter()
            .zip(subjects)
            .map(|(l, s)| (counter_id(&self.local.hasher, l, s), l.rate))
            .collect();
        self.local.check(&counters)
    }

    fn outage(&self, redis: &RedisLimiter, limits: &[&Limit], subjects: &[Subject]) -> Counted {
        match redis.on_outage {
            OnOutage::Local => Counted::Checks(self.check_local(limits, subjects)),
            OnOutage::Open => Counted::Unlimited,
            OnOutage::Closed => Counted::Unavailable,
        }
    }
}

/// FNV-1a: stable across processes and releases, for counter families.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A route's limits, compiled once.
#[derive(Clone, Debug, Default)]
pub struct RouteLimits {
    pub limits: Vec<Limit>,
    /// `RateLimit-Policy` for exactly these limits, made once.
    pub policy: Option<HeaderValue>,
}

impl RouteLimits {
    pub fn new(limits: Vec<Limit>) -> RouteLimits {
        let policy = (!limits.is_empty()).then(|| policy_header(&limits.iter().collect::<Vec<_>>()));
        RouteLimits { limits, policy }
    }
}

/// `RateLimit-Policy` for a set of limits.
pub fn policy_header(limits: &[&Limit]) -> HeaderValue {
    let text = limits
        .iter()
        .map(|l| l.policy_item())
        .collect::<Vec<_>>()
        .join(", ");
    HeaderValue::try_from(text).expect("digits and quoted names are header text")
}

/// What one request is counted by, for each of its limits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An IPv4 address or an IPv6 prefix.
    Ip(IpAddr, u8),
    Text(String),
    /// The route itself (one counter for everybody).
    Everyone,
}

impl Subject {
    /// IPv6 addresses are grouped by `v6_prefix` bits.
    pub fn ip(ip: IpAddr, v6_prefix: u8) -> Subject {
        match ip {
            IpAddr::V4(_) => Subject::Ip(ip, 32),
            IpAddr::V6(v6) => {
                let prefix = v6_prefix.min(128);
                let bits = u128::from(v6);
                let mask = if prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - prefix as u32)
                };
                Subject::Ip(IpAddr::V6((bits & mask).into()), prefix)
            }
        }
    }

    /// A header value or name, shortened to a digest when long so counter
    /// names stay small and never carry a long client-chosen string.
    pub fn text(value: &str) -> Subject {
        if value.len() <= 64 && value.bytes().all(|b| b.is_ascii_graphic()) {
            Subject::Text(value.to_string())
        } else {
            use sha2::{Digest, Sha256};
            Subject::Text(format!(
                "sha256:{}",
                &hex::encode(Sha256::digest(value.as_bytes()))[..32]
            ))
        }
    }

    /// The subject in a Redis key: tagged, so a header value that looks like
    /// an address never shares a counter with that address.
    pub fn key_part(&self) -> String {
        match self {
            Subject::Ip(..) => format!("ip={}", self.display()),
            Subject::Text(t) => format!("v={t}"),
            Subject::Everyone => "*".into(),
        }
    }

    /// The subject as shown in audit events.
    pub fn display(&self) -> String {
        match self {
            Subject::Ip(ip @ IpAddr::V4(_), _) => ip.to_string(),
            Subject::Ip(ip, prefix) => format!("{ip}/{prefix}"),
            Subject::Text(t) => t.clone(),
            Subject::Everyone => "*".into(),
        }
    }
}

/// The counter ID of (limit, subject) in the in-process limiter.
pub fn counter_id(hasher: &impl BuildHasher, limit: &Limit, subject: &Subject) -> u64 {
    let mut h = hasher.build_hasher();
    limit.family_hash.hash(&mut h);
    subject.hash(&mut h);
    h.finish()
}

/// The Redis key of (limit, subject). Every rate-limit key shares the hash
/// tag `{<prefix>:rl}`, so one script call may touch all of a request's
/// counters even on Redis Cluster (at the price of one slot holding them all).
pub fn redis_key(prefix: &str, limit: &Limit, subject: &Subject) -> String {
    format!("{{{prefix}:rl}}:{}:{}", limit.family, subject.key_part())
}

/// The outcome for one request.
#[derive(Clone, Debug)]
pub struct Decision {
    pub allowed: bool,
    /// The limit the headers describe: the refusing one with the longest
    /// wait, or else the one with the fewest requests left.
    pub limit_index: usize,
    pub remaining: u32,
    pub reset_us: i64,
    pub retry_after_us: i64,
}

impl Decision {
    pub fn from_checks(checks: &[gcra::Check]) -> Option<Decision> {
        let allowed = checks.iter().all(|c| c.allowed);
        let (index, chosen) = if allowed {
            checks
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| (c.remaining, std::cmp::Reverse(c.reset_us)))?
        } else {
            checks
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.allowed)
                .max_by_key(|(_, c)| c.retry_after_us)?
        };
        Some(Decision {
            allowed,
            limit_index: index,
            remaining: chosen.remaining,
            reset_us: chosen.reset_us,
            retry_after_us: checks.iter().map(|c| c.retry_after_us).max().unwrap_or(0),
        })
    }
}

/// Whole seconds, rounded up (a client told "0" would retry at once).
pub fn ceil_secs(us: i64) -> u64 {
    ((us.max(0) + 999_999) / 1_000_000) as u64
}

/// The headers for a decision on `limits`, whose `RateLimit-Policy` is
/// `policy` (a route's is made once; see [`RouteLimits`]).
pub fn headers(limits: &[&Limit], policy: HeaderValue, decision: &Decision) -> LimitHeaders {
    let limit = limits[decision.limit_index];
    let reset = ceil_secs(decision.reset_us);
    // `"name";r=N;t=M`, written by hand: this runs for every limited request
    // and `format!` costs several times as much.
    let mut digits = itoa::Buffer::new();
    let mut state = Vec::with_capacity(limit.name.len() + 32);
    state.push(b'"');
    state.extend_from_slice(limit.name.as_bytes());
    state.extend_from_slice(b"\";r=");
    state.extend_from_slice(digits.format(decision.remaining).as_bytes());
    state.extend_from_slice(b";t=");
    state.extend_from_slice(digits.format(reset).as_bytes());
    [
        (http::HeaderName::from_static("ratelimit-policy"), policy),
        (
            http::HeaderName::from_static("ratelimit"),
            HeaderValue::from_maybe_shared(bytes::Bytes::from(state))
                .expect("digits and quoted names are header text"),
        ),
        (
            http::HeaderName::from_static("x-ratelimit-limit"),
            limit.count_header.clone(),
        ),
        (
            http::HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(decision.remaining),
        ),
        (
            http::HeaderName::from_static("x-ratelimit-reset"),
            HeaderValue::from(reset),
        ),
    ]
}

/// A short, header-safe name for a limit: `ip-60s`, `key-86400s`.
pub fn limit_name(spec: &RateSpec, taken: &[String]) -> String {
    let kind = match &spec.key {
        LimitKey::Header(name) => format!("header-{}", name.as_str()),
        other => other.to_string(),
    };
    let base = format!("{kind}-{}s", spec.period.as_secs());
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rate::parse_rate;

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        let a = Subject::ip("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = Subject::ip("2001:db8:1:2:bbbb::9".parse().unwrap(), 64);
        let c = Subject::ip("2001:db8:1:3::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.display(), "2001:db8:1:2::/64");
        assert_eq!(Subject::ip("10.1.2.3".parse().unwrap(), 64).display(), "10.1.2.3");
    }

    #[test]
    fn long_or_odd_header_values_become_digests() {
        assert_eq!(Subject::text("tenant-7").display(), "tenant-7");
        assert!(Subject::text(&"x".repeat(65)).display().starts_with("sha256:"));
        assert!(Subject::text("has space").display().starts_with("sha256:"));
    }

    #[test]
    fn headers_describe_the_tightest_limit() {
        let wide = Limit::new(
            parse_rate("1000/day").unwrap(),
            Scope::Route("r".into()),
            "ip-86400s".into(),
        );
        let narrow = Limit::new(
            parse_rate("10/minute").unwrap(),
            Scope::Route("r".into()),
            "ip-60s".into(),
        );
        let checks = [gcra::check(wide.rate, None, 0), gcra::check(narrow.rate, None, 0)];
        let d = Decision::from_checks(&checks).unwrap();
        assert!(d.allowed);
        assert_eq!((d.limit_index, d.remaining), (1, 9));
        let both = [&wide, &narrow];
        let h = headers(&both, policy_header(&both), &d);
        assert_eq!(h[0].1, "\"ip-86400s\";q=1000;w=86400, \"ip-60s\";q=10;w=60");
        assert_eq!(h[1].1, "\"ip-60s\";r=9;t=6");
        assert_eq!(h[2].1, "10");
        assert_eq!(h[3].1, "9");
        assert_eq!(h[4].1, "6");
    }

    #[test]
    fn counter_families_change_with_the_limit() {
        let a = Limit::new(
            parse_rate("10/minute").unwrap(),
            Scope::Route("r".into()),
            "a".into(),
        );
        let b = Limit::new(
            parse_rate("11/minute").unwrap(),
            Scope::Route("r".into()),
            "a".into(),
        );
        let c = Limit::new(
            parse_rate("10/minute").unwrap(),
            Scope::Route("s".into()),
            "a".into(),
        );
        assert_ne!(a.family_hash, b.family_hash);
        assert_ne!(a.family_hash, c.family_hash);
        assert_eq!(
            redis_key("portcullis", &a, &Subject::ip("1.2.3.4".parse().unwrap(), 64)),
            "{portcullis:rl}:route:r:10r60000000us10b:ip:ip=1.2.3.4"
        );
    }
}
