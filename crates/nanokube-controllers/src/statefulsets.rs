//! kube-controller-manager's StatefulSet controller: pods with stable names
//! (`<set>-<ordinal>`), hostnames and claims, made and removed in order.
//!
//! - Pods: `<set>-<ordinal>` from `spec.ordinals.start`, hostname the pod's name and
//!   subdomain `spec.serviceName`, labels `statefulset.kubernetes.io/pod-name`,
//!   `apps.kubernetes.io/pod-index` and `controller-revision-hash`; each claim template
//!   becomes a PersistentVolumeClaim `<template>-<set>-<ordinal>` made before its pod and
//!   mounted in its place.
//! - `OrderedReady`: one pod at a time, each Running and Ready before the next, removed
//!   from the highest ordinal down, one at a time; `Parallel`: all at once. Failed or
//!   succeeded pods are replaced.
//! - Revisions: each template is a ControllerRevision (`<set>-<hash>`, its data the
//!   template as upstream's patch, numbered; a template rolled back to takes the next
//!   number); `RollingUpdate` replaces pods from the highest ordinal down to
//!   `partition`, at most `maxUnavailable` (default 1) unavailable at once; `OnDelete`
//!   waits for the user to delete them. `currentRevision` becomes the update revision
//!   once every pod runs it; unused revisions beyond `revisionHistoryLimit` are deleted.
//! - `persistentVolumeClaimRetentionPolicy`: `whenDeleted: Delete` makes the set own its
//!   claims (the garbage collector removes them with it), `whenScaled: Delete` hands a
//!   removed pod's claims to that pod.
//! - Status: `replicas`, `readyReplicas`, `availableReplicas`, `currentReplicas`,
//!   `updatedReplicas`, `currentRevision`, `updateRevision`, `collisionCount`,
//!   `observedGeneration`; events as upstream's.

use std::collections::BTreeMap;
use std::sync::Arc;

use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::{controller_key, controller_ref, def, int, key_of, pods};
use crate::workqueue::Observed;
use crate::workqueue::WorkQueue;

const COMPONENT: &str = "statefulset-controller";
/// The label naming a pod's (or a revision's) template revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

fn sets() -> &'static resources::ResourceDef {
    def("apps", "statefulsets")
}

fn is_running_and_ready(pod: &Value) -> bool {
    pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running") && crate::replicasets::ready_since(pod).is_some()
}

fn is_finished(pod: &Value) -> bool {
    matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Failed" | "Succeeded"))
}

fn revision_of(pod: &Value) -> &str {
    pod.pointer(&format!("/metadata/labels/{REVISION_LABEL}")).and_then(Value::as_str).unwrap_or("")
}

/// The ordinal of `pod` if it is named `<set>-<n>`.
fn ordinal(set: &str, pod: &Value) -> Option<i64> {
    meta::name(pod).strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

/// The controller.
pub struct StatefulSetController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
}

impl StatefulSetController {
    /// A controller acting through `registry`.
    pub fn new(registry: Arc<Registry>) -> Arc<StatefulSetController> {
        Arc::new(StatefulSetController { registry, queue: WorkQueue::new() })
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[sets().key_prefix(), pods().key_prefix()];
        crate::workqueue::run(self.clone(), &store, &queue, COMPONENT, prefixes, shutdown, Self::enqueue_all, Self::observe, |me, key| async move {
            me.sync(&key).await
        })
        .await
    }

    fn enqueue_all(&self) {
        crate::workqueue::enqueue_each(&self.registry, &self.queue, sets(), None);
    }

    fn observe(&self, change: &Observed) {
        if change.is("StatefulSet") {
            self.queue.add(&key_of(change.value()));
            return;
        }
        // An orphan with no StatefulSet in its namespace to adopt it.
        if !change.may_have_owners() && !crate::workqueue::any_in(&self.registry, sets(), &change.namespace) {
            return;
        }
        let v = change.value();
        match controller_ref(v) {
            Some(_) => {
                if let Some(key) = controller_key(v, "StatefulSet") {
                    self.queue.add(&key);
                }
            }
            None => crate::workqueue::enqueue_adopters(&self.registry, &self.queue, sets(), v),
        }
    }

    fn owner_ref(set: &Value) -> Value {
        crate::objects::controller_reference("apps/v1", "StatefulSet", set)
    }

