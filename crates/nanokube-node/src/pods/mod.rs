//! Pods on this node: what kubelet's pod workers, status manager and volume manager do,
//! on runc.
//!
//! - [`PodManager`] watches the pods bound to the node and gives each its worker; it
//!   adopts what a previous run left (containers keep running across a `kill -9` of the
//!   server) and, on a clean stop, stops every pod within a bounded time.
//! - [`worker`]: one task per pod: the sandbox (IP, network and IPC namespaces, `/etc`
//!   files), volumes, image pulls, init containers, sidecars and containers with
//!   kubelet's restart back-off, probes, graceful termination and the final delete.
//! - [`status`]: the pod status as kubelet writes it.
//! - [`files`], [`env`]: what a container sees. [`events`]: kubelet's events.
//! - [`probe`]: liveness, readiness and startup probes. [`logs`]: `pods/log`.
//! - [`resize`]: in-place resize: what the node admitted, applied, and reports.
//! - [`ports`]: the pod's IP answering from the host on its ports; `nanokube_net::mesh`: other pods'
//!   IPs answering from inside a pod.
//!
//! On disk (`<data-dir>`): `pods/<uid>/` (the pod's record, namespaces, `/etc` files,
//! volumes, and `containers/<name>/<attempt>/`, each a runc bundle with the shim's
//! `exit.json`), `logs/pods/<ns>_<name>_<uid>/<container>/<attempt>.log`, `runc/` (runc's
//! state). Containers' cgroups are `/nanokube/pod<uid>/<container id>`.

pub mod env;
pub mod events;
pub mod evict;
pub mod exec;
pub mod files;
pub mod logs;
pub mod portforward;
pub mod ports;
pub mod probe;
pub mod resize;
pub mod stats;
pub mod status;
pub mod worker;

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use nanokube_api::resources;
use nanokube_apiserver::cluster::Cluster;
use nanokube_runtime::runc::Runc;
use nanokube_runtime::userns::{IdMapping, IDS_PER_POD};
use nanokube_runtime::ImageStore;
use tokio::sync::watch;

/// A pod's container lists.
pub(crate) const CONTAINER_LISTS: [&str; 3] = ["/spec/containers", "/spec/initContainers", "/spec/ephemeralContainers"];
/// A pod's container status lists.
pub(crate) const STATUS_LISTS: [&str; 3] = ["/status/containerStatuses", "/status/initContainerStatuses", "/status/ephemeralContainerStatuses"];

/// The entry named `name` in any of `pod`'s lists at `lists`.
pub(crate) fn named<'a>(pod: &'a serde_json::Value, lists: &[&str], name: &str) -> Option<&'a serde_json::Value> {
    lists
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(serde_json::Value::as_array))
        .flatten()
        .find(|c| c.get("name").and_then(serde_json::Value::as_str) == Some(name))
}

/// Where registries are reached instead of their own address (k3s's `registries.yaml`
/// mirrors): `registry` → `host[:port]`; `*` stands for every registry.
#[derive(Debug, Clone, Default)]
pub struct Mirrors(pub Vec<(String, String)>);

impl Mirrors {
    /// The endpoint for `registry`.
    pub fn endpoint<'a>(&'a self, registry: &'a str) -> &'a str {
        self.0.iter().find(|(r, _)| r == registry).or_else(|| self.0.iter().find(|(r, _)| r == "*")).map(|(_, e)| e.as_str()).unwrap_or(registry)
    }
}

