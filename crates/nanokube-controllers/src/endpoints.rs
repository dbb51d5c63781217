//! kube-controller-manager's endpoints and EndpointSlice controllers: every Service with a
//! selector gets an Endpoints object and EndpointSlices listing the pods it selects.
//!
//! - A pod counts once it has an IP and is not finished; it is ready when its `Ready`
//!   condition is true and it is not being deleted (`publishNotReadyAddresses` lists every
//!   one as ready). Endpoints put ready pods in `addresses` and the rest in
//!   `notReadyAddresses`; slices carry `ready`, `serving` and `terminating` conditions,
//!   `nodeName` and `targetRef`.
//! - Ports: a numeric `targetPort` as is, a named one resolved in each pod's containers
//!   (pods are grouped by the ports they resolve to, as upstream's subsets and slices are);
//!   a pod without the named port is left out.
//! - Slices hold at most 100 endpoints, are labelled `kubernetes.io/service-name` and
//!   `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`, named
//!   `<service>-<random>` and owned by the Service; the Endpoints object has upstream's
//!   `endpoints.kubernetes.io/last-change-trigger-time` annotation.
//! - Services without a selector are left alone (their endpoints are the user's, as the
//!   `kubernetes` Service's are the bootstrap's).

use std::collections::BTreeMap;
use std::sync::Arc;

use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::{def, key_of};
use crate::workqueue::Observed;
use crate::workqueue::WorkQueue;

/// Endpoints per slice (upstream's `--max-endpoints-per-slice` default).
const MAX_PER_SLICE: usize = 100;
pub(crate) const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
pub(crate) const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// One endpoint: a pod and whether it is ready, serving and terminating.
struct Endpoint {
    ip: String,
    pod: Value,
    ready: bool,
    serving: bool,
    terminating: bool,
}

/// The ports a Service's ports resolve to for `pod` (name, port, protocol), or `None` when
/// a named target port is not among its containers'.
fn resolve_ports(service: &Value, pod: &Value) -> Option<Vec<(String, i64, String)>> {
    let mut out = Vec::new();
    for sp in service.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
        let name = sp.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let protocol = sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string();
        let port = match sp.get("targetPort") {
            Some(Value::Number(n)) => n.as_i64()?,
            Some(Value::String(target)) => pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
                .find(|p| {
                    p.get("name").and_then(Value::as_str) == Some(target.as_str()) && p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == protocol
                })
                .and_then(|p| p.get("containerPort").and_then(Value::as_i64))?,
            _ => sp.get("port").and_then(Value::as_i64)?,
        };
        out.push((name, port, protocol));
    }
    Some(out)
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c.get("type").and_then(Value::as_str) == Some("Ready") && c.get("status").and_then(Value::as_str) == Some("True"))
}

/// The pod's DNS hostname under `service`: its `hostname` when its `subdomain` is the
/// Service (upstream's ShouldSetHostname), as StatefulSet pods under their governing
/// Service.
fn hostname<'a>(service: &Value, pod: &'a Value) -> Option<&'a str> {
    let name = pod.pointer("/spec/hostname").and_then(Value::as_str).filter(|h| !h.is_empty())?;
    (pod.pointer("/spec/subdomain").and_then(Value::as_str) == Some(meta::name(service)) && meta::namespace(pod) == meta::namespace(service)).then_some(name)
}

fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "namespace": meta::namespace(pod), "name": meta::name(pod), "uid": meta::uid(pod)})
}

/// The two controllers, run as one (they read the same things).
pub struct EndpointsController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
}

impl EndpointsController {
    /// A controller acting through `registry`.
    pub fn new(registry: Arc<Registry>) -> Arc<EndpointsController> {
        Arc::new(EndpointsController { registry, queue: WorkQueue::new() })
    }

