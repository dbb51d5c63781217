//! The etcd backend: etcd (v3, gRPC) is the database, shared by every API server that
//! points at it; each server keeps the same in-memory index the embedded backend keeps,
//! fed by one etcd watch, and serves reads and watches from it (upstream's watch cache).
//!
//! - **Keys.** A store key `/registry/<rest>` lives at `<prefix>/<rest>` in etcd
//!   (`--etcd-prefix`, default `/registry`, as kube-apiserver). Keys outside `/registry/`
//!   are refused as unsupported.
//! - **Revisions.** etcd's revision is the resourceVersion: `mod_revision` of a value, the
//!   header revision of a list.
//! - **Writes** are single etcd transactions that compare and swap: create when
//!   `create_revision == 0`, update and delete when `mod_revision` equals what the caller
//!   read (or the key exists), with a read of the key in the else branch to tell
//!   `NotFound` from `Conflict`. A write is answered only once the watch has delivered it
//!   to this server's index, so a client reads its own writes from any request after.
//! - **Reads** come from the index. [`Backend::sync`] first asks etcd for its revision
//!   (a linearizable read) and waits until the watch has delivered that far; when etcd's
//!   revision moved without a change under the prefix, it writes a mark of its own
//!   (`/registry/nanokube-sync`, never in the index) and waits for that, so a read that
//!   must be current sees every write acknowledged by any server before it began.
//!   Progress notifications are not used: etcd before 3.4.26 and 3.5.8 (Debian ships
//!   3.4.23) may send one ahead of events still to come.
//! - **Members**: one client per member, used one at a time; a member that cannot be
//!   reached is passed over, one that answers "unavailable" or "no leader" is left for
//!   the next (the client crate's own balancing keeps sending to a dead member).
//! - **Watch**: one etcd watch per server on the whole prefix, with previous values, from
//!   the revision the index was listed at. On a broken stream it resumes from the last
//!   revision applied; if etcd compacted that away, it lists again and every watch of
//!   this server ends with `Compacted` (clients relist, as after upstream's relist).
//! - **Leases**: keys under a configured prefix (`/registry/events/`) are written with a
//!   lease (TTL one hour for Events), one lease shared by the writes of a minute, as
//!   kube-apiserver's lease manager does.
//! - **Compaction** as kube-apiserver does it: every interval, a transaction on
//!   `compact_rev_key` makes one server of many compact, to the revision seen one
//!   interval earlier.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::watch;

use crate::mirror::{Index, State};
use crate::watch::History;
use crate::{Backend, BoxFuture, Event, EventKind, KeyValue, ListResult, Revision, StoreError, StoreStats, ValueCodec, WatchStream};

/// The key prefix of this store's own keys (what the layers above use).
const STORE_ROOT: &str = "/registry";

/// The key through which API servers sharing an etcd agree on who compacts (upstream's).
const COMPACT_REV_KEY: &str = "compact_rev_key";

/// How long one etcd call may take before the request fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a read waits for the watch to catch up with etcd before it fails.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// The key a consistent read writes when the index trails etcd's revision with nothing
/// under the prefix on its way (the watch delivers it after everything before it). It
/// never enters the index.
const SYNC_KEY: &str = "/registry/nanokube-sync";

/// How long a consistent read waits for changes already on their way before it marks
/// its point with a write of [`SYNC_KEY`].
const SYNC_GRACE: Duration = Duration::from_millis(50);

/// The largest answer read from etcd (a page of a list, a batch of watch events): the
/// client's default of 4 MiB is less than a page of large objects.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// How many revisions back a starting server reads etcd's history into its own, so
/// that watches and paged lists from before a restart go on (as with the embedded
/// store), as far as etcd has not compacted them.
const PRELOAD_REVISIONS: i64 = 10_000;

/// How long a lease is reused for further writes before a new one is granted.
const LEASE_REUSE: Duration = Duration::from_secs(60);

