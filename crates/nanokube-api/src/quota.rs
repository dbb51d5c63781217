//! What ResourceQuotas count and LimitRanges impose, as kube-apiserver's `ResourceQuota`
//! and `LimitRanger` admission plugins and kube-controller-manager's quota controller
//! read objects: the usage of one object, quantities in their canonical text, the checks.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::expressions::parse_quantity;

/// Usage by resource name (`pods`, `requests.cpu`, `count/secrets`, …).
pub type Usage = BTreeMap<String, f64>;

/// Resources whose quantities are bytes (written with binary suffixes).
fn is_bytes(resource: &str) -> bool {
    resource.ends_with("memory") || resource.ends_with("storage")
}

/// A quantity as Kubernetes writes it: whole numbers plain, fractions of a core in
/// milli-units, bytes with the largest binary suffix that divides them.
pub fn format_quantity(resource: &str, value: f64) -> String {
    if is_bytes(resource) && value >= 1024.0 && value.fract() == 0.0 {
        let mut v = value;
        let mut suffix = "";
        for s in ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"] {
            if v % 1024.0 != 0.0 {
                break;
            }
            v /= 1024.0;
            suffix = s;
        }
        return format!("{}{suffix}", v as i64);
    }
    if value.fract() == 0.0 {
        return format!("{}", value as i64);
    }
    format!("{}m", (value * 1000.0).round() as i64)
}

/// Whether a pod counts for quota (not Succeeded or Failed).
pub fn pod_counts(pod: &Value) -> bool {
    !matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

/// A pod's requests or limits (`kind`): the larger of its containers' sum and any one
/// init container's, plus the pod's overhead (upstream's `PodRequests`).
fn pod_resources(pod: &Value, kind: &str) -> BTreeMap<String, f64> {
    let of = |c: &Value| -> BTreeMap<String, f64> {
        c.pointer(&format!("/resources/{kind}"))
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, q)| q.as_str().and_then(parse_quantity).map(|v| (k.clone(), v))).collect())
            .unwrap_or_default()
    };
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    for c in pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
        for (k, v) in of(c) {
            *total.entry(k).or_default() += v;
        }
    }
    for c in pod.pointer("/spec/initContainers").and_then(Value::as_array).into_iter().flatten() {
        for (k, v) in of(c) {
            let e = total.entry(k).or_default();
            *e = e.max(v);
        }
    }
    if let Some(o) = pod.pointer("/spec/overhead").and_then(Value::as_object) {
        for (k, q) in o {
            if let Some(v) = q.as_str().and_then(parse_quantity) {
                *total.entry(k.clone()).or_default() += v;
            }
        }
    }
    total
}

/// The usage `obj` of resource `plural` in `group` adds to its namespace.
pub fn usage_of(group: &str, plural: &str, obj: &Value) -> Usage {
    let mut u = Usage::new();
    let count_key = if group.is_empty() { format!("count/{plural}") } else { format!("count/{plural}.{group}") };
    u.insert(count_key, 1.0);
    match (group, plural) {
        ("", "pods") => {
            if !pod_counts(obj) {
                return Usage::new();
            }
            u.insert("pods".into(), 1.0);
            for (k, v) in pod_resources(obj, "requests") {
                u.insert(format!("requests.{k}"), v);
                if k == "cpu" || k == "memory" || k == "ephemeral-storage" {
                    u.insert(k, v);
                }
            }
            for (k, v) in pod_resources(obj, "limits") {
                u.insert(format!("limits.{k}"), v);
            }
        }
        ("", "services") => {
            u.insert("services".into(), 1.0);
            let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
            let ports = obj.pointer("/spec/ports").and_then(Value::as_array).map(Vec::len).unwrap_or(0) as f64;
            if ty == "NodePort" || ty == "LoadBalancer" {
                u.insert("services.nodeports".into(), ports);
            }
            if ty == "LoadBalancer" {
                u.insert("services.loadbalancers".into(), 1.0);
            }
        }
        ("", "persistentvolumeclaims") => {
            u.insert("persistentvolumeclaims".into(), 1.0);
            let storage = obj.pointer("/spec/resources/requests/storage").and_then(Value::as_str).and_then(parse_quantity).unwrap_or(0.0);
            u.insert("requests.storage".into(), storage);
            if let Some(class) = obj.pointer("/spec/storageClassName").and_then(Value::as_str) {
                u.insert(format!("{class}.storageclass.storage.k8s.io/requests.storage"), storage);
                u.insert(format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"), 1.0);
            }
        }
        ("", "configmaps") | ("", "secrets") | ("", "replicationcontrollers") | ("", "resourcequotas") => {
            u.insert(plural.into(), 1.0);
        }
        _ => {}
    }
    u
}

/// One scope a quota is limited to: a name of `spec.scopes` (operator `Exists`) or one
/// `spec.scopeSelector.matchExpressions` entry (upstream's
/// `ScopedResourceSelectorRequirement`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `Terminating`, `NotTerminating`, `BestEffort`, `NotBestEffort`, `PriorityClass`
    /// or `CrossNamespacePodAffinity`.
    pub name: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values of `In` and `NotIn`.
    pub values: Vec<String>,
}

