//! NetworkPolicy (networking.k8s.io/v1), enforced where traffic between pods passes the
//! node agent: every TCP connection and UDP flow a pod opens to another pod or to a
//! Service's endpoint (the pods' capture, [`crate::mesh`], and the [`crate::proxy::Forwarder`]).
//!
//! The API's semantics: a pod selected by a policy of its namespace with type `Ingress`
//! takes only traffic some such policy's ingress rule allows (peers by pod selector,
//! namespace selector, both, or `ipBlock` with `except`; ports by number or named
//! container port, `endPort`, protocol), and likewise `Egress` for what it sends; types
//! default to `Ingress`, plus `Egress` when the policy has egress rules. A denied TCP
//! connection is reset, a denied UDP flow dropped.
//!
//! Not enforced, and said so here: traffic from the host (the node itself, the API
//! server, node ports and load-balancer IPs reached from outside pods), which the
//! common CNI plugins also let through to local pods; traffic a pod sends to its own IP;
//! `hostNetwork` pods.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use nanokube_api::selector::LabelSelector;
use nanokube_apiserver::registry::Registry;
use serde_json::Value;
use tokio::sync::watch;

use crate::table::Protocol;

/// What a policy needs of a pod.
#[derive(Debug, Clone)]
struct PodInfo {
    namespace: String,
    labels: Labels,
    /// Named container ports: (name, protocol) → number.
    ports: HashMap<(String, Protocol), u16>,
}

#[derive(Default)]
struct State {
    pods: HashMap<Ipv4Addr, (String, PodInfo)>,
    namespaces: HashMap<String, Labels>,
    policies: HashMap<String, Vec<(String, NetworkPolicy)>>,
}

/// The cluster's NetworkPolicies and what they select, kept current.
#[derive(Default)]
pub struct Policies {
    state: RwLock<State>,
}

/// An object's labels.
type Labels = serde_json::Map<String, Value>;

fn labels_of(v: &Value) -> Labels {
    v.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default()
}

fn selects(sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector, labels: &Labels) -> bool {
    let Ok(v) = serde_json::to_value(sel) else { return false };
    LabelSelector::from_object(&v).is_ok_and(|s| s.matches(Some(labels)))
}

impl Policies {
    /// An empty set.
    pub fn new() -> Arc<Policies> {
        Arc::default()
    }

    /// Whether a connection (or flow) from pod IP `src` to `dst`:`port` over `protocol`
    /// is allowed. `src` not a pod here (the host): allowed.
    pub fn allows(&self, src: Ipv4Addr, dst: Ipv4Addr, port: u16, protocol: Protocol) -> bool {
        let Ok(s) = self.state.read() else { return true };
        let Some((_, from)) = s.pods.get(&src) else { return true };
        let to = s.pods.get(&dst).map(|(_, p)| p);
        // The sender's egress.
        if !Self::admitted(&s, from, Direction::Egress, to, dst, port, protocol) {
            return false;
        }
        // The receiver's ingress (when it is a pod).
        match to {
            Some(to) => Self::admitted(&s, to, Direction::Ingress { from, src }, None, dst, port, protocol),
            None => true,
        }
    }

    /// Whether `pod`'s policies of `dir` let the traffic through: true when none selects it.
    fn admitted(s: &State, pod: &PodInfo, dir: Direction, peer_pod: Option<&PodInfo>, dst: Ipv4Addr, port: u16, protocol: Protocol) -> bool {
        let mut selected = false;
        for (_, np) in s.policies.get(&pod.namespace).into_iter().flatten() {
            let Some(spec) = &np.spec else { continue };
            if !selects(&spec.pod_selector.clone().unwrap_or_default(), &pod.labels) {
                continue;
            }
            let types: Vec<String> = spec.policy_types.clone().unwrap_or_else(|| {
                let mut t = vec!["Ingress".to_string()];
                if spec.egress.is_some() {
                    t.push("Egress".to_string());
                }
                t
            });
            match dir {
                Direction::Egress => {
                    if !types.iter().any(|t| t == "Egress") {
                        continue;
                    }
                    selected = true;
                    for rule in spec.egress.iter().flatten() {
                        // The destination's named ports are the destination pod's.
                        let port_ok = ports_match(rule.ports.as_deref(), port, protocol, peer_pod);
                        let peer_ok = peers_match(s, rule.to.as_deref(), &pod.namespace, peer_pod, dst);
                        if port_ok && peer_ok {
                            return true;
                        }
                    }
                }
                Direction::Ingress { from, src } => {
                    if !types.iter().any(|t| t == "Ingress") {
                        continue;
                    }
                    selected = true;
                    for rule in spec.ingress.iter().flatten() {
                        let port_ok = ports_match(rule.ports.as_deref(), port, protocol, Some(pod));
                        let peer_ok = peers_match(s, rule.from.as_deref(), &pod.namespace, Some(from), src);
                        if port_ok && peer_ok {
                            return true;
                        }
                    }
                }
            }
        }
        !selected
    }

