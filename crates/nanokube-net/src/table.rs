//! The Services and their endpoints as the proxy and the DNS server see them: kept in
//! memory from a lasting watch of Services, EndpointSlices and Endpoints (the last only
//! for Services that have no slices, which upstream's EndpointSliceMirroring controller
//! would mirror), so a change reaches every lookup as soon as the store has it.
//!
//! Each Service port becomes a [`ServicePort`]: its frontends (ClusterIPs, load-balancer
//! ingress IPs and `externalIPs` at the port, and the node port), its endpoints from the
//! slices' port of the same name and protocol, and a [`Balancer`] that outlives rebuilds
//! so round-robin position and `ClientIP` affinity survive endpoint changes.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nanokube_apiserver::registry::Registry;
use tokio::sync::watch;

/// A transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (not carried: reported on the Service).
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Protocol {
        match s {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp,
        }
    }

    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// `namespace/name` of a Service.
pub type Key = (String, String);

/// One endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where it is.
    pub addr: SocketAddrV4,
    /// Ready (takes new traffic).
    pub ready: bool,
    /// Serving (ready, whether or not terminating).
    pub serving: bool,
    /// Being deleted.
    pub terminating: bool,
    /// The node it runs on.
    pub node: Option<String>,
    /// Its DNS hostname (a pod's `hostname` under a headless Service of its `subdomain`).
    pub hostname: Option<String>,
}

/// Where new connections of a Service port go: round-robin over its usable endpoints,
/// or to the same one per client IP under `ClientIP` affinity.
#[derive(Default)]
pub struct Balancer {
    next: AtomicUsize,
    sticky: Mutex<HashMap<IpAddr, (SocketAddrV4, Instant)>>,
}

/// One port of one Service, as the proxy carries it.
pub struct ServicePort {
    /// The Service.
    pub key: Key,
    /// The port's name (may be empty).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// Its node port, if the type has one.
    pub node_port: Option<u16>,
    /// ClusterIPs, load-balancer IPs and external IPs, at `port`.
    pub frontends: Vec<SocketAddrV4>,
    /// Which of them are ClusterIPs (traffic to the others is external).
    pub cluster_ips: Vec<Ipv4Addr>,
    /// `ClientIP` affinity's timeout, if set.
    pub affinity: Option<Duration>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// Its endpoints (every condition).
    pub endpoints: Vec<Endpoint>,
    balancer: Arc<Balancer>,
}

impl ServicePort {
    /// The endpoint for a new connection from `client`: of the ready endpoints (on this
    /// node only under a `Local` policy; `external` is traffic to a node port, load-balancer
    /// or external IP), else the serving terminating ones (kube-proxy's fallback); `None`
    /// when there is none, and the connection is refused.
    pub fn pick(&self, client: IpAddr, external: bool, node: &str) -> Option<SocketAddrV4> {
        let local = if external { self.external_local } else { self.internal_local };
        let eligible = |e: &&Endpoint| !local || e.node.as_deref() == Some(node);
        let mut usable: Vec<SocketAddrV4> = self.endpoints.iter().filter(eligible).filter(|e| e.ready).map(|e| e.addr).collect();
        if usable.is_empty() {
            usable = self.endpoints.iter().filter(eligible).filter(|e| e.serving && e.terminating).map(|e| e.addr).collect();
        }
        if usable.is_empty() {
            return None;
        }
        if let Some(timeout) = self.affinity {
            let now = Instant::now();
            let mut sticky = self.balancer.sticky.lock().ok()?;
            if let Some((addr, seen)) = sticky.get_mut(&client) {
                if now.duration_since(*seen) < timeout && usable.contains(addr) {
                    *seen = now;
                    return Some(*addr);
                }
            }
            let chosen = usable[self.balancer.next.fetch_add(1, Ordering::Relaxed) % usable.len()];
            sticky.retain(|_, (_, seen)| now.duration_since(*seen) < timeout);
            sticky.insert(client, (chosen, now));
            return Some(chosen);
        }
        Some(usable[self.balancer.next.fetch_add(1, Ordering::Relaxed) % usable.len()])
    }
}

