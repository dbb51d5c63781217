//! Local storage, as k3s ships it: the default StorageClass `local-path` (provisioner
//! `rancher.io/local-path`, `WaitForFirstConsumer`, reclaim `Delete`) and its provisioner
//! for this node.
//!
//! A claim the persistent volume controller hands to `rancher.io/local-path` (annotation
//! `volume.kubernetes.io/storage-provisioner`) whose selected node is this one (or that
//! has none, with an `Immediate` class: this node is the one there is) gets a directory
//! `<data-dir>/storage/pvc-<uid>_<namespace>_<name>` and a PersistentVolume `pvc-<uid>` for
//! it: a `hostPath` volume with node affinity to this node, pre-bound to the claim by
//! `claimRef` (the controller completes the binding). A `Released` volume it made with
//! reclaim `Delete` loses its directory, then the volume itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use nanokube_api::resources;
use nanokube_apiserver::registry::{ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

/// The provisioner's name, k3s's.
pub const PROVISIONER: &str = "rancher.io/local-path";
/// The default StorageClass.
pub const CLASS: &str = "local-path";
const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

fn def(group: &str, plural: &str) -> &'static resources::ResourceDef {
    resources::find(group, "v1", plural).expect("built-in resource")
}

/// The provisioner of one node.
pub struct LocalPath {
    registry: Arc<Registry>,
    node: String,
    root: PathBuf,
}

impl LocalPath {
    /// A provisioner for `node`, keeping volumes under `<data_dir>/storage`.
    pub fn new(registry: Arc<Registry>, node: &str, data_dir: &Path) -> Self {
        LocalPath { registry, node: node.to_string(), root: data_dir.join("storage") }
    }

