//! client-go's event recorder for in-process clients (the node agent, the controllers):
//! core/v1 Events with `source` and `reportingComponent`; a repeat of the same reason
//! and message about the same object (and field) raises `count` and `lastTimestamp` of
//! the one Event instead of writing another (client-go's `EventCorrelator`), so
//! `kubectl describe` shows `(x5 over 2m)` as on a real cluster.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use nanokube_api::{meta, resources};
use serde_json::{json, Value};

use crate::cluster::Cluster;

/// What this recorder wrote, by the uid of the object it is about: for each distinct
/// (field path, type, reason, message), a hash of them, the Event's name and its count.
/// Hashed rather than kept as strings: a kubelet remembers one of these per pod it
/// started, and the strings were most of it (and a gone object is forgotten by its uid
/// alone).
#[derive(Default)]
struct Seen {
    by_object: HashMap<Box<str>, Vec<Written>>,
    /// How many [`Written`] there are in all.
    len: usize,
    hasher: std::hash::RandomState,
}

/// One Event written: the hash of what it says, its name (in the object's namespace, or
/// `default`), its count.
struct Written {
    said: u64,
    name: Box<str>,
    count: i64,
}

impl Seen {
    fn said(&self, parts: [&str; 4]) -> u64 {
        self.hasher.hash_one(parts)
    }

    fn get(&self, uid: &str, said: u64) -> Option<(&str, i64)> {
        self.by_object.get(uid)?.iter().find(|w| w.said == said).map(|w| (&*w.name, w.count))
    }

    fn set(&mut self, uid: &str, said: u64, name: &str, count: i64) {
        let list = match self.by_object.get_mut(uid) {
            Some(list) => list,
            None => {
                if self.len >= REMEMBERED {
                    self.by_object.clear();
                    self.len = 0;
                }
                self.by_object.entry(uid.into()).or_default()
            }
        };
        match list.iter_mut().find(|w| w.said == said) {
            Some(w) => w.count = count,
            None => {
                list.push(Written { said, name: name.into(), count });
                self.len += 1;
            }
        }
    }
}

/// The most distinct events remembered before the oldest are forgotten (a repeat after
/// that starts a new Event, as client-go's LRU cache of 4096 does).
const REMEMBERED: usize = 4096;

/// Records events from one component (on one host, for kubelets).
pub struct Recorder {
    component: String,
    host: Option<String>,
    seen: Mutex<Seen>,
}

impl Recorder {
    /// A recorder for `component` (`kubelet` with its `host`, `deployment-controller`, …).
    pub fn new(component: &str, host: Option<&str>) -> Self {
        Recorder { component: component.into(), host: host.map(String::from), seen: Mutex::new(Seen::default()) }
    }

    /// Record `reason`/`message` of type `ty` about `obj` (as stored, with its `kind` and
    /// `apiVersion`), and its part at `field_path` if any.
    pub async fn record(&self, cluster: &dyn Cluster, obj: &Value, field_path: Option<&str>, ty: &str, reason: &str, message: &str) {
        let Some(events) = resources::find("", "v1", "events") else { return };
        // Cluster-scoped objects' events live in `default`, as client-go records them.
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or("default").to_string();
        let name = meta::name(obj).to_string();
        let uid = meta::uid(obj).to_string();
        let (said, previous) = match self.seen.lock() {
            Ok(s) => {
                let said = s.said([field_path.unwrap_or(""), ty, reason, message]);
                (said, s.get(&uid, said).map(|(name, count)| (name.to_string(), count)))
            }
            Err(_) => (0, None),
        };
        let now = meta::now_rfc3339();
        if let Some((event_name, count)) = previous {
            let r = cluster
                .update_with(events, &ns, &event_name, None, &mut |cur| {
                    let mut next = cur.clone();
                    next["count"] = json!(count + 1);
                    next["lastTimestamp"] = json!(now);
                    Ok(next)
                })
                .await;
            if r.is_ok() {
                if let Ok(mut s) = self.seen.lock() {
                    s.set(&uid, said, &event_name, count + 1);
                }
                return;
            }
        }
        let mut involved = json!({"kind": obj["kind"], "namespace": obj.pointer("/metadata/namespace"), "name": name, "uid": uid,
            "apiVersion": obj.get("apiVersion").cloned().unwrap_or_else(|| json!("v1")),
            "resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))});
        if let Some(f) = field_path {
            involved["fieldPath"] = json!(f);
        }
        let mut source = json!({"component": self.component});
        if let Some(h) = &self.host {
            source["host"] = json!(h);
        }
        let event_name = format!("{name}.{:016x}", fastrand::u64(..));
        let ev = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason, "message": message,
            "source": source,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": ty,
            "eventTime": null, "reportingComponent": self.component, "reportingInstance": self.host.clone().unwrap_or_default(),
        });
        match cluster.create(events, &ns, ev).await {
            Ok(_) => {
                if let Ok(mut s) = self.seen.lock() {
                    s.set(&uid, said, &event_name, 1);
                }
            }
            Err(e) => tracing::debug!(object = %name, "recording event {reason}: {}", e.message),
        }
    }

    /// Forget the events of an object that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut s) = self.seen.lock() {
            if let Some(list) = s.by_object.remove(uid) {
                s.len -= list.len();
            }
        }
    }
}
