//! What only the SQLite backend does: its watch history survives a restart (the log is
//! replayed). The tests both backends pass are in `store_conformance.rs`.

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

/// A writer that knows the decoded form hands it over with the write: the key-value a
/// watcher receives has it already, and nothing decodes the bytes again.
#[tokio::test]
async fn a_write_with_its_decoded_form_reaches_watchers_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 100);
    let mut w = s.watch("/r/", 0).unwrap();
    let never = |_: &[u8]| -> Result<u32, ()> { panic!("decoded again") };
    s.create_decoded("/r/a".into(), Bytes::from_static(b"1"), Some(std::sync::Arc::new(1u32))).await.unwrap();
    s.update_decoded("/r/a".into(), Bytes::from_static(b"2"), None, Some(std::sync::Arc::new(2u32))).await.unwrap();
    for want in [1u32, 2] {
        let ev = w.next().await.unwrap().unwrap();
        assert_eq!(*ev.kv.decoded(never).unwrap(), want);
    }
    assert_eq!(*s.get("/r/a").unwrap().decoded(never).unwrap(), 2);
    // Without it, the first reader decodes.
    s.update("/r/a".into(), Bytes::from_static(b"3"), None).await.unwrap();
    assert_eq!(*s.get("/r/a").unwrap().decoded(|b| Ok::<u32, ()>(u32::from(b[0] - b'0'))).unwrap(), 3);
}
