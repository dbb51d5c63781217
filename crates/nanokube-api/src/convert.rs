//! Conversions between API versions that share storage. `events.k8s.io/v1` Events are
//! stored as `core/v1` Events (as upstream stores both in one place), with upstream's
//! field mapping.

use serde_json::{Map, Value};

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
}
