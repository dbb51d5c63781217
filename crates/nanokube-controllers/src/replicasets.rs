//! kube-controller-manager's ReplicaSet and ReplicationController controllers (one code,
//! two kinds): each keeps `spec.replicas` active pods that match its selector.
//!
//! - Pods are made from the template (`generateName: <owner>-`, the template's labels and
//!   annotations, an owner reference with `controller: true` and `blockOwnerDeletion`) in
//!   slow-start batches (1, 2, 4, …; at most 500 per pass), and removed by upstream's
//!   ranking (unscheduled, then pending, then not ready, then more of ours on the same
//!   node, then ready for less time, then more restarts, then newer ones first).
//! - Orphans that match the selector are adopted and owned pods that stopped matching are
//!   released, by writing their owner references, as upstream's `ClaimPods`.
//! - "Expectations": after creating or deleting, a controller waits to observe its own
//!   writes before it counts again, so it never makes or removes a pod twice.
//! - Status: `replicas`, `fullyLabeledReplicas`, `readyReplicas`, `availableReplicas`
//!   (ready for `minReadySeconds`), `observedGeneration`, and the `ReplicaFailure`
//!   condition when pods cannot be made; events `SuccessfulCreate`, `SuccessfulDelete`,
//!   `FailedCreate` with upstream's messages.
//!
//! Failures are retried with the queue's per-key back-off. Pods stay Pending where no node
//! runs them, as under envtest with kube-controller-manager.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use nanokube_store::EventKind;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::{def, key_of, pods};
use crate::workqueue::{Expectations, Observed, WorkQueue};

/// Most pods made or removed in one pass (upstream's `BurstReplicas`).
const BURST: usize = 500;

/// Which of the two kinds a controller runs.
#[derive(Clone, Copy)]
pub struct Kind {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    api_version: &'static str,
    component: &'static str,
}

/// `apps/v1` ReplicaSets.
pub const REPLICA_SETS: Kind = Kind { group: "apps", plural: "replicasets", kind: "ReplicaSet", api_version: "apps/v1", component: "replicaset-controller" };
/// `v1` ReplicationControllers.
pub const REPLICATION_CONTROLLERS: Kind =
    Kind { group: "", plural: "replicationcontrollers", kind: "ReplicationController", api_version: "v1", component: "replication-controller" };

/// The owner's selector: a LabelSelector (ReplicaSet) or a map of labels
/// (ReplicationController, defaulted to the template's labels).
fn selector(kind: Kind, owner: &Value) -> Result<LabelSelector, ApiError> {
    let sel = owner.pointer("/spec/selector").cloned().unwrap_or(Value::Null);
    if kind.group.is_empty() {
        let labels =
            if sel.as_object().is_some_and(|m| !m.is_empty()) { sel } else { owner.pointer("/spec/template/metadata/labels").cloned().unwrap_or(json!({})) };
        LabelSelector::from_object(&json!({"matchLabels": labels}))
    } else {
        LabelSelector::from_object(&sel)
    }
}

fn is_active(pod: &Value) -> bool {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    phase != "Succeeded" && phase != "Failed" && !meta::is_deleting(pod)
}

pub(crate) fn ready_since(pod: &Value) -> Option<time::OffsetDateTime> {
    let c = pod.pointer("/status/conditions").and_then(Value::as_array)?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?;
    if c.get("status").and_then(Value::as_str) != Some("True") {
        return None;
    }
    let t = c.get("lastTransitionTime").and_then(Value::as_str).unwrap_or("");
    Some(time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap_or(time::OffsetDateTime::UNIX_EPOCH))
}

fn available(pod: &Value, min_ready: i64, now: time::OffsetDateTime) -> bool {
    ready_since(pod).is_some_and(|since| min_ready <= 0 || (now - since).whole_seconds() >= min_ready)
}

