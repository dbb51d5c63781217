//! The persistent volume controller (kube-controller-manager's `persistentvolume-binder`
//! and the two protection controllers): claims bound to volumes, phases, provisioning
//! handed to the class's provisioner, and the protection finalizers let go.
//!
//! - An unbound claim binds to a volume already meant for it (`claimRef`, as a
//!   provisioner leaves it) or to the smallest `Available` one of its class that has its
//!   access modes, volume mode, size and selector (with `WaitForFirstConsumer`, only once
//!   the scheduler has chosen a node, and only a volume that node reaches). Binding writes
//!   the volume's `claimRef`, the claim's `volumeName` and upstream's annotations
//!   (`pv.kubernetes.io/bind-completed`, `bound-by-controller`), then both `Bound`.
//! - A claim that nothing fits, of a class with a provisioner: `WaitForFirstConsumer`
//!   waits for the scheduler's `volume.kubernetes.io/selected-node`; then the claim is
//!   annotated `volume.kubernetes.io/storage-provisioner` for the provisioner to act on
//!   (`ExternalProvisioning` event). Without a class: `FailedBinding`.
//! - Volumes are `Available`, `Bound`, `Released` (their claim is gone; `Retain` keeps
//!   them so, `Delete` is the provisioner's to carry out) or `Failed` (`Delete` on a
//!   volume no provisioner made). A bound claim whose volume is gone is `Lost`.
//! - `kubernetes.io/pvc-protection` leaves a deleted claim once no running pod uses it;
//!   `kubernetes.io/pv-protection` leaves a deleted volume once it is not bound.
//!
//! Every change to claims, volumes, classes or pods leads to one pass over all of them
//! (bursts are taken together); fine for the few thousand volumes a test cluster has.
//! Not here: volume expansion, `dataSource` cloning, recycling, in-tree plugins.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use nanokube_api::expressions::parse_quantity;
use nanokube_api::{meta, resources};
use nanokube_apiserver::registry::{ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use nanokube_store::follow::{follow, Change};

/// The annotation the scheduler sets on a `WaitForFirstConsumer` claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The annotation naming the provisioner expected to make a claim's volume.
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// Set by provisioners on what they made.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
const COMPONENT: &str = "persistentvolume-controller";

fn def(group: &str, plural: &str) -> &'static resources::ResourceDef {
    resources::find(group, "v1", plural).expect("built-in resource")
}

fn list<T: for<'de> k8s_openapi::serde::Deserialize<'de>>(registry: &Registry, group: &str, plural: &str) -> Vec<T> {
    match registry.list(def(group, plural), None, &ListOptions::default()) {
        Ok(l) => l.items.iter().filter_map(|o| serde_json::from_value(o.to_value()).ok()).collect(),
        Err(_) => Vec::new(),
    }
}

fn annotation<'a>(m: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str) -> Option<&'a str> {
    m.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// Run until shutdown.
pub async fn run(registry: Arc<Registry>, shutdown: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let start = registry.store().current_revision();
    for (group, plural) in [("", "persistentvolumeclaims"), ("", "persistentvolumes"), ("storage.k8s.io", "storageclasses"), ("", "pods")] {
        let (tx, sd, store) = (tx.clone(), shutdown.clone(), registry.store().clone());
        let prefix = def(group, plural).key_prefix();
        let pods = plural == "pods";
        tokio::spawn(async move {
            follow(store, &prefix, start, sd, |change: Change<'_>| {
                // Only pods that use a claim can hold one back (pvc-protection); a pass
                // per change of every other pod is what a busy cluster cannot afford.
                if pods {
                    if let Change::Event(ev) = change {
                        if !uses_claim(&ev.kv.value) && !ev.prev.as_ref().is_some_and(|p| uses_claim(&p.value)) {
                            return true;
                        }
                    }
                }
                tx.send(()).is_ok()
            })
            .await
        });
    }
    let mut said = HashSet::new();
    let mut shutdown = shutdown;
    loop {
        sync(&registry, &mut said).await;
        tokio::select! {
            _ = shutdown.changed() => return,
            Some(()) = rx.recv() => while rx.try_recv().is_ok() {},
        }
    }
}

/// Whether a pod's stored JSON may name a claim: a `persistentVolumeClaim` volume or a
/// generic ephemeral one (whose claim is made for the pod). A false positive costs one
/// pass; the keys cannot be missed, since the stored form is JSON.
fn uses_claim(pod: &[u8]) -> bool {
    memchr::memmem::find(pod, b"\"persistentVolumeClaim\"").is_some() || memchr::memmem::find(pod, b"\"ephemeral\"").is_some()
}

/// The labels of node `name`, read when a claim waits for its first consumer there.
fn node_labels(registry: &Registry, name: &str) -> Option<BTreeMap<String, String>> {
    let node = registry.get(def("", "nodes"), "", name).ok()?;
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(node.to_value()).ok()?;
    Some(node.metadata.labels.unwrap_or_default())
}

