//! The pipeline stages, one module each, in pipeline order:
//!
//! | stage | module | does |
//! | --- | --- | --- |
//! | request id | [`request_id`] | keeps a well-formed `X-Request-Id` or makes one; echoes it back |
//! | framing | [`framing`] | refuses request-smuggling shapes and spoofable header spellings |
//! | client IP | [`client_ip`] | the peer, or the first untrusted `X-Forwarded-For` hop behind trusted proxies |
//! | CORS | [`cors`] | answers preflights from the origin allow-list; marks allowed cross-origin requests |
//! | route | [`route`] | normalises the path, finds the longest-prefix route, checks the method |
//! | authentication | [`authn`] | API keys from headers (or a route's query parameter), checked against the cached store |
//! | authorisation | [`authz`] | a route's `scopes` must all be held, else 403 |
//! | rate limit | [`rate_limit`] | every limit of the route (and the key's own) must pass; 429 with `Retry-After`; RateLimit headers |
//! | upstream headers | [`upstream_headers`] | strips identity and forwarding headers a client could forge, sets `X-Forwarded-*`, `X-Request-Id` and `X-Portcullis-Consumer`/`-Key-Id`/`-Scopes` |
//!
//! The proxy itself ([`crate::proxy`]) runs after the last stage.

pub mod authn;
pub mod authz;
pub mod client_ip;
pub mod cors;
pub mod framing;
pub mod rate_limit;
pub mod request_id;
pub mod route;
pub mod upstream_headers;