    /// Fill from `registry` and keep current until `shutdown`.
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>, shutdown: watch::Receiver<bool>) {
        crate::cache::keep(self, registry, shutdown).await
    }

    /// Take in one changed object (`prev`: as it was, so a pod whose IP changed leaves
    /// its old one).
    pub fn apply(&self, obj: &Value, prev: Option<&Value>, deleted: bool) {
        let Ok(mut s) = self.state.write() else { return };
        if let Some(p) = prev {
            remove(&mut s, p);
        }
        if deleted {
            remove(&mut s, obj);
        } else {
            insert(&mut s, obj);
        }
    }
}

impl crate::cache::Cache for Policies {
    const KINDS: &'static [(&'static str, &'static str)] = &[("networking.k8s.io", "networkpolicies"), ("", "pods"), ("", "namespaces")];

    fn replace(&self, objects: Vec<Value>) {
        let mut fresh = State::default();
        for o in &objects {
            insert(&mut fresh, o);
        }
        if let Ok(mut s) = self.state.write() {
            *s = fresh;
        }
    }

    fn change(&self, obj: &Value, prev: Option<&Value>, deleted: bool) {
        self.apply(obj, prev, deleted);
    }
}

#[derive(Clone, Copy)]
enum Direction<'a> {
    Egress,
    Ingress { from: &'a PodInfo, src: Ipv4Addr },
}

fn insert(s: &mut State, obj: &Value) {
    let (ns, name) = (nanokube_api::meta::namespace(obj).to_string(), nanokube_api::meta::name(obj).to_string());
    match obj.get("kind").and_then(Value::as_str) {
        Some("Pod") => {
            let Some(ip) = obj.pointer("/status/podIP").and_then(Value::as_str).and_then(|i| i.parse::<Ipv4Addr>().ok()) else { return };
            if obj.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
                return;
            }
            let mut ports = HashMap::new();
            for c in obj.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
                for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
                    if let (Some(n), Some(num)) = (p.get("name").and_then(Value::as_str), p.get("containerPort").and_then(Value::as_u64)) {
                        let proto = match p.get("protocol").and_then(Value::as_str) {
                            Some("UDP") => Protocol::Udp,
                            Some("SCTP") => Protocol::Sctp,
                            _ => Protocol::Tcp,
                        };
                        ports.insert((n.to_string(), proto), u16::try_from(num).unwrap_or(0));
                    }
                }
            }
            s.pods.insert(ip, (name, PodInfo { namespace: ns, labels: labels_of(obj), ports }));
        }
        Some("Namespace") => {
            s.namespaces.insert(name, labels_of(obj));
        }
        Some("NetworkPolicy") => {
            let Ok(np) = serde_json::from_value::<NetworkPolicy>(obj.clone()) else { return };
            let list = s.policies.entry(ns).or_default();
            list.retain(|(n, _)| *n != name);
            list.push((name, np));
        }
        _ => {}
    }
}

fn remove(s: &mut State, obj: &Value) {
    let (ns, name) = (nanokube_api::meta::namespace(obj), nanokube_api::meta::name(obj));
    match obj.get("kind").and_then(Value::as_str) {
        Some("Pod") => {
            if let Some(ip) = obj.pointer("/status/podIP").and_then(Value::as_str).and_then(|i| i.parse::<Ipv4Addr>().ok()) {
                if s.pods.get(&ip).is_some_and(|(n, p)| n == name && p.namespace == ns) {
                    s.pods.remove(&ip);
                }
            }
        }
        Some("Namespace") => {
            s.namespaces.remove(name);
        }
        Some("NetworkPolicy") => {
            if let Some(list) = s.policies.get_mut(ns) {
                list.retain(|(n, _)| n != name);
            }
        }
        _ => {}
    }
}