/// What volumes a claim may bind to.
fn fits(pv: &PersistentVolume, pvc: &PersistentVolumeClaim, class: &str, node_labels: Option<&BTreeMap<String, String>>) -> bool {
    let (Some(vs), Some(cs)) = (&pv.spec, &pvc.spec) else { return false };
    if vs.storage_class_name.as_deref().unwrap_or("") != class {
        return false;
    }
    if vs.volume_mode.as_deref().unwrap_or("Filesystem") != cs.volume_mode.as_deref().unwrap_or("Filesystem") {
        return false;
    }
    let modes = vs.access_modes.clone().unwrap_or_default();
    if !cs.access_modes.iter().flatten().all(|m| modes.contains(m)) {
        return false;
    }
    let want = cs.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).and_then(|q| parse_quantity(&q.0)).unwrap_or(0.0);
    let have = vs.capacity.as_ref().and_then(|c| c.get("storage")).and_then(|q| parse_quantity(&q.0)).unwrap_or(0.0);
    if have < want {
        return false;
    }
    if let Some(sel) = &cs.selector {
        let labels: serde_json::Map<String, Value> = pv.metadata.labels.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, json!(v))).collect();
        let Ok(sel) = serde_json::to_value(sel).map_err(|_| ()).and_then(|v| nanokube_api::selector::LabelSelector::from_object(&v).map_err(|_| ())) else {
            return false;
        };
        if !sel.matches(Some(&labels)) {
            return false;
        }
    }
    match node_labels {
        Some(labels) => node_affinity_allows(pv, labels),
        None => true,
    }
}

/// Whether a volume's required node affinity admits a node with `labels`.
pub fn node_affinity_allows(pv: &PersistentVolume, labels: &BTreeMap<String, String>) -> bool {
    let Some(required) = pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref()) else { return true };
    required.node_selector_terms.iter().any(|t| {
        t.match_expressions.iter().flatten().all(|r| {
            let v = labels.get(&r.key);
            let values = r.values.clone().unwrap_or_default();
            match r.operator.as_str() {
                "In" => v.is_some_and(|v| values.contains(v)),
                "NotIn" => v.is_none_or(|v| !values.contains(v)),
                "Exists" => v.is_some(),
                "DoesNotExist" => v.is_none(),
                _ => false,
            }
        })
    })
}