    async fn event(&self, set: &Value, ty: &str, reason: &str, message: &str) {
        crate::events::record(&self.registry, COMPONENT, set, ty, reason, message).await;
    }

    /// The claims a pod of `ordinal` mounts, as `(volume name, claim name, claim)`.
    fn claims(set: &Value, ordinal: i64) -> Vec<(String, String, Value)> {
        let set_name = meta::name(set);
        let templates = set.pointer("/spec/volumeClaimTemplates").and_then(Value::as_array).cloned().unwrap_or_default();
        templates
            .into_iter()
            .map(|t| {
                let volume = meta::name(&t).to_string();
                let claim_name = format!("{volume}-{set_name}-{ordinal}");
                let mut labels = t.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
                if let Some(sel) = set.pointer("/spec/selector/matchLabels").and_then(Value::as_object) {
                    for (k, v) in sel {
                        labels[k] = v.clone();
                    }
                }
                let mut metadata = json!({"name": claim_name, "namespace": meta::namespace(set), "labels": labels});
                if let Some(a) = t.pointer("/metadata/annotations") {
                    metadata["annotations"] = a.clone();
                }
                if set.pointer("/spec/persistentVolumeClaimRetentionPolicy/whenDeleted").and_then(Value::as_str) == Some("Delete") {
                    metadata["ownerReferences"] = json!([Self::owner_ref(set)]);
                }
                let claim =
                    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": t.get("spec").cloned().unwrap_or(json!({}))});
                (volume, claim_name, claim)
            })
            .collect()
    }

