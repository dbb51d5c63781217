//! nanokube's storage layer, in the spirit of kine (k3s's storage shim).
//!
//! - [`Backend`] is the small trait everything above talks to: get, list (prefix, after,
//!   limit), create, update and delete (compare-and-swap on the object's revision), watch
//!   from a revision, current revision, compact. One global revision numbers every change;
//!   it is every object's `resourceVersion`.
//! - [`sqlite::SqliteBackend`] is the embedded backend: a log-structured table in SQLite
//!   (WAL, `synchronous=FULL`), written by one thread that commits every waiting write in
//!   one transaction and one fsync (group commit), and an in-memory index of the current
//!   state that reads are served from.
//! - [`etcd::EtcdBackend`] keeps the same in-memory index, fed by one etcd watch, and
//!   writes through etcd transactions (compare-and-swap on `mod_revision`); several API
//!   servers can share one etcd.
//! - [`watch::History`] is the watch fan-out: a ring of recent events plus a broadcast
//!   channel; a watch from a revision older than the ring answers [`StoreError::Compacted`].
//!
//! Invariants: a write is acknowledged only after its transaction is durable on disk;
//! readers never see uncommitted state; no lock is held across an fsync that readers or
//! watchers need; this crate knows nothing of HTTP or Kubernetes objects (values are bytes).

pub mod etcd;
pub mod follow;
pub mod local_etcd;
mod mirror;
pub mod sqlite;
pub mod watch;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

pub use watch::{History, WatchStream};

/// A revision: the global, strictly increasing change counter.
pub type Revision = i64;

/// A boxed future, so the trait stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the layer above derives from a value (see [`KeyValue::decoded`]).
pub type Decoded = Arc<dyn Any + Send + Sync>;

/// One stored key at one revision.
pub struct KeyValue {
    /// The key, e.g. `/registry/pods/default/web`.
    pub key: String,
    /// The value bytes (opaque to the store).
    pub value: Bytes,
    /// The revision that created the key (its current incarnation).
    pub create_revision: Revision,
    /// The revision of this value.
    pub mod_revision: Revision,
    /// A slot where the layer above caches what it derives from `value` (the API server:
    /// the served JSON encoding), computed once per revision, not once per read.
    decoded: OnceLock<Decoded>,
}

impl std::fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("len", &self.value.len())
            .finish()
    }
}

impl KeyValue {
    /// A new key-value.
    pub fn new(key: String, value: Bytes, create_revision: Revision, mod_revision: Revision) -> Self {
        KeyValue { key, value, create_revision, mod_revision, decoded: OnceLock::new() }
    }

    /// A new key-value whose decoded form the writer knows already (`None`: not known).
    pub fn with_decoded(key: String, value: Bytes, create_revision: Revision, mod_revision: Revision, decoded: Option<Decoded>) -> Self {
        let slot = OnceLock::new();
        if let Some(d) = decoded {
            let _ = slot.set(d);
        }
        KeyValue { key, value, create_revision, mod_revision, decoded: slot }
    }

    /// The decoded form of the value, computed once by `decode` and cached.
    /// `decode` must be a pure function of the bytes; callers must use one type per store.
    pub fn decoded<T: Any + Send + Sync, E>(&self, decode: impl FnOnce(&[u8]) -> Result<T, E>) -> Result<Arc<T>, E> {
        if let Some(d) = self.decoded.get() {
            if let Ok(t) = d.clone().downcast::<T>() {
                return Ok(t);
            }
        }
        let t = Arc::new(decode(&self.value)?);
        let _ = self.decoded.set(t.clone());
        Ok(t)
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created.
    Created,
    /// The key's value changed.
    Updated,
    /// The key was deleted; `kv` holds the last value, at the deletion's revision.
    Deleted,
}

/// One change, as watches deliver it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Created, updated or deleted.
    pub kind: EventKind,
    /// The new value (for deletes: the last value, with `mod_revision` = the deletion's revision).
    pub kv: Arc<KeyValue>,
    /// The value before the change, when known.
    pub prev: Option<Arc<KeyValue>>,
}

impl Event {
    /// The revision of this change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A page of a list.
#[derive(Debug, Clone)]
pub struct ListResult {
    /// Items in key order.
    pub items: Vec<Arc<KeyValue>>,
    /// The store revision the list was read at.
    pub revision: Revision,
    /// How many more keys under the prefix follow the last item.
    pub remaining: usize,
}

/// Store errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Create of a key that exists.
    #[error("key already exists")]
    AlreadyExists,
    /// Update or delete of a key that does not exist.
    #[error("key not found")]
    NotFound,
    /// Compare-and-swap failed: the key's current revision differs.
    #[error("revision mismatch (current {})", current.mod_revision)]
    Conflict {
        /// The current value.
        current: Arc<KeyValue>,
    },
    /// A watch or read from a revision older than what is retained.
    #[error("required revision {requested} has been compacted (oldest retained {oldest})")]
    Compacted {
        /// Requested revision.
        requested: Revision,
        /// Oldest revision still available.
        oldest: Revision,
    },
    /// A revision newer than the store has.
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision {
        /// Requested revision.
        requested: Revision,
        /// Current revision.
        current: Revision,
    },
    /// The operation is not supported by this backend (explicit, as kine does).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The database failed; the write is not acknowledged.
    #[error("storage error: {0}")]
    Io(String),
}

