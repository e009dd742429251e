//! The logging phase: each request's metrics and its access-log line,
//! exactly once per request (see [`crate::pipeline::Exchange`]), when the
//! response body has been sent or the client went away, so durations and
//! byte counts cover the whole exchange. A request whose client left before
//! the response was ready is logged with status 499, as nginx does.
//!
//! The line never carries the query string, a header value, a cookie or a
//! key: only the normalised path and facts the gateway decided.

mod line;

use std::sync::Arc;

use crate::compile::CompileCx;
use crate::metrics::RouteMetrics;
use crate::pipeline::{Finished, Phases, RequestCx, Stage};

pub struct AccessLogStage {
    /// Write the access-log line (`[log] access_log`).
    write_line: bool,
    /// Metrics for requests that matched no route.
    unrouted: RouteMetrics,
}

pub fn compile(cx: &mut CompileCx<'_>) -> Option<Arc<dyn Stage>> {
    Some(Arc::new(AccessLogStage {
        write_line: cx.config.log.access_log,
        unrouted: cx.runtime.metrics.unrouted.clone(),
    }))
}

impl Stage for AccessLogStage {
    fn name(&self) -> &'static str {
        "access_log"
    }

    fn phases(&self) -> Phases {
        Phases::LOGGING
    }

    fn logging(&self, cx: &RequestCx, done: &Finished<'_>) {
        let elapsed = cx.started.elapsed();
        let route = cx.route.as_deref();
        match route {
            Some(route) => route.metrics.record(done.status, elapsed),
            None => self.unrouted.record(done.status, elapsed),
        }
        if !self.write_line {
            return;
        }
        let path = cx.rewritten_path.as_deref().unwrap_or(done.uri.path());
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        let line = line::AccessLine {
            request_id: cx.request_id(),
            client_ip: cx.client_ip,
            method: done.method.as_str(),
            route: route.map(|r| &*r.id),
            path,
            status: done.status,
            duration: elapsed,
            upstream: cx.upstream_time,
            bytes_sent: done.bytes_sent,
            completed: done.completed,
            consumer: cx.principal.as_ref().map(|p| p.name()),
        };
        line::emit(&line, |bytes| {
            if !crate::logging::write_line(bytes) {
                // No log writer of ours (the gateway embedded in another
                // program): the line goes to its `tracing` subscriber.
                tracing::info!(target: "access", "{}", String::from_utf8_lossy(bytes).trim_end());
            }
        });
    }
}