/// A quota's scopes: `spec.scopes` and `spec.scopeSelector` together (all must match).
pub fn scopes_of(quota: &Value) -> Vec<Scope> {
    let strings =
        |v: Option<&Value>| -> Vec<String> { v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(String::from).collect() };
    let mut out: Vec<Scope> =
        strings(quota.pointer("/spec/scopes")).into_iter().map(|name| Scope { name, operator: "Exists".into(), values: Vec::new() }).collect();
    for e in quota.pointer("/spec/scopeSelector/matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        out.push(Scope {
            name: e.get("scopeName").and_then(Value::as_str).unwrap_or("").to_string(),
            operator: e.get("operator").and_then(Value::as_str).unwrap_or("").to_string(),
            values: strings(e.get("values")),
        });
    }
    out
}

/// Whether a pod uses pod (anti-)affinity across namespaces (a term naming namespaces or
/// with a namespace selector).
fn cross_namespace_affinity(pod: &Value) -> bool {
    ["podAffinity", "podAntiAffinity"].iter().any(|kind| {
        let Some(a) = pod.pointer(&format!("/spec/affinity/{kind}")) else { return false };
        let required = a.get("requiredDuringSchedulingIgnoredDuringExecution").and_then(Value::as_array).into_iter().flatten();
        let preferred =
            a.get("preferredDuringSchedulingIgnoredDuringExecution").and_then(Value::as_array).into_iter().flatten().filter_map(|w| w.get("podAffinityTerm"));
        required
            .chain(preferred)
            .any(|t| t.get("namespaces").and_then(Value::as_array).is_some_and(|n| !n.is_empty()) || t.get("namespaceSelector").is_some_and(|s| !s.is_null()))
    })
}

/// Whether `pod` is within one scope (upstream's `podMatchesScopeFunc`): the four QoS and
/// deadline scopes by what the pod is; `PriorityClass` as a selector on the pod's
/// `priorityClassName` (`Exists`: it has one); `CrossNamespacePodAffinity` by its terms.
fn scope_matches(scope: &Scope, pod: &Value) -> bool {
    match scope.name.as_str() {
        "Terminating" => pod.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_i64).is_some_and(|d| d >= 0),
        "NotTerminating" => pod.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_i64).is_none_or(|d| d < 0),
        "BestEffort" => pod_resources(pod, "requests").is_empty() && pod_resources(pod, "limits").is_empty(),
        "NotBestEffort" => !(pod_resources(pod, "requests").is_empty() && pod_resources(pod, "limits").is_empty()),
        "PriorityClass" => {
            let class = pod.pointer("/spec/priorityClassName").and_then(Value::as_str).unwrap_or("");
            match scope.operator.as_str() {
                "Exists" => !class.is_empty(),
                "In" => scope.values.iter().any(|v| v == class),
                "NotIn" => !scope.values.iter().any(|v| v == class),
                // The selector's key is always present (its value may be empty).
                _ => false,
            }
        }
        "CrossNamespacePodAffinity" => cross_namespace_affinity(pod),
        _ => true,
    }
}

/// Whether a quota with `scopes` counts `obj` of `group`/`plural`: any object when it
/// has none, else pods within every scope.
pub fn quota_counts(scopes: &[Scope], group: &str, plural: &str, obj: &Value) -> bool {
    scopes.is_empty() || (group.is_empty() && plural == "pods" && scopes.iter().all(|s| scope_matches(s, obj)))
}