/// Counters a backend keeps about its writes, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: u64,
    /// Writes acknowledged (several per commit under load).
    pub writes: u64,
    /// Upper bounds (seconds) of the commit-latency histogram buckets.
    pub commit_buckets: Vec<f64>,
    /// Cumulative counts per bucket.
    pub commit_counts: Vec<u64>,
    /// Sum of commit latencies (seconds).
    pub commit_seconds_sum: f64,
}

/// How a backend that shares its database with other programs lays values out there:
/// the layer above knows the objects, the store only calls it. `encode` gives the bytes
/// to store for a value under `key`; `decode` turns stored bytes back into the value
/// (the etcd backend uses it to write and read kube-apiserver's encoding).
pub trait ValueCodec: Send + Sync + 'static {
    /// The bytes to store for `value` under `key`.
    fn encode(&self, key: &str, value: &[u8]) -> Bytes;
    /// The value that `stored` under `key` holds (stored bytes it cannot read are
    /// returned as they are, for the layer above to report).
    fn decode(&self, key: &str, stored: &[u8]) -> Bytes;
}

/// Commit-latency histogram buckets (seconds), fsync-sized, for both backends.
const COMMIT_BUCKETS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

impl StoreStats {
    /// Empty counters with the commit-latency buckets in place.
    pub(crate) fn with_commit_buckets() -> Self {
        StoreStats { commit_buckets: COMMIT_BUCKETS.to_vec(), commit_counts: vec![0; COMMIT_BUCKETS.len()], ..Default::default() }
    }

    /// Count one commit of `writes` writes that took `seconds`.
    pub(crate) fn record_commit(&mut self, writes: u64, seconds: f64) {
        self.commits += 1;
        self.writes += writes;
        self.commit_seconds_sum += seconds;
        for (count, bound) in self.commit_counts.iter_mut().zip(&self.commit_buckets) {
            if seconds <= *bound {
                *count += 1;
            }
        }
    }
}

/// The storage backend trait: all the API server needs from a database.
pub trait Backend: Send + Sync + 'static {
    /// The current value of a key.
    fn get(&self, key: &str) -> Option<Arc<KeyValue>>;

    /// Keys under `prefix`, in key order, strictly after `after` (for paging), at most
    /// `limit` (0 = no limit), all read at one revision.
    fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> ListResult;

    /// Like [`Backend::list`], but the keys as they were at `revision` (an earlier page's
    /// revision, so that paged lists are one consistent snapshot). `Compacted` when the
    /// changes since `revision` are no longer all retained.
    fn list_at(&self, prefix: &str, after: Option<&str>, limit: usize, revision: Revision) -> Result<ListResult, StoreError> {
        let _ = (prefix, after, limit, revision);
        Err(StoreError::Unsupported("list at an earlier revision"))
    }

    /// Create a key; fails with `AlreadyExists`.
    fn create(&self, key: String, value: Bytes) -> BoxFuture<'_, Result<Arc<KeyValue>, StoreError>>;

    /// Replace a key's value if its `mod_revision` equals `expected` (any if `None`).
    fn update(&self, key: String, value: Bytes, expected: Option<Revision>) -> BoxFuture<'_, Result<Arc<KeyValue>, StoreError>>;

    /// [`Backend::create`] by a writer that knows what [`KeyValue::decoded`] will make of
    /// `value`: a backend that hands watchers the written key-value itself sets it there
    /// first, so no watcher decodes what the writer just encoded. Others ignore it.
    fn create_decoded(&self, key: String, value: Bytes, decoded: Option<Decoded>) -> BoxFuture<'_, Result<Arc<KeyValue>, StoreError>> {
        let _ = decoded;
        self.create(key, value)
    }

    /// [`Backend::update`] with the decoded form known, as [`Backend::create_decoded`].
    fn update_decoded(
        &self,
        key: String,
        value: Bytes,
        expected: Option<Revision>,
        decoded: Option<Decoded>,
    ) -> BoxFuture<'_, Result<Arc<KeyValue>, StoreError>> {
        let _ = decoded;
        self.update(key, value, expected)
    }

    /// Delete a key if its `mod_revision` equals `expected` (any if `None`); returns the
    /// deleted value at the deletion's revision.
    fn delete(&self, key: String, expected: Option<Revision>) -> BoxFuture<'_, Result<Arc<KeyValue>, StoreError>>;

    /// Watch keys under `prefix`, delivering every event with revision > `after`.
    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;

    /// The newest revision.
    fn current_revision(&self) -> Revision;

    /// Bring this server's reads up to the newest revision the database has committed
    /// (from any server), for reads that must be current (`resourceVersion=""`) and for
    /// writes that build on what they read. A backend whose reads are always current (the
    /// embedded one) has nothing to do; the etcd backend asks etcd for its revision (a
    /// quorum read) and waits until its watch has delivered that far, as upstream's
    /// consistent reads from the watch cache do.
    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// The oldest revision a watch may start after.
    fn oldest_watchable(&self) -> Revision;

    /// Drop history older than `revision`.
    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Counts of keys per prefix segment, for metrics (`/registry/<x>/...` → count).
    fn count(&self, prefix: &str) -> usize;

    /// Write statistics (empty unless the backend keeps them).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Whether the backend can still serve writes (`/livez` and `/readyz` report it as
    /// their `etcd` check).
    fn healthy(&self) -> Result<(), String> {
        Ok(())
    }

    /// Commit what is pending and close the database cleanly (a server stopping); writes
    /// after it fail.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}
