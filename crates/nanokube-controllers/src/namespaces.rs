//! The namespace controller: per-namespace defaults and namespace termination.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use nanokube_store::follow::{follow, Change};

fn def(group: &str, plural: &str) -> &'static ResourceDef {
    resources::find(group, "v1", plural).expect("built-in resource")
}

/// The controller.
pub struct NamespaceController {
    registry: Arc<Registry>,
    ca_pem: String,
}

impl NamespaceController {
    /// A controller that writes `ca_pem` into every `kube-root-ca.crt`.
    pub fn new(registry: Arc<Registry>, ca_pem: String) -> Self {
        NamespaceController { registry, ca_pem }
    }

    /// Reconcile one namespace.
    pub async fn reconcile(&self, name: &str) -> Result<(), ApiError> {
        let ns = match self.registry.get(def("", "namespaces"), "", name) {
            Ok(ns) => ns,
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        if meta::is_deleting(&ns) {
            return self.terminate(name).await;
        }
        // The ServiceAccount and the ConfigMap are independent: write them together.
        tokio::try_join!(self.ensure_service_account(name), self.ensure_root_ca(name))?;
        Ok(())
    }

    async fn ensure_service_account(&self, name: &str) -> Result<(), ApiError> {
        let sa = def("", "serviceaccounts");
        if let Err(e) = self.registry.get(sa, name, "default") {
            if e.code == 404 {
                match self.registry.create(sa, name, json!({"metadata": {"name": "default"}}), &WriteOptions::default()).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn ensure_root_ca(&self, name: &str) -> Result<(), ApiError> {
        let cm = def("", "configmaps");
        let want = json!({"ca.crt": self.ca_pem});
        match self.registry.get(cm, name, "kube-root-ca.crt") {
            Ok(cur) if cur.get("data") == Some(&want) => {}
            Ok(cur) => {
                let mut next = (*cur).clone();
                next["data"] = want;
                self.registry.update(cm, name, "kube-root-ca.crt", next, &WriteOptions::default()).await?;
            }
            Err(e) if e.code == 404 => {
                let obj = json!({"metadata": {"name": "kube-root-ca.crt", "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}}, "data": want});
                match self.registry.create(cm, name, obj, &WriteOptions::default()).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 || e.code == 403 || e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Delete everything in a terminating namespace, then release its finalizer.
    async fn terminate(&self, name: &str) -> Result<(), ApiError> {
        let stored: Vec<&'static ResourceDef> = self.registry.resources().stored().into_iter().filter(|d| d.namespaced).collect();
        for &d in &stored {
            // By stored key, not by decoded list: an object whose bytes do not decode is
            // left out of lists, yet must go with its namespace (delete removes it).
            for obj_name in self.registry.names(d, name) {
                if self.registry.get(d, name, &obj_name).is_ok_and(|obj| meta::is_deleting(&obj)) {
                    continue;
                }
                match self.registry.delete(d, name, &obj_name, &DeleteOptions { propagation: Some("Background".into()), ..Default::default() }).await {
                    Ok(_) => {}
                    Err(e) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // Anything left (objects with finalizers) is waited for; look again soon.
        let left: usize = stored.iter().map(|d| self.registry.store().count(&d.namespace_prefix(Some(name)))).sum();
        if left > 0 {
            return Err(ApiError::new(409, "Conflict", format!("namespace {name} still has {left} objects")));
        }
        self.registry
            .update_with(def("", "namespaces"), "", name, &WriteOptions { subresource: Some("finalize".into()), ..Default::default() }, |cur| {
                let mut next = cur.clone();
                let fins: Vec<Value> = cur
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter(|f| f.as_str() != Some("kubernetes")).cloned().collect())
                    .unwrap_or_default();
                next["spec"]["finalizers"] = json!(fins);
                Ok(next)
            })
            .await
            .map(|_| ())
            .or_else(|e| if e.code == 404 { Ok(()) } else { Err(e) })
    }

    /// Run until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let store = self.registry.store().clone();
        let start = store.current_revision();
        // Watch namespaces, ServiceAccounts and ConfigMaps: any change may need a reconcile.
        for d in [def("", "namespaces"), def("", "serviceaccounts"), def("", "configmaps")] {
            let (tx, store, sd) = (tx.clone(), store.clone(), shutdown.clone());
            tokio::spawn(async move {
                let prefix = d.key_prefix();
                follow(store, &prefix, start, sd, |change| {
                    let Change::Event(ev) = change else {
                        // Fell behind: resync everything.
                        return tx.send(String::new()).is_ok();
                    };
                    let rest = &ev.kv.key[prefix.len()..];
                    // Only the objects this controller keeps matter.
                    let relevant = match d.plural {
                        "serviceaccounts" => rest.ends_with("/default"),
                        "configmaps" => rest.ends_with("/kube-root-ca.crt"),
                        _ => true,
                    };
                    !relevant || tx.send(rest.split('/').next().unwrap_or("").to_string()).is_ok()
                })
                .await
            });
        }
        let _ = tx.send(String::new());
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        let mut pending: BTreeSet<String> = BTreeSet::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(ns) = rx.recv() => {
                    if ns.is_empty() {
                        if let Ok(l) = self.registry.list(def("", "namespaces"), None, &ListOptions::default()) {
                            pending.extend(l.items.iter().map(|n| meta::name(n).to_string()));
                        }
                    } else {
                        pending.insert(ns);
                    }
                    while let Ok(ns) = rx.try_recv() {
                        if !ns.is_empty() { pending.insert(ns); }
                    }
                }
                _ = retry.tick() => {}
            }
            let batch = std::mem::take(&mut pending);
            for ns in batch {
                if let Err(e) = self.reconcile(&ns).await {
                    if e.code != 409 {
                        tracing::warn!(namespace = %ns, error = %e, "namespace reconcile failed; will retry");
                    }
                    pending.insert(ns);
                }
            }
        }
    }
}
