//! What the table and the policies share: an in-memory view of some kinds, filled from
//! the store and kept current by a lasting watch of each ([`keep`]); on a joined node,
//! filled and kept through the API ([`keep_from`]).

use std::sync::Arc;

use nanokube_api::resources;
use nanokube_apiserver::cluster::Cluster;
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
            objects.extend(list.items.iter().map(|o| o.to_value()));
        }
    }
    cache.replace(objects);
}

/// Fill `cache` through `cluster` (an API client: a joined node's) and keep it current
/// until `shutdown`: list every kind, then watch each from its list's resourceVersion;
/// when any watch ends (its timeout, a 410, the server gone) everything is listed again.
pub(crate) async fn keep_from<C: Cache>(cache: Arc<C>, cluster: Arc<dyn Cluster>, mut shutdown: watch::Receiver<bool>) {
    let defs: Vec<&'static resources::ResourceDef> = C::KINDS.iter().filter_map(|(g, p)| resources::find(g, "v1", p)).collect();
    loop {
        let listed = {
            let (cluster, defs) = (cluster.clone(), defs.clone());
            // The client's reads block: off the runtime's workers.
            tokio::task::spawn_blocking(move || defs.iter().map(|d| cluster.list(d, None, "").map(|l| (*d, l))).collect::<Result<Vec<_>, _>>()).await
        };
        let lists = match listed {
            Ok(Ok(lists)) => lists,
            Ok(Err(e)) => {
                tracing::warn!("listing Services and their endpoints: {}", e.message);
                if pause(&mut shutdown).await {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        let mut objects = Vec::new();
        let mut starts = Vec::new();
        for (def, list) in lists {
            starts.push((def, list.resource_version));
            objects.extend(list.items.into_iter().map(|mut o| {
                // List items carry no kind; the cache tells kinds apart by it.
                o["kind"] = def.kind.into();
                o
            }));
        }
        cache.replace(objects);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<(String, Value)>>(256);
        let mut tasks = Vec::new();
        for (def, rv) in starts {
            let (cluster, tx) = (cluster.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                if let Ok(mut w) = cluster.watch(def, None, "", &rv).await {
                    while let Some(Ok((ty, mut obj))) = w.next().await {
                        obj["kind"] = def.kind.into();
                        if tx.send(Some((ty, obj))).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = tx.send(None).await;
            }));
        }
        drop(tx);
        let stop = loop {
            tokio::select! {
                _ = shutdown.changed() => break true,
                ev = rx.recv() => match ev {
                    Some(Some((ty, obj))) => cache.change(&obj, None, ty == "DELETED"),
                    _ => break false,
                },
            }
        };
        for t in tasks {
            t.abort();
        }
        if stop || pause(&mut shutdown).await {
            return;
        }
    }
}

/// A second's pause before listing again; true when shutdown came first.
async fn pause(shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = shutdown.changed() => true,
        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => false,
    }
}
