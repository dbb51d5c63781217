//! The node lifecycle controller (kube-controller-manager's, taint-based): a node whose
//! `Ready` condition is `False` is tainted `node.kubernetes.io/not-ready`; one whose
//! Lease has not been renewed for 40 seconds (`--node-monitor-grace-period`) gets its
//! conditions set to `Unknown` ("Kubelet stopped posting node status.") and is tainted
//! `node.kubernetes.io/unreachable`; a Ready node loses both. Taints come as `NoSchedule`
//! and `NoExecute` pairs, as upstream's; [`crate::taint_eviction`] evicts the pods of
//! NoExecute-tainted nodes once their tolerations run out. A node whose memory, disk or
//! PID pressure condition is `True` is tainted `NoSchedule` with its pressure key.

use std::sync::Arc;
use std::time::Duration;

use nanokube_api::{meta, resources};
use nanokube_apiserver::registry::{ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

/// How long a node may go without renewing its Lease.
pub const GRACE_PERIOD: Duration = Duration::from_secs(40);
/// How often nodes are looked at (upstream's `--node-monitor-period`).
const PERIOD: Duration = Duration::from_secs(5);

const NOT_READY: &str = "node.kubernetes.io/not-ready";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

fn def(group: &str, plural: &str) -> &'static resources::ResourceDef {
    resources::find(group, "v1", plural).expect("built-in resource")
}

/// Look at every node now and every [`PERIOD`].
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                if let Err(e) = sync(&registry).await {
                    tracing::debug!("node lifecycle: {e}");
                }
            }
        }
    }
}

fn ready_status(node: &Value) -> String {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
        .to_string()
}

/// One pass over the nodes.
pub async fn sync(registry: &Registry) -> Result<(), String> {
    let nodes = registry.list(def("", "nodes"), None, &ListOptions::default()).map_err(|e| e.message)?;
    for n in &nodes.items {
        let node = n.to_value();
        let name = meta::name(&node).to_string();
        let lease = registry.get(def("coordination.k8s.io", "leases"), "kube-node-lease", &name).ok();
        let renewed = lease.as_ref().and_then(|l| l.value().pointer("/spec/renewTime").and_then(Value::as_str).and_then(meta::parse_time));
        let stale = match renewed {
            Some(t) => (time::OffsetDateTime::now_utc() - t).whole_seconds() > GRACE_PERIOD.as_secs() as i64,
            // No lease yet: judged by the node's age instead.
            None => meta::field(&node, "creationTimestamp")
                .and_then(Value::as_str)
                .and_then(meta::parse_time)
                .is_some_and(|c| (time::OffsetDateTime::now_utc() - c).whole_seconds() > GRACE_PERIOD.as_secs() as i64),
        };
        if stale && ready_status(&node) != "Unknown" {
            mark_unknown(registry, &name).await?;
        }
        let status = if stale { "Unknown".to_string() } else { ready_status(&node) };
        let want: &[&str] = match status.as_str() {
            "True" => &[],
            "False" => &[NOT_READY],
            _ => &[UNREACHABLE],
        };
        let have: Vec<String> = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .map(|ts| ts.iter().filter_map(|t| t["key"].as_str()).filter(|k| *k == NOT_READY || *k == UNREACHABLE).map(String::from).collect())
            .unwrap_or_default();
        let mut have_keys = have.clone();
        have_keys.sort();
        have_keys.dedup();
        if have_keys.iter().map(String::as_str).collect::<Vec<_>>() != want || have.len() != want.len() * 2 {
            set_taints(registry, &name, want).await?;
        }
        sync_pressure_taints(registry, &node, &name, stale).await?;
    }
    Ok(())
}

/// Conditions that taint a node `NoSchedule` while `True` (upstream's
/// `nodeConditionToTaintKeyStatusMap`, TaintNodesByCondition).
const PRESSURE_TAINTS: [(&str, &str); 3] = [
    ("MemoryPressure", "node.kubernetes.io/memory-pressure"),
    ("DiskPressure", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "node.kubernetes.io/pid-pressure"),
];

/// The NoSchedule taints of the pressure conditions: added while a condition is `True`,
/// removed when it is not (left as they are while the node's status is stale).
async fn sync_pressure_taints(registry: &Registry, node: &Value, name: &str, stale: bool) -> Result<(), String> {
    if stale {
        return Ok(());
    }
    let conditions = node.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let want: Vec<&str> =
        PRESSURE_TAINTS.iter().filter(|(c, _)| conditions.iter().any(|x| x["type"] == *c && x["status"] == "True")).map(|(_, k)| *k).collect();
    let is_pressure = |t: &Value| PRESSURE_TAINTS.iter().any(|(_, k)| t["key"] == *k);
    let have: Vec<String> = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .map(|ts| ts.iter().filter(|t| is_pressure(t)).filter_map(|t| t["key"].as_str()).map(String::from).collect())
        .unwrap_or_default();
    let mut have_sorted = have.clone();
    have_sorted.sort();
    let mut want_sorted: Vec<String> = want.iter().map(|k| k.to_string()).collect();
    want_sorted.sort();
    if have_sorted == want_sorted {
        return Ok(());
    }
    replace_taints(registry, name, is_pressure, want.iter().map(|k| json!({"key": k, "effect": "NoSchedule"})).collect()).await
}

async fn set_taints(registry: &Registry, name: &str, keys: &[&str]) -> Result<(), String> {
    let mut added = Vec::new();
    for k in keys {
        added.push(json!({"key": k, "effect": "NoSchedule"}));
        added.push(json!({"key": k, "effect": "NoExecute", "timeAdded": meta::now_rfc3339()}));
    }
    replace_taints(registry, name, |t| t["key"] == NOT_READY || t["key"] == UNREACHABLE, added).await
}

/// Remove the node's taints `ours` says are this controller's, then add `added`.
async fn replace_taints(registry: &Registry, name: &str, ours: impl Fn(&Value) -> bool, added: Vec<Value>) -> Result<(), String> {
    registry
        .update_with(def("", "nodes"), "", name, &WriteOptions::default(), |cur| {
            let mut next = cur.clone();
            let mut taints: Vec<Value> = cur.pointer("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default();
            taints.retain(|t| !ours(t));
            taints.extend(added.iter().cloned());
            if taints.is_empty() {
                if let Some(spec) = next["spec"].as_object_mut() {
                    spec.remove("taints");
                }
            } else {
                next["spec"]["taints"] = json!(taints);
            }
            Ok(next)
        })
        .await
        .map(|_| ())
        .map_err(|e| e.message)
}

async fn mark_unknown(registry: &Registry, name: &str) -> Result<(), String> {
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    registry
        .update_with(def("", "nodes"), "", name, &opts, |cur| {
            let mut next = cur.clone();
            let now = meta::now_rfc3339();
            if let Some(cs) = next.pointer_mut("/status/conditions").and_then(Value::as_array_mut) {
                for c in cs.iter_mut() {
                    c["status"] = json!("Unknown");
                    c["reason"] = json!("NodeStatusUnknown");
                    c["message"] = json!("Kubelet stopped posting node status.");
                    c["lastTransitionTime"] = json!(now);
                }
            }
            Ok(next)
        })
        .await
        .map(|_| ())
        .map_err(|e| e.message)
}
