//! Process and access logs: JSON lines on stdout, written in batches by a
//! background thread so a slow terminal or pipe never stalls a request.
//!
//! **Why not `tracing-appender`'s non-blocking writer.** It sends each line
//! through a channel to a thread that writes it: one `write` and one
//! wake-up of that thread per request. On one core the thread runs between
//! requests, and its channel's backoff spins in `sched_yield` (1.3 per
//! request, measured with `bench/run.sh --syscalls portcullis-logged`); the
//! logged route served 0.59x of nginx's logged requests. Here a line is
//! appended to a shared buffer under a lock nobody holds for long, and the
//! thread is woken only by the first line after it went idle; it then
//! waits [`GATHER`] for more lines and writes them all with one `write`.
//!
//! **Bounded, and nothing lost.** When lines arrive faster than stdout
//! takes them and the buffer reaches [`MAX_PENDING`], the request that
//! finds it full writes it out itself (the back-pressure `lossy(false)` gave
//! before). Dropping the [`LogGuard`] at exit writes what is left.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How long the writer gathers lines after the first one of a batch: the
/// most a line waits before it is on stdout.
const GATHER: Duration = Duration::from_millis(10);

/// A batch this big is written at once, without waiting out [`GATHER`].
const BATCH_BYTES: usize = 64 * 1024;

/// The most bytes waiting for the writer; the request that would go past it
/// writes the batch itself.
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// The process's log buffer, for lines formatted outside `tracing` (the
/// access line, `src/stage/access_log/line.rs`).
static STDOUT: OnceLock<Arc<Shared<io::Stdout>>> = OnceLock::new();

/// Writes a whole line (with its newline) after the ones before it, when
/// [`init`] has installed the writer; `false` when it has not.
pub fn write_line(line: &[u8]) -> bool {
    match STDOUT.get() {
        Some(shared) => {
            shared.append(line);
            true
        }
        None => false,
    }
}

/// Installs the global subscriber. Keep the guard until exit: dropping it
/// writes what is still buffered.
pub fn init(filter: &str) -> LogGuard {
    let (writer, guard) = start(io::stdout());
    let _ = STDOUT.set(writer.0.clone());
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

/// Lines waiting to be written, and whether the process is ending.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closing: bool,
    /// The writer waits for a first line (not gathering): the next line
    /// wakes it. A wake-up is a system call, so lines that arrive while it
    /// gathers or writes do not make one.
    writer_idle: bool,
    /// The writer was told that a batch is full.
    told_full: bool,
}

struct Shared<W> {
    pending: Mutex<Pending>,
    /// Signalled when the idle writer's first line arrives, a batch is full,
    /// or the process ends.
    wake: Condvar,
    out: Mutex<W>,
}

impl<W: Write> Shared<W> {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn out(&self) -> MutexGuard<'_, W> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one line. Whoever takes bytes out of `pending` locks the
    /// output before letting go of `pending`, so batches are written in
    /// the order their lines arrived.
    fn append(&self, line: &[u8]) {
        let mut pending = self.pending();
        if pending.bytes.len() + line.len() > MAX_PENDING {
            // The writer is behind: this request pays for the write.
            let full = std::mem::take(&mut pending.bytes);
            let mut out = self.out();
            drop(pending);
            write_out(&mut *out, &full);
            drop(out);
            pending = self.pending();
        }
        pending.bytes.extend_from_slice(line);
        let first = std::mem::take(&mut pending.writer_idle);
        let full = pending.bytes.len() >= BATCH_BYTES && !pending.told_full;
        pending.told_full |= full;
        drop(pending);
        if first || full {
            self.wake.notify_one();
        }
    }

    /// The writer thread: sleeps until there are lines, gathers for
    /// [`GATHER`] (or until a batch is full), writes them, and repeats;
    /// at the end writes the rest.
    fn run(&self) {
        let mut spare = Vec::new();
        loop {
            let mut pending = self.pending();
            while pending.bytes.is_empty() && !pending.closing {
                pending.writer_idle = true;
                pending = self.wake.wait(pending).unwrap_or_else(|e| e.into_inner());
            }
            pending.writer_idle = false;
            if !pending.closing && pending.bytes.len() < BATCH_BYTES {
                pending = self
                    .wake
                    .wait_timeout_while(pending, GATHER, |p| p.bytes.len() < BATCH_BYTES && !p.closing)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let closing = pending.closing;
            pending.told_full = false;
            std::mem::swap(&mut pending.bytes, &mut spare);
            let mut out = self.out();
            drop(pending);
            if !spare.is_empty() {
                write_out(&mut *out, &spare);
                spare.clear();
                // A burst's buffer is not kept for ever.
                spare.shrink_to(BATCH_BYTES);
            }
            drop(out);
            if closing && self.pending().bytes.is_empty() {
                return;
            }
        }
    }
}

/// Writes `bytes` to the output. A failed write (stdout closed) cannot be
/// reported anywhere but stdout: the lines are dropped.
fn write_out<W: Write>(out: &mut W, bytes: &[u8]) {
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

/// Starts the writer thread over `out`.
fn start<W: Write + Send + 'static>(out: W) -> (BatchWriter<W>, LogGuard) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        wake: Condvar::new(),
        out: Mutex::new(out),
    });
    let worker = shared.clone();
    let thread = std::thread::Builder::new()
        .name("portcullis-log".into())
        .spawn(move || worker.run())
        // At startup, before anything is served: nothing could be logged.
        .expect("cannot start the log writer thread");
    let close = shared.clone();
    let guard = LogGuard {
        close: Box::new(move || {
            close.pending().closing = true;
            close.wake.notify_one();
        }),
        thread: Some(thread),
    };
    (BatchWriter(shared), guard)
}

/// Hands each formatted line to the writer thread.
struct BatchWriter<W>(Arc<Shared<W>>);

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for BatchWriter<W> {
    type Writer = LineWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(&self.0)
    }
}

/// One event's writer: `tracing-subscriber` formats the whole line first
/// and writes it in one call.
struct LineWriter<'a, W>(&'a Shared<W>);

impl<W: Write> Write for LineWriter<'_, W> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Ends the writer thread, which first writes every buffered line.
pub struct LogGuard {
    close: Box<dyn Fn() + Send>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        (self.close)();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_and_the_guard_writes_the_rest() {
        let out = Captured::default();
        let (writer, guard) = start(out.clone());
        let mut expected = Vec::new();
        // More than MAX_PENDING in all, so batches, full buffers and the
        // writer all take part.
        for i in 0..120_000 {
            let line = format!("{{\"line\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 50));
            writer.make_writer().write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        drop(guard);
        assert_eq!(out.0.lock().unwrap().len(), expected.len());
        assert!(*out.0.lock().unwrap() == expected, "lines lost or out of order");
    }

    #[test]
    fn a_single_line_reaches_the_output_without_more_lines_behind_it() {
        let out = Captured::default();
        let (writer, _guard) = start(out.clone());
        writer.make_writer().write_all(b"{\"alone\":true}\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the line never came out");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(*out.0.lock().unwrap(), b"{\"alone\":true}\n");
    }
}