/// How to reach etcd, and how to keep the index.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs (`http://127.0.0.1:2379`, `https://…`), any of which may answer.
    pub endpoints: Vec<String>,
    /// CA bundle that signs etcd's serving certificate (`--etcd-cafile`).
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key (`--etcd-certfile`, `--etcd-keyfile`).
    pub cert_file: Option<std::path::PathBuf>,
    /// See `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// Where the keys live in etcd (`--etcd-prefix`, default `/registry`).
    pub prefix: String,
    /// How often to compact etcd (`--etcd-compaction-interval`, 0 = never).
    pub compaction_interval: Duration,
    /// How many recent events watches can resume from.
    pub history: usize,
    /// How many bytes those events may hold.
    pub history_bytes: usize,
    /// Key prefixes written with a lease, and its time to live (Events: one hour).
    pub leases: Vec<(String, Duration)>,
    /// How values are laid out in etcd (none: as they are given).
    pub codec: Option<Codec>,
}

/// A [`ValueCodec`] in the options.
#[derive(Clone)]
pub struct Codec(pub Arc<dyn ValueCodec>);

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Codec")
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ca_file: None,
            cert_file: None,
            key_file: None,
            prefix: STORE_ROOT.into(),
            compaction_interval: Duration::from_secs(300),
            history: crate::sqlite::DEFAULT_HISTORY,
            history_bytes: crate::sqlite::DEFAULT_HISTORY_BYTES,
            leases: Vec::new(),
            codec: None,
        }
    }
}

/// The lease the writes of the last minute shared.
struct LeaseSlot {
    id: i64,
    granted: Instant,
    ttl: Duration,
}

struct Shared {
    pool: Pool,
    codec: Option<Arc<dyn ValueCodec>>,
    /// etcd key prefix, without a trailing slash.
    prefix: String,
    index: Index,
    /// The revision the index is current at, for waiters.
    applied: watch::Sender<Revision>,
    /// Why the backend cannot serve, if it cannot (etcd unreachable, watch broken).
    trouble: Mutex<Option<String>>,
    closed: AtomicBool,
    leases: Mutex<Vec<(String, Duration, Option<LeaseSlot>)>>,
    stats: Mutex<StoreStats>,
}

/// The etcd backend. Dropping it (or [`Backend::close`]) stops its watch and compactor.
pub struct EtcdBackend {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

fn unavailable<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(format!("etcd: {e}"))
}

/// One client per member, used one at a time, as etcd's own clients do: the client
/// crate's balanced channel keeps sending to a member that is down, so a call that
/// finds its member unreachable moves on to the next, and an answer that says the
/// member is in trouble (unavailable, no leader, timed out) sends later calls elsewhere.
#[derive(Clone)]
struct Pool {
    clients: Arc<Vec<Client>>,
    current: Arc<std::sync::atomic::AtomicUsize>,
}

/// Whether an error says the member, not the request, is the trouble.
fn member_trouble(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["unavailable", "timed out", "no leader", "connect", "transport", "broken pipe", "reset"].iter().any(|w| m.contains(w))
}

/// Whether an error says the request never reached the member (so trying another
/// cannot apply it twice).
fn never_sent(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("connect error") || m.contains("connection refused")
}

impl Pool {
    /// The member in use and its client.
    fn pick(&self) -> (usize, Client) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].clone())
    }

    /// Move away from member `i` (unless another call already has).
    fn failed(&self, i: usize) {
        let _ = self.current.compare_exchange(i, (i + 1) % self.clients.len(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Run one call, on the next member where the current one is unreachable.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = String::new();
        for _ in 0..self.clients.len() {
            let (i, client) = self.pick();
            match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let message = e.to_string();
                    if member_trouble(&message) {
                        self.failed(i);
                    }
                    if !never_sent(&message) {
                        return Err(unavailable(format!("{what}: {message}")));
                    }
                    last = message;
                }
                Err(_) => {
                    self.failed(i);
                    return Err(unavailable(format!("{what}: no answer within {}s", CALL_TIMEOUT.as_secs())));
                }
            }
        }
        Err(unavailable(format!("{what}: no member reachable ({last})")))
    }
}