    /// Run until `shutdown`: every Service once, then what changes.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[def("", "services").key_prefix(), def("", "pods").key_prefix()];
        crate::workqueue::run(
            self.clone(),
            &store,
            &queue,
            "endpoints-controller",
            prefixes,
            shutdown,
            |c| c.enqueue_namespace(None),
            Self::observe,
            |me, key| async move { me.sync(&key).await },
        )
        .await
    }

    fn enqueue_namespace(&self, ns: Option<&str>) {
        if let Ok(list) = self.registry.list(def("", "services"), ns, &ListOptions::default()) {
            for s in &list.items {
                if s.value().pointer("/spec/selector").and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
                    self.queue.add(&format!("{}/{}", meta::namespace(s.value()), meta::name(s.value())));
                }
            }
        }
    }

    fn observe(&self, change: &Observed) {
        if change.is("Service") {
            self.queue.add(&key_of(change.value()));
        } else {
            // A pod: the Services of its namespace that select it (now or before); it is
            // decoded only if there are any.
            let Ok(list) = self.registry.list(def("", "services"), Some(&change.namespace), &ListOptions::default()) else { return };
            if list.items.is_empty() {
                return;
            }
            let v = change.value();
            for s in &list.items {
                let sel = s.value().pointer("/spec/selector").and_then(Value::as_object).filter(|m| !m.is_empty());
                let Some(sel) = sel else { continue };
                let selects = |p: &Value| sel.iter().all(|(k, val)| p.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(val));
                if selects(v) || change.prev.as_ref().is_some_and(|p| selects(p.value())) {
                    self.queue.add(&key_of(s.value()));
                }
            }
        }
    }

    async fn sync(&self, key: &str) -> Result<(), ApiError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let service = match self.registry.get(def("", "services"), ns, name) {
            Ok(s) => s.to_value(),
            // Gone: the Endpoints go with it here; the slices go with their owner (GC).
            Err(e) if e.code == 404 => {
                let _ = self.registry.delete(def("", "endpoints"), ns, name, &DeleteOptions::default()).await;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let selector = service.pointer("/spec/selector").and_then(Value::as_object).filter(|m| !m.is_empty()).cloned();
        let Some(selector) = selector else { return Ok(()) };
        let publish_not_ready = service.pointer("/spec/publishNotReadyAddresses").and_then(Value::as_bool).unwrap_or(false);
        let labels = LabelSelector::from_object(&json!({"matchLabels": selector}))?;
        let pods = self.registry.list(def("", "pods"), Some(ns), &ListOptions { labels, ..Default::default() })?;
        // Pods grouped by the ports they resolve to.
        let mut groups: BTreeMap<Vec<(String, i64, String)>, Vec<Endpoint>> = BTreeMap::new();
        for p in &pods.items {
            let pod = p.value();
            let ip = pod.pointer("/status/podIP").and_then(Value::as_str).unwrap_or("");
            let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
            if ip.is_empty() || phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            let Some(ports) = resolve_ports(&service, pod) else { continue };
            let terminating = meta::is_deleting(pod);
            let serving = pod_ready(pod) || publish_not_ready;
            groups.entry(ports).or_default().push(Endpoint { ip: ip.to_string(), pod: pod.clone(), ready: serving && !terminating, serving, terminating });
        }
        self.write_endpoints(&service, &groups).await?;
        self.write_slices(&service, &groups).await
    }

    async fn write_endpoints(&self, service: &Value, groups: &BTreeMap<Vec<(String, i64, String)>, Vec<Endpoint>>) -> Result<(), ApiError> {
        let address = |e: &Endpoint| {
            let mut a = json!({"ip": e.ip, "targetRef": target_ref(&e.pod)});
            if let Some(h) = hostname(service, &e.pod) {
                a["hostname"] = json!(h);
            }
            if let Some(n) = e.pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                a["nodeName"] = json!(n);
            }
            a
        };
        let subsets: Vec<Value> = groups
            .iter()
            .filter(|(_, eps)| eps.iter().any(|e| !e.terminating))
            .map(|(ports, eps)| {
                let mut s = json!({"ports": ports.iter().map(|(n, p, proto)| {
                    let mut port = json!({"port": p, "protocol": proto});
                    if !n.is_empty() { port["name"] = json!(n); }
                    port
                }).collect::<Vec<_>>()});
                let ready: Vec<Value> = eps.iter().filter(|e| e.ready).map(address).collect();
                let not_ready: Vec<Value> = eps.iter().filter(|e| !e.ready && !e.terminating).map(address).collect();
                if !ready.is_empty() {
                    s["addresses"] = json!(ready);
                }
                if !not_ready.is_empty() {
                    s["notReadyAddresses"] = json!(not_ready);
                }
                s
            })
            .collect();
        let (ns, name) = (meta::namespace(service), meta::name(service));
        let labels = service.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
        let endpoints_def = def("", "endpoints");
        match self.registry.get(endpoints_def, ns, name) {
            Ok(cur) => {
                let cur = cur.value();
                if cur.get("subsets").cloned().unwrap_or(json!([])) == json!(subsets) && cur.pointer("/metadata/labels").cloned().unwrap_or(json!({})) == labels
                {
                    return Ok(());
                }
                let now = meta::now_rfc3339();
                self.registry
                    .update_with(endpoints_def, ns, name, &WriteOptions::default(), |c| {
                        let mut next = c.clone();
                        next["subsets"] = json!(subsets);
                        meta::metadata_mut(&mut next).insert("labels".into(), labels.clone());
                        let a = meta::metadata_mut(&mut next).entry("annotations").or_insert_with(|| json!({}));
                        a["endpoints.kubernetes.io/last-change-trigger-time"] = json!(now);
                        Ok(next)
                    })
                    .await?;
            }
            Err(e) if e.code == 404 => {
                let obj = json!({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": meta::now_rfc3339()}},
                    "subsets": subsets});
                match self.registry.create(endpoints_def, ns, obj, &WriteOptions::default()).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    async fn write_slices(&self, service: &Value, groups: &BTreeMap<Vec<(String, i64, String)>, Vec<Endpoint>>) -> Result<(), ApiError> {
        let (ns, name) = (meta::namespace(service), meta::name(service));
        // What the slices should hold: per port group, chunks of at most 100.
        let mut wanted: Vec<(Value, Vec<Value>)> = Vec::new();
        for (ports, eps) in groups {
            let ports: Vec<Value> = ports.iter().map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto})).collect();
            let endpoints: Vec<Value> = eps
                .iter()
                .map(|e| {
                    let mut x = json!({"addresses": [e.ip], "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating}, "targetRef": target_ref(&e.pod)});
                    if let Some(h) = hostname(service, &e.pod) {
                        x["hostname"] = json!(h);
                    }
                    if let Some(n) = e.pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                        x["nodeName"] = json!(n);
                    }
                    x
                })
                .collect();
            for chunk in endpoints.chunks(MAX_PER_SLICE) {
                wanted.push((json!(ports), chunk.to_vec()));
            }
        }
        // A Service selecting nothing still has one empty slice, as upstream keeps.
        if wanted.is_empty() {
            let ports: Vec<Value> = service
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| json!({"name": p.get("name").and_then(Value::as_str).unwrap_or(""), "port": p.get("targetPort").filter(|t| t.is_number()).or(p.get("port")), "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")}))
                .collect();
            wanted.push((json!(ports), Vec::new()));
        }
        let owner = json!({"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta::uid(service), "controller": true, "blockOwnerDeletion": true});
        let mut slice_labels = service.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
        slice_labels[SERVICE_NAME] = json!(name);
        slice_labels[MANAGED_BY] = json!(CONTROLLER_NAME);
        reconcile_slices(&self.registry, ns, name, CONTROLLER_NAME, &slice_labels, &owner, &wanted).await
    }
}

