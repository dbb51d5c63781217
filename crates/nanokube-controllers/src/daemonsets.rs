//! kube-controller-manager's DaemonSet controller: one pod on every node that should
//! run one.
//!
//! - A node should run the pod when the template's node selector and required node
//!   affinity match it and its `NoSchedule`/`NoExecute` taints are tolerated, counting
//!   the tolerations the controller adds to every daemon pod (`not-ready` and
//!   `unreachable` NoExecute; `disk-pressure`, `memory-pressure`, `pid-pressure` and
//!   `unschedulable` NoSchedule; `network-unavailable` for host-network pods).
//! - Pods (`generateName: <set>-`) are pinned to their node with a required node affinity
//!   on `metadata.name`, as upstream, and placed by the scheduler; they carry
//!   `controller-revision-hash` and `pod-template-generation`. Extra pods on a node, pods
//!   on nodes that should not run one, and failed pods are deleted.
//! - Revisions as ControllerRevisions (see [`crate::history`]); `RollingUpdate` replaces
//!   old pods node by node with at most `maxUnavailable` (default 1) unavailable, or
//!   with `maxSurge` starts the new pod first; `OnDelete` waits.
//! - Status: `desiredNumberScheduled`, `currentNumberScheduled`, `numberMisscheduled`,
//!   `numberReady`, `numberAvailable`, `numberUnavailable`, `updatedNumberScheduled`,
//!   `observedGeneration`; events as upstream's.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::{controller_key, controller_ref, def, int, key_of, pods};
use crate::workqueue::Observed;
use crate::workqueue::WorkQueue;

const COMPONENT: &str = "daemonset-controller";
const REVISION_LABEL: &str = "controller-revision-hash";
const GENERATION_LABEL: &str = "pod-template-generation";

fn daemon_sets() -> &'static resources::ResourceDef {
    def("apps", "daemonsets")
}

fn node_of(pod: &Value) -> String {
    // Placed, or pinned by the controller's affinity and not yet placed.
    if let Some(n) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        return n.to_string();
    }
    let terms = pod.pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms").and_then(Value::as_array);
    terms
        .into_iter()
        .flatten()
        .flat_map(|t| t.get("matchFields").and_then(Value::as_array).cloned().unwrap_or_default())
        .find(|f| f.get("key").and_then(Value::as_str) == Some("metadata.name"))
        .and_then(|f| f.pointer("/values/0").and_then(Value::as_str).map(String::from))
        .unwrap_or_default()
}

fn is_available(pod: &Value, min_ready: i64, now: time::OffsetDateTime) -> bool {
    crate::replicasets::ready_since(pod).is_some_and(|t| (now - t).whole_seconds() >= min_ready)
}

/// The template with what the controller adds to every daemon pod: its tolerations.
fn daemon_template(ds: &Value) -> Value {
    let mut template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let host_network = template.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true);
    let mut tolerations: Vec<Value> = template.pointer("/spec/tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        if !tolerations.iter().any(|t| t.get("key").and_then(Value::as_str) == Some(key) && t.get("effect").and_then(Value::as_str) == Some(effect)) {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if host_network {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    template["spec"]["tolerations"] = json!(tolerations);
    template
}

/// Upstream's `NodeShouldRunDaemonPod`: the scheduler's taint and affinity filters.
fn should_run(template: &Value, node: &Value) -> bool {
    let pod: Result<Pod, _> = serde_json::from_value(json!({"metadata": {}, "spec": template.get("spec").cloned().unwrap_or(json!({}))}));
    let node: Result<Node, _> = serde_json::from_value(node.clone());
    match (pod, node) {
        (Ok(p), Ok(n)) => crate::scheduler::node_accepts(&p, &n),
        _ => false,
    }
}

/// The controller.
pub struct DaemonSetController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
}

