//! Process and access logs: JSON lines on stdout, written by a background
//! thread so a slow terminal or pipe never stalls a request.
//!
//! The thread writes in batches: it takes every line queued, then flushes
//! once, so under load one `write` carries many lines (nginx writes one per
//! request unless its log has `buffer=`). Nothing waits for a batch to fill:
//! the flush comes as soon as the queue is empty, so a quiet gateway's line
//! is on stdout at once.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// The most the log thread holds before it writes, when lines arrive faster
/// than one write a line could keep up with.
const BATCH_BYTES: usize = 64 * 1024;

/// Installs the global subscriber. Keep the guard until exit: dropping it
/// flushes what is still queued.
pub fn init(filter: &str) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(BATCH_BYTES, std::io::stdout()));
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(true)
        .with_env_filter(filter)
        .with_writer(writer)
        .init();
    guard
}
