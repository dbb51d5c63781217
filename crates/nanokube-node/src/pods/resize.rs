//! In-place pod resize on the node, as kubelet's allocation manager and
//! `UpdateContainerResources` carry it out (Kubernetes 1.33).
//!
//! Each container has three sets of resources: the **desired** ones in the pod's spec
//! (changed through `pods/resize`), the **allocated** ones the node admitted (kept in the
//! pod's directory as `allocated.json`, so a restarted node keeps its word; reported as
//! `allocatedResources`), and the **applied** ones its cgroup has (reported as
//! `resources`). A resize is admitted when the pod's new requests fit the node's
//! allocatable beside every other pod's allocation; otherwise the pod gets the
//! `PodResizePending` condition, `Infeasible` (it could never fit) or `Deferred` (it
//! could once others leave), in kubelet's words. An admitted resize is applied with
//! `runc update`, or by restarting the container when its `resizePolicy` says
//! `RestartContainer` for a resource that changed; until then the pod has
//! `PodResizeInProgress`.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nanokube_api::expressions::parse_quantity;
use nanokube_api::quota::format_quantity;
use nanokube_runtime::bundle::Limits;
use serde_json::{json, Map, Value};

/// The file in the pod's directory that keeps the allocation.
const ALLOCATION_FILE: &str = "allocated.json";

/// The resources the node admitted, by container name.
#[derive(Debug, Default, Clone)]
pub struct Allocation(pub BTreeMap<String, ResourceRequirements>);

impl Allocation {
    /// What a previous run admitted for the pod in `dir` (none when it admitted nothing).
    pub fn load(dir: &Path) -> Allocation {
        let parsed = std::fs::read(dir.join(ALLOCATION_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok());
        Allocation(parsed.unwrap_or_default())
    }

    /// Keep the allocation in `dir` (written whole, then renamed, so a crash leaves the
    /// old or the new one).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec(&self.0).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let tmp = dir.join(format!("{ALLOCATION_FILE}.tmp"));
        std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, dir.join(ALLOCATION_FILE)).map_err(|e| e.to_string())
    }
}

fn quantity(map: Option<&BTreeMap<String, Quantity>>, name: &str) -> Option<f64> {
    map.and_then(|m| m.get(name)).and_then(|q| parse_quantity(&q.0))
}

/// The cgroup limits for `resources`: the memory limit, CPU shares from the CPU request
/// (or limit), the CPU quota from the CPU limit, as kubelet converts them.
pub fn limits_of(resources: Option<&ResourceRequirements>) -> Limits {
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let cpu_limit = quantity(limits, "cpu");
    let cpu_request = quantity(requests, "cpu").or(cpu_limit);
    Limits {
        memory: quantity(limits, "memory").map(|b| b as i64),
        // kubelet's MilliCPUToShares: 1024 per core, at least 2.
        cpu_shares: cpu_request.map(|c| (((c * 1000.0).round() as u64) * 1024 / 1000).max(2)),
        // kubelet's MilliCPUToQuota over a 100 ms period, at least 1 ms.
        cpu_quota: cpu_limit.map(|c| (((c * 1000.0).round() as i64) * 100).max(1000)),
    }
}

/// Whether two resource requirements ask for the same quantities.
pub fn same(a: Option<&ResourceRequirements>, b: Option<&ResourceRequirements>) -> bool {
    let flat = |r: Option<&ResourceRequirements>| -> [Vec<(String, Option<f64>)>; 2] {
        let parsed = |m: Option<&BTreeMap<String, Quantity>>| m.into_iter().flatten().map(|(k, q)| (k.clone(), parse_quantity(&q.0))).collect();
        [parsed(r.and_then(|r| r.limits.as_ref())), parsed(r.and_then(|r| r.requests.as_ref()))]
    };
    flat(a) == flat(b)
}

/// The containers a resize reaches: the containers and the sidecars (init containers
/// that restart always).
pub fn resizable(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always")).chain(&spec.containers)
}

/// The pod's cpu (cores) and memory (bytes) requests with each container's resources
/// from `resources_of`, as upstream's `GetResourceRequest`: containers and sidecars
/// summed, each other init container (with the sidecars before it) a floor, plus the
/// overhead.
pub fn pod_requests<'a>(spec: &'a PodSpec, resources_of: impl Fn(&'a Container) -> Option<&'a ResourceRequirements>) -> (f64, f64) {
    let req = |c: &'a Container, name: &str| quantity(resources_of(c).and_then(|r| r.requests.as_ref()), name).unwrap_or(0.0);
    let mut total = [0.0f64; 2];
    let mut floor = [0.0f64; 2];
    let mut sidecars = [0.0f64; 2];
    for (i, name) in ["cpu", "memory"].iter().enumerate() {
        for c in spec.init_containers.iter().flatten() {
            if c.restart_policy.as_deref() == Some("Always") {
                sidecars[i] += req(c, name);
            } else {
                floor[i] = floor[i].max(req(c, name) + sidecars[i]);
            }
        }
        total[i] = spec.containers.iter().map(|c| req(c, name)).sum::<f64>() + sidecars[i];
        total[i] = total[i].max(floor[i]) + quantity(spec.overhead.as_ref(), name).unwrap_or(0.0);
    }
    (total[0], total[1])
}

