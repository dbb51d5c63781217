//! Conversions between API versions that share storage. `events.k8s.io/v1` Events are
//! stored as `core/v1` Events (as upstream stores both in one place), with upstream's
//! field mapping; `autoscaling/v1` HorizontalPodAutoscalers are stored as
//! `autoscaling/v2` ones, what v1 cannot say kept in annotations as upstream does.

use serde_json::{json, Map, Value};

use crate::resources::ResourceDef;

/// The other version a resource's objects are stored as.
enum StoredAs {
    /// events.k8s.io/v1 Events: core/v1 Events.
    CoreEvent,
    /// autoscaling/v1 HorizontalPodAutoscalers: autoscaling/v2 ones.
    HpaV2,
}

fn stored_as(def: &ResourceDef) -> Option<StoredAs> {
    match (def.group, def.version, def.plural) {
        ("events.k8s.io", _, "events") => Some(StoredAs::CoreEvent),
        ("autoscaling", "v1", "horizontalpodautoscalers") => Some(StoredAs::HpaV2),
        _ => None,
    }
}

/// Whether objects of `def` are stored in another version's form.
pub fn converts(def: &ResourceDef) -> bool {
    stored_as(def).is_some()
}

/// A stored object as `def` shows it (`None`: shown as stored).
pub fn from_storage(def: &ResourceDef, stored: &Value) -> Option<Value> {
    Some(match stored_as(def)? {
        StoredAs::CoreEvent => core_event_to_events_v1(stored),
        StoredAs::HpaV2 => hpa_v2_to_v1(stored),
    })
}

/// An object of `def` as it is stored (`None`: stored as it is).
pub fn to_storage(def: &ResourceDef, obj: &Value) -> Option<Value> {
    Some(match stored_as(def)? {
        StoredAs::CoreEvent => events_v1_to_core(obj),
        StoredAs::HpaV2 => hpa_v1_to_v2(obj),
    })
}

/// Annotations where a v1 HorizontalPodAutoscaler keeps what only v2 can say.
const HPA_METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const HPA_CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";
const HPA_CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const HPA_BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";

fn is_cpu_utilization(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("Resource")
        && m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu")
        && m.pointer("/resource/target/type").and_then(Value::as_str) == Some("Utilization")
}

/// Moves `from` (a v2 field) into annotation `key` as JSON, if present.
fn to_annotation(annotations: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value.filter(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
        annotations.insert(key.into(), Value::String(v.to_string()));
    }
}

/// Takes annotation `key` (JSON) back out.
fn from_annotation(annotations: &mut Map<String, Value>, key: &str) -> Option<Value> {
    annotations.remove(key).and_then(|v| v.as_str().and_then(|s| serde_json::from_str(s).ok()))
}

/// The annotations of `obj` as a map to edit (created empty if absent); `None` if `obj`
/// or its metadata is not an object.
fn annotations_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let meta = obj.as_object_mut()?.entry("metadata").or_insert_with(|| json!({})).as_object_mut()?;
    let a = meta.entry("annotations").or_insert_with(|| json!({}));
    if !a.is_object() {
        *a = json!({});
    }
    a.as_object_mut()
}

/// Drops an annotations map left empty by a conversion.
fn drop_empty_annotations(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if meta.get("annotations").and_then(Value::as_object).is_some_and(Map::is_empty) {
            meta.remove("annotations");
        }
    }
}

/// A stored autoscaling/v2 HorizontalPodAutoscaler as autoscaling/v1 shows it.
pub fn hpa_v2_to_v1(v2: &Value) -> Value {
    let mut out = v2.clone();
    out["apiVersion"] = json!("autoscaling/v1");
    let metrics = v2.pointer("/spec/metrics").and_then(Value::as_array).cloned().unwrap_or_default();
    let (cpu, others): (Vec<Value>, Vec<Value>) = metrics.into_iter().partition(is_cpu_utilization);
    let current = v2.pointer("/status/currentMetrics").and_then(Value::as_array).cloned().unwrap_or_default();
    let (cur_cpu, cur_others): (Vec<Value>, Vec<Value>) = current
        .into_iter()
        .partition(|m| m.get("type").and_then(Value::as_str) == Some("Resource") && m.pointer("/resource/name").and_then(Value::as_str) == Some("cpu"));
    if let Some(a) = annotations_mut(&mut out) {
        to_annotation(a, HPA_METRICS, Some(Value::Array(others)));
        to_annotation(a, HPA_CURRENT_METRICS, Some(Value::Array(cur_others)));
        to_annotation(a, HPA_CONDITIONS, v2.pointer("/status/conditions").cloned());
        to_annotation(a, HPA_BEHAVIOR, v2.pointer("/spec/behavior").cloned());
    }
    drop_empty_annotations(&mut out);
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("metrics");
        spec.remove("behavior");
        if let Some(u) = cpu.first().and_then(|m| m.pointer("/resource/target/averageUtilization")).cloned() {
            spec.insert("targetCPUUtilizationPercentage".into(), u);
        }
    }
    if let Some(status) = out.get_mut("status").and_then(Value::as_object_mut) {
        status.remove("currentMetrics");
        status.remove("conditions");
        if let Some(u) = cur_cpu.first().and_then(|m| m.pointer("/resource/current/averageUtilization")).cloned() {
            status.insert("currentCPUUtilizationPercentage".into(), u);
        }
    }
    out
}

