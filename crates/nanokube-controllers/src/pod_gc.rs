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

/// The string value of the first `"key":"…"` in compact JSON, without decoding it (a
/// pass over every pod every 20 s should not decode them all; pods' `nodeName`,
/// `phase` and `deletionTimestamp` occur once each in the served form).
fn raw_str<'a>(json: &'a [u8], key: &str) -> Option<&'a str> {
    let needle = format!("\"{key}\":\"");
    let at = memchr::memmem::find(json, needle.as_bytes())? + needle.len();
    let len = memchr::memchr(b'"', &json[at..])?;
    std::str::from_utf8(&json[at..at + len]).ok()
}

/// One pass.
pub async fn sync(registry: &Registry, missing: &mut HashMap<String, Instant>, threshold: usize) -> Result<(), ApiError> {
    let nodes: std::collections::HashSet<String> =
        registry.list(def("", "nodes"), None, &ListOptions::default())?.items.iter().map(|n| meta::name(n.value()).to_string()).collect();
    let all = registry.list(pods(), None, &ListOptions::default())?;
    missing.retain(|n, _| !nodes.contains(n));
    let force = DeleteOptions { grace_period: Some(0), ..Default::default() };
    let mut terminated: Vec<(String, String, String)> = Vec::new();
    for p in &all.items {
        let json = p.json();
        let node = raw_str(&json, "nodeName").unwrap_or("");
        let deleting = raw_str(&json, "deletionTimestamp").is_some();
        if !deleting && matches!(raw_str(&json, "phase"), Some("Succeeded" | "Failed")) {
            let created = raw_str(&json, "creationTimestamp").unwrap_or("").to_string();
            terminated.push((created, meta::namespace(p.value()).to_string(), meta::name(p.value()).to_string()));
        }
        if node.is_empty() {
            if deleting {
                let pod = p.value();
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
        let pod = p.value();
        mark_orphan(registry, pod).await;
        let _ = registry.delete(pods(), meta::namespace(pod), meta::name(pod), &force).await;
    }
    if terminated.len() > threshold {
        terminated.sort();
        let extra = terminated.len() - threshold;
        for (_, ns, name) in terminated.into_iter().take(extra) {
            let _ = registry.delete(pods(), &ns, &name, &force).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_compact_json_without_decoding() {
        let json = br#"{"metadata":{"name":"p","annotations":{"note":"{\"nodeName\":\"fake\"}"}},"spec":{"nodeName":"n1"},"status":{"phase":"Failed"}}"#;
        assert_eq!(raw_str(json, "nodeName"), Some("n1"));
        assert_eq!(raw_str(json, "phase"), Some("Failed"));
        assert_eq!(raw_str(json, "deletionTimestamp"), None);
    }
}