/// What the DNS server needs of a Service.
#[derive(Debug, Clone)]
pub struct ServiceRecord {
    /// ClusterIPs (none for a headless Service).
    pub cluster_ips: Vec<Ipv4Addr>,
    /// `ExternalName`'s target.
    pub external_name: Option<String>,
    /// Ports: name, protocol, port.
    pub ports: Vec<(String, Protocol, u16)>,
    /// Endpoints that DNS publishes (ready ones; the endpoints controller already counts
    /// `publishNotReadyAddresses`), without duplicates of one address.
    pub endpoints: Vec<Endpoint>,
}

impl crate::cache::Cache for ServiceTable {
    const KINDS: &'static [(&'static str, &'static str)] = &[("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "endpoints")];

    fn replace(&self, objects: Vec<serde_json::Value>) {
        let mut fresh = State::default();
        for o in &objects {
            insert(&mut fresh, o);
        }
        if let Ok(mut s) = self.state.write() {
            fresh.balancers = std::mem::take(&mut s.balancers);
            let keys: Vec<Key> = fresh.services.keys().cloned().collect();
            *s = fresh;
            for k in keys {
                rebuild(&mut s, &k);
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn change(&self, obj: &serde_json::Value, _prev: Option<&serde_json::Value>, deleted: bool) {
        self.apply(obj, deleted);
    }
}

#[derive(Default)]
struct State {
    services: HashMap<Key, Service>,
    slices: HashMap<Key, BTreeMap<String, EndpointSlice>>,
    endpoints: HashMap<Key, Endpoints>,
    ports: HashMap<Key, Vec<Arc<ServicePort>>>,
    frontends: HashMap<(Protocol, SocketAddrV4), Arc<ServicePort>>,
    node_ports: HashMap<(Protocol, u16), Arc<ServicePort>>,
    by_ip: HashMap<Ipv4Addr, Key>,
    balancers: HashMap<(Key, String, Protocol), Arc<Balancer>>,
}

/// The Services of the cluster, kept current.
pub struct ServiceTable {
    state: RwLock<State>,
    changed: watch::Sender<u64>,
    /// The node this table serves (for `Local` traffic policies).
    pub node: String,
}

impl ServiceTable {
    /// An empty table for node `node`.
    pub fn new(node: &str) -> Arc<ServiceTable> {
        Arc::new(ServiceTable { state: RwLock::default(), changed: watch::channel(0).0, node: node.to_string() })
    }

    /// A receiver told of every change (a counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The Service port behind `addr` (a ClusterIP, load-balancer or external IP and port).
    pub fn frontend(&self, protocol: Protocol, addr: SocketAddrV4) -> Option<Arc<ServicePort>> {
        self.state.read().ok()?.frontends.get(&(protocol, addr)).cloned()
    }

    /// The Service port on node port `port`.
    pub fn node_port(&self, protocol: Protocol, port: u16) -> Option<Arc<ServicePort>> {
        self.state.read().ok()?.node_ports.get(&(protocol, port)).cloned()
    }

    /// The port of Service `namespace/name` with number `number` or name `name`.
    pub fn service_port(&self, namespace: &str, name: &str, number: Option<u16>, port_name: Option<&str>) -> Option<Arc<ServicePort>> {
        let s = self.state.read().ok()?;
        let ports = s.ports.get(&(namespace.to_string(), name.to_string()))?;
        ports.iter().find(|p| p.protocol == Protocol::Tcp && (number == Some(p.port) || port_name.is_some_and(|n| n == p.name))).cloned()
    }

    /// Every Service port.
    pub fn ports(&self) -> Vec<Arc<ServicePort>> {
        self.state.read().map(|s| s.ports.values().flatten().cloned().collect()).unwrap_or_default()
    }

    /// The Service `namespace/name` for DNS.
    pub fn record(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
        let s = self.state.read().ok()?;
        let key = (namespace.to_string(), name.to_string());
        let svc = s.services.get(&key)?;
        let spec = svc.spec.as_ref()?;
        let external_name = (spec.type_.as_deref() == Some("ExternalName")).then(|| spec.external_name.clone()).flatten();
        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), Protocol::parse(p.protocol.as_deref()), u16::try_from(p.port).unwrap_or(0)))
            .collect();
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for e in endpoints_of(&s, &key, None, Protocol::Tcp, true) {
            if e.ready && !endpoints.iter().any(|x| x.addr.ip() == e.addr.ip()) {
                endpoints.push(e);
            }
        }
        Some(ServiceRecord { cluster_ips: cluster_ips(svc), external_name, ports, endpoints })
    }