/// An autoscaling/v1 HorizontalPodAutoscaler as it is stored (autoscaling/v2).
pub fn hpa_v1_to_v2(v1: &Value) -> Value {
    let mut out = v1.clone();
    out["apiVersion"] = json!("autoscaling/v2");
    let (mut metrics, current, conditions, behavior) = match annotations_mut(&mut out) {
        Some(a) => (
            from_annotation(a, HPA_METRICS).and_then(|v| v.as_array().cloned()).unwrap_or_default(),
            from_annotation(a, HPA_CURRENT_METRICS).and_then(|v| v.as_array().cloned()).unwrap_or_default(),
            from_annotation(a, HPA_CONDITIONS),
            from_annotation(a, HPA_BEHAVIOR),
        ),
        None => (Vec::new(), Vec::new(), None, None),
    };
    drop_empty_annotations(&mut out);
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(u) = spec.remove("targetCPUUtilizationPercentage") {
            metrics.insert(0, json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": u}}}));
        }
        if !metrics.is_empty() {
            spec.insert("metrics".into(), Value::Array(metrics));
        }
        if let Some(b) = behavior {
            spec.insert("behavior".into(), b);
        }
    }
    if let Some(status) = out.get_mut("status").and_then(Value::as_object_mut) {
        let mut current = current;
        if let Some(u) = status.remove("currentCPUUtilizationPercentage") {
            current.insert(0, json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": u}}}));
        }
        if !current.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(c) = conditions {
            status.insert("conditions".into(), c);
        }
    }
    out
}

/// (events.k8s.io/v1 field, core/v1 field).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Fields with the same name in both versions.
const EVENT_SAME: &[&str] = &["metadata", "eventTime", "series", "reportingInstance", "action", "reason", "related", "type"];

fn rename(obj: &Value, pairs: impl Iterator<Item = (&'static str, &'static str)>, api_version: &str) -> Value {
    let Some(m) = obj.as_object() else { return obj.clone() };
    let mut out = Map::new();
    out.insert("kind".into(), Value::String("Event".into()));
    out.insert("apiVersion".into(), Value::String(api_version.into()));
    for k in EVENT_SAME {
        if let Some(v) = m.get(*k) {
            out.insert((*k).into(), v.clone());
        }
    }
    for (from, to) in pairs {
        if let Some(v) = m.get(from) {
            out.insert(to.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// A stored core/v1 Event as events.k8s.io/v1 shows it.
pub fn core_event_to_events_v1(core: &Value) -> Value {
    rename(core, EVENT_FIELDS.iter().map(|(e, c)| (*c, *e)), "events.k8s.io/v1")
}

/// An events.k8s.io/v1 Event as it is stored (core/v1).
pub fn events_v1_to_core(ev: &Value) -> Value {
    rename(ev, EVENT_FIELDS.iter().copied(), "v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "web"},
            "note": "pulled", "reason": "Pulled", "type": "Normal", "reportingController": "kubelet", "reportingInstance": "n1", "action": "Pull",
            "eventTime": "2026-01-01T00:00:00.000000Z"});
        let core = events_v1_to_core(&ev);
        assert_eq!(core["involvedObject"]["name"], "web");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core_event_to_events_v1(&core), ev);
    }

    #[test]
    fn hpa_v1_and_v2_round_trip() {
        let v2 = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "minReplicas": 1, "maxReplicas": 3,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                                 {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "1Gi"}}}]},
            "status": {"desiredReplicas": 0, "currentMetrics": null}});
        let v1 = hpa_v2_to_v1(&v2);
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 80);
        assert!(v1["spec"].get("metrics").is_none());
        assert!(v1["metadata"]["annotations"][HPA_METRICS].as_str().unwrap().contains("memory"));
        let back = hpa_v1_to_v2(&v1);
        assert_eq!(back["spec"], v2["spec"]);
        assert!(back["metadata"].get("annotations").is_none());
        let plain = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h"},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "d"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}});
        assert_eq!(hpa_v1_to_v2(&plain)["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 50);
    }
}
