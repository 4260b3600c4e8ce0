//! The app-server API's own state, kept in one redb file (`data/api.redb`) next to the
//! partitions: scheduled messages ([`schedule`]), message templates ([`templates`]) and the
//! answers remembered for `request_id` retries ([`idempotency`]).
//!
//! Every write is one redb transaction committed with `Durability::Immediate`, so what the
//! HTTP frontend answers is on disk. The store never talks to the shards: the frontend and
//! its scheduler thread call [`crate::NodeHandle`] with what they read here.

pub mod idempotency;
pub mod schedule;
pub mod templates;

use crate::ids::MessageId;
use redb::Database;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

pub use idempotency::{RememberedAnswer, RequestClaim, MAX_REQUEST_ID_BYTES, REQUEST_ID_WINDOW_MS};
pub use schedule::{CancelOutcome, ScheduleState, ScheduledMessage, MAX_SCHEDULE_AHEAD_SECS};
pub use templates::{Rendered, Template, TemplateError, MAX_TEMPLATES_PER_APP};

/// Why an API store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiStoreError {
    /// redb failed (I/O, corruption, ...).
    #[error("api store: {0}")]
    Store(String),
    /// A stored row could not be decoded.
    #[error("api store: malformed row: {0}")]
    Malformed(String),
    /// A template is malformed or a send's variables do not fit it.
    #[error(transparent)]
    Template(#[from] TemplateError),
}

macro_rules! store_error_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for ApiStoreError {
            fn from(e: $t) -> Self { ApiStoreError::Store(e.to_string()) }
        }
    )*};
}
store_error_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

/// `data/api.redb` and the in-memory claims that keep concurrent callers apart.
pub struct ApiStore {
    db: Database,
    /// Scheduled messages the scheduler is sending right now (cancel answers 409 for them).
    firing: Mutex<HashSet<MessageId>>,
    /// (app, request_id) of requests being answered right now.
    requests_in_flight: Mutex<HashSet<(crate::ids::AppId, String)>>,
}

impl ApiStore {
    /// Opens (or creates) `dir/api.redb` with every table.
    pub fn open(dir: &Path) -> Result<ApiStore, ApiStoreError> {
        let db = Database::create(dir.join("api.redb"))?;
        let txn = db.begin_write()?;
        schedule::create_tables(&txn)?;
        templates::create_tables(&txn)?;
        idempotency::create_tables(&txn)?;
        txn.commit()?;
        Ok(ApiStore { db, firing: Mutex::new(HashSet::new()), requests_in_flight: Mutex::new(HashSet::new()) })
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiStoreError> {
    serde_json::to_vec(value).map_err(|e| ApiStoreError::Malformed(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, ApiStoreError> {
    serde_json::from_slice(raw).map_err(|e| ApiStoreError::Malformed(e.to_string()))
}

#[cfg(test)]
pub(crate) mod test_dir {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh, empty folder under the system temp dir; removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("pushnode-api-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
