//! The writer thread of one shard's partitions: takes write jobs from the shard, applies
//! every job that queued up meanwhile in one transaction per partition (group commit),
//! then runs each job's completion. The shard's event loop never waits on the disk.

use super::partition::{PartitionStore, StoreError, WriteOp};
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

/// Called once the job's writes are committed (or failed).
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// Writes for one or more partitions of the shard, and what to do when they are durable.
pub struct StoreJob {
    pub ops: Vec<WriteOp>,
    pub done: Option<Completion>,
}

/// Most jobs grouped into one commit.
const MAX_JOBS_PER_COMMIT: usize = 4096;
const BUFFERED_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Handle to a shard's writer thread.
pub struct StoreWriter {
    jobs: Option<Sender<StoreJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoreWriter {
    /// Starts the writer thread for `partitions`.
    pub fn start(name: String, partitions: Vec<Arc<PartitionStore>>, durability: Durability) -> std::io::Result<Self> {
        let (jobs, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new().name(name).spawn(move || run(rx, partitions, durability))?;
        Ok(StoreWriter { jobs: Some(jobs), thread: Some(thread) })
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
        }
    }
}

fn partition_of(op: &WriteOp) -> u16 {
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
        | WriteOp::Clicked { partition, .. } => *partition,
        WriteOp::StorePush { regids, .. } => regids.first().map(|r| r.partition()).unwrap_or(0),
    }
}

fn run(rx: Receiver<StoreJob>, partitions: Vec<Arc<PartitionStore>>, durability: Durability) {
    let by_number: BTreeMap<u16, Arc<PartitionStore>> = partitions.iter().map(|p| (p.partition, p.clone())).collect();
    let mut unsynced = false;
    let mut last_sync = Instant::now();
    loop {
        let first = match rx.recv_timeout(BUFFERED_SYNC_INTERVAL) {
            Ok(job) => job,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if unsynced {
                    sync_all(&by_number);
                    unsynced = false;
                    last_sync = Instant::now();
                }
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut grouped: BTreeMap<u16, Vec<&WriteOp>> = BTreeMap::new();
        for job in &batch {
            for op in &job.ops {
                grouped.entry(partition_of(op)).or_default().push(op);
            }
        }
        // Acknowledgements need no fsync of their own: losing one only means a resend.
        let only_acks = batch.iter().flat_map(|j| &j.ops).all(|op| matches!(op, WriteOp::Acked { .. }));
        let redb_durability = match durability {
            Durability::Fsync if !only_acks => redb::Durability::Immediate,
            _ => redb::Durability::None,
        };
        let mut failed: BTreeMap<u16, StoreError> = BTreeMap::new();
        for (partition, ops) in grouped {
            let Some(store) = by_number.get(&partition) else {
                failed.insert(partition, StoreError(format!("partition {partition} is not owned by this writer")));
                continue;
            };
            if let Err(e) = store.apply(&ops, redb_durability) {
                tracing::error!(partition, error = %e, "commit failed");
                failed.insert(partition, e);
            }
        }
        if matches!(redb_durability, redb::Durability::None) {
            unsynced = true;
            if last_sync.elapsed() >= BUFFERED_SYNC_INTERVAL {
                sync_all(&by_number);
                unsynced = false;
                last_sync = Instant::now();
            }
        }
        for job in batch {
            if let Some(done) = job.done {
                let error = job.ops.iter().find_map(|op| failed.get(&partition_of(op)));
                done(error.map_or(Ok(()), |e| Err(e.clone())));
            }
        }
    }
    if unsynced {
        sync_all(&by_number);
    }
}

fn sync_all(stores: &BTreeMap<u16, Arc<PartitionStore>>) {
    for store in stores.values() {
        if let Err(e) = store.apply(&[], redb::Durability::Immediate) {
            tracing::error!(partition = store.partition, error = %e, "sync failed");
        }
    }
}