    /// Create the `local-path` StorageClass (the default) unless a class of that name exists.
    pub async fn ensure_class(&self) -> Result<(), String> {
        let sc = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer",
        });
        match self.registry.create(def("storage.k8s.io", "storageclasses"), "", sc, &WriteOptions::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e.message),
        }
    }

    /// Provision and reclaim until shutdown: a pass at start and after every change to
    /// claims or volumes.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        if let Err(e) = self.ensure_class().await {
            tracing::warn!("creating the local-path StorageClass: {e}");
        }
        let store = self.registry.store().clone();
        loop {
            let from = store.current_revision();
            self.sync().await;
            let mut claims = store.watch(&def("", "persistentvolumeclaims").key_prefix(), from).ok();
            let mut volumes = store.watch(&def("", "persistentvolumes").key_prefix(), from).ok();
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = async { match claims.as_mut() { Some(w) => { w.next().await; } None => std::future::pending().await } } => {}
                _ = async { match volumes.as_mut() { Some(w) => { w.next().await; } None => std::future::pending().await } } => {}
                // A safety net for a watch that could not start.
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }

    /// One pass over claims and volumes.
    pub async fn sync(&self) {
        let claims: Vec<PersistentVolumeClaim> = list(&self.registry, "", "persistentvolumeclaims");
        let volumes: Vec<PersistentVolume> = list(&self.registry, "", "persistentvolumes");
        for pvc in &claims {
            if let Err(e) = self.provision(pvc, &volumes).await {
                tracing::warn!(claim = ?pvc.metadata.name, "provisioning: {e}");
            }
        }
        for pv in &volumes {
            if let Err(e) = self.reclaim(pv).await {
                tracing::warn!(volume = ?pv.metadata.name, "deleting: {e}");
            }
        }
    }

    async fn provision(&self, pvc: &PersistentVolumeClaim, volumes: &[PersistentVolume]) -> Result<(), String> {
        let annotations = pvc.metadata.annotations.clone().unwrap_or_default();
        let spec = pvc.spec.clone().unwrap_or_default();
        if annotations.get(STORAGE_PROVISIONER).map(String::as_str) != Some(PROVISIONER)
            || spec.volume_name.as_deref().is_some_and(|v| !v.is_empty())
            || pvc.metadata.deletion_timestamp.is_some()
        {
            return Ok(());
        }
        if annotations.get(SELECTED_NODE).is_some_and(|n| *n != self.node) {
            return Ok(());
        }
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        let pv_name = format!("pvc-{uid}");
        if volumes.iter().any(|v| v.metadata.name.as_deref() == Some(&pv_name)) {
            return Ok(());
        }
        let (ns, name) = (pvc.metadata.namespace.clone().unwrap_or_default(), pvc.metadata.name.clone().unwrap_or_default());
        let class_name = spec.storage_class_name.clone().unwrap_or_default();
        let class: Option<StorageClass> =
            self.registry.get(def("storage.k8s.io", "storageclasses"), "", &class_name).ok().and_then(|o| serde_json::from_value(o.to_value()).ok());
        let pvc_value = serde_json::to_value(pvc).unwrap_or_default();
        self.event(&pvc_value, "Normal", "Provisioning", &format!("External provisioner is provisioning volume for claim \"{ns}/{name}\"")).await;
        if spec.volume_mode.as_deref() == Some("Block") {
            let m = "failed to provision volume with StorageClass \"local-path\": only filesystem volumes are supported";
            self.event(&pvc_value, "Warning", "ProvisioningFailed", m).await;
            return Err(m.into());
        }
        let dir = self.root.join(format!("{pv_name}_{ns}_{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Anyone in the pod may write, as the provisioner's helper makes it.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).map_err(|e| e.to_string())?;
        let size = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).map(|q| q.0.clone()).unwrap_or_else(|| "0".into());
        let pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: PROVISIONER, "local.path.provisioner/selected-node": self.node}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                "persistentVolumeReclaimPolicy": class.as_ref().and_then(|c| c.reclaim_policy.clone()).unwrap_or_else(|| "Delete".into()),
                "storageClassName": class_name,
                "volumeMode": "Filesystem",
                "hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [self.node]}]}]}},
                "claimRef": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid, "apiVersion": "v1", "resourceVersion": pvc.metadata.resource_version},
            },
        });
        match self.registry.create(def("", "persistentvolumes"), "", pv, &WriteOptions::default()).await {
            Ok(_) => {
                self.event(&pvc_value, "Normal", "ProvisioningSucceeded", &format!("Successfully provisioned volume {pv_name}")).await;
                Ok(())
            }
            Err(e) if e.code == 409 => Ok(()),
            Err(e) => Err(e.message),
        }
    }

    async fn reclaim(&self, pv: &PersistentVolume) -> Result<(), String> {
        let spec = pv.spec.clone().unwrap_or_default();
        let made_here = pv.metadata.annotations.as_ref().and_then(|a| a.get(PROVISIONED_BY)).map(String::as_str) == Some(PROVISIONER);
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        if !made_here || !released || spec.persistent_volume_reclaim_policy.as_deref() != Some("Delete") || pv.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let Some(path) = spec.host_path.as_ref().map(|h| PathBuf::from(&h.path)) else { return Ok(()) };
        // Only what this provisioner made, under its own directory.
        if path.parent() != Some(self.root.as_path()) {
            return Ok(());
        }
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        let name = pv.metadata.name.clone().unwrap_or_default();
        match self.registry.delete(def("", "persistentvolumes"), "", &name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 404 => Ok(()),
            Err(e) => Err(e.message),
        }
    }

    async fn event(&self, claim: &Value, ty: &str, reason: &str, message: &str) {
        let ns = claim.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
        let name = claim.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let now = nanokube_api::meta::now_rfc3339();
        let component = format!("{PROVISIONER}_{}", self.node);
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{:016x}", fastrand::u64(..)), "namespace": ns},
            "involvedObject": {"kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": claim.pointer("/metadata/uid"), "apiVersion": "v1",
                "resourceVersion": claim.pointer("/metadata/resourceVersion")},
            "reason": reason, "message": message,
            "source": {"component": component},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": ty,
            "eventTime": null, "reportingComponent": component, "reportingInstance": "",
        });
        if let Err(e) = self.registry.create(def("", "events"), &ns, ev, &WriteOptions::default()).await {
            tracing::debug!(claim = %name, "recording event {reason}: {}", e.message);
        }
    }
}

fn list<T: for<'de> k8s_openapi::serde::Deserialize<'de>>(registry: &Registry, group: &str, plural: &str) -> Vec<T> {
    match registry.list(def(group, plural), None, &ListOptions::default()) {
        Ok(l) => l.items.iter().filter_map(|o| serde_json::from_value(o.to_value()).ok()).collect(),
        Err(_) => Vec::new(),
    }
}
