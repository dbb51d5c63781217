//! In-place pod resize (`pods/resize`, on by default since Kubernetes 1.33): what the
//! subresource keeps of a write and what it refuses, as kube-apiserver's
//! `podResizeStrategy` and `ValidatePodResize`; and the pod's QoS class, which a resize
//! may not change (upstream's `GetPodQOS`).
//!
//! Only the containers' and sidecars' `resources` and `resizePolicy` are taken from a
//! resize; of those only cpu and memory may change, requests and limits may not be
//! removed, and a memory limit may only shrink (or appear) when the container restarts
//! for memory (`resizePolicy` `RestartContainer`). The node carries the change out.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::Cause;
use crate::expressions::parse_quantity;

/// The resources whose quantities decide the QoS class and may be resized.
const RESIZABLE: [&str; 2] = ["cpu", "memory"];

/// The pod's QoS class from its containers' cpu and memory (init containers included),
/// as upstream's `ComputePodQOS`: no requests or limits at all is `BestEffort`; limits
/// for both cpu and memory on every container, equal to the requests, is `Guaranteed`;
/// anything else `Burstable`.
pub fn compute_qos_class(pod: &Value) -> &'static str {
    let mut requests: BTreeMap<&str, f64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, f64> = BTreeMap::new();
    let mut guaranteed = true;
    for c in ["containers", "initContainers"].into_iter().flat_map(|l| containers(pod, l)) {
        for (kind, sum) in [("requests", &mut requests), ("limits", &mut limits)] {
            let mut found = Vec::new();
            for (name, q) in c.pointer(&format!("/resources/{kind}")).and_then(Value::as_object).into_iter().flatten() {
                let Some(v) = q.as_str().and_then(parse_quantity) else { continue };
                if !RESIZABLE.contains(&name.as_str()) || v == 0.0 {
                    continue;
                }
                found.push(name.as_str());
                *sum.entry(name.as_str()).or_default() += v;
            }
            if kind == "limits" && !RESIZABLE.iter().all(|r| found.contains(r)) {
                guaranteed = false;
            }
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed && requests.iter().all(|(k, v)| limits.get(k) == Some(v)) && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The QoS class a stored pod has: the one recorded at creation, else computed.
pub fn qos_class(pod: &Value) -> &'static str {
    match pod.pointer("/status/qosClass").and_then(Value::as_str) {
        Some("BestEffort") => "BestEffort",
        Some("Guaranteed") => "Guaranteed",
        Some("Burstable") => "Burstable",
        _ => compute_qos_class(pod),
    }
}

fn is_sidecar(c: &Value) -> bool {
    c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

fn name_of(c: &Value) -> Option<&str> {
    c.get("name").and_then(Value::as_str)
}

/// The pod a resize of `old` writes: `old` with each container's (and init container's)
/// `resources` and `resizePolicy` taken from `new`, everything else as it was, as
/// upstream's `dropNonResizeUpdates`. Containers added, removed, reordered or renamed
/// leave `new`'s spec whole, for [`validate`] to refuse.
pub fn merge(old: &Value, new: &Value) -> Value {
    let mut out = old.clone();
    let mut spec = old.get("spec").cloned().unwrap_or(Value::Null);
    for list in ["containers", "initContainers"] {
        let olds = containers(old, list).to_vec();
        let news = containers(new, list);
        if olds.len() != news.len() || olds.iter().zip(news).any(|(o, n)| name_of(o) != name_of(n)) {
            out["spec"] = new.get("spec").cloned().unwrap_or(Value::Null);
            return out;
        }
        let merged: Vec<Value> = olds
            .into_iter()
            .zip(news)
            .map(|(mut o, n)| {
                for field in ["resources", "resizePolicy"] {
                    match (o.as_object_mut(), n.get(field)) {
                        (Some(m), Some(v)) => {
                            m.insert(field.into(), v.clone());
                        }
                        (Some(m), None) => {
                            m.remove(field);
                        }
                        _ => {}
                    }
                }
                o
            })
            .collect();
        if let Some(m) = spec.as_object_mut() {
            if !merged.is_empty() {
                m.insert(list.into(), Value::Array(merged));
            }
        }
    }
    out["spec"] = spec;
    out
}

fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
    Cause { reason: "FieldValueForbidden".into(), message: format!("Forbidden: {detail}"), field: field.into() }
}

/// Whether two quantity maps hold the same quantities (`1Gi` equals `1073741824`).
fn same_quantities(a: Option<&Value>, b: Option<&Value>) -> bool {
    let map = |v: Option<&Value>| -> Vec<(String, Option<f64>, Value)> {
        v.and_then(Value::as_object).map(|m| m.iter().map(|(k, q)| (k.clone(), q.as_str().and_then(parse_quantity), q.clone())).collect()).unwrap_or_default()
    };
    let (a, b) = (map(a), map(b));
    a.len() == b.len() && a.iter().zip(&b).all(|((ka, va, ra), (kb, vb, rb))| ka == kb && if va.is_some() { va == vb } else { ra == rb })
}

/// `container` with cpu and memory of its requests and limits put back to `old`'s
/// (upstream's `dropCPUMemoryResourcesFromContainer`): what is left differs from `old`
/// only where something other than cpu or memory changed.
fn without_cpu_memory_changes(container: &Value, old: &Value) -> Value {
    let mut c = container.clone();
    let mut resources = Map::new();
    for kind in ["limits", "requests"] {
        let Some(old_list) = old.pointer(&format!("/resources/{kind}")).and_then(Value::as_object) else { continue };
        let mut list = container.pointer(&format!("/resources/{kind}")).and_then(Value::as_object).cloned().unwrap_or_default();
        for r in RESIZABLE {
            list.remove(r);
            if let Some(q) = old_list.get(r) {
                list.insert(r.into(), q.clone());
            }
        }
        resources.insert(kind.into(), Value::Object(list));
    }
    if let Some(m) = c.as_object_mut() {
        m.insert("resources".into(), Value::Object(resources));
    }
    c
}

/// Two containers equal but for how their quantities are written.
fn same_container(a: &Value, b: &Value) -> bool {
    let strip = |c: &Value| {
        let mut c = c.clone();
        if let Some(m) = c.as_object_mut() {
            m.remove("resources");
        }
        c
    };
    strip(a) == strip(b)
        && ["limits", "requests"].iter().all(|k| {
            let (x, y) = (a.pointer(&format!("/resources/{k}")), b.pointer(&format!("/resources/{k}")));
            let empty = |v: Option<&Value>| v.and_then(Value::as_object).is_none_or(Map::is_empty);
            (empty(x) && empty(y)) || same_quantities(x, y)
        })
}

/// upstream's `validateContainerResize`: requests and limits may not be removed, and a
/// memory limit may only shrink or appear when memory's resize policy restarts the
/// container.
fn validate_container(new: &Value, old: &Value, path: &str, causes: &mut Vec<Cause>) {
    let keys = |c: &Value, kind: &str| -> Vec<String> {
        c.pointer(&format!("/resources/{kind}")).and_then(Value::as_object).map(|m| m.keys().cloned().collect()).unwrap_or_default()
    };
    for kind in ["requests", "limits"] {
        let (n, o) = (keys(new, kind), keys(old, kind));
        if o.iter().any(|k| !n.contains(k)) {
            let what = if kind == "requests" { "resource requests cannot be removed" } else { "resource limits cannot be removed" };
            causes.push(forbidden(format!("{path}.{kind}"), what));
        }
    }
    let memory_policy = new
        .get("resizePolicy")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|p| p.get("resourceName").and_then(Value::as_str) == Some("memory"))
        .and_then(|p| p.get("restartPolicy").and_then(Value::as_str))
        .unwrap_or("");
    if memory_policy == "NotRequired" || memory_policy.is_empty() {
        let limit = |c: &Value| c.pointer("/resources/limits/memory").and_then(Value::as_str).and_then(parse_quantity);
        let field = format!("{path}.limits[memory]");
        match (limit(new), limit(old)) {
            (Some(n), Some(o)) if n < o => causes.push(forbidden(field, "memory limits cannot be decreased unless resizePolicy is RestartContainer")),
            (Some(_), None) => causes.push(forbidden(field, "memory limits cannot be added unless resizePolicy is RestartContainer")),
            _ => {}
        }
    }
}

