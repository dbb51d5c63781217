//! The scheduler: kube-scheduler's default profile where it matters on a few nodes.
//!
//! Pods with no `spec.nodeName` whose `schedulerName` is `default-scheduler` (or unset)
//! are placed on a node that passes the filters, in upstream's order and words:
//! NodeUnschedulable (`node(s) were unschedulable`), TaintToleration (`node(s) had
//! untolerated taint {key: value}`), NodeAffinity with the node selector and required
//! node affinity (`node(s) didn't match Pod's node affinity/selector`), NodePorts
//! (`node(s) didn't have free ports for the requested pod ports`) and NodeResourcesFit
//! (`Insufficient cpu`, `Insufficient memory`, `Too many pods`). Among the nodes that
//! pass, the least requested one wins (LeastAllocated), so pods spread. The pod is bound
//! through the registry's binding (`spec.nodeName`, `PodScheduled=True`) with a
//! `Scheduled` event; a pod no node takes gets `PodScheduled=False` (`Unschedulable`)
//! and a `FailedScheduling` event with upstream's message (`0/1 nodes are available: 1
//! Insufficient cpu. preemption: ...`), and is tried again when a node or another pod
//! changes, or every 30 seconds. Events are `events.k8s.io/v1` from `default-scheduler`.
//!
//! Pods with claims go through VolumeBinding: a missing or deleting claim, or an unbound
//! one of an `Immediate` class, keeps the pod pending (upstream's words); bound volumes
//! must be reachable from the node (`volume node affinity conflict`); unbound
//! `WaitForFirstConsumer` claims are annotated with the chosen node
//! (`volume.kubernetes.io/selected-node`) and the pod is bound once they are.
//!
//! Objects are read typed (k8s-openapi). Not here: preemption (the message says what it
//! would find), inter-pod affinity, topology spread, volume limits, scheduling gates'
//! `SchedulingGated` condition, and scores beyond LeastAllocated.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, PersistentVolume, PersistentVolumeClaim, Pod, Taint, Toleration};
use k8s_openapi::api::storage::v1::StorageClass;
use nanokube_api::expressions::parse_quantity;
use nanokube_api::{meta, resources};
use nanokube_apiserver::registry::{self, ListOptions, Registry, WriteOptions};
use nanokube_store::EventKind;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use nanokube_store::follow::{follow, Change};

/// The scheduler's name in pods' `schedulerName` and its events.
pub const NAME: &str = "default-scheduler";
/// How often unschedulable pods are tried again with nothing changed.
const RETRY: Duration = Duration::from_secs(30);

fn def(group: &str, plural: &str) -> &'static resources::ResourceDef {
    resources::find(group, "v1", plural).expect("built-in resource")
}

/// What a pod asks of a node.
#[derive(Debug, Clone, Default, PartialEq)]
struct Demand {
    /// Requests by resource name in name order: cpu in cores, everything else in its
    /// unit. A boxed slice, not a map: the scheduler keeps one for every bound pod, and a
    /// map's node was most of the memory it held per pod.
    requests: Box<[(Box<str>, f64)]>,
    /// What scoring counts (upstream's non-zero requests): each container's cpu and
    /// memory, or 0.1 core and 200 MiB where it asks for none, so pods without requests
    /// still spread.
    nonzero: (f64, f64),
    /// (protocol, hostPort) pairs.
    host_ports: Vec<(String, i32)>,
}

