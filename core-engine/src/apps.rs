//! The app registry: apps, their device keys and hashed secrets, kept in `apps.redb` and
//! served from an immutable snapshot that readers load without a lock.

use crate::ids::{hash_eq, random_secret, secret_hash, AppId};
use crate::store::StoreError;
use arc_swap::ArcSwap;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

const APPS: TableDefinition<u32, &[u8]> = TableDefinition::new("apps");
const FIRST_APP_ID: AppId = 1_000_001;

/// An app as stored: the device key is shared with the app's devices; the secret only
/// with its servers, so only its hash is kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppRecord {
    pub app_id: AppId,
    pub name: String,
    pub package: String,
    pub key_hash: [u8; 16],
    pub secret_hash: [u8; 16],
}

/// What creating an app answers, once: the only time the key and secret are shown.
#[derive(Clone, Debug, Serialize)]
pub struct AppCredentials {
    pub app_id: String,
    pub app_key: String,
    pub app_secret: String,
}

#[derive(Default)]
struct Snapshot {
    by_id: HashMap<AppId, AppRecord>,
    by_secret: HashMap<[u8; 16], AppId>,
}

/// The registry; cheap to share between the HTTP frontend and the shards.
pub struct AppRegistry {
    db: Database,
    snapshot: ArcSwap<Snapshot>,
    writer: Mutex<()>,
}

impl AppRegistry {
    /// Opens `dir/apps.redb` and loads every app.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = Database::create(dir.join("apps.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(APPS)?;
        txn.commit()?;
        let mut snapshot = Snapshot::default();
        let read = db.begin_read()?;
        for row in read.open_table(APPS)?.iter()? {
            let (_, v) = row?;
            match serde_json::from_slice::<AppRecord>(v.value()) {
                Ok(app) => {
                    snapshot.by_secret.insert(app.secret_hash, app.app_id);
                    snapshot.by_id.insert(app.app_id, app);
                }
                Err(e) => tracing::warn!(error = %e, "skipping a malformed app row"),
            }
        }
        Ok(AppRegistry { db, snapshot: ArcSwap::from_pointee(snapshot), writer: Mutex::new(()) })
    }

    /// Creates an app and stores it durably.
    pub fn create(&self, name: &str, package: &str) -> Result<AppCredentials, StoreError> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot.load();
        let app_id = current.by_id.keys().max().map_or(FIRST_APP_ID, |m| m + 1);
        let app_key = random_secret::<16>();
        let app_secret = random_secret::<24>();
        let record = AppRecord {
            app_id,
            name: name.to_owned(),
            package: package.to_owned(),
            key_hash: secret_hash(&app_key),
            secret_hash: secret_hash(&app_secret),
        };
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(APPS)?;
            let raw = serde_json::to_vec(&record).map_err(|e| StoreError(e.to_string()))?;
            table.insert(app_id, &raw[..])?;
        }
        txn.commit()?;
        let mut next = Snapshot { by_id: current.by_id.clone(), by_secret: current.by_secret.clone() };
        next.by_secret.insert(record.secret_hash, app_id);
        next.by_id.insert(app_id, record);
        self.snapshot.store(Arc::new(next));
        Ok(AppCredentials { app_id: app_id.to_string(), app_key, app_secret })
    }

    /// Replaces an app's server secret; the old one stops working at once. Answers the new one.
    pub fn rotate_secret(&self, app_id: AppId) -> Result<Option<String>, StoreError> {
        let _guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.snapshot.load();
        let Some(old) = current.by_id.get(&app_id) else { return Ok(None) };
        let app_secret = random_secret::<24>();
        let record = AppRecord { secret_hash: secret_hash(&app_secret), ..old.clone() };
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(APPS)?;
            let raw = serde_json::to_vec(&record).map_err(|e| StoreError(e.to_string()))?;
            table.insert(app_id, &raw[..])?;
        }
        txn.commit()?;
        let mut next = Snapshot { by_id: current.by_id.clone(), by_secret: current.by_secret.clone() };
        next.by_secret.remove(&old.secret_hash);
        next.by_secret.insert(record.secret_hash, app_id);
        next.by_id.insert(app_id, record);
        self.snapshot.store(Arc::new(next));
        Ok(Some(app_secret))
    }

    /// Every app's id, name and package (no secrets).
    pub fn list(&self) -> Vec<(AppId, String, String)> {
        let mut out: Vec<_> =
            self.snapshot.load().by_id.values().map(|a| (a.app_id, a.name.clone(), a.package.clone())).collect();
        out.sort();
        out
    }

    /// The app whose server secret this is.
    pub fn authenticate_secret(&self, secret: &str) -> Option<AppId> {
        self.snapshot.load().by_secret.get(&secret_hash(secret)).copied()
    }

    /// Whether `key` is the device key of `app_id`.
    pub fn check_device_key(&self, app_id: AppId, key: &[u8]) -> bool {
        let Ok(key) = std::str::from_utf8(key) else {
            return false;
        };
        self.snapshot.load().by_id.get(&app_id).is_some_and(|app| hash_eq(&app.key_hash, &secret_hash(key)))
    }

    /// Whether the app exists.
    pub fn exists(&self, app_id: AppId) -> bool {
        self.snapshot.load().by_id.contains_key(&app_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("pushnode-apps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let creds = {
            let registry = AppRegistry::open(&dir).unwrap();
            let first = registry.create("a", "com.a").unwrap();
            let second = registry.create("b", "com.b").unwrap();
            assert_ne!(first.app_id, second.app_id);
            second
        };
        let registry = AppRegistry::open(&dir).unwrap();
        let id: AppId = creds.app_id.parse().unwrap();
        assert_eq!(registry.authenticate_secret(&creds.app_secret), Some(id));
        assert_eq!(registry.authenticate_secret("nope"), None);
        assert!(registry.check_device_key(id, creds.app_key.as_bytes()));
        assert!(!registry.check_device_key(id, b"wrong"));
        let rotated = registry.rotate_secret(id).unwrap().unwrap();
        assert_eq!(registry.authenticate_secret(&creds.app_secret), None, "the old secret stops working");
        assert_eq!(registry.authenticate_secret(&rotated), Some(id));
        assert_eq!(registry.rotate_secret(1).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
