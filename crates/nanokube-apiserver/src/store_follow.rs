//! Keeping an in-memory index of some stored objects current, as upstream's informers do
//! for the authorizers and filters that read them on every request.

use std::sync::Arc;

use nanokube_store::{Backend, Event, Revision};

/// Follow the keys under `prefix` from `from` on: `apply` each change to `target`, and
/// when the watch ends or falls out of the store's history, `resync` (a fresh list,
/// returning the revision it read at) and watch again. Ends at shutdown, or once
/// `target` is dropped.
pub fn follow<T: Send + Sync + 'static>(
    target: &Arc<T>,
    store: Arc<dyn Backend>,
    prefix: String,
    mut from: Revision,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    apply: impl Fn(&T, &Event) + Send + 'static,
    resync: impl Fn(&T, &dyn Backend, &str) -> Revision + Send + 'static,
) {
    let weak = Arc::downgrade(target);
    tokio::spawn(async move {
        loop {
            if let Ok(mut w) = store.watch(&prefix, from) {
                loop {
                    let ev = tokio::select! {
                        _ = shutdown.changed() => return,
                        ev = w.next() => ev,
                    };
                    let Some(Ok(ev)) = ev else { break };
                    let Some(t) = weak.upgrade() else { return };
                    apply(&t, &ev);
                }
            }
            let Some(t) = weak.upgrade() else { return };
            from = resync(&t, &*store, &prefix);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
}