impl Demand {
    /// kube-scheduler's pod request: containers summed, each init container's the floor
    /// (sidecars, restartPolicy Always, add to the sum), plus the overhead.
    fn of(pod: &Pod) -> Demand {
        let mut d = Demand::default();
        let Some(spec) = &pod.spec else { return d };
        // A container being resized in place holds the most of what it asks, what its
        // node admitted and what it has (upstream's max of spec, allocated and actual).
        let statuses: Vec<&k8s_openapi::api::core::v1::ContainerStatus> =
            pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten())).collect();
        let req = |c: &k8s_openapi::api::core::v1::Container| -> BTreeMap<String, f64> {
            let parse = |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| -> BTreeMap<String, f64> {
                m.map(|m| m.iter().filter_map(|(k, q)| parse_quantity(&q.0).map(|v| (k.clone(), v))).collect()).unwrap_or_default()
            };
            let mut r = parse(c.resources.as_ref().and_then(|r| r.requests.as_ref()));
            for s in statuses.iter().filter(|s| s.name == c.name) {
                let held = [parse(s.allocated_resources.as_ref()), parse(s.resources.as_ref().and_then(|r| r.requests.as_ref()))];
                for (k, v) in held.into_iter().flatten() {
                    let e = r.entry(k).or_default();
                    *e = e.max(v);
                }
            }
            r
        };
        let mut sum: BTreeMap<String, f64> = BTreeMap::new();
        for c in &spec.containers {
            let r = req(c);
            let positive = |k: &str| r.get(k).copied().filter(|v| *v > 0.0);
            d.nonzero.0 += positive("cpu").unwrap_or(DEFAULT_CPU_REQUEST);
            d.nonzero.1 += positive("memory").unwrap_or(DEFAULT_MEMORY_REQUEST);
            for (k, v) in r {
                *sum.entry(k).or_default() += v;
            }
        }
        let mut sidecars: BTreeMap<String, f64> = BTreeMap::new();
        let mut floor: BTreeMap<String, f64> = BTreeMap::new();
        for c in spec.init_containers.iter().flatten() {
            let r = req(c);
            if c.restart_policy.as_deref() == Some("Always") {
                for (k, v) in r {
                    *sidecars.entry(k).or_default() += v;
                }
            } else {
                for (k, v) in r {
                    let with_sidecars = v + sidecars.get(&k).copied().unwrap_or(0.0);
                    let e = floor.entry(k).or_default();
                    *e = e.max(with_sidecars);
                }
            }
        }
        for (k, v) in sidecars {
            *sum.entry(k).or_default() += v;
        }
        for (k, v) in floor {
            let e = sum.entry(k).or_default();
            *e = e.max(v);
        }
        for (k, q) in spec.overhead.iter().flatten() {
            if let Some(v) = parse_quantity(&q.0) {
                *sum.entry(k.clone()).or_default() += v;
            }
        }
        d.requests = sum.into_iter().map(|(k, v)| (k.into_boxed_str(), v)).collect();
        for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|h| *h > 0) {
                    d.host_ports.push((p.protocol.clone().unwrap_or_else(|| "TCP".into()), hp));
                }
            }
        }
        d
    }
}

/// Why a node does not take a pod (upstream's words), and whether preemption could help.
#[derive(Debug, Clone, PartialEq)]
struct Misfit {
    reasons: Vec<String>,
    preemption_may_help: bool,
}

/// Whether one of `tolerations` tolerates `taint` (core/v1 `ToleratesTaint`).
pub(crate) fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok())) else { return false };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// The node selector and required node affinity.
fn affinity_matches(pod: &Pod, node: &Node) -> bool {
    let no_labels = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
    let Some(spec) = &pod.spec else { return true };
    if let Some(sel) = &spec.node_selector {
        if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec.affinity.as_ref().and_then(|a| a.node_affinity.as_ref()).and_then(|n| n.required_during_scheduling_ignored_during_execution.as_ref());
    let Some(required) = required else { return true };
    let node_name = node.metadata.name.as_deref().unwrap_or("");
    required.node_selector_terms.iter().any(|term| {
        let exprs_ok = term.match_expressions.iter().flatten().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)));
        let fields_ok = term.match_fields.iter().flatten().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node_name)));
        let empty = term.match_expressions.as_ref().is_none_or(Vec::is_empty) && term.match_fields.as_ref().is_none_or(Vec::is_empty);
        !empty && exprs_ok && fields_ok
    })
}

/// Whether `node` takes `pod` as far as taints (`NoSchedule`, `NoExecute`) and node
/// selector and required affinity go: what a DaemonSet asks of a node (upstream's
/// `NodeShouldRunDaemonPod` runs these filters).
pub(crate) fn node_accepts(pod: &Pod, node: &Node) -> bool {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    taints.iter().all(|t| !(t.effect == "NoSchedule" || t.effect == "NoExecute") || tolerates(tolerations, t)) && affinity_matches(pod, node)
}

/// What is already placed on a node: requests summed, host ports, pod count.
#[derive(Debug, Default, Clone)]
struct Usage {
    requests: BTreeMap<String, f64>,
    /// The placed pods' non-zero cpu and memory (see [`Demand::nonzero`]).
    nonzero: (f64, f64),
    host_ports: Vec<(String, i32)>,
    pods: usize,
}

