//! kube-controller-manager's disruption controller: every PodDisruptionBudget's status
//! (`expectedPods`, `currentHealthy`, `desiredHealthy`, `disruptionsAllowed`,
//! `observedGeneration`, `disruptedPods`, and the `DisruptionAllowed` condition), which
//! the eviction subresource spends.
//!
//! - Expected pods: the selected pods for an integer `minAvailable`; otherwise the
//!   replicas of the controllers that own them (ReplicaSets, Deployments above them,
//!   ReplicationControllers, StatefulSets), percentages rounded up. Selected pods without
//!   a controller then make the status uncomputable (`SyncFailed`), as upstream.
//! - Healthy: Ready and not being deleted, and not in `disruptedPods` (an eviction the
//!   controller has not yet seen delete its pod); entries older than two minutes whose
//!   pod still stands are dropped (upstream's `DeletionTimeout`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::{controller_ref, def, int_or_percent, key_of};
use crate::workqueue::Observed;
use crate::workqueue::WorkQueue;

const COMPONENT: &str = "controllermanager";
/// How long an eviction may take to delete its pod before the budget counts it again.
const DELETION_TIMEOUT: i64 = 120;

fn budgets() -> &'static resources::ResourceDef {
    def("policy", "poddisruptionbudgets")
}

fn is_ready(pod: &Value) -> bool {
    crate::replicasets::ready_since(pod).is_some()
}

/// The controller.
pub struct DisruptionController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
}

impl DisruptionController {
    /// A controller acting through `registry`.
    pub fn new(registry: Arc<Registry>) -> Arc<DisruptionController> {
        Arc::new(DisruptionController { registry, queue: WorkQueue::new() })
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[budgets().key_prefix(), def("", "pods").key_prefix()];
        crate::workqueue::run(
            self.clone(),
            &store,
            &queue,
            COMPONENT,
            prefixes,
            shutdown,
            |c| c.enqueue_namespace(None),
            Self::observe,
            |me, key| async move { me.sync(&key).await },
        )
        .await
    }

    fn enqueue_namespace(&self, namespace: Option<&str>) {
        crate::workqueue::enqueue_each(&self.registry, &self.queue, budgets(), namespace);
    }

    fn observe(&self, change: &Observed) {
        if change.is("PodDisruptionBudget") {
            self.queue.add(&key_of(change.value()));
            return;
        }
        // A pod: the budgets of its namespace that select it (now or before); it is
        // decoded only if there are any.
        let Ok(list) = self.registry.list(budgets(), Some(&change.namespace), &ListOptions::default()) else { return };
        if list.items.is_empty() {
            return;
        }
        let v = change.value();
        for b in &list.items {
            let Ok(sel) = LabelSelector::from_object(b.value().pointer("/spec/selector").unwrap_or(&Value::Null)) else { continue };
            if sel.matches(meta::labels(v)) || change.prev.as_ref().is_some_and(|p| sel.matches(meta::labels(p.value()))) {
                self.queue.add(&key_of(b.value()));
            }
        }
    }

    /// The replicas of the controller owning `pod`, with the controller's uid (a
    /// ReplicaSet under a Deployment counts as the Deployment).
    fn owner_scale(&self, pod: &Value) -> Option<(String, i64)> {
        let r = controller_ref(pod)?;
        let ns = meta::namespace(pod);
        let name = r.get("name").and_then(Value::as_str)?;
        let replicas = |o: &Value| o.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        match r.get("kind").and_then(Value::as_str)? {
            "ReplicaSet" => {
                let rs = self.registry.get(def("apps", "replicasets"), ns, name).ok()?.to_value();
                if let Some(d) = controller_ref(&rs).filter(|d| d.get("kind").and_then(Value::as_str) == Some("Deployment")) {
                    let dep = self.registry.get(def("apps", "deployments"), ns, d.get("name").and_then(Value::as_str)?).ok()?.to_value();
                    return Some((meta::uid(&dep).to_string(), replicas(&dep)));
                }
                Some((meta::uid(&rs).to_string(), replicas(&rs)))
            }
            "ReplicationController" => {
                self.registry.get(def("", "replicationcontrollers"), ns, name).ok().map(|o| (meta::uid(o.value()).to_string(), replicas(o.value())))
            }
            "StatefulSet" => self.registry.get(def("apps", "statefulsets"), ns, name).ok().map(|o| (meta::uid(o.value()).to_string(), replicas(o.value()))),
            _ => None,
        }
    }