    /// The Service whose ClusterIP is `ip`, and the Service and endpoint whose address
    /// is `ip` (for reverse lookups).
    pub fn reverse(&self, ip: Ipv4Addr) -> Option<(Key, Option<Endpoint>)> {
        let s = self.state.read().ok()?;
        if let Some(key) = s.by_ip.get(&ip) {
            return Some((key.clone(), None));
        }
        for key in s.services.keys() {
            if let Some(e) = endpoints_of(&s, key, None, Protocol::Tcp, true).into_iter().find(|e| *e.addr.ip() == ip && e.ready) {
                return Some((key.clone(), Some(e)));
            }
        }
        None
    }

    /// Whether a Service exists in namespace `namespace` (so `<ns>.svc` names exist).
    pub fn has_namespace(&self, namespace: &str) -> bool {
        self.state.read().map(|s| s.services.keys().any(|(ns, _)| ns == namespace)).unwrap_or(false)
    }

    /// Fill the table from `registry` and keep it current until `shutdown`.
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>, shutdown: watch::Receiver<bool>) {
        crate::cache::keep(self, registry, shutdown).await
    }

    /// Fill the table through an API client and keep it current until `shutdown` (a
    /// joined node, with the service proxy's credentials).
    pub async fn run_from(self: Arc<Self>, cluster: Arc<dyn nanokube_apiserver::cluster::Cluster>, shutdown: watch::Receiver<bool>) {
        crate::cache::keep_from(self, cluster, shutdown).await
    }

    /// Take in one changed object (a Service, EndpointSlice or Endpoints).
    pub fn apply(&self, obj: &serde_json::Value, deleted: bool) {
        let Ok(mut s) = self.state.write() else { return };
        let key = if deleted { remove(&mut s, obj) } else { insert(&mut s, obj) };
        if let Some(key) = key {
            rebuild(&mut s, &key);
            drop(s);
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

fn meta_key(obj: &serde_json::Value) -> Key {
    (nanokube_api::meta::namespace(obj).to_string(), nanokube_api::meta::name(obj).to_string())
}

/// The Service an object belongs to.
fn service_of(obj: &serde_json::Value) -> Option<(Key, &'static str)> {
    let (ns, name) = meta_key(obj);
    match obj.get("kind").and_then(serde_json::Value::as_str)? {
        "Service" => Some(((ns, name), "Service")),
        "Endpoints" => Some(((ns, name), "Endpoints")),
        "EndpointSlice" => {
            let svc = obj.pointer("/metadata/labels/kubernetes.io~1service-name").and_then(serde_json::Value::as_str)?;
            Some(((ns, svc.to_string()), "EndpointSlice"))
        }
        _ => None,
    }
}

fn insert(s: &mut State, obj: &serde_json::Value) -> Option<Key> {
    let (key, kind) = service_of(obj)?;
    match kind {
        "Service" => {
            s.services.insert(key.clone(), serde_json::from_value(obj.clone()).ok()?);
        }
        "Endpoints" => {
            s.endpoints.insert(key.clone(), serde_json::from_value(obj.clone()).ok()?);
        }
        _ => {
            let slice: EndpointSlice = serde_json::from_value(obj.clone()).ok()?;
            s.slices.entry(key.clone()).or_default().insert(nanokube_api::meta::name(obj).to_string(), slice);
        }
    }
    Some(key)
}

fn remove(s: &mut State, obj: &serde_json::Value) -> Option<Key> {
    let (key, kind) = service_of(obj)?;
    match kind {
        "Service" => {
            s.services.remove(&key);
        }
        "Endpoints" => {
            s.endpoints.remove(&key);
        }
        _ => {
            if let Some(m) = s.slices.get_mut(&key) {
                m.remove(nanokube_api::meta::name(obj));
                if m.is_empty() {
                    s.slices.remove(&key);
                }
            }
        }
    }
    Some(key)
}

fn cluster_ips(svc: &Service) -> Vec<Ipv4Addr> {
    let Some(spec) = &svc.spec else { return Vec::new() };
    let mut ips: Vec<Ipv4Addr> = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter()).filter_map(|s| s.parse().ok()).collect();
    ips.dedup();
    ips
}

/// The endpoints of `key`'s port `port_name`/`protocol` (any port when `None`: DNS asks
/// for addresses only), from its EndpointSlices, else its Endpoints.
fn endpoints_of(s: &State, key: &Key, port_name: Option<&str>, protocol: Protocol, any_port: bool) -> Vec<Endpoint> {
    let mut out = Vec::new();
    if let Some(slices) = s.slices.get(key) {
        for slice in slices.values() {
            if slice.address_type != "IPv4" {
                continue;
            }
            let port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| any_port || (p.name.as_deref().unwrap_or("") == port_name.unwrap_or("") && Protocol::parse(p.protocol.as_deref()) == protocol));
            let number = port.and_then(|p| p.port).and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
            if port.is_none() && !any_port {
                continue;
            }
            for e in slice.endpoints.iter().flatten() {
                let c = e.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                for a in &e.addresses {
                    let Ok(ip) = a.parse::<Ipv4Addr>() else { continue };
                    out.push(Endpoint {
                        addr: SocketAddrV4::new(ip, number),
                        ready,
                        serving,
                        terminating,
                        node: e.node_name.clone(),
                        hostname: e.hostname.clone(),
                    });
                }
            }
        }
        return out;
    }
    let Some(eps) = s.endpoints.get(key) else { return out };
    for subset in eps.subsets.iter().flatten() {
        let port = subset
            .ports
            .iter()
            .flatten()
            .find(|p| any_port || (p.name.as_deref().unwrap_or("") == port_name.unwrap_or("") && Protocol::parse(p.protocol.as_deref()) == protocol));
        if port.is_none() && !any_port {
            continue;
        }
        let number = port.and_then(|p| u16::try_from(p.port).ok()).unwrap_or(0);
        for (list, ready) in [(&subset.addresses, true), (&subset.not_ready_addresses, false)] {
            for a in list.iter().flatten() {
                let Ok(ip) = a.ip.parse::<Ipv4Addr>() else { continue };
                out.push(Endpoint {
                    addr: SocketAddrV4::new(ip, number),
                    ready,
                    serving: ready,
                    terminating: false,
                    node: a.node_name.clone(),
                    hostname: a.hostname.clone(),
                });
            }
        }
    }
    out
}

