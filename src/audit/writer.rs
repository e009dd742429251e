//! The audit writer, in two tasks, so that an unavailable store never
//! keeps events in memory:
//!
//! - the **intake** drains the queue in batches (one per [`BATCH_WINDOW`]),
//!   appends each to the JSON-lines file, and hands it to the store task.
//!   A batch the store has not taken within [`STORE_DEADLINE`] goes to the
//!   spill file (fsynced) instead, and so does every batch after it until
//!   the spill is empty again, which keeps the order;
//! - the **store task** writes what it is handed, and while anything is
//!   spilled replays the spill once a [`TICK`], oldest first. A replay that
//!   cannot reach the store is how it waits for the store to come back: it
//!   may block for the store's `connect_timeout`, but only this task.
//!
//! So whatever the store does, an event is in the store or in the fsynced
//! spill within [`BATCH_WINDOW`] + [`STORE_DEADLINE`] of being emitted (plus
//! the time of one fsync): that is all a SIGKILL or a power loss can take.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::chain::{ChainedEvent, RETENTION_EVENT, chain};
use super::{Audit, AuditCounters, Command, Event, Inner, Severity};
use crate::config::AuditConfig;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, now_ms};

const BATCH: usize = 256;
/// How long the writer gathers events before writing them (the most an
/// event waits for its batch).
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// How long the intake waits for the store to take a batch before it
/// spills it. A healthy store commits a batch in milliseconds; one that
/// takes longer is treated as unavailable until a replay gets through.
pub const STORE_DEADLINE: Duration = Duration::from_millis(200);
/// How often a spilled backlog is retried and drops are reported.
const TICK: Duration = Duration::from_secs(1);
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How long shutdown waits for a store write or replay in progress (every
/// event it holds is in the spill file already).
const STORE_TASK_GRACE: Duration = Duration::from_secs(2);

/// The running writer; stop it with [`AuditTask::shutdown`] so nothing
/// queued is lost.
pub struct AuditTask {
    stop: oneshot::Sender<()>,
    intake: JoinHandle<()>,
    store_task: Option<JoinHandle<()>>,
}

impl AuditTask {
    /// Writes everything still queued (to the store or the spill), then
    /// stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.intake.await;
        if let Some(mut store_task) = self.store_task {
            // The intake is gone, so the store task's channel is closed and
            // it ends after what it is doing, unless that is a connection
            // attempt to a store that is down.
            if tokio::time::timeout(STORE_TASK_GRACE, &mut store_task)
                .await
                .is_err()
            {
                store_task.abort();
            }
        }
    }
}

#[derive(Clone)]
struct WriterMetrics {
    written: IntCounterVec,
    spill_pending: IntGauge,
    store_available: IntGauge,
}

impl WriterMetrics {
    fn wrote(&self, sink: &str, n: usize) {
        self.written.with_label_values(&[sink]).inc_by(n as u64);
    }
}

/// Starts the writer. `store` is `None` when only the file is wanted.
pub fn start(
    config: &AuditConfig,
    base_dir: &Path,
    store: Option<Store>,
    metrics: &Metrics,
) -> (Audit, AuditTask) {
    let (queue, receiver) = mpsc::channel(config.queue.max(1));
    let dropped_metric = IntCounter::new(
        "portcullis_audit_dropped_total",
        "Audit events lost: neither queued nor held in the overflow for the spill file, or neither stored nor spilled.",
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
    let counters = Arc::new(AuditCounters::new(config.queue.max(1), dropped_metric));
    metrics.register(Box::new(written.clone()));
    metrics.register(Box::new(spill_pending.clone()));
    let metrics = WriterMetrics {
        written,
        spill_pending,
        store_available: metrics.store_available_gauge(),
    };

    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        }
    };
    let spill = Arc::new(Spill::open(resolve(&config.spill_file)));
    metrics.spill_pending.set(spill.pending() as i64);
    counters.set_spill_state(spill.pending(), true);
    let (to_store, store_task) = match store {
        Some(store) => {
            let (to_store, writes) = mpsc::channel(1);
            let task = StoreTask {
                store,
                spill: spill.clone(),
                counters: counters.clone(),
                retention: config.retention.map(|d| d.0),
                last_retention: None,
                metrics: metrics.clone(),
            };
            (Some(to_store), Some(tokio::spawn(task.run(writes))))
        }
        None => (None, None),
    };
    let intake = Intake {
        file: config.file.as_deref().map(resolve),
        spill,
        to_store,
        counters: counters.clone(),
        reported_drops: 0,
        metrics,
        warned_at: None,
    };
    let (stop, stopped) = oneshot::channel();
    let intake = tokio::spawn(intake.run(receiver, stopped));
    let audit = Audit {
        inner: Some(Arc::new(Inner {
            queue,
            counters,
            success_sample: config.auth_success_sample,
            sync: super::SyncKinds::new(&config.sync),
        })),
    };
    (
        audit,
        AuditTask {
            stop,
            intake,
            store_task,
        },
    )
}

