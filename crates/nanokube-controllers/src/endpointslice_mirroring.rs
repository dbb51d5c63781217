//! kube-controller-manager's EndpointSlice mirroring controller: the Endpoints a user
//! writes for a Service without a selector are mirrored into EndpointSlices, so that
//! readers of slices (kube-proxy, CoreDNS, nanokube's Service proxy and DNS) see them.
//!
//! - Mirrored: an Endpoints object whose Service exists and has no selector, unless it is
//!   labelled `endpointslice.kubernetes.io/skip-mirror: "true"` (as the `kubernetes` and
//!   `kube-dns` Endpoints are). Otherwise its mirrored slices are deleted.
//! - Each subset becomes slices of at most 100 endpoints: `addresses` ready,
//!   `notReadyAddresses` not ready; hostname, nodeName and targetRef kept. At most 1,000
//!   addresses are mirrored per Endpoints (upstream's limit), the rest dropped.
//! - Slices are labelled with the Endpoints' labels, `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by: endpointslicemirroring-controller.k8s.io`,
//!   named `<endpoints>-<random>` and owned by the Endpoints object (so they go with it).

use std::sync::Arc;

use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{ListOptions, Registry};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::endpoints::{MANAGED_BY, SERVICE_NAME};
use crate::objects::{def, key_of};
use crate::workqueue::{Observed, WorkQueue};

const MAX_PER_SLICE: usize = 100;
const MAX_MIRRORED: usize = 1000;
const CONTROLLER_NAME: &str = "endpointslicemirroring-controller.k8s.io";
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";

/// The mirroring controller.
pub struct MirroringController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
}

impl MirroringController {
    /// A controller acting through `registry`.
    pub fn new(registry: Arc<Registry>) -> Arc<MirroringController> {
        Arc::new(MirroringController { registry, queue: WorkQueue::new() })
    }

    /// Run until `shutdown`: every Endpoints object once, then what changes.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[def("", "endpoints").key_prefix(), def("", "services").key_prefix()];
        crate::workqueue::run(
            self.clone(),
            &store,
            &queue,
            "endpointslice-mirroring-controller",
            prefixes,
            shutdown,
            |c| {
                if let Ok(list) = c.registry.list(def("", "endpoints"), None, &ListOptions::default()) {
                    for e in &list.items {
                        c.queue.add(&key_of(e.value()));
                    }
                }
            },
            |c, change: &Observed| c.queue.add(&key_of(change.value())),
            |me, key| async move { me.sync(&key).await },
        )
        .await
    }

    async fn sync(&self, key: &str) -> Result<(), ApiError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let endpoints = match self.registry.get(def("", "endpoints"), ns, name) {
            Ok(e) => Some(e.to_value()),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let service = match self.registry.get(def("", "services"), ns, name) {
            Ok(s) => Some(s.to_value()),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let selectorless = service.as_ref().is_some_and(|s| s.pointer("/spec/selector").and_then(Value::as_object).is_none_or(|m| m.is_empty()));
        let skipped = endpoints
            .as_ref()
            .is_some_and(|e| e.pointer(&format!("/metadata/labels/{}", SKIP_MIRROR.replace('/', "~1"))).and_then(Value::as_str) == Some("true"));
        let wanted = match (&endpoints, selectorless && !skipped) {
            (Some(e), true) => desired(e),
            _ => Vec::new(),
        };
        self.write(ns, name, endpoints.as_ref().filter(|_| selectorless && !skipped), &wanted).await
    }

    async fn write(&self, ns: &str, name: &str, endpoints: Option<&Value>, wanted: &[(Value, Vec<Value>)]) -> Result<(), ApiError> {
        let (labels, owner) = match endpoints {
            Some(eps) => {
                let mut labels = eps.pointer("/metadata/labels").cloned().filter(Value::is_object).unwrap_or(json!({}));
                labels[SERVICE_NAME] = json!(name);
                labels[MANAGED_BY] = json!(CONTROLLER_NAME);
                (labels, json!({"apiVersion": "v1", "kind": "Endpoints", "name": name, "uid": meta::uid(eps), "controller": true, "blockOwnerDeletion": true}))
            }
            None => (json!({}), json!({})),
        };
        let wanted = if endpoints.is_some() { wanted } else { &[] };
        crate::endpoints::reconcile_slices(&self.registry, ns, name, CONTROLLER_NAME, &labels, &owner, wanted).await
    }
}

/// The slices an Endpoints object mirrors to: (ports, endpoints) per slice.
fn desired(eps: &Value) -> Vec<(Value, Vec<Value>)> {
    let mut out = Vec::new();
    let mut budget = MAX_MIRRORED;
    for subset in eps.get("subsets").and_then(Value::as_array).into_iter().flatten() {
        let ports: Vec<Value> = subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                json!({"name": p.get("name").and_then(Value::as_str).unwrap_or(""), "port": p.get("port").cloned().unwrap_or(Value::Null),
                       "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")})
            })
            .collect();
        let mut items = Vec::new();
        for (field, ready) in [("addresses", true), ("notReadyAddresses", false)] {
            for a in subset.get(field).and_then(Value::as_array).into_iter().flatten() {
                let Some(ip) = a.get("ip").and_then(Value::as_str).filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok()) else { continue };
                if budget == 0 {
                    break;
                }
                budget -= 1;
                let mut e = json!({"addresses": [ip], "conditions": {"ready": ready}});
                for (from, to) in [("hostname", "hostname"), ("nodeName", "nodeName"), ("targetRef", "targetRef")] {
                    if let Some(v) = a.get(from).filter(|v| !v.is_null()) {
                        e[to] = v.clone();
                    }
                }
                items.push(e);
            }
        }
        for chunk in items.chunks(MAX_PER_SLICE) {
            out.push((json!(ports), chunk.to_vec()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_become_slices() {
        let eps = json!({"subsets": [
            {"addresses": [{"ip": "127.0.0.5", "hostname": "a"}], "notReadyAddresses": [{"ip": "127.0.0.6"}], "ports": [{"name": "http", "port": 8080}]},
            {"addresses": [{"ip": "not-an-ip"}], "ports": [{"port": 53, "protocol": "UDP"}]},
        ]});
        let d = desired(&eps);
        assert_eq!(d.len(), 1, "the subset without a usable address makes no slice");
        assert_eq!(d[0].0, json!([{"name": "http", "port": 8080, "protocol": "TCP"}]));
        assert_eq!(d[0].1[0], json!({"addresses": ["127.0.0.5"], "conditions": {"ready": true}, "hostname": "a"}));
        assert_eq!(d[0].1[1]["conditions"]["ready"], json!(false));
    }
}
