//! nanokube's network: what kube-proxy, a load-balancer implementation (k3s's servicelb)
//! and CoreDNS do, on loopback addresses only (all of 127.0.0.0/8 is local on Linux, so
//! ClusterIPs, load-balancer IPs and pod IPs need no change to the machine's network).
//!
//! - [`budget`]: what relayed connections may hold of the process's descriptors.
//! - [`table`]: Services and their endpoints, kept in memory from the store's watch.
//! - [`proxy`]: the Service proxy: host listeners on ClusterIPs, load-balancer and external
//!   IPs and node ports, TCP and UDP, and the [`proxy::Forwarder`] that carries a connection
//!   or datagram to an endpoint (shared with the pods' capture).
//! - [`mesh`]: traffic leaving a pod (NAT rules in its network namespace and the agent's
//!   capture port there) to other pods and to Services.
//! - [`conntrack`]: where a pod's redirected UDP was going (its flow's conntrack entry).
//! - [`dial`]: reaching an endpoint: a pod here inside its namespace, anything else from
//!   the host.
//! - [`dns`]: the cluster DNS server (hickory-server), `kube-dns` in `kube-system`.
//! - [`loadbalancer`]: load-balancer IPs for `LoadBalancer` Services.
//! - [`ingress`]: the built-in ingress controller (IngressClass `nanokube`).
//! - [`policy`]: NetworkPolicies, held to traffic between pods.
//!
//! [`Network`] puts them together for one node.

pub mod budget;
mod cache;
pub mod conntrack;
pub mod dial;
pub mod dns;
pub mod ingress;
pub mod loadbalancer;
pub mod mesh;
pub mod policy;
pub mod proxy;
pub mod table;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use nanokube_api::resources;
use nanokube_apiserver::registry::{Registry, WriteOptions};
use serde_json::json;
use tokio::sync::watch;

/// How the node's network is set up.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The node's name (for `Local` traffic policies).
    pub node: String,
    /// Where node ports listen (the node's addresses; loopback).
    pub node_ips: Vec<Ipv4Addr>,
    /// The Service range (captured in pods).
    pub service_cidr: String,
    /// The cluster DNS address (the `kube-dns` ClusterIP, port 53).
    pub dns_addr: SocketAddrV4,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// Where names outside the cluster domain are asked.
    pub dns_upstreams: Vec<SocketAddr>,
    /// The load-balancer IP range.
    pub load_balancer_cidr: String,
    /// Whether the host's listeners (ClusterIPs, node ports, load-balancer IPs, the DNS
    /// address and the ingress controller) are opened; pods' traffic is carried either way.
    pub host_listeners: bool,
    /// Where the ingress controller serves HTTP and HTTPS (`None`: no ingress controller).
    pub ingress: Option<ingress::IngressConfig>,
}

/// The node's network parts.
pub struct Network {
    /// Its configuration.
    pub config: NetworkConfig,
    /// The Services.
    pub table: Arc<table::ServiceTable>,
    /// What carries traffic to endpoints.
    pub forwarder: Arc<proxy::Forwarder>,
    /// The cluster DNS server.
    pub dns: Arc<dns::Dns>,
    lb_range: loadbalancer::Range,
    /// The ranges of ServiceCIDRs other than the Service range, captured in pods too.
    other_service_ranges: std::sync::Mutex<Vec<String>>,
}

impl Network {
    /// The parts for `config`.
    pub fn new(config: NetworkConfig) -> Result<Arc<Network>, String> {
        let table = table::ServiceTable::new(&config.node);
        let dns = dns::Dns::new(config.dns_addr, &config.cluster_domain, table.clone(), config.dns_upstreams.clone())?;
        let forwarder = proxy::Forwarder::new(table.clone(), Arc::default(), Some(dns.clone()), policy::Policies::new());
        let lb_range = loadbalancer::Range::parse(&config.load_balancer_cidr).map_err(|e| format!("--load-balancer-cidr: {e}"))?;
        Ok(Arc::new(Network { config, table, forwarder, dns, lb_range, other_service_ranges: std::sync::Mutex::new(Vec::new()) }))
    }

    /// The address ranges a pod's traffic to is captured (besides other pods').
    pub fn captured_ranges(&self) -> Vec<String> {
        let mut ranges = vec![self.config.service_cidr.clone(), self.config.load_balancer_cidr.clone()];
        ranges.extend(self.other_service_ranges.lock().map(|r| r.clone()).unwrap_or_default());
        ranges
    }

