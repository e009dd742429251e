//! The audit writer: one task that drains the queue in batches and writes
//! each batch to the JSON-lines file (its own chain) and the store (the
//! shared chain), spilling to a local file while the store is unavailable.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::chain::{ChainedEvent, RETENTION_EVENT, chain};
use super::{Audit, AuditCounters, Command, Event, Inner, Severity};
use crate::config::AuditConfig;
use crate::metrics::Metrics;
use crate::store::{Store, now_ms};

const BATCH: usize = 256;
/// How long the writer gathers events before writing them (the most an
/// event waits for its batch).
const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// How often a spilled backlog is retried and drops are reported.
const TICK: Duration = Duration::from_secs(1);
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// The running writer; stop it with [`AuditTask::shutdown`] so nothing
/// queued is lost.
pub struct AuditTask {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl AuditTask {
    /// Writes everything still queued, then stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.handle.await;
    }
}

struct WriterMetrics {
    written: IntCounterVec,
    spill_pending: IntGauge,
}

/// Starts the writer. `store` is `None` when only the file is wanted.
pub fn start(
    config: &AuditConfig,
    base_dir: &Path,
    store: Option<Store>,
    metrics: &Metrics,
) -> (Audit, AuditTask) {
    let (queue, receiver) = mpsc::channel(config.queue.max(1));
    let counters = Arc::new(AuditCounters::default());
    let dropped_metric = IntCounter::new(
        "portcullis_audit_dropped_total",
        "Audit events that could not be queued (queue full) and were lost.",
    )
    .expect("metric definitions are valid");
    let written = IntCounterVec::new(
        Opts::new(
            "portcullis_audit_events_written_total",
            "Audit events written, by sink (store, file, spill).",
        ),
        &["sink"],
    )
    .expect("metric definitions are valid");
    let spill_pending = IntGauge::new(
        "portcullis_audit_spill_pending",
        "Audit events waiting in the spill file for the store to return.",
    )
    .expect("metric definitions are valid");
    metrics.register(Box::new(dropped_metric.clone()));
    metrics.register(Box::new(written.clone()));
    metrics.register(Box::new(spill_pending.clone()));

    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    let spill = Spill::open(resolve(&config.spill_file));
    spill_pending.set(spill.pending as i64);
    let writer = Writer {
        store,
        file: config.file.as_deref().map(resolve),
        spill,
        retention: config.retention.map(|d| d.0),
        last_retention: None,
        counters: counters.clone(),
        reported_drops: 0,
        metrics: WriterMetrics {
            written,
            spill_pending,
        },
        warned_at: None,
    };
    let (stop, stopped) = oneshot::channel();
    let handle = tokio::spawn(writer.run(receiver, stopped));
    let audit = Audit {
        inner: Some(Arc::new(Inner {
            queue,
            counters,
            success_sample: config.auth_success_sample,
            dropped_metric,
        })),
    };
    (audit, AuditTask { stop, handle })
}

struct Writer {
    store: Option<Store>,
    file: Option<PathBuf>,
    spill: Spill,
    retention: Option<Duration>,
    last_retention: Option<Instant>,
    counters: Arc<AuditCounters>,
    reported_drops: u64,
    metrics: WriterMetrics,
    warned_at: Option<Instant>,
}

