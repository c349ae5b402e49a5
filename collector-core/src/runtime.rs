//! The collector runtime: source events in; ledger append (the write-ahead
//! log), then publish on the bus; hashing off the event path.
//!
//! ```text
//! EventSource --(bounded mpsc)--> writer: batch -> ledger append + group commit
//!      ^                               |--> hash jobs --> hash workers --(update events)--^
//!      |                               '--> publisher --(bus)--> events.process.lifecycle
//! ```
//!
//! *Architecture invariant:* an event reaches the bus only after the ledger
//! has committed it, and its `seq` is its ledger seq. When the bus is down
//! or slow, publishing drops (counted) and the agent reads the ledger.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_eventbus::BusClient;
use daemoneye_lib::ledger::{LedgerWriter, RecordKind, SyncDone, SyncJob};
use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::{
    CONTENT_TYPE_COLLECTOR_STATUS, CONTENT_TYPE_PROCESS_EVENT, CollectorStatus, Correlation, EventType, ProcessEvent,
    ProcessRecord, TOPIC_COLLECTOR_STATUS, TOPIC_PROCESS_LIFECYCLE, TOPIC_PROCESS_TREE,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hash::{HashError, Hasher};
use crate::source::{EventSink, EventSource, SourceEvent};

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The bus socket.
    pub bus_socket: PathBuf,
    /// Name this collector gives the bus.
    pub client_name: String,
    /// The backend name reported in health ("ebpf", "poll", ...).
    pub backend: String,
    /// Why better backends were not used.
    pub backend_notes: String,
    /// Events per ledger group commit, at most.
    pub commit_batch: usize,
    /// Capacity of the source -> writer channel.
    pub channel_capacity: usize,
    /// Hashing threads.
    pub hash_workers: usize,
    /// Process-tree monitors: events of a followed subtree are published
    /// with the monitor's correlation (see [`crate::monitor`]).
    pub monitor: Arc<crate::monitor::TreeMonitor>,
}

/// Counters the runtime keeps (also sent as `CollectorStatus`).
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Events committed to the ledger.
    pub committed: AtomicU64,
    /// Events published on the bus.
    pub published: AtomicU64,
    /// Events not published (bus down or slow); the ledger still has them.
    pub publish_dropped: AtomicU64,
    /// Events known lost before the ledger (sum of gap counts).
    pub lost: AtomicU64,
    /// Hash jobs dropped because the hash queue was full.
    pub hash_dropped: AtomicU64,
    /// Last ledger seq.
    pub ledger_head: AtomicU64,
}

/// Errors that stop the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The ledger could not be written: nothing may be published unlogged,
    /// so the collector stops (and is restarted by the agent).
    #[error("ledger write failed: {0}")]
    Ledger(#[from] daemoneye_lib::ledger::LedgerError),
    /// The source failed.
    #[error("event source {name} failed: {source}")]
    Source {
        /// The source's name.
        name: &'static str,
        /// What went wrong.
        #[source]
        source: crate::source::SourceError,
    },
    /// A worker task ended abnormally.
    #[error("collector task failed: {0}")]
    Task(String),
}

struct HashJob {
    pid: u32,
    process_key: String,
    path: String,
}