impl EtcdBackend {
    /// Connect, list everything under the prefix into the index and start the watch.
    pub async fn open(opts: EtcdOptions) -> Result<Self, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Io("no etcd endpoints given".into()));
        }
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        if !prefix.starts_with('/') {
            return Err(StoreError::Io(format!("the etcd prefix must start with '/': {:?}", opts.prefix)));
        }
        let mut connect = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if opts.endpoints.iter().any(|e| e.starts_with("https://")) || opts.ca_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.ca_file {
                let pem = std::fs::read(ca).map_err(|e| StoreError::Io(format!("--etcd-cafile {}: {e}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            match (&opts.cert_file, &opts.key_file) {
                (Some(c), Some(k)) => {
                    let cert = std::fs::read(c).map_err(|e| StoreError::Io(format!("--etcd-certfile {}: {e}", c.display())))?;
                    let key = std::fs::read(k).map_err(|e| StoreError::Io(format!("--etcd-keyfile {}: {e}", k.display())))?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                (None, None) => {}
                _ => return Err(StoreError::Io("--etcd-certfile and --etcd-keyfile go together".into())),
            }
            connect = connect.with_tls(tls);
        }
        let connect = connect.with_require_leader(true);
        let mut clients = Vec::new();
        for endpoint in &opts.endpoints {
            // Connections are made lazily: a member that is down now is tried when used.
            let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect([endpoint], Some(connect.clone())))
                .await
                .map_err(|_| StoreError::Io(format!("etcd at {endpoint} did not answer within {}s", CALL_TIMEOUT.as_secs())))?
                .map_err(|e| StoreError::Io(format!("etcd at {endpoint}: {e}")))?;
            clients.push(client);
        }
        let pool = Pool { clients: Arc::new(clients), current: Arc::default() };

        let (map, revision) =
            list_all(&pool, &prefix, opts.codec.as_ref().map(|c| &c.0)).await.map_err(|e| StoreError::Io(format!("{e} (at {})", opts.endpoints.join(","))))?;
        let history = Arc::new(History::with_byte_limit(opts.history, opts.history_bytes, revision));
        let mut map = map;
        let mut revision = revision;
        let codec_ref = opts.codec.as_ref().map(|c| &c.0);
        match preload(&pool, &prefix, codec_ref, &mut map, revision, opts.history).await {
            Ok(Some((events, floor, now))) => {
                history.preload(events, floor);
                revision = now;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "etcd's history could not be read; watches start at the current revision"),
        }
        let (applied, _) = watch::channel(revision);
        let stats = StoreStats::with_commit_buckets();
        let codec = opts.codec.as_ref().map(|c| c.0.clone());
        let shared = Arc::new(Shared {
            pool,
            codec,
            prefix,
            index: Index::new(State::new(map, revision), history),
            applied,
            trouble: Mutex::new(None),
            closed: AtomicBool::new(false),
            leases: Mutex::new(opts.leases.iter().map(|(p, ttl)| (p.clone(), *ttl, None)).collect()),
            stats: Mutex::new(stats),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(run_watch(shared.clone(), shutdown_rx.clone()));
        if !opts.compaction_interval.is_zero() {
            tokio::spawn(run_compactor(shared.pool.clone(), opts.compaction_interval, shutdown_rx));
        }
        Ok(EtcdBackend { shared, shutdown })
    }

    /// The etcd key of a store key.
    fn etcd_key(&self, key: &str) -> Result<String, StoreError> {
        match key.strip_prefix(STORE_ROOT) {
            Some(rest) if rest.starts_with('/') => Ok(format!("{}{rest}", self.shared.prefix)),
            _ => Err(StoreError::Unsupported("keys outside /registry/ in etcd")),
        }
    }

    /// The bytes written to etcd for `value` under `key`.
    fn stored(&self, key: &str, value: &Bytes) -> Vec<u8> {
        match &self.shared.codec {
            Some(c) => c.encode(key, value).to_vec(),
            None => value.to_vec(),
        }
    }

    /// The lease a write of `key` is attached to, if its prefix has one.
    async fn lease_for(&self, key: &str) -> Result<Option<i64>, StoreError> {
        let ttl = {
            let mut leases = self.shared.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some((_, ttl, slot)) = leases.iter_mut().find(|(p, _, _)| key.starts_with(p.as_str())) else { return Ok(None) };
            if let Some(s) = slot.as_ref().filter(|s| s.granted.elapsed() < LEASE_REUSE && s.ttl == *ttl) {
                return Ok(Some(s.id));
            }
            *ttl
        };
        // Granted long enough that the last write sharing it still lives its whole TTL.
        let grant = (ttl + LEASE_REUSE).as_secs() as i64;
        let resp = self.shared.pool.call("lease grant", |mut c| async move { c.lease_grant(grant, None).await }).await?;
        let mut leases = self.shared.leases.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, _, slot)) = leases.iter_mut().find(|(p, _, _)| key.starts_with(p.as_str())) {
            *slot = Some(LeaseSlot { id: resp.id(), granted: Instant::now(), ttl });
        }
        Ok(Some(resp.id()))
    }

    /// Run one transaction, counting it and noting whether etcd answered.
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Io("the store is closed".into()));
        }
        let started = Instant::now();
        let resp = match self
            .shared
            .pool
            .call("transaction", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return Err(self.shared.failed(e)),
        };
        self.shared.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).record_commit(1, started.elapsed().as_secs_f64());
        self.shared.answered();
        Ok(resp)
    }

    /// The value a key had when a write was refused (the else branch's read).
    fn refused_with(&self, key: &str, resp: &etcd_client::TxnResponse) -> Option<Arc<KeyValue>> {
        resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                Arc::new(KeyValue::new(key.to_string(), decode_with(self.shared.codec.as_ref(), key, kv.value()), kv.create_revision(), kv.mod_revision()))
            }),
            _ => None,
        })
    }

    /// Why a write's guard failed: the key's current value (once the index has it, so
    /// the caller's retry reads it) or its absence.
    async fn refusal(&self, key: &str, resp: &etcd_client::TxnResponse) -> StoreError {
        match self.refused_with(key, resp) {
            Some(current) => match self.shared.wait_applied(current.mod_revision).await {
                Ok(()) => StoreError::Conflict { current },
                Err(e) => e,
            },
            None => StoreError::NotFound,
        }
    }

    /// The index's value of `key` if it is the one written at `revision`, else `fresh`
    /// (so a write's answer shares the index's decoded cache).
    fn indexed_or(&self, key: &str, revision: Revision, fresh: impl FnOnce() -> Arc<KeyValue>) -> Arc<KeyValue> {
        let st = self.shared.index.read();
        st.get(key).filter(|kv| kv.mod_revision == revision).cloned().unwrap_or_else(fresh)
    }
}

