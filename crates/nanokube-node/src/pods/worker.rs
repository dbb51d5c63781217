//! One pod's worker: kubelet's `syncPod`, `syncTerminatingPod` and
//! `syncTerminatedPod` for one pod, as a task that wakes on a change of the pod, a
//! container's exit, a probe's result or a back-off's end.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use nanokube_api::{meta, resources};
use nanokube_apiserver::cluster::Cluster;
use nanokube_runtime::bundle::{self, BindMount, ContainerConfig, Namespace};
use nanokube_runtime::shim::{self, ExitRecord, ShimArgs};
use nanokube_runtime::{command, netns, rootfs, security, Image};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::files::{self, MountError};
use super::{env, probe, resize, status, PodRuntime, SHUTDOWN_GRACE};

/// How containers are named in `containerID` (`<runtime>://<id>`).
pub const RUNTIME_NAME: &str = "nanokube";

/// Kubelet's back-off: 10 s doubling to 5 minutes, forgotten after 10 minutes quiet.
const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How often volumes made of API data are compared with the API and updated (kubelet
/// takes up to its sync period, a minute; reading the registry's cache is cheap here).
const VOLUME_REFRESH: Duration = Duration::from_secs(5);
/// How soon a deferred resize is looked at again.
const RESIZE_RETRY: Duration = Duration::from_secs(5);
/// Where the root filesystems of containers in user namespaces are mounted: a path the
/// container's root (not the host's) can reach, which the data directory may not be.
const USER_NAMESPACE_RUN_DIR: &str = "/run/nanokube/userns";

/// Which list a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An init container (runs to completion, in order).
    Init,
    /// An init container with `restartPolicy: Always`.
    Sidecar,
    /// A container.
    Regular,
    /// An ephemeral container (`kubectl debug`): started once, never restarted.
    Ephemeral,
}

/// A running instance of a container.
#[derive(Debug)]
pub struct Running {
    /// Its attempt number (0 for the first; the log file's name).
    pub attempt: u32,
    /// The runc container ID.
    pub id: String,
    /// Its bundle directory.
    pub bundle: PathBuf,
    /// The shim's PID.
    pub shim_pid: i32,
    /// When it started.
    pub started_at: String,
    /// The resources its cgroup was given (`None` for one adopted from a previous run,
    /// given its allocation again at the next sync).
    pub applied: Option<ResourceRequirements>,
    /// Being stopped to start again with resized resources.
    pub restarting_for_resize: bool,
    probes: Vec<tokio::task::JoinHandle<()>>,
}

/// A finished instance.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its attempt number.
    pub attempt: u32,
    /// The runc container ID.
    pub id: String,
    /// How it ended.
    pub exit: ExitRecord,
    at: Instant,
}

/// Kubelet's per-container (or per-image) back-off.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    delay: Duration,
    updated: Instant,
}

impl Backoff {
    fn next(prev: Option<Backoff>, now: Instant) -> Backoff {
        let delay = match prev {
            Some(b) if now.duration_since(b.updated) <= BACKOFF_MAX * 2 => (b.delay * 2).min(BACKOFF_MAX),
            _ => BACKOFF_INITIAL,
        };
        Backoff { delay, updated: now }
    }
}

/// What the worker knows of one container.
#[derive(Debug)]
pub struct ContainerState {
    /// The container's name.
    pub name: String,
    /// Which list it is in.
    pub kind: Kind,
    /// The image as the spec names it.
    pub image: String,
    /// The image's ID as reported (`name@digest`).
    pub image_id: String,
    /// Instances started so far.
    pub instances: u32,
    /// The running instance.
    pub running: Option<Running>,
    /// The last finished instance.
    pub last: Option<Finished>,
    /// The one before it.
    pub previous: Option<Finished>,
    /// Why it waits (reason, message).
    pub waiting: Option<(String, String)>,
    /// Readiness (probe, or started when there is none).
    pub ready: bool,
    /// Started (startup probe passed, or none).
    pub started: bool,
    /// An init container that completed (or a sidecar that started once).
    pub init_done: bool,
    /// Stopped because the pod is terminating: never restarted.
    pub stopped_for_good: bool,
    /// Stopped by a resize that restarts it: started again whatever the restart policy.
    pub resize_restart: bool,
    backoff: Option<Backoff>,
}

impl ContainerState {
    /// kubelet's `restartCount`.
    pub fn restart_count(&self) -> u32 {
        self.instances.saturating_sub(1)
    }
}

/// What wakes the worker besides the pod changing.
#[derive(Debug)]
pub enum Msg {
    /// A container's shim ended.
    Exited { name: String, attempt: u32 },
    /// A probe's verdict changed.
    Probe { name: String, attempt: u32, verdict: probe::Verdict },
    /// The eviction manager evicts the pod (a threshold met, a storage limit passed).
    Evict { message: String },
}

/// Why the node ended a pod: evicted, or refused at admission (kubelet's `Evicted`).
#[derive(Debug, Clone)]
struct Ended {
    message: String,
    /// Evicted while running: the pod gets the `DisruptionTarget` condition.
    disruption: bool,
}

/// What a previous run left of a container: instances started, the running one, the last
/// finished one and the one before.
type Adopted = (u32, Option<Running>, Option<Finished>, Option<Finished>);

/// One pod's worker.
pub struct Worker {
    rt: Arc<PodRuntime>,
    uid: String,
    dir: PathBuf,
    ip: Option<Ipv4Addr>,
    containers: Vec<ContainerState>,
    adopted: HashMap<String, Adopted>,
    sandbox_ready: bool,
    start_time: Option<String>,
    last_status: Option<Value>,
    image_backoff: HashMap<String, Backoff>,
    volumes_synced: Option<Instant>,
    tokens: files::TokenCache,
    /// Where each persistentVolumeClaim volume lives on the host, by volume name.
    claims: HashMap<String, PathBuf>,
    ports_stop: Option<watch::Sender<bool>>,
    mesh_listener: Option<nanokube_net::mesh::Capture>,
    blocked: Option<(String, String)>,
    ended: Option<Ended>,
    /// The resources the node admitted for each container.
    allocation: resize::Allocation,
    /// kubelet's resize conditions, as they stand.
    resize_conditions: Vec<Value>,
    /// An admitted resize not yet carried out: its end is announced (`ResizeCompleted`).
    resize_started: bool,
    tx: mpsc::Sender<Msg>,
    rx: Option<mpsc::Receiver<Msg>>,
}

fn pods_def() -> &'static resources::ResourceDef {
    resources::find("", "v1", "pods").expect("built-in resource")
}

fn pod_value(pod: &Pod) -> Value {
    let mut v = serde_json::to_value(pod).unwrap_or(Value::Null);
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Pod");
    v
}

/// The host directory behind a claim: its bound volume's `hostPath` or `local` path
/// (made when the volume says `DirectoryOrCreate`), or why there is none yet, in
/// kubelet's words.
fn claim_path(cluster: &dyn Cluster, ns: &str, claim: &str) -> Result<PathBuf, String> {
    let pvcs = resources::find("", "v1", "persistentvolumeclaims").ok_or("no persistentvolumeclaims")?;
    let pvc = cluster.get(pvcs, ns, claim).map_err(|e| e.message)?;
    if pvc.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
        return Err(format!("error processing PVC {ns}/{claim}: can't start pod because PVC {ns}/{claim} is being deleted"));
    }
    let volume = pvc.pointer("/spec/volumeName").and_then(Value::as_str).filter(|v| !v.is_empty());
    let Some(volume) = volume else { return Err(format!("error processing PVC {ns}/{claim}: PVC is not bound")) };
    let pvs = resources::find("", "v1", "persistentvolumes").ok_or("no persistentvolumes")?;
    let pv = cluster.get(pvs, "", volume).map_err(|e| e.message)?;
    let path = pv.pointer("/spec/hostPath/path").or_else(|| pv.pointer("/spec/local/path")).and_then(Value::as_str);
    let Some(path) = path else { return Err(format!("persistentvolume {volume:?} is neither hostPath nor local: this node mounts only those")) };
    let path = PathBuf::from(path);
    if pv.pointer("/spec/hostPath/type").and_then(Value::as_str) == Some("DirectoryOrCreate") && !path.exists() {
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// Events about one container (`spec.containers{name}`) of a pod.
struct ContainerEvents<'a> {
    rt: Arc<PodRuntime>,
    pod: &'a Value,
    field: &'a str,
}

impl ContainerEvents<'_> {
    async fn say(&self, ty: &str, reason: &str, message: String) {
        self.rt.recorder.record(&*self.rt.cluster, self.pod, Some(self.field), ty, reason, &message).await;
    }
}

