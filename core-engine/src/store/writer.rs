//! The writer thread of one shard's database: takes write jobs from the shard, applies
//! every job that queued up meanwhile in one transaction (group commit), then runs each
//! job's completion. The shard's event loop never waits on the disk.
//!
//! Under `fsync` durability a commit is made durable by one fdatasync of the shard's
//! write-ahead log (`wal.rs`), not by fsyncing the database. A checkpoint switches the log
//! to its other file and then fsyncs the database between commits; once that is done, the
//! file written before the switch is free to be written over at the next switch.

use super::partition::{StoreError, StoreEvent, WriteOp};
use super::shard_db::ShardDb;
use super::wal::{self, Wal};
use crossbeam_channel::{Receiver, Sender};
use std::collections::BTreeMap;
use std::sync::Arc;
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

/// How the writer tells its shard about finished work: events and completions queue
/// quietly, then one `wake` per commit (not one wake-up, a syscall, per job).
pub struct Notify {
    pub on_events: EventSink,
    pub wake: Arc<dyn Fn() + Send + Sync>,
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

/// Handle to a shard's writer thread.
pub struct StoreWriter {
    jobs: Option<Sender<StoreJob>>,
    /// Wakes the shard after a job completed here because the writer is gone.
    wake: Arc<dyn Fn() + Send + Sync>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoreWriter {
    /// Starts the writer thread for `db`; under `Fsync` durability it logs to `wal`.
    pub fn start(
        name: String,
        db: Arc<ShardDb>,
        durability: Durability,
        wal: &WalSetup,
        notify: Notify,
        metrics: Arc<crate::stats::ShardMetrics>,
    ) -> Result<Self, wal::WalError> {
        let wal = match durability {
            Durability::Fsync => Some(Wal::open(&wal.paths, WAL_BYTES, wal.next_lsn)?),
            Durability::Buffered => None,
        };
        let (jobs, rx) = crossbeam_channel::unbounded();
        let wake = notify.wake.clone();
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
        Ok(StoreWriter { jobs: Some(jobs), wake, thread: Some(thread) })
    }

    /// Lets the writer commit what is queued, then waits for it to exit.
    pub fn stop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Queues a job; it completes with an error if the writer is gone.
    pub fn submit(&self, job: StoreJob) {
        let rejected = match &self.jobs {
            Some(jobs) => jobs.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(done) = rejected.and_then(|job| job.done) {
            done(Err(StoreError("store writer stopped".into())));
            (self.wake)();
        }
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
fn gather(rx: &Receiver<StoreJob>, first: StoreJob, windows: &Windows) -> Vec<StoreJob> {
    let started = Instant::now();
    let mut urgent = first.is_urgent();
    let mut batch = vec![first];
    while batch.len() < MAX_JOBS_PER_COMMIT {
        let window = if urgent { windows.urgent } else { windows.patient };
        let Some(left) = (started + window).checked_duration_since(Instant::now()) else { break };
        std::thread::sleep(left.min(windows.urgent));
        for job in rx.try_iter().take(MAX_JOBS_PER_COMMIT - batch.len()) {
            urgent |= job.is_urgent();
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
    db: Arc<ShardDb>,
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

fn run(rx: Receiver<StoreJob>, mut writer: WriterLoop) {
    loop {
        // A running checkpoint goes on between commits; otherwise wait for work.
        let busy = writer.checkpoint && !writer.checkpoint_failed;
        let wait = if busy { Duration::ZERO } else { BUFFERED_SYNC_INTERVAL };
        match rx.recv_timeout(wait) {
            Ok(first) => {
                let batch = gather(&rx, first, &WINDOWS);
                writer.commit(batch);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
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
    fn commit(&mut self, batch: Vec<StoreJob>) {
        let mut grouped: BTreeMap<u16, Vec<&WriteOp>> = BTreeMap::new();
        for job in &batch {
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
        let must_sync = batch.iter().flat_map(|j| &j.ops).any(wal::needs_sync);
        if let Some(wal) = self.wal.as_mut() {
            let ops: Vec<&WriteOp> = batch.iter().flat_map(|j| &j.ops).collect();
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
        self.publish(events);
        for job in batch {
            if let Some(done) = job.done {
                let error = job.ops.iter().find_map(|op| failed.get(&partition_of(op)));
                let error = error.or(log_error.as_ref().filter(|_| job.ops.iter().any(wal::needs_sync)));
                done(error.map_or(Ok(()), |e| Err(e.clone())));
            }
        }
        (self.notify.wake)();
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
        self.publish(events);
        (self.notify.wake)();
        // Sweep again at once while rows are left, otherwise after the interval.
        self.last_sweep = if more { Instant::now() - EXPIRY_SWEEP_INTERVAL } else { Instant::now() };
    }

    /// Keeps the pending gauge and queues the rest for the shard (the caller wakes it).
    fn publish(&self, mut events: Vec<StoreEvent>) {
        events.retain(|e| match e {
            StoreEvent::PendingRows(delta) => {
                self.metrics.pending.fetch_add(*delta, std::sync::atomic::Ordering::Relaxed);
                false
            }
            _ => true,
        });
        if !events.is_empty() {
            (self.notify.on_events)(events);
        }
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
    use super::*;
    use crate::ids::RegId;
    use crate::push::Envelope;

    fn push_job() -> StoreJob {
        let envelope = Arc::new(Envelope { id: 1, app_id: 7, expires_at: u64::MAX / 2, json: b"{}".to_vec().into() });
        let regids = vec![RegId::generate(0)];
        StoreJob { ops: vec![WriteOp::StorePush { envelope, seq: 1, regids }], done: None, awaited: true }
    }

    fn ack_job(seq: u64) -> StoreJob {
        StoreJob { ops: vec![WriteOp::GroupCursor { regid: RegId::generate(0), seq }], done: None, awaited: false }
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
        assert!(batch[1].is_urgent() && !batch[0].is_urgent());
        sender.join().unwrap();
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
}