impl Shared {
    /// Note that etcd answered.
    fn answered(&self) {
        let mut trouble = self.trouble.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if trouble.is_some() {
            *trouble = None;
        }
    }

    /// Note a failed call (the backend is unhealthy until the watch hears from etcd).
    fn failed(&self, e: StoreError) -> StoreError {
        *self.trouble.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
        e
    }

    /// Wait until the index has applied `revision` (a write's own, or etcd's current).
    async fn wait_applied(&self, revision: Revision) -> Result<(), StoreError> {
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(SYNC_TIMEOUT, rx.wait_for(|r| *r >= revision)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(StoreError::Io("the store is closed".into())),
            Err(_) => Err(StoreError::Io(format!(
                "the watch cache did not reach revision {revision} within {}s (at {})",
                SYNC_TIMEOUT.as_secs(),
                *self.applied.borrow()
            ))),
        }
    }

    /// Apply one watch event to the index and the history.
    fn apply(&self, ev: &etcd_client::Event) {
        let Some(kv) = ev.kv() else { return };
        let Some(key) = store_key(&self.prefix, kv.key()) else { return };
        let mut st = self.index.write();
        let revision = kv.mod_revision();
        if revision <= st.revision {
            // Already applied (a watch resumed from an earlier revision).
            return;
        }
        st.revision = revision;
        if key == SYNC_KEY {
            // A consistent read's mark: everything before it has been delivered.
            return;
        }
        let Some(event) = event_of(ev, &key, self.codec.as_ref(), || st.get(&key).cloned()) else { return };
        if event.kind == EventKind::Deleted {
            st.take(&key);
        } else {
            st.put(key.clone(), event.kv.clone());
        }
        // Published under the state lock, so lists at a revision see the ring and the
        // index agree (as the embedded backend does).
        self.index.history.publish(Arc::new(event));
    }

    /// Tell waiters how far the index is.
    fn announce(&self) {
        let revision = self.index.read().revision;
        self.applied.send_if_modified(|r| {
            if *r < revision {
                *r = revision;
                true
            } else {
                false
            }
        });
    }
}