/// What every pod worker shares.
pub struct PodRuntime {
    /// The API the pods, their secrets and events are read and written through (the
    /// server's registry in its process; HTTPS with the node's certificate on an agent).
    pub cluster: Arc<dyn Cluster>,
    /// The node's name.
    pub node: String,
    /// The node's IP (`status.hostIP`).
    pub host_ip: String,
    /// The image store.
    pub images: ImageStore,
    /// runc.
    pub runc: Runc,
    /// The nanokube binary (re-executed as the shim).
    pub binary: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Registry mirrors.
    pub mirrors: Mirrors,
    /// Registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The cluster DNS address (`/etc/resolv.conf`).
    pub dns_ip: String,
    /// Kubelet's events.
    pub recorder: events::Recorder,
    /// Pod IPs in use.
    ips: Mutex<BTreeSet<Ipv4Addr>>,
    /// User-namespace ranges in use (their index: host IDs `index * 65536…`), read from
    /// the pod directories on first use.
    user_ranges: Mutex<Option<BTreeSet<u32>>>,
    /// Each running worker's message queue, by pod uid (for the eviction manager).
    workers: Mutex<HashMap<String, tokio::sync::mpsc::Sender<worker::Msg>>>,
    /// The node's eviction thresholds and pressure, once the agent has set them.
    pub eviction: std::sync::OnceLock<Arc<crate::eviction::Manager>>,
    /// Image pulls under way, so two pods pulling one image wait for one pull.
    pulls: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The node's allocatable resources (resourceFieldRef of unset limits).
    pub allocatable: Mutex<serde_json::Value>,
    /// Each pod's allocated cpu (cores) and memory (bytes) requests, by uid: what a
    /// resize must fit beside.
    allocations: Mutex<HashMap<String, (f64, f64)>>,
    /// The node's network: the pods' namespaces by IP, the Services their traffic
    /// reaches, the cluster DNS.
    pub network: Arc<nanokube_net::Network>,
    /// The pods' address range (the Node's `spec.podCIDR`): first address and size, once
    /// the node IPAM controller has given it.
    pod_range: std::sync::OnceLock<(u32, u32)>,
}

/// The whole range pods' addresses come from, and every pod's traffic rules capture.
pub const POD_NETWORK: &str = "127.244.0.0/16";

/// An IPv4 range inside [`POD_NETWORK`], as (first address, size), at least a /30.
pub fn parse_pod_cidr(cidr: &str) -> Result<(u32, u32), String> {
    let bad = || format!("pod CIDR {cidr:?}: want an IPv4 range inside {POD_NETWORK} such as 127.244.16.0/24");
    let (addr, bits) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let bits: u32 = bits.parse().map_err(|_| bad())?;
    if !(16..=30).contains(&bits) {
        return Err(bad());
    }
    let size = 1u32 << (32 - bits);
    let base = u32::from(addr) & !(size - 1);
    if base & 0xffff_0000 != u32::from(Ipv4Addr::new(127, 244, 0, 0)) {
        return Err(bad());
    }
    Ok((base, size))
}