/// Whether `ports` (none or empty: all) admit `port`/`protocol`; a named port is the
/// destination pod's container port of that name.
fn ports_match(ports: Option<&[NetworkPolicyPort]>, port: u16, protocol: Protocol, dst_pod: Option<&PodInfo>) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else { return true };
    ports.iter().any(|p| {
        let proto = match p.protocol.as_deref() {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp,
        };
        if proto != protocol {
            return false;
        }
        match &p.port {
            None => true,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                let end = p.end_port.unwrap_or(*n);
                (i64::from(*n)..=i64::from(end)).contains(&i64::from(port))
            }
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name)) => {
                dst_pod.and_then(|d| d.ports.get(&(name.clone(), protocol))).is_some_and(|n| *n == port)
            }
        }
    })
}

/// Whether `peers` (none or empty: everyone) include the pod `pod` (at `ip`), for a
/// policy of namespace `policy_ns`.
fn peers_match(s: &State, peers: Option<&[NetworkPolicyPeer]>, policy_ns: &str, pod: Option<&PodInfo>, ip: Ipv4Addr) -> bool {
    let Some(peers) = peers.filter(|p| !p.is_empty()) else { return true };
    peers.iter().any(|peer| {
        if let Some(block) = &peer.ip_block {
            let within = |cidr: &str| crate::loadbalancer::Range::parse_all(cidr).is_ok_and(|r| r.contains(ip));
            return within(&block.cidr) && !block.except.iter().flatten().any(|e| within(e));
        }
        let Some(pod) = pod else { return false };
        let ns_ok = match &peer.namespace_selector {
            None => pod.namespace == policy_ns,
            Some(sel) => s.namespaces.get(&pod.namespace).is_some_and(|l| selects(sel, l)),
        };
        let pod_ok = peer.pod_selector.as_ref().is_none_or(|sel| selects(sel, &pod.labels));
        ns_ok && pod_ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ns: &str, ip: &str, labels: Value) -> Value {
        json!({"kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels}, "status": {"podIP": ip},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}})
    }

    #[test]
    fn ingress_and_egress_rules() {
        let p = Policies::new();
        for o in [
            json!({"kind": "Namespace", "metadata": {"name": "a", "labels": {"team": "a"}}}),
            json!({"kind": "Namespace", "metadata": {"name": "b", "labels": {"team": "b"}}}),
            pod("web", "a", "127.244.0.2", json!({"app": "web"})),
            pod("friend", "a", "127.244.0.3", json!({"role": "friend"})),
            pod("stranger", "a", "127.244.0.4", json!({})),
            pod("other", "b", "127.244.0.5", json!({"role": "friend"})),
            json!({"kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "a"}, "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "friend"}}}], "ports": [{"port": "http"}]}]}}),
            json!({"kind": "NetworkPolicy", "metadata": {"name": "quiet", "namespace": "b"}, "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "127.244.0.0/16", "except": ["127.244.0.2/32"]}}]}]}}),
        ] {
            p.apply(&o, None, false);
        }
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(p.allows(ip("127.244.0.3"), ip("127.244.0.2"), 8080, Protocol::Tcp), "a friend on the named port");
        assert!(!p.allows(ip("127.244.0.3"), ip("127.244.0.2"), 9090, Protocol::Tcp), "another port");
        assert!(!p.allows(ip("127.244.0.3"), ip("127.244.0.2"), 8080, Protocol::Udp), "another protocol");
        assert!(!p.allows(ip("127.244.0.4"), ip("127.244.0.2"), 8080, Protocol::Tcp), "not a friend");
        assert!(!p.allows(ip("127.244.0.5"), ip("127.244.0.2"), 8080, Protocol::Tcp), "a friend of another namespace (and b's egress excepts web)");
        assert!(p.allows(ip("127.244.0.5"), ip("127.244.0.3"), 8080, Protocol::Tcp), "b's egress allows the rest of the block");
        assert!(p.allows(ip("127.0.0.1"), ip("127.244.0.2"), 8080, Protocol::Tcp), "the host");
        assert!(p.allows(ip("127.244.0.2"), ip("127.244.0.4"), 80, Protocol::Tcp), "web's egress is not limited");
    }
}