/// Everything under the prefix, read at one revision (in pages, as upstream's reflector).
async fn list_all(
    pool: &Pool,
    prefix: &str,
    codec: Option<&Arc<dyn ValueCodec>>,
) -> Result<(std::collections::BTreeMap<String, Arc<KeyValue>>, Revision), StoreError> {
    let root = format!("{prefix}/");
    let end = prefix_end(&root);
    let mut map = std::collections::BTreeMap::new();
    let mut from = root.clone().into_bytes();
    let mut revision = 0;
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(10_000);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let resp = pool
            .call("list", |c| {
                let (from, opts) = (from.clone(), opts.clone());
                async move { c.kv_client().max_decoding_message_size(MAX_MESSAGE).get(from, Some(opts)).await }
            })
            .await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        let kvs = resp.kvs();
        for kv in kvs {
            let Some(key) = store_key(prefix, kv.key()) else { continue };
            if key == SYNC_KEY {
                continue;
            }
            let value = decode_with(codec, &key, kv.value());
            map.insert(key.clone(), Arc::new(KeyValue::new(key, value, kv.create_revision(), kv.mod_revision())));
        }
        match (resp.more(), kvs.last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((map, revision))
}

/// Read etcd's recent history (up to [`PRELOAD_REVISIONS`] back from `listed`, the
/// revision `map` was listed at) into events for the watch history, by watching from
/// there until a mark written now comes by. Changes made meanwhile (after `listed`) are
/// applied to `map`. Returns the events, the revision before the first, and the
/// revision `map` is now current at; `None` if there is no history to read.
async fn preload(
    pool: &Pool,
    prefix: &str,
    codec: Option<&Arc<dyn ValueCodec>>,
    map: &mut std::collections::BTreeMap<String, Arc<KeyValue>>,
    listed: Revision,
    capacity: usize,
) -> Result<Option<(Vec<Arc<Event>>, Revision, Revision)>, StoreError> {
    let back = PRELOAD_REVISIONS.min(capacity as i64);
    let mut start = (listed - back + 1).max(1);
    if start > listed {
        return Ok(None);
    }
    let root = format!("{prefix}/");
    let mark_key = format!("{prefix}{}", SYNC_KEY.trim_start_matches(STORE_ROOT));
    for _attempt in 0..3 {
        let (member, client) = pool.pick();
        let opts = WatchOptions::new().with_range(prefix_end(&root)).with_prev_key().with_start_revision(start);
        let mut stream =
            match tokio::time::timeout(CALL_TIMEOUT, client.watch_client().max_decoding_message_size(MAX_MESSAGE).watch(root.clone(), Some(opts))).await {
                Ok(Ok(s)) => s,
                _ => {
                    pool.failed(member);
                    continue;
                }
            };
        // The mark: once it comes by, everything before it has.
        let mark = pool.call("history mark", |mut c| {
            let k = mark_key.clone();
            async move { c.put(k, "", None).await }
        });
        let mark = mark.await?.header().map(|h| h.revision()).unwrap_or(listed);
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut current = std::collections::BTreeMap::new();
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let msg =
                tokio::time::timeout_at(deadline, stream.message()).await.map_err(|_| unavailable("reading etcd's history timed out"))?.map_err(unavailable)?;
            let Some(resp) = msg else { return Err(unavailable("the history watch ended")) };
            if resp.canceled() {
                if resp.compact_revision() > start && resp.compact_revision() <= listed {
                    // Compacted before `start`: read from what etcd still has.
                    start = resp.compact_revision();
                    break;
                }
                return Ok(None);
            }
            let mut done = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let Some(key) = store_key(prefix, kv.key()) else { continue };
                if key == SYNC_KEY {
                    done |= kv.mod_revision() >= mark;
                    continue;
                }
                let Some(event) = event_of(ev, &key, codec, || current.get(&key).cloned()) else {
                    current.remove(&key);
                    if kv.mod_revision() > listed {
                        map.remove(&key);
                    }
                    continue;
                };
                place(&mut current, &event);
                if event.revision() > listed {
                    place(map, &event);
                }
                events.push(Arc::new(event));
            }
            if done {
                return Ok(Some((events, start - 1, mark.max(listed))));
            }
        }
    }
    Ok(None)
}