impl Usage {
    /// A pod with `demand` placed on the node.
    fn add(&mut self, demand: &Demand) {
        for (k, v) in &demand.requests {
            match self.requests.get_mut(&**k) {
                Some(x) => *x += v,
                None => {
                    self.requests.insert(k.to_string(), *v);
                }
            }
        }
        self.nonzero.0 += demand.nonzero.0;
        self.nonzero.1 += demand.nonzero.1;
        self.host_ports.extend(demand.host_ports.iter().cloned());
        self.pods += 1;
    }

    /// A pod with `demand` gone from the node.
    fn remove(&mut self, demand: &Demand) {
        for (k, v) in &demand.requests {
            if let Some(x) = self.requests.get_mut(&**k) {
                *x -= v;
            }
        }
        self.nonzero.0 -= demand.nonzero.0;
        self.nonzero.1 -= demand.nonzero.1;
        for p in &demand.host_ports {
            if let Some(i) = self.host_ports.iter().position(|q| q == p) {
                self.host_ports.swap_remove(i);
            }
        }
        self.pods = self.pods.saturating_sub(1);
    }
}

/// A node as the filters and scores read it, made once per change of the nodes rather
/// than once per pod and node.
struct NodeInfo {
    node: Node,
    name: String,
    allocatable: BTreeMap<String, f64>,
}

impl NodeInfo {
    fn of(node: Node) -> NodeInfo {
        NodeInfo { name: node.metadata.name.clone().unwrap_or_default(), allocatable: allocatable(&node), node }
    }
}

fn allocatable(node: &Node) -> BTreeMap<String, f64> {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .map(|m| m.iter().filter_map(|(k, q)| parse_quantity(&q.0).map(|v| (k.clone(), v))).collect())
        .unwrap_or_default()
}

/// The filters, in the default profile's order; `Ok` when the node takes the pod.
fn filter(pod: &Pod, demand: &Demand, info: &NodeInfo, usage: &Usage) -> Result<(), Misfit> {
    let node = &info.node;
    let unresolvable = |reason: String| Misfit { reasons: vec![reason], preemption_may_help: false };
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        let taint = Taint { key: "node.kubernetes.io/unschedulable".into(), effect: "NoSchedule".into(), ..Default::default() };
        if !tolerates(tolerations, &taint) {
            return Err(unresolvable("node(s) were unschedulable".into()));
        }
    }
    for taint in node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default() {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute") && !tolerates(tolerations, taint) {
            return Err(unresolvable(format!("node(s) had untolerated taint {{{}: {}}}", taint.key, taint.value.as_deref().unwrap_or(""))));
        }
    }
    if !affinity_matches(pod, node) {
        return Err(unresolvable("node(s) didn't match Pod's node affinity/selector".into()));
    }
    if demand.host_ports.iter().any(|p| usage.host_ports.contains(p)) {
        return Err(Misfit { reasons: vec!["node(s) didn't have free ports for the requested pod ports".into()], preemption_may_help: true });
    }
    let alloc = &info.allocatable;
    let mut reasons = Vec::new();
    if usage.pods + 1 > alloc.get("pods").copied().unwrap_or(0.0) as usize {
        reasons.push("Too many pods".to_string());
    }
    for (k, want) in &demand.requests {
        if *want <= 0.0 {
            continue;
        }
        let free = alloc.get(&**k).copied().unwrap_or(0.0) - usage.requests.get(&**k).copied().unwrap_or(0.0);
        if *want > free + 1e-9 {
            reasons.push(format!("Insufficient {k}"));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Misfit { reasons, preemption_may_help: true })
    }
}

/// Scoring's cpu for a container that requests none (upstream's `DefaultMilliCPURequest`).
const DEFAULT_CPU_REQUEST: f64 = 0.1;
/// Scoring's memory for a container that requests none (`DefaultMemoryRequest`, 200 MB).
const DEFAULT_MEMORY_REQUEST: f64 = 200.0 * 1024.0 * 1024.0;

/// LeastAllocated over cpu and memory (0–100) of the non-zero requests: the emptier node
/// scores higher.
fn score(info: &NodeInfo, demand: &Demand, usage: &Usage) -> f64 {
    let alloc = &info.allocatable;
    let mut total = 0.0;
    for (k, used) in [("cpu", usage.nonzero.0 + demand.nonzero.0), ("memory", usage.nonzero.1 + demand.nonzero.1)] {
        let cap = alloc.get(k).copied().unwrap_or(0.0);
        if cap <= 0.0 {
            continue;
        }
        total += ((cap - used) / cap).max(0.0) * 100.0;
    }
    total / 2.0
}

