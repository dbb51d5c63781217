//! The same store tests against both backends: SQLite on a real database file, and etcd
//! as real members on loopback ports (the `etcd` binary of Debian's etcd-server). CAS,
//! paging, watch order under concurrent writers, compaction, lists at a revision and a
//! restart; then what only the etcd backend has: several servers on one etcd, leases,
//! etcd's own compaction, and etcd going away and coming back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nanokube_store::etcd::{EtcdBackend, EtcdOptions};
use nanokube_store::local_etcd::LocalEtcd;
use nanokube_store::sqlite::{SqliteBackend, SqliteOptions};
use nanokube_store::{Backend, EventKind, StoreError};

/// Where a backend under test keeps its data, so it can be opened again.
enum Place {
    Sqlite(tempfile::TempDir),
    Etcd(LocalEtcd),
}

impl Place {
    fn sqlite() -> Place {
        Place::Sqlite(tempfile::tempdir().unwrap())
    }

    fn etcd() -> Place {
        Place::Etcd(LocalEtcd::start(1).unwrap())
    }

    async fn open(&self, history: usize) -> Arc<dyn Backend> {
        match self {
            Place::Sqlite(dir) => {
                Arc::new(SqliteBackend::open(SqliteOptions { path: Some(dir.path().join("state.db")), history, ..Default::default() }).unwrap())
            }
            Place::Etcd(etcd) => Arc::new(
                EtcdBackend::open(EtcdOptions { endpoints: etcd.endpoints(), history, compaction_interval: Duration::ZERO, ..Default::default() })
                    .await
                    .unwrap(),
            ),
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

async fn cas_and_restart(place: Place) {
    let (r0, rev_b);
    {
        let s = place.open(100).await;
        r0 = s.current_revision();
        let a = s.create("/registry/r/a".into(), b("1")).await.unwrap();
        assert_eq!(a.mod_revision, r0 + 1);
        assert_eq!(s.get("/registry/r/a").unwrap().value.as_ref(), b"1", "a write is readable at once");
        assert!(matches!(s.create("/registry/r/a".into(), b("x")).await, Err(StoreError::AlreadyExists)));
        let a2 = s.update("/registry/r/a".into(), b("2"), Some(r0 + 1)).await.unwrap();
        assert_eq!((a2.create_revision, a2.mod_revision), (r0 + 1, r0 + 2));
        match s.update("/registry/r/a".into(), b("3"), Some(r0 + 1)).await {
            Err(StoreError::Conflict { current }) => assert_eq!(current.mod_revision, r0 + 2),
            other => panic!("stale update: {other:?}"),
        }
        assert!(matches!(s.update("/registry/r/none".into(), b("3"), None).await, Err(StoreError::NotFound)));
        assert!(matches!(s.delete("/registry/r/a".into(), Some(r0 + 1)).await, Err(StoreError::Conflict { .. })));
        rev_b = s.create("/registry/r/b".into(), b("b")).await.unwrap().mod_revision;
        s.create("/registry/r/c".into(), b("c")).await.unwrap();
        let d = s.delete("/registry/r/c".into(), None).await.unwrap();
        assert_eq!((d.value.as_ref(), d.mod_revision), (&b"c"[..], r0 + 5));
        assert!(matches!(s.delete("/registry/r/c".into(), None).await, Err(StoreError::NotFound)));
        s.close().await.unwrap();
    }
    let s = place.open(100).await;
    // The etcd backend writes a mark as it reads etcd's history back: one revision more.
    let r1 = s.current_revision();
    assert!(r1 == r0 + 5 || (matches!(place, Place::Etcd(_)) && r1 == r0 + 6), "{r1} after {r0}");
    assert_eq!(s.get("/registry/r/a").unwrap().value.as_ref(), b"2");
    assert_eq!(s.get("/registry/r/b").unwrap().mod_revision, rev_b);
    assert!(s.get("/registry/r/c").is_none());
    // Watches from now on see what follows, in order.
    let mut w = s.watch("/registry/r/", s.current_revision()).unwrap();
    s.update("/registry/r/b".into(), b("b2"), None).await.unwrap();
    s.delete("/registry/r/b".into(), None).await.unwrap();
    let e1 = w.next().await.unwrap().unwrap();
    let e2 = w.next().await.unwrap().unwrap();
    assert_eq!((e1.kind, e1.revision(), e2.kind, e2.revision()), (EventKind::Updated, r1 + 1, EventKind::Deleted, r1 + 2));
    assert_eq!(e2.kv.value.as_ref(), b"b2", "a deletion carries the last value");
    assert_eq!(e2.prev.as_ref().map(|p| p.mod_revision), Some(r1 + 1));
    // The history from before the restart is there again: a watch from the start
    // replays every change, as after a restart of the embedded store.
    let mut replay = s.watch("/registry/r/", r0).unwrap();
    let mut kinds = Vec::new();
    for _ in 0..7 {
        kinds.push(replay.next().await.unwrap().unwrap().kind);
    }
    use EventKind::*;
    assert_eq!(kinds, [Created, Updated, Created, Created, Deleted, Updated, Deleted]);
}

async fn list_pages_in_key_order(place: Place) {
    let s = place.open(100).await;
    for i in 0..10 {
        s.create(format!("/registry/p/{i:02}"), Bytes::from(vec![i as u8])).await.unwrap();
    }
    s.create("/registry/q/x".into(), Bytes::new()).await.unwrap();
    let page = s.list("/registry/p/", None, 4);
    assert_eq!(page.items.len(), 4);
    assert_eq!(page.remaining, 6);
    let next = s.list("/registry/p/", Some(&page.items[3].key), 4);
    assert_eq!(next.items[0].key, "/registry/p/04");
    let all = s.list("/registry/p/", None, 0);
    assert_eq!(all.items.len(), 10);
    assert_eq!(all.revision, s.current_revision());
    assert_eq!(s.count("/registry/p/"), 10);
}

async fn concurrent_writers_and_watch_order(place: Place) {
    let s = place.open(10_000).await;
    let r0 = s.current_revision();
    let mut w = s.watch("/registry/c/", r0).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                s.create(format!("/registry/c/{t}-{i}"), b("v")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last = r0;
    let mut keys = std::collections::HashSet::new();
    for _ in 0..400 {
        let ev = w.next().await.unwrap().unwrap();
        assert!(ev.revision() > last, "events in revision order");
        last = ev.revision();
        assert!(keys.insert(ev.kv.key.clone()), "each event once");
    }
    assert_eq!(last, r0 + 400);
}

async fn compaction_expires_old_watches(place: Place) {
    let s = place.open(3).await;
    let r0 = s.current_revision();
    for i in 0..6 {
        s.create(format!("/registry/k/{i}"), Bytes::new()).await.unwrap();
    }
    // Only the last three events are retained.
    assert!(matches!(s.watch("/registry/k/", r0 + 1), Err(StoreError::Compacted { .. })));
    assert!(s.watch("/registry/k/", r0 + 3).is_ok());
    s.compact(r0 + 5).await.unwrap();
    assert!(matches!(s.watch("/registry/k/", r0 + 4), Err(StoreError::Compacted { .. })));
    assert!(matches!(s.watch("/registry/k/", r0 + 99), Err(StoreError::FutureRevision { .. })));
    s.close().await.unwrap();
    drop(s);
    let s = place.open(3).await;
    assert!(s.current_revision() >= r0 + 6);
    assert_eq!(s.list("/registry/k/", None, 0).items.len(), 6);
}

async fn list_at_an_earlier_revision(place: Place) {
    let s = place.open(100).await;
    for k in ["a", "b", "c", "d"] {
        s.create(format!("/registry/s/{k}"), b(k)).await.unwrap();
    }
    let snapshot = s.current_revision();
    s.update("/registry/s/a".into(), b("a2"), None).await.unwrap();
    s.delete("/registry/s/b".into(), None).await.unwrap();
    s.create("/registry/s/bb".into(), b("new")).await.unwrap();
    s.delete("/registry/s/c".into(), None).await.unwrap();
    s.create("/registry/s/c".into(), b("c2")).await.unwrap();
    s.create("/registry/t/other".into(), Bytes::new()).await.unwrap();

    let then = s.list_at("/registry/s/", None, 0, snapshot).unwrap();
    let seen: Vec<_> = then.items.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref())).collect();
    assert_eq!(seen, vec![("/registry/s/a", &b"a"[..]), ("/registry/s/b", b"b"), ("/registry/s/c", b"c"), ("/registry/s/d", b"d")]);
    assert_eq!(then.revision, snapshot);
    let page = s.list_at("/registry/s/", Some("/registry/s/a"), 2, snapshot).unwrap();
    assert_eq!(page.items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), vec!["/registry/s/b", "/registry/s/c"]);
    assert_eq!(page.remaining, 1);
    assert!(matches!(s.list_at("/registry/s/", None, 0, s.current_revision() + 1), Err(StoreError::FutureRevision { .. })));
    s.compact(s.current_revision()).await.unwrap();
    assert!(matches!(s.list_at("/registry/s/", None, 0, snapshot), Err(StoreError::Compacted { .. })));
}

macro_rules! both_backends {
    ($($name:ident),*) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name(super::Place::sqlite()).await })*
        }
        mod etcd {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Place::etcd()).await })*
        }
    };
}