/// Whether a pod asking `wanted` (cpu cores, memory bytes) fits a node with
/// `allocatable` where the other pods hold `others`: `Err((reason, message))` in
/// kubelet's words when it does not.
pub fn admit(wanted: (f64, f64), others: (f64, f64), allocatable: &Value) -> Result<(), (String, String)> {
    let alloc = |name: &str| allocatable.get(name).and_then(Value::as_str).and_then(parse_quantity);
    let (Some(cpu), Some(memory)) = (alloc("cpu"), alloc("memory")) else {
        // The node has not said what it has yet: look again at the next sync.
        return Err(("Deferred".into(), "the node's allocatable resources are not known yet".into()));
    };
    let milli = |cores: f64| (cores * 1000.0).round() as i64;
    let (want_cpu, want_mem) = (milli(wanted.0), wanted.1.round() as i64);
    if want_mem > memory as i64 {
        return Err(("Infeasible".into(), format!("Node didn't have enough capacity: memory, requested: {want_mem}, capacity: {}", memory as i64)));
    }
    if want_cpu > milli(cpu) {
        return Err(("Infeasible".into(), format!("Node didn't have enough capacity: cpu, requested: {want_cpu}, capacity: {}", milli(cpu))));
    }
    if want_cpu + milli(others.0) > milli(cpu) {
        return Err((
            "Deferred".into(),
            format!("Node didn't have enough resource: cpu, requested: {want_cpu}, used: {}, capacity: {}", milli(others.0), milli(cpu)),
        ));
    }
    if want_mem + others.1.round() as i64 > memory as i64 {
        return Err((
            "Deferred".into(),
            format!("Node didn't have enough resource: memory, requested: {want_mem}, used: {}, capacity: {}", others.1.round() as i64, memory as i64),
        ));
    }
    Ok(())
}

/// Which resources differ between two requirements (`cpu`, `memory`).
pub fn changed_resources(a: Option<&ResourceRequirements>, b: Option<&ResourceRequirements>) -> Vec<&'static str> {
    ["cpu", "memory"]
        .into_iter()
        .filter(|name| {
            let pick =
                |r: Option<&ResourceRequirements>| (quantity(r.and_then(|r| r.requests.as_ref()), name), quantity(r.and_then(|r| r.limits.as_ref()), name));
            pick(a) != pick(b)
        })
        .collect()
}

/// Whether `container`'s resize policy restarts it for a change of `resource`.
pub fn restarts_for(container: &Container, resource: &str) -> bool {
    container.resize_policy.iter().flatten().any(|p| p.resource_name == resource && p.restart_policy == "RestartContainer")
}

/// A running container's `resources` in its status: the limits and requests its cgroup
/// was given, as the runtime reports them (cpu from the quota and shares, memory in
/// bytes), other resources as allocated.
pub fn status_resources(applied: &ResourceRequirements) -> Value {
    let cg = limits_of(Some(applied));
    let mut out = Map::new();
    if let Some(limits) = applied.limits.as_ref().filter(|l| !l.is_empty()) {
        let mut m = Map::new();
        for (k, q) in limits {
            m.insert(k.clone(), json!(q.0));
        }
        if let Some(quota) = cg.cpu_quota.filter(|_| limits.contains_key("cpu")) {
            m.insert("cpu".into(), json!(format_quantity("cpu", (quota * 1000 / 100_000) as f64 / 1000.0)));
        }
        if let Some(bytes) = cg.memory {
            m.insert("memory".into(), json!(format_quantity("memory", bytes as f64)));
        }
        out.insert("limits".into(), Value::Object(m));
    }
    if let Some(requests) = applied.requests.as_ref().filter(|r| !r.is_empty()) {
        let mut m = Map::new();
        for (k, q) in requests {
            m.insert(k.clone(), json!(q.0));
        }
        if let Some(shares) = cg.cpu_shares.filter(|_| requests.contains_key("cpu")) {
            // kubelet's sharesToMilliCPU rounds up.
            let milli = (shares * 1000).div_ceil(1024);
            m.insert("cpu".into(), json!(format_quantity("cpu", milli as f64 / 1000.0)));
        }
        out.insert("requests".into(), Value::Object(m));
    }
    Value::Object(out)
}