/// Runs `sources` (the telemetry backend first, then helpers such as the
/// resource sampler) until `cancel` fires, writing every event to `ledger`
/// before publishing it. A source that fails stops the runtime (procmond
/// exits and the agent restarts it); one that ends cleanly is logged.
/// Returns the ledger for a final audit record.
pub async fn run(
    sources: Vec<Box<dyn EventSource>>,
    mut ledger: LedgerWriter,
    hasher: Arc<Hasher>,
    config: RuntimeConfig,
    stats: Arc<RuntimeStats>,
    cancel: CancellationToken,
) -> Result<LedgerWriter, RuntimeError> {
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(config.channel_capacity.max(16));
    let (pub_tx, pub_rx) = mpsc::channel::<Committed>(config.channel_capacity.max(16));
    let hash_tx = spawn_hash_workers(config.hash_workers.max(1), Arc::clone(&hasher), tx.clone());
    stats.ledger_head.store(ledger.head().0, Relaxed);

    let source_cancel = cancel.child_token();
    let mut source_tasks = tokio::task::JoinSet::new();
    for source in sources {
        let name = source.name();
        let fut = source.run(EventSink::new(tx.clone()), source_cancel.clone());
        source_tasks.spawn(async move { (name, fut.await) });
    }
    drop(tx);
    let publisher = tokio::spawn(publish_loop(pub_rx, config.clone(), Arc::clone(&stats), cancel.clone()));

    // The seq of the last event appended: each event names it (`prev_seq`)
    // so the agent tells a missed event from a checkpoint or audit record
    // between two events. Unknown (0) until this run's first event.
    let mut last_event_seq = 0u64;
    // The ledger's fdatasync, when one runs: on a blocking thread, while
    // events go on being appended and published (see `LedgerWriter::commit_nowait`).
    let mut syncing = SyncSlot::default();
    let result: Result<(), RuntimeError> = loop {
        // Time-based checkpoints and deferred syncs are due even when
        // nothing happens: sleep until the next one (an idle, synced ledger
        // wakes nobody).
        let idle_commit_at = ledger.idle_commit_at();
        let first = tokio::select! {
            ev = rx.recv() => ev,
            done = syncing.done() => {
                if let Err(e) = done.and_then(|d| ledger.sync_done(d).map_err(RuntimeError::from)) {
                    break Err(e);
                }
                continue;
            }
            () = sleep_until(idle_commit_at) => {
                if ledger.idle_commit_due() {
                    match ledger.commit_nowait() {
                        Ok(job) => syncing.start(job),
                        Err(e) => break Err(e.into()),
                    }
                }
                continue;
            }
            Some(res) = source_tasks.join_next(), if !source_tasks.is_empty() => {
                match res {
                    Ok((name, Ok(()))) => tracing::info!(source = name, "event source ended"),
                    Ok((name, Err(e))) => break Err(RuntimeError::Source { name, source: e }),
                    Err(e) => break Err(RuntimeError::Task(format!("event source task: {e}"))),
                }
                continue;
            }
            () = cancel.cancelled() => break Ok(()),
        };
        let Some(first) = first else { break Ok(()) };
        let mut batch = vec![first];
        while batch.len() < config.commit_batch.max(1) {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        // Start-up snapshot: the small images not cached yet are hashed
        // now, so the snapshot events carry their hashes (see
        // `Hasher::warm_running_images`). Exec events never wait for this.
        let unhashed: Vec<u32> = batch
            .iter()
            .filter(|se| se.event.event_type() == EventType::Snapshot)
            .filter_map(|se| se.event.process.as_ref())
            .filter(|r| r.executable_hash.is_none() && r.executable_path.is_some())
            .map(|r| r.pid)
            .collect();
        if !unhashed.is_empty() {
            let (h, workers) = (Arc::clone(&hasher), config.hash_workers.max(1));
            blocking(move || h.warm_running_images(&unhashed, SNAPSHOT_INLINE_HASH_BYTES, workers)).await?;
        }
        // An executable the cache knows is hashed on the event itself (no
        // system call when the source read the image's inode, else one
        // stat): no hash job and no `update` event.
        for se in &mut batch {
            if matches!(se.event.event_type(), EventType::Exec | EventType::Snapshot) {
                hash_from_cache(&hasher, se);
            }
        }
        // A commit only writes to the page cache: done in place, which
        // spares two thread hand-offs per batch. The fdatasync it may start
        // runs beside (an event never waits for the disk).
        let committed = match append_batch(&mut ledger, batch, last_event_seq) {
            Ok((c, last, job)) => {
                last_event_seq = last;
                syncing.start(job);
                c
            }
            Err(e) => break Err(e.into()),
        };
        stats.committed.fetch_add(committed.len() as u64, Relaxed);
        stats.ledger_head.store(ledger.head().0, Relaxed);
        for c in committed {
            let ev = &c.event;
            if let Some(gap) = &ev.gap {
                stats.lost.fetch_add(gap.lost_events, Relaxed);
            }
            if matches!(ev.event_type(), EventType::Exec | EventType::Snapshot)
                && ev.process.as_ref().is_some_and(|r| r.executable_hash.is_none())
            {
                queue_hash(&hash_tx, ev, &stats);
            }
            if pub_tx.try_send(c).is_err() {
                stats.publish_dropped.fetch_add(1, Relaxed);
            }
        }
    };
    source_cancel.cancel();
    drop(hash_tx);
    drop(pub_tx);
    while source_tasks.join_next().await.is_some() {}
    let _ = publisher.await;
    if let Err(e) = syncing.finish(&mut ledger).await {
        tracing::error!(error = %e, "the ledger's last background fdatasync failed");
    }
    // Whatever is still buffered is committed before we return.
    let (ledger, r) = blocking(move || {
        let mut l = ledger;
        let r = l.commit();
        (l, r)
    })
    .await?;
    r?;
    result.map(|()| ledger)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| RuntimeError::Task(format!("ledger task: {e}")))
}