impl DaemonSetController {
    /// A controller acting through `registry`.
    pub fn new(registry: Arc<Registry>) -> Arc<DaemonSetController> {
        Arc::new(DaemonSetController { registry, queue: WorkQueue::new() })
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[daemon_sets().key_prefix(), pods().key_prefix(), def("", "nodes").key_prefix()];
        crate::workqueue::run(self.clone(), &store, &queue, COMPONENT, prefixes, shutdown, Self::enqueue_all, Self::observe, |me, key| async move {
            me.sync(&key).await
        })
        .await
    }

    fn enqueue_all(&self) {
        crate::workqueue::enqueue_each(&self.registry, &self.queue, daemon_sets(), None);
    }

    fn observe(&self, change: &Observed) {
        if change.is("DaemonSet") {
            self.queue.add(&key_of(change.value()));
        } else if change.is("Node") {
            // A node came, went or changed: every daemon set looks again.
            self.enqueue_all();
        } else if !change.may_have_owners() {
            // A pod no DaemonSet controls.
        } else if let Some(key) = controller_key(change.value(), "DaemonSet") {
            self.queue.add(&key);
        }
    }

    fn owner_ref(ds: &Value) -> Value {
        crate::objects::controller_reference("apps/v1", "DaemonSet", ds)
    }

    async fn event(&self, ds: &Value, ty: &str, reason: &str, message: &str) {
        crate::events::record(&self.registry, COMPONENT, ds, ty, reason, message).await;
    }

    async fn create_pod(&self, ds: &Value, template: &Value, revision: &str, node: &str) -> Result<(), ApiError> {
        let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
        if let Some(m) = metadata.as_object_mut() {
            for k in ["name", "uid", "resourceVersion", "creationTimestamp"] {
                m.remove(k);
            }
        }
        metadata["generateName"] = json!(format!("{}-", meta::name(ds)));
        metadata["labels"][REVISION_LABEL] = json!(revision);
        metadata["labels"][GENERATION_LABEL] = json!(int(ds, "/metadata/generation", 1).to_string());
        metadata["ownerReferences"] = json!([Self::owner_ref(ds)]);
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        // Pinned to the node by a required affinity on its name (upstream's
        // ReplaceDaemonSetPodNodeNameNodeAffinity): other terms' matchFields are replaced.
        let pin = json!({"key": "metadata.name", "operator": "In", "values": [node]});
        let mut terms: Vec<Value> = spec
            .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if terms.is_empty() {
            terms.push(json!({}));
        }
        for t in &mut terms {
            t["matchFields"] = json!([pin.clone()]);
        }
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!({"nodeSelectorTerms": terms});
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
        match self.registry.create(pods(), meta::namespace(ds), pod, &WriteOptions::default()).await {
            Ok(p) => {
                self.event(ds, "Normal", "SuccessfulCreate", &format!("Created pod: {}", meta::name(p.value()))).await;
                Ok(())
            }
            Err(e) => {
                self.event(ds, "Warning", "FailedCreate", &format!("Error creating: {}", e.message)).await;
                Err(e)
            }
        }
    }