/// Upstream's `ActivePodsWithRanks` order: the pods to delete first come first.
pub(crate) fn deletion_order(a: &Value, b: &Value, rank: &dyn Fn(&Value) -> usize) -> Ordering {
    let node = |p: &Value| p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").to_string();
    let phase = |p: &Value| match p.pointer("/status/phase").and_then(Value::as_str) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    };
    let restarts = |p: &Value| -> i64 {
        p.pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
            .max()
            .unwrap_or(0)
    };
    let created = |p: &Value| p.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("").to_string();
    (!node(a).is_empty())
        .cmp(&!node(b).is_empty())
        .then(phase(a).cmp(&phase(b)))
        .then(ready_since(a).is_some().cmp(&ready_since(b).is_some()))
        .then(rank(b).cmp(&rank(a)))
        .then(ready_since(b).cmp(&ready_since(a)))
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
}

/// One controller (of one kind).
pub struct ReplicaController {
    registry: Arc<Registry>,
    kind: Kind,
    queue: Arc<WorkQueue>,
    expectations: Expectations,
}

impl ReplicaController {
    /// The controller of `kind`.
    pub fn new(registry: Arc<Registry>, kind: Kind) -> Arc<ReplicaController> {
        Arc::new(ReplicaController { registry, kind, queue: WorkQueue::new(), expectations: Expectations::default() })
    }

