//! nanokube's node agent: what kubelet does for the node itself.
//!
//! - [`machine`]: what the machine is (CPUs, memory, disk, kernel, OS, machine and boot
//!   IDs), read from `/proc`, `/etc` and `statvfs`.
//! - [`node`]: the Node object built from it, as kubelet registers it (labels,
//!   addresses, capacity and allocatable, conditions with kubelet's reasons, `nodeInfo`,
//!   `daemonEndpoints`, the pod CIDR), and its status kept current.
//! - [`lease`]: the node's Lease in `kube-node-lease`, renewed every 10 seconds.
//! - [`eviction`]: kubelet's eviction manager: hard thresholds on the node's signals,
//!   the pressure conditions they raise, and which pods go (acted on by `pods::evict`).
//! - [`pods`]: the pods bound to the node, run as containers (runc, one shim process per
//!   container), with kubelet's lifecycle, status, events, volumes and logs.
//! - [`storage`]: k3s's default `local-path` StorageClass and its provisioner, volumes as
//!   directories in the data directory (on a node that runs pods).
//!
//! [`NodeAgent::run`] registers the node and keeps both. The agent reads and writes typed
//! objects (k8s-openapi) through the same registry as every other writer.
//!
//! Where containers cannot run (no root, no runc, no overlayfs, an in-memory server) the
//! node reports `Ready=False` with exactly what is missing, and the node lifecycle
//! controller taints it `node.kubernetes.io/not-ready`, so the scheduler tells pods why
//! they wait, as upstream does for a node whose runtime is down.

pub mod eviction;
pub mod in_process;
pub mod kubelet_api;
pub mod lease;
pub mod machine;
pub mod node;
pub mod pods;
pub mod simulated;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use nanokube_apiserver::cluster::Cluster;
use nanokube_apiserver::registry::Registry;
use tokio::sync::watch;

/// How the node presents itself.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name (kubelet: the host name, lowercased).
    pub name: String,
    /// The node's address (`InternalIP`), where its pods' traffic arrives.
    pub internal_ip: String,
    /// Where the agent keeps its files (measured for ephemeral-storage).
    pub data_dir: std::path::PathBuf,
    /// The kubelet version reported (the server's).
    pub version: String,
    /// The node's image store (listed in `status.images`).
    pub images: Option<nanokube_runtime::ImageStore>,
    /// What keeps the node from running pods (`Ready=False` with this message), if anything.
    pub not_ready: Option<String>,
    /// The kubelet API's port (`daemonEndpoints`; 0 when it is not served).
    pub kubelet_port: i32,
    /// Eviction thresholds and the pressure conditions they raise.
    pub eviction: Arc<eviction::Manager>,
    /// The node of the control plane's own process (labelled
    /// `node-role.kubernetes.io/control-plane`); false for a joined agent.
    pub control_plane: bool,
}

/// How often the Lease is renewed (kubelet: `nodeLeaseDurationSeconds` 40 / 4).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often the node status is written when nothing changed (kubelet's
/// `nodeStatusReportFrequency`).
pub const STATUS_REPORT: Duration = Duration::from_secs(300);
/// How often the conditions are re-evaluated (kubelet's `nodeStatusUpdateFrequency`).
pub const STATUS_CHECK: Duration = Duration::from_secs(10);

/// The node agent.
pub struct NodeAgent {
    cluster: Arc<dyn Cluster>,
    /// The server's registry when the agent runs in the server's process: the local-path
    /// provisioner (a controller, as k3s runs it next to the server) goes with it.
    registry: Option<Arc<Registry>>,
    config: NodeConfig,
    pods: Option<Arc<pods::PodRuntime>>,
}

impl NodeAgent {
    /// An agent for `config`, reading and writing through `cluster` (the server's
    /// `registry` when it runs in the server's process); it runs pods on `pods` when
    /// given.
    pub fn new(cluster: Arc<dyn Cluster>, registry: Option<Arc<Registry>>, config: NodeConfig, pods: Option<Arc<pods::PodRuntime>>) -> Self {
        if let Some(rt) = &pods {
            let _ = rt.eviction.set(config.eviction.clone());
        }
        NodeAgent { cluster, registry, config, pods }
    }

    /// Register the node (or update the registered one) and create its Lease.
    pub async fn register(&self) -> Result<(), String> {
        node::register(&*self.cluster, &self.config).await?;
        lease::renew(&*self.cluster, &self.config.name).await
    }

