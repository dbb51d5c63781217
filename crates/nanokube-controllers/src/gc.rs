//! The garbage collector: follows `metadata.ownerReferences` as upstream's does.
//!
//! - An object whose owners are all gone is deleted (background cascade); an owner that
//!   is gone is removed from dependents that still have other owners.
//! - An owner being deleted with the `orphan` finalizer has itself removed from its
//!   dependents' ownerReferences, then the finalizer removed (so it goes, they stay).
//! - An owner being deleted with `foregroundDeletion` has its dependents deleted (in the
//!   foreground too); the finalizer is removed once no dependent with
//!   `blockOwnerDeletion: true` remains.
//!
//! One watch over the whole store drives it; dependents are found by scanning the
//! owner's namespace (all namespaces for cluster-scoped owners).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nanokube_api::resources::{ResourceDef, ResourceTable};
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{decode, DeleteOptions, Obj, Registry, WriteOptions};
use nanokube_store::EventKind;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use nanokube_store::follow::{follow, Change};

const ORPHAN: &str = "orphan";
const FOREGROUND: &str = "foregroundDeletion";

/// The resource a storage key belongs to (the longest matching prefix), custom
/// resources included.
fn def_for_key(table: &ResourceTable, key: &str) -> Option<&'static ResourceDef> {
    table.stored().into_iter().filter(|d| key.starts_with(&d.key_prefix())).max_by_key(|d| d.key_prefix().len())
}

/// Whether `haystack` contains `needle` (a cheap test before decoding).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(haystack, needle).is_some()
}

fn owner_refs(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn ref_uid(r: &Value) -> &str {
    r.get("uid").and_then(Value::as_str).unwrap_or("")
}

/// What the collector is asked to look at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Work {
    /// An owner (uid, namespace) disappeared.
    Gone(String, String),
    /// An object (key) may need its finalizers processed or its owners checked.
    Object(String),
    /// Check everything.
    All,
}

/// The collector.
pub struct GarbageCollector {
    registry: Arc<Registry>,
}

impl GarbageCollector {
    /// A collector over a registry.
    pub fn new(registry: Arc<Registry>) -> Self {
        GarbageCollector { registry }
    }

    /// Whether the owner a reference names exists (with that uid). Unknown kinds count as
    /// existing: nothing is deleted on a guess.
    fn owner_exists(&self, dependent_ns: &str, r: &Value) -> bool {
        let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        let Some(def) = self.registry.resources().find_kind(group, kind) else { return true };
        let ns = if def.namespaced { dependent_ns } else { "" };
        match self.registry.get(def, ns, name) {
            Ok(o) => meta::uid(&o) == ref_uid(r),
            Err(e) => e.code != 404,
        }
    }

    /// Objects whose ownerReferences name `uid`, in `namespace` (or anywhere). Only
    /// objects whose stored bytes mention the uid are decoded.
    fn dependents(&self, uid: &str, namespace: Option<&str>) -> Result<Vec<(&'static ResourceDef, Obj)>, ApiError> {
        let mut out = Vec::new();
        let store = self.registry.store();
        for def in self.registry.resources().stored() {
            if namespace.is_some() && !def.namespaced {
                continue;
            }
            let ns = if def.namespaced { namespace } else { None };
            for kv in store.list(&def.namespace_prefix(ns), None, 0).items {
                if !contains(&kv.value, uid.as_bytes()) {
                    continue;
                }
                let obj = decode(&kv)?;
                if owner_refs(&obj).iter().any(|r| ref_uid(r) == uid) {
                    out.push((def, obj));
                }
            }
        }
        Ok(out)
    }

