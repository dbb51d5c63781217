//! kube-controller-manager's taint eviction controller: a pod on a node with a
//! `NoExecute` taint it does not tolerate is deleted; one that tolerates it for
//! `tolerationSeconds` is deleted that long after the taint was added (its `timeAdded`).
//! Before the delete the pod gets the `DisruptionTarget` condition (reason
//! `DeletionByTaintManager`) and a `TaintManagerEviction` event, as upstream. With the
//! node lifecycle controller's `unreachable`/`not-ready` taints and the 300 s tolerations
//! admission adds, pods leave a node that stopped reporting after five minutes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Taint, Toleration};
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::{def, pods};

/// How often nodes' taints are looked at.
const PERIOD: Duration = Duration::from_secs(1);

/// When the pod must go because of `taints` (NoExecute ones of its node, each with when
/// it was added): `Some(0)` now, `Some(n)` in `n` seconds, `None` never.
pub fn eviction_delay(pod: &Value, taints: &[(Value, time::OffsetDateTime)]) -> Option<i64> {
    let tolerations: Vec<Toleration> = pod.pointer("/spec/tolerations").and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default();
    let mut delay: Option<i64> = None;
    for (taint, added) in taints.iter().filter(|(t, _)| t.get("effect").and_then(Value::as_str) == Some("NoExecute")) {
        let Ok(typed) = serde_json::from_value::<Taint>(taint.clone()) else { continue };
        let matching: Vec<&Toleration> = tolerations.iter().filter(|t| crate::scheduler::tolerates(std::slice::from_ref(*t), &typed)).collect();
        if matching.is_empty() {
            return Some(0);
        }
        // The shortest bound among the tolerations that match; unbounded if any is.
        let bound = matching.iter().map(|t| t.toleration_seconds).try_fold(i64::MAX, |acc, s| s.map(|s| acc.min(s.max(0))));
        if let Some(b) = bound {
            let waited = (time::OffsetDateTime::now_utc() - *added).whole_seconds();
            let left = (b - waited).max(0);
            delay = Some(delay.map_or(left, |d| d.min(left)));
        }
    }
    delay
}

/// When each NoExecute taint (node, key, value) was first seen, for taints written
/// without `timeAdded` (as `kubectl taint` writes them).
type FirstSeen = HashMap<(String, String, String), time::OffsetDateTime>;

/// Look at every tainted node every [`PERIOD`] until `shutdown`.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PERIOD);
    let mut seen = FirstSeen::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                if let Err(e) = sync(&registry, &mut seen).await {
                    tracing::debug!("taint eviction: {}", e.message);
                }
            }
        }
    }
}

/// One pass: evict what is due.
async fn sync(registry: &Registry, seen: &mut FirstSeen) -> Result<(), ApiError> {
    let nodes = registry.list(def("", "nodes"), None, &ListOptions::default())?;
    let now = time::OffsetDateTime::now_utc();
    let mut tainted: Vec<(String, Vec<(Value, time::OffsetDateTime)>)> = Vec::new();
    let mut current = FirstSeen::new();
    for n in &nodes.items {
        let name = meta::name(n.value()).to_string();
        let mut taints = Vec::new();
        for t in n.value().pointer("/spec/taints").and_then(Value::as_array).into_iter().flatten().filter(|t| t["effect"] == "NoExecute") {
            let id = (name.clone(), t["key"].as_str().unwrap_or("").to_string(), t["value"].as_str().unwrap_or("").to_string());
            let added = t.get("timeAdded").and_then(Value::as_str).and_then(meta::parse_time).unwrap_or_else(|| *seen.get(&id).unwrap_or(&now));
            current.insert(id, added);
            taints.push((t.clone(), added));
        }
        if !taints.is_empty() {
            tainted.push((name, taints));
        }
    }
    *seen = current;
    if tainted.is_empty() {
        return Ok(());
    }
    let all = registry.list(pods(), None, &ListOptions::default())?;
    for p in &all.items {
        let pod = p.value();
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
        let Some((_, taints)) = tainted.iter().find(|(n, _)| n == node) else { continue };
        if meta::is_deleting(pod) || matches!(pod.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed")) {
            continue;
        }
        if eviction_delay(pod, taints) == Some(0) {
            evict(registry, pod).await;
        }
    }
    Ok(())
}

async fn evict(registry: &Registry, pod: &Value) {
    let (ns, name) = (meta::namespace(pod), meta::name(pod));
    let now = meta::now_rfc3339();
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    let _ = registry
        .update_with(pods(), ns, name, &opts, |cur| {
            let mut next = cur.clone();
            let conditions = next["status"].as_object_mut().map(|s| s.entry("conditions").or_insert_with(|| json!([])));
            if let Some(list) = conditions.and_then(Value::as_array_mut) {
                list.retain(|c| c["type"] != "DisruptionTarget");
                list.push(json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null, "lastTransitionTime": now,
                                  "reason": "DeletionByTaintManager", "message": "Taint manager: deleting due to NoExecute taint"}));
            }
            Ok(next)
        })
        .await;
    crate::events::record(registry, "taint-eviction-controller", pod, "Normal", "TaintManagerEviction", &format!("Marking for deletion Pod {ns}/{name}")).await;
    let opts = DeleteOptions { precondition_uid: Some(meta::uid(pod).to_string()), ..Default::default() };
    if let Err(e) = registry.delete(pods(), ns, name, &opts).await {
        tracing::debug!(pod = %name, "taint eviction: {}", e.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untolerated_taints_evict_now_and_bounded_tolerations_later() {
        let taint = (json!({"key": "k", "value": "v", "effect": "NoExecute"}), time::OffsetDateTime::now_utc());
        let pod = |tolerations: Value| json!({"spec": {"tolerations": tolerations}});
        assert_eq!(eviction_delay(&pod(json!([])), std::slice::from_ref(&taint)), Some(0));
        assert_eq!(eviction_delay(&pod(json!([{"key": "k", "operator": "Exists"}])), std::slice::from_ref(&taint)), None);
        let d = eviction_delay(&pod(json!([{"key": "k", "operator": "Equal", "value": "v", "tolerationSeconds": 30}])), std::slice::from_ref(&taint));
        assert!(d.is_some_and(|d| (29..=30).contains(&d)), "{d:?}");
        assert_eq!(eviction_delay(&pod(json!([{"operator": "Exists", "effect": "NoSchedule"}])), &[taint]), Some(0));
    }
}
