//! The pipeline stages, one folder each: its config types, its compile step
//! (`compile`, global and per route) and its tests. [`crate::policy`]
//! lists them in their one order; each phase runs the stages that take part
//! in it, in that order.
//!
//! | stage | phases | does |
//! | --- | --- | --- |
//! | [`request_id`] | early, response | keeps a well-formed `X-Request-Id` or makes one; echoes it back |
//! | [`framing`] | early | refuses request-smuggling shapes |
//! | [`client_ip`] | early | the peer, or the first untrusted `X-Forwarded-For` hop behind trusted proxies |
//! | [`request_head`] | early | request-target length (414), header count and size (431), a valid `Host` (400) and the host allow-list (421) |
//! | [`https_redirect`] | access | 308 to https for requests that did not come over HTTPS |
//! | [`ip_filter`] | access | a route's CIDR allow and deny lists on the client IP |
//! | [`cors`] | early, access, response | the origin allow-list (exact, subdomain patterns, per route, per environment); answers preflights; the upstream's `Access-Control-*` removed |
//! | [`websocket`] | access | WebSocket routes: a valid handshake (426), the `Origin` allow-list (403), the browser's `bearer` subprotocol token moved to `Authorization` |
//! | [`rate_limit::pre_auth`] | early, access | limits before authentication, global and per route |
//! | [`forward_auth`] | early, response | `/.auth/verify`: the request a proxy asks about replaces this one; the pipeline answers with the decision instead of proxying |
//! | [`auth_pages`] | early | `/.auth/…`: the login form, logout, userinfo and provider logins (never routed upstream) |
//! | [`route`] | route | normalises the path, finds the longest-prefix route, checks the method |
//! | [`csrf`] | access, body, response | unsafe requests with a credential cookie must be same-origin or carry the double-submit token; hands pages the token |
//! | [`authn`] | access | failed-authentication limit; API keys from headers (or a route's query parameter), checked against the cached store; JWTs of the configured issuers (PEM, secret or JWKS keys); login sessions |
//! | [`authz`] | access | a route's `scopes` must all be held and one of its `roles`, else 403 |
//! | [`rate_limit`] | access, response | every limit of the route (and the key's own) must pass; 429 with `Retry-After`; RateLimit headers |
//! | [`body_limit`] | body | `max_body`: 413 before reading, or the streamed body cut off |
//! | [`validate`] | body | content types (415), JSON limits, JSON Schema and content rules (422 with pointers), the backend's OpenAPI document |
//! | [`uploads`] | body | multipart file limits and types, ClamAV scanning |
//! | [`upstream_headers`] | upstream_request | hop-by-hop and client copies of the gateway's headers removed; `X-Forwarded-*`, `X-Request-Id` and the identity headers set |
//! | [`security_headers`] | response | nosniff, frame and referrer policies, CSP, HSTS over HTTPS; the upstream's `Server`/`X-Powered-By` removed; the upstream's cookies hardened |
//! | [`access_log`] | logging | route metrics and the access-log line, once per request |
//!
//! The proxy itself ([`crate::upstream`]) runs after the last request phase.

pub mod access_log;
pub mod auth_pages;
pub mod authn;
pub mod authz;
pub mod body_limit;
pub mod client_ip;
pub mod cors;
pub mod csrf;
pub mod forward_auth;
pub mod framing;
pub mod https_redirect;
pub mod ip_filter;
pub mod rate_limit;
pub mod request_head;
pub mod request_id;
pub mod route;
pub mod security_headers;
pub mod uploads;
pub mod upstream_headers;
pub mod validate;
pub mod websocket;