    /// Keep the Lease renewed and the status current until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let pod_manager = self.pods.clone().map(|rt| {
            if let Some(nodes) = nanokube_api::resources::find("", "v1", "nodes") {
                if let Ok(node) = self.cluster.get(nodes, "", &self.config.name) {
                    if let (Ok(mut a), Some(alloc)) = (rt.allocatable.lock(), node.pointer("/status/allocatable")) {
                        *a = alloc.clone();
                    }
                }
            }
            if let Some(registry) = &self.registry {
                let provisioner = storage::LocalPath::new(registry.clone(), &self.config.name, &self.config.data_dir);
                tokio::spawn(provisioner.run(shutdown.clone()));
            }
            let (cluster, name, shutdown) = (self.cluster.clone(), self.config.name.clone(), shutdown.clone());
            tokio::spawn(async move {
                // Pods get their addresses from the Node's block: none runs before it is given.
                if await_pod_cidr(&*cluster, &name, &rt, shutdown.clone()).await {
                    pods::PodManager::new(rt).run(shutdown).await
                }
            })
        });
        let mut eviction_tick = tokio::time::interval(eviction::MONITORING_PERIOD);
        let content = self.config.data_dir.join("content");
        let image_fs = if content.is_dir() { content } else { self.config.data_dir.clone() };
        let mut lease_tick = tokio::time::interval(LEASE_RENEW);
        let mut status_tick = tokio::time::interval(STATUS_CHECK);
        let mut last_report = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if let Some(m) = pod_manager {
                        let _ = m.await;
                    }
                    return;
                }
                _ = eviction_tick.tick() => {
                    let (eviction, data_dir, image_fs) = (self.config.eviction.clone(), self.config.data_dir.clone(), image_fs.clone());
                    let met = tokio::task::spawn_blocking(move || eviction.observe(&data_dir, &image_fs)).await.unwrap_or_default();
                    if let Some(rt) = &self.pods {
                        pods::evict::act(rt, &met).await;
                    }
                }
                _ = lease_tick.tick() => {
                    if let Err(e) = lease::renew(&*self.cluster, &self.config.name).await {
                        tracing::warn!(node = %self.config.name, "renewing the node lease: {e}");
                    }
                }
                _ = status_tick.tick() => {
                    let report = last_report.elapsed() >= STATUS_REPORT;
                    match node::update_status(&*self.cluster, &self.config, report).await {
                        Ok(true) => last_report = tokio::time::Instant::now(),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(node = %self.config.name, "updating the node status: {e}"),
                    }
                }
            }
        }
    }
}

/// Wait until the Node has its pod CIDR (`spec.podCIDR`, given by the node IPAM
/// controller) and hand it to the runtime, as kubelet waits for its network to be ready
/// before starting pods; false when shut down first.
async fn await_pod_cidr(cluster: &dyn Cluster, node: &str, rt: &pods::PodRuntime, mut shutdown: watch::Receiver<bool>) -> bool {
    let Some(nodes) = nanokube_api::resources::find("", "v1", "nodes") else { return false };
    let started = tokio::time::Instant::now();
    let mut warned = false;
    let mut delay = Duration::from_millis(20);
    loop {
        if let Ok(n) = cluster.get(nodes, "", node) {
            let cidr = n.pointer("/spec/podCIDRs/0").or_else(|| n.pointer("/spec/podCIDR")).and_then(serde_json::Value::as_str);
            if let Some(cidr) = cidr.filter(|c| !c.is_empty()) {
                match rt.set_pod_cidr(cidr) {
                    Ok(()) => {
                        tracing::info!(%node, "pods get their addresses from {cidr}");
                        return true;
                    }
                    Err(e) => {
                        // Not a range this node can serve (set by hand outside 127.244.0.0/16):
                        // said once, as kubelet keeps saying its network is not ready.
                        if !warned {
                            tracing::error!(%node, "the node's pod CIDR: {e}");
                            warned = true;
                        }
                    }
                }
            }
        }
        if !warned && started.elapsed() > Duration::from_secs(30) {
            tracing::warn!(%node, "still waiting for the node's pod CIDR (spec.podCIDR, given by the node IPAM controller)");
            warned = true;
        }
        tokio::select! {
            _ = shutdown.changed() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}
