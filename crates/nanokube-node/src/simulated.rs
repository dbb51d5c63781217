//! Simulated nodes, kwok's idea inside the binary: Nodes that register, hold a Lease and
//! report Ready like kubelet's, and whose pods go through the real scheduler and become
//! Running and Ready (an IP, container statuses, kubelet's `Started` event) without any
//! process, so the control plane can be tried at the scale of 100,000 pods on two cores.
//!
//! They are labelled `nanokube.io/simulated=true` and tainted
//! `nanokube.io/simulated=true:NoSchedule` (as kwok marks its nodes), so only pods that
//! tolerate the taint land there. `nanokube server --simulated-nodes N` makes `sim-0` …
//! `sim-{N-1}`; a Node created by hand with the label is simulated too.
//!
//! Failure injection, by annotation:
//! - on a pod, `nanokube.io/simulated-exit-code: "N"`: its containers end with exit code N
//!   once started (`Failed`/`Succeeded` for `restartPolicy: Never`, otherwise
//!   `CrashLoopBackOff` with the last termination, as kubelet shows a crashing container);
//! - on a node, `nanokube.io/simulated-heartbeat: "stopped"`: its Lease is no longer
//!   renewed, so the node lifecycle controller marks it `Unknown` and taints it.
//!
//! A pod deleted gracefully ends as kubelet ends it: `Killing` events for its running
//! containers, which end with exit code 0 after the configured stop delay (1 s by
//! default, about what kubelet takes for a container that exits on SIGTERM); the terminal
//! status (`Succeeded`, or `Failed` if a container had failed, kubelet's rule since 1.27);
//! then the delete with grace 0.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use nanokube_api::meta;
use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::selector::{FieldSelector, LabelSelector};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

/// The label and taint key of a simulated node.
pub const LABEL: &str = "nanokube.io/simulated";
/// The pod annotation that makes its containers end with an exit code.
pub const EXIT_CODE_ANNOTATION: &str = "nanokube.io/simulated-exit-code";
/// The node annotation that stops its heartbeat (`stopped`).
pub const HEARTBEAT_ANNOTATION: &str = "nanokube.io/simulated-heartbeat";

/// How simulated nodes behave.
#[derive(Debug, Clone)]
pub struct SimulatedConfig {
    /// Nodes `sim-0` … made at start.
    pub nodes: usize,
    /// The time between a pod's binding and its Running status.
    pub start_delay: Duration,
    /// The time between a pod's deletion and the node's confirming it (kubelet's stop of
    /// the containers, its status and volume work): never 0 in a real cluster, and
    /// clients count on that (`kubectl delete` can wait for ever when a controller has
    /// recreated the pod under its name between two of its reads).
    pub stop_delay: Duration,
    /// Pods each node takes (`status.capacity.pods`).
    pub max_pods: u32,
    /// The kubelet version reported.
    pub version: String,
}

fn nodes_def() -> &'static ResourceDef {
    resources::find("", "v1", "nodes").expect("built-in resource")
}

fn pods_def() -> &'static ResourceDef {
    resources::find("", "v1", "pods").expect("built-in resource")
}

/// The pod CIDR of simulated node `i`, a /22 of 127.128.0.0/10 (pods get its first
/// 1,021 addresses, the node its last usable one).
fn pod_cidr(i: usize) -> (Ipv4Addr, String) {
    let base = u32::from(Ipv4Addr::new(127, 128, 0, 0)) + ((i as u32 % 4096) << 10);
    let ip = Ipv4Addr::from(base);
    (ip, format!("{ip}/22"))
}

/// Where a node's addresses come from: `sim-N` its own, a node made by hand one of the
/// upper half, by its name.
fn node_index(node: &str) -> usize {
    node.strip_prefix("sim-")
        .and_then(|i| i.parse::<usize>().ok())
        .filter(|i| *i < 2048)
        .unwrap_or_else(|| 2048 + node.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b))) % 2048)
}

/// The address of simulated node `i`.
fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr(i).0) + 1022)
}

