//! Request body size limits: a route's `max_body`, else `[server]
//! max_body` (10 MiB).
//!
//! - A `Content-Length` over the limit is refused with 413 before a byte of
//!   the body is read (a client that sent `Expect: 100-continue` never gets
//!   its 100).
//! - A body without a length (chunked HTTP/1, HTTP/2 without
//!   `content-length`) is counted as it streams; the chunk that would cross
//!   the limit is never passed on, and the upstream request is aborted, so
//!   the upstream never sees a complete request. The client gets 413 if no
//!   response has started.
//! - Every streamed body also keeps a pace (`[server] body_read_timeout`
//!   and `min_upload_rate`, Apache's `mod_reqtimeout`): a slow-POST client
//!   that misses it gets 408 and its connection closed.

use std::sync::Arc;

use http::header::CONTENT_LENGTH;
use http::{Request, Version};
use http_body::Body;

use crate::body::{GatewayBody, Pace};
use crate::compile::CompileCx;
use crate::error::GatewayError;
use crate::pipeline::{Phases, RequestCx, Route, Slot, Stage, Verdict};

/// The largest limit that can be configured (1 TiB; "unlimited" is not a
/// setting: every limit is bounded).
const MAX_LIMIT: u64 = 1 << 40;

/// A route's own limit, in bytes.
#[derive(Debug)]
pub struct MaxBody(u64);

pub struct BodyLimitStage {
    default: u64,
    /// `None`: `body_read_timeout = "0s"`, no pace.
    pace: Option<Pace>,
    slot: Slot<MaxBody>,
}

/// Compiles `[server] max_body` and every route's `max_body`.
pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    let default = cx.config.server.max_body.0;
    if default == 0 || default > MAX_LIMIT {
        cx.problems.at("server.max_body", "must be between 1B and 1TiB");
    }
    let slot = cx.per_route(|route, problems| {
        let limit = route.config.max_body?.0;
        if limit > MAX_LIMIT {
            problems.in_route(route, "max_body", "must be at most 1TiB");
        }
        Some(MaxBody(limit))
    });
    let server = &cx.config.server;
    let pace = (!server.body_read_timeout.0.is_zero()).then_some(Pace {
        timeout: server.body_read_timeout.0,
        min_rate: server.min_upload_rate.0,
    });
    Some(Arc::new(BodyLimitStage { default, pace, slot }))
}

impl BodyLimitStage {
    fn limit(&self, route: &Route) -> u64 {
        route.get(self.slot).map_or(self.default, |own| own.0)
    }
}

impl Stage for BodyLimitStage {
    fn name(&self) -> &'static str {
        "body_limit"
    }

    fn phases(&self) -> Phases {
        Phases::BODY
    }

    fn body<'a>(
        &'a self,
        cx: &'a mut RequestCx,
        route: &'a Route,
        req: &'a mut Request<GatewayBody>,
    ) -> Verdict<'a> {
        let limit = self.limit(route);
        // A body an earlier stage read whole (a CSRF form) is measured as is.
        if let GatewayBody::Full(Some(bytes)) = req.body()
            && bytes.len() as u64 > limit
        {
            return Verdict::Ready(Err(GatewayError::PayloadTooLarge { limit }));
        }
        if req.body().is_end_stream() {
            return Verdict::CONTINUE;
        }
        // The framing stage has made sure there is at most one, all digits.
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(length) if length > limit => Verdict::Ready(Err(GatewayError::PayloadTooLarge { limit })),
            // hyper holds the client to its declared length; only the pace
            // is left to keep.
            Some(_) if self.pace.is_none() => Verdict::CONTINUE,
            _ => {
                let body = std::mem::take(req.body_mut());
                *req.body_mut() = body.limit(limit, cx.version < Version::HTTP_2, self.pace);
                Verdict::CONTINUE
            }
        }
    }
}