/// An event the ledger has committed, with the payload it was committed
/// with (published as is: one encoding per event).
struct Committed {
    event: ProcessEvent,
    payload: Bytes,
}

/// The ledger's background fdatasync: at most one runs.
#[derive(Default)]
struct SyncSlot(Option<tokio::task::JoinHandle<SyncDone>>);

impl SyncSlot {
    /// Runs `job` on a blocking thread (the ledger hands out one at a time).
    fn start(&mut self, job: Option<SyncJob>) {
        if let Some(job) = job {
            self.0 = Some(tokio::task::spawn_blocking(move || job.run()));
        }
    }

    /// Resolves when the running sync ends; never when none runs.
    async fn done(&mut self) -> Result<SyncDone, RuntimeError> {
        let Some(task) = &mut self.0 else { return std::future::pending().await };
        let r = task.await;
        self.0 = None;
        r.map_err(|e| RuntimeError::Task(format!("ledger sync task: {e}")))
    }

    /// Waits for the running sync, if any, and reports it to `ledger`.
    async fn finish(&mut self, ledger: &mut LedgerWriter) -> Result<(), RuntimeError> {
        if self.0.is_none() {
            return Ok(());
        }
        let done = self.done().await?;
        ledger.sync_done(done).map_err(RuntimeError::from)
    }
}

/// Appends `batch` and commits without waiting for the disk; each event
/// carries its seq and the seq of the event before it (`prev_seq`, see
/// `events.proto`), starting from `prev` (0: unknown). Returns the
/// committed events, the last event's seq and the fdatasync now due.
fn append_batch(
    ledger: &mut LedgerWriter,
    batch: Vec<SourceEvent>,
    mut prev: u64,
) -> Result<(Vec<Committed>, u64, Option<SyncJob>), daemoneye_lib::ledger::LedgerError> {
    let mut out = Vec::with_capacity(batch.len());
    for SourceEvent { mut event, .. } in batch {
        let kind = if event.event_type() == EventType::Gap { RecordKind::Gap } else { RecordKind::Event };
        let time_ns = event.event_time_ns;
        let (seq, payload) = ledger.append_with(kind, time_ns, |seq| {
            event.seq = seq;
            event.prev_seq = prev;
            Bytes::from(event.encode_to_vec())
        })?;
        prev = seq;
        out.push(Committed { event, payload });
    }
    let job = ledger.commit_nowait()?;
    Ok((out, prev, job))
}

/// Sets the executable hash of the event when the cache knows the running
/// image (by the inode the source read, else by a `stat` of
/// `/proc/<pid>/exe` or, once the process is gone, of the file at its
/// path).
fn hash_from_cache(hasher: &Hasher, se: &mut SourceEvent) {
    let Some(rec) = se.event.process.as_mut() else { return };
    if rec.executable_hash.is_some() {
        return;
    }
    if let Some(image) = &se.image {
        // The source saw the inode at exec: a miss means "not hashed yet",
        // and the hash job hashes the running image.
        if let Some(h) = hasher.cached_identity(image) {
            rec.executable_hash = Some(h.hex);
            rec.hash_algorithm = Some(h.algorithm.to_owned());
        }
        return;
    }
    let Some(path) = rec.executable_path.as_deref() else { return };
    let proc_exe = PathBuf::from(format!("/proc/{}/exe", rec.pid));
    // The path only when the image is gone (as `hash_update` does): while
    // the process runs, the file at its path may be another one.
    let hit = match hasher.cached(&proc_exe) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => hasher.cached(std::path::Path::new(path)),
        other => other,
    };
    if let Ok(Some(h)) = hit {
        rec.executable_hash = Some(h.hex);
        rec.hash_algorithm = Some(h.algorithm.to_owned());
    }
}

