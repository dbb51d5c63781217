//! Events about pods as kubelet records them: core/v1 Events from `kubelet` on this
//! host, about a container (`fieldPath: spec.containers{c}`) or the pod; a repeat of the
//! same reason and message raises `count` and `lastTimestamp` of the one Event, as
//! client-go's recorder does.

use std::collections::HashMap;
use std::sync::Mutex;

use nanokube_api::{meta, resources};
use nanokube_apiserver::registry::{Registry, WriteOptions};
use serde_json::{json, Value};

/// (pod uid, field path, reason, message) → (the Event's name, its count).
type Seen = HashMap<(String, String, String, String), (String, i64)>;

/// Records events for one node.
pub struct Recorder {
    node: String,
    seen: Mutex<Seen>,
}

impl Recorder {
    /// A recorder for `node`.
    pub fn new(node: &str) -> Self {
        Recorder { node: node.to_string(), seen: Mutex::new(HashMap::new()) }
    }

    /// Record `reason`/`message` about `pod` (and its container at `field_path`, if any).
    pub async fn record(&self, registry: &Registry, pod: &Value, field_path: Option<&str>, ty: &str, reason: &str, message: &str) {
        let Some(events) = resources::find("", "v1", "events") else { return };
        let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
        let key = (uid.clone(), field_path.unwrap_or("").to_string(), reason.to_string(), message.to_string());
        let now = meta::now_rfc3339();
        let previous = self.seen.lock().ok().and_then(|s| s.get(&key).cloned());
        if let Some((event_name, count)) = previous {
            let r = registry
                .update_with(events, &ns, &event_name, &WriteOptions::default(), |cur| {
                    let mut next = cur.clone();
                    next["count"] = json!(count + 1);
                    next["lastTimestamp"] = json!(now);
                    Ok(next)
                })
                .await;
            if r.is_ok() {
                if let Ok(mut s) = self.seen.lock() {
                    s.insert(key, (event_name, count + 1));
                }
                return;
            }
        }
        let mut involved = json!({"kind": "Pod", "namespace": ns, "name": name, "uid": uid, "apiVersion": "v1",
            "resourceVersion": pod.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))});
        if let Some(f) = field_path {
            involved["fieldPath"] = json!(f);
        }
        let event_name = format!("{name}.{:016x}", fastrand::u64(..));
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason, "message": message,
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": ty,
            "eventTime": null, "reportingComponent": "kubelet", "reportingInstance": self.node,
        });
        match registry.create(events, &ns, ev, &WriteOptions::default()).await {
            Ok(_) => {
                if let Ok(mut s) = self.seen.lock() {
                    s.insert(key, (event_name, 1));
                }
            }
            Err(e) => tracing::debug!(pod = %name, "recording event {reason}: {}", e.message),
        }
    }

    /// Forget the events of a pod that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut s) = self.seen.lock() {
            s.retain(|k, _| k.0 != uid);
        }
    }
}
