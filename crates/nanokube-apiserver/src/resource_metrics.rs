//! `metrics.k8s.io/v1beta1` (NodeMetrics, PodMetrics), what metrics-server serves through
//! the aggregation layer in a real cluster (and k3s bundles), served here from the node
//! agents' cgroup figures so `kubectl top` and HPAs work with nothing to install.
//!
//! Objects are built as metrics-server builds them: the node's or pod's name, namespace,
//! labels and creation time, a `timestamp` and `window` of the samples, and usage as
//! quantities (`cpu` in nanocores, `memory` in KiB). A pod whose containers do not all
//! have figures yet is left out of lists and not found by get, as metrics-server does.

use std::time::{Duration, SystemTime};

use nanokube_api::selector::LabelSelector;
use nanokube_api::{ApiError, ResourceDef};
use serde_json::{json, Value};

use crate::registry::{ListOptions, Registry};

/// One cgroup's figures.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// CPU, averaged over the window, in nanocores.
    pub cpu_nanocores: u64,
    /// The memory working set, in bytes.
    pub memory_bytes: u64,
    /// When the later sample was taken.
    pub timestamp: SystemTime,
    /// The time between the two samples.
    pub window: Duration,
}

/// A node that reports what its pods and itself use.
pub trait NodeResourceMetrics: crate::node_link::NamedNode {
    /// The node's own usage, once known.
    fn node_usage(&self) -> Option<Usage>;
    /// Each running container's usage in `pod` (as stored), once all are known.
    fn pod_usage(&self, pod: &Value) -> Option<Vec<(String, Usage)>>;
}

/// The nodes whose figures this API server serves.
pub type MetricsNodes = crate::node_link::LocalNode<dyn NodeResourceMetrics>;

/// The group served.
pub const GROUP: &str = "metrics.k8s.io";

fn quantities(u: &Usage) -> Value {
    json!({"cpu": format!("{}n", u.cpu_nanocores), "memory": format!("{}Ki", u.memory_bytes / 1024)})
}

fn rfc3339(t: SystemTime) -> String {
    nanokube_api::meta::format_time(time::OffsetDateTime::from(t))
}

fn window(d: Duration) -> String {
    // As metav1.Duration prints: "5.001s".
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{}s", ms / 1000, format!("{:03}", ms % 1000).trim_end_matches('0'))
    }
}

fn object_meta(obj: &Value, namespaced: bool) -> Value {
    let m = &obj["metadata"];
    let mut meta = json!({"name": m["name"], "creationTimestamp": m["creationTimestamp"]});
    if namespaced {
        meta["namespace"] = m["namespace"].clone();
    }
    if let Some(l) = m.get("labels") {
        meta["labels"] = l.clone();
    }
    meta
}

/// The NodeMetrics of `node`, if its agent has figures.
fn node_metrics(nodes: &MetricsNodes, node: &Value) -> Option<Value> {
    let agent = nodes.reach_node(node.pointer("/metadata/name").and_then(Value::as_str)?).ok()?;
    let u = agent.node_usage()?;
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": object_meta(node, false),
        "timestamp": rfc3339(u.timestamp), "window": window(u.window),
        "usage": quantities(&u),
    }))
}

/// The PodMetrics of `pod`, if its node has figures for all its running containers.
fn pod_metrics(nodes: &MetricsNodes, pod: &Value) -> Option<Value> {
    let agent = nodes.reach(pod).ok()?;
    let usage = agent.pod_usage(pod)?;
    let newest = usage.iter().map(|(_, u)| u.timestamp).max()?;
    let window_of = usage.iter().map(|(_, u)| u.window).max().unwrap_or_default();
    let containers: Vec<Value> = usage.iter().map(|(name, u)| json!({"name": name, "usage": quantities(u)})).collect();
    Some(json!({
        "kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": object_meta(pod, true),
        "timestamp": rfc3339(newest), "window": window(window_of),
        "containers": containers,
    }))
}

/// The stored kind a metrics resource reports on (`nodes` or `pods` of core/v1).
fn source(def: &ResourceDef) -> Result<&'static ResourceDef, ApiError> {
    nanokube_api::resources::find("", "v1", def.plural).ok_or_else(|| ApiError::not_found(def.plural, GROUP, ""))
}

/// `get` of one NodeMetrics or PodMetrics.
pub fn get(registry: &Registry, nodes: &MetricsNodes, def: &ResourceDef, namespace: &str, name: &str) -> Result<Value, ApiError> {
    let obj = registry.get(source(def)?, namespace, name).map_err(|_| ApiError::not_found(def.plural, GROUP, name))?;
    let found = if def.namespaced { pod_metrics(nodes, obj.value()) } else { node_metrics(nodes, obj.value()) };
    found.ok_or_else(|| ApiError::not_found(def.plural, GROUP, name))
}

/// `list` of NodeMetrics or PodMetrics (a namespace's, or all), by label selector.
pub fn list(registry: &Registry, nodes: &MetricsNodes, def: &ResourceDef, namespace: Option<&str>, labels: LabelSelector) -> Result<Value, ApiError> {
    let opts = ListOptions { labels, ..Default::default() };
    let objs = registry.list(source(def)?, namespace, &opts)?;
    let items: Vec<Value> =
        objs.items.iter().filter_map(|o| if def.namespaced { pod_metrics(nodes, o.value()) } else { node_metrics(nodes, o.value()) }).collect();
    Ok(json!({
        "kind": if def.namespaced { "PodMetricsList" } else { "NodeMetricsList" },
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": items,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_print_as_go_durations() {
        assert_eq!(window(Duration::from_secs(5)), "5s");
        assert_eq!(window(Duration::from_millis(5001)), "5.001s");
        assert_eq!(window(Duration::from_millis(5100)), "5.1s");
    }

    #[test]
    fn quantities_are_metrics_servers() {
        let u = Usage { cpu_nanocores: 1_234_567, memory_bytes: 10 << 20, timestamp: SystemTime::UNIX_EPOCH, window: Duration::from_secs(5) };
        assert_eq!(quantities(&u), json!({"cpu": "1234567n", "memory": "10240Ki"}));
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1500)), "1970-01-01T00:00:01Z");
    }
}