fn fresh_id() -> String {
    (0..4).map(|_| format!("{:016x}", fastrand::u64(..))).collect()
}

/// Wait until process `pid` ends (a pidfd, so it need not be our child).
pub(crate) async fn wait_pid(pid: i32) {
    // SAFETY: pidfd_open(2) returns a new descriptor we own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return;
    }
    // SAFETY: fd is a fresh descriptor owned from here on.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: the AsyncFd owns the pidfd and nothing else closes it while registered.
    match unsafe { tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) } {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => {
            while shim::alive(pid) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.rt.unregister_worker(&self.uid);
        self.rt.set_allocation(&self.uid, None);
    }
}

impl Worker {
    /// A worker for the pod `uid` (its directory may hold what a previous run left).
    pub fn new(rt: Arc<PodRuntime>, uid: &str) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let dir = rt.pods_dir().join(uid);
        let mut w = Worker {
            rt,
            uid: uid.to_string(),
            dir,
            ip: None,
            containers: Vec::new(),
            adopted: HashMap::new(),
            sandbox_ready: false,
            start_time: None,
            last_status: None,
            image_backoff: HashMap::new(),
            volumes_synced: None,
            tokens: Default::default(),
            claims: HashMap::new(),
            ports_stop: None,
            mesh_listener: None,
            blocked: None,
            ended: None,
            allocation: resize::Allocation::default(),
            resize_conditions: Vec::new(),
            resize_started: false,
            tx,
            rx: Some(rx),
        };
        w.rt.register_worker(uid, w.tx.clone());
        w.adopt();
        w
    }

    /// Read what a previous run left in the pod's directory.
    fn adopt(&mut self) {
        let Ok(record) = std::fs::read(self.dir.join("pod.json")) else { return };
        let record: Value = serde_json::from_slice(&record).unwrap_or(Value::Null);
        if let Some(ip) = record.get("ip").and_then(Value::as_str).and_then(|s| s.parse().ok()) {
            self.ip = Some(ip);
            self.rt.claim_ip(ip);
        }
        self.start_time = record.get("startTime").and_then(Value::as_str).map(String::from);
        self.sandbox_ready = netns::is_namespace(&self.dir.join("ns-net"));
        for entry in std::fs::read_dir(self.dir.join("containers")).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let mut attempts: Vec<u32> =
                std::fs::read_dir(entry.path()).into_iter().flatten().flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect();
            attempts.sort();
            let (mut running, mut last, mut previous) = (None, None, None);
            for a in &attempts {
                let bundle = entry.path().join(a.to_string());
                let id = std::fs::read_to_string(bundle.join("id")).unwrap_or_default();
                if let Some(exit) = shim::read_exit(&bundle) {
                    previous = last.take();
                    last = Some(Finished { attempt: *a, id, exit, at: Instant::now() });
                } else if let Some(pid) = shim::recorded_pid(&bundle).filter(|p| shim::alive(*p)) {
                    let started_at = std::fs::read_to_string(bundle.join("started")).unwrap_or_default();
                    running =
                        Some(Running { attempt: *a, id, bundle, shim_pid: pid, started_at, applied: None, restarting_for_resize: false, probes: Vec::new() });
                } else {
                    // The shim is gone without a word (the machine rebooted, or it was
                    // killed): kubelet's ContainerStatusUnknown; a container still running
                    // without its shim is removed, never left unwatched.
                    let _ = self.rt.runc.delete(&id);
                    previous = last.take();
                    let exit = ExitRecord {
                        exit_code: 137,
                        signal: None,
                        started_at: None,
                        finished_at: meta::now_rfc3339(),
                        reason: Some("ContainerStatusUnknown".into()),
                        message: Some("The container could not be located when the pod was terminated".into()),
                    };
                    last = Some(Finished { attempt: *a, id, exit, at: Instant::now() });
                }
            }
            let instances = attempts.last().map(|a| a + 1).unwrap_or(0);
            self.adopted.insert(name, (instances, running, last, previous));
        }
    }

    fn init_containers(&mut self, pod: &Pod) {
        if !self.containers.is_empty() {
            return;
        }
        let Some(spec) = &pod.spec else { return };
        let mut list: Vec<(Kind, &Container)> = Vec::new();
        for c in spec.init_containers.iter().flatten() {
            list.push((if c.restart_policy.as_deref() == Some("Always") { Kind::Sidecar } else { Kind::Init }, c));
        }
        for c in &spec.containers {
            list.push((Kind::Regular, c));
        }
        for (kind, c) in list {
            let (instances, running, last, previous) = self.adopted.remove(&c.name).unwrap_or((0, None, None, None));
            let init_done = match kind {
                Kind::Init => last.as_ref().is_some_and(|l| l.exit.exit_code == 0),
                Kind::Sidecar => instances > 0,
                Kind::Regular | Kind::Ephemeral => false,
            };
            let has_readiness = c.readiness_probe.is_some();
            let has_startup = c.startup_probe.is_some();
            let is_running = running.is_some();
            self.containers.push(ContainerState {
                name: c.name.clone(),
                kind,
                image: c.image.clone().unwrap_or_default(),
                image_id: String::new(),
                instances,
                running,
                last,
                previous,
                waiting: None,
                ready: is_running && !has_readiness && !has_startup,
                started: is_running && !has_startup,
                init_done,
                stopped_for_good: false,
                resize_restart: false,
                backoff: None,
            });
        }
        // What the node admitted before (a previous run), else the spec as it is now.
        self.allocation = resize::Allocation::load(&self.dir);
        let mut fresh = false;
        for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
            if !self.allocation.0.contains_key(&c.name) {
                self.allocation.0.insert(c.name.clone(), c.resources.clone().unwrap_or_default());
                fresh = true;
            }
        }
        if fresh {
            if let Err(e) = self.allocation.save(&self.dir) {
                tracing::warn!(pod = %self.uid, "keeping the pod's allocation: {e}");
            }
        }
        let allocated = resize::pod_requests(spec, |c| self.allocation.0.get(&c.name));
        self.rt.set_allocation(&self.uid, Some(allocated));
        // Adopted running containers are watched again, and probed.
        for i in 0..self.containers.len() {
            if let Some(r) = &self.containers[i].running {
                let (pid, attempt, name) = (r.shim_pid, r.attempt, self.containers[i].name.clone());
                self.watch_exit(&name, attempt, pid);
                if let Some(c) = find_container(pod, &name) {
                    let probes = self.start_probes(pod, &c, attempt);
                    if let Some(r) = self.containers[i].running.as_mut() {
                        r.probes = probes;
                    }
                }
            }
        }
        if let Some(spec) = &pod.spec {
            for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
                if let Some(state) = self.containers.iter_mut().find(|s| s.name == c.name) {
                    if let Some(img) = c.image.as_deref().and_then(|i| self.rt.images.resolve(&normalized(i))) {
                        state.image_id = image_id(&img);
                    }
                }
            }
        }
    }

    /// Ephemeral containers added to the spec since the last pass (`kubectl debug`).
    fn add_ephemeral_containers(&mut self, pod: &Pod) {
        for c in pod.spec.iter().flat_map(|s| s.ephemeral_containers.iter().flatten()) {
            if self.containers.iter().any(|s| s.name == c.name) {
                continue;
            }
            let (instances, running, last, previous) = self.adopted.remove(&c.name).unwrap_or((0, None, None, None));
            if let Some(r) = &running {
                self.watch_exit(&c.name, r.attempt, r.shim_pid);
            }
            let image_id = c.image.as_deref().and_then(|i| self.rt.images.resolve(&normalized(i))).map(|img| image_id(&img)).unwrap_or_default();
            let is_running = running.is_some();
            self.containers.push(ContainerState {
                name: c.name.clone(),
                kind: Kind::Ephemeral,
                image: c.image.clone().unwrap_or_default(),
                image_id,
                instances,
                running,
                last,
                previous,
                waiting: None,
                ready: false,
                started: is_running,
                init_done: false,
                stopped_for_good: false,
                resize_restart: false,
                backoff: None,
            });
        }
    }

    /// Run until the pod is gone (stopped, cleaned up, deleted) or the node stops.
    pub async fn run(mut self, mut updates: watch::Receiver<Option<Pod>>, mut stop: watch::Receiver<bool>) {
        let Some(mut rx) = self.rx.take() else { return };
        loop {
            let pod = updates.borrow_and_update().clone();
            let Some(pod) = pod else {
                // Gone from the API (force-deleted, or deleted while the node was down).
                self.terminate(None, Duration::from_secs(2)).await;
                self.cleanup();
                return;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u64;
                self.init_containers(&pod);
                // The node stopping cuts a long grace period short, as at shutdown: no
                // container may outlive a clean stop.
                let stopping = tokio::select! {
                    _ = self.terminate(Some(&pod), Duration::from_secs(grace)) => false,
                    _ = stop.changed() => true,
                };
                if stopping {
                    self.terminate(Some(&pod), Duration::ZERO).await;
                    self.release_sandbox();
                    remove_cgroups(&format!("nanokube/pod{}", self.uid));
                    return;
                }
                self.write_status(&pod, true).await;
                self.cleanup();
                self.confirm_delete(&pod).await;
                return;
            }
            self.init_containers(&pod);
            self.add_ephemeral_containers(&pod);
            let wake = self.sync(&pod).await;
            self.write_status(&pod, false).await;
            tokio::select! {
                // A closed channel (the manager gone) disables this branch; the stop
                // signal then ends the worker as on shutdown.
                _ = updates.changed(), if updates.has_changed().is_ok() => {}
                Some(m) = rx.recv() => self.handle(m, &pod).await,
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = stop.changed() => {
                    let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0) as u64;
                    self.terminate(Some(&pod), Duration::from_secs(grace).min(SHUTDOWN_GRACE)).await;
                    // The pod stays on disk to run again at the next start, as after a
                    // reboot: its sandbox (namespaces, memory-backed volumes) and its
                    // empty cgroups go, and are made again then.
                    self.release_sandbox();
                    remove_cgroups(&format!("nanokube/pod{}", self.uid));
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, m: Msg, pod: &Pod) {
        match m {
            Msg::Evict { message } => self.end(pod, message, true).await,
            Msg::Exited { name, attempt } => {
                let Some(i) = self.containers.iter().position(|c| c.name == name) else { return };
                let matches = self.containers[i].running.as_ref().is_some_and(|r| r.attempt == attempt);
                if matches {
                    self.finish(i);
                }
            }
            Msg::Probe { name, attempt, verdict } => {
                let Some(i) = self.containers.iter().position(|c| c.name == name) else { return };
                if self.containers[i].running.as_ref().is_none_or(|r| r.attempt != attempt) {
                    return;
                }
                match verdict {
                    probe::Verdict::Ready(r) => self.containers[i].ready = r,
                    probe::Verdict::Started => {
                        let c = &mut self.containers[i];
                        c.started = true;
                        if find_container(pod, &name).is_some_and(|c| c.readiness_probe.is_none()) {
                            c.ready = true;
                        }
                    }
                    probe::Verdict::Restart(why) => {
                        let v = pod_value(pod);
                        self.rt.recorder.record(&*self.rt.cluster, &v, Some(&self.field_path(&name)), "Normal", "Killing", &why).await;
                        let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0) as u64;
                        if let Some(r) = &self.containers[i].running {
                            let (runc, id, pid) = (self.rt.runc.clone(), r.id.clone(), r.shim_pid);
                            tokio::spawn(async move { stop_instance(&runc, &id, pid, Duration::from_secs(grace)).await });
                        }
                    }
                }
            }
        }
    }

    /// A container's instance ended: record how, release what it held.
    fn finish(&mut self, i: usize) {
        let Some(r) = self.containers[i].running.take() else { return };
        for p in &r.probes {
            p.abort();
        }
        let exit = shim::read_exit(&r.bundle).unwrap_or(ExitRecord {
            exit_code: 255,
            signal: None,
            started_at: Some(r.started_at.clone()),
            finished_at: meta::now_rfc3339(),
            reason: Some("Unknown".into()),
            message: Some("the container's shim ended without recording an exit".into()),
        });
        let _ = self.rt.runc.delete(&r.id);
        let _ = rootfs::unmount(&r.bundle.join("rootfs"));
        let c = &mut self.containers[i];
        if c.kind == Kind::Init && exit.exit_code == 0 {
            c.init_done = true;
        }
        c.resize_restart = r.restarting_for_resize;
        c.previous = c.last.take();
        c.last = Some(Finished { attempt: r.attempt, id: r.id, exit, at: Instant::now() });
        c.ready = false;
        c.started = false;
    }

    fn field_path(&self, name: &str) -> String {
        match self.containers.iter().find(|c| c.name == name).map(|c| c.kind) {
            Some(Kind::Init) | Some(Kind::Sidecar) => format!("spec.initContainers{{{name}}}"),
            Some(Kind::Ephemeral) => format!("spec.ephemeralContainers{{{name}}}"),
            _ => format!("spec.containers{{{name}}}"),
        }
    }

    /// Bring the pod toward its spec; when to look again.
    /// End the pod as kubelet's eviction manager does: an `Evicted` event, every
    /// container stopped within the immediate grace period, the pod `Failed` with reason
    /// `Evicted` for good (its containers never start again).
    async fn end(&mut self, pod: &Pod, message: String, disruption: bool) {
        if self.ended.is_some() {
            return;
        }
        let v = pod_value(pod);
        self.rt.recorder.record(&*self.rt.cluster, &v, None, "Warning", "Evicted", &message).await;
        self.ended = Some(Ended { message, disruption });
        self.terminate(Some(pod), crate::eviction::IMMEDIATE_GRACE).await;
    }

    async fn sync(&mut self, pod: &Pod) -> Instant {
        let soon = Instant::now() + Duration::from_secs(2);
        let later = Instant::now() + Duration::from_secs(60);
        let v = pod_value(pod);
        if self.ended.is_some() {
            return later;
        }
        // Admission, for a pod this node has not started yet: none under disk or PID
        // pressure, no BestEffort one under memory pressure.
        let fresh = self.start_time.is_none() && self.containers.iter().all(|c| c.instances == 0 && c.running.is_none());
        if fresh {
            if let Err(message) = crate::eviction::admit(&v, &self.rt.pressure()) {
                self.end(pod, message, false).await;
                return later;
            }
        }
        if self.start_time.is_none() {
            self.start_time = Some(meta::now_rfc3339());
        }
        if !self.sandbox_ready {
            if let Err(e) = self.make_sandbox(pod, &v) {
                self.blocked = Some(("ContainerCreating".into(), String::new()));
                self.rt.recorder.record(&*self.rt.cluster, &v, None, "Warning", "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: {e}")).await;
                return soon;
            }
            self.sandbox_ready = true;
        }
        if self.ports_stop.is_none() && !pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
            if let Some(ip) = self.ip {
                let declared = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                    .filter_map(|p| u16::try_from(p.container_port).ok())
                    .collect();
                let (tx, rx) = watch::channel(false);
                if self.mesh_listener.is_none() {
                    // An adopted pod: its namespace kept the rules.
                    let ns = self.dir.join("ns-net");
                    self.mesh_listener = nanokube_net::mesh::listen(&ns).map_err(|e| tracing::debug!(pod = %self.uid, "{e}")).ok();
                    self.rt.network.forwarder.pods.insert(ip, ns);
                }
                if let Some(l) = self.mesh_listener.take() {
                    tokio::spawn(nanokube_net::mesh::serve(l, ip, self.rt.network.forwarder.clone(), rx.clone()));
                }
                tokio::spawn(super::ports::forward(self.dir.clone(), ip, declared, rx));
                self.ports_stop = Some(tx);
            }
        }
        let volumes_due = self.volumes_synced.is_none_or(|t| t.elapsed() >= VOLUME_REFRESH);
        if volumes_due {
            match self.sync_volumes(&v) {
                Ok(()) => {
                    self.volumes_synced = Some(Instant::now());
                    self.blocked = None;
                }
                Err((volume, e)) => {
                    self.rt
                        .recorder
                        .record(&*self.rt.cluster, &v, None, "Warning", "FailedMount", &format!("MountVolume.SetUp failed for volume \"{volume}\" : {}", e.0))
                        .await;
                    if self.containers.iter().all(|c| c.instances == 0) {
                        self.blocked = Some(("ContainerCreating".into(), String::new()));
                        return soon;
                    }
                }
            }
        }
        let mut wake = later;
        if let Some(t) = self.volumes_synced {
            wake = wake.min(t + VOLUME_REFRESH);
        }
        if status::finished(&v, &self.containers) {
            return wake;
        }
        if self.sync_resize(pod, &v).await {
            // A deferred resize is looked at again soon: other pods may have left.
            wake = wake.min(Instant::now() + RESIZE_RETRY);
        }
        let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into());
        // Init containers and sidecars, in order: each must finish (or, a sidecar, start)
        // before the next.
        for i in 0..self.containers.len() {
            let kind = self.containers[i].kind;
            if kind == Kind::Regular {
                break;
            }
            let c = &self.containers[i];
            if kind == Kind::Init && c.init_done {
                continue;
            }
            if c.running.is_some() {
                if kind == Kind::Sidecar && c.started {
                    self.containers[i].init_done = true;
                    continue;
                }
                if kind == Kind::Sidecar && c.init_done {
                    continue;
                }
                return wake;
            }
            if let Some(last) = &c.last {
                if !status::restarts(kind, &policy, last.exit.exit_code) {
                    return wake;
                }
            }
            if kind == Kind::Sidecar && c.init_done {
                // A sidecar that died after the pod started is restarted, the others go on.
                if let Some(w) = self.start_or_back_off(i, pod, &v).await {
                    wake = wake.min(w);
                }
                continue;
            }
            if let Some(w) = self.start_or_back_off(i, pod, &v).await {
                wake = wake.min(w);
            }
            return wake.min(soon.max(Instant::now() + Duration::from_millis(200)));
        }
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            if c.kind != Kind::Regular || c.running.is_some() {
                continue;
            }
            if let Some(last) = &c.last {
                if !status::restarts(Kind::Regular, &policy, last.exit.exit_code) && !c.resize_restart {
                    continue;
                }
            }
            if let Some(w) = self.start_or_back_off(i, pod, &v).await {
                wake = wake.min(w);
            }
        }
        // Ephemeral containers start once, whatever their end.
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            if c.kind != Kind::Ephemeral || c.running.is_some() || c.instances > 0 {
                continue;
            }
            if let Some(w) = self.start_or_back_off(i, pod, &v).await {
                wake = wake.min(w);
            }
        }
        wake
    }

    /// In-place resize: admit a change of the spec's resources when it fits the node
    /// (else say why it is pending), then give running containers what was admitted,
    /// with `runc update` or, where their resize policy asks, a restart. Whether a
    /// resize waits for room (`Deferred`).
    async fn sync_resize(&mut self, pod: &Pod, v: &Value) -> bool {
        let Some(spec) = &pod.spec else { return false };
        let mut deferred = false;
        let mut conditions = Vec::new();
        let wanted = resize::resizable(spec).any(|c| !resize::same(c.resources.as_ref(), self.allocation.0.get(&c.name)));
        if wanted {
            let desired = resize::pod_requests(spec, |c| c.resources.as_ref());
            let allocatable = self.rt.allocatable.lock().map(|a| a.clone()).unwrap_or(Value::Null);
            match resize::admit(desired, self.rt.allocated_except(&self.uid), &allocatable) {
                Ok(()) => {
                    for c in resize::resizable(spec) {
                        self.allocation.0.insert(c.name.clone(), c.resources.clone().unwrap_or_default());
                    }
                    if let Err(e) = self.allocation.save(&self.dir) {
                        tracing::warn!(pod = %self.uid, "keeping the pod's allocation: {e}");
                    }
                    self.rt.set_allocation(&self.uid, Some(desired));
                    self.resize_started = true;
                }
                Err((reason, message)) => {
                    deferred = reason == "Deferred";
                    conditions.push(resize::condition("PodResizePending", Some(&reason), Some(&message)));
                }
            }
        }
        let mut in_progress: Option<String> = None;
        for i in 0..self.containers.len() {
            let name = self.containers[i].name.clone();
            let (Some(allocated), Some(container)) = (self.allocation.0.get(&name).cloned(), find_container(pod, &name)) else { continue };
            if !matches!(self.containers[i].kind, Kind::Regular | Kind::Sidecar) {
                continue;
            }
            let Some(r) = &self.containers[i].running else { continue };
            if r.applied.as_ref().is_some_and(|a| resize::same(Some(a), Some(&allocated))) {
                continue;
            }
            let changed = match &r.applied {
                Some(a) => resize::changed_resources(Some(a), Some(&allocated)),
                None => Vec::new(),
            };
            if changed.iter().any(|res| resize::restarts_for(&container, res)) {
                // Started again at once (no crash back-off), with the new resources.
                in_progress.get_or_insert_with(String::new);
                if !r.restarting_for_resize {
                    let (runc, id, pid) = (self.rt.runc.clone(), r.id.clone(), r.shim_pid);
                    let grace = spec.termination_grace_period_seconds.unwrap_or(30).max(0) as u64;
                    self.rt
                        .recorder
                        .record(&*self.rt.cluster, v, Some(&self.field_path(&name)), "Normal", "Killing", &format!("Container {name} resize requires restart"))
                        .await;
                    self.containers[i].backoff = None;
                    if let Some(r) = self.containers[i].running.as_mut() {
                        r.restarting_for_resize = true;
                    }
                    tokio::spawn(async move { stop_instance(&runc, &id, pid, Duration::from_secs(grace)).await });
                }
                continue;
            }
            let (runc, id, limits) = (self.rt.runc.clone(), r.id.clone(), resize::limits_of(Some(&allocated)));
            let updated = tokio::task::spawn_blocking(move || runc.update(&id, &limits)).await.map_err(|e| e.to_string()).and_then(|r| r);
            match updated {
                Ok(()) => {
                    if let Some(r) = self.containers[i].running.as_mut() {
                        r.applied = Some(allocated);
                    }
                }
                Err(e) => in_progress = Some(e),
            }
        }
        match in_progress {
            Some(e) if !e.is_empty() => conditions.push(resize::condition("PodResizeInProgress", Some("Error"), Some(&e))),
            Some(_) => conditions.push(resize::condition("PodResizeInProgress", None, None)),
            None if std::mem::take(&mut self.resize_started) => {
                let message = resize::completed_message(spec, &self.allocation);
                self.rt.recorder.record(&*self.rt.cluster, v, None, "Normal", "ResizeCompleted", &message).await;
            }
            None => {}
        }
        self.resize_conditions = conditions;
        deferred
    }

    /// Start container `i`, unless its crash back-off holds it; when to try again if not.
    async fn start_or_back_off(&mut self, i: usize, pod: &Pod, v: &Value) -> Option<Instant> {
        let now = Instant::now();
        let name = self.containers[i].name.clone();
        if let (Some(last), Some(b)) = (&self.containers[i].last, self.containers[i].backoff) {
            let until = last.at + b.delay;
            if now < until {
                let (pname, ns) = (pod.metadata.name.clone().unwrap_or_default(), pod.metadata.namespace.clone().unwrap_or_default());
                let message = format!("back-off {} restarting failed container={name} pod={pname}_{ns}({})", fmt_secs(b.delay), self.uid);
                if self.containers[i].waiting.as_ref().map(|w| w.0.as_str()) != Some("CrashLoopBackOff") {
                    self.rt
                        .recorder
                        .record(
                            &*self.rt.cluster,
                            v,
                            Some(&self.field_path(&name)),
                            "Warning",
                            "BackOff",
                            &format!("Back-off restarting failed container {name} in pod {pname}_{ns}({})", self.uid),
                        )
                        .await;
                }
                self.containers[i].waiting = Some(("CrashLoopBackOff".into(), message));
                return Some(until);
            }
        }
        if self.containers[i].last.is_some() {
            self.containers[i].backoff = Some(Backoff::next(self.containers[i].backoff, now));
        }
        let spec = find_container(pod, &name)?;
        self.start(i, pod, v, &spec).await.err()
    }

    /// Pull (per policy), configure and start one instance of container `i`.
    async fn start(&mut self, i: usize, pod: &Pod, v: &Value, spec: &Container) -> Result<(), Instant> {
        let name = spec.name.clone();
        let field = self.field_path(&name);
        let rec = ContainerEvents { rt: self.rt.clone(), pod: v, field: &field };
        let in_pull_backoff = self.containers[i].waiting.as_ref().is_some_and(|w| w.0 == "ImagePullBackOff");
        let image = match self.ensure_image(pod, v, spec, &field, in_pull_backoff).await {
            Ok(img) => img,
            Err((reason, message, retry)) => {
                self.containers[i].waiting = Some((reason, message));
                return Err(retry);
            }
        };
        self.containers[i].image_id = image_id(&image);
        let attempt = self.containers[i].instances;
        let id = fresh_id();
        let bundle = self.dir.join("containers").join(&name).join(attempt.to_string());
        // Older instances than the last finished one are not kept.
        if attempt >= 2 {
            for old in 0..attempt - 1 {
                let _ = std::fs::remove_dir_all(self.dir.join("containers").join(&name).join(old.to_string()));
            }
        }
        let config = match self.container_config(pod, v, spec, &image, &bundle, &id) {
            Ok(c) => c,
            Err(e) => {
                rec.say("Warning", "Failed", format!("Error: {e}")).await;
                self.containers[i].waiting = Some(("CreateContainerConfigError".into(), e));
                return Err(Instant::now() + Duration::from_secs(2));
            }
        };
        let prepared = (|| -> Result<(), String> {
            std::fs::create_dir_all(&bundle).map_err(|e| e.to_string())?;
            std::fs::write(bundle.join("id"), &id).map_err(|e| e.to_string())?;
            let root = match config.user_namespace.as_ref().map(|u| u.0) {
                Some(map) => {
                    let run_dir = Path::new(USER_NAMESPACE_RUN_DIR).join(&id);
                    rootfs::mount_in_user_namespace(&self.rt.images, &image, &bundle, &run_dir, map)?
                }
                None => rootfs::mount(&self.rt.images, &image, &bundle)?,
            };
            for m in &config.mounts {
                // Mount points for files must exist as files in the image's root.
                let target = root.join(m.destination.trim_start_matches('/'));
                if m.source.is_file() && !target.exists() {
                    if let Some(p) = target.parent() {
                        let _ = std::fs::create_dir_all(p);
                    }
                    let _ = std::fs::File::create(&target);
                }
            }
            bundle::write(&bundle, &root, &config)
        })();
        if let Err(e) = prepared {
            let _ = rootfs::unmount(&bundle.join("rootfs"));
            rec.say("Warning", "Failed", format!("Error: {e}")).await;
            self.containers[i].waiting = Some(("CreateContainerError".into(), e));
            return Err(Instant::now() + Duration::from_secs(2));
        }
        rec.say("Normal", "Created", format!("Created container: {name}")).await;
        let (pname, ns) = (pod.metadata.name.clone().unwrap_or_default(), pod.metadata.namespace.clone().unwrap_or_default());
        let log = self.rt.logs_dir().join(format!("{ns}_{pname}_{}", self.uid)).join(&name).join(format!("{attempt}.log"));
        let args = ShimArgs {
            runc: self.rt.runc.binary.clone(),
            root: self.rt.runc.state.clone(),
            bundle: bundle.clone(),
            id: id.clone(),
            log,
            stdin: spec.stdin.unwrap_or(false),
            stdin_once: spec.stdin_once.unwrap_or(false),
            tty: spec.tty.unwrap_or(false),
        };
        let binary = self.rt.binary.clone();
        let spawned = tokio::task::spawn_blocking(move || shim::spawn(&binary, &args)).await.map_err(|e| e.to_string()).and_then(|r| r);
        self.containers[i].instances = attempt + 1;
        self.containers[i].waiting = None;
        self.containers[i].resize_restart = false;
        let started = match spawned {
            Ok((pid, s)) if s.error.is_none() => (pid as i32, s),
            Ok((_, s)) => {
                let message = s.error.unwrap_or_default();
                rec.say("Warning", "Failed", format!("Error: failed to create containerd task: failed to create shim task: {message}")).await;
                let exit = shim::read_exit(&bundle).unwrap_or(ExitRecord {
                    exit_code: 128,
                    signal: None,
                    started_at: None,
                    finished_at: meta::now_rfc3339(),
                    reason: Some("StartError".into()),
                    message: Some(message),
                });
                let _ = self.rt.runc.delete(&id);
                let _ = rootfs::unmount(&bundle.join("rootfs"));
                let c = &mut self.containers[i];
                c.previous = c.last.take();
                c.last = Some(Finished { attempt, id, exit, at: Instant::now() });
                return Err(Instant::now() + Duration::from_millis(100));
            }
            Err(e) => {
                let _ = rootfs::unmount(&bundle.join("rootfs"));
                rec.say("Warning", "Failed", format!("Error: {e}")).await;
                self.containers[i].waiting = Some(("RunContainerError".into(), e));
                return Err(Instant::now() + Duration::from_secs(2));
            }
        };
        let (pid, s) = started;
        let started_at = s.started_at.unwrap_or_else(meta::now_rfc3339);
        let _ = std::fs::write(bundle.join("started"), &started_at);
        rec.say("Normal", "Started", format!("Started container {name}")).await;
        let has_startup = spec.startup_probe.is_some();
        let has_readiness = spec.readiness_probe.is_some();
        let applied = self.allocation.0.get(&name).cloned().or_else(|| spec.resources.clone()).unwrap_or_default();
        let c = &mut self.containers[i];
        c.started = !has_startup;
        c.ready = !has_startup && !has_readiness;
        c.running = Some(Running {
            attempt,
            id: id.clone(),
            bundle: bundle.clone(),
            shim_pid: pid,
            started_at,
            applied: Some(applied),
            restarting_for_resize: false,
            probes: Vec::new(),
        });
        self.watch_exit(&name, attempt, pid);
        // postStart runs before the container counts as started; a failure kills it.
        if let Some(hook) = spec.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
            if let Err(e) = probe::run_handler(&self.rt, &self.dir, self.ip, &id, hook, Duration::from_secs(30)).await {
                rec.say("Warning", "FailedPostStartHook", format!("PostStartHook failed: {e}")).await;
                let (runc, id2) = (self.rt.runc.clone(), id.clone());
                tokio::spawn(async move { stop_instance(&runc, &id2, pid, Duration::from_secs(0)).await });
                return Ok(());
            }
        }
        let probes = self.start_probes(pod, spec, attempt);
        if let Some(r) = self.containers[i].running.as_mut() {
            r.probes = probes;
        }
        Ok(())
    }

    fn watch_exit(&self, name: &str, attempt: u32, pid: i32) {
        let (tx, name) = (self.tx.clone(), name.to_string());
        tokio::spawn(async move {
            wait_pid(pid).await;
            let _ = tx.send(Msg::Exited { name, attempt }).await;
        });
    }

    fn start_probes(&self, pod: &Pod, spec: &Container, attempt: u32) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(r) = self.containers.iter().find(|c| c.name == spec.name).and_then(|c| c.running.as_ref()) else { return Vec::new() };
        let ctx = probe::Target {
            rt: self.rt.clone(),
            pod: pod_value(pod),
            dir: self.dir.clone(),
            ip: self.ip,
            id: r.id.clone(),
            name: spec.name.clone(),
            attempt,
            field_path: self.field_path(&spec.name),
            tx: self.tx.clone(),
        };
        probe::start(ctx, spec)
    }

    /// The image for `spec`, pulled per its policy; on failure the waiting reason,
    /// message and when to try again.
    async fn ensure_image(&mut self, pod: &Pod, v: &Value, spec: &Container, field: &str, in_backoff: bool) -> Result<Image, (String, String, Instant)> {
        let image = spec.image.clone().unwrap_or_default();
        let rec = ContainerEvents { rt: self.rt.clone(), pod: v, field };
        let reference = match nanokube_runtime::Reference::parse(&image) {
            Ok(r) => r.to_string(),
            Err(_) => {
                let msg = format!("Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format");
                rec.say("Warning", "InspectFailed", msg.clone()).await;
                return Err(("InvalidImageName".into(), msg, Instant::now() + Duration::from_secs(10)));
            }
        };
        let policy = spec.image_pull_policy.clone().unwrap_or_else(|| if reference.ends_with(":latest") { "Always".into() } else { "IfNotPresent".into() });
        let present = self.rt.images.resolve(&reference);
        match (policy.as_str(), present) {
            ("Never", Some(img)) | ("IfNotPresent", Some(img)) => {
                rec.say("Normal", "Pulled", format!("Container image \"{image}\" already present on machine")).await;
                return Ok(img);
            }
            ("Never", None) => {
                let msg = format!("Container image \"{image}\" is not present with pull policy of Never");
                rec.say("Warning", "ErrImageNeverPull", msg.clone()).await;
                return Err(("ErrImageNeverPull".into(), msg, Instant::now() + Duration::from_secs(10)));
            }
            _ => {}
        }
        let now = Instant::now();
        if let Some(b) = self.image_backoff.get(&image) {
            if now < b.updated + b.delay {
                let msg = format!("Back-off pulling image \"{image}\"");
                if !in_backoff {
                    rec.say("Normal", "BackOff", msg.clone()).await;
                    rec.say("Warning", "Failed", "Error: ImagePullBackOff".into()).await;
                }
                return Err(("ImagePullBackOff".into(), msg, b.updated + b.delay));
            }
        }
        rec.say("Normal", "Pulling", format!("Pulling image \"{image}\"")).await;
        let started = Instant::now();
        let lock = self.rt.pull_lock(&reference).await;
        let _guard = lock.lock().await;
        let waited = started.elapsed();
        let registry_host = nanokube_runtime::Reference::parse(&reference).map(|r| r.registry).unwrap_or_default();
        let creds = pull_credentials(&self.rt, pod, &registry_host);
        let endpoint = self.rt.mirrors.endpoint(&registry_host);
        let endpoint = (endpoint != registry_host).then(|| endpoint.to_string());
        let pulled = nanokube_runtime::pull::pull_via(&self.rt.images, &reference, creds.as_ref(), &self.rt.insecure_registries, endpoint.as_deref()).await;
        match pulled {
            Ok(img) => {
                self.image_backoff.remove(&image);
                let took = started.elapsed();
                rec.say(
                    "Normal",
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{image}\" in {} ({} including waiting). Image size: {} bytes.",
                        fmt_dur(took.saturating_sub(waited)),
                        fmt_dur(took),
                        img.size
                    ),
                )
                .await;
                Ok(img)
            }
            Err(e) => {
                let b = Backoff::next(self.image_backoff.get(&image).copied(), Instant::now());
                self.image_backoff.insert(image.clone(), b);
                rec.say("Warning", "Failed", format!("Failed to pull image \"{image}\": {e}")).await;
                rec.say("Warning", "Failed", "Error: ErrImagePull".into()).await;
                Err(("ErrImagePull".into(), e, b.updated + b.delay))
            }
        }
    }

    /// The sandbox: the pod's IP, network and IPC namespaces, `/etc` files.
    fn make_sandbox(&mut self, pod: &Pod, v: &Value) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        if self.ip.is_none() {
            self.ip = if host_network { self.rt.host_ip.parse().ok() } else { self.rt.allocate_ip() };
        }
        let ip = self.ip.ok_or_else(|| match self.rt.pod_cidr() {
            Some(cidr) => format!("no pod IP left in the node's range {cidr}"),
            None => "network is not ready: the node has no pod CIDR yet".to_string(),
        })?;
        if pod.spec.as_ref().and_then(|s| s.host_users) == Some(false) {
            // Validation keeps host namespaces out of such pods.
            let map = self.rt.user_namespace(&self.dir)?;
            nanokube_runtime::userns::create_pod_namespaces(map, &self.dir.join("ns-user"), &self.dir.join("ns-net"), &self.dir.join("ns-ipc"))?;
        }
        if !host_network {
            let ns = self.dir.join("ns-net");
            netns::create(netns::Kind::Net, &ns)?;
            // containerd 2's defaults for a pod's network (enable_unprivileged_ports and
            // _icmp): any user may bind low ports and ping, so a container whose root is
            // not the host's (hostUsers: false) can still serve on :80.
            netns::within(&ns, || {
                std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
                    .and_then(|()| std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"))
            })?
            .map_err(|e| format!("setting the pod network's sysctls: {e}"))?;
            match nanokube_net::mesh::prepare(&ns, ip, &self.rt.network.captured_ranges()) {
                Ok(l) => self.mesh_listener = Some(l),
                Err(e) => tracing::warn!(pod = %self.uid, "{e}"),
            }
            self.rt.network.forwarder.pods.insert(ip, ns);
        }
        if !pod.spec.as_ref().and_then(|s| s.host_ipc).unwrap_or(false) {
            netns::create(netns::Kind::Ipc, &self.dir.join("ns-ipc"))?;
        }
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
        std::fs::write(etc.join("hosts"), files::hosts_file(v, &ip.to_string(), &self.rt.network.config.cluster_domain)).map_err(|e| e.to_string())?;
        std::fs::write(etc.join("hostname"), format!("{}\n", hostname(pod))).map_err(|e| e.to_string())?;
        std::fs::write(etc.join("resolv.conf"), files::resolv_conf(v, &self.rt.dns_ip, &self.rt.network.config.cluster_domain)).map_err(|e| e.to_string())?;
        let record =
            json!({"namespace": pod.metadata.namespace, "name": pod.metadata.name, "uid": self.uid, "ip": ip.to_string(), "startTime": self.start_time});
        std::fs::write(self.dir.join("pod.json"), record.to_string()).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Make or refresh every volume; the first that fails, and why.
    fn sync_volumes(&mut self, v: &Value) -> Result<(), (String, MountError)> {
        let allocatable = self.rt.allocatable.lock().map(|a| a.clone()).unwrap_or(Value::Null);
        let tokens = Some(files::TokenSource { cluster: &*self.rt.cluster, cache: &self.tokens });
        let mut fs_group = v.pointer("/spec/securityContext/fsGroup").and_then(Value::as_u64).and_then(|g| u32::try_from(g).ok());
        if v.pointer("/spec/hostUsers").and_then(Value::as_bool) == Some(false) {
            // The group as the host sees the container's group.
            let map = self.rt.user_namespace(&self.dir).map_err(|e| (String::new(), MountError(e)))?;
            fs_group = fs_group.and_then(|g| map.to_host(g));
        }
        for vol in v.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
            let name = vol.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            let dir = files::volume_dir(&self.dir, vol);
            if let Some(ed) = vol.get("emptyDir") {
                if !dir.exists() {
                    std::fs::create_dir_all(&dir).map_err(|e| (name.clone(), MountError(e.to_string())))?;
                    // Writable by every user, as kubelet makes it.
                    let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777));
                    if ed.get("medium").and_then(Value::as_str) == Some("Memory") {
                        let size = ed
                            .get("sizeLimit")
                            .and_then(Value::as_str)
                            .and_then(nanokube_api::expressions::parse_quantity)
                            .map(|b| format!(",size={}", b as u64))
                            .unwrap_or_default();
                        mount_tmpfs(&dir, &format!("mode=1777{size}")).map_err(|e| (name.clone(), MountError(e)))?;
                    }
                    if let Some(gid) = fs_group {
                        files::set_volume_ownership(&dir, gid, false).map_err(|e| (name.clone(), MountError(e.to_string())))?;
                    }
                }
                continue;
            }
            if let Some(claim) = vol.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str) {
                let ns = v.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
                let path = claim_path(&*self.rt.cluster, ns, claim).map_err(|e| (name.clone(), MountError(e)))?;
                self.claims.insert(name.clone(), path);
                continue;
            }
            if let Some(hp) = vol.get("hostPath") {
                let ty = hp.get("type").and_then(Value::as_str).unwrap_or("");
                let exists = dir.exists();
                match ty {
                    "DirectoryOrCreate" if !exists => std::fs::create_dir_all(&dir).map_err(|e| (name.clone(), MountError(e.to_string())))?,
                    "FileOrCreate" if !exists => {
                        std::fs::File::create(&dir).map_err(|e| (name.clone(), MountError(e.to_string())))?;
                    }
                    "Directory" if !dir.is_dir() => {
                        return Err((name, MountError(format!("hostPath type check failed: {} is not a directory", dir.display()))))
                    }
                    "File" if !dir.is_file() => return Err((name, MountError(format!("hostPath type check failed: {} is not a file", dir.display())))),
                    _ => {}
                }
                continue;
            }
            match files::api_volume(v, vol, &*self.rt.cluster, tokens.as_ref(), &allocatable) {
                Some(Ok(payload)) => {
                    files::write_atomic(&dir, &payload, fs_group).map_err(|e| (name.clone(), MountError(e.to_string())))?;
                }
                Some(Err(e)) => return Err((name, e)),
                None => {}
            }
        }
        Ok(())
    }

    fn container_config(&self, pod: &Pod, v: &Value, spec: &Container, image: &Image, bundle: &Path, id: &str) -> Result<ContainerConfig, String> {
        let cfg: Value = self.rt.images.read_blob(&image.id).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let strs =
            |p: &str| -> Vec<String> { cfg.pointer(p).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(String::from).collect() };
        let allocatable = self.rt.allocatable.lock().map(|a| a.clone()).unwrap_or(Value::Null);
        let spec_v = serde_json::to_value(spec).map_err(|e| e.to_string())?;
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let enable_links = pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
        let mut vars: Vec<(String, String)> =
            env::service_links(&*self.rt.cluster, &ns, enable_links).into_iter().map(|(k, v)| (k, v.replace('$', "$$"))).collect();
        vars.extend(env::container_vars(&*self.rt.cluster, v, &spec_v, &allocatable).map_err(|e| e.0)?);
        let environment = command::environment(&strs("/config/Env"), &vars);
        let argv = command::argv(
            spec.command.as_deref().unwrap_or(&[]),
            spec.args.as_deref().unwrap_or(&[]),
            &strs("/config/Entrypoint"),
            &strs("/config/Cmd"),
            &environment,
        );
        if argv.is_empty() {
            return Err("no command specified".into());
        }
        let psc = pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
        let csc = spec.security_context.clone().unwrap_or_default();
        let image_user = cfg.pointer("/config/User").and_then(Value::as_str).unwrap_or("");
        let (image_uid, image_gid) = parse_user(image_user);
        let uid = csc.run_as_user.or(psc.run_as_user).map(|u| u as u32).or(image_uid).unwrap_or(0);
        let gid = csc.run_as_group.or(psc.run_as_group).map(|g| g as u32).or(image_gid).unwrap_or(0);
        if csc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false) && uid == 0 {
            if image_uid.is_none() && !image_user.is_empty() {
                return Err(format!("container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root (pod: \"{}_{}({})\", container: {})", pod.metadata.name.clone().unwrap_or_default(), ns, self.uid, spec.name));
            }
            return Err(format!(
                "container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {})",
                pod.metadata.name.clone().unwrap_or_default(),
                ns,
                self.uid,
                spec.name
            ));
        }
        let mut additional_gids: Vec<u32> = psc.supplemental_groups.clone().unwrap_or_default().into_iter().map(|g| g as u32).collect();
        if let Some(fs) = psc.fs_group {
            additional_gids.push(fs as u32);
        }
        let privileged = csc.privileged.unwrap_or(false);
        let caps = csc.capabilities.clone().unwrap_or_default();
        let capabilities = security::capabilities(privileged, caps.add.as_deref().unwrap_or(&[]), caps.drop.as_deref().unwrap_or(&[]));
        let seccomp = match csc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref()) {
            // containerd applies no profile to privileged containers.
            _ if privileged => None,
            Some(p) if p.type_ == "RuntimeDefault" => Some(security::runtime_default_seccomp(&capabilities)),
            Some(p) if p.type_ == "Localhost" => {
                let rel = p.localhost_profile.clone().unwrap_or_default();
                if Path::new(&rel).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                    return Err(format!("invalid localhostProfile {rel:?}"));
                }
                // kubelet's seccomp root, under the data directory.
                let path = self.rt.data_dir.join("seccomp").join(&rel);
                let text = std::fs::read(&path).map_err(|e| format!("failed to load seccomp profile {}: {e}", path.display()))?;
                Some(serde_json::from_slice(&text).map_err(|e| format!("failed to load seccomp profile {}: {e}", path.display()))?)
            }
            _ => None,
        };
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        let etc = self.dir.join("etc");
        let mut mounts = vec![
            BindMount { source: etc.join("hosts"), destination: "/etc/hosts".into(), readonly: false },
            BindMount { source: etc.join("hostname"), destination: "/etc/hostname".into(), readonly: false },
            BindMount { source: etc.join("resolv.conf"), destination: "/etc/resolv.conf".into(), readonly: false },
        ];
        let volumes: Vec<Value> = v.pointer("/spec/volumes").and_then(Value::as_array).cloned().unwrap_or_default();
        for m in spec.volume_mounts.iter().flatten() {
            let vol = volumes
                .iter()
                .find(|x| x.get("name").and_then(Value::as_str) == Some(m.name.as_str()))
                .ok_or_else(|| format!("cannot find volume \"{}\" to mount into container \"{}\"", m.name, spec.name))?;
            let mut source = self.claims.get(&m.name).cloned().unwrap_or_else(|| files::volume_dir(&self.dir, vol));
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if Path::new(sub).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                    return Err(format!("subPath {sub:?} must be a relative path without '..'"));
                }
                source = source.join(sub);
                if !source.exists() {
                    std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
                }
            }
            let api_data = vol.get("configMap").is_some() || vol.get("secret").is_some() || vol.get("downwardAPI").is_some() || vol.get("projected").is_some();
            let claim_readonly = vol.pointer("/persistentVolumeClaim/readOnly").and_then(Value::as_bool).unwrap_or(false);
            mounts.push(BindMount { source, destination: m.mount_path.clone(), readonly: m.read_only.unwrap_or(false) || api_data || claim_readonly });
        }
        // A container starts with what the node admitted for it (the spec until a resize
        // is admitted).
        let limits = resize::limits_of(self.allocation.0.get(&spec.name).or(spec.resources.as_ref()));
        let _ = bundle;
        let user_namespace = match pod.spec.as_ref().and_then(|s| s.host_users) {
            Some(false) => Some((self.rt.user_namespace(&self.dir)?, self.dir.join("ns-user"))),
            _ => None,
        };
        Ok(ContainerConfig {
            user_namespace,
            argv,
            env: environment,
            cwd: spec
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .or_else(|| cfg.pointer("/config/WorkingDir").and_then(Value::as_str).map(String::from))
                .unwrap_or_default(),
            uid,
            gid,
            hostname: hostname(pod),
            readonly_rootfs: csc.read_only_root_filesystem.unwrap_or(false),
            allow_privilege_escalation: csc.allow_privilege_escalation.unwrap_or(true),
            cgroups_path: format!("/nanokube/pod{}/{id}", self.uid),
            mounts,
            network_namespace: if host_network { Namespace::Host } else { Namespace::Join(self.dir.join("ns-net")) },
            ipc_namespace: if pod.spec.as_ref().and_then(|s| s.host_ipc).unwrap_or(false) { Namespace::Host } else { Namespace::Join(self.dir.join("ns-ipc")) },
            additional_gids,
            capabilities,
            privileged,
            seccomp,
            pid_namespace: if let Some(target) = debug_target(pod, &spec.name) {
                // A debug container sees its target's processes (its PID namespace).
                let r = self.containers.iter().find(|c| c.name == target).and_then(|c| c.running.as_ref());
                let pid = r.and_then(|r| std::fs::read_to_string(r.bundle.join("pid")).ok()).and_then(|p| p.trim().parse::<i32>().ok());
                let pid = pid.ok_or_else(|| format!("the target container {target:?} is not running"))?;
                Namespace::Join(PathBuf::from(format!("/proc/{pid}/ns/pid")))
            } else if pod.spec.as_ref().and_then(|s| s.share_process_namespace).unwrap_or(false) {
                let pid = nanokube_runtime::pause::ensure(&self.rt.binary, &self.dir)?;
                Namespace::Join(PathBuf::from(format!("/proc/{pid}/ns/pid")))
            } else if pod.spec.as_ref().and_then(|s| s.host_pid).unwrap_or(false) {
                Namespace::Host
            } else {
                Namespace::New
            },
            terminal: spec.tty.unwrap_or(false),
            limits,
        })
    }

    /// Stop every running container: preStop hooks within the grace period, then
    /// SIGTERM, then SIGKILL when the grace period is over.
    async fn terminate(&mut self, pod: Option<&Pod>, grace: Duration) {
        let v = pod.map(pod_value);
        let mut stops = Vec::new();
        for c in self.containers.iter_mut() {
            c.stopped_for_good = true;
        }
        let deadline = Instant::now() + grace;
        for i in 0..self.containers.len() {
            let Some(r) = &self.containers[i].running else { continue };
            let (id, pid, name) = (r.id.clone(), r.shim_pid, self.containers[i].name.clone());
            for p in &r.probes {
                p.abort();
            }
            if let Some(v) = &v {
                self.rt.recorder.record(&*self.rt.cluster, v, Some(&self.field_path(&name)), "Normal", "Killing", &format!("Stopping container {name}")).await;
            }
            let hook = pod.and_then(|p| find_container(p, &name)).and_then(|c| c.lifecycle.and_then(|l| l.pre_stop));
            let (rt, dir, ip) = (self.rt.clone(), self.dir.clone(), self.ip);
            stops.push(tokio::spawn(async move {
                if let Some(h) = hook {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if let Err(e) = probe::run_handler(&rt, &dir, ip, &id, &h, left).await {
                        tracing::debug!(container = %name, "preStop hook: {e}");
                    }
                }
                let left = deadline.saturating_duration_since(Instant::now());
                stop_instance(&rt.runc, &id, pid, left).await;
            }));
        }
        // Containers found running on disk for a pod that is gone.
        if self.containers.is_empty() {
            for (_, (_, running, _, _)) in self.adopted.iter() {
                if let Some(r) = running {
                    let (runc, id, pid) = (self.rt.runc.clone(), r.id.clone(), r.shim_pid);
                    stops.push(tokio::spawn(async move { stop_instance(&runc, &id, pid, grace).await }));
                }
            }
        }
        for s in stops {
            let _ = s.await;
        }
        for i in 0..self.containers.len() {
            self.finish(i);
        }
    }

    /// Release the pod's namespaces and memory-backed volumes (what does not outlive a
    /// machine's reboot).
    fn release_sandbox(&mut self) {
        self.ports_stop = None;
        self.mesh_listener = None;
        if let Some(ip) = self.ip {
            self.rt.network.forwarder.pods.remove(ip);
        }
        let _ = netns::remove(&self.dir.join("ns-net"));
        let _ = netns::remove(&self.dir.join("ns-ipc"));
        nanokube_runtime::pause::stop(&self.dir);
        let _ = netns::remove(&self.dir.join("ns-user"));
        for vol in std::fs::read_dir(self.dir.join("volumes")).into_iter().flatten().flatten() {
            let _ = rootfs::unmount(&vol.path());
        }
        self.sandbox_ready = false;
    }

    /// Remove everything the pod had on this node.
    fn cleanup(&mut self) {
        for entry in std::fs::read_dir(self.dir.join("containers")).into_iter().flatten().flatten() {
            for attempt in std::fs::read_dir(entry.path()).into_iter().flatten().flatten() {
                if let Ok(id) = std::fs::read_to_string(attempt.path().join("id")) {
                    let _ = self.rt.runc.delete(&id);
                }
                let _ = rootfs::unmount(&attempt.path().join("rootfs"));
            }
        }
        self.release_sandbox();
        remove_cgroups(&format!("nanokube/pod{}", self.uid));
        let record: Value = std::fs::read(self.dir.join("pod.json")).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        if let (Some(ns), Some(name)) = (record.get("namespace").and_then(Value::as_str), record.get("name").and_then(Value::as_str)) {
            let _ = std::fs::remove_dir_all(self.rt.logs_dir().join(format!("{ns}_{name}_{}", self.uid)));
        }
        self.rt.release_user_namespace(&self.dir);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(pod = %self.uid, "removing the pod's directory: {e}");
            }
        }
        if let Some(ip) = self.ip.take() {
            if self.rt.is_pod_ip(ip) {
                self.rt.release_ip(ip);
            }
        }
        self.rt.recorder.forget(&self.uid);
        self.sandbox_ready = false;
    }

    /// The node's last word on a deleted pod: DELETE with grace 0 and its uid.
    async fn confirm_delete(&self, pod: &Pod) {
        let (ns, name) = (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        if let Err(e) = self.rt.cluster.delete(pods_def(), &ns, &name, Some(0), Some(&self.uid)).await {
            if e.code != 404 && e.code != 409 {
                tracing::warn!(pod = %name, "deleting the stopped pod: {}", e.message);
            }
        }
    }

    async fn write_status(&mut self, pod: &Pod, terminal: bool) {
        let v = pod_value(pod);
        let mut status = status::build(&status::Inputs {
            pod: &v,
            containers: &self.containers,
            sandbox_ready: self.sandbox_ready && !terminal,
            pod_ip: self.ip.map(|i| i.to_string()),
            host_ip: self.rt.host_ip.clone(),
            start_time: self.start_time.clone(),
            blocked: self.blocked.clone(),
            allocation: &self.allocation,
            resize_conditions: if terminal { &[] } else { &self.resize_conditions },
        });
        if let Some(e) = &self.ended {
            status["phase"] = json!("Failed");
            status["reason"] = json!("Evicted");
            status["message"] = json!(e.message);
            if e.disruption {
                if let Some(cs) = status["conditions"].as_array_mut() {
                    cs.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet", "message": e.message, "lastProbeTime": null, "lastTransitionTime": null}));
                }
            }
        }
        if terminal {
            // A pod being deleted ends in a terminal phase (kubelet since 1.27).
            let all_ok = self.containers.iter().filter(|c| c.kind == Kind::Regular).all(|c| c.last.as_ref().is_some_and(|l| l.exit.exit_code == 0));
            status["phase"] = json!(if all_ok { "Succeeded" } else { "Failed" });
        }
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let (ns, name) = (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        let uid = self.uid.clone();
        let now = meta::now_rfc3339();
        let written = self
            .rt
            .cluster
            .update_with(pods_def(), &ns, &name, Some("status"), &mut |cur| {
                if cur.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str()) {
                    return Err(nanokube_api::ApiError::conflict("pods", "", &name));
                }
                Ok(status::merge(cur, &status, &now))
            })
            .await;
        match written {
            Ok(_) => self.last_status = Some(status),
            Err(e) => tracing::debug!(pod = %name, "writing the pod status: {}", e.message),
        }
    }
}