/// A batch handed to the store task, and where to say how it went.
struct StoreWrite {
    batch: Vec<Event>,
    done: oneshot::Sender<Result<usize, StoreError>>,
}

struct Intake {
    file: Option<PathBuf>,
    spill: Arc<Spill>,
    /// `None` when there is no store (only the file).
    to_store: Option<mpsc::Sender<StoreWrite>>,
    counters: Arc<AuditCounters>,
    reported_drops: u64,
    metrics: WriterMetrics,
    warned_at: Option<Instant>,
}

impl Intake {
    async fn run(mut self, mut queue: mpsc::Receiver<Command>, mut stopped: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = queue.recv() => match command {
                    Some(command) => self.take(command, &mut queue).await,
                    None => break,
                },
                _ = tick.tick() => {
                    self.spill_overflow().await;
                    self.report_drops().await;
                }
                _ = &mut stopped => {
                    // Write what is already queued, then stop.
                    while let Ok(command) = queue.try_recv() {
                        self.take(command, &mut queue).await;
                    }
                    self.spill_overflow().await;
                    self.report_drops().await;
                    break;
                }
            }
        }
    }

    /// Handles one command plus what arrives within [`BATCH_WINDOW`] (up
    /// to [`BATCH`] events): a steady trickle of events then costs one
    /// transaction per window instead of one per event. A flush or a `sync`
    /// event ends the wait at once.
    async fn take(&mut self, first: Command, queue: &mut mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        let window_ends = tokio::time::Instant::now() + BATCH_WINDOW;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Event(event) => batch.push(*event),
                // A request waits for it: write as soon as the queue is
                // empty rather than at the end of the window.
                Command::Durable(event, done) => {
                    batch.push(*event);
                    waiting.push(done);
                }
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
        // Events that found the queue full were emitted after those above.
        self.spill_overflow().await;
        for done in waiting {
            let _ = done.send(());
        }
    }

    async fn write(&mut self, batch: Vec<Event>) {
        self.append_to_file(&batch).await;
        let Some(to_store) = &self.to_store else { return };
        if !self.spill.is_spilling() {
            match hand_to_store(to_store, batch.clone()).await {
                Ok(n) => {
                    self.metrics.wrote("store", n);
                    // Events are safe again, even if the spill file is not.
                    self.counters.set_spill_state(self.spill.pending(), true);
                    return;
                }
                Err(why) => {
                    tracing::warn!(error = %why, "audit store unavailable; spilling events to {}", self.spill.path.display());
                }
            }
        }
        self.spill_batch(batch).await;
    }

    /// Appends to the JSON-lines file sink, if there is one.
    async fn append_to_file(&mut self, events: &[Event]) {
        let Some(path) = self.file.clone() else { return };
        let shown = path.display().to_string();
        let events = events.to_vec();
        match blocking(move || append_file(&path, events)).await {
            Ok(n) => self.metrics.wrote("file", n),
            Err(error) => self.warn(&format!("audit file {shown} cannot be written: {error}")),
        }
    }

    /// Appends to the spill file (fsynced); from now on every batch goes
    /// there until a replay empties it.
    async fn spill_batch(&mut self, batch: Vec<Event>) {
        let n = batch.len();
        let spill = self.spill.clone();
        match blocking(move || spill.append(&batch)).await {
            Ok(()) => {
                self.metrics.wrote("spill", n);
                self.metrics.spill_pending.set(self.spill.pending() as i64);
                self.counters.set_spill_state(self.spill.pending(), true);
            }
            Err(error) => {
                self.counters.lose(n as u64);
                self.counters.set_spill_state(self.spill.pending(), false);
                self.warn(&format!(
                    "audit spill file cannot be written either; {n} events lost: {error}"
                ));
            }
        }
    }

    /// Writes the events that found the queue full to the spill file.
    async fn spill_overflow(&mut self) {
        let overflow = self.counters.take_overflow();
        if overflow.is_empty() {
            return;
        }
        tracing::warn!(
            events = overflow.len(),
            "the audit queue was full; events went to the spill file"
        );
        self.append_to_file(&overflow).await;
        if self.to_store.is_some() {
            self.spill_batch(overflow).await;
        }
    }

    /// Turns a rise in the drop counter into an `audit.dropped` event.
    async fn report_drops(&mut self) {
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        if dropped > self.reported_drops {
            let lost = dropped - self.reported_drops;
            self.reported_drops = dropped;
            tracing::warn!(
                lost,
                "audit events were lost: the queue, its overflow or the spill file was full or failing"
            );
            let event = Event::new("audit.dropped", Severity::Warning)
                .detail("lost", lost)
                .detail("total_lost", dropped);
            self.write(vec![event]).await;
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

/// Hands a batch to the store task and waits up to [`STORE_DEADLINE`] for
/// its commit. On a timeout the store task may still commit it later; the
/// batch is spilled too, and the replay skips what is stored already.
async fn hand_to_store(to_store: &mpsc::Sender<StoreWrite>, batch: Vec<Event>) -> Result<usize, String> {
    let (done, answer) = oneshot::channel();
    to_store
        .try_send(StoreWrite { batch, done })
        .map_err(|_| "the store is still busy with an earlier batch".to_string())?;
    match tokio::time::timeout(STORE_DEADLINE, answer).await {
        Ok(Ok(Ok(n))) => Ok(n),
        Ok(Ok(Err(error))) => Err(error.to_string()),
        Ok(Err(_)) => Err("the store task stopped".to_string()),
        Err(_) => Err(format!("no commit within {} ms", STORE_DEADLINE.as_millis())),
    }
}

/// Runs blocking file work (writes and fsyncs) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

struct StoreTask {
    store: Store,
    spill: Arc<Spill>,
    counters: Arc<AuditCounters>,
    retention: Option<Duration>,
    last_retention: Option<Instant>,
    metrics: WriterMetrics,
}

impl StoreTask {
    async fn run(mut self, mut writes: mpsc::Receiver<StoreWrite>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                write = writes.recv() => match write {
                    Some(StoreWrite { batch, done }) => {
                        let written = self.store.append_audit(batch).await.map(|c| c.len());
                        self.metrics.store_available.set(i64::from(written.is_ok()));
                        let _ = done.send(written);
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    if self.spill.is_spilling() {
                        self.replay().await;
                    }
                    self.apply_retention().await;
                }
            }
        }
    }

    /// Replays the spill until it is empty or the store fails.
    async fn replay(&mut self) {
        let step = self.spill.replay(&self.store).await;
        if !matches!(step, Err(ReplayError::File(_))) {
            self.metrics.store_available.set(i64::from(step.is_ok()));
        }
        match &step {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                events = n,
                pending = self.spill.pending(),
                "audit store is back; replayed spilled events in order"
            ),
            Err(error) => tracing::debug!(%error, "audit store still unavailable"),
        }
        self.metrics.spill_pending.set(self.spill.pending() as i64);
        self.counters.set_spill_pending(self.spill.pending());
    }

    async fn apply_retention(&mut self) {
        let Some(keep) = self.retention else { return };
        if self.spill.is_spilling() || self.last_retention.is_some_and(|t| t.elapsed() < RETENTION_EVERY) {
            return;
        }
        self.last_retention = Some(Instant::now());
        if let Err(error) = apply_retention(&self.store, keep).await {
            tracing::warn!(%error, "audit retention failed; will retry");
            self.last_retention = None;
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

/// Events waiting for the store, one JSON object per line, oldest first,
/// shared by the intake (which appends) and the store task (which replays
/// and removes from the front). The lock is held for each file operation,
/// never across a store round trip.
struct Spill {
    path: PathBuf,
    state: Mutex<SpillState>,
}

struct SpillState {
    /// Lines in the file.
    pending: u64,
    /// Batches go here rather than to the store, until a replay empties
    /// the file (which keeps the order).
    spilling: bool,
}

/// How many spilled events one replay step reads and writes.
const REPLAY_CHUNK: usize = 1024;
/// How many replayed events the spill file is cut after (rewritten without
/// them); a crash before the cut replays them again, deduplicated.
const REWRITE_EVERY: usize = 65_536;

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
        Spill {
            path,
            state: Mutex::new(SpillState {
                pending,
                spilling: pending > 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SpillState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> u64 {
        self.state().pending
    }

    fn is_spilling(&self) -> bool {
        self.state().spilling
    }

    fn append(&self, events: &[Event]) -> std::io::Result<()> {
        let mut text = String::new();
        for e in events {
            text.push_str(&serde_json::to_string(e).expect("events serialise"));
            text.push('\n');
        }
        let mut state = self.state();
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()?;
        if state.pending == 0 {
            // A new file: its directory entry must survive a crash too.
            sync_dir(&self.path)?;
        }
        state.pending += events.len() as u64;
        state.spilling = true;
        Ok(())
    }

    /// Up to `limit` lines from byte `offset`, parsed (`None` for a line
    /// that is not an event, which is dropped with a warning), and the
    /// offset after them. At the end of an empty file the spill is over:
    /// batches go to the store again.
    fn read_from(&self, offset: u64, limit: usize) -> std::io::Result<(Vec<Option<Event>>, u64)> {
        let mut state = self.state();
        let mut file = match File::open(&self.path) {
            Ok(file) => BufReader::new(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                state.pending = 0;
                state.spilling = false;
                return Ok((Vec::new(), 0));
            }
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(offset))?;
        let mut out = Vec::new();
        let mut at = offset;
        let mut line = String::new();
        while out.len() < limit {
            line.clear();
            let n = file.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break; // the end, or a line still being written
            }
            at += n as u64;
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(&line).ok();
            if event.is_none() {
                tracing::warn!(path = %self.path.display(), "a spilled audit line is not an event; dropped");
            }
            out.push(event);
        }
        if out.is_empty() && offset == 0 {
            state.pending = 0;
            state.spilling = false;
        }
        Ok((out, at))
    }

    /// Removes everything before byte `offset` (replayed): the rest is
    /// written to a new file, fsynced, renamed over the old one, and the
    /// directory fsynced, so a crash leaves either file whole. With nothing
    /// left, batches go to the store again.
    fn remove_before(&self, offset: u64) -> std::io::Result<()> {
        let mut state = self.state();
        let mut old = File::open(&self.path)?;
        old.seek(SeekFrom::Start(offset))?;
        let mut rest = Vec::new();
        old.read_to_end(&mut rest)?;
        let tmp = self.path.with_extension("replay.tmp");
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&rest)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        sync_dir(&self.path)?;
        state.pending = rest
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .count() as u64;
        state.spilling = state.pending > 0;
        Ok(())
    }

    /// Replays the spill from the front into the store in order,
    /// [`REPLAY_CHUNK`] events per step, skipping those stored already (a
    /// crash between a commit and the file's rewrite, or a batch the store
    /// committed after its deadline). The file is cut every
    /// [`REWRITE_EVERY`] events and at the end, so a long backlog is not
    /// rewritten once per step. Returns how many events were done.
    async fn replay(self: &Arc<Self>, store: &Store) -> Result<usize, ReplayError> {
        let mut offset = 0;
        let mut since_cut = 0;
        let mut total = 0;
        let outcome = loop {
            let spill = self.clone();
            let (front, next) = match blocking(move || spill.read_from(offset, REPLAY_CHUNK)).await {
                Ok(read) => read,
                Err(e) => break Err(e.into()),
            };
            if front.is_empty() {
                break Ok(());
            }
            if let Err(e) = store_fresh(store, front.iter().flatten().cloned().collect()).await {
                break Err(e);
            }
            offset = next;
            since_cut += front.len();
            total += front.len();
            if since_cut >= REWRITE_EVERY {
                let spill = self.clone();
                let cut = offset;
                if let Err(e) = blocking(move || spill.remove_before(cut)).await {
                    break Err(e.into());
                }
                offset = 0;
                since_cut = 0;
            }
        };
        if offset > 0 {
            let spill = self.clone();
            blocking(move || spill.remove_before(offset)).await?;
        }
        outcome.map(|()| total)
    }
}

/// Stores those of `events` that are not stored yet, in order.
async fn store_fresh(store: &Store, events: Vec<Event>) -> Result<(), ReplayError> {
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let stored = store.audit_existing_ids(&ids).await?;
    let fresh: Vec<Event> = events.into_iter().filter(|e| !stored.contains(&e.id)).collect();
    for batch in fresh.chunks(BATCH) {
        store.append_audit(batch.to_vec()).await?;
    }
    Ok(())
}

/// Why a replay step stopped.
#[derive(Debug, thiserror::Error)]
enum ReplayError {
    #[error("the spill file: {0}")]
    File(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes a rename or a new file in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