    async fn create_pod(&self, set: &Value, revision: &Value, ordinal: i64) -> Result<(), ApiError> {
        let ns = meta::namespace(set);
        let set_name = meta::name(set);
        let name = format!("{set_name}-{ordinal}");
        let claims = Self::claims(set, ordinal);
        for (_, claim_name, claim) in &claims {
            match self.registry.create(def("", "persistentvolumeclaims"), ns, claim.clone(), &WriteOptions::default()).await {
                Ok(_) => {
                    self.event(set, "Normal", "SuccessfulCreate", &format!("create Claim {claim_name} Pod {name} in StatefulSet {set_name} success")).await
                }
                Err(e) if e.code == 409 => {}
                Err(e) => {
                    self.event(
                        set,
                        "Warning",
                        "FailedCreate",
                        &format!("create Claim {claim_name} for Pod {name} in StatefulSet {set_name} failed error: {}", e.message),
                    )
                    .await;
                    return Err(e);
                }
            }
        }
        let template = crate::history::template_of(revision);
        let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
        metadata["name"] = json!(name);
        metadata["namespace"] = json!(ns);
        for k in ["generateName", "uid", "resourceVersion", "creationTimestamp"] {
            if let Some(m) = metadata.as_object_mut() {
                m.remove(k);
            }
        }
        metadata["labels"][POD_NAME_LABEL] = json!(name);
        metadata["labels"][POD_INDEX_LABEL] = json!(ordinal.to_string());
        metadata["labels"][REVISION_LABEL] = json!(meta::name(revision));
        metadata["ownerReferences"] = json!([Self::owner_ref(set)]);
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        spec["hostname"] = json!(name);
        if let Some(svc) = set.pointer("/spec/serviceName").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            spec["subdomain"] = json!(svc);
        }
        if !claims.is_empty() {
            let mut volumes: Vec<Value> = spec.get("volumes").and_then(Value::as_array).cloned().unwrap_or_default();
            for (volume, claim_name, _) in &claims {
                volumes.retain(|v| v.get("name").and_then(Value::as_str) != Some(volume.as_str()));
                volumes.push(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim_name}}));
            }
            spec["volumes"] = json!(volumes);
        }
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
        match self.registry.create(pods(), ns, pod, &WriteOptions::default()).await {
            Ok(_) => {
                self.event(set, "Normal", "SuccessfulCreate", &format!("create Pod {name} in StatefulSet {set_name} successful")).await;
                Ok(())
            }
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => {
                self.event(set, "Warning", "FailedCreate", &format!("create Pod {name} in StatefulSet {set_name} failed error: {}", e.message)).await;
                Err(e)
            }
        }
    }

    async fn delete_pod(&self, set: &Value, pod: &Value) -> Result<(), ApiError> {
        let opts = DeleteOptions { precondition_uid: Some(meta::uid(pod).to_string()), ..Default::default() };
        match self.registry.delete(pods(), meta::namespace(pod), meta::name(pod), &opts).await {
            Ok(_) => {
                self.event(set, "Normal", "SuccessfulDelete", &format!("delete Pod {} in StatefulSet {} successful", meta::name(pod), meta::name(set))).await;
                Ok(())
            }
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => {
                self.event(
                    set,
                    "Warning",
                    "FailedDelete",
                    &format!("delete Pod {} in StatefulSet {} failed error: {}", meta::name(pod), meta::name(set), e.message),
                )
                .await;
                Err(e)
            }
        }
    }

    /// `whenScaled: Delete`: a pod removed by a scale-down takes its claims with it.
    async fn hand_claims_to(&self, set: &Value, pod: &Value, ordinal: i64) {
        if set.pointer("/spec/persistentVolumeClaimRetentionPolicy/whenScaled").and_then(Value::as_str) != Some("Delete") {
            return;
        }
        for (_, claim_name, _) in Self::claims(set, ordinal) {
            let owner =
                json!({"apiVersion": "v1", "kind": "Pod", "name": meta::name(pod), "uid": meta::uid(pod), "controller": true, "blockOwnerDeletion": true});
            let _ = self
                .registry
                .update_with(def("", "persistentvolumeclaims"), meta::namespace(set), &claim_name, &WriteOptions::default(), |cur| {
                    let mut n = cur.clone();
                    meta::metadata_mut(&mut n).insert("ownerReferences".into(), json!([owner.clone()]));
                    Ok(n)
                })
                .await;
        }
    }

    async fn sync(&self, key: &str) -> Result<(), ApiError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let mut set = match self.registry.get(sets(), ns, name) {
            Ok(o) => o.to_value(),
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let sel = LabelSelector::from_object(set.pointer("/spec/selector").unwrap_or(&Value::Null))?;
        let uid = meta::uid(&set).to_string();
        let owned = crate::objects::claim_pods(&self.registry, &set, &Self::owner_ref(&set), &sel, |p| ordinal(name, p).is_some()).await?;
        let (all_revisions, update_revision, collisions) =
            crate::history::ensure(&self.registry, crate::history::Owner::StatefulSet, &set, &Self::owner_ref(&set)).await?;
        if collisions > 0 {
            set["status"]["collisionCount"] = json!(collisions);
        }
        let update_name = meta::name(&update_revision).to_string();
        let current_name = set
            .pointer("/status/currentRevision")
            .and_then(Value::as_str)
            .filter(|c| all_revisions.iter().any(|r| meta::name(r) == *c))
            .map(String::from)
            .unwrap_or_else(|| update_name.clone());
        let current_revision = all_revisions.iter().find(|r| meta::name(r) == current_name).cloned().unwrap_or_else(|| update_revision.clone());
        if !meta::is_deleting(&set) {
            self.reconcile(&set, &owned, &current_revision, &update_revision).await?;
        }
        // Status from a fresh read of the pods.
        let owned: Vec<Value> = self
            .registry
            .list(pods(), Some(ns), &ListOptions::default())?
            .items
            .iter()
            .map(|p| p.to_value())
            .filter(|p| controller_ref(p).and_then(|r| r.get("uid")).and_then(Value::as_str) == Some(uid.as_str()))
            .collect();
        self.write_status(&set, &owned, &current_name, &update_name).await?;
        let in_use = |r: &str| r == current_name || r == update_name || owned.iter().any(|p| revision_of(p) == r);
        crate::history::clean(&self.registry, &all_revisions, int(&set, "/spec/revisionHistoryLimit", 10), in_use).await;
        Ok(())
    }

    /// One step toward the wanted pods (upstream's `updateStatefulSet`).
    async fn reconcile(&self, set: &Value, owned: &[Value], current: &Value, update: &Value) -> Result<(), ApiError> {
        let name = meta::name(set);
        let start = int(set, "/spec/ordinals/start", 0);
        let replicas = int(set, "/spec/replicas", 1).max(0);
        let parallel = set.pointer("/spec/podManagementPolicy").and_then(Value::as_str) == Some("Parallel");
        let mut by_ordinal: BTreeMap<i64, &Value> = BTreeMap::new();
        let mut condemned: Vec<(i64, &Value)> = Vec::new();
        for p in owned {
            let Some(o) = ordinal(name, p) else { continue };
            if o >= start && o < start + replicas {
                by_ordinal.insert(o, p);
            } else {
                condemned.push((o, p));
            }
        }
        condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));
        let strategy = set.pointer("/spec/updateStrategy/type").and_then(Value::as_str).unwrap_or("RollingUpdate");
        let partition = int(set, "/spec/updateStrategy/rollingUpdate/partition", 0);
        // New pods run the update revision unless the partition keeps them at the current.
        let revision_for = |o: i64| if strategy == "RollingUpdate" && o < partition { current } else { update };
        for o in start..start + replicas {
            match by_ordinal.get(&o) {
                None => {
                    self.create_pod(set, revision_for(o), o).await?;
                    if !parallel {
                        return Ok(());
                    }
                }
                Some(pod) if is_finished(pod) && !meta::is_deleting(pod) => {
                    // Failed or done: replaced (deleted now, made again on the next pass).
                    self.delete_pod(set, pod).await?;
                    if !parallel {
                        return Ok(());
                    }
                }
                Some(pod) if !parallel && (meta::is_deleting(pod) || !is_running_and_ready(pod)) => return Ok(()),
                Some(_) => {}
            }
        }
        // Scale down from the highest ordinal, one at a time unless Parallel.
        for (o, pod) in &condemned {
            if meta::is_deleting(pod) {
                if parallel {
                    continue;
                }
                return Ok(());
            }
            self.hand_claims_to(set, pod, *o).await;
            self.delete_pod(set, pod).await?;
            if !parallel {
                return Ok(());
            }
        }
        if strategy != "RollingUpdate" {
            return Ok(());
        }
        // Rolling update: highest ordinal first, down to the partition, while no more
        // than maxUnavailable pods are unavailable.
        let max_unavailable = set
            .pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable")
            .map(|v| crate::objects::int_or_percent(v, replicas, true).unwrap_or(1).max(1))
            .unwrap_or(1);
        let unavailable = by_ordinal.values().filter(|p| meta::is_deleting(p) || !is_running_and_ready(p)).count() as i64;
        if unavailable >= max_unavailable {
            return Ok(());
        }
        let mut budget = max_unavailable - unavailable;
        for o in (partition.max(start)..start + replicas).rev() {
            let Some(pod) = by_ordinal.get(&o) else { continue };
            if revision_of(pod) != meta::name(update) && !meta::is_deleting(pod) {
                self.delete_pod(set, pod).await?;
                budget -= 1;
                if budget == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn write_status(&self, set: &Value, owned: &[Value], current: &str, update: &str) -> Result<(), ApiError> {
        let min_ready = int(set, "/spec/minReadySeconds", 0);
        let now = time::OffsetDateTime::now_utc();
        let live: Vec<&Value> = owned.iter().filter(|p| !is_finished(p)).collect();
        let ready = live.iter().filter(|p| is_running_and_ready(p)).count() as i64;
        let available = live
            .iter()
            .filter(|p| is_running_and_ready(p) && crate::replicasets::ready_since(p).is_some_and(|t| (now - t).whole_seconds() >= min_ready))
            .count() as i64;
        let updated = live.iter().filter(|p| revision_of(p) == update).count() as i64;
        let replicas = int(set, "/spec/replicas", 1);
        // Every pod on the update revision and ready: it becomes the current one.
        let current = if updated == replicas && ready == replicas && live.len() as i64 == replicas { update } else { current };
        let current_count = live.iter().filter(|p| revision_of(p) == current).count() as i64;
        let mut status = json!({
            "observedGeneration": set.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": live.len(),
            "readyReplicas": ready,
            "currentReplicas": current_count,
            "updatedReplicas": updated,
            "currentRevision": current,
            "updateRevision": update,
            "collisionCount": int(set, "/status/collisionCount", 0),
            "availableReplicas": available,
        });
        // Upstream omits zero counts (omitempty) but `replicas` and `availableReplicas`.
        for k in ["readyReplicas", "currentReplicas", "updatedReplicas"] {
            if status[k] == json!(0) {
                if let Some(m) = status.as_object_mut() {
                    m.remove(k);
                }
            }
        }
        crate::objects::write_status(&self.registry, sets(), set, status).await
    }
}