/// The condition of an update or delete: the key's `mod_revision` is `expected`, or
/// (with none expected) the key exists.
fn guard(ek: &str, expected: Option<Revision>) -> Compare {
    match expected {
        Some(r) => Compare::mod_revision(ek, CompareOp::Equal, r),
        None => Compare::create_revision(ek, CompareOp::Greater, 0),
    }
}

/// The store key of an etcd key under `prefix` (`<prefix>/x` → `/registry/x`).
fn store_key(prefix: &str, etcd_key: &[u8]) -> Option<String> {
    let rest = std::str::from_utf8(etcd_key).ok()?.strip_prefix(prefix)?;
    Some(format!("{STORE_ROOT}{rest}"))
}

/// The change an etcd event is, for store key `key`. `known` gives the value the key had
/// where etcd sent none (it is asked only then). `None`: the delete of a key never seen.
fn event_of(ev: &etcd_client::Event, key: &str, codec: Option<&Arc<dyn ValueCodec>>, known: impl FnOnce() -> Option<Arc<KeyValue>>) -> Option<Event> {
    let kv = ev.kv()?;
    let revision = kv.mod_revision();
    let prev = match ev.prev_kv() {
        Some(p) => Some(Arc::new(KeyValue::new(key.to_string(), decode_with(codec, key, p.value()), p.create_revision(), p.mod_revision()))),
        None => known(),
    };
    Some(match ev.event_type() {
        etcd_client::EventType::Put => {
            let new = Arc::new(KeyValue::new(key.to_string(), decode_with(codec, key, kv.value()), kv.create_revision(), revision));
            let kind = if kv.create_revision() == revision { EventKind::Created } else { EventKind::Updated };
            Event { kind, kv: new, prev }
        }
        etcd_client::EventType::Delete => {
            let last = prev?;
            Event {
                kind: EventKind::Deleted,
                kv: Arc::new(KeyValue::new(key.to_string(), last.value.clone(), last.create_revision, revision)),
                prev: Some(last),
            }
        }
    })
}

/// Apply a change to a map of current values.
fn place(map: &mut std::collections::BTreeMap<String, Arc<KeyValue>>, ev: &Event) {
    if ev.kind == EventKind::Deleted {
        map.remove(&ev.kv.key);
    } else {
        map.insert(ev.kv.key.clone(), ev.kv.clone());
    }
}

/// A stored value as the layer above reads it.
fn decode_with(codec: Option<&Arc<dyn ValueCodec>>, key: &str, stored: &[u8]) -> Bytes {
    match codec {
        Some(c) => c.decode(key, stored),
        None => Bytes::copy_from_slice(stored),
    }
}

