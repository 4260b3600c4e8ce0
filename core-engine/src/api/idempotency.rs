//! `request_id`: the first answer to a request is remembered for 10 minutes per (app,
//! request id), durably, so a retry (also after a restart) gets the same answer and sends
//! nothing new. A claim held while the first request is being answered keeps a concurrent
//! duplicate from sending too.

use super::{decode, encode, ApiStore, ApiStoreError};
use crate::ids::AppId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

/// app id (big endian) ++ request id -> [`RememberedAnswer`] as JSON.
const REQUESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("requests");
/// (remembered at, key of REQUESTS) -> (): what to forget first.
const REQUESTS_BY_TIME: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("requests_by_time");

/// Longest request id, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// How long an answer is remembered: 10 minutes.
pub const REQUEST_ID_WINDOW_MS: u64 = 10 * 60 * 1000;

pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), ApiStoreError> {
    txn.open_table(REQUESTS)?;
    txn.open_table(REQUESTS_BY_TIME)?;
    Ok(())
}

/// An answer as it was sent: HTTP status and JSON body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedAnswer {
    pub status: u16,
    pub body: String,
    /// Unix milliseconds at which it was answered.
    pub remembered_at: u64,
}

fn key(app_id: AppId, request_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + request_id.len());
    k.extend_from_slice(&app_id.to_be_bytes());
    k.extend_from_slice(request_id.as_bytes());
    k
}

/// The right to answer a request id; released on drop.
pub struct RequestClaim<'a> {
    store: &'a ApiStore,
    key: (AppId, String),
}

impl Drop for RequestClaim<'_> {
    fn drop(&mut self) {
        self.store.requests_in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl ApiStore {
    /// The answer remembered for (app, request id) if it is younger than the window.
    pub fn remembered(
        &self,
        app_id: AppId,
        request_id: &str,
        now_ms: u64,
    ) -> Result<Option<RememberedAnswer>, ApiStoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(REQUESTS)?;
        let row = table.get(&key(app_id, request_id)[..])?;
        let answer: Option<RememberedAnswer> = row.map(|v| decode(v.value())).transpose()?;
        Ok(answer.filter(|a| a.remembered_at + REQUEST_ID_WINDOW_MS > now_ms))
    }

    /// Claims (app, request id) while it is being answered; `None` if another request
    /// holds it.
    pub fn claim_request(&self, app_id: AppId, request_id: &str) -> Option<RequestClaim<'_>> {
        let key = (app_id, request_id.to_owned());
        let mut in_flight = self.requests_in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if !in_flight.insert(key.clone()) {
            return None;
        }
        Some(RequestClaim { store: self, key })
    }

    /// Remembers the answer to (app, request id); durable when this returns.
    pub fn remember(&self, app_id: AppId, request_id: &str, answer: &RememberedAnswer) -> Result<(), ApiStoreError> {
        let k = key(app_id, request_id);
        let raw = encode(answer)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(REQUESTS)?;
            let mut by_time = txn.open_table(REQUESTS_BY_TIME)?;
            let old: Option<RememberedAnswer> = table.get(&k[..])?.map(|v| decode(v.value())).transpose()?;
            if let Some(old) = old {
                by_time.remove((old.remembered_at, &k[..]))?;
            }
            table.insert(&k[..], &raw[..])?;
            by_time.insert((answer.remembered_at, &k[..]), ())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Forgets answers remembered before `before_ms`; answers how many.
    pub fn forget_requests_before(&self, before_ms: u64) -> Result<usize, ApiStoreError> {
        let txn = self.db.begin_write()?;
        let forgotten = {
            let mut table = txn.open_table(REQUESTS)?;
            let mut by_time = txn.open_table(REQUESTS_BY_TIME)?;
            let mut old: Vec<(u64, Vec<u8>)> = Vec::new();
            for row in by_time.range((0, &[][..])..(before_ms, &[][..]))? {
                let (k, _) = row?;
                let (at, key) = k.value();
                old.push((at, key.to_vec()));
            }
            for (at, key) in &old {
                by_time.remove((*at, &key[..]))?;
                table.remove(&key[..])?;
            }
            old.len()
        };
        txn.commit()?;
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::test_dir::TempDir;

    fn answer(at: u64) -> RememberedAnswer {
        RememberedAnswer { status: 200, body: r#"{"id":"1"}"#.into(), remembered_at: at }
    }

    #[test]
    fn answers_are_remembered_per_app_for_the_window_and_across_reopen() {
        let dir = TempDir::new("idem");
        {
            let store = ApiStore::open(&dir.0).unwrap();
            store.remember(7, "r-1", &answer(1_000)).unwrap();
        }
        let store = ApiStore::open(&dir.0).unwrap();
        assert_eq!(store.remembered(7, "r-1", 2_000).unwrap(), Some(answer(1_000)));
        assert_eq!(store.remembered(8, "r-1", 2_000).unwrap(), None, "per app");
        assert_eq!(store.remembered(7, "r-2", 2_000).unwrap(), None);
        assert_eq!(store.remembered(7, "r-1", 1_000 + REQUEST_ID_WINDOW_MS).unwrap(), None, "window over");
        // Remembering again replaces the answer and its place in the time index.
        store.remember(7, "r-1", &answer(5_000)).unwrap();
        assert_eq!(store.forget_requests_before(4_000).unwrap(), 0);
        assert_eq!(store.forget_requests_before(6_000).unwrap(), 1);
        assert_eq!(store.remembered(7, "r-1", 5_001).unwrap(), None);
    }

    #[test]
    fn a_claim_is_exclusive_until_dropped() {
        let dir = TempDir::new("claim");
        let store = ApiStore::open(&dir.0).unwrap();
        let first = store.claim_request(7, "r").unwrap();
        assert!(store.claim_request(7, "r").is_none());
        assert!(store.claim_request(8, "r").is_some(), "another app's id is another key");
        drop(first);
        assert!(store.claim_request(7, "r").is_some());
    }
}