both_backends!(cas_and_restart, list_pages_in_key_order, concurrent_writers_and_watch_order, compaction_expires_old_watches, list_at_an_earlier_revision);

/// Run `op` until it succeeds (etcd electing a leader answers "request timed out",
/// which may still have applied the write: a retry then finds it done).
async fn eventually_ok<F: std::future::Future<Output = Result<(), StoreError>>>(mut op: impl FnMut() -> F) {
    let mut last = None;
    for _ in 0..100 {
        match op().await {
            Ok(()) | Err(StoreError::AlreadyExists) | Err(StoreError::NotFound) => return,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never succeeded: {last:?}")
}

async fn open_etcd(etcd: &LocalEtcd, tweak: impl FnOnce(&mut EtcdOptions)) -> Arc<EtcdBackend> {
    let mut opts = EtcdOptions { endpoints: etcd.endpoints(), compaction_interval: Duration::ZERO, ..Default::default() };
    tweak(&mut opts);
    Arc::new(EtcdBackend::open(opts).await.unwrap())
}

/// Two servers on one etcd: a write on one is seen by the other's consistent read and
/// by its watch, and both refuse a stale write the other made stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd_see_each_others_writes() {
    let etcd = LocalEtcd::start(1).unwrap();
    let a = open_etcd(&etcd, |_| {}).await;
    let b_ = open_etcd(&etcd, |_| {}).await;
    let mut watch_b = b_.watch("/registry/configmaps/", b_.current_revision()).unwrap();
    let created = a.create("/registry/configmaps/default/x".into(), b("1")).await.unwrap();
    b_.sync().await.unwrap();
    assert_eq!(b_.get("/registry/configmaps/default/x").unwrap().mod_revision, created.mod_revision, "a consistent read on B sees A's write");
    let ev = watch_b.next().await.unwrap().unwrap();
    assert_eq!((ev.kind, ev.revision()), (EventKind::Created, created.mod_revision));
    // B updates; A's update from the old revision conflicts and reports B's value.
    b_.update("/registry/configmaps/default/x".into(), b("2"), Some(created.mod_revision)).await.unwrap();
    match a.update("/registry/configmaps/default/x".into(), b("3"), Some(created.mod_revision)).await {
        Err(StoreError::Conflict { current }) => assert_eq!(current.value.as_ref(), b"2"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.get("/registry/configmaps/default/x").unwrap().value.as_ref(), b"2", "after a conflict A reads the winner");
    // A write outside the prefix moves etcd's revision; sync still completes (through a
    // mark it writes under the prefix) and the index's revision follows etcd's.
    let mut raw = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
    let put = raw.put("/elsewhere/key", "v", None).await.unwrap();
    let etcd_rev = put.header().unwrap().revision();
    a.sync().await.unwrap();
    assert!(a.current_revision() >= etcd_rev);
    // The keys are where kube-apiserver puts them.
    let got = raw.get("/registry/configmaps/default/x", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"2");
}

/// `--etcd-prefix`, leases on Event keys, and upstream's compactor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_leases_and_compaction() {
    let etcd = LocalEtcd::start(1).unwrap();
    let s = open_etcd(&etcd, |o| {
        o.prefix = "/other/registry".into();
        o.leases = vec![("/registry/events/".into(), Duration::from_secs(3600))];
        o.compaction_interval = Duration::from_millis(300);
    })
    .await;
    s.create("/registry/events/default/e1".into(), b("{}")).await.unwrap();
    s.create("/registry/events/default/e2".into(), b("{}")).await.unwrap();
    s.create("/registry/pods/default/p".into(), b("{}")).await.unwrap();
    assert!(matches!(s.create("/outside".into(), b("x")).await, Err(StoreError::Unsupported(_))));
    let mut raw = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
    let e1 = raw.get("/other/registry/events/default/e1", None).await.unwrap().kvs()[0].lease();
    let e2 = raw.get("/other/registry/events/default/e2", None).await.unwrap().kvs()[0].lease();
    let pod = raw.get("/other/registry/pods/default/p", None).await.unwrap().kvs()[0].lease();
    assert!(e1 != 0 && e1 == e2, "events share one lease: {e1} {e2}");
    assert_eq!(pod, 0, "other objects have none");
    let ttl = raw.lease_time_to_live(e1, None).await.unwrap().ttl();
    assert!(ttl > 3600 && ttl <= 3660, "ttl {ttl}");
    // Two compactor rounds later, etcd has compacted (a read at revision 1 fails).
    let first = s.current_revision();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let old = raw.get("/other/registry/pods/default/p", Some(etcd_client::GetOptions::new().with_revision(first - 1))).await;
    assert!(old.is_err_and(|e| e.to_string().contains("compacted")), "etcd compacted by the compactor");
    let key = raw.get("compact_rev_key", None).await.unwrap();
    assert!(key.kvs()[0].version() >= 2, "compact_rev_key advanced as upstream's compactor does");
}

/// etcd goes away: writes fail with an error, health reports it, and everything resumes
/// when it comes back, watches without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_and_back() {
    let mut etcd = LocalEtcd::start(1).unwrap();
    let a = open_etcd(&etcd, |_| {}).await;
    a.create("/registry/x/1".into(), b("1")).await.unwrap();
    let mut w = a.watch("/registry/x/", a.current_revision()).unwrap();
    etcd.kill(0);
    let err = a.create("/registry/x/2".into(), b("2")).await.unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    assert!(a.healthy().is_err());
    assert!(a.sync().await.is_err());
    etcd.restart(0).unwrap();
    // The write path recovers.
    let mut ok = None;
    for _ in 0..100 {
        match a.create("/registry/x/2".into(), b("2")).await {
            Ok(kv) => {
                ok = Some(kv);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let kv = ok.expect("writes work again once etcd is back");
    let ev = w.next().await.unwrap().unwrap();
    assert_eq!(ev.revision(), kv.mod_revision, "the watch resumed without a gap");
    for _ in 0..50 {
        if a.healthy().is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.healthy().is_ok());
    // A second server's watch stream resumes across a restart of etcd with no gap.
    let c = open_etcd(&etcd, |_| {}).await;
    let mut wc = c.watch("/registry/x/", c.current_revision()).unwrap();
    etcd.kill(0);
    etcd.restart(0).unwrap();
    let mut last = None;
    for i in 3..8 {
        for _ in 0..100 {
            match a.create(format!("/registry/x/{i}"), b("v")).await {
                Ok(kv) => {
                    last = Some(kv.mod_revision);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    let last = last.unwrap();
    // Every event reaches C once, in order, across the restart.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|r| *r < last) {
        let ev = tokio::time::timeout(Duration::from_secs(20), wc.next()).await.unwrap().unwrap().unwrap();
        seen.push(ev.revision());
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    a.compact(last).await.unwrap();
    assert_eq!(c.list("/registry/x/", None, 0).items.len(), 7);
}

/// A server cut off from etcd while the others write and compact past it: when it comes
/// back it lists again, and its watches end with `Compacted` (their clients relist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_behind_compaction_relists() {
    let mut etcd = LocalEtcd::start(3).unwrap();
    let eps = etcd.endpoints();
    let a = open_etcd(&etcd, |o| o.endpoints = vec![eps[0].clone()]).await;
    let b_ = open_etcd(&etcd, |o| o.endpoints = vec![eps[2].clone()]).await;
    a.create("/registry/y/0".into(), b("0")).await.unwrap();
    b_.sync().await.unwrap();
    let mut wb = b_.watch("/registry/y/", b_.current_revision()).unwrap();
    etcd.kill(2);
    // If the member gone was the leader, writes wait for an election.
    for i in 1..5 {
        eventually_ok(|| async { a.create(format!("/registry/y/{i}"), b("v")).await.map(|_| ()) }).await;
    }
    eventually_ok(|| async { a.delete("/registry/y/0".into(), None).await.map(|_| ()) }).await;
    eventually_ok(|| a.compact(a.current_revision())).await;
    etcd.restart(2).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), wb.next()).await.expect("the watch ends").expect("with an error, not closed");
    assert!(matches!(ended, Err(StoreError::Compacted { .. })), "{ended:?}");
    b_.sync().await.unwrap();
    let keys: Vec<String> = b_.list("/registry/y/", None, 0).items.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec!["/registry/y/1", "/registry/y/2", "/registry/y/3", "/registry/y/4"], "B listed again");
    // New watches from the relisted revision work.
    let mut again = b_.watch("/registry/y/", b_.current_revision()).unwrap();
    a.create("/registry/y/5".into(), b("v")).await.unwrap();
    assert_eq!(again.next().await.unwrap().unwrap().kv.key, "/registry/y/5");
}