    /// Follow the ServiceCIDRs (every 2 s: they are few and rarely change): each one's
    /// ranges besides the Service range are captured in every pod, running or to come,
    /// while it exists (also while it is being deleted: its addresses may still be in use).
    async fn follow_service_cidrs(self: Arc<Self>, registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
        let Some(def) = resources::find("networking.k8s.io", "v1", "servicecidrs") else { return };
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let Ok(list) = registry.list(def, None, &Default::default()) else { continue };
            let mut want: Vec<String> = list
                .items
                .iter()
                .flat_map(|o| o.value().pointer("/spec/cidrs").and_then(serde_json::Value::as_array).cloned().unwrap_or_default())
                .filter_map(|c| c.as_str().map(String::from))
                .filter(|c| c.contains('.') && *c != self.config.service_cidr)
                .collect();
            want.sort();
            want.dedup();
            let have = self.other_service_ranges.lock().map(|r| r.clone()).unwrap_or_default();
            if want == have {
                continue;
            }
            let added: Vec<String> = want.iter().filter(|r| !have.contains(r)).cloned().collect();
            let removed: Vec<String> = have.iter().filter(|r| !want.contains(r)).cloned().collect();
            if let Ok(mut r) = self.other_service_ranges.lock() {
                *r = want;
            }
            let pods = self.forwarder.pods.all();
            let done = tokio::task::spawn_blocking(move || {
                for ns in pods {
                    for (ranges, add) in [(&added, true), (&removed, false)] {
                        if !ranges.is_empty() {
                            if let Err(e) = mesh::change_capture(&ns, ranges, add) {
                                tracing::debug!(ns = %ns.display(), "{e}");
                            }
                        }
                    }
                }
            });
            let _ = done.await;
        }
    }

    /// Run the table, the proxy, the DNS server and the load-balancer allocator until
    /// `shutdown`.
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>, shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(self.table.clone().run(registry.clone(), shutdown.clone()));
        tasks.spawn(self.forwarder.policies.clone().run(registry.clone(), shutdown.clone()));
        tasks.spawn(loadbalancer::run(registry.clone(), self.lb_range, shutdown.clone()));
        tasks.spawn(self.clone().follow_service_cidrs(registry.clone(), shutdown.clone()));
        if self.config.host_listeners {
            let proxy = proxy::Proxy::new(self.forwarder.clone(), registry.clone(), self.config.node_ips.clone());
            tasks.spawn(proxy.run(shutdown.clone()));
            let (dns, sd) = (self.dns.clone(), shutdown.clone());
            tasks.spawn(async move {
                if let Err(e) = dns.serve(sd).await {
                    tracing::warn!("{e} (pods still get answers; the host does not)");
                }
            });
            if let Some(config) = self.config.ingress.clone() {
                tasks.spawn(ingress::IngressController::new(registry.clone(), self.forwarder.clone(), config).run(shutdown.clone()));
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// The `kube-dns` Service in `kube-system` (CoreDNS's labels and ports) at `addr`, with
/// an Endpoints object and EndpointSlice pointing at the server itself.
pub async fn ensure_dns_service(registry: &Registry, addr: SocketAddrV4) -> Result<(), nanokube_api::ApiError> {
    let ip = addr.ip().to_string();
    let labels = json!({"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"});
    let service = json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels,
            "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "ClusterIP", "ports": [
            {"name": "dns", "port": addr.port(), "protocol": "UDP", "targetPort": addr.port()},
            {"name": "dns-tcp", "port": addr.port(), "protocol": "TCP", "targetPort": addr.port()}]}
    });
    let endpoints = json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns", "endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "dns", "port": addr.port(), "protocol": "UDP"}, {"name": "dns-tcp", "port": addr.port(), "protocol": "TCP"}]}]
    });
    let slice = json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns", "kubernetes.io/service-name": "kube-dns", "endpointslice.kubernetes.io/managed-by": "cluster-dns.nanokube.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "dns", "port": addr.port(), "protocol": "UDP"}, {"name": "dns-tcp", "port": addr.port(), "protocol": "TCP"}]
    });
    for (group, plural, obj) in [("", "services", service), ("", "endpoints", endpoints), ("discovery.k8s.io", "endpointslices", slice)] {
        let Some(def) = resources::find(group, "v1", plural) else { continue };
        match registry.create(def, "kube-system", obj, &WriteOptions::default()).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