/// Upstream's FailedScheduling message for `n` nodes and what each said.
fn failure_message(n: usize, misfits: &[Misfit]) -> String {
    if n == 0 {
        return "no nodes available to schedule pods".into();
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut preemption: BTreeMap<&str, usize> = BTreeMap::new();
    for m in misfits {
        for r in &m.reasons {
            *counts.entry(r.clone()).or_default() += 1;
        }
        *preemption
            .entry(if m.preemption_may_help { "No preemption victims found for incoming pod" } else { "Preemption is not helpful for scheduling" })
            .or_default() += 1;
    }
    let join = |m: Vec<String>| m.join(", ");
    format!(
        "0/{n} nodes are available: {}. preemption: 0/{n} nodes are available: {}.",
        join(counts.into_iter().map(|(r, c)| format!("{c} {r}")).collect()),
        join(preemption.into_iter().map(|(r, c)| format!("{c} {r}")).collect())
    )
}

/// Claims, volumes and classes, for pods that use claims (VolumeBinding).
#[derive(Default)]
struct Volumes {
    claims: HashMap<(String, String), PersistentVolumeClaim>,
    volumes: HashMap<String, PersistentVolume>,
    classes: HashMap<String, StorageClass>,
}

impl Volumes {
    fn load(registry: &Registry) -> Volumes {
        fn list<T: for<'de> k8s_openapi::serde::Deserialize<'de>>(registry: &Registry, group: &str, plural: &str) -> Vec<T> {
            match registry.list(def(group, plural), None, &ListOptions::default()) {
                Ok(l) => l.items.iter().filter_map(|o| serde_json::from_value(o.to_value()).ok()).collect(),
                Err(_) => Vec::new(),
            }
        }
        Volumes {
            claims: list::<PersistentVolumeClaim>(registry, "", "persistentvolumeclaims")
                .into_iter()
                .map(|c| ((c.metadata.namespace.clone().unwrap_or_default(), c.metadata.name.clone().unwrap_or_default()), c))
                .collect(),
            volumes: list::<PersistentVolume>(registry, "", "persistentvolumes")
                .into_iter()
                .map(|v| (v.metadata.name.clone().unwrap_or_default(), v))
                .collect(),
            classes: list::<StorageClass>(registry, "storage.k8s.io", "storageclasses")
                .into_iter()
                .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
                .collect(),
        }
    }
}

fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone())).collect()
}

/// VolumeBinding's PreFilter: the pod's claims exist, are not being deleted, and none is
/// an unbound claim of an `Immediate` class (those bind before scheduling). The claims
/// that wait for this pod's node (`WaitForFirstConsumer`, unbound) are returned.
fn claims_prefilter(pod: &Pod, vols: &Volumes) -> Result<Vec<PersistentVolumeClaim>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut waiting = Vec::new();
    let mut immediate = false;
    for name in claim_names(pod) {
        let Some(c) = vols.claims.get(&(ns.clone(), name.clone())) else { return Err(format!("persistentvolumeclaim \"{name}\" not found")) };
        if c.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let spec = c.spec.clone().unwrap_or_default();
        if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
            continue;
        }
        let class = spec.storage_class_name.as_deref().and_then(|n| vols.classes.get(n));
        if class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer") {
            waiting.push(c.clone());
        } else {
            immediate = true;
        }
    }
    if immediate {
        return Err("pod has unbound immediate PersistentVolumeClaims".into());
    }
    Ok(waiting)
}

/// VolumeBinding's Filter on one node: bound volumes reachable from it; waiting claims
/// either provisioned for it or with an available volume it reaches.
fn volumes_filter(pod: &Pod, waiting: &[PersistentVolumeClaim], vols: &Volumes, node: &Node) -> Result<(), Misfit> {
    if waiting.is_empty() && claim_names(pod).is_empty() {
        return Ok(());
    }
    let no_labels = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let unresolvable = |r: &str| Misfit { reasons: vec![r.to_string()], preemption_may_help: false };
    for name in claim_names(pod) {
        let Some(c) = vols.claims.get(&(ns.clone(), name)) else { continue };
        let Some(volume) = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty()) else { continue };
        if let Some(pv) = vols.volumes.get(volume) {
            if !crate::persistent_volumes::node_affinity_allows(pv, labels) {
                return Err(unresolvable("node(s) had volume node affinity conflict"));
            }
        }
    }
    for c in waiting {
        let class_name = c.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
        let provisioned = vols.classes.get(&class_name).is_some_and(|sc| sc.provisioner != "kubernetes.io/no-provisioner");
        if provisioned {
            continue;
        }
        let available = vols.volumes.values().any(|pv| {
            pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_none() && s.storage_class_name.as_deref() == Some(class_name.as_str()))
                && crate::persistent_volumes::node_affinity_allows(pv, labels)
        });
        if !available {
            return Err(unresolvable("node(s) didn't find available persistent volumes to bind"));
        }
    }
    Ok(())
}

