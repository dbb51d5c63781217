//! What the table and the policies share: an in-memory view of some kinds, filled from
//! the store and kept current by a lasting watch of each.

use std::sync::Arc;

use nanokube_api::resources;
use nanokube_apiserver::registry::{decode, ListOptions, Registry};
use nanokube_store::follow::{follow, Change};
use nanokube_store::EventKind;
use serde_json::Value;
use tokio::sync::watch;

/// A view kept by [`keep`].
pub(crate) trait Cache: Send + Sync + 'static {
    /// The kinds it holds, as (group, plural) of version v1.
    const KINDS: &'static [(&'static str, &'static str)];
    /// Replace everything with `objects` (every object of the kinds).
    fn replace(&self, objects: Vec<Value>);
    /// Take in one change: `obj` as it is now (as it last was, when `deleted`), `prev` as
    /// it was before.
    fn change(&self, obj: &Value, prev: Option<&Value>, deleted: bool);
}

/// Fill `cache` from `registry` and keep it current until `shutdown`.
pub(crate) async fn keep<C: Cache>(cache: Arc<C>, registry: Arc<Registry>, shutdown: watch::Receiver<bool>) {
    let store = registry.store().clone();
    let start = store.current_revision();
    reload(&*cache, &registry);
    let mut tasks = Vec::new();
    for (group, plural) in C::KINDS {
        let Some(def) = resources::find(group, "v1", plural) else { continue };
        let (cache, store, registry, sd) = (cache.clone(), store.clone(), registry.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            follow(store, &def.key_prefix(), start, sd, |change| {
                match change {
                    Change::Resync => reload(&*cache, &registry),
                    Change::Event(ev) => {
                        if let Ok(obj) = decode(&ev.kv) {
                            let prev = ev.prev.as_ref().and_then(|p| decode(p).ok());
                            cache.change(obj.value(), prev.as_ref().map(|p| p.value()), ev.kind == EventKind::Deleted);
                        }
                    }
                }
                true
            })
            .await
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn reload<C: Cache>(cache: &C, registry: &Registry) {
    let mut objects = Vec::new();
    for (group, plural) in C::KINDS {
        let Some(def) = resources::find(group, "v1", plural) else { continue };
        if let Ok(list) = registry.list(def, None, &ListOptions::default()) {
            objects.extend(list.items.iter().map(|o| o.value().clone()));
        }
    }
    cache.replace(objects);
}