    async fn delete_pod(&self, ds: &Value, pod: &Value) -> Result<(), ApiError> {
        let opts = DeleteOptions { precondition_uid: Some(meta::uid(pod).to_string()), ..Default::default() };
        match self.registry.delete(pods(), meta::namespace(pod), meta::name(pod), &opts).await {
            Ok(_) => {
                self.event(ds, "Normal", "SuccessfulDelete", &format!("Deleted pod: {}", meta::name(pod))).await;
                Ok(())
            }
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn sync(&self, key: &str) -> Result<(), ApiError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let mut ds = match self.registry.get(daemon_sets(), ns, name) {
            Ok(o) => o.to_value(),
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let sel = LabelSelector::from_object(ds.pointer("/spec/selector").unwrap_or(&Value::Null))?;
        let uid = meta::uid(&ds).to_string();
        let owned = crate::objects::claim_pods(&self.registry, &ds, &Self::owner_ref(&ds), &sel, |_| true).await?;
        let (all_revisions, update, collisions) = crate::history::ensure(&self.registry, crate::history::Owner::DaemonSet, &ds, &Self::owner_ref(&ds)).await?;
        if collisions > 0 {
            ds["status"]["collisionCount"] = json!(collisions);
        }
        let hash = crate::history::hash_of(crate::history::Owner::DaemonSet, &update).unwrap_or("").to_string();
        let template = daemon_template(&ds);
        let nodes: Vec<Value> = self.registry.list(def("", "nodes"), None, &ListOptions::default())?.items.iter().map(|n| n.to_value()).collect();
        let mut by_node: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for p in owned.iter().filter(|p| !meta::is_deleting(p)) {
            by_node.entry(node_of(p)).or_default().push(p.clone());
        }
        if !meta::is_deleting(&ds) {
            self.manage(&ds, &template, &hash, &nodes, &by_node).await?;
        }
        let owned: Vec<Value> = self
            .registry
            .list(pods(), Some(ns), &ListOptions::default())?
            .items
            .iter()
            .map(|p| p.to_value())
            .filter(|p| controller_ref(p).and_then(|r| r.get("uid")).and_then(Value::as_str) == Some(uid.as_str()) && !meta::is_deleting(p))
            .collect();
        self.write_status(&ds, &template, &hash, &nodes, &owned).await?;
        // Pods name their revision by its hash.
        let hashes: std::collections::HashSet<&str> =
            owned.iter().filter_map(|p| p.pointer(&format!("/metadata/labels/{REVISION_LABEL}")).and_then(Value::as_str)).collect();
        let used: std::collections::HashSet<String> = all_revisions
            .iter()
            .filter(|r| crate::history::hash_of(crate::history::Owner::DaemonSet, r).is_some_and(|h| hashes.contains(h)))
            .map(|r| meta::name(r).to_string())
            .collect();
        let in_use = |r: &str| r == meta::name(&update) || used.contains(r);
        crate::history::clean(&self.registry, &all_revisions, int(&ds, "/spec/revisionHistoryLimit", 10), in_use).await;
        Ok(())
    }

    /// Pods where they belong and nowhere else, then the rolling update.
    async fn manage(&self, ds: &Value, template: &Value, hash: &str, nodes: &[Value], by_node: &BTreeMap<String, Vec<Value>>) -> Result<(), ApiError> {
        let mut to_create: Vec<String> = Vec::new();
        let mut to_delete: Vec<Value> = Vec::new();
        let surge = ds
            .pointer("/spec/updateStrategy/rollingUpdate/maxSurge")
            .map(|v| crate::objects::int_or_percent(v, nodes.len() as i64, true).unwrap_or(0))
            .unwrap_or(0);
        for node in nodes {
            let node_name = meta::name(node).to_string();
            let here = by_node.get(&node_name).cloned().unwrap_or_default();
            if !should_run(template, node) {
                to_delete.extend(here);
                continue;
            }
            let (failed, mut live): (Vec<Value>, Vec<Value>) =
                here.into_iter().partition(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Failed"));
            if !failed.is_empty() {
                self.event(
                    ds,
                    "Warning",
                    "FailedDaemonPod",
                    &format!("Found failed daemon pod {}/{} on node {node_name}, will try to kill it", meta::namespace(ds), meta::name(&failed[0])),
                )
                .await;
                to_delete.extend(failed);
            }
            if live.is_empty() {
                to_create.push(node_name);
                continue;
            }
            // One pod per node: the oldest stays (a surge pair is the update's doing).
            live.sort_by_key(|p| p.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("").to_string());
            let keep = if surge > 0 { 2 } else { 1 };
            if live.len() > keep {
                to_delete.extend(live.split_off(keep));
            }
        }
        // Pods on nodes that are gone.
        for (node, here) in by_node {
            if !node.is_empty() && !nodes.iter().any(|n| meta::name(n) == node) {
                to_delete.extend(here.iter().cloned());
            }
        }
        for node in &to_create {
            self.create_pod(ds, template, hash, node).await?;
        }
        for p in &to_delete {
            self.delete_pod(ds, p).await?;
        }
        if !to_create.is_empty() || !to_delete.is_empty() {
            return Ok(());
        }
        if ds.pointer("/spec/updateStrategy/type").and_then(Value::as_str).unwrap_or("RollingUpdate") != "RollingUpdate" {
            return Ok(());
        }
        let min_ready = int(ds, "/spec/minReadySeconds", 0);
        let now = time::OffsetDateTime::now_utc();
        let desired = nodes.iter().filter(|n| should_run(template, n)).count() as i64;
        let max_unavailable = ds
            .pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable")
            .map(|v| crate::objects::int_or_percent(v, desired, true).unwrap_or(1))
            .unwrap_or(if surge > 0 { 0 } else { 1 });
        let old = |p: &Value| p.pointer(&format!("/metadata/labels/{REVISION_LABEL}")).and_then(Value::as_str) != Some(hash);
        let mut unavailable = by_node.values().filter(|ps| !ps.iter().any(|p| is_available(p, min_ready, now))).count() as i64;
        for (node, here) in by_node {
            let Some(old_pod) = here.iter().find(|p| old(p)) else { continue };
            let new_pod = here.iter().find(|p| !old(p));
            if surge > 0 {
                // Surge: the new pod first, the old one once the new is available.
                match new_pod {
                    None => self.create_pod(ds, template, hash, node).await?,
                    Some(n) if is_available(n, min_ready, now) => self.delete_pod(ds, old_pod).await?,
                    Some(_) => {}
                }
                continue;
            }
            let old_available = is_available(old_pod, min_ready, now);
            if old_available && unavailable >= max_unavailable {
                continue;
            }
            self.delete_pod(ds, old_pod).await?;
            if old_available {
                unavailable += 1;
            }
        }
        Ok(())
    }

    async fn write_status(&self, ds: &Value, template: &Value, hash: &str, nodes: &[Value], owned: &[Value]) -> Result<(), ApiError> {
        let min_ready = int(ds, "/spec/minReadySeconds", 0);
        let now = time::OffsetDateTime::now_utc();
        let (mut desired, mut current, mut misscheduled, mut ready, mut available, mut updated) = (0, 0, 0, 0, 0, 0);
        for node in nodes {
            let here: Vec<&Value> = owned.iter().filter(|p| node_of(p) == meta::name(node)).collect();
            if should_run(template, node) {
                desired += 1;
                if !here.is_empty() {
                    current += 1;
                    if here.iter().any(|p| crate::replicasets::ready_since(p).is_some()) {
                        ready += 1;
                    }
                    if here.iter().any(|p| is_available(p, min_ready, now)) {
                        available += 1;
                    }
                    if here.iter().any(|p| p.pointer(&format!("/metadata/labels/{REVISION_LABEL}")).and_then(Value::as_str) == Some(hash)) {
                        updated += 1;
                    }
                }
            } else if !here.is_empty() {
                misscheduled += 1;
            }
        }
        let mut status = json!({
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "desiredNumberScheduled": desired,
            "numberReady": ready,
            "observedGeneration": ds.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "updatedNumberScheduled": updated,
            "numberAvailable": available,
            "numberUnavailable": desired - available,
        });
        if let Some(c) = ds.pointer("/status/collisionCount") {
            status["collisionCount"] = c.clone();
        }
        for k in ["updatedNumberScheduled", "numberAvailable", "numberUnavailable"] {
            if status[k] == json!(0) {
                if let Some(m) = status.as_object_mut() {
                    m.remove(k);
                }
            }
        }
        crate::objects::write_status(&self.registry, daemon_sets(), ds, status).await
    }
}