/// The Node kubelet would register for simulated node `i`.
fn node_object(name: &str, i: usize, cfg: &SimulatedConfig) -> Value {
    let (_, cidr) = pod_cidr(i);
    // Room for max_pods pods requesting 100m and 64Mi each (the bench's).
    let capacity = json!({"cpu": "128", "memory": "512Gi", "pods": cfg.max_pods.to_string(), "ephemeral-storage": "1Ti"});
    let now = meta::now_rfc3339();
    let cond = |ty: &str, status: &str, reason: &str, message: &str| json!({"type": ty, "status": status, "reason": reason, "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                LABEL: "true",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {
            "podCIDR": cidr, "podCIDRs": [cidr],
            "taints": [{"key": LABEL, "value": "true", "effect": "NoSchedule"}],
        },
        "status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status (simulated)"),
            ],
            "addresses": [{"type": "InternalIP", "address": node_ip(i).to_string()}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux", "osImage": "nanokube simulated node",
                "kernelVersion": "simulated", "containerRuntimeVersion": "nanokube-simulated://1",
                "kubeletVersion": cfg.version, "kubeProxyVersion": "",
                "machineID": "", "systemUUID": "", "bootID": "",
            },
        },
    })
}

/// Whether `node` (a Node object) is simulated.
pub fn is_simulated(node: &Value) -> bool {
    node.pointer("/metadata/labels").and_then(|l| l.get(LABEL)).and_then(Value::as_str) == Some("true")
}

/// The simulated nodes of a cluster and their pods.
pub struct Simulator {
    registry: Arc<Registry>,
    cfg: SimulatedConfig,
    /// Starts (a status write and an event) in flight at once, across all simulated
    /// nodes. Each holds its pod decoded two or three times while its writes wait for a
    /// commit; unbounded, a burst of bindings had tens of thousands in flight and the
    /// server's memory rose by hundreds of megabytes until they drained.
    starting: Arc<tokio::sync::Semaphore>,
}

/// See [`Simulator::starting`]: enough to keep every commit full (a commit takes up to
/// 2,048 writes), few enough that what they hold stays in the tens of megabytes.
const PARALLEL_STARTS: usize = 512;

/// A pod's uid as the simulator keys what it keeps per pod: the 128 bits of a UUID (a
/// string was most of that memory at 100,000 pods), or a hash of a uid that is not one.
type UidKey = u128;

fn uid_key(uid: &str) -> UidKey {
    let hex: Vec<u8> = uid.bytes().filter(|b| *b != b'-').collect();
    match std::str::from_utf8(&hex).ok().filter(|h| h.len() == 32).and_then(|h| u128::from_str_radix(h, 16).ok()) {
        Some(k) => k,
        None => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            uid.hash(&mut h);
            u128::from(h.finish())
        }
    }
}

/// What a simulated node keeps of its pods: the IP each got, the deleted ones it is
/// ending (once each: its own status write shows it the pod again), and its event recorder.
struct NodePods {
    next: u32,
    ips: HashMap<UidKey, Ipv4Addr>,
    stopping: HashSet<UidKey>,
    events: Arc<crate::pods::events::Recorder>,
}

impl NodePods {
    fn new(node: &str) -> Self {
        NodePods { next: 0, ips: HashMap::new(), stopping: HashSet::new(), events: Arc::new(crate::pods::events::kubelet(node)) }
    }
}

impl Simulator {
    /// Simulated nodes writing through `registry`.
    pub fn new(registry: Arc<Registry>, cfg: SimulatedConfig) -> Arc<Simulator> {
        Arc::new(Simulator { registry, cfg, starting: Arc::new(tokio::sync::Semaphore::new(PARALLEL_STARTS)) })
    }

    /// Register the configured nodes (or update them), with their Leases.
    pub async fn register(&self) -> Result<(), String> {
        for i in 0..self.cfg.nodes {
            let name = format!("sim-{i}");
            let node = node_object(&name, i, &self.cfg);
            match self.registry.get(nodes_def(), "", &name) {
                Ok(_) => {
                    let status = node["status"].clone();
                    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
                    self.registry
                        .update_with(nodes_def(), "", &name, &opts, |cur| {
                            let mut next = cur.clone();
                            next["status"] = status.clone();
                            Ok(next)
                        })
                        .await
                        .map_err(|e| e.message)?;
                }
                Err(_) => {
                    self.registry.create(nodes_def(), "", node, &WriteOptions::default()).await.map_err(|e| e.message)?;
                }
            }
            crate::lease::renew(&*self.registry, &name).await?;
        }
        Ok(())
    }

