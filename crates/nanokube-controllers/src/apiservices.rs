//! Local APIServices, as kube-apiserver's autoregister and CRD registration controllers
//! keep them: one `apiregistration.k8s.io/v1` APIService for every group-version this
//! server serves (`v1.`, `v1.apps`, ...; labelled `kube-aggregator.kubernetes.io/automanaged:
//! onstart`) and for every served version of a CustomResourceDefinition (`automanaged:
//! true`, priority 1000/100), removed when the CRD no longer serves it. Their
//! `Available` condition is written by the aggregator (`apiserver::aggregator`).
//!
//! Also [`ensure_extension_authentication`]: the `kube-system/extension-apiserver-authentication`
//! ConfigMap that tells aggregated API servers which client CA and which front-proxy
//! headers to trust.

use std::sync::Arc;
use std::time::Duration;

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use nanokube_store::follow::{follow, Change};

const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";

fn apiservices() -> &'static ResourceDef {
    resources::find("apiregistration.k8s.io", "v1", "apiservices").expect("built-in resource")
}

/// The APIService of a group-version this server serves.
fn local(group: &str, version: &str, automanaged: &str) -> Value {
    let (gp, vp) = resources::priority(group, version);
    json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": format!("{version}.{group}"), "labels": {AUTOMANAGED: automanaged}},
        "spec": {"group": group, "version": version, "groupPriorityMinimum": gp, "versionPriority": vp},
    })
}

/// Create the missing local APIServices, put back the spec of changed ones, and delete
/// the automanaged ones whose group-version is no longer served.
pub async fn sync(registry: &Arc<Registry>) -> Result<(), ApiError> {
    let table = registry.resources();
    let builtin: Vec<(&str, &str)> =
        std::iter::once(("", "v1")).chain(resources::groups().into_iter().flat_map(|g| table.versions(g).into_iter().map(move |v| (g, v)))).collect();
    let mut wanted: Vec<Value> = builtin.iter().map(|(g, v)| local(g, v, "onstart")).collect();
    for group in table.groups() {
        if resources::groups().contains(&group) {
            continue;
        }
        for v in table.versions(group) {
            wanted.push(local(group, v, "true"));
        }
    }
    let existing = registry.list(apiservices(), None, &ListOptions::default())?;
    let mut writes = tokio::task::JoinSet::new();
    for want in &wanted {
        let name = meta::name(want).to_string();
        let current = existing.items.iter().find(|o| meta::name(o.value()) == name).map(|o| o.to_value());
        let want = want.clone();
        match current {
            None => {
                let r = registry.clone();
                writes.spawn(async move { r.create(apiservices(), "", want, &WriteOptions::default()).await.map(|_| ()) });
            }
            // A local APIService someone changed is put back, as upstream's autoregister
            // does for the ones it manages.
            Some(cur) if cur.get("spec") != want.get("spec") && cur.pointer(&format!("/metadata/labels/{}", AUTOMANAGED.replace('/', "~1"))).is_some() => {
                let mut next = cur.clone();
                next["spec"] = want["spec"].clone();
                let r = registry.clone();
                writes.spawn(async move { r.update(apiservices(), "", &name, next, &WriteOptions::default()).await.map(|_| ()) });
            }
            Some(_) => {}
        }
    }
    for o in &existing.items {
        let v = o.value();
        let managed = v.pointer(&format!("/metadata/labels/{}", AUTOMANAGED.replace('/', "~1"))).and_then(Value::as_str);
        if managed.is_some() && !wanted.iter().any(|w| meta::name(w) == meta::name(v)) && v.pointer("/spec/service").is_none_or(Value::is_null) {
            let r = registry.clone();
            let name = meta::name(v).to_string();
            writes.spawn(async move { r.delete(apiservices(), "", &name, &Default::default()).await.map(|_| ()) });
        }
    }
    crate::join_writes(&mut writes, &[409, 404]).await
}

/// Keep the local APIServices in step with the served group-versions: at start, when a
/// CRD changes, and when an APIService is deleted.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let start = registry.store().current_revision();
    for prefix in [resources::find("apiextensions.k8s.io", "v1", "customresourcedefinitions").map(ResourceDef::key_prefix), Some(apiservices().key_prefix())]
        .into_iter()
        .flatten()
    {
        let (tx, sd, store) = (tx.clone(), shutdown.clone(), registry.store().clone());
        tokio::spawn(async move { follow(store, &prefix, start, sd, |_c: Change<'_>| tx.send(()).is_ok()).await });
    }
    let _ = tx.send(());
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = rx.recv() => {
                // The CRD controller updates the served versions as it reads the same
                // events: give it a moment, then read them.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
            }
        }
        if let Err(e) = sync(&registry).await {
            tracing::warn!("local APIServices: {}", e.message);
        }
    }
}

/// `kube-system/extension-apiserver-authentication`, as kube-apiserver publishes it: the
/// client CA, and the front proxy's CA, allowed names and header names.
pub async fn ensure_extension_authentication(registry: &Registry, client_ca: &str, front_proxy_ca: &str) -> Result<(), ApiError> {
    let def = resources::find("", "v1", "configmaps").expect("built-in resource");
    let data = json!({
        "client-ca-file": client_ca,
        "requestheader-allowed-names": "[\"front-proxy-client\"]",
        "requestheader-client-ca-file": front_proxy_ca,
        "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        "requestheader-group-headers": "[\"X-Remote-Group\"]",
        "requestheader-username-headers": "[\"X-Remote-User\"]",
    });
    let name = "extension-apiserver-authentication";
    match registry.get(def, "kube-system", name) {
        Ok(cur) if cur.value().get("data") == Some(&data) => Ok(()),
        Ok(cur) => {
            let mut next = cur.to_value();
            next["data"] = data;
            registry.update(def, "kube-system", name, next, &WriteOptions::default()).await.map(|_| ())
        }
        Err(e) if e.code == 404 => {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "kube-system"}, "data": data});
            match registry.create(def, "kube-system", cm, &WriteOptions::default()).await {
                Err(e) if e.code != 409 => Err(e),
                _ => Ok(()),
            }
        }
        Err(e) => Err(e),
    }
}