    fn owners(&self) -> &'static resources::ResourceDef {
        def(self.kind.group, self.kind.plural)
    }

    /// Run until `shutdown`: every owner once, then what changes.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[self.owners().key_prefix(), pods().key_prefix()];
        crate::workqueue::run(
            self.clone(),
            &store,
            &queue,
            self.kind.component,
            prefixes,
            shutdown,
            |c| c.enqueue_all(None),
            Self::observe,
            |me, key| async move { me.sync(&key).await },
        )
        .await
    }

    fn enqueue_all(&self, namespace: Option<&str>) {
        crate::workqueue::enqueue_each(&self.registry, &self.queue, self.owners(), namespace);
    }

    /// The owners a pod without a controller matches.
    fn enqueue_matching(&self, pod: &Value) {
        self.enqueue_matching_in(meta::namespace(pod), || pod);
    }

    /// [`Self::enqueue_matching`] for a pod of `namespace`, looked into only if an owner
    /// there may select it.
    fn enqueue_matching_in<'a>(&self, namespace: &str, pod: impl FnOnce() -> &'a Value) {
        let Ok(list) = self.registry.list(self.owners(), Some(namespace), &ListOptions::default()) else { return };
        if list.items.is_empty() {
            return;
        }
        let labels = pod().pointer("/metadata/labels").and_then(Value::as_object);
        for o in &list.items {
            if selector(self.kind, o.value()).is_ok_and(|s| s.matches(labels)) {
                self.queue.add(&key_of(o.value()));
            }
        }
    }

    /// The owner key of a pod controlled by one of ours.
    fn owner_key(&self, pod: &Value) -> Option<String> {
        crate::objects::controller_key(pod, self.kind.kind)
    }

    fn observe(&self, change: &Observed) {
        if change.is(self.kind.kind) {
            self.queue.add(&key_of(change.value()));
            return;
        }
        // An orphan pod (before and after) matters only to owners in its namespace that
        // may adopt it: with none there, it need not be decoded.
        if !change.may_have_owners() {
            if change.kind != EventKind::Deleted {
                self.enqueue_matching_in(&change.namespace, || change.value());
            }
            return;
        }
        let v = change.value();
        let prev = change.prev.as_ref();
        match (self.owner_key(v), change.kind) {
            (Some(key), EventKind::Created) => {
                self.expectations.creation_observed(&key);
                self.queue.add(&key);
            }
            (Some(key), EventKind::Deleted) => {
                // Observed already when its deletion began.
                if !meta::is_deleting(v) {
                    self.expectations.deletion_observed(&key);
                }
                self.queue.add(&key);
            }
            (Some(key), EventKind::Updated) => {
                if meta::is_deleting(v) && !prev.is_some_and(|p| meta::is_deleting(p.value())) {
                    self.expectations.deletion_observed(&key);
                }
                self.queue.add(&key);
            }
            (None, EventKind::Deleted) => {}
            (None, _) => self.enqueue_matching(v),
        }
        // A pod whose owner changed: the old owner looks again too.
        if let Some(old_key) = prev.and_then(|p| self.owner_key(p.value())) {
            if self.owner_key(v).as_deref() != Some(old_key.as_str()) {
                self.queue.add(&old_key);
            }
        }
    }

    fn owner_ref(&self, owner: &Value) -> Value {
        crate::objects::controller_reference(self.kind.api_version, self.kind.kind, owner)
    }

    /// Reconcile one owner.
    async fn sync(self: &Arc<Self>, key: &str) -> Result<(), ApiError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let owner = match self.registry.get(self.owners(), ns, name) {
            Ok(o) => o.to_value(),
            Err(e) if e.code == 404 => {
                self.expectations.forget(key);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let sel = selector(self.kind, &owner)?;
        let owned = crate::objects::claim_pods(&self.registry, &owner, &self.owner_ref(&owner), &sel, is_active).await?;
        let mut failure = None;
        if self.expectations.satisfied(key) && !meta::is_deleting(&owner) {
            if let Err(e) = self.manage(key, &owner, &owned).await {
                failure = Some(e);
            }
        }
        self.write_status(&owner, &owned, failure.as_ref()).await?;
        // Pods that become available later need another look.
        let min_ready = owner.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
        let now = time::OffsetDateTime::now_utc();
        if min_ready > 0 && owned.iter().any(|p| ready_since(p).is_some() && !available(p, min_ready, now)) {
            self.queue.add_after(key, Duration::from_secs(min_ready as u64));
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Make or remove pods toward `spec.replicas`.
    async fn manage(self: &Arc<Self>, key: &str, owner: &Value, owned: &[Value]) -> Result<(), ApiError> {
        let want = owner.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize;
        let have = owned.len();
        if have < want {
            let n = (want - have).min(BURST);
            self.expectations.expect(key, n as i64, 0);
            let mut left = n;
            let mut batch = 1;
            while left > 0 {
                let size = batch.min(left);
                let mut tasks = tokio::task::JoinSet::new();
                for _ in 0..size {
                    let (me, owner) = (self.clone(), owner.clone());
                    tasks.spawn(async move { me.create_pod(&owner).await });
                }
                let mut failed = None;
                while let Some(r) = tasks.join_next().await {
                    if let Ok(Err(e)) = r {
                        self.expectations.creation_observed(key);
                        failed = Some(e);
                    }
                }
                left -= size;
                if let Some(e) = failed {
                    // The batches not started will never be observed.
                    for _ in 0..left {
                        self.expectations.creation_observed(key);
                    }
                    return Err(e);
                }
                batch *= 2;
            }
        } else if have > want {
            let n = (have - want).min(BURST);
            let on_node = |p: &Value| {
                let node = p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
                if node.is_empty() {
                    0
                } else {
                    owned.iter().filter(|o| o.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)).count()
                }
            };
            let mut ranked: Vec<&Value> = owned.iter().collect();
            ranked.sort_by(|a, b| deletion_order(a, b, &on_node));
            self.expectations.expect(key, 0, n as i64);
            for pod in ranked.into_iter().take(n) {
                let opts = DeleteOptions { precondition_uid: Some(meta::uid(pod).to_string()), ..Default::default() };
                match self.registry.delete(pods(), meta::namespace(pod), meta::name(pod), &opts).await {
                    Ok(_) => {
                        crate::events::record(
                            &self.registry,
                            self.kind.component,
                            owner,
                            "Normal",
                            "SuccessfulDelete",
                            &format!("Deleted pod: {}", meta::name(pod)),
                        )
                        .await;
                    }
                    Err(e) => {
                        self.expectations.deletion_observed(key);
                        if e.code != 404 {
                            crate::events::record(
                                &self.registry,
                                self.kind.component,
                                owner,
                                "Warning",
                                "FailedDelete",
                                &format!("Error deleting: {}", e.message),
                            )
                            .await;
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn create_pod(&self, owner: &Value) -> Result<(), ApiError> {
        let template = owner.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let mut metadata = json!({"generateName": format!("{}-", meta::name(owner)), "ownerReferences": [self.owner_ref(owner)]});
        for k in ["labels", "annotations", "finalizers"] {
            if let Some(v) = template.pointer(&format!("/metadata/{k}")) {
                metadata[k] = v.clone();
            }
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template.get("spec").cloned().unwrap_or(json!({}))});
        match self.registry.create(pods(), meta::namespace(owner), pod, &WriteOptions::default()).await {
            Ok(p) => {
                crate::events::record(
                    &self.registry,
                    self.kind.component,
                    owner,
                    "Normal",
                    "SuccessfulCreate",
                    &format!("Created pod: {}", meta::name(p.value())),
                )
                .await;
                Ok(())
            }
            Err(e) => {
                crate::events::record(&self.registry, self.kind.component, owner, "Warning", "FailedCreate", &format!("Error creating: {}", e.message)).await;
                Err(e)
            }
        }
    }

    async fn write_status(&self, owner: &Value, owned: &[Value], failure: Option<&ApiError>) -> Result<(), ApiError> {
        let now = time::OffsetDateTime::now_utc();
        let min_ready = owner.pointer("/spec/minReadySeconds").and_then(Value::as_i64).unwrap_or(0);
        let template_labels = owner.pointer("/spec/template/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
        let fully_labeled = owned
            .iter()
            .filter(|p| {
                let labels = p.pointer("/metadata/labels").and_then(Value::as_object);
                template_labels.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .count();
        let ready = owned.iter().filter(|p| ready_since(p).is_some()).count();
        let avail = owned.iter().filter(|p| available(p, min_ready, now)).count();
        let old_conditions: Vec<Value> = owner.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut conditions: Vec<Value> = old_conditions.iter().filter(|c| c.get("type").and_then(Value::as_str) != Some("ReplicaFailure")).cloned().collect();
        if let Some(e) = failure {
            let same = old_conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("ReplicaFailure"));
            let since = same.and_then(|c| c.get("lastTransitionTime").cloned()).unwrap_or_else(|| json!(meta::now_rfc3339()));
            conditions.push(json!({"type": "ReplicaFailure", "status": "True", "lastTransitionTime": since, "reason": "FailedCreate", "message": e.message}));
        }
        let mut status = json!({
            "replicas": owned.len(),
            "fullyLabeledReplicas": fully_labeled,
            "readyReplicas": ready,
            "availableReplicas": avail,
            "observedGeneration": owner.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        });
        if !conditions.is_empty() {
            status["conditions"] = json!(conditions);
        }
        // Upstream omits zero counts (omitempty) but `replicas`.
        for k in ["fullyLabeledReplicas", "readyReplicas", "availableReplicas"] {
            if status[k] == json!(0) {
                if let Some(m) = status.as_object_mut() {
                    m.remove(k);
                }
            }
        }
        crate::objects::write_status(&self.registry, self.owners(), owner, status).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unscheduled_pending_and_unready_pods_go_first() {
        let pod = |name: &str, node: &str, phase: &str, ready: bool, created: &str| {
            json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {"nodeName": node},
                   "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
        };
        let mut pods = [
            pod("ready-old", "n", "Running", true, "2026-01-01T00:00:00Z"),
            pod("ready-new", "n", "Running", true, "2026-01-02T00:00:00Z"),
            pod("unready", "n", "Running", false, "2026-01-01T00:00:00Z"),
            pod("pending", "n", "Pending", false, "2026-01-01T00:00:00Z"),
            pod("unscheduled", "", "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by(|a, b| deletion_order(a, b, &|_| 1));
        let names: Vec<&str> = pods.iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["unscheduled", "pending", "unready", "ready-new", "ready-old"]);
    }
}