    async fn drop_owner_ref(&self, def: &ResourceDef, obj: &Value, uid: &str) -> Result<(), ApiError> {
        self.registry
            .update_with(def, meta::namespace(obj), meta::name(obj), &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                let refs: Vec<Value> = owner_refs(cur).into_iter().filter(|r| ref_uid(r) != uid).collect();
                let m = meta::metadata_mut(&mut next);
                m.remove("resourceVersion");
                if refs.is_empty() {
                    m.remove("ownerReferences");
                } else {
                    m.insert("ownerReferences".into(), json!(refs));
                }
                Ok(next)
            })
            .await
            .map(|_| ())
            .or_else(|e| if e.code == 404 { Ok(()) } else { Err(e) })
    }

    async fn delete(&self, def: &ResourceDef, obj: &Value, propagation: &str) -> Result<(), ApiError> {
        let opts = DeleteOptions { propagation: Some(propagation.into()), precondition_uid: Some(meta::uid(obj).into()), ..Default::default() };
        match self.registry.delete(def, meta::namespace(obj), meta::name(obj), &opts).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Dependents of a vanished owner: delete those left without owners, unlink the rest.
    async fn owner_gone(&self, uid: &str, namespace: &str) -> Result<(), ApiError> {
        let scope = if namespace.is_empty() { None } else { Some(namespace) };
        for (def, dep) in self.dependents(uid, scope)? {
            let others_alive = owner_refs(&dep).iter().any(|r| ref_uid(r) != uid && self.owner_exists(meta::namespace(&dep), r));
            if others_alive {
                self.drop_owner_ref(def, &dep, uid).await?;
            } else if !meta::is_deleting(&dep) {
                self.delete(def, &dep, "Background").await?;
            }
        }
        Ok(())
    }

    /// Process one object: GC finalizers if it is being deleted, then its own owners.
    async fn object(&self, key: &str) -> Result<(), ApiError> {
        let Some(kv) = self.registry.store().get(key) else { return Ok(()) };
        // Most objects have no owners and are not being deleted: nothing to decode.
        if !contains(&kv.value, b"\"ownerReferences\"") && !contains(&kv.value, b"\"deletionTimestamp\"") {
            return Ok(());
        }
        let Some(def) = def_for_key(self.registry.resources(), key) else { return Ok(()) };
        let obj = decode(&kv)?;
        let ns = meta::namespace(&obj).to_string();
        let uid = meta::uid(&obj).to_string();
        let scope = if def.namespaced { Some(ns.as_str()) } else { None };
        let fins = meta::finalizers(&obj);
        if meta::is_deleting(&obj) && fins.iter().any(|f| f == ORPHAN) {
            for (d, dep) in self.dependents(&uid, scope)? {
                self.drop_owner_ref(d, &dep, &uid).await?;
            }
            self.remove_finalizer(def, &obj, ORPHAN).await?;
            return Ok(());
        }
        if meta::is_deleting(&obj) && fins.iter().any(|f| f == FOREGROUND) {
            let deps = self.dependents(&uid, scope)?;
            let mut blocking = 0;
            for (d, dep) in &deps {
                let blocks = owner_refs(dep).iter().any(|r| ref_uid(r) == uid && r.get("blockOwnerDeletion") == Some(&json!(true)));
                if blocks {
                    blocking += 1;
                }
                if !meta::is_deleting(dep) {
                    self.delete(d, dep, "Foreground").await?;
                }
            }
            if blocking == 0 {
                self.remove_finalizer(def, &obj, FOREGROUND).await?;
            }
            return Ok(());
        }
        // An object whose owners have all vanished (e.g. deleted while we were not
        // watching) is collected.
        let refs = owner_refs(&obj);
        if !refs.is_empty() && !meta::is_deleting(&obj) && refs.iter().all(|r| !self.owner_exists(&ns, r)) {
            self.delete(def, &obj, "Background").await?;
        }
        Ok(())
    }

    async fn remove_finalizer(&self, def: &ResourceDef, obj: &Value, finalizer: &str) -> Result<(), ApiError> {
        self.registry
            .update_with(def, meta::namespace(obj), meta::name(obj), &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                let fins: Vec<String> = meta::finalizers(cur).into_iter().filter(|f| f != finalizer).collect();
                let m = meta::metadata_mut(&mut next);
                m.remove("resourceVersion");
                m.insert("finalizers".into(), json!(fins));
                Ok(next)
            })
            .await
            .map(|_| ())
            .or_else(|e| if e.code == 404 { Ok(()) } else { Err(e) })
    }

    async fn all(&self) -> Result<(), ApiError> {
        for def in self.registry.resources().stored() {
            for kv in self.registry.store().list(&def.key_prefix(), None, 0).items {
                self.object(&kv.key).await?;
            }
        }
        Ok(())
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
        let store = self.registry.store().clone();
        {
            let (tx, store, sd) = (tx.clone(), store.clone(), shutdown.clone());
            let start = store.current_revision();
            let table = self.registry.resources().clone();
            tokio::spawn(async move {
                follow(store, "/registry/", start, sd, |change| {
                    let Change::Event(ev) = change else {
                        return tx.send(Work::All).is_ok();
                    };
                    let work = if ev.kind == EventKind::Deleted {
                        let Ok(obj) = decode(&ev.kv) else { return true };
                        // Owners waiting in the foreground for this dependent look again.
                        for r in owner_refs(&obj) {
                            let ns = meta::namespace(&obj);
                            let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or("");
                            let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
                            if let Some(d) = table.find_kind(group, r.get("kind").and_then(Value::as_str).unwrap_or("")) {
                                let owner_ns = if d.namespaced { ns } else { "" };
                                let _ = tx.send(Work::Object(d.key(owner_ns, r.get("name").and_then(Value::as_str).unwrap_or(""))));
                            }
                        }
                        Work::Gone(meta::uid(&obj).to_string(), meta::namespace(&obj).to_string())
                    } else {
                        Work::Object(ev.kv.key.clone())
                    };
                    tx.send(work).is_ok()
                })
                .await
            });
        }
        let _ = tx.send(Work::All);
        let mut pending: BTreeSet<Work> = BTreeSet::new();
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(w) = rx.recv() => {
                    pending.insert(w);
                    while let Ok(w) = rx.try_recv() {
                        pending.insert(w);
                    }
                }
                _ = retry.tick() => {}
            }
            for w in std::mem::take(&mut pending) {
                let r = match &w {
                    Work::Gone(uid, ns) => self.owner_gone(uid, ns).await,
                    Work::Object(key) => self.object(key).await,
                    Work::All => self.all().await,
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "garbage collector: will retry");
                    pending.insert(w);
                }
            }
        }
    }
}
