//! Events as client-go's recorder writes them for a controller (core/v1, `source` and
//! `reportingComponent` the controller's name).

use nanokube_api::{meta, resources};
use nanokube_apiserver::registry::{Registry, WriteOptions};
use serde_json::{json, Value};

/// Record `reason`/`message` about `obj` (as stored, with its `kind` and `apiVersion`)
/// from `component`.
pub(crate) async fn record(registry: &Registry, component: &str, obj: &Value, ty: &str, reason: &str, message: &str) {
    let Some(events) = resources::find("", "v1", "events") else { return };
    // Cluster-scoped objects' events live in `default`, as client-go records them.
    let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("default").to_string();
    let name = meta::name(obj).to_string();
    let now = meta::now_rfc3339();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{name}.{:016x}", fastrand::u64(..)), "namespace": ns},
        "involvedObject": {"kind": obj["kind"], "namespace": obj.pointer("/metadata/namespace"), "name": name, "uid": meta::uid(obj),
            "apiVersion": obj.get("apiVersion").cloned().unwrap_or_else(|| json!("v1")),
            "resourceVersion": obj.pointer("/metadata/resourceVersion")},
        "reason": reason, "message": message,
        "source": {"component": component},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": ty,
        "eventTime": null, "reportingComponent": component, "reportingInstance": "",
    });
    if let Err(e) = registry.create(events, &ns, ev, &WriteOptions::default()).await {
        tracing::debug!(%name, "recording event {reason}: {}", e.message);
    }
}