/// The end of the range of keys that start with `prefix` (etcd's `GetPrefixRangeEnd`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The one watch that feeds the index: resumes after breaks, relists after compaction.
async fn run_watch(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let root = format!("{}/", shared.prefix);
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let from = shared.index.read().revision + 1;
        let opts = WatchOptions::new().with_range(prefix_end(&root)).with_prev_key().with_start_revision(from);
        let (member, client) = shared.pool.pick();
        let mut watcher = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            s = tokio::time::timeout(CALL_TIMEOUT, watcher.watch(root.clone(), Some(opts))) => s,
        };
        let mut stream = match stream {
            Ok(Ok(s)) => s,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer".to_string(),
                };
                shared.pool.failed(member);
                shared.failed(unavailable(why));
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let mut compacted = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                msg = stream.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            compacted = resp.compact_revision() > 0;
                            if !compacted {
                                shared.pool.failed(member);
                                shared.failed(unavailable(format!("watch canceled: {}", resp.cancel_reason())));
                            }
                            break;
                        }
                        shared.answered();
                        backoff = Duration::from_millis(100);
                        // Only events move the index's revision: progress notifications
                        // are not asked for, since etcd before 3.4.26 and 3.5.8 may send
                        // one ahead of events still to come (etcd issue 15220), and taking
                        // its revision would drop those events.
                        for ev in resp.events() {
                            shared.apply(ev);
                        }
                        shared.announce();
                    }
                    Ok(None) => {
                        shared.pool.failed(member);
                        shared.failed(unavailable("watch stream ended"));
                        break;
                    }
                    Err(e) => {
                        shared.pool.failed(member);
                        shared.failed(unavailable(e));
                        break;
                    }
                }
            }
        }
        if compacted {
            // The events since our revision are gone from etcd: list again, and end every
            // watch of this server so its client relists too.
            match list_all(&shared.pool, &shared.prefix, shared.codec.as_ref()).await {
                Ok((map, revision)) => {
                    let mut st = shared.index.write();
                    *st = State::new(map, revision);
                    shared.index.history.reset(revision);
                    drop(st);
                    shared.announce();
                    tracing::warn!(revision, "etcd compacted past the watch cache: listed again; watches restart");
                }
                Err(e) => {
                    shared.failed(e);
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// kube-apiserver's compactor: every `interval`, a transaction on `compact_rev_key`
/// elects one of the servers sharing etcd (the one whose view of the key's version is
/// current), which compacts to the revision it recorded one interval earlier.
async fn run_compactor(pool: Pool, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut version = 0i64;
    let mut revision = 0i64;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match compact_once(&pool, version, revision).await {
            Ok((v, r)) => {
                version = v;
                revision = r;
            }
            Err(e) => tracing::warn!(error = %e, "etcd compaction failed"),
        }
    }
}

/// One round of [`run_compactor`]: returns the key's version and the revision to
/// compact to next time.
async fn compact_once(pool: &Pool, version: i64, revision: i64) -> Result<(i64, i64), StoreError> {
    let txn = Txn::new()
        .when([Compare::version(COMPACT_REV_KEY, CompareOp::Equal, version)])
        .and_then([TxnOp::put(COMPACT_REV_KEY, revision.to_string(), None)])
        .or_else([TxnOp::get(COMPACT_REV_KEY, None)]);
    let resp = pool
        .call("compaction", |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await?;
    let current = resp.header().map(|h| h.revision()).unwrap_or(0);
    if !resp.succeeded() {
        // Another server compacted meanwhile: follow its version.
        let v = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.version()),
                _ => None,
            })
            .unwrap_or(0);
        return Ok((v, current));
    }
    if revision > 0 {
        match pool.call("compaction", |mut c| async move { c.compact(revision, None).await }).await {
            Ok(_) => tracing::debug!(revision, "etcd compacted"),
            Err(e) if e.to_string().contains("compacted") => {}
            Err(e) => return Err(e),
        }
    }
    Ok((version + 1, current))
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Backend for EtcdBackend {
    fn get(&self, key: &str) -> Option<Arc<KeyValue>> {
        self.shared.index.get(key)
    }

    fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> ListResult {
        self.shared.index.list(prefix, after, limit)
    }

    fn list_at(&self, prefix: &str, after: Option<&str>, limit: usize, revision: Revision) -> Result<ListResult, StoreError> {
        self.shared.index.list_at(prefix, after, limit, revision)
    }

    fn create(&self, key: String, value: Bytes) -> BoxFuture<'_, Result<Arc<KeyValue>, StoreError>> {
        Box::pin(async move {
            let ek = self.etcd_key(&key)?;
            let lease = self.lease_for(&key).await?;
            let put = lease.map(|id| PutOptions::new().with_lease(id));
            let txn = Txn::new()
                .when([Compare::create_revision(ek.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(ek.clone(), self.stored(&key, &value), put)])
                .or_else([TxnOp::get(ek, None)]);
            let resp = self.txn(txn).await?;
            if !resp.succeeded() {
                if let Some(current) = self.refused_with(&key, &resp) {
                    self.shared.wait_applied(current.mod_revision).await?;
                }
                return Err(StoreError::AlreadyExists);
            }
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            self.shared.wait_applied(revision).await?;
            Ok(self.indexed_or(&key, revision, || Arc::new(KeyValue::new(key.clone(), value, revision, revision))))
        })
    }

    fn update(&self, key: String, value: Bytes, expected: Option<Revision>) -> BoxFuture<'_, Result<Arc<KeyValue>, StoreError>> {
        Box::pin(async move {
            let ek = self.etcd_key(&key)?;
            let lease = self.lease_for(&key).await?;
            let mut put = PutOptions::new().with_prev_key();
            if let Some(id) = lease {
                put = put.with_lease(id);
            }
            let guard = guard(&ek, expected);
            let txn = Txn::new().when([guard]).and_then([TxnOp::put(ek.clone(), self.stored(&key, &value), Some(put))]).or_else([TxnOp::get(ek, None)]);
            let resp = self.txn(txn).await?;
            if !resp.succeeded() {
                return Err(self.refusal(&key, &resp).await);
            }
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            let created = resp
                .op_responses()
                .into_iter()
                .find_map(|r| match r {
                    TxnOpResponse::Put(p) => p.prev_key().map(|kv| kv.create_revision()),
                    _ => None,
                })
                .unwrap_or(revision);
            self.shared.wait_applied(revision).await?;
            Ok(self.indexed_or(&key, revision, || Arc::new(KeyValue::new(key.clone(), value, created, revision))))
        })
    }

    fn delete(&self, key: String, expected: Option<Revision>) -> BoxFuture<'_, Result<Arc<KeyValue>, StoreError>> {
        Box::pin(async move {
            let ek = self.etcd_key(&key)?;
            let guard = guard(&ek, expected);
            let txn =
                Txn::new().when([guard]).and_then([TxnOp::delete(ek.clone(), Some(DeleteOptions::new().with_prev_key()))]).or_else([TxnOp::get(ek, None)]);
            let resp = self.txn(txn).await?;
            if !resp.succeeded() {
                return Err(self.refusal(&key, &resp).await);
            }
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            let last = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Delete(d) => d.prev_kvs().first().map(|kv| (decode_with(self.shared.codec.as_ref(), &key, kv.value()), kv.create_revision())),
                _ => None,
            });
            self.shared.wait_applied(revision).await?;
            let (value, created) = last.ok_or(StoreError::NotFound)?;
            Ok(Arc::new(KeyValue::new(key, value, created, revision)))
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.shared.index.watch(prefix, after)
    }

    fn current_revision(&self) -> Revision {
        self.shared.index.revision()
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(StoreError::Io("the store is closed".into()));
            }
            // A linearizable read of one key returns etcd's current revision.
            let got = self
                .shared
                .pool
                .call("read of the current revision", |mut c| async move { c.get(COMPACT_REV_KEY, Some(GetOptions::new().with_count_only())).await })
                .await;
            let resp = match got {
                Ok(r) => r,
                Err(e) => return Err(self.shared.failed(e)),
            };
            self.shared.answered();
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            if self.current_revision() >= revision {
                return Ok(());
            }
            // Changes under the prefix up to `revision` are normally on their way.
            let mut rx = self.shared.applied.subscribe();
            if tokio::time::timeout(SYNC_GRACE, rx.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok()) {
                return Ok(());
            }
            // etcd's revision moved without a change under the prefix (a write elsewhere
            // in etcd): mark the point with a write of our own, which the watch delivers
            // after everything before it.
            let ek = self.etcd_key(SYNC_KEY)?;
            let put = self.shared.pool.call("consistent read mark", |mut c| {
                let ek = ek.clone();
                async move { c.put(ek, "", None).await }
            });
            let mark = put.await.map_err(|e| self.shared.failed(e))?.header().map(|h| h.revision()).unwrap_or(revision);
            self.shared.wait_applied(mark.max(revision)).await
        })
    }

    fn oldest_watchable(&self) -> Revision {
        self.shared.index.history.floor()
    }

    fn compact(&self, revision: Revision) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // Watches cannot resume from before it, from this server's history or etcd's.
            self.shared.index.history.compact(revision);
            match self.shared.pool.call("compaction", |mut c| async move { c.compact(revision, None).await }).await {
                Ok(_) => Ok(()),
                // Compacting to a revision etcd already compacted past is done already.
                Err(e) if e.to_string().contains("compacted") => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn count(&self, prefix: &str) -> usize {
        self.shared.index.count(prefix)
    }

    fn stats(&self) -> StoreStats {
        self.shared.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn healthy(&self) -> Result<(), String> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err("the store is closed".into());
        }
        match self.shared.trouble.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.shared.closed.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end("/registry/"), b"/registry0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