/// The pod's running containers' statuses say whether its node reports the resources
/// it applied (a node that cannot resize leaves `resources` out).
fn node_supports_resize(old: &Value) -> bool {
    let statuses = old.pointer("/status/containerStatuses").and_then(Value::as_array);
    match statuses.into_iter().flatten().find(|s| s.pointer("/state/running").is_some()) {
        Some(s) => s.get("resources").is_some(),
        None => true,
    }
}

/// The list at `/spec/<list>` of `pod` (empty when absent).
fn containers<'a>(pod: &'a Value, list: &str) -> &'a [Value] {
    pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// What upstream's `ValidatePodResize` refuses of a resize from `old` to `new` (`new`
/// as [`merge`] made it). The pod as a whole is validated as on any update besides.
pub fn validate(old: &Value, new: &Value) -> Vec<Cause> {
    let pod_level =
        |p: &Value| ["requests", "limits"].iter().any(|k| p.pointer(&format!("/spec/resources/{k}")).and_then(Value::as_object).is_some_and(|m| !m.is_empty()));
    if pod_level(old) || pod_level(new) {
        return vec![forbidden("", "pods with pod-level resources cannot be resized")];
    }
    if old.pointer("/metadata/annotations/kubernetes.io~1config.mirror").is_some() {
        return vec![forbidden("", "static pods cannot be resized")];
    }
    if old.pointer("/spec/os/name").and_then(Value::as_str) == Some("windows") {
        return vec![forbidden("", "windows pods cannot be resized")];
    }
    let mut causes = Vec::new();
    let old_qos = qos_class(old);
    if old_qos != compute_qos_class(new) {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            message: format!("Invalid value: {:?}: Pod QOS Class may not change as a result of resizing", old_qos),
            field: "spec".into(),
        });
    }
    if !node_supports_resize(old) {
        causes.push(forbidden("spec", "Pod running on node without support for resize"));
    }

    let (old_init, new_init) = (containers(old, "initContainers"), containers(new, "initContainers"));
    let (old_main, new_main) = (containers(old, "containers"), containers(new, "containers"));
    if old_init.len() != new_init.len() || old_main.len() != new_main.len() {
        causes.push(forbidden("spec", "only cpu and memory resources are mutable"));
        return causes;
    }
    for (i, (o, n)) in old_init.iter().zip(new_init).enumerate() {
        if is_sidecar(o) {
            validate_container(n, o, &format!("spec.initContainers[{i}].resources"), &mut causes);
        }
    }
    for (i, (o, n)) in old_main.iter().zip(new_main).enumerate() {
        validate_container(n, o, &format!("spec.containers[{i}].resources"), &mut causes);
    }
    let mut other_changes = false;
    for (o, n) in old_main.iter().zip(new_main) {
        if !same_container(&without_cpu_memory_changes(n, o), o) {
            causes.push(forbidden("spec", "only cpu and memory resources are mutable"));
            other_changes = true;
        }
    }
    for (o, n) in old_init.iter().zip(new_init) {
        if is_sidecar(o) {
            if !same_container(&without_cpu_memory_changes(n, o), o) {
                causes.push(forbidden("spec", "only cpu and memory resources for sidecar containers are mutable"));
                other_changes = true;
            }
        } else if !same_container(n, o) {
            causes.push(forbidden("spec", "resources for non-sidecar init containers are immutable"));
            other_changes = true;
        }
    }
    if causes.is_empty() && !other_changes {
        let strip = |p: &Value| {
            let mut s = p.get("spec").cloned().unwrap_or(Value::Null);
            if let Some(m) = s.as_object_mut() {
                m.remove("containers");
                m.remove("initContainers");
            }
            s
        };
        if strip(old) != strip(new) {
            causes.push(forbidden("spec", "only cpu and memory resources are mutable"));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": containers}, "status": {"containerStatuses": [{"name": "c", "state": {"running": {}}, "resources": {}}]}})
    }

    #[test]
    fn qos_classes_as_upstream() {
        assert_eq!(compute_qos_class(&pod(json!([{"name": "c"}]))), "BestEffort");
        // ephemeral-storage alone does not make a pod Burstable.
        assert_eq!(compute_qos_class(&pod(json!([{"name": "c", "resources": {"limits": {"ephemeral-storage": "1Gi"}}}]))), "BestEffort");
        let g = json!([{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1073741824"}}}]);
        assert_eq!(compute_qos_class(&pod(g)), "Guaranteed");
        let b = json!([{"name": "c", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}]);
        assert_eq!(compute_qos_class(&pod(b)), "Burstable");
    }

    #[test]
    fn merge_keeps_only_resources_and_policy() {
        let old = pod(json!([{"name": "c", "image": "a", "resources": {"requests": {"cpu": "100m"}}}]));
        let mut new = pod(json!([{"name": "c", "image": "b", "resources": {"requests": {"cpu": "200m"}}}]));
        new["metadata"]["labels"] = json!({"x": "y"});
        let m = merge(&old, &new);
        assert_eq!(m.pointer("/spec/containers/0/image"), Some(&json!("a")));
        assert_eq!(m.pointer("/spec/containers/0/resources/requests/cpu"), Some(&json!("200m")));
        assert_eq!(m.pointer("/metadata/labels"), None);
        assert!(validate(&old, &m).is_empty());
    }

    #[test]
    fn refusals_in_upstreams_words() {
        let old = pod(json!([{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}}]));
        let msgs = |new: Value| validate(&old, &merge(&old, &pod(new))).into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>();
        assert_eq!(
            msgs(json!([{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "100Mi"}}}])),
            ["spec.containers[0].resources.limits[memory]: Forbidden: memory limits cannot be decreased unless resizePolicy is RestartContainer"]
        );
        let restart = json!([{"resourceName": "memory", "restartPolicy": "RestartContainer"}]);
        assert!(msgs(
            json!([{"name": "c", "resizePolicy": restart, "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "100Mi"}}}])
        )
        .iter()
        .all(|m| !m.contains("memory limits")));
        assert_eq!(
            msgs(json!([{"name": "c", "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "128Mi"}}}])),
            ["spec.containers[0].resources.requests: Forbidden: resource requests cannot be removed"]
        );
        assert_eq!(
            msgs(
                json!([{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "64Mi", "ephemeral-storage": "1Gi"}, "limits": {"memory": "128Mi"}}}])
            ),
            ["spec: Forbidden: only cpu and memory resources are mutable"]
        );
        let guaranteed = json!([{"name": "c", "resources": {"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}}]);
        assert_eq!(msgs(guaranteed), ["spec: Invalid value: \"Burstable\": Pod QOS Class may not change as a result of resizing"]);
        // A renamed container: every difference named, as upstream compares index by index.
        assert_eq!(
            msgs(json!([{"name": "d"}])),
            [
                "spec: Invalid value: \"Burstable\": Pod QOS Class may not change as a result of resizing",
                "spec.containers[0].resources.requests: Forbidden: resource requests cannot be removed",
                "spec.containers[0].resources.limits: Forbidden: resource limits cannot be removed",
                "spec: Forbidden: only cpu and memory resources are mutable"
            ]
        );
    }
}