/// SIGTERM, then SIGKILL once `grace` has passed, then wait (bounded) for the shim.
pub(crate) async fn stop_instance(runc: &nanokube_runtime::runc::Runc, id: &str, shim_pid: i32, grace: Duration) {
    if !shim::alive(shim_pid) {
        return;
    }
    let (r, i) = (runc.clone(), id.to_string());
    let _ = tokio::task::spawn_blocking(move || r.kill(&i, "TERM")).await;
    if tokio::time::timeout(grace, wait_pid(shim_pid)).await.is_ok() {
        return;
    }
    let (r, i) = (runc.clone(), id.to_string());
    let _ = tokio::task::spawn_blocking(move || r.kill(&i, "KILL")).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), wait_pid(shim_pid)).await;
}

fn find_container(pod: &Pod, name: &str) -> Option<Container> {
    let spec = pod.spec.as_ref()?;
    if let Some(c) = spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|c| c.name == name) {
        return Some(c.clone());
    }
    // An ephemeral container has a container's fields (and a target besides).
    let e = spec.ephemeral_containers.iter().flatten().find(|c| c.name == name)?;
    serde_json::to_value(e).ok().and_then(|v| serde_json::from_value(v).ok())
}

/// The container whose process namespace ephemeral container `name` joins, if any.
fn debug_target(pod: &Pod, name: &str) -> Option<String> {
    let e = pod.spec.as_ref()?.ephemeral_containers.iter().flatten().find(|c| c.name == name)?;
    e.target_container_name.clone().filter(|t| !t.is_empty())
}

