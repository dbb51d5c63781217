//! kube-controller-manager's pod garbage collector, every 20 s:
//!
//! - pods bound to a node that has not existed for 40 s (upstream's quarantine) are
//!   marked `Failed` with the `DisruptionTarget` condition (reason `DeletionByPodGC`) and
//!   deleted at once;
//! - pods being deleted that were never scheduled are deleted at once (no kubelet will);
//! - terminated pods beyond `--terminated-pod-gc-threshold` (12,500) are deleted, oldest
//!   first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::{def, pods};

/// How often pods are looked at (upstream's `gcCheckPeriod`).
const PERIOD: Duration = Duration::from_secs(20);
/// How long a node must be gone before its pods are (upstream's `quarantineTime`).
const QUARANTINE: Duration = Duration::from_secs(40);
/// Terminated pods kept (upstream's default `--terminated-pod-gc-threshold`).
pub const TERMINATED_THRESHOLD: usize = 12_500;

fn is_terminated(pod: &Value) -> bool {
    matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

/// Run until `shutdown`.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PERIOD);
    // Nodes seen missing, and since when.
    let mut missing: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                if let Err(e) = sync(&registry, &mut missing, TERMINATED_THRESHOLD).await {
                    tracing::debug!("pod gc: {}", e.message);
                }
            }
        }
    }
}

/// One pass.
pub async fn sync(registry: &Registry, missing: &mut HashMap<String, Instant>, threshold: usize) -> Result<(), ApiError> {
    let nodes: std::collections::HashSet<String> =
        registry.list(def("", "nodes"), None, &ListOptions::default())?.items.iter().map(|n| meta::name(n.value()).to_string()).collect();
    let all: Vec<Value> = registry.list(pods(), None, &ListOptions::default())?.items.iter().map(|p| p.value().clone()).collect();
    missing.retain(|n, _| !nodes.contains(n));
    let force = DeleteOptions { grace_period: Some(0), ..Default::default() };
    for pod in &all {
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
        if node.is_empty() {
            if meta::is_deleting(pod) {
                let _ = registry.delete(pods(), meta::namespace(pod), meta::name(pod), &force).await;
            }
            continue;
        }
        if nodes.contains(node) {
            continue;
        }
        let since = *missing.entry(node.to_string()).or_insert_with(Instant::now);
        if since.elapsed() < QUARANTINE {
            continue;
        }
        mark_orphan(registry, pod).await;
        let _ = registry.delete(pods(), meta::namespace(pod), meta::name(pod), &force).await;
    }
    let mut terminated: Vec<&Value> = all.iter().filter(|p| is_terminated(p) && !meta::is_deleting(p)).collect();
    if terminated.len() > threshold {
        terminated.sort_by_key(|p| p.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("").to_string());
        let extra = terminated.len() - threshold;
        for p in terminated.into_iter().take(extra) {
            let _ = registry.delete(pods(), meta::namespace(p), meta::name(p), &force).await;
        }
    }
    Ok(())
}

async fn mark_orphan(registry: &Registry, pod: &Value) {
    let now = meta::now_rfc3339();
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    let _ = registry
        .update_with(pods(), meta::namespace(pod), meta::name(pod), &opts, |cur| {
            let mut next = cur.clone();
            if !is_terminated(cur) {
                next["status"]["phase"] = json!("Failed");
            }
            let conditions = next["status"].as_object_mut().map(|s| s.entry("conditions").or_insert_with(|| json!([])));
            if let Some(list) = conditions.and_then(Value::as_array_mut) {
                list.retain(|c| c["type"] != "DisruptionTarget");
                list.push(json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null, "lastTransitionTime": now,
                                  "reason": "DeletionByPodGC", "message": "PodGC: node no longer exists"}));
            }
            Ok(next)
        })
        .await;
}