/// `key=value` pairs, sorted, comma-separated (upstream's `prettyPrint`).
pub fn pretty(usage: &Usage) -> String {
    usage.iter().map(|(k, v)| format!("{k}={}", format_quantity(k, *v))).collect::<Vec<_>>().join(",")
}

/// Usage as a JSON map of canonical quantities.
pub fn to_json(usage: &Usage) -> Value {
    Value::Object(usage.iter().map(|(k, v)| (k.clone(), json!(format_quantity(k, *v)))).collect())
}

/// A JSON map of quantities as usage.
pub fn from_json(v: Option<&Value>) -> Usage {
    v.and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, q)| q.as_str().and_then(parse_quantity).map(|x| (k.clone(), x))).collect())
        .unwrap_or_default()
}

/// What LimitRanger did to a pod: the annotation it writes, or the reasons it refuses.
pub enum LimitOutcome {
    /// Admitted; `Some` when defaults were set (the `kubernetes.io/limit-ranger` text).
    Admitted(Option<String>),
    /// Refused, with upstream's messages.
    Refused(Vec<String>),
}

/// Apply the `Container` and `Pod` limits of `ranges` (LimitRange objects) to `pod`:
/// default requests and limits filled in, then min, max and ratio checked.
pub fn apply_limit_ranges(pod: &mut Value, ranges: &[Value]) -> LimitOutcome {
    let items: Vec<Value> = ranges.iter().flat_map(|r| r.pointer("/spec/limits").and_then(Value::as_array).cloned().unwrap_or_default()).collect();
    let mut set_notes: Vec<String> = Vec::new();
    for item in items.iter().filter(|i| i.get("type").and_then(Value::as_str) == Some("Container")) {
        let default_limits = item.get("default").and_then(Value::as_object).cloned().unwrap_or_default();
        // An item without defaultRequest defaults it to its default limit (API defaulting).
        let default_requests = item.get("defaultRequest").and_then(Value::as_object).cloned().unwrap_or_else(|| default_limits.clone());
        for list in ["initContainers", "containers"] {
            let Some(cs) = pod.pointer_mut(&format!("/spec/{list}")).and_then(Value::as_array_mut) else { continue };
            for c in cs {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                let mut set_requests = Vec::new();
                let mut set_limits = Vec::new();
                let resources = c.as_object_mut().map(|m| m.entry("resources").or_insert_with(|| json!({})));
                let Some(resources) = resources.and_then(Value::as_object_mut) else { continue };
                for (k, v) in &default_limits {
                    let limits = resources.entry("limits").or_insert_with(|| json!({}));
                    if limits.get(k).is_none() {
                        limits[k] = v.clone();
                        set_limits.push(k.clone());
                    }
                }
                for (k, v) in &default_requests {
                    let requests = resources.entry("requests").or_insert_with(|| json!({}));
                    if requests.get(k).is_none() {
                        requests[k] = v.clone();
                        set_requests.push(k.clone());
                    }
                }
                if !set_requests.is_empty() {
                    set_notes.push(format!(
                        "{} request for {} {name}",
                        set_requests.join(", "),
                        if list == "initContainers" { "init container" } else { "container" }
                    ));
                }
                if !set_limits.is_empty() {
                    set_notes.push(format!(
                        "{} limit for {} {name}",
                        set_limits.join(", "),
                        if list == "initContainers" { "init container" } else { "container" }
                    ));
                }
            }
        }
    }
    let mut errors = Vec::new();
    let q = |v: &Value| v.as_str().and_then(parse_quantity);
    let check = |kind: &str, requests: &BTreeMap<String, f64>, limits: &BTreeMap<String, f64>, item: &Value, errors: &mut Vec<String>| {
        for (k, min) in item.get("min").and_then(Value::as_object).into_iter().flatten() {
            let Some(min_v) = q(min) else { continue };
            match requests.get(k) {
                None => errors.push(format!("minimum {k} usage per {kind} is {}.  No request is specified", min.as_str().unwrap_or(""))),
                Some(r) if *r < min_v => {
                    errors.push(format!("minimum {k} usage per {kind} is {}, but request is {}", min.as_str().unwrap_or(""), format_quantity(k, *r)))
                }
                _ => {}
            }
        }
        for (k, max) in item.get("max").and_then(Value::as_object).into_iter().flatten() {
            let Some(max_v) = q(max) else { continue };
            match limits.get(k) {
                None => errors.push(format!("maximum {k} usage per {kind} is {}.  No limit is specified", max.as_str().unwrap_or(""))),
                Some(l) if *l > max_v => {
                    errors.push(format!("maximum {k} usage per {kind} is {}, but limit is {}", max.as_str().unwrap_or(""), format_quantity(k, *l)))
                }
                _ => {}
            }
        }
        for (k, ratio) in item.get("maxLimitRequestRatio").and_then(Value::as_object).into_iter().flatten() {
            let (Some(max_ratio), Some(l), Some(r)) = (q(ratio), limits.get(k), requests.get(k)) else { continue };
            if *r > 0.0 && l / r > max_ratio {
                errors.push(format!("{k} max limit to request ratio per {kind} is {}, but provided ratio is {:.6}", ratio.as_str().unwrap_or(""), l / r));
            }
        }
    };
    let quantities = |c: &Value, kind: &str| -> BTreeMap<String, f64> {
        c.pointer(&format!("/resources/{kind}"))
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| q(v).map(|x| (k.clone(), x))).collect())
            .unwrap_or_default()
    };
    for item in &items {
        match item.get("type").and_then(Value::as_str) {
            Some("Container") => {
                for list in ["initContainers", "containers"] {
                    for c in pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten() {
                        check("Container", &quantities(c, "requests"), &quantities(c, "limits"), item, &mut errors);
                    }
                }
            }
            Some("Pod") => check("Pod", &pod_resources(pod, "requests"), &pod_resources(pod, "limits"), item, &mut errors),
            _ => {}
        }
    }
    if !errors.is_empty() {
        return LimitOutcome::Refused(errors);
    }
    LimitOutcome::Admitted((!set_notes.is_empty()).then(|| format!("LimitRanger plugin set: {}", set_notes.join("; "))))
}

