//! Objects every cluster has from the start, and [`run`], which brings them back when
//! they are deleted (as kube-apiserver's system-namespaces and `kubernetes` Service
//! controllers do): `kube-node-lease`, the `kubernetes` Service, Endpoints and
//! EndpointSlice, and the default ServiceCIDR `kubernetes`. (`default`, `kube-system` and `kube-public` cannot be deleted: the
//! registry refuses, as upstream's NamespaceLifecycle admission does.)

use std::sync::Arc;

use nanokube_store::EventKind;
use tokio::sync::{watch, Notify};

use nanokube_store::follow::{follow, Change};

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{Registry, WriteOptions};
use serde_json::{json, Value};

/// The namespaces kube-apiserver creates.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

fn def(group: &str, plural: &str) -> &'static ResourceDef {
    resources::find(group, "v1", plural).expect("built-in resource")
}

/// Create `obj` unless it exists; if it exists and `reconcile` says it differs, replace
/// the fields `reconcile` returns.
async fn ensure(registry: &Registry, d: &ResourceDef, ns: &str, obj: Value, reconcile: impl Fn(&Value) -> Option<Value>) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    match registry.get(d, ns, &name) {
        Ok(cur) => {
            if let Some(next) = reconcile(&cur) {
                registry.update(d, ns, &name, next, &WriteOptions::default()).await?;
            }
            Ok(())
        }
        Err(e) if e.code == 404 => match registry.create(d, ns, obj, &WriteOptions::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Create each of `objs` (cluster-scoped, of `d`) unless it exists, concurrently, so the
/// creates share one commit.
async fn ensure_all(registry: &Arc<Registry>, d: &'static ResourceDef, objs: Vec<Value>) -> Result<(), ApiError> {
    let mut tasks = tokio::task::JoinSet::new();
    for obj in objs {
        let r = registry.clone();
        tasks.spawn(async move { ensure(&r, d, "", obj, |_| None).await });
    }
    crate::join_writes(&mut tasks, &[]).await
}

/// Create the system namespaces.
pub async fn ensure_namespaces(registry: &Arc<Registry>) -> Result<(), ApiError> {
    ensure_all(registry, def("", "namespaces"), SYSTEM_NAMESPACES.iter().map(|ns| json!({"metadata": {"name": ns}})).collect()).await
}

/// Create the two PriorityClasses kube-apiserver creates at start
/// (`system-cluster-critical`, `system-node-critical`), which pods may name.
pub async fn ensure_priority_classes(registry: &Arc<Registry>) -> Result<(), ApiError> {
    let classes = [
        (
            "system-cluster-critical",
            2_000_000_000,
            "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
        ),
        ("system-node-critical", 2_000_001_000, "Used for system critical pods that must not be moved from their current node."),
    ];
    let objs = classes
        .iter()
        .map(|(name, value, description)| json!({"metadata": {"name": name}, "value": value, "description": description, "preemptionPolicy": "PreemptLowerPriority"}))
        .collect();
    ensure_all(registry, def("scheduling.k8s.io", "priorityclasses"), objs).await
}

/// Create (or repoint) the `kubernetes` Service, Endpoints and EndpointSlice at the API
/// server (`ip:port`), concurrently. The `default` namespace must exist.
pub async fn ensure_kubernetes_service(registry: &Arc<Registry>, apiserver_ip: &str, apiserver_port: u16) -> Result<(), ApiError> {
    let svc_ip = registry.first_service_ip();
    let svc = json!({
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": svc_ip, "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": apiserver_port}]}
    });
    let service = ensure(registry, def("", "services"), "default", svc, |cur| {
        let target = cur.pointer("/spec/ports/0/targetPort").and_then(Value::as_u64);
        (target != Some(apiserver_port as u64)).then(|| {
            let mut next = cur.clone();
            next["spec"]["ports"] = json!([{"name": "https", "port": 443, "protocol": "TCP", "targetPort": apiserver_port}]);
            next
        })
    });

    let subsets = json!([{"addresses": [{"ip": apiserver_ip}], "ports": [{"name": "https", "port": apiserver_port, "protocol": "TCP"}]}]);
    let eps = json!({"metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}, "subsets": subsets});
    let endpoints_obj = ensure(registry, def("", "endpoints"), "default", eps, |cur| {
        (cur.get("subsets") != Some(&subsets)).then(|| {
            let mut next = cur.clone();
            next["subsets"] = subsets.clone();
            next
        })
    });

    let endpoints = json!([{"addresses": [apiserver_ip], "conditions": {"ready": true}}]);
    let ports = json!([{"name": "https", "port": apiserver_port, "protocol": "TCP"}]);
    let slice = json!({
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
    });
    let slice_obj = ensure(registry, def("discovery.k8s.io", "endpointslices"), "default", slice, |cur| {
        (cur.get("endpoints") != Some(&endpoints) || cur.get("ports") != Some(&ports)).then(|| {
            let mut next = cur.clone();
            next["endpoints"] = endpoints.clone();
            next["ports"] = ports.clone();
            next
        })
    });
    // Concurrent, so the three writes share one commit.
    tokio::try_join!(service, endpoints_obj, slice_obj)?;
    Ok(())
}

/// The default ServiceCIDR `kubernetes` (kube-apiserver 1.33's default-servicecidr
/// controller): the Service range of `--service-cluster-ip-range`, created when missing
/// and marked `Ready` ("Kubernetes default Service CIDR is ready") when it has no Ready
/// condition; one that differs from the flag is left as it is, as upstream leaves it.
pub async fn ensure_default_service_cidr(registry: &Arc<Registry>) -> Result<(), ApiError> {
    let d = def("networking.k8s.io", "servicecidrs");
    let cidr = json!({"metadata": {"name": "kubernetes"}, "spec": {"cidrs": [registry.service_cidr()]}});
    ensure(registry, d, "", cidr, |_| None).await?;
    let cur = registry.get(d, "", "kubernetes")?;
    let cur = cur.value();
    let has_ready =
        cur.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] != "Unknown"));
    if has_ready || meta::is_deleting(cur) || cur.pointer("/spec/cidrs/0").and_then(Value::as_str) != Some(registry.service_cidr().as_str()) {
        return Ok(());
    }
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    registry
        .update_with(d, "", "kubernetes", &opts, |cur| {
            let mut next = cur.clone();
            next["status"] = json!({"conditions": [{
                "type": "Ready", "status": "True", "reason": "", "message": "Kubernetes default Service CIDR is ready",
                "lastTransitionTime": meta::now_rfc3339()
            }]});
            Ok(next)
        })
        .await?;
    Ok(())
}

/// Recreate the system namespaces and the `kubernetes` Service, Endpoints and
/// EndpointSlice (pointing at `apiserver_ip:apiserver_port`) whenever one is deleted,
/// until `shutdown`.
pub async fn run(registry: Arc<Registry>, apiserver_ip: String, apiserver_port: u16, shutdown: watch::Receiver<bool>) {
    let deleted = Arc::new(Notify::new());
    let store = registry.store().clone();
    let from = store.current_revision();
    let namespaces = def("", "namespaces");
    let ns_keys: Vec<String> = SYSTEM_NAMESPACES.iter().map(|ns| namespaces.key("", ns)).collect();
    let service_keys: Vec<String> =
        [def("", "services"), def("", "endpoints"), def("discovery.k8s.io", "endpointslices")].iter().map(|d| d.key("default", "kubernetes")).collect();
    let cidr_key = def("networking.k8s.io", "servicecidrs").key("", "kubernetes");
    let mut followers = tokio::task::JoinSet::new();
    let singles = service_keys.into_iter().chain(std::iter::once(cidr_key)).map(|k| (k.clone(), vec![k]));
    for (prefix, keys) in std::iter::once((namespaces.key_prefix(), ns_keys)).chain(singles) {
        let (store, deleted, shutdown) = (store.clone(), deleted.clone(), shutdown.clone());
        followers.spawn(async move {
            follow(store, &prefix, from, shutdown, |change| {
                let gone = match change {
                    Change::Event(ev) => ev.kind == EventKind::Deleted && keys.contains(&ev.kv.key),
                    Change::Resync => true,
                };
                if gone {
                    deleted.notify_one();
                }
                true
            })
            .await
        });
    }
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = deleted.notified() => {
                let (namespaces, service, cidr) =
                    tokio::join!(ensure_namespaces(&registry), ensure_kubernetes_service(&registry, &apiserver_ip, apiserver_port), ensure_default_service_cidr(&registry));
                let mut failed = false;
                for (what, r) in [("system namespaces", namespaces), ("the kubernetes Service", service), ("the default ServiceCIDR", cidr)] {
                    if let Err(e) = r {
                        // E.g. the deleted Service's IP is released just after its
                        // deletion is visible: try again shortly.
                        tracing::debug!(error = %e, "recreating {what} failed; retrying");
                        failed = true;
                    }
                }
                if failed {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    deleted.notify_one();
                }
            }
        }
    }
    followers.shutdown().await;
}