impl PodRuntime {
    /// A runtime for the node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cluster: Arc<dyn Cluster>,
        node: &str,
        host_ip: &str,
        images: ImageStore,
        runc: Runc,
        binary: PathBuf,
        data_dir: &Path,
        mirrors: Mirrors,
        insecure_registries: Vec<String>,
        network: Arc<nanokube_net::Network>,
    ) -> Self {
        let dns_ip = network.config.dns_addr.ip().to_string();
        PodRuntime {
            cluster,
            node: node.to_string(),
            host_ip: host_ip.to_string(),
            images,
            runc,
            binary,
            data_dir: data_dir.to_path_buf(),
            mirrors,
            insecure_registries,
            dns_ip,
            recorder: events::kubelet(node),
            ips: Mutex::new(BTreeSet::new()),
            user_ranges: Mutex::new(None),
            workers: Mutex::new(HashMap::new()),
            eviction: std::sync::OnceLock::new(),
            pulls: tokio::sync::Mutex::new(HashMap::new()),
            allocatable: Mutex::new(serde_json::Value::Null),
            allocations: Mutex::new(HashMap::new()),
            network,
            pod_range: std::sync::OnceLock::new(),
        }
    }

    /// Record (or, with `None`, forget) what pod `uid` holds of the node.
    pub(crate) fn set_allocation(&self, uid: &str, requests: Option<(f64, f64)>) {
        if let Ok(mut a) = self.allocations.lock() {
            match requests {
                Some(r) => a.insert(uid.to_string(), r),
                None => a.remove(uid),
            };
        }
    }

    /// What every pod but `uid` holds of the node: cpu (cores), memory (bytes).
    pub(crate) fn allocated_except(&self, uid: &str) -> (f64, f64) {
        self.allocations.lock().map(|a| a.iter().filter(|(k, _)| k.as_str() != uid).fold((0.0, 0.0), |t, (_, r)| (t.0 + r.0, t.1 + r.1))).unwrap_or_default()
    }

    /// `<data-dir>/pods`.
    pub fn pods_dir(&self) -> PathBuf {
        self.data_dir.join("pods")
    }

    /// `<data-dir>/logs/pods`.
    pub fn logs_dir(&self) -> PathBuf {
        self.data_dir.join("logs").join("pods")
    }

    /// Give this node's pods addresses from `cidr` (the Node's `spec.podCIDR`, an IPv4
    /// range inside 127.244.0.0/16, the range every pod's traffic rules capture). A
    /// Node's range never changes once given, so neither does this.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<(), String> {
        let range = parse_pod_cidr(cidr)?;
        if *self.pod_range.get_or_init(|| range) == range {
            return Ok(());
        }
        Err(format!("the pod CIDR is already {}, not {cidr}", self.pod_cidr().unwrap_or_default()))
    }

    /// The pods' address range as `a.b.c.d/n`, once known.
    pub fn pod_cidr(&self) -> Option<String> {
        self.pod_range.get().map(|(base, size)| format!("{}/{}", Ipv4Addr::from(*base), 32 - size.trailing_zeros()))
    }

    /// Whether `ip` is one this node gives to pods.
    pub fn is_pod_ip(&self, ip: Ipv4Addr) -> bool {
        self.pod_range.get().is_some_and(|(base, size)| u32::from(ip).wrapping_sub(*base) < *size)
    }

    /// Take a pod IP from the node's pod range (the range's first two addresses and its
    /// last are not given out), searching from a random point as CNI IPAM plugins may.
    /// None when the range is full, or not known yet.
    pub fn allocate_ip(&self) -> Option<Ipv4Addr> {
        let (base, size) = *self.pod_range.get()?;
        let mut used = self.ips.lock().ok()?;
        let usable = size.checked_sub(3).filter(|n| *n > 0)?;
        let start = fastrand::u32(0..usable);
        (0..usable).map(|i| Ipv4Addr::from(base + 2 + (start + i) % usable)).find(|ip| !used.contains(ip)).inspect(|ip| {
            used.insert(*ip);
        })
    }

    /// Mark an IP as in use (adoption).
    pub fn claim_ip(&self, ip: Ipv4Addr) {
        if let Ok(mut used) = self.ips.lock() {
            used.insert(ip);
        }
    }

    /// Give an IP back.
    pub fn release_ip(&self, ip: Ipv4Addr) {
        if let Ok(mut used) = self.ips.lock() {
            used.remove(&ip);
        }
    }

    /// The user namespace of a pod with `hostUsers: false`: the range recorded in its
    /// directory (`<pod dir>/userns`, kubelet's file and format), or the lowest free
    /// one, as kubelet's allocator gives them (65,536 IDs each, from host ID 65,536 up:
    /// the first range is the host's own users).
    pub fn user_namespace(&self, pod_dir: &Path) -> Result<IdMapping, String> {
        let mut guard = self.user_ranges.lock().map_err(|_| "user namespace ranges poisoned".to_string())?;
        let used = guard.get_or_insert_with(|| {
            let dirs = std::fs::read_dir(self.pods_dir()).into_iter().flatten().flatten();
            dirs.filter_map(|d| read_user_namespace(&d.path())).map(|m| m.host_base / IDS_PER_POD).collect()
        });
        if let Some(m) = read_user_namespace(pod_dir) {
            used.insert(m.host_base / IDS_PER_POD);
            return Ok(m);
        }
        let index = (1..u32::MAX / IDS_PER_POD).find(|i| !used.contains(i)).ok_or("no user namespace range left")?;
        let map = IdMapping { host_base: index * IDS_PER_POD, size: IDS_PER_POD };
        let entry = serde_json::json!([{"hostId": map.host_base, "containerId": 0, "length": map.size}]);
        let file = serde_json::json!({"uidMappings": entry, "gidMappings": entry});
        std::fs::create_dir_all(pod_dir).map_err(|e| e.to_string())?;
        std::fs::write(pod_dir.join("userns"), file.to_string()).map_err(|e| format!("recording the pod's user namespace: {e}"))?;
        used.insert(index);
        Ok(map)
    }

    /// Note a worker's queue (it is dropped with the worker).
    pub(crate) fn register_worker(&self, uid: &str, tx: tokio::sync::mpsc::Sender<worker::Msg>) {
        if let Ok(mut w) = self.workers.lock() {
            w.insert(uid.to_string(), tx);
        }
    }

    /// Forget a worker's queue.
    pub(crate) fn unregister_worker(&self, uid: &str) {
        if let Ok(mut w) = self.workers.lock() {
            w.remove(uid);
        }
    }

    /// Send a pod's worker a message; whether it had one.
    pub(crate) async fn send(&self, uid: &str, msg: worker::Msg) -> bool {
        let tx = self.workers.lock().ok().and_then(|w| w.get(uid).cloned());
        match tx {
            Some(tx) => tx.send(msg).await.is_ok(),
            None => false,
        }
    }

    /// The node's pressure conditions now.
    pub fn pressure(&self) -> Vec<&'static str> {
        self.eviction.get().map(|m| m.conditions()).unwrap_or_default()
    }

    /// Give a pod's user-namespace range back (its directory is about to go).
    pub fn release_user_namespace(&self, pod_dir: &Path) {
        if let (Some(m), Ok(mut guard)) = (read_user_namespace(pod_dir), self.user_ranges.lock()) {
            if let Some(used) = guard.as_mut() {
                used.remove(&(m.host_base / IDS_PER_POD));
            }
        }
    }

    /// The lock that serializes pulls of one image reference.
    pub async fn pull_lock(&self, reference: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.pulls.lock().await.entry(reference.to_string()).or_default().clone()
    }
}