/// The scheduler's state: pods waiting, what each node holds, and what was last said.
#[derive(Default)]
struct State {
    /// Pending pods by key, with the cluster generation they were last tried at.
    /// Kept as stored (the store's bytes, shared) and decoded when tried: while pods are
    /// created faster than they are bound, tens of thousands wait here, and decoded they
    /// held several kilobytes each.
    pending: BTreeMap<String, (registry::Obj, u64)>,
    /// Bound (or assumed: bound by this scheduler, the write in flight), non-terminal
    /// pods: key → (node, demand).
    bound: HashMap<String, (String, Demand)>,
    /// What the bound pods hold of each node, kept as they come and go.
    usage: HashMap<String, Usage>,
    /// Pods assumed onto a node whose binding is still being written.
    binding: std::collections::HashSet<String>,
    /// Bumped by every change that could let a waiting pod fit.
    generation: u64,
    /// The last FailedScheduling message per pod, so an unchanged verdict is not repeated.
    said: HashMap<String, String>,
    /// The nodes as last read; `None` once nodes, claims or volumes changed.
    nodes: Option<Arc<Vec<NodeInfo>>>,
}

impl State {
    /// A pod now holds part of `node` (replacing what it held before).
    fn place(&mut self, key: String, node: String, demand: Demand) {
        self.unplace(&key);
        self.usage.entry(node.clone()).or_default().add(&demand);
        self.bound.insert(key, (node, demand));
    }

    /// A pod no longer holds anything; whether it held something.
    fn unplace(&mut self, key: &str) -> bool {
        match self.bound.remove(key) {
            Some((node, demand)) => {
                if let Some(u) = self.usage.get_mut(&node) {
                    u.remove(&demand);
                }
                true
            }
            None => false,
        }
    }
}

/// What the scheduler's loop is told.
enum Seen {
    /// A pod changed.
    Pod(EventKind, registry::Obj),
    /// Nodes, claims or volumes changed (or a watch started over).
    Cluster,
    /// Writing a binding failed: the pod is tried again unless it is bound or gone.
    BindFailed(String),
}

/// Bindings written at once (kube-scheduler binds in goroutines of their own, so the
/// next pod is scheduled while the last one's binding is written).
const PARALLEL_BINDINGS: usize = 64;

/// The scheduler.
pub struct Scheduler {
    registry: Arc<Registry>,
    /// `reportingInstance` of its events (`default-scheduler-<host>`).
    instance: String,
    bindings: Arc<tokio::sync::Semaphore>,
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""))
}

fn ours(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let name = spec.and_then(|s| s.scheduler_name.as_deref()).unwrap_or(NAME);
    let gated = spec.and_then(|s| s.scheduling_gates.as_ref()).is_some_and(|g| !g.is_empty());
    name == NAME && !gated
}

fn terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

impl Scheduler {
    /// A scheduler writing through `registry`, on the host named `host`.
    pub fn new(registry: Arc<Registry>, host: &str) -> Self {
        Scheduler { registry, instance: format!("{NAME}-{host}"), bindings: Arc::new(tokio::sync::Semaphore::new(PARALLEL_BINDINGS)) }
    }