    async fn sync(&self, key: &str) -> Result<(), ApiError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let pdb = match self.registry.get(budgets(), ns, name) {
            Ok(o) => o.to_value(),
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let sel = LabelSelector::from_object(pdb.pointer("/spec/selector").unwrap_or(&Value::Null))?;
        let pods: Vec<Value> = if sel.requirements.is_empty() {
            Vec::new()
        } else {
            let list = self.registry.list(def("", "pods"), Some(ns), &ListOptions::default())?;
            list.items.iter().map(|p| p.to_value()).filter(|p| sel.matches(meta::labels(p))).collect()
        };
        let now = time::OffsetDateTime::now_utc();
        // Evictions not yet seen through: kept until their pod goes, or two minutes.
        let mut disrupted: BTreeMap<String, Value> = BTreeMap::new();
        let mut recheck = None;
        if let Some(m) = pdb.pointer("/status/disruptedPods").and_then(Value::as_object) {
            for (pod, at) in m {
                let standing = pods.iter().any(|p| meta::name(p) == pod && !meta::is_deleting(p));
                let since = at.as_str().and_then(meta::parse_time).unwrap_or(now);
                let left = DELETION_TIMEOUT - (now - since).whole_seconds();
                if standing && left > 0 {
                    disrupted.insert(pod.clone(), at.clone());
                    recheck = Some(recheck.map_or(left, |r: i64| r.min(left)));
                }
            }
        }
        let healthy = pods.iter().filter(|p| is_ready(p) && !meta::is_deleting(p) && !disrupted.contains_key(meta::name(p))).count() as i64;
        let min_available = pdb.pointer("/spec/minAvailable");
        let max_unavailable = pdb.pointer("/spec/maxUnavailable");
        let mut failure = None;
        let (expected, desired) = match (min_available, max_unavailable) {
            (Some(m), None) if m.is_i64() => (pods.len() as i64, m.as_i64().unwrap_or(0)),
            _ => {
                let mut scales: HashMap<String, i64> = HashMap::new();
                for p in &pods {
                    match self.owner_scale(p) {
                        Some((uid, n)) => {
                            scales.insert(uid, n);
                        }
                        None => failure = Some(format!("found no controllers for pod {:?}", meta::name(p))),
                    }
                }
                let expected: i64 = scales.values().sum();
                let desired = match (min_available, max_unavailable) {
                    (Some(m), _) => int_or_percent(m, expected, true).unwrap_or(0),
                    (None, Some(u)) => (expected - int_or_percent(u, expected, true).unwrap_or(0)).max(0),
                    (None, None) => 0,
                };
                (expected, desired)
            }
        };
        let allowed = if failure.is_some() || pdb.pointer("/metadata/deletionTimestamp").is_some() { 0 } else { (healthy - desired).max(0) };
        let old_condition =
            pdb.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionAllowed")).cloned();
        let (status_word, reason, message) = match &failure {
            Some(m) => ("False", "SyncFailed", m.clone()),
            None if allowed > 0 => ("True", "SufficientPods", String::new()),
            None => ("False", "InsufficientPods", String::new()),
        };
        let since = old_condition
            .as_ref()
            .filter(|c| c["status"] == status_word && c["reason"] == reason)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(meta::now_rfc3339()));
        let mut condition = json!({"type": "DisruptionAllowed", "status": status_word, "reason": reason, "message": message, "lastTransitionTime": since});
        if let Some(g) = pdb.pointer("/metadata/generation") {
            condition["observedGeneration"] = g.clone();
        }
        let mut status = json!({
            "observedGeneration": pdb.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "conditions": [condition],
        });
        if !disrupted.is_empty() {
            status["disruptedPods"] = json!(disrupted);
        }
        // Against the version read: an eviction that spent a disruption meanwhile must
        // not be overwritten (a conflict is retried on a fresh read).
        if pdb.get("status") != Some(&status) {
            let rv = meta::resource_version(&pdb).to_string();
            let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
            self.registry
                .update_with(budgets(), ns, name, &opts, |cur| {
                    if meta::resource_version(cur) != rv {
                        return Err(ApiError::conflict(budgets().plural, budgets().group, name));
                    }
                    let mut next = cur.clone();
                    next["status"] = status.clone();
                    Ok(next)
                })
                .await?;
        }
        if let Some(secs) = recheck {
            self.queue.add_after(key, Duration::from_secs(secs.max(1) as u64));
        }
        Ok(())
    }
}
