//! The SQLite backend against a real database file: revisions, CAS, watch, restart, compaction.

use std::sync::Arc;

use bytes::Bytes;
use nanokube_store::sqlite::{SqliteBackend, SqliteOptions};
use nanokube_store::{Backend, EventKind, StoreError};

fn open(dir: &std::path::Path, history: usize) -> SqliteBackend {
    SqliteBackend::open(SqliteOptions { path: Some(dir.join("state.db")), history, ..Default::default() }).unwrap()
}

#[tokio::test]
async fn revisions_cas_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rev_b;
    {
        let s = open(dir.path(), 100);
        let a = s.create("/r/a".into(), Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(a.mod_revision, 1);
        assert!(matches!(s.create("/r/a".into(), Bytes::from_static(b"x")).await, Err(StoreError::AlreadyExists)));
        let a2 = s.update("/r/a".into(), Bytes::from_static(b"2"), Some(1)).await.unwrap();
        assert_eq!((a2.create_revision, a2.mod_revision), (1, 2));
        assert!(matches!(s.update("/r/a".into(), Bytes::from_static(b"3"), Some(1)).await, Err(StoreError::Conflict { .. })));
        rev_b = s.create("/r/b".into(), Bytes::from_static(b"b")).await.unwrap().mod_revision;
        s.create("/r/c".into(), Bytes::from_static(b"c")).await.unwrap();
        let d = s.delete("/r/c".into(), None).await.unwrap();
        assert_eq!(d.value.as_ref(), b"c");
        assert!(matches!(s.delete("/r/c".into(), None).await, Err(StoreError::NotFound)));
    }
    let s = open(dir.path(), 100);
    assert_eq!(s.current_revision(), 5);
    assert_eq!(s.get("/r/a").unwrap().value.as_ref(), b"2");
    assert_eq!(s.get("/r/b").unwrap().mod_revision, rev_b);
    assert!(s.get("/r/c").is_none());
    // The watch history survives a restart: replay from revision 0.
    let mut w = s.watch("/r/", 0).unwrap();
    let kinds: Vec<_> = [(); 5].iter().map(|_| ()).collect();
    let mut seen = Vec::new();
    for _ in kinds {
        let ev = w.next().await.unwrap().unwrap();
        seen.push((ev.kind, ev.revision()));
    }
    assert_eq!(seen, vec![(EventKind::Created, 1), (EventKind::Updated, 2), (EventKind::Created, 3), (EventKind::Created, 4), (EventKind::Deleted, 5)]);
}

#[tokio::test]
async fn list_pages_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 100);
    for i in 0..10 {
        s.create(format!("/p/{i:02}"), Bytes::from(vec![i as u8])).await.unwrap();
    }
    s.create("/q/x".into(), Bytes::new()).await.unwrap();
    let page = s.list("/p/", None, 4);
    assert_eq!(page.items.len(), 4);
    assert_eq!(page.remaining, 6);
    let next = s.list("/p/", Some(&page.items[3].key), 4);
    assert_eq!(next.items[0].key, "/p/04");
    let all = s.list("/p/", None, 0);
    assert_eq!(all.items.len(), 10);
    assert_eq!(all.revision, 11);
    assert_eq!(s.count("/p/"), 10);
}

#[tokio::test]
async fn concurrent_writers_share_commits_and_watchers_see_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path(), 10_000));
    let mut w = s.watch("/c/", 0).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                s.create(format!("/c/{t}-{i}"), Bytes::from_static(b"v")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last = 0;
    for _ in 0..400 {
        let ev = w.next().await.unwrap().unwrap();
        assert!(ev.revision() > last, "events in revision order");
        last = ev.revision();
    }
    assert_eq!(last, 400);
}

#[tokio::test]
async fn compaction_expires_old_watches() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 3);
    for i in 0..6 {
        s.create(format!("/k/{i}"), Bytes::new()).await.unwrap();
    }
    // Only the last three events are retained.
    assert!(matches!(s.watch("/k/", 1), Err(StoreError::Compacted { .. })));
    assert!(s.watch("/k/", 3).is_ok());
    s.compact(5).await.unwrap();
    assert!(matches!(s.watch("/k/", 4), Err(StoreError::Compacted { .. })));
    assert!(matches!(s.watch("/k/", 99), Err(StoreError::FutureRevision { .. })));
    drop(s);
    let s = open(dir.path(), 3);
    assert_eq!(s.current_revision(), 6);
    assert_eq!(s.list("/k/", None, 0).items.len(), 6);
}

#[tokio::test]
async fn list_at_an_earlier_revision_undoes_later_changes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 100);
    for k in ["a", "b", "c", "d"] {
        s.create(format!("/s/{k}"), Bytes::from(k.to_string())).await.unwrap();
    }
    let snapshot = s.current_revision();
    s.update("/s/a".into(), Bytes::from_static(b"a2"), None).await.unwrap();
    s.delete("/s/b".into(), None).await.unwrap();
    s.create("/s/bb".into(), Bytes::from_static(b"new")).await.unwrap();
    s.delete("/s/c".into(), None).await.unwrap();
    s.create("/s/c".into(), Bytes::from_static(b"c2")).await.unwrap();
    s.create("/t/other".into(), Bytes::new()).await.unwrap();

    let then = s.list_at("/s/", None, 0, snapshot).unwrap();
    let seen: Vec<_> = then.items.iter().map(|kv| (kv.key.as_str(), kv.value.as_ref(), kv.mod_revision)).collect();
    assert_eq!(seen, vec![("/s/a", &b"a"[..], 1), ("/s/b", b"b", 2), ("/s/c", b"c", 3), ("/s/d", b"d", 4)]);
    assert_eq!(then.revision, snapshot);
    // Paging through the snapshot: after a key, with a limit and the count that remains.
    let page = s.list_at("/s/", Some("/s/a"), 2, snapshot).unwrap();
    assert_eq!(page.items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(), vec!["/s/b", "/s/c"]);
    assert_eq!(page.remaining, 1);
    // At the newest revision it equals a plain list.
    let now = s.list_at("/s/", None, 0, s.current_revision()).unwrap();
    assert_eq!(now.items.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), s.list("/s/", None, 0).items.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>());
    assert!(matches!(s.list_at("/s/", None, 0, s.current_revision() + 1), Err(StoreError::FutureRevision { .. })));

    // Once the changes since the snapshot are compacted away, it is gone.
    s.compact(s.current_revision()).await.unwrap();
    assert!(matches!(s.list_at("/s/", None, 0, snapshot), Err(StoreError::Compacted { .. })));
}