/// kubelet's `ResizeCompleted` event message: every container's resources as the node
/// now holds them (`{"initContainers":[...],"containers":[{"name":...,"resources":...}]}`,
/// Go's JSON of the allocated pod's containers).
pub fn completed_message(spec: &PodSpec, allocation: &Allocation) -> String {
    let summary = |containers: &[Container]| -> Vec<String> {
        containers
            .iter()
            .map(|c| {
                let resources = allocation.0.get(&c.name).or(c.resources.as_ref()).cloned().unwrap_or_default();
                // Go writes the struct's fields in their order (limits, requests, claims)
                // and each map's keys sorted.
                let quantities = |m: &BTreeMap<String, Quantity>| json!(m.iter().map(|(k, q)| (k.clone(), json!(q.0))).collect::<Map<String, Value>>());
                let mut parts = Vec::new();
                if let Some(m) = resources.limits.as_ref().filter(|m| !m.is_empty()) {
                    parts.push(format!("\"limits\":{}", quantities(m)));
                }
                if let Some(m) = resources.requests.as_ref().filter(|m| !m.is_empty()) {
                    parts.push(format!("\"requests\":{}", quantities(m)));
                }
                if let Some(claims) = resources.claims.as_ref().filter(|c| !c.is_empty()) {
                    parts.push(format!("\"claims\":{}", json!(claims)));
                }
                format!("{{\"name\":{},\"resources\":{{{}}}}}", json!(c.name), parts.join(","))
            })
            .collect()
    };
    let mut parts = Vec::new();
    let init = summary(spec.init_containers.as_deref().unwrap_or_default());
    if !init.is_empty() {
        parts.push(format!("\"initContainers\":[{}]", init.join(",")));
    }
    let regular = summary(&spec.containers);
    if !regular.is_empty() {
        parts.push(format!("\"containers\":[{}]", regular.join(",")));
    }
    format!("Pod resize completed: {{{}}}", parts.join(","))
}

/// A pod condition kubelet owns for resizes.
pub fn condition(ty: &str, reason: Option<&str>, message: Option<&str>) -> Value {
    let mut c = json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": null});
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        c["reason"] = json!(r);
    }
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        c["message"] = json!(m);
    }
    c
}

/// The condition types kubelet owns for resizes: dropped from the pod when they no
/// longer hold.
pub const CONDITIONS: [&str; 2] = ["PodResizePending", "PodResizeInProgress"];

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(cpu: &str, mem: &str) -> ResourceRequirements {
        ResourceRequirements {
            requests: Some([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(mem.into()))].into()),
            limits: Some([("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(mem.into()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn cgroup_values_as_kubelet_converts_them() {
        let l = limits_of(Some(&reqs("100m", "128Mi")));
        assert_eq!((l.cpu_shares, l.cpu_quota, l.memory), (Some(102), Some(10_000), Some(134_217_728)));
        let s = status_resources(&reqs("100m", "128Mi"));
        assert_eq!(s, json!({"limits": {"cpu": "100m", "memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}}));
        let s = status_resources(&reqs("0.5", "1Gi"));
        assert_eq!(s["requests"]["cpu"], "500m");
        assert_eq!(status_resources(&ResourceRequirements::default()), json!({}));
    }

    #[test]
    fn the_completed_event_lists_resources_as_go_writes_them() {
        let spec: PodSpec = serde_json::from_value(json!({
            "initContainers": [{"name": "side", "restartPolicy": "Always"}],
            "containers": [{"name": "main", "resources": {"requests": {"memory": "64Mi", "cpu": "100m"}}}]
        }))
        .unwrap();
        let mut allocation = Allocation::default();
        allocation.0.insert("main".into(), reqs("200m", "128Mi"));
        assert_eq!(
            completed_message(&spec, &allocation),
            r#"Pod resize completed: {"initContainers":[{"name":"side","resources":{}}],"containers":[{"name":"main","resources":{"limits":{"cpu":"200m","memory":"128Mi"},"requests":{"cpu":"200m","memory":"128Mi"}}}]}"#
        );
    }

    #[test]
    fn admission_in_kubelets_words() {
        let node = json!({"cpu": "2", "memory": "4Gi"});
        assert!(admit((1.0, 1e9), (0.5, 1e9), &node).is_ok());
        assert_eq!(
            admit((3.0, 1e9), (0.0, 0.0), &node),
            Err(("Infeasible".into(), "Node didn't have enough capacity: cpu, requested: 3000, capacity: 2000".into()))
        );
        assert_eq!(
            admit((1.5, 1e9), (1.0, 0.0), &node),
            Err(("Deferred".into(), "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000".into()))
        );
        assert_eq!(
            admit((0.1, 5e9), (0.0, 0.0), &node).unwrap_err().1,
            "Node didn't have enough capacity: memory, requested: 5000000000, capacity: 4294967296"
        );
    }
}