fn normalized(image: &str) -> String {
    nanokube_runtime::Reference::parse(image).map(|r| r.to_string()).unwrap_or_else(|_| image.to_string())
}

fn image_id(img: &Image) -> String {
    let name = img.names.first().and_then(|n| nanokube_runtime::Reference::parse(n).ok()).map(|r| r.name()).unwrap_or_default();
    if name.is_empty() || img.manifest_digest.is_empty() {
        img.id.clone()
    } else {
        format!("{name}@{}", img.manifest_digest)
    }
}

fn hostname(pod: &Pod) -> String {
    let h = pod.spec.as_ref().and_then(|s| s.hostname.clone()).filter(|h| !h.is_empty()).or_else(|| pod.metadata.name.clone()).unwrap_or_default();
    h.chars().take(63).collect::<String>().trim_end_matches(['-', '.']).to_string()
}

/// `uid[:gid]` when numeric.
fn parse_user(user: &str) -> (Option<u32>, Option<u32>) {
    let (u, g) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    (u.parse().ok(), g.and_then(|g| g.parse().ok()))
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Go's `time.Duration` text, to milliseconds (`1.234s`, `523ms`).
fn fmt_dur(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn mount_tmpfs(dir: &Path, options: &str) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let (src, fstype) = (c"tmpfs", c"tmpfs");
    let data = std::ffi::CString::new(options).map_err(|e| e.to_string())?;
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(format!("mounting tmpfs at {}: {}", dir.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Remove a pod's cgroup directories (runc removes the containers'; the parents stay).
fn remove_cgroups(relative: &str) {
    for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let dir = controller.path().join(relative);
        if dir.is_dir() {
            for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Remove the node's cgroup root when no pod is left in it (a clean stop).
pub fn remove_cgroup_root() {
    for controller in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let _ = std::fs::remove_dir(controller.path().join("nanokube"));
    }
}

/// Credentials for `registry` from the pod's `imagePullSecrets`
/// (`kubernetes.io/dockerconfigjson`, or the older `dockercfg`).
fn pull_credentials(rt: &PodRuntime, pod: &Pod, registry: &str) -> Option<nanokube_runtime::pull::Credentials> {
    use base64::Engine;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let b64 = base64::engine::general_purpose::STANDARD;
    for s in pod.spec.as_ref()?.image_pull_secrets.iter().flatten() {
        let Some(data) = files::read_source(&*rt.cluster, "secrets", &ns, &s.name) else { continue };
        let Some(doc) = data.get(".dockerconfigjson").or_else(|| data.get(".dockercfg")).and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
            continue;
        };
        let auths = doc.get("auths").unwrap_or(&doc);
        for (key, entry) in auths.as_object().into_iter().flatten() {
            let host = key.trim_start_matches("https://").trim_start_matches("http://").split('/').next().unwrap_or("");
            let same = host == registry || (registry == "docker.io" && (host == "index.docker.io" || host == "registry-1.docker.io"));
            if !same {
                continue;
            }
            if let (Some(u), Some(p)) = (entry.get("username").and_then(Value::as_str), entry.get("password").and_then(Value::as_str)) {
                return Some(nanokube_runtime::pull::Credentials { username: u.into(), password: p.into() });
            }
            if let Some(auth) = entry.get("auth").and_then(Value::as_str).and_then(|a| b64.decode(a).ok()) {
                let text = String::from_utf8_lossy(&auth).to_string();
                if let Some((u, p)) = text.split_once(':') {
                    return Some(nanokube_runtime::pull::Credentials { username: u.into(), password: p.into() });
                }
            }
        }
    }
    None
}