/// Makes the EndpointSlices of Service `name` that `managed_by` manages hold `wanted`
/// (ports and endpoints per slice, in order): existing slices updated in place, missing
/// ones created with `labels` and `owner`, extra ones deleted. Shared by the endpoints
/// and mirroring controllers.
pub(crate) async fn reconcile_slices(
    registry: &Registry,
    ns: &str,
    name: &str,
    managed_by: &str,
    labels: &Value,
    owner: &Value,
    wanted: &[(Value, Vec<Value>)],
) -> Result<(), ApiError> {
    let slices_def = def("discovery.k8s.io", "endpointslices");
    let selector = LabelSelector::parse(&format!("{SERVICE_NAME}={name},{MANAGED_BY}={managed_by}"))?;
    let existing: Vec<Value> =
        registry.list(slices_def, Some(ns), &ListOptions { labels: selector, ..Default::default() })?.items.iter().map(|o| o.to_value()).collect();
    for (i, (ports, endpoints)) in wanted.iter().enumerate() {
        match existing.get(i) {
            Some(cur)
                if cur.get("ports") == Some(ports)
                    && cur.get("endpoints").cloned().unwrap_or(json!([])) == json!(endpoints)
                    && cur.pointer("/metadata/labels") == Some(labels) => {}
            Some(cur) => {
                registry
                    .update_with(slices_def, ns, meta::name(cur), &WriteOptions::default(), |c| {
                        let mut next = c.clone();
                        next["ports"] = ports.clone();
                        next["endpoints"] = json!(endpoints);
                        meta::metadata_mut(&mut next).insert("labels".into(), labels.clone());
                        Ok(next)
                    })
                    .await?;
            }
            None => {
                let obj = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"generateName": format!("{name}-"), "namespace": ns, "labels": labels, "ownerReferences": [owner]},
                    "addressType": "IPv4", "ports": ports, "endpoints": endpoints});
                registry.create(slices_def, ns, obj, &WriteOptions::default()).await?;
            }
        }
    }
    for extra in existing.iter().skip(wanted.len()) {
        match registry.delete(slices_def, ns, meta::name(extra), &DeleteOptions::default()).await {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let svc = json!({"spec": {"ports": [{"name": "web", "port": 80, "targetPort": "http"}, {"port": 9000, "targetPort": 9001, "protocol": "UDP"}]}});
        let pod = json!({"spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(resolve_ports(&svc, &pod), Some(vec![("web".into(), 8080, "TCP".into()), ("".into(), 9001, "UDP".into())]));
        let other = json!({"spec": {"containers": [{"ports": [{"name": "metrics", "containerPort": 9090}]}]}});
        assert_eq!(resolve_ports(&svc, &other), None, "a pod without the named port is left out");
    }
}
