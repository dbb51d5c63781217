//! What makes ClusterIP and NodePort allocations unique across API servers sharing one
//! store: before a Service holding a new address or port is written, a key for it is
//! created in the store, and a create of a key that exists fails for every server alike.
//!
//! - A ClusterIP is an `IPAddress` object (`networking.k8s.io/v1`, named by the address,
//!   `spec.parentRef` the Service, upstream's labels), as kube-apiserver 1.33's
//!   allocator keeps them; `kubectl get ipaddresses` lists them.
//! - A NodePort is a key `/registry/ranges/servicenodeports/<port>` naming its Service
//!   (not an API object: upstream keeps one bitmap there instead).
//!
//! Each server's `ServiceAllocator` is only a guess at what is free (fed by its own
//! writes and by a watch of the Services): a guess that collides is marked and another
//! picked. A repair pass, as upstream's repair controllers, creates what stored Services
//! hold but lack (Services from before this existed) and removes reservations found
//! orphaned twice in a row (left by a server that died between reserving and writing).

use std::collections::{HashMap, HashSet};

use nanokube_api::meta;
use serde_json::{json, Value};

/// The store key of an address's reservation.
pub fn ip_key(ip: &str) -> String {
    format!("/registry/ipaddresses/{ip}")
}

/// The store key of a node port's reservation.
pub fn port_key(port: u16) -> String {
    format!("/registry/ranges/servicenodeports/{port}")
}

/// The key prefix of node port reservations.
pub const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// The key prefix of address reservations.
pub const IP_PREFIX: &str = "/registry/ipaddresses/";

/// The `IPAddress` object reserving `ip` for Service `namespace/name`.
pub fn ip_object(ip: &str, namespace: &str, name: &str) -> Value {
    json!({
        "kind": "IPAddress",
        "apiVersion": "networking.k8s.io/v1",
        "metadata": {
            "name": ip,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": meta::now_rfc3339(),
            "labels": {
                "ipaddress.kubernetes.io/ip-family": "IPv4",
                "ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io"
            }
        },
        "spec": {"parentRef": {"group": "", "resource": "services", "namespace": namespace, "name": name}}
    })
}

/// The value of a node port reservation.
pub fn port_value(namespace: &str, name: &str) -> Value {
    json!({"namespace": namespace, "name": name})
}

/// The Service (namespace, name) a reservation's value names.
pub fn owner_of(value: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(value).ok()?;
    let r = v.pointer("/spec/parentRef").unwrap_or(&v);
    Some((r.get("namespace")?.as_str()?.to_string(), r.get("name")?.as_str()?.to_string()))
}

/// What the stored Services hold: address or port → (namespace, name).
#[derive(Default)]
pub struct Held {
    /// Addresses.
    pub ips: HashMap<String, (String, String)>,
    /// Node ports.
    pub ports: HashMap<u16, (String, String)>,
}

/// Orphans seen by the previous repair pass (removed when seen again).
#[derive(Default)]
pub struct Orphans {
    seen: HashSet<String>,
}

impl Orphans {
    /// Which of `now` were orphaned last time too (those to remove); remembers `now`.
    pub fn confirm(&mut self, now: HashSet<String>) -> Vec<String> {
        let twice: Vec<String> = now.iter().filter(|k| self.seen.contains(*k)).cloned().collect();
        self.seen = now;
        twice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_orphans() {
        let ip = ip_object("127.96.0.5", "default", "web");
        assert_eq!(owner_of(ip.to_string().as_bytes()), Some(("default".into(), "web".into())));
        assert_eq!(owner_of(port_value("a", "b").to_string().as_bytes()), Some(("a".into(), "b".into())));
        assert_eq!(owner_of(b"not json"), None);
        let mut o = Orphans::default();
        assert!(o.confirm(["k1".to_string()].into()).is_empty());
        assert_eq!(o.confirm(["k1".to_string(), "k2".to_string()].into()), vec!["k1".to_string()]);
    }
}