    /// Schedule until shutdown: read every pod once, then follow pods and nodes.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        // Objects travel as the store's shared handles, not decoded trees: a scheduler
        // that falls behind a burst of creates holds references, not copies.
        let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
        let start = self.registry.store().current_revision();
        let mut state = State::default();
        if let Ok(list) = self.registry.list(def("", "pods"), None, &ListOptions::default()) {
            for o in &list.items {
                self.observe(&mut state, EventKind::Created, o);
            }
        }
        // Claims and volumes changing (a claim bound, a volume made) can let a pod fit.
        for (plural, is_node) in [("pods", false), ("nodes", true), ("persistentvolumeclaims", true), ("persistentvolumes", true)] {
            let (tx, sd, store) = (tx.clone(), shutdown.clone(), self.registry.store().clone());
            let prefix = def("", plural).key_prefix();
            tokio::spawn(async move {
                follow(store, &prefix, start, sd, |c: Change<'_>| match c {
                    Change::Event(_) if is_node => tx.send(Seen::Cluster).is_ok(),
                    Change::Event(ev) => match registry::decode(&ev.kv) {
                        Ok(o) => tx.send(Seen::Pod(ev.kind, o)).is_ok(),
                        Err(_) => true,
                    },
                    Change::Resync => tx.send(Seen::Cluster).is_ok(),
                })
                .await
            });
        }
        let mut shutdown = shutdown;
        let mut retry = tokio::time::interval(RETRY);
        loop {
            self.schedule_pending(&mut state, &tx).await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = retry.tick() => {
                    state.generation += 1;
                    state.nodes = None;
                }
                Some(seen) = rx.recv() => {
                    let mut next = Some(seen);
                    // Take what else is waiting, so a burst of creates is one pass.
                    while let Some(seen) = next.take() {
                        match seen {
                            Seen::Cluster => {
                                state.generation += 1;
                                state.nodes = None;
                            }
                            Seen::Pod(kind, obj) => self.observe(&mut state, kind, &obj),
                            Seen::BindFailed(k) => self.bind_failed(&mut state, &k),
                        }
                        next = rx.try_recv().ok();
                    }
                }
            }
        }
    }

    /// Take one pod event into the state.
    fn observe(&self, state: &mut State, kind: EventKind, obj: &registry::Obj) {
        let Ok(pod) = serde_json::from_slice::<Pod>(&obj.json()) else { return };
        let k = key(&pod);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let gone = kind == EventKind::Deleted || terminal(&pod);
        if gone || !node.is_empty() {
            state.pending.remove(&k);
            state.said.remove(&k);
            state.binding.remove(&k);
        }
        if gone {
            if state.unplace(&k) {
                state.generation += 1; // room freed on a node
            }
            return;
        }
        if !node.is_empty() {
            let demand = Demand::of(&pod);
            // Assumed already with the same demand: nothing to change.
            if state.bound.get(&k).is_none_or(|(n, d)| *n != node || *d != demand) {
                state.place(k, node, demand);
            }
            return;
        }
        if state.binding.contains(&k) {
            // Its binding is being written; the pod as created says nothing new.
            return;
        }
        if state.unplace(&k) {
            state.generation += 1;
        }
        if ours(&pod) && pod.metadata.deletion_timestamp.is_none() {
            let tried = state.pending.get(&k).map(|(_, g)| *g);
            // A changed pod (its tolerations, say) is tried again.
            let unchanged = state.pending.get(&k).is_some_and(|(p, _)| nanokube_api::json::same_spec(&p.json(), &obj.json()));
            state.pending.insert(k, (obj.clone(), if unchanged { tried.unwrap_or(u64::MAX) } else { u64::MAX }));
        }
    }

    /// A binding could not be written: forget the assumption and look at the pod as it
    /// is now (bound by someone else, gone, or to be tried again).
    fn bind_failed(&self, state: &mut State, k: &str) {
        state.binding.remove(k);
        if state.unplace(k) {
            state.generation += 1;
        }
        let (ns, name) = k.split_once('/').unwrap_or(("", k));
        if let Ok(obj) = self.registry.get(def("", "pods"), ns, name) {
            self.observe(state, EventKind::Updated, &obj);
        }
    }

    /// The nodes, read again only after they (or claims or volumes) changed.
    fn nodes(&self, state: &mut State) -> Option<Arc<Vec<NodeInfo>>> {
        if state.nodes.is_none() {
            let listed = self.registry.list(def("", "nodes"), None, &ListOptions::default()).ok()?;
            let nodes = listed.items.iter().filter_map(|o| serde_json::from_slice::<Node>(&o.json()).ok()).map(NodeInfo::of).collect();
            state.nodes = Some(Arc::new(nodes));
        }
        state.nodes.clone()
    }

    /// Try every pending pod not tried since the cluster last changed.
    async fn schedule_pending(self: &Arc<Self>, state: &mut State, tx: &mpsc::UnboundedSender<Seen>) {
        let due: Vec<String> = state.pending.iter().filter(|(_, (_, g))| *g != state.generation).map(|(k, _)| k.clone()).collect();
        if due.is_empty() {
            return;
        }
        let Some(nodes) = self.nodes(state) else { return };
        // Read from the bytes: a pod with a claim has one of these keys (a false match
        // only loads the volumes for nothing).
        let any_claims =
            due.iter().any(|k| state.pending.get(k).is_some_and(|(p, _)| p.json_contains(br#""persistentVolumeClaim""#) || p.json_contains(br#""ephemeral""#)));
        let vols = if any_claims { Volumes::load(&self.registry) } else { Volumes::default() };
        let empty = Usage::default();
        for k in due {
            // Taken out while it is tried (no clone); put back unless it is bound.
            let Some((obj, _)) = state.pending.remove(&k) else { continue };
            let Ok(pod) = serde_json::from_slice::<Pod>(&obj.json()) else { continue };
            let demand = Demand::of(&pod);
            let generation = state.generation;
            let waiting = match claims_prefilter(&pod, &vols) {
                Ok(w) => w,
                Err(why) => {
                    let n = nodes.len();
                    let message =
                        format!("0/{n} nodes are available: {why}. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling.");
                    if state.said.get(&k) != Some(&message) {
                        self.unschedulable(&pod, &message).await;
                        state.said.insert(k.clone(), message);
                    }
                    state.pending.insert(k, (obj, generation));
                    continue;
                }
            };
            let mut misfits = Vec::new();
            let mut best: Option<(f64, &NodeInfo)> = None;
            // Nodes sharing the best score so far: one of them is taken at random, as
            // upstream's selectHost samples them.
            let mut ties = 0u32;
            for info in nodes.iter() {
                let u = state.usage.get(&info.name).unwrap_or(&empty);
                match filter(&pod, &demand, info, u).and_then(|()| volumes_filter(&pod, &waiting, &vols, &info.node)) {
                    Ok(()) => {
                        let s = score(info, &demand, u);
                        match best {
                            Some((b, _)) if s < b => {}
                            Some((b, _)) if s == b => {
                                ties += 1;
                                if fastrand::u32(..ties) == 0 {
                                    best = Some((s, info));
                                }
                            }
                            _ => {
                                ties = 1;
                                best = Some((s, info));
                            }
                        }
                    }
                    Err(m) => misfits.push(m),
                }
            }
            match best {
                Some((_, info)) if !waiting.is_empty() => {
                    // VolumeBinding's PreBind: the claims learn the node; the pod is bound
                    // once they are (their change brings it back here).
                    for c in &waiting {
                        self.select_node(c, &info.name).await;
                    }
                    state.pending.insert(k, (obj, generation));
                }
                Some((_, info)) => {
                    // Assume the pod onto the node, then write the binding beside the
                    // next pods' scheduling, as kube-scheduler's binding cycle.
                    let node_name = info.name.clone();
                    state.said.remove(&k);
                    state.binding.insert(k.clone());
                    state.place(k.clone(), node_name.clone(), demand);
                    let Ok(permit) = self.bindings.clone().acquire_owned().await else { return };
                    let (me, tx) = (self.clone(), tx.clone());
                    tokio::spawn(async move {
                        let bound = me.bind(&pod, &node_name).await;
                        drop(permit);
                        if !bound {
                            let _ = tx.send(Seen::BindFailed(k));
                        }
                    });
                }
                None => {
                    let message = failure_message(nodes.len(), &misfits);
                    if state.said.get(&k) != Some(&message) {
                        self.unschedulable(&pod, &message).await;
                        state.said.insert(k.clone(), message);
                    }
                    state.pending.insert(k, (obj, generation));
                }
            }
        }
    }

    /// Tell a waiting claim the node its pod goes to (`volume.kubernetes.io/selected-node`).
    async fn select_node(&self, claim: &PersistentVolumeClaim, node: &str) {
        let key = crate::persistent_volumes::SELECTED_NODE;
        if claim.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str) == Some(node) {
            return;
        }
        let (ns, name) = (claim.metadata.namespace.clone().unwrap_or_default(), claim.metadata.name.clone().unwrap_or_default());
        let r = self
            .registry
            .update_with(def("", "persistentvolumeclaims"), &ns, &name, &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                let m = next.get_mut("metadata").and_then(Value::as_object_mut).ok_or_else(|| nanokube_api::ApiError::internal("no metadata"))?;
                let a = m.entry("annotations").or_insert_with(|| json!({}));
                if let Some(a) = a.as_object_mut() {
                    a.insert(key.into(), json!(node));
                }
                Ok(next)
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(claim = %name, "selecting node: {}", e.message);
        }
    }

    async fn bind(&self, pod: &Pod, node: &str) -> bool {
        let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
        match self.registry.bind(ns, name, node, &WriteOptions::default()).await {
            Ok(_) => {
                self.event(pod, "Normal", "Scheduled", "Binding", &format!("Successfully assigned {ns}/{name} to {node}")).await;
                true
            }
            Err(e) => {
                tracing::debug!(pod = %key(pod), "binding failed: {}", e.message);
                false
            }
        }
    }

    async fn unschedulable(&self, pod: &Pod, message: &str) {
        let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
        let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
        let result = self
            .registry
            .update_with(def("", "pods"), ns, name, &opts, |cur| {
                let mut next = cur.clone();
                let same = cur.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled")).cloned();
                let since = match same {
                    Some(c) if c["status"] == "False" => c["lastTransitionTime"].clone(),
                    _ => json!(meta::now_rfc3339()),
                };
                registry::set_condition(
                    &mut next,
                    json!({"type": "PodScheduled", "status": "False", "lastProbeTime": null, "lastTransitionTime": since, "reason": "Unschedulable", "message": message}),
                );
                Ok(next)
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(pod = %key(pod), "writing PodScheduled: {}", e.message);
        }
        self.event(pod, "Warning", "FailedScheduling", "Scheduling", message).await;
    }

    /// An `events.k8s.io/v1` Event about `pod`, as kube-scheduler records them.
    async fn event(&self, pod: &Pod, ty: &str, reason: &str, action: &str, note: &str) {
        let (ns, name) = (pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""));
        let event_time = meta::format_micro_time(time::OffsetDateTime::now_utc());
        let ev = json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": format!("{name}.{:016x}", fastrand::u64(..)), "namespace": ns},
            "eventTime": event_time,
            "reportingController": NAME,
            "reportingInstance": self.instance,
            "action": action,
            "reason": reason,
            "regarding": {"kind": "Pod", "namespace": ns, "name": name, "uid": pod.metadata.uid.clone().unwrap_or_default(), "apiVersion": "v1", "resourceVersion": pod.metadata.resource_version.clone().unwrap_or_default()},
            "note": note,
            "type": ty,
        });
        let events = resources::find("events.k8s.io", "v1", "events").expect("built-in resource");
        if let Err(e) = self.registry.create(events, ns, ev, &WriteOptions::default()).await {
            tracing::debug!(pod = %key(pod), "recording event {reason}: {}", e.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(json: Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn messages_are_upstreams() {
        assert_eq!(failure_message(0, &[]), "no nodes available to schedule pods");
        let cpu = Misfit { reasons: vec!["Insufficient cpu".into()], preemption_may_help: true };
        assert_eq!(
            failure_message(1, &[cpu]),
            "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
        let taint = Misfit { reasons: vec!["node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into()], preemption_may_help: false };
        assert_eq!(
            failure_message(1, &[taint]),
            "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        );
    }

    #[test]
    fn filters_in_order() {
        let n = NodeInfo::of(node(
            json!({"metadata": {"name": "n", "labels": {"disk": "ssd"}}, "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"}}}),
        ));
        let pod = |spec: Value| -> Pod { serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap() };
        let plain = pod(json!({"containers": [{"name": "c"}]}));
        let d = Demand::of(&plain);
        assert_eq!(filter(&plain, &d, &n, &Usage::default()).unwrap_err().reasons, ["node(s) had untolerated taint {k: v}"]);
        let tolerant =
            pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3"}}}], "tolerations": [{"key": "k", "operator": "Exists"}]}));
        let d = Demand::of(&tolerant);
        assert_eq!(&*d.requests, &[("cpu".into(), 3.0)]);
        assert_eq!(filter(&tolerant, &d, &n, &Usage::default()).unwrap_err().reasons, ["Insufficient cpu"]);
        let picky = pod(json!({"containers": [{"name": "c"}], "tolerations": [{"operator": "Exists"}], "nodeSelector": {"disk": "hdd"}}));
        assert_eq!(filter(&picky, &Demand::of(&picky), &n, &Usage::default()).unwrap_err().reasons, ["node(s) didn't match Pod's node affinity/selector"]);
        let fits = pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}], "tolerations": [{"operator": "Exists"}]}));
        assert!(filter(&fits, &Demand::of(&fits), &n, &Usage::default()).is_ok());
    }
}