/// The mapping recorded in `<pod dir>/userns`, if any.
fn read_user_namespace(pod_dir: &Path) -> Option<IdMapping> {
    let text = std::fs::read(pod_dir.join("userns")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let m = v.pointer("/uidMappings/0")?;
    let host_base = u32::try_from(m.get("hostId")?.as_u64()?).ok()?;
    let size = u32::try_from(m.get("length")?.as_u64()?).ok()?;
    (host_base.is_multiple_of(IDS_PER_POD) && host_base > 0 && size == IDS_PER_POD).then_some(IdMapping { host_base, size })
}

/// The pod runtime of a node on this machine (the server's own or a joined one), or
/// exactly why it cannot run pods (the node then reports `Ready=False` with it): runc
/// and the rest of [`check_runtime`], this binary (re-executed as the shim), the image
/// store, the network, in that order.
#[allow(clippy::too_many_arguments)]
pub fn runtime_for_machine(
    cluster: Arc<dyn Cluster>,
    node: &str,
    host_ip: &str,
    images: Option<ImageStore>,
    data_dir: &Path,
    mirrors: Mirrors,
    insecure_registries: Vec<String>,
    network: Option<Arc<nanokube_net::Network>>,
) -> Result<PodRuntime, String> {
    let runc = check_runtime(data_dir, images.as_ref())?;
    let binary = std::env::current_exe().map_err(|e| format!("container runtime is down: the nanokube binary cannot be found to run container shims: {e}"))?;
    let images = images.ok_or("container runtime is down: no image store")?;
    let network = network.ok_or("network is down")?;
    Ok(PodRuntime::new(cluster, node, host_ip, images, runc, binary, data_dir, mirrors, insecure_registries, network))
}

/// Whether this machine can run containers: the runc to use, or exactly what is missing
/// (the node then reports `Ready=False` with it).
pub fn check_runtime(data_dir: &Path, images: Option<&ImageStore>) -> Result<Runc, String> {
    if images.is_none() {
        return Err("container runtime is down: the server keeps no files (--in-memory), so there is no image store and no pod can run".into());
    }
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("container runtime is down: nanokube runs as an unprivileged user, and containers need root (namespaces, overlay mounts, cgroups); run the server as root to run pods".into());
    }
    if !std::fs::read_to_string("/proc/filesystems").unwrap_or_default().lines().any(|l| l.trim_end().ends_with("overlay")) {
        return Err("container runtime is down: the kernel has no overlay filesystem (modprobe overlay), so images cannot be mounted".into());
    }
    if !Path::new("/sys/fs/cgroup").is_dir() {
        return Err("container runtime is down: no cgroup filesystem at /sys/fs/cgroup".into());
    }
    Runc::find(&data_dir.join("runc"))
        .ok_or_else(|| "container runtime is down: runc was not found on PATH or in /usr/sbin (Debian: apt-get install runc)".to_string())
}