    /// Heartbeats and pods until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        tokio::spawn(self.clone().heartbeats(shutdown.clone()));
        self.pods(shutdown).await;
    }

    /// Renew every simulated node's Lease (unless its heartbeat is stopped) every
    /// [`crate::LEASE_RENEW`].
    async fn heartbeats(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(crate::LEASE_RENEW);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let Ok(nodes) = self.registry.list(nodes_def(), None, &ListOptions::default()) else { continue };
            for n in &nodes.items {
                let v = n.value();
                if !is_simulated(v) {
                    continue;
                }
                let stopped = v.pointer("/metadata/annotations").and_then(|a| a.get(HEARTBEAT_ANNOTATION)).and_then(Value::as_str) == Some("stopped");
                if !stopped {
                    let _ = crate::lease::renew(&*self.registry, meta::name(v)).await;
                }
            }
        }
    }

    /// Follow every pod bound to a simulated node: start it (after the configured delay),
    /// and end it when it is deleted.
    async fn pods(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut nodes: HashMap<String, NodePods> = HashMap::new();
        let mut started: HashSet<UidKey> = HashSet::new();
        loop {
            let Ok(list) = self.registry.list(pods_def(), None, &ListOptions::default()) else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let mut simulated = self.simulated_nodes(&mut nodes);
            for p in &list.items {
                // Decoded for the call only: the listed objects are the store's own.
                let pod = p.with_value(Value::clone);
                self.handle(&pod, &mut simulated, &mut nodes, &mut started).await;
            }
            let Ok(mut w) = self.registry.watch(pods_def(), None, list.revision, LabelSelector::default(), FieldSelector::default()) else { continue };
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    ev = w.next() => match ev {
                        Some(Ok((ty, obj))) => {
                            // Most pod events need nothing here and are not decoded: a pod
                            // not bound yet, or one started already (its status written)
                            // and not being deleted.
                            if ty != "DELETED"
                                && (!obj.json_contains(br#""nodeName""#)
                                    || (obj.json_contains(br#""containerStatuses""#) && !obj.json_contains(br#""deletionTimestamp""#)))
                            {
                                continue;
                            }
                            let v = obj.value();
                            if ty == "DELETED" {
                                started.remove(&uid_key(meta::uid(v)));
                                if let Some(n) = nodes.get_mut(v.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("")) {
                                    n.ips.remove(&uid_key(meta::uid(v)));
                                    n.stopping.remove(&uid_key(meta::uid(v)));
                                    n.events.forget(meta::uid(v));
                                }
                                continue;
                            }
                            let node = v.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
                            if !node.is_empty() && !simulated.contains(node) {
                                // A node created since: look again.
                                simulated = self.simulated_nodes(&mut nodes);
                            }
                            self.handle(v, &mut simulated, &mut nodes, &mut started).await;
                        }
                        Some(Err(_)) | None => break,
                    },
                }
            }
        }
    }

    fn simulated_nodes(&self, nodes: &mut HashMap<String, NodePods>) -> HashSet<String> {
        let mut out = HashSet::new();
        if let Ok(list) = self.registry.list(nodes_def(), None, &ListOptions::default()) {
            for n in list.items.iter().filter(|n| is_simulated(n.value())) {
                let name = meta::name(n.value()).to_string();
                nodes.entry(name.clone()).or_insert_with(|| NodePods::new(&name));
                out.insert(name);
            }
        }
        out
    }

    async fn handle(&self, pod: &Value, simulated: &mut HashSet<String>, nodes: &mut HashMap<String, NodePods>, started: &mut HashSet<UidKey>) {
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
        if node.is_empty() || !simulated.contains(node) {
            return;
        }
        let (ns, name, uid) = (meta::namespace(pod).to_string(), meta::name(pod).to_string(), meta::uid(pod).to_string());
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            // Nothing runs: the containers end at once (as on SIGTERM), then the pod goes,
            // in kubelet's order: `Killing` events, the terminal status, the delete.
            let np = nodes.entry(node.to_string()).or_insert_with(|| NodePods::new(node));
            if !np.stopping.insert(uid_key(&uid)) {
                return;
            }
            let (registry, pod, events, delay) = (self.registry.clone(), pod.clone(), np.events.clone(), self.cfg.stop_delay);
            tokio::spawn(async move {
                stop(&registry, &events, &pod, delay).await;
                let opts = DeleteOptions { grace_period: Some(0), precondition_uid: Some(uid), ..Default::default() };
                let _ = registry.delete(pods_def(), &ns, &name, &opts).await;
            });
            return;
        }
        let key = uid_key(&uid);
        if started.contains(&key) || pod.pointer("/status/containerStatuses").is_some() {
            started.insert(key);
            return;
        }
        started.insert(key);
        let np = nodes.entry(node.to_string()).or_insert_with(|| NodePods::new(node));
        let index = node_index(node);
        let ip = *np.ips.entry(key).or_insert_with(|| {
            np.next = np.next % 1021 + 1;
            Ipv4Addr::from(u32::from(pod_cidr(index).0) + np.next)
        });
        let host_ip = node_ip(index).to_string();
        let (registry, delay, pod, events) = (self.registry.clone(), self.cfg.start_delay, what_start_reads(pod), np.events.clone());
        let starting = self.starting.clone();
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // Never closed: an error would only mean starting without waiting.
            let _permit = starting.acquire_owned().await;
            start(&registry, &events, &pod, &host_ip, ip).await;
        });
    }
}

