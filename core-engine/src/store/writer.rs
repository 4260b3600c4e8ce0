//! The writer thread of one database: takes write jobs from the shards whose partitions
//! the database holds, applies every job that queued up meanwhile in one transaction (group
//! commit), then runs each job's completion. A shard's event loop never waits on the disk.
//! A node has one writer per database, and fewer databases than shards when the shards
//! outnumber the cores (`node.rs`): one commit then carries several shards' jobs.
//!
//! Under `fsync` durability a commit is made durable by one fdatasync of the writer's
//! write-ahead log (`wal.rs`), not by fsyncing the database. A checkpoint switches the log
//! to its other file and then fsyncs the database between commits; once that is done, the
//! file written before the switch is free to be written over at the next switch.

use super::partition::{StoreError, StoreEvent, WriteOp};
use super::store_db::StoreDb;
use super::wal::{self, Wal};
use crossbeam_channel::{Receiver, Sender};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How far a commit goes before a job completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync before completing: an acknowledged message survives power loss.
    #[default]
    Fsync,
    /// Complete after the write; fsync at most every second. A crash can lose the last second.
    Buffered,
}

/// Where a writer keeps its write-ahead log (two files used in turn), and the LSN it starts
/// from (`wal::recover`).
pub struct WalSetup {
    pub paths: [std::path::PathBuf; 2],
    pub next_lsn: u64,
}

/// Bytes of each of a shard's two write-ahead log files; a checkpoint starts once half of
/// the file being written is used.
pub const WAL_BYTES: u64 = 16 << 20;

/// Called once the job's writes are committed (or failed).
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Receives what commits and sweeps decided that statistics count.
pub type EventSink = Box<dyn Fn(Vec<StoreEvent>) + Send>;

/// How the writer tells the shards it serves about finished work: events and completions
/// queue quietly, then each shard that had a job in a commit is woken once (not one
/// wake-up, a syscall, per job).
pub struct Notify {
    /// Takes every event of the writer's database (they are counts; one shard keeps them).
    pub on_events: EventSink,
    /// Wakes each shard the writer serves, one per handle; `wakes[0]` reads `on_events`.
    pub wakes: Vec<Arc<dyn Fn() + Send + Sync>>,
}

/// Writes for one or more partitions of the shard, and what to do when they are durable.
pub struct StoreJob {
    pub ops: Vec<WriteOp>,
    pub done: Option<Completion>,
    /// An app server waits for this job's commit (a push, a group message, a registration
    /// over HTTP): its commit takes the short window ([`Windows`]).
    pub awaited: bool,
}

/// Most jobs grouped into one commit.
const MAX_JOBS_PER_COMMIT: usize = 4096;
/// The commit windows. A commit holding a job an app server waits for (a push, a group
/// message, a registration over HTTP: [`StoreJob::awaited`]) waits 1 ms for more jobs after
/// its first (nothing a device is sent waits: pushes go out before their commit). Within it most online devices acknowledge what they were
/// sent, and such a push costs the partition no pending row at all (`partition/write.rs`).
/// A commit of other jobs (registrations, acknowledgements, cursors, counts) waits 8 ms:
/// under load, one commit of many rows costs far less than many commits of a few.
const WINDOWS: Windows = Windows { urgent: Duration::from_micros(1000), patient: Duration::from_millis(8) };

/// How long a commit waits for more jobs after its first: `urgent` once a job an app server
/// waits for is among them ([`StoreJob::is_urgent`]), `patient` until then.
struct Windows {
    urgent: Duration,
    patient: Duration,
}

/// How often buffered commits are fsynced (what a crash can lose under `Buffered`).
const BUFFERED_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often the database is checkpointed under `Fsync`, where the log already holds every
/// commit: a checkpoint stalls the writer for one fsync, so it is kept rare (the log's size
/// bounds it too: see [`Wal::wants_checkpoint`]).
const LOGGED_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

/// A job, and which of the writer's shards sent it (its index in [`Notify::wakes`]).
struct Queued {
    from: usize,
    job: StoreJob,
}

/// A shard's handle to the writer thread of its database.
pub struct StoreWriter {
    jobs: Option<Sender<Queued>>,
    /// This handle's index in [`Notify::wakes`].
    from: usize,
    /// Wakes the shard after a job completed here because the writer is gone.
    wake: Arc<dyn Fn() + Send + Sync>,
    thread: Arc<WriterThread>,
}