/// How long a clean stop of the server gives all pods to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Watches the node's pods and runs a worker per pod.
pub struct PodManager {
    runtime: Arc<PodRuntime>,
}

struct WorkerHandle {
    updates: watch::Sender<Option<Pod>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodManager {
    /// A manager over `runtime`.
    pub fn new(runtime: Arc<PodRuntime>) -> Self {
        PodManager { runtime }
    }

    /// The shared runtime (for `pods/log`).
    pub fn runtime(&self) -> &Arc<PodRuntime> {
        &self.runtime
    }

    /// Run until `shutdown`: adopt, then follow the node's pods. On shutdown every pod is
    /// stopped (not deleted) within [`SHUTDOWN_GRACE`].
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let rt = self.runtime.clone();
        let Some(pods_def) = resources::find("", "v1", "pods") else { return };
        let _ = std::fs::create_dir_all(rt.pods_dir());
        let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        // What a previous run left: pods on disk get their worker first (with no API
        // object yet: the list below supplies it, or the pod is gone and is cleaned up).
        let on_disk: Vec<String> =
            std::fs::read_dir(rt.pods_dir()).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
        let fields = format!("spec.nodeName={}", rt.node);
        let mut first = true;
        loop {
            let list = match rt.cluster.list(pods_def, None, &fields) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!("listing the node's pods: {}", e.message);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut present = std::collections::HashSet::new();
            for obj in list.items {
                if let Ok(pod) = serde_json::from_value::<Pod>(obj) {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    present.insert(uid.clone());
                    self.deliver(&mut workers, &uid, Some(pod), &stop_rx);
                }
            }
            if first {
                for uid in &on_disk {
                    if !present.contains(uid) {
                        self.deliver(&mut workers, uid, None, &stop_rx);
                    }
                }
                first = false;
            } else {
                let gone: Vec<String> = workers.keys().filter(|u| !present.contains(*u)).cloned().collect();
                for uid in gone {
                    self.deliver(&mut workers, &uid, None, &stop_rx);
                }
            }
            let mut w = match rt.cluster.watch(pods_def, None, &fields, &list.resource_version).await {
                Ok(w) => w,
                Err(_) => continue,
            };
            loop {
                tokio::select! {
                    _ = shutdown.changed() => {
                        let _ = stop_tx.send(true);
                        // The update senders stay alive until the workers are done.
                        let (senders, tasks): (Vec<_>, Vec<_>) = workers.into_values().map(|w| (w.updates, w.task)).unzip();
                        let _ = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(5), futures_join(tasks.into_iter())).await;
                        drop(senders);
                        worker::remove_cgroup_root();
                        return;
                    }
                    ev = w.next() => match ev {
                        Some(Ok((ty, obj))) => {
                            let Ok(pod) = serde_json::from_value::<Pod>(obj) else { continue };
                            let uid = pod.metadata.uid.clone().unwrap_or_default();
                            self.deliver(&mut workers, &uid, if ty == "DELETED" { None } else { Some(pod) }, &stop_rx);
                        }
                        Some(Err(_)) | None => break,
                    },
                }
                workers.retain(|_, w| !w.task.is_finished());
            }
        }
    }

    fn deliver(&self, workers: &mut HashMap<String, WorkerHandle>, uid: &str, pod: Option<Pod>, stop: &watch::Receiver<bool>) {
        if uid.is_empty() {
            return;
        }
        if let Some(w) = workers.get(uid) {
            if !w.task.is_finished() {
                let _ = w.updates.send(pod);
                return;
            }
            // A finished worker whose pod still shows up: a new worker only if the pod
            // wants running again (it never does for the same uid once deleted).
            if pod.is_none() {
                return;
            }
        }
        let (tx, rx) = watch::channel(pod);
        let worker = worker::Worker::new(self.runtime.clone(), uid);
        let task = tokio::spawn(worker.run(rx, stop.clone()));
        workers.insert(uid.to_string(), WorkerHandle { updates: tx, task });
    }
}

async fn futures_join(tasks: impl Iterator<Item = tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