fn queue_hash(hash_tx: &HashQueue, ev: &ProcessEvent, stats: &RuntimeStats) {
    let Some(rec) = &ev.process else { return };
    let Some(path) = &rec.executable_path else { return };
    let job = HashJob { pid: rec.pid, process_key: rec.process_key.clone(), path: path.clone() };
    if !hash_tx.push(job) {
        stats.hash_dropped.fetch_add(1, Relaxed);
    }
}

/// The hash jobs waiting for a worker: at most [`HASH_QUEUE`], in an
/// unbounded channel that allocates as it fills (a bounded one allocates
/// its whole capacity up front: 4 MiB resident for a queue that is empty
/// but at start-up).
#[derive(Clone)]
struct HashQueue {
    tx: std::sync::mpsc::Sender<HashJob>,
    queued: Arc<AtomicU64>,
}

impl HashQueue {
    /// Queues `job`; false (dropped) when the queue is full or closed.
    fn push(&self, job: HashJob) -> bool {
        if self.queued.fetch_add(1, Relaxed) >= HASH_QUEUE as u64 {
            self.queued.fetch_sub(1, Relaxed);
            return false;
        }
        if self.tx.send(job).is_err() {
            self.queued.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }
}

/// Hash jobs waiting, at most (~100 bytes each).
const HASH_QUEUE: usize = 65_536;

/// Snapshot events' images up to this size are hashed before the events
/// are appended; larger ones follow as `update`s like an exec's.
const SNAPSHOT_INLINE_HASH_BYTES: u64 = 16 * 1024 * 1024;

/// Hash workers: each takes a job, hashes the running image, and sends the
/// result back into the event stream as an `update` event.
fn spawn_hash_workers(n: usize, hasher: Arc<Hasher>, events: mpsc::Sender<SourceEvent>) -> HashQueue {
    // Room for a whole start-up snapshot (every process queues a job at
    // once); beyond it jobs are dropped and counted in `hash_dropped`.
    let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
    let queue = HashQueue { tx, queued: Arc::new(AtomicU64::new(0)) };
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..n {
        let rx = Arc::clone(&rx);
        let hasher = Arc::clone(&hasher);
        let events = events.clone();
        let queued = Arc::clone(&queue.queued);
        let spawned = std::thread::Builder::new().name(format!("hash-{i}")).spawn(move || {
            loop {
                let job = match rx.lock() {
                    Ok(guard) => guard.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                queued.fetch_sub(1, Relaxed);
                let update = hash_update(&hasher, &job);
                if events.blocking_send(update.into()).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a hash worker thread; executables will not be hashed");
        }
    }
    queue
}

fn hash_update(hasher: &Hasher, job: &HashJob) -> ProcessEvent {
    // The running image first: right even when the file at the path was
    // replaced or deleted since exec. Only when that link is gone (the
    // process already exited) is the path hashed, which is then the file at
    // that path when hashed — the best there is for a short-lived process.
    let proc_exe = PathBuf::from(format!("/proc/{}/exe", job.pid));
    let path = std::path::Path::new(&job.path);
    let mut rec = ProcessRecord { pid: job.pid, process_key: job.process_key.clone(), ..Default::default() };
    let outcome = match hasher.hash_path(&proc_exe) {
        Err(HashError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let r = hasher.hash_path(path);
            if r.is_ok() {
                rec.file_exists = Some(true);
            }
            r
        }
        other => other,
    };
    match outcome {
        Ok(h) => {
            rec.executable_hash = Some(h.hex);
            rec.hash_algorithm = Some(h.algorithm.to_owned());
        }
        Err(e) => {
            tracing::debug!(pid = job.pid, path = %job.path, error = %e, "executable not hashed");
            if let HashError::Io { source, .. } = &e {
                match source.kind() {
                    std::io::ErrorKind::PermissionDenied => rec.accessible = Some(false),
                    std::io::ErrorKind::NotFound => rec.file_exists = Some(false),
                    _ => {}
                }
            }
        }
    }
    ProcessEvent {
        seq: 0,
        event_type: EventType::Update as i32,
        event_time_ns: now_ns(),
        source: 0,
        process: Some(rec),
        gap: None,
        prev_seq: 0,
    }
}

/// Publishes committed events; reconnects with back-off when the bus is
/// away. Also sends the status heartbeat.
async fn publish_loop(
    mut rx: mpsc::Receiver<Committed>,
    config: RuntimeConfig,
    stats: Arc<RuntimeStats>,
    cancel: CancellationToken,
) {
    let started_ns = now_ns();
    let mut backoff = Duration::from_millis(100);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rate = RateMeter::new(&stats);
    'connect: loop {
        let client = tokio::select! {
            c = BusClient::connect(&config.bus_socket, &config.client_name) => c,
            () = cancel.cancelled() => return,
        };
        let client = match client {
            Ok(c) => {
                tracing::info!(socket = %config.bus_socket.display(), "connected to the event bus");
                backoff = Duration::from_millis(100);
                c
            }
            Err(e) => {
                tracing::warn!(socket = %config.bus_socket.display(), error = %e, retry_in = ?backoff, "event bus unavailable; events stay in the ledger");
                // While disconnected, committed events are not published;
                // the agent reads them from the ledger.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        ev = rx.recv() => match ev {
                            Some(_) => { stats.publish_dropped.fetch_add(1, Relaxed); }
                            None => return,
                        },
                        () = cancel.cancelled() => return,
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue 'connect;
            }
        };
        send_status(&client, &config, &stats, started_ns, rate.per_second(&stats)).await;
        loop {
            tokio::select! {
                c = rx.recv() => {
                    let Some(Committed { event: ev, payload }) = c else { return };
                    let id = format!("procmond:{}", ev.seq);
                    let tagged = config.monitor.tag(&ev, &id);
                    if let Some(corr) = &tagged {
                        // Monitored subtree: also on its own topic, for the watchers.
                        let r = client.publish(TOPIC_PROCESS_TREE, payload.clone(), CONTENT_TYPE_PROCESS_EVENT, corr.clone()).await;
                        if let Err(e) = r {
                            tracing::debug!(seq = ev.seq, error = %e, "tree event not published");
                        }
                    }
                    let corr = tagged.unwrap_or_else(|| Correlation { correlation_id: id, ..Default::default() });
                    match client.publish(TOPIC_PROCESS_LIFECYCLE, payload, CONTENT_TYPE_PROCESS_EVENT, corr).await {
                        Ok(()) => { stats.published.fetch_add(1, Relaxed); }
                        Err(e) => {
                            stats.publish_dropped.fetch_add(1, Relaxed);
                            tracing::warn!(seq = ev.seq, error = %e, "publish failed; reconnecting");
                            continue 'connect;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    send_status(&client, &config, &stats, started_ns, rate.per_second(&stats)).await;
                }
                () = cancel.cancelled() => return,
            }
        }
    }
}

async fn send_status(client: &BusClient, config: &RuntimeConfig, stats: &RuntimeStats, started_ns: i64, eps: f64) {
    let status = CollectorStatus {
        backend: config.backend.clone(),
        backend_notes: config.backend_notes.clone(),
        pid: std::process::id(),
        started_ns,
        events_published: stats.published.load(Relaxed),
        events_lost: stats.lost.load(Relaxed),
        ledger_head: stats.ledger_head.load(Relaxed),
        events_per_second: eps,
    };
    let corr = Correlation { correlation_id: format!("status:{}", now_ns()), ..Default::default() };
    if let Err(e) = client
        .publish(TOPIC_COLLECTOR_STATUS, Bytes::from(status.encode_to_vec()), CONTENT_TYPE_COLLECTOR_STATUS, corr)
        .await
    {
        tracing::debug!(error = %e, "status heartbeat not sent");
    }
}

/// Events per second over the last heartbeat interval.
struct RateMeter {
    at: Instant,
    committed: u64,
}

impl RateMeter {
    fn new(stats: &RuntimeStats) -> Self {
        Self { at: Instant::now(), committed: stats.committed.load(Relaxed) }
    }

    fn per_second(&mut self, stats: &RuntimeStats) -> f64 {
        let now = stats.committed.load(Relaxed);
        let secs = self.at.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { (now - self.committed) as f64 / secs } else { 0.0 };
        self.at = Instant::now();
        self.committed = now;
        rate
    }
}