impl Writer {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>, mut stopped: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = queue.recv() => match command {
                    Some(command) => self.take(command, &mut queue).await,
                    None => break,
                },
                _ = tick.tick() => self.housekeeping().await,
                _ = &mut stopped => {
                    // Write what is already queued, then stop.
                    while let Ok(command) = queue.try_recv() {
                        self.take(command, &mut queue).await;
                    }
                    self.report_drops().await;
                    break;
                }
            }
        }
    }

    /// Handles one command plus what arrives within [`BATCH_WINDOW`] (up
    /// to [`BATCH`] events): a steady trickle of events then costs one
    /// transaction per window instead of one per event. A flush ends the
    /// wait at once.
    async fn take(&mut self, first: Command, queue: &mut mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        let window_ends = tokio::time::Instant::now() + BATCH_WINDOW;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Event(event) => batch.push(*event),
                Command::Flush(done) => waiting.push(done),
            }
            if batch.len() >= BATCH {
                break;
            }
            next = match queue.try_recv() {
                Ok(command) => Some(command),
                Err(_) if !waiting.is_empty() => None,
                Err(_) => tokio::time::timeout_at(window_ends, queue.recv())
                    .await
                    .ok()
                    .flatten(),
            };
        }
        if !batch.is_empty() {
            self.write(batch).await;
        }
        for done in waiting {
            let _ = done.send(());
        }
    }

    async fn write(&mut self, batch: Vec<Event>) {
        if let Some(path) = &self.file {
            match append_file(path, batch.clone()) {
                Ok(n) => self.metrics.written.with_label_values(&["file"]).inc_by(n as u64),
                Err(error) => self.warn(&format!(
                    "audit file {} cannot be written: {error}",
                    path.display()
                )),
            }
        }
        let Some(store) = self.store.clone() else { return };
        if self.spill.pending == 0 {
            match store.append_audit(batch.clone()).await {
                Ok(chained) => {
                    self.metrics
                        .written
                        .with_label_values(&["store"])
                        .inc_by(chained.len() as u64);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "audit store unavailable; spilling events to {}", self.spill.path.display());
                }
            }
        }
        // Keep order: once anything is spilled, everything after follows it.
        match self.spill.append(&batch) {
            Ok(()) => {
                self.metrics
                    .written
                    .with_label_values(&["spill"])
                    .inc_by(batch.len() as u64);
                self.metrics.spill_pending.set(self.spill.pending as i64);
            }
            Err(error) => {
                self.counters
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.warn(&format!(
                    "audit spill file cannot be written either; {} events lost: {error}",
                    batch.len()
                ));
            }
        }
    }

    async fn housekeeping(&mut self) {
        if self.spill.pending > 0
            && let Some(store) = self.store.clone()
        {
            match self.spill.replay(&store).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    events = n,
                    "audit store is back; replayed spilled events in order"
                ),
                Err(_) => {}
            }
            self.metrics.spill_pending.set(self.spill.pending as i64);
        }
        self.report_drops().await;
        self.apply_retention().await;
    }

    /// Turns a rise in the drop counter into an `audit.dropped` event.
    async fn report_drops(&mut self) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        if dropped > self.reported_drops {
            let lost = dropped - self.reported_drops;
            self.reported_drops = dropped;
            tracing::warn!(lost, "audit events were dropped because the queue was full");
            let event = Event::new("audit.dropped", Severity::Warning)
                .detail("lost", lost)
                .detail("total_lost", dropped);
            self.write(vec![event]).await;
        }
    }

    async fn apply_retention(&mut self) {
        let (Some(keep), Some(store)) = (self.retention, self.store.clone()) else {
            return;
        };
        if self.spill.pending > 0 || self.last_retention.is_some_and(|t| t.elapsed() < RETENTION_EVERY) {
            return;
        }
        self.last_retention = Some(Instant::now());
        if let Err(error) = apply_retention(&store, keep).await {
            tracing::warn!(%error, "audit retention failed; will retry");
            self.last_retention = None;
        }
    }

    /// Logs a sink failure at most once a minute.
    fn warn(&mut self, message: &str) {
        if self
            .warned_at
            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
        {
            self.warned_at = Some(Instant::now());
            tracing::error!("{message}");
        }
    }
}

/// Deletes events older than `keep`, after recording in the chain how far
/// it deletes so `verify` still passes for what remains.
pub async fn apply_retention(store: &Store, keep: Duration) -> Result<u64, crate::store::StoreError> {
    let cutoff = now_ms() - keep.as_millis() as i64;
    let Some(through) = store.audit_last_seq_before(cutoff).await? else {
        return Ok(0);
    };
    let event = Event::new(RETENTION_EVENT, Severity::Notice)
        .detail("pruned_through", through)
        .detail("cutoff", cutoff);
    store.append_audit(vec![event]).await?;
    let deleted = store.audit_delete_through(through).await?;
    tracing::info!(deleted, through, "audit retention deleted old events");
    Ok(deleted)
}