/// One pass. `said` keeps the (uid, reason) of events already recorded, so a waiting
/// claim is not told the same thing on every pass.
pub async fn sync(registry: &Registry, said: &mut HashSet<(String, String)>) {
    let pvcs: Vec<PersistentVolumeClaim> = list(registry, "", "persistentvolumeclaims");
    let mut pvs: Vec<PersistentVolume> = list(registry, "", "persistentvolumes");
    let classes: BTreeMap<String, StorageClass> =
        list::<StorageClass>(registry, "storage.k8s.io", "storageclasses").into_iter().map(|c| (c.metadata.name.clone().unwrap_or_default(), c)).collect();
    let pods: Vec<Pod> = if pvcs.iter().any(|c| c.metadata.deletion_timestamp.is_some()) { list(registry, "", "pods") } else { Vec::new() };

    for pvc in &pvcs {
        let (ns, name) = (pvc.metadata.namespace.clone().unwrap_or_default(), pvc.metadata.name.clone().unwrap_or_default());
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        if pvc.metadata.deletion_timestamp.is_some() {
            let in_use = pods.iter().any(|p| {
                p.metadata.namespace.as_deref() == Some(&ns)
                    && !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
                    && p.spec.iter().flat_map(|s| s.volumes.iter().flatten()).any(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == name))
            });
            if !in_use {
                remove_finalizer(registry, "persistentvolumeclaims", &ns, &name, PVC_PROTECTION).await;
            }
            continue;
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        let class = spec.storage_class_name.clone().unwrap_or_default();
        let phase = pvc.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if let Some(volume) = spec.volume_name.clone().filter(|v| !v.is_empty()) {
            match pvs.iter().find(|v| v.metadata.name.as_deref() == Some(&volume)) {
                None => {
                    if phase != "Lost" {
                        set_claim_status(registry, &ns, &name, json!({"phase": "Lost"})).await;
                        event(registry, said, pvc_value(pvc), "Warning", "ClaimLost", "Bound claim has lost its PersistentVolume. Data on the volume is lost!")
                            .await;
                    }
                }
                Some(pv) => {
                    let claimed = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
                    let ours = claimed.is_none_or(|r| r.uid.as_deref().is_none_or(|u| u.is_empty() || u == uid));
                    if ours {
                        bind(registry, pv, pvc, claimed.is_none()).await;
                    }
                }
            }
            continue;
        }
        let wffc = classes.get(&class).and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer");
        let selected = annotation(&pvc.metadata, SELECTED_NODE).map(String::from);
        // A volume meant for this claim, then the smallest that fits.
        let prebound = pvs.iter().find(|v| {
            v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| {
                r.namespace.as_deref() == Some(&ns) && r.name.as_deref() == Some(&name) && r.uid.as_deref().is_none_or(|u| u.is_empty() || u == uid)
            }) && v.metadata.deletion_timestamp.is_none()
        });
        let labels = if wffc { selected.as_deref().and_then(|n| node_labels(registry, n)) } else { None };
        let node_labels = labels.as_ref();
        let matching = || {
            pvs.iter()
                .filter(|v| v.spec.as_ref().is_some_and(|s| s.claim_ref.is_none()) && v.metadata.deletion_timestamp.is_none())
                .filter(|v| fits(v, pvc, &class, node_labels))
                .min_by(|a, b| capacity(a).total_cmp(&capacity(b)))
        };
        let candidate = prebound.or_else(|| if wffc && node_labels.is_none() { None } else { matching() });
        if let Some(pv) = candidate.cloned() {
            let set_claim_ref = pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none());
            bind(registry, &pv, pvc, set_claim_ref).await;
            // This pass's view: the volume is taken.
            if let Some(v) = pvs.iter_mut().find(|v| v.metadata.name == pv.metadata.name) {
                if let Some(s) = v.spec.as_mut() {
                    s.claim_ref.get_or_insert_with(Default::default).uid = Some(uid.clone());
                }
            }
            continue;
        }
        if phase.is_empty() {
            set_claim_status(registry, &ns, &name, json!({"phase": "Pending"})).await;
        }
        match classes.get(&class) {
            Some(sc) if sc.provisioner != "kubernetes.io/no-provisioner" => {
                if wffc && selected.is_none() {
                    event(registry, said, pvc_value(pvc), "Normal", "WaitForFirstConsumer", "waiting for first consumer to be created before binding").await;
                } else if annotation(&pvc.metadata, STORAGE_PROVISIONER) != Some(sc.provisioner.as_str()) {
                    let p = sc.provisioner.clone();
                    let _ = registry
                        .update_with(def("", "persistentvolumeclaims"), &ns, &name, &WriteOptions::default(), |cur| {
                            let mut next = cur.clone();
                            let a = next.pointer_mut("/metadata").and_then(Value::as_object_mut).map(|m| m.entry("annotations").or_insert_with(|| json!({})));
                            if let Some(a) = a.and_then(Value::as_object_mut) {
                                a.insert(STORAGE_PROVISIONER.into(), json!(p));
                                a.insert(BETA_STORAGE_PROVISIONER.into(), json!(p));
                            }
                            Ok(next)
                        })
                        .await;
                    let msg = format!("Waiting for a volume to be created either by the external provisioner '{p}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.");
                    event(registry, said, pvc_value(pvc), "Normal", "ExternalProvisioning", &msg).await;
                }
            }
            Some(_) => {}
            None if !class.is_empty() => {
                event(registry, said, pvc_value(pvc), "Warning", "ProvisioningFailed", &format!("storageclass.storage.k8s.io \"{class}\" not found")).await;
            }
            None => {
                event(registry, said, pvc_value(pvc), "Normal", "FailedBinding", "no persistent volumes available for this claim and no storage class is set")
                    .await;
            }
        }
    }

    for pv in &pvs {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let spec = pv.spec.clone().unwrap_or_default();
        let phase = pv.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        let claim = spec.claim_ref.as_ref().and_then(|r| {
            pvcs.iter().find(|c| {
                c.metadata.namespace == r.namespace
                    && c.metadata.name == r.name
                    && r.uid.as_deref().is_none_or(|u| u.is_empty() || Some(u) == c.metadata.uid.as_deref())
            })
        });
        let (want, message) = match (&spec.claim_ref, claim) {
            (None, _) => ("Available", None),
            (Some(_), Some(c)) if c.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(name.as_str()) => ("Bound", None),
            // Meant for a claim that has not taken it yet.
            (Some(_), Some(_)) => ("Available", None),
            (Some(_), None) => {
                let reclaim = spec.persistent_volume_reclaim_policy.as_deref().unwrap_or("Retain");
                if reclaim == "Delete" && annotation(&pv.metadata, PROVISIONED_BY).is_none() {
                    ("Failed", Some(format!("error getting deleter volume plugin for volume \"{name}\": no deletable volume plugin matched")))
                } else {
                    ("Released", None)
                }
            }
        };
        if phase != want {
            let mut status = json!({"phase": want, "lastPhaseTransitionTime": meta::now_rfc3339()});
            if let Some(m) = &message {
                status["message"] = json!(m);
            }
            let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
            let _ = registry
                .update_with(def("", "persistentvolumes"), "", &name, &opts, |cur| {
                    let mut next = cur.clone();
                    next["status"] = status.clone();
                    Ok(next)
                })
                .await;
            if let Some(m) = message {
                event(registry, said, serde_json::to_value(pv).unwrap_or_default(), "Warning", "VolumeFailedDelete", &m).await;
            }
        }
        if pv.metadata.deletion_timestamp.is_some() && want != "Bound" {
            remove_finalizer(registry, "persistentvolumes", "", &name, PV_PROTECTION).await;
        }
    }
}