/// The writer thread, shared by its handles.
struct WriterThread {
    /// Unparked after each job is queued ([`next_job`]).
    thread: std::thread::Thread,
    join: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Handles not stopped yet; the last to stop waits for the thread to end.
    live: AtomicUsize,
}

impl StoreWriter {
    /// Starts the writer thread for `db`; under `Fsync` durability it logs to `wal`. Gives
    /// one handle per entry of `notify.wakes`, in that order: the shards it serves.
    pub fn start(
        name: String,
        db: Arc<StoreDb>,
        durability: Durability,
        wal: &WalSetup,
        notify: Notify,
        metrics: Arc<crate::stats::ShardMetrics>,
    ) -> Result<Vec<Self>, wal::WalError> {
        assert!(!notify.wakes.is_empty(), "a writer serves at least one shard");
        let wal = match durability {
            Durability::Fsync => Some(Wal::open(&wal.paths, WAL_BYTES, wal.next_lsn)?),
            Durability::Buffered => None,
        };
        let (jobs, rx) = crossbeam_channel::unbounded();
        let wakes = notify.wakes.clone();
        let writer = WriterLoop {
            db,
            metrics,
            wal,
            notify,
            dirty: false,
            checkpoint: false,
            checkpoint_failed: false,
            log_unsynced: false,
            log_synced_at: Instant::now(),
            last_sync: Instant::now(),
            last_sweep: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(rx, writer))
            .map_err(|source| wal::WalError::Io { path: "(writer thread)".into(), source })?;
        let thread = Arc::new(WriterThread {
            thread: thread.thread().clone(),
            join: Mutex::new(Some(thread)),
            live: AtomicUsize::new(wakes.len()),
        });
        let handles = wakes.into_iter().enumerate();
        Ok(handles
            .map(|(from, wake)| StoreWriter { jobs: Some(jobs.clone()), from, wake, thread: thread.clone() })
            .collect())
    }