/// Recompute `key`'s ports and their frontends.
fn rebuild(s: &mut State, key: &Key) {
    if let Some(old) = s.ports.remove(key) {
        for p in &old {
            for f in &p.frontends {
                if s.frontends.get(&(p.protocol, *f)).is_some_and(|x| x.key == *key) {
                    s.frontends.remove(&(p.protocol, *f));
                }
            }
            if let Some(np) = p.node_port {
                if s.node_ports.get(&(p.protocol, np)).is_some_and(|x| x.key == *key) {
                    s.node_ports.remove(&(p.protocol, np));
                }
            }
        }
    }
    s.by_ip.retain(|_, k| k != key);
    let Some(svc) = s.services.get(key).cloned() else {
        s.balancers.retain(|(k, _, _), _| k != key);
        return;
    };
    let Some(spec) = &svc.spec else { return };
    if spec.type_.as_deref() == Some("ExternalName") {
        return;
    }
    let ips = cluster_ips(&svc);
    for ip in &ips {
        s.by_ip.insert(*ip, key.clone());
    }
    let mut addresses: Vec<Ipv4Addr> = ips.clone();
    let lb: Vec<Ipv4Addr> = svc
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    addresses.extend(lb);
    // External IPs are carried only inside 127.0.0.0/8: nanokube sends nothing elsewhere.
    addresses.extend(spec.external_ips.iter().flatten().filter_map(|a| a.parse::<Ipv4Addr>().ok()).filter(|a| a.is_loopback()));
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let secs = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds).unwrap_or(10_800);
        Duration::from_secs(u64::try_from(secs).unwrap_or(10_800))
    });
    let mut built = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Ok(port) = u16::try_from(p.port) else { continue };
        let protocol = Protocol::parse(p.protocol.as_deref());
        let name = p.name.clone().unwrap_or_default();
        let balancer = s.balancers.entry((key.clone(), name.clone(), protocol)).or_default().clone();
        let sp = Arc::new(ServicePort {
            key: key.clone(),
            name: name.clone(),
            protocol,
            port,
            node_port: p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n > 0),
            frontends: addresses.iter().map(|ip| SocketAddrV4::new(*ip, port)).collect(),
            cluster_ips: ips.clone(),
            affinity,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            endpoints: endpoints_of(s, key, Some(&name), protocol, false),
            balancer,
        });
        for f in &sp.frontends {
            s.frontends.insert((protocol, *f), sp.clone());
        }
        if let Some(np) = sp.node_port {
            s.node_ports.insert((protocol, np), sp.clone());
        }
        built.push(sp);
    }
    s.ports.insert(key.clone(), built);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> Arc<ServiceTable> {
        let t = ServiceTable::new("n1");
        t.apply(
            &json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web", "namespace": "default"},
                "spec": {"type": "NodePort", "clusterIP": "127.96.0.5", "clusterIPs": ["127.96.0.5"], "sessionAffinity": "None",
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080, "targetPort": "http"}]}}),
            false,
        );
        t.apply(
            &json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "addressType": "IPv4",
                "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [
                    {"addresses": ["127.244.0.2"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "n1"},
                    {"addresses": ["127.244.0.3"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "n2"},
                    {"addresses": ["127.244.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n1"}]}),
            false,
        );
        t
    }

    #[test]
    fn frontends_and_round_robin_over_ready_endpoints() {
        let t = table();
        let front = SocketAddrV4::new(Ipv4Addr::new(127, 96, 0, 5), 80);
        let p = t.frontend(Protocol::Tcp, front).expect("frontend");
        assert!(t.frontend(Protocol::Udp, front).is_none());
        assert!(t.node_port(Protocol::Tcp, 30080).is_some());
        let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let picks: Vec<_> = (0..4).map(|_| p.pick(client, false, "n1").unwrap().to_string()).collect();
        assert_eq!(picks.iter().filter(|a| *a == "127.244.0.2:8080").count(), 2, "{picks:?}");
        assert_eq!(picks.iter().filter(|a| *a == "127.244.0.3:8080").count(), 2, "{picks:?}");
    }

    #[test]
    fn local_policy_affinity_and_terminating_fallback() {
        let t = table();
        let mut svc = json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "127.96.0.5", "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        t.apply(&svc, false);
        let p = t.node_port(Protocol::Tcp, 30080).unwrap();
        let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
        // External traffic stays on this node; the one client sticks to its endpoint.
        for _ in 0..5 {
            assert_eq!(p.pick(client, true, "n1").unwrap().to_string(), "127.244.0.2:8080");
        }
        let first = p.pick(client, false, "n1").unwrap();
        assert!((0..5).all(|_| p.pick(client, false, "n1") == Some(first)));
        // Only a terminating endpoint left on this node: it still serves.
        svc["spec"]["sessionAffinity"] = json!("None");
        t.apply(&svc, false);
        t.apply(
            &json!({"kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.244.0.4"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "n1"}]}),
            false,
        );
        let p = t.node_port(Protocol::Tcp, 30080).unwrap();
        assert_eq!(p.pick(client, true, "n1").unwrap().to_string(), "127.244.0.4:8080");
        // The Service goes: so do its frontends.
        t.apply(&svc, true);
        assert!(t.node_port(Protocol::Tcp, 30080).is_none());
        assert!(t.frontend(Protocol::Tcp, SocketAddrV4::new(Ipv4Addr::new(127, 96, 0, 5), 80)).is_none());
    }
}