/// The parts of a pod [`start`] reads (and its event's `involvedObject`): a start waits
/// for the CPU behind the writes of every pod bound before it, so while pods are bound
/// faster than they start, tens of thousands wait at once, each holding this.
fn what_start_reads(pod: &Value) -> Value {
    let mut metadata = serde_json::Map::new();
    for k in ["name", "namespace", "uid", "resourceVersion"] {
        if let Some(v) = pod.pointer(&format!("/metadata/{k}")) {
            metadata.insert(k.into(), v.clone());
        }
    }
    if let Some(code) = pod.pointer("/metadata/annotations").and_then(|a| a.get(EXIT_CODE_ANNOTATION)) {
        let annotations = serde_json::Map::from_iter([(EXIT_CODE_ANNOTATION.to_string(), code.clone())]);
        metadata.insert("annotations".into(), Value::Object(annotations));
    }
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| json!({"name": c.get("name"), "image": c.get("image")}))
        .collect();
    json!({
        "kind": pod.get("kind"), "apiVersion": pod.get("apiVersion"), "metadata": metadata,
        "spec": {"restartPolicy": pod.pointer("/spec/restartPolicy"), "containers": containers},
    })
}

/// Write the pod's status as kubelet would once its containers run (or ended, with the
/// failure annotation), and kubelet's `Started` event.
async fn start(registry: &Registry, events: &crate::pods::events::Recorder, pod: &Value, host_ip: &str, ip: Ipv4Addr) {
    let (ns, name, uid) = (meta::namespace(pod), meta::name(pod), meta::uid(pod));
    let now = meta::now_rfc3339();
    let exit: Option<i32> = pod.pointer("/metadata/annotations").and_then(|a| a.get(EXIT_CODE_ANNOTATION)).and_then(Value::as_str).and_then(|s| s.parse().ok());
    let never = pod.pointer("/spec/restartPolicy").and_then(Value::as_str) == Some("Never");
    let containers: Vec<&Value> = pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten().collect();
    let terminated = |code: i32| {
        json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" }, "startedAt": now, "finishedAt": now,
               "containerID": format!("nanokube-simulated://{uid}")}})
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
            let image = c.get("image").cloned().unwrap_or(Value::Null);
            let id = format!("nanokube-simulated://{uid}-{cname}");
            let (state, last, ready, restarts) = match exit {
                None => (json!({"running": {"startedAt": now}}), json!({}), true, 0),
                Some(code) if never || code == 0 && pod.pointer("/spec/restartPolicy").and_then(Value::as_str) == Some("OnFailure") => {
                    (terminated(code), json!({}), false, 0)
                }
                Some(code) => (
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off 10s restarting failed container={cname} pod={name}_{ns}({uid})")}}),
                    terminated(code),
                    false,
                    1,
                ),
            };
            json!({"name": cname, "image": image, "imageID": "", "containerID": id, "state": state, "lastState": last,
                   "ready": ready, "restartCount": restarts, "started": ready})
        })
        .collect();
    let phase = match exit {
        None => "Running",
        Some(0) if never => "Succeeded",
        Some(_) if never => "Failed",
        Some(_) => "Running",
    };
    let ready = exit.is_none();
    let cond = |ty: &str, ok: bool| json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastProbeTime": null});
    let status = json!({
        "phase": phase,
        "conditions": [cond("PodReadyToStartContainers", true), cond("Initialized", true), cond("Ready", ready), cond("ContainersReady", ready)],
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
        "startTime": now,
        "containerStatuses": statuses,
    });
    if write_status(registry, pod, &now, |_| status.clone()).await.is_err() {
        return;
    }
    for c in &containers {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
        events.record(registry, pod, Some(&format!("spec.containers{{{cname}}}")), "Normal", "Started", &format!("Started container {cname}")).await;
    }
}