fn capacity(pv: &PersistentVolume) -> f64 {
    pv.spec.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage")).and_then(|q| parse_quantity(&q.0)).unwrap_or(0.0)
}

fn pvc_value(pvc: &PersistentVolumeClaim) -> Value {
    serde_json::to_value(pvc).unwrap_or_default()
}

/// Bind `pv` and `pvc` to each other (the volume's `claimRef` first, when `set_claim_ref`),
/// and mark both `Bound`.
async fn bind(registry: &Registry, pv: &PersistentVolume, pvc: &PersistentVolumeClaim, set_claim_ref: bool) {
    let (ns, name) = (pvc.metadata.namespace.clone().unwrap_or_default(), pvc.metadata.name.clone().unwrap_or_default());
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let claim_ref = json!({"kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": pvc.metadata.uid, "apiVersion": "v1",
        "resourceVersion": pvc.metadata.resource_version});
    let claim_ref_uid_missing = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| r.uid.as_deref().is_none_or(str::is_empty));
    if set_claim_ref || claim_ref_uid_missing {
        let r = registry
            .update_with(def("", "persistentvolumes"), "", &pv_name, &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                next["spec"]["claimRef"] = claim_ref.clone();
                if set_claim_ref {
                    set_annotation(&mut next, BOUND_BY_CONTROLLER, "yes");
                }
                Ok(next)
            })
            .await;
        if r.is_err() {
            return;
        }
    }
    let claim_spec = pvc.spec.clone().unwrap_or_default();
    if claim_spec.volume_name.as_deref() != Some(pv_name.as_str()) || annotation(&pvc.metadata, BIND_COMPLETED).is_none() {
        let by_controller = claim_spec.volume_name.as_deref().is_none_or(str::is_empty);
        let r = registry
            .update_with(def("", "persistentvolumeclaims"), &ns, &name, &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                next["spec"]["volumeName"] = json!(pv_name);
                set_annotation(&mut next, BIND_COMPLETED, "yes");
                if by_controller {
                    set_annotation(&mut next, BOUND_BY_CONTROLLER, "yes");
                }
                Ok(next)
            })
            .await;
        if r.is_err() {
            return;
        }
    }
    let vs = pv.spec.clone().unwrap_or_default();
    let bound = json!({"phase": "Bound", "accessModes": vs.access_modes, "capacity": vs.capacity});
    if pvc.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        set_claim_status(registry, &ns, &name, bound).await;
    }
    if pv.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
        let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
        let _ = registry
            .update_with(def("", "persistentvolumes"), "", &pv_name, &opts, |cur| {
                let mut next = cur.clone();
                next["status"] = json!({"phase": "Bound", "lastPhaseTransitionTime": meta::now_rfc3339()});
                Ok(next)
            })
            .await;
    }
}

fn set_annotation(obj: &mut Value, key: &str, value: &str) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let a = m.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = a.as_object_mut() {
            a.insert(key.into(), json!(value));
        }
    }
}

async fn set_claim_status(registry: &Registry, ns: &str, name: &str, status: Value) {
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    let _ = registry
        .update_with(def("", "persistentvolumeclaims"), ns, name, &opts, |cur| {
            let mut next = cur.clone();
            next["status"] = status.clone();
            Ok(next)
        })
        .await;
}

async fn remove_finalizer(registry: &Registry, plural: &str, ns: &str, name: &str, finalizer: &str) {
    let r = registry
        .update_with(def("", plural), ns, name, &WriteOptions::default(), |cur| {
            let mut next = cur.clone();
            if let Some(list) = next.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
                list.retain(|f| f != finalizer);
            }
            Ok(next)
        })
        .await;
    if let Err(e) = r {
        if e.code != 404 {
            tracing::debug!(%name, "removing {finalizer}: {}", e.message);
        }
    }
}

/// A core/v1 Event from the controller, once per object, reason and message.
async fn event(registry: &Registry, said: &mut HashSet<(String, String)>, obj: Value, ty: &str, reason: &str, message: &str) {
    if said.insert((meta::uid(&obj).to_string(), format!("{reason}/{message}"))) {
        crate::events::record(registry, COMPONENT, &obj, ty, reason, message).await;
    }
}