/// Reads the last complete line of a file, if any.
fn last_line(file: &mut File) -> std::io::Result<Option<String>> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut window = 4096u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        let text = String::from_utf8_lossy(&tail);
        let trimmed = text.trim_end_matches('\n');
        if trimmed.is_empty() {
            return Ok(None);
        }
        if let Some(i) = trimmed.rfind('\n') {
            return Ok(Some(trimmed[i + 1..].to_string()));
        }
        if start == 0 {
            return Ok(Some(trimmed.to_string()));
        }
        window *= 4;
    }
}

/// Appends events to the JSON-lines file, continuing the chain of its last
/// line. An exclusive lock keeps the server and CLI commands from
/// interleaving.
pub fn append_file(path: &Path, events: Vec<Event>) -> std::io::Result<usize> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    file.lock()?;
    let last = match last_line(&mut file)? {
        Some(line) => {
            let previous: ChainedEvent = serde_json::from_str(&line).map_err(|e| {
                std::io::Error::other(format!(
                    "the last line is not an audit event ({e}); not appending"
                ))
            })?;
            Some((previous.seq, previous.hash))
        }
        None => None,
    };
    let chained = chain(last, events);
    let mut text = String::new();
    for e in &chained {
        text.push_str(&serde_json::to_string(e).expect("events serialise"));
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    file.sync_data()?;
    file.unlock()?;
    Ok(chained.len())
}

/// Events waiting for the store, one JSON object per line, oldest first.
struct Spill {
    path: PathBuf,
    pending: u64,
}

impl Spill {
    fn open(path: PathBuf) -> Spill {
        let pending = File::open(&path)
            .map(|f| {
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| !l.trim().is_empty())
                    .count() as u64
            })
            .unwrap_or(0);
        if pending > 0 {
            tracing::warn!(pending, path = %path.display(), "audit events from an earlier outage wait to be replayed");
        }
        Spill { path, pending }
    }

    fn append(&mut self, events: &[Event]) -> std::io::Result<()> {
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        let mut text = String::new();
        for e in events {
            text.push_str(&serde_json::to_string(e).expect("events serialise"));
            text.push('\n');
        }
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        self.pending += events.len() as u64;
        Ok(())
    }

    /// Writes spilled events to the store in order; what could not be
    /// written stays in the file. Returns how many were written.
    async fn replay(&mut self, store: &Store) -> Result<u64, crate::store::StoreError> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let events: Vec<Event> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let mut done = 0usize;
        let mut outcome = Ok(());
        for batch in events.chunks(BATCH) {
            // A crash between a commit and rewriting the file would replay a
            // batch twice; skip what is already stored.
            let mut fresh = Vec::with_capacity(batch.len());
            for e in batch {
                match store.audit_event_exists(&e.id).await {
                    Ok(true) => {}
                    Ok(false) => fresh.push(e.clone()),
                    Err(err) => {
                        outcome = Err(err);
                        break;
                    }
                }
            }
            if outcome.is_err() {
                break;
            }
            if let Err(err) = store.append_audit(fresh).await {
                outcome = Err(err);
                break;
            }
            done += batch.len();
        }
        let rest: String = events[done..]
            .iter()
            .map(|e| serde_json::to_string(e).expect("events serialise") + "\n")
            .collect();
        let tmp = self.path.with_extension("replay.tmp");
        if std::fs::write(&tmp, rest)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .is_err()
        {
            tracing::error!(path = %self.path.display(), "cannot rewrite the audit spill file");
        }
        self.pending = (events.len() - done) as u64;
        outcome.map(|_| done as u64)
    }
}