/// End a deleted pod's containers as kubelet does before it deletes the pod: a `Killing`
/// event for each running container, then (`delay` later) the terminal status
/// (containers terminated, not ready, the phase terminal). A pod that never started has
/// nothing to end, and is confirmed `delay` later too.
async fn stop(registry: &Registry, events: &crate::pods::events::Recorder, pod: &Value, delay: Duration) {
    let Some(statuses) = pod.pointer("/status/containerStatuses").and_then(Value::as_array) else {
        tokio::time::sleep(delay).await;
        return;
    };
    for c in statuses.iter().filter(|c| c.pointer("/state/running").is_some()) {
        let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
        let reason = format!("Stopping container {cname}");
        events.record(registry, pod, Some(&format!("spec.containers{{{cname}}}")), "Normal", "Killing", &reason).await;
    }
    tokio::time::sleep(delay).await;
    let now = meta::now_rfc3339();
    let _ = write_status(registry, pod, &now, |current| terminal_status(current, &now)).await;
}

/// Merge `status_of(the stored status)` into `pod`'s status at `now`, as kubelet's status
/// manager does, unless the pod stored under its name is another one (another uid).
async fn write_status(registry: &Registry, pod: &Value, now: &str, status_of: impl Fn(&Value) -> Value) -> Result<(), nanokube_api::ApiError> {
    let (ns, name, uid) = (meta::namespace(pod), meta::name(pod), meta::uid(pod));
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    registry
        .update_with(pods_def(), ns, name, &opts, |cur| {
            if meta::uid(cur) != uid {
                return Err(nanokube_api::ApiError::conflict("pods", "", name));
            }
            let status = status_of(cur.get("status").unwrap_or(&Value::Null));
            Ok(crate::pods::status::merge(cur, &status, now))
        })
        .await
        .map(|_| ())
}

/// `current` (a started pod's status) once its containers have ended at `now`: running
/// ones with exit code 0, waiting ones (restarting) with how they ended last; none ready;
/// the phase `Succeeded` if every container ended with 0, else `Failed`.
fn terminal_status(current: &Value, now: &str) -> Value {
    let mut status = current.clone();
    let mut all_succeeded = true;
    if let Some(cs) = status.get_mut("containerStatuses").and_then(Value::as_array_mut) {
        for c in cs {
            if let Some(started) = c.pointer("/state/running/startedAt").cloned() {
                let id = c.get("containerID").cloned().unwrap_or(Value::Null);
                c["state"] = json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now, "containerID": id}});
            } else if let Some(last) = c.pointer("/lastState/terminated").cloned().filter(|_| c.pointer("/state/waiting").is_some()) {
                c["state"] = json!({"terminated": last});
            }
            all_succeeded &= c.pointer("/state/terminated/exitCode").and_then(Value::as_i64) == Some(0);
            c["ready"] = json!(false);
            c["started"] = json!(false);
        }
    }
    if !matches!(status.get("phase").and_then(Value::as_str), Some("Succeeded" | "Failed")) {
        status["phase"] = json!(if all_succeeded { "Succeeded" } else { "Failed" });
    }
    if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions {
            match c.get("type").and_then(Value::as_str) {
                Some("PodReadyToStartContainers") => c["status"] = json!("False"),
                // Kubelet's reason for a pod whose phase is terminal.
                Some("Ready" | "ContainersReady") => {
                    c["status"] = json!("False");
                    c["reason"] = json!("PodCompleted");
                }
                _ => {}
            }
        }
    }
    status
}
