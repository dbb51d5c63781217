//! The CRD controller: turns CustomResourceDefinitions into served resources and back.
//!
//! On every CRD change it rebuilds the cluster's custom resource table from all CRDs
//! (names that clash with an older CRD's are not accepted), then writes each CRD's status
//! (`acceptedNames`, `NamesAccepted`, `Established`, `storedVersions`). The table is
//! updated before `Established` turns true, so a client that waits for the condition
//! finds the resource served. A deleted CRD (held by the `customresourcecleanup`
//! finalizer the registry adds) stops accepting creates, has its objects deleted, and
//! is released when none are left.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use nanokube_api::crd::{self, CustomResource};
use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Obj, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use nanokube_store::follow::{follow, Change};

fn crd_def() -> &'static ResourceDef {
    resources::find("apiextensions.k8s.io", "v1", "customresourcedefinitions").expect("built-in resource")
}

/// Every CRD, oldest first, each with the name conflict that keeps it from being
/// served (if any).
fn read_all(registry: &Registry) -> Result<Vec<(Obj, Option<String>)>, ApiError> {
    let mut crds = registry.list(crd_def(), None, &ListOptions::default())?.items;
    crds.sort_by(|a, b| {
        let created = |o: &Obj| o.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("").to_string();
        created(a).cmp(&created(b)).then_with(|| meta::name(a).cmp(meta::name(b)))
    });
    let mut taken: HashSet<(String, String)> = HashSet::new();
    let mut out = Vec::new();
    for c in crds {
        let group = c.pointer("/spec/group").and_then(Value::as_str).unwrap_or("").to_string();
        let names = c.pointer("/spec/names").cloned().unwrap_or(json!({}));
        let mut wanted: Vec<(String, &str)> = Vec::new();
        for (field, v) in [("plural", names.get("plural")), ("singular", names.get("singular")), ("kind", names.get("kind"))] {
            if let Some(s) = v.and_then(Value::as_str).filter(|s| !s.is_empty()) {
                wanted.push((s.to_string(), field));
            }
        }
        for sn in names.get("shortNames").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            wanted.push((sn.to_string(), "shortNames"));
        }
        let clash = wanted.iter().find(|(n, _)| taken.contains(&(group.clone(), n.clone())));
        let conflict = clash.map(|(n, field)| format!("\"{n}\" is already in use ({field})"));
        if conflict.is_none() {
            for (n, _) in wanted {
                taken.insert((group.clone(), n));
            }
        }
        out.push((c, conflict));
    }
    Ok(out)
}

/// Rebuild the custom resource table from the stored CRDs. Returns them, with their
/// conflicts, for the status pass. Run once at start, before the server is ready, so
/// custom resources are served from the first request after a restart.
pub fn load(registry: &Registry) -> Result<Vec<(Obj, Option<String>)>, ApiError> {
    let all = read_all(registry)?;
    let served: Vec<CustomResource> = all.iter().filter(|(_, c)| c.is_none()).filter_map(|(o, _)| CustomResource::from_crd(o)).collect();
    registry.resources().set_custom(served);
    Ok(all)
}

/// The controller.
pub struct CrdController {
    registry: Arc<Registry>,
}

impl CrdController {
    /// A controller over a registry.
    pub fn new(registry: Arc<Registry>) -> Self {
        CrdController { registry }
    }

    /// One pass: table, statuses, cleanup. Returns whether a CRD is still waiting for
    /// its objects to go.
    pub async fn sync(&self) -> Result<bool, ApiError> {
        let all = load(&self.registry)?;
        let now = meta::now_rfc3339();
        let mut waiting = false;
        for (c, conflict) in &all {
            let status = crd::status_for(c, conflict.as_deref(), &now);
            if c.get("status") != Some(&status) {
                let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
                let result = self
                    .registry
                    .update_with(crd_def(), "", meta::name(c), &opts, |cur| {
                        let mut next = cur.clone();
                        next["status"] = crd::status_for(cur, conflict.as_deref(), &now);
                        meta::metadata_mut(&mut next).remove("resourceVersion");
                        Ok(next)
                    })
                    .await;
                match result {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            if meta::is_deleting(c) && meta::finalizers(c).iter().any(|f| f == crd::CLEANUP_FINALIZER) {
                waiting |= !self.clean_up(c).await?;
            }
        }
        Ok(waiting)
    }

    /// Delete a terminating CRD's objects; release the CRD once none are left.
    async fn clean_up(&self, c: &Value) -> Result<bool, ApiError> {
        let Some(cr) = CustomResource::from_crd(c) else { return Ok(true) };
        let storage = self.registry.resources().find(&cr.group, cr.storage_version(), &cr.plural);
        if let Some(def) = storage {
            for obj in self.registry.list(def, None, &ListOptions::default())?.items {
                if meta::is_deleting(&obj) {
                    continue;
                }
                match self
                    .registry
                    .delete(def, meta::namespace(&obj), meta::name(&obj), &DeleteOptions { propagation: Some("Background".into()), ..Default::default() })
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            let prefix = def.key_prefix();
            if self.registry.store().count(&prefix) > 0 {
                return Ok(false);
            }
        }
        let result = self
            .registry
            .update_with(crd_def(), "", meta::name(c), &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                let kept: Vec<String> = meta::finalizers(cur).into_iter().filter(|f| f != crd::CLEANUP_FINALIZER).collect();
                meta::metadata_mut(&mut next).insert("finalizers".into(), json!(kept));
                meta::metadata_mut(&mut next).remove("resourceVersion");
                Ok(next)
            })
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.code == 404 => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Run until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let store = self.registry.store().clone();
        let start = store.current_revision();
        {
            let (tx, sd) = (tx.clone(), shutdown.clone());
            let prefix = crd_def().key_prefix();
            tokio::spawn(async move { follow(store, &prefix, start, sd, |_change: Change<'_>| tx.send(()).is_ok()).await });
        }
        let _ = tx.send(());
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        let mut again = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = rx.recv() => {
                    while rx.try_recv().is_ok() {}
                }
                _ = retry.tick() => {
                    if !again {
                        continue;
                    }
                }
            }
            again = match self.sync().await {
                Ok(waiting) => waiting,
                Err(e) => {
                    tracing::warn!(error = %e, "CRD sync failed; will retry");
                    true
                }
            };
        }
    }
}