    /// Sends nothing more. The last handle to stop lets the writer commit what is queued
    /// and waits for it to exit, so once every shard has stopped, the store is on disk.
    pub fn stop(&mut self) {
        if self.jobs.take().is_none() {
            return;
        }
        self.thread.thread.unpark();
        if self.thread.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            let join = self.thread.join.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(join) = join {
                let _ = join.join();
            }
        }
    }

    /// Queues a job; it completes with an error if the writer is gone.
    pub fn submit(&self, job: StoreJob) {
        let rejected = match &self.jobs {
            Some(jobs) => jobs.send(Queued { from: self.from, job }).err().map(|e| e.0.job),
            None => Some(job),
        };
        // One atomic swap unless the writer is parked waiting for work.
        self.thread.thread.unpark();
        if let Some(done) = rejected.and_then(|job| job.done) {
            done(Err(StoreError("store writer stopped".into())));
            (self.wake)();
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The jobs of one commit: `first` and those that come within its window from `first`
/// ([`Windows`]).
///
/// The writer sleeps through the window, looking at the queue every urgent window: a
/// sleeping thread is woken on time even on saturated cores. It used to wait on the channel
/// (`recv_deadline`), which spins and calls `sched_yield` for each job that comes; on
/// saturated cores a yield gave the CPU away for milliseconds, so while a topic stream's
/// acknowledgements flowed the 1 ms window stretched to a median 13 ms (up to 50), and the
/// HTTP answers with it (BENCHMARKS.md, twelfth session: their p50 ~18 -> ~4 ms now). The
/// yields had one use: handing the CPU to the shards and loadgen made the bench's 19k
/// connects 5-10% faster; the patient window keeps registrations' commits few and large.
fn gather(rx: &Receiver<Queued>, first: Queued, windows: &Windows) -> Vec<Queued> {
    let started = Instant::now();
    let mut urgent = first.job.is_urgent();
    let mut batch = vec![first];
    while batch.len() < MAX_JOBS_PER_COMMIT {
        let window = if urgent { windows.urgent } else { windows.patient };
        let Some(left) = (started + window).checked_duration_since(Instant::now()) else { break };
        std::thread::sleep(left.min(windows.urgent));
        for job in rx.try_iter().take(MAX_JOBS_PER_COMMIT - batch.len()) {
            urgent |= job.job.is_urgent();
            batch.push(job);
        }
    }
    batch
}

impl StoreJob {
    /// Whether the commit of this job closes its window early: an app server waits for it.
    fn is_urgent(&self) -> bool {
        debug_assert!(
            self.awaited
                || !self.ops.iter().any(|op| matches!(op, WriteOp::StorePush { .. } | WriteOp::StoreGroup { .. })),
            "a push or group message is stored for an app server that waits for it"
        );
        self.awaited
    }
}

/// The partition an op writes to.
pub(super) fn partition_of(op: &WriteOp) -> u16 {
    match op {
        WriteOp::RegisterDevice { regid, .. }
        | WriteOp::Acked { regid, .. }
        | WriteOp::SetAlias { regid, .. }
        | WriteOp::UnsetAlias { regid, .. }
        | WriteOp::Subscribe { regid, .. }
        | WriteOp::Unsubscribe { regid, .. }
        | WriteOp::GroupCursor { regid, .. } => regid.partition(),
        WriteOp::StoreGroup { partition, .. }
        | WriteOp::GroupDelivered { partition, .. }
        | WriteOp::Clicked { partition, .. }
        | WriteOp::DayStats { partition, .. } => *partition,
        WriteOp::ActiveDay { regid, .. } | WriteOp::Quiet { regid, .. } => regid.partition(),
        WriteOp::StorePush { regids, .. } => regids.first().map(|r| r.partition()).unwrap_or(0),
    }
}

/// How often expired messages are swept when nothing else is due.
const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Most expiry-index rows removed per partition per sweep, so a sweep never stalls commits long.
const EXPIRY_SWEEP_ROWS: usize = 20_000;

/// The writer's loop: group-commit jobs, checkpoint (sync) the database, sweep expired messages.
struct WriterLoop {
    db: Arc<StoreDb>,
    metrics: Arc<crate::stats::ShardMetrics>,
    /// The write-ahead log under `Fsync` durability.
    wal: Option<Wal>,
    notify: Notify,
    /// Commits not yet fsynced, and not in the running checkpoint.
    dirty: bool,
    /// A checkpoint has switched the log and has yet to fsync the database.
    checkpoint: bool,
    /// The last fsync failed: wait before trying again.
    checkpoint_failed: bool,
    /// Records of writes that need no sync of their own wait in the log's page cache...
    log_unsynced: bool,
    /// ...until the next sync, at most [`BUFFERED_SYNC_INTERVAL`] after this.
    log_synced_at: Instant,
    /// When the last checkpoint started.
    last_sync: Instant,
    last_sweep: Instant,
}

/// What the idle writer waited for.
enum Waited {
    Job(Queued),
    Timeout,
    /// The handle is gone: nothing more will come.
    Stopped,
}

/// Waits up to `wait` for the next job, parked: [`StoreWriter::submit`] unparks the writer
/// after each job it queues, so a job queued after the last look leaves the park token set
/// and the park returns at once. (A channel's own blocking receive spins first, calling
/// `sched_yield` a few times each time the writer goes idle: at 100k connections, with 8
/// writers going idle ~1,000 times a second each, that spinning was 16% of their profile's
/// samples, though their CPU seconds did not show it; BENCHMARKS.md, sixteenth session.)
fn next_job(rx: &Receiver<Queued>, wait: Duration) -> Waited {
    let deadline = Instant::now() + wait;
    loop {
        match rx.try_recv() {
            Ok(job) => return Waited::Job(job),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return Waited::Stopped,
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return Waited::Timeout;
        };
        std::thread::park_timeout(left);
    }
}

fn run(rx: Receiver<Queued>, mut writer: WriterLoop) {
    loop {
        // A running checkpoint goes on between commits; otherwise wait for work.
        let busy = writer.checkpoint && !writer.checkpoint_failed;
        let wait = if busy { Duration::ZERO } else { BUFFERED_SYNC_INTERVAL };
        match next_job(&rx, wait) {
            Waited::Job(first) => {
                let batch = gather(&rx, first, &WINDOWS);
                writer.commit(batch);
            }
            Waited::Timeout => {}
            Waited::Stopped => break,
        }
        if writer.log_unsynced && writer.log_synced_at.elapsed() >= BUFFERED_SYNC_INTERVAL {
            if let Err(e) = writer.sync_log() {
                tracing::error!(error = %e, "write-ahead log sync failed");
            }
        }
        let log_full = writer.wal.as_ref().is_some_and(Wal::wants_checkpoint);
        let interval = if writer.wal.is_some() { LOGGED_CHECKPOINT_INTERVAL } else { BUFFERED_SYNC_INTERVAL };
        if log_full || (writer.dirty && writer.last_sync.elapsed() >= interval) {
            writer.start_checkpoint();
        } else if writer.checkpoint {
            writer.checkpoint_step();
        }
        if writer.last_sweep.elapsed() >= EXPIRY_SWEEP_INTERVAL {
            writer.sweep();
        }
    }
    if let Err(e) = writer.sync_log() {
        tracing::error!(error = %e, "write-ahead log sync failed");
    }
    writer.start_checkpoint();
    writer.finish_checkpoint();
}

impl WriterLoop {
    fn commit(&mut self, batch: Vec<Queued>) {
        let mut grouped: BTreeMap<u16, Vec<&WriteOp>> = BTreeMap::new();
        for Queued { job, .. } in &batch {
            for op in &job.ops {
                grouped.entry(partition_of(op)).or_default().push(op);
            }
        }
        let started = Instant::now();
        let mut failed: BTreeMap<u16, StoreError> = BTreeMap::new();
        // The log record goes to the page cache first; its fdatasync overlaps nothing but
        // is the only one this commit waits for.
        let mut lsn = None;
        let mut log_error = None;
        let must_sync = batch.iter().flat_map(|q| &q.job.ops).any(wal::needs_sync);
        if let Some(wal) = self.wal.as_mut() {
            let ops: Vec<&WriteOp> = batch.iter().flat_map(|q| &q.job.ops).collect();
            if !ops.is_empty() {
                match wal.append(&ops) {
                    Ok(n) => lsn = Some(n),
                    Err(e) => log_error = Some(StoreError(e.to_string())),
                }
            }
        }
        let mut events = Vec::new();
        let op_count: usize = grouped.values().map(Vec::len).sum();
        let owned: Vec<u16> = self.db.partitions().iter().map(|p| p.partition).collect();
        grouped.retain(|partition, _| {
            let ours = owned.contains(partition);
            if !ours {
                failed.insert(*partition, StoreError(format!("partition {partition} is not owned by this writer")));
            }
            ours
        });
        if !grouped.is_empty() {
            match self.db.commit(&grouped, lsn, &mut events) {
                Ok(()) => self.dirty = true,
                Err(e) => {
                    tracing::error!(error = %e, "commit failed");
                    failed.extend(grouped.keys().map(|&partition| (partition, e.clone())));
                }
            }
        }
        if lsn.is_some() {
            if must_sync {
                if let Err(e) = self.sync_log() {
                    log_error = Some(e);
                }
            } else {
                self.log_unsynced = true;
            }
        }
        if let Some(e) = &log_error {
            tracing::error!(error = %e, "write-ahead log failed: this commit is not durable");
        }
        self.metrics.commit_latency_us.record(started.elapsed().as_micros() as u64);
        self.metrics.commit_batch_ops.record(op_count as u64);
        let mut woken = vec![false; self.notify.wakes.len()];
        woken[0] = self.publish(events);
        for Queued { from, job } in batch {
            woken[from] = true;
            if let Some(done) = job.done {
                let error = job.ops.iter().find_map(|op| failed.get(&partition_of(op)));
                let error = error.or(log_error.as_ref().filter(|_| job.ops.iter().any(wal::needs_sync)));
                done(error.map_or(Ok(()), |e| Err(e.clone())));
            }
        }
        for (wake, _) in self.notify.wakes.iter().zip(woken).filter(|(_, woken)| *woken) {
            wake();
        }
    }

    fn sweep(&mut self) {
        let now = crate::clock::now_unix_s();
        let mut events = Vec::new();
        let mut more = false;
        for store in self.db.partitions() {
            match store.expire(now, EXPIRY_SWEEP_ROWS, &mut events) {
                Ok(m) => more |= m,
                Err(e) => tracing::error!(partition = store.partition, error = %e, "expiry sweep failed"),
            }
        }
        self.dirty = true;
        if self.publish(events) {
            (self.notify.wakes[0])();
        }
        // Sweep again at once while rows are left, otherwise after the interval.
        self.last_sweep = if more { Instant::now() - EXPIRY_SWEEP_INTERVAL } else { Instant::now() };
    }

    /// Keeps the pending gauge and queues the rest for the first shard; true if any were
    /// queued (the caller wakes it).
    fn publish(&self, mut events: Vec<StoreEvent>) -> bool {
        events.retain(|e| match e {
            StoreEvent::PendingRows(delta) => {
                self.metrics.pending.fetch_add(*delta, std::sync::atomic::Ordering::Relaxed);
                false
            }
            _ => true,
        });
        let any = !events.is_empty();
        if any {
            (self.notify.on_events)(events);
        }
        any
    }

    /// fdatasyncs the log: every record appended so far is durable.
    fn sync_log(&mut self) -> Result<(), StoreError> {
        let Some(wal) = self.wal.as_ref() else { return Ok(()) };
        self.log_unsynced = false;
        self.log_synced_at = Instant::now();
        wal.sync().map_err(|e| StoreError(e.to_string()))
    }

    /// Starts a checkpoint of the commits since the last one: finishes the running
    /// checkpoint first (the log file it frees is the one written next), then switches the
    /// log to that file.
    fn start_checkpoint(&mut self) {
        if !self.finish_checkpoint() {
            return; // the database cannot be synced: keep writing the current log file
        }
        if !self.dirty {
            return;
        }
        if self.log_unsynced {
            // The file left behind is not synced again: its records go to disk now.
            if let Err(e) = self.sync_log() {
                tracing::error!(error = %e, "write-ahead log sync failed");
            }
        }
        if let Some(wal) = self.wal.as_mut() {
            wal.switch();
        }
        self.checkpoint = true;
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// fsyncs the database for the running checkpoint.
    fn checkpoint_step(&mut self) {
        if !self.checkpoint {
            return;
        }
        match self.db.checkpoint() {
            Ok(()) => {
                self.checkpoint = false;
                self.checkpoint_failed = false;
            }
            Err(e) => {
                tracing::error!(error = %e, "checkpoint: sync failed");
                self.checkpoint_failed = true;
            }
        }
    }

    /// Runs the running checkpoint to its end; false if the database could not be synced.
    fn finish_checkpoint(&mut self) -> bool {
        self.checkpoint_step();
        !self.checkpoint
    }
}

#[cfg(test)]
mod tests {
    use super::super::PartitionStore;
    use super::*;
    use crate::ids::RegId;
    use crate::push::Envelope;

    fn push_job() -> Queued {
        let envelope = Arc::new(Envelope { id: 1, app_id: 7, expires_at: u64::MAX / 2, json: b"{}".to_vec().into() });
        let regids = vec![RegId::generate(0)];
        let job = StoreJob { ops: vec![WriteOp::StorePush { envelope, seq: 1, regids }], done: None, awaited: true };
        Queued { from: 0, job }
    }

    fn ack_job(seq: u64) -> Queued {
        let job =
            StoreJob { ops: vec![WriteOp::GroupCursor { regid: RegId::generate(0), seq }], done: None, awaited: false };
        Queued { from: 0, job }
    }

    /// Wide windows, so that the test's own timing cannot decide it.
    const WIDE: Windows = Windows { urgent: Duration::from_millis(300), patient: Duration::from_secs(30) };

    #[test]
    fn a_push_closes_the_window_of_the_jobs_before_it() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            tx.send(push_job()).unwrap();
            // Past the push's window, well within the patient one.
            std::thread::sleep(Duration::from_secs(3));
            let _ = tx.send(ack_job(3));
        });
        let batch = gather(&rx, ack_job(1), &WIDE);
        assert_eq!(batch.len(), 2, "the acknowledgement and the push, not the job after the push's window");
        assert!(batch[1].job.is_urgent() && !batch[0].job.is_urgent());
        sender.join().unwrap();
    }

    #[test]
    fn a_parked_writer_wakes_for_a_job_and_for_the_end() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = std::thread::current();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            tx.send(ack_job(1)).unwrap();
            writer.unpark();
            std::thread::sleep(Duration::from_millis(100));
            drop(tx);
            writer.unpark();
        });
        // A wake-up lost would show as a wait of the whole minute.
        let started = Instant::now();
        assert!(matches!(next_job(&rx, Duration::from_secs(60)), Waited::Job(_)));
        assert!(matches!(next_job(&rx, Duration::from_secs(60)), Waited::Stopped));
        assert!(started.elapsed() < Duration::from_secs(30), "parked through a job and the end");
        assert!(matches!(next_job(&rx, Duration::ZERO), Waited::Stopped));
        sender.join().unwrap();
    }

    #[test]
    fn an_idle_writer_waits_out_its_timeout() {
        let (_tx, rx) = crossbeam_channel::unbounded::<Queued>();
        std::thread::current().unpark(); // a stale token from a job already taken
        assert!(matches!(next_job(&rx, Duration::from_millis(20)), Waited::Timeout));
    }

    #[test]
    fn patient_jobs_wait_for_their_window_and_take_what_queued() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for seq in 2..5 {
            tx.send(ack_job(seq)).unwrap();
        }
        let windows = Windows { urgent: Duration::from_millis(5), patient: Duration::from_millis(400) };
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            tx.send(ack_job(5)).unwrap();
        });
        let batch = gather(&rx, ack_job(1), &windows);
        sender.join().unwrap();
        assert_eq!(batch.len(), 5, "every patient job that came within the patient window");
    }

    /// Two shards share one writer: each is woken for its own commits, the writer outlives
    /// the first to stop, and the last to stop finds every job committed.
    #[test]
    fn one_writer_serves_several_shards() {
        use std::sync::atomic::AtomicU64;
        let dir = std::env::temp_dir().join(format!("pushnode-writer-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let limits = super::super::StoreLimits {
            max_pending_per_device: 10,
            stats_kept_secs: crate::store::partition::DEFAULT_STATS_KEPT_SECS,
        };
        let db = Arc::new(StoreDb::open(&dir.join("db.redb"), &[0, 2], 1 << 20, limits).unwrap());
        let wakes: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::default()).collect();
        let notify = Notify {
            on_events: Box::new(|_| {}),
            wakes: wakes
                .iter()
                .map(|count| {
                    let count = count.clone();
                    Arc::new(move || {
                        count.fetch_add(1, Ordering::Relaxed);
                    }) as Arc<dyn Fn() + Send + Sync>
                })
                .collect(),
        };
        let wal = WalSetup { paths: [dir.join("wal-a.log"), dir.join("wal-b.log")], next_lsn: 1 };
        let mut handles =
            StoreWriter::start("test-writer".into(), db.clone(), Durability::Buffered, &wal, notify, Arc::default())
                .unwrap();
        assert_eq!(handles.len(), 2);
        let register = |partition: u16, done: crossbeam_channel::Sender<Result<(), StoreError>>| {
            let regid = RegId::generate(partition);
            let record = super::super::DeviceRecord { app_id: 7, token_hash: [1; 16], created_at: 1 };
            let ops = vec![WriteOp::RegisterDevice { regid, record }];
            (regid, StoreJob { ops, done: Some(Box::new(move |r| done.send(r).unwrap())), awaited: true })
        };
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let (first, job) = register(0, done_tx.clone());
        handles[1].submit(job);
        done_rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(wakes[1].load(Ordering::Relaxed), 1, "the shard whose job it was is woken");
        assert_eq!(wakes[0].load(Ordering::Relaxed), 0, "the other is not");
        let mut second = handles.pop().unwrap();
        let mut lead = handles.pop().unwrap();
        lead.stop();
        let (other, job) = register(2, done_tx);
        second.submit(job);
        second.stop();
        assert!(done_rx.recv_timeout(Duration::ZERO).unwrap().is_ok(), "committed before the last stop returned");
        let stores = db.partitions();
        let has = |store: &PartitionStore, regid| store.load_devices().unwrap().iter().any(|(r, _)| *r == regid);
        assert!(has(&stores[0], first) && has(&stores[1], other), "each shard's registration is in its partition");
        drop((lead, second, db));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