/// LimitRanger's `PersistentVolumeClaim` limits (upstream's
/// PersistentVolumeClaimValidateLimitFunc): each `min` and `max` against the claim's
/// requests; the reasons a claim is refused, worded as upstream.
pub fn check_claim_limits(claim: &Value, ranges: &[Value]) -> Vec<String> {
    let requests: BTreeMap<String, (f64, String)> = claim
        .pointer("/spec/resources/requests")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().and_then(|s| parse_quantity(s).map(|x| (k.clone(), (x, s.to_string()))))).collect())
        .unwrap_or_default();
    let mut errors = Vec::new();
    let items = ranges.iter().flat_map(|r| r.pointer("/spec/limits").and_then(Value::as_array).cloned().unwrap_or_default());
    for item in items.filter(|i| i.get("type").and_then(Value::as_str) == Some("PersistentVolumeClaim")) {
        for (bound, word) in [("min", "minimum"), ("max", "maximum")] {
            for (k, v) in item.get(bound).and_then(Value::as_object).into_iter().flatten() {
                let (Some(text), Some(limit)) = (v.as_str(), v.as_str().and_then(parse_quantity)) else { continue };
                match requests.get(k) {
                    None => errors.push(format!("{word} {k} usage per PersistentVolumeClaim is {text}.  No request is specified")),
                    Some((r, given)) if (bound == "min" && *r < limit) || (bound == "max" && *r > limit) => {
                        errors.push(format!("{word} {k} usage per PersistentVolumeClaim is {text}, but request is {given}"))
                    }
                    _ => {}
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_held_to_their_limit_ranges() {
        let ranges = [json!({"spec": {"limits": [{"type": "PersistentVolumeClaim", "min": {"storage": "1Gi"}, "max": {"storage": "2Gi"}}]}})];
        let claim = |size: &str| json!({"spec": {"resources": {"requests": {"storage": size}}}});
        assert!(check_claim_limits(&claim("1536Mi"), &ranges).is_empty());
        assert_eq!(check_claim_limits(&claim("5Gi"), &ranges), ["maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"]);
        assert_eq!(check_claim_limits(&claim("500Mi"), &ranges), ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]);
        assert_eq!(check_claim_limits(&json!({"spec": {}}), &ranges).len(), 2);
    }

    #[test]
    fn quantities_are_written_canonically() {
        assert_eq!(format_quantity("requests.cpu", 1.5), "1500m");
        assert_eq!(format_quantity("requests.cpu", 2.0), "2");
        assert_eq!(format_quantity("requests.memory", 1536.0 * 1024.0 * 1024.0), "1536Mi");
        assert_eq!(format_quantity("requests.memory", 2.0 * 1024.0 * 1024.0 * 1024.0), "2Gi");
        assert_eq!(format_quantity("pods", 3.0), "3");
    }

    #[test]
    fn a_pod_counts_its_containers_and_the_largest_init_container() {
        let pod = json!({"spec": {
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
            "containers": [{"resources": {"requests": {"cpu": "500m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}},
                           {"resources": {"requests": {"cpu": "500m"}}}]}});
        let u = usage_of("", "pods", &pod);
        assert_eq!(pretty(&u), "count/pods=1,cpu=2,limits.memory=128Mi,memory=64Mi,pods=1,requests.cpu=2,requests.memory=64Mi");
        assert!(usage_of("", "pods", &json!({"status": {"phase": "Succeeded"}})).is_empty());
    }

    #[test]
    fn limit_ranges_default_then_check() {
        let range = json!({"spec": {"limits": [{"type": "Container", "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "250m"}, "max": {"cpu": "1"}}]}});
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "main"}]}});
        let LimitOutcome::Admitted(Some(note)) = apply_limit_ranges(&mut pod, std::slice::from_ref(&range)) else { panic!() };
        assert_eq!(note, "LimitRanger plugin set: cpu request for container main; cpu limit for container main");
        assert_eq!(pod.pointer("/spec/containers/0/resources"), Some(&json!({"limits": {"cpu": "500m"}, "requests": {"cpu": "250m"}})));
        let mut big = json!({"spec": {"containers": [{"name": "main", "resources": {"limits": {"cpu": "2"}, "requests": {"cpu": "2"}}}]}});
        let LimitOutcome::Refused(errors) = apply_limit_ranges(&mut big, &[range]) else { panic!() };
        assert_eq!(errors, ["maximum cpu usage per Container is 1, but limit is 2"]);
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;
    use serde_json::json;

    fn scope(name: &str, operator: &str, values: &[&str]) -> Scope {
        Scope { name: name.into(), operator: operator.into(), values: values.iter().map(|v| v.to_string()).collect() }
    }

    #[test]
    fn scopes_select_pods_as_upstreams() {
        let classed = json!({"spec": {"priorityClassName": "high", "containers": [{"resources": {"requests": {"cpu": "1"}}}]}});
        let plain = json!({"spec": {"activeDeadlineSeconds": 0, "containers": [{}]}});
        let cross = json!({"spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "podAffinityTerm": {"namespaceSelector": {}, "topologyKey": "k"}}]}}, "containers": [{}]}});
        let counts = |scopes: &[Scope], pod: &Value| quota_counts(scopes, "", "pods", pod);
        assert!(counts(&[scope("PriorityClass", "In", &["high"])], &classed) && !counts(&[scope("PriorityClass", "In", &["high"])], &plain));
        assert!(counts(&[scope("PriorityClass", "NotIn", &["high"])], &plain) && !counts(&[scope("PriorityClass", "NotIn", &["high"])], &classed));
        assert!(counts(&[scope("PriorityClass", "Exists", &[])], &classed) && !counts(&[scope("PriorityClass", "Exists", &[])], &plain));
        assert!(!counts(&[scope("PriorityClass", "DoesNotExist", &[])], &plain));
        assert!(counts(&[scope("Terminating", "Exists", &[])], &plain) && counts(&[scope("NotTerminating", "Exists", &[])], &classed));
        assert!(counts(&[scope("BestEffort", "Exists", &[])], &plain) && counts(&[scope("NotBestEffort", "Exists", &[])], &classed));
        assert!(counts(&[scope("CrossNamespacePodAffinity", "Exists", &[])], &cross) && !counts(&[scope("CrossNamespacePodAffinity", "Exists", &[])], &plain));
        // All scopes must hold; scoped quotas count pods only.
        assert!(!counts(&[scope("PriorityClass", "Exists", &[]), scope("BestEffort", "Exists", &[])], &classed));
        assert!(!quota_counts(&[scope("BestEffort", "Exists", &[])], "", "services", &json!({})));
        let q = json!({"spec": {"scopes": ["BestEffort"], "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["a"]}]}}});
        assert_eq!(scopes_of(&q), vec![scope("BestEffort", "Exists", &[]), scope("PriorityClass", "In", &["a"])]);
    }
}
