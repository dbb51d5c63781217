//! The Service proxy (what kube-proxy does), in userspace since nanokube owns every
//! address it serves: listeners on each ClusterIP, load-balancer IP and external IP at
//! each Service port and on each node port of the node's addresses, TCP and UDP,
//! forwarding to an endpoint chosen when a connection (or a UDP flow) starts.
//!
//! - The endpoint is chosen from the [`ServiceTable`] at that moment, so endpoint
//!   changes apply to the next connection as soon as the store has them. A Service port
//!   with no usable endpoint refuses: the accepted connection is reset at once, as
//!   kube-proxy's reject rule refuses it.
//! - Connections are tracked by endpoint: when an endpoint leaves its Service's slices
//!   (its pod is gone), its connections are closed, as kube-proxy clears their conntrack
//!   entries.
//! - A frontend whose endpoint is itself (the cluster DNS address, served there by the DNS
//!   server) gets no listener; traffic captured in a pod for it is answered in process.
//! - SCTP ports are not carried; the Service gets a warning event saying so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nanokube_apiserver::registry::Registry;
use nanokube_apiserver::server::AcceptBackoff;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::budget::{max_udp_flows, warn_at_most_every_10s, Relay};
use crate::dial::PodNamespaces;
use crate::dns::Dns;
use crate::table::{Key, Protocol, ServicePort, ServiceTable};

/// How long a UDP flow lives without traffic (conntrack's unreplied UDP timeout).
const UDP_IDLE: Duration = Duration::from_secs(30);
/// The largest datagram relayed.
const DATAGRAM: usize = 65_536;
/// How often listeners that could not be bound are tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Carries connections and datagrams for Service ports to their endpoints; shared by the
/// host's listeners and the pods' capture ([`crate::mesh`]).
pub struct Forwarder {
    /// The Services.
    pub table: Arc<ServiceTable>,
    /// The node's pods' network namespaces.
    pub pods: Arc<PodNamespaces>,
    /// The cluster DNS server, answering in process for its own address.
    pub dns: Option<Arc<Dns>>,
    /// The NetworkPolicies traffic from pods is held to.
    pub policies: Arc<crate::policy::Policies>,
    tracked: Mutex<HashMap<u64, (Key, SocketAddrV4, AbortHandle)>>,
    next_id: AtomicU64,
    flows: Mutex<HashMap<(SocketAddr, SocketAddrV4), Flow>>,
    /// When dropping a datagram for want of room for its flow was last logged.
    flows_full_warned: Mutex<Option<Instant>>,
    /// Room for DNS queries being answered at once (a forwarded one waits for the
    /// upstream resolver).
    dns_in_flight: Arc<tokio::sync::Semaphore>,
}

/// DNS queries from pods answered at once, at most; past it, queries are dropped as a busy
/// resolver drops them (the client asks again).
const DNS_IN_FLIGHT: usize = 1024;

/// Where a UDP flow goes.
pub enum UdpTarget {
    /// A Service port's endpoint (`true`: traffic from outside the cluster network).
    Service(Arc<ServicePort>, bool),
    /// A pod of this node, directly.
    Pod(SocketAddrV4),
}

struct Flow {
    upstream: Arc<UdpSocket>,
    endpoint: SocketAddrV4,
    last: Arc<Mutex<Instant>>,
}

impl Forwarder {
    /// A forwarder over `table`.
    pub fn new(table: Arc<ServiceTable>, pods: Arc<PodNamespaces>, dns: Option<Arc<Dns>>, policies: Arc<crate::policy::Policies>) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            table,
            pods,
            dns,
            policies,
            tracked: Mutex::default(),
            next_id: AtomicU64::new(0),
            flows: Mutex::default(),
            flows_full_warned: Mutex::default(),
            dns_in_flight: Arc::new(tokio::sync::Semaphore::new(DNS_IN_FLIGHT)),
        })
    }

    fn is_dns(&self, endpoint: SocketAddrV4) -> bool {
        self.dns.as_ref().is_some_and(|d| d.addr == endpoint)
    }

    /// Carry TCP connection `inbound` from `client` for `port` (`external`: it came to a
    /// node port, load-balancer or external IP).
    pub fn tcp(self: &Arc<Self>, mut inbound: tokio::net::TcpStream, port: Arc<ServicePort>, client: IpAddr, external: bool) {
        // Past the relays' share of descriptors: reset.
        let Some(relay) = Relay::try_start(&inbound) else { return };
        let Some(endpoint) = port.pick(client, external, &self.table.node) else {
            // No usable endpoint: refused (a reset).
            let _ = inbound.set_zero_linger();
            return;
        };
        if let IpAddr::V4(from) = client {
            if !self.policies.allows(from, *endpoint.ip(), endpoint.port(), Protocol::Tcp) {
                let _ = inbound.set_zero_linger();
                return;
            }
        }
        if self.is_dns(endpoint) {
            if let Some(dns) = self.dns.clone() {
                tokio::spawn(async move { dns.serve_tcp(inbound).await });
            }
            return;
        }
        let me = self.clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(async move {
            match me.pods.connect_from(endpoint, client).await {
                Ok((mut outbound, _origin)) => relay.carry(&mut inbound, &mut outbound).await,
                Err(e) => {
                    tracing::debug!(%endpoint, "connecting to the endpoint: {e}");
                    let _ = inbound.set_zero_linger();
                }
            }
            if let Ok(mut t) = me.tracked.lock() {
                t.remove(&id);
            }
        });
        if let Ok(mut t) = self.tracked.lock() {
            if !task.is_finished() {
                t.insert(id, (port.key.clone(), endpoint, task.abort_handle()));
            }
        }
    }

    /// Relay datagram `data` from `client` to `frontend` by way of `via`, replies going
    /// back through `reply` (the socket it came in on) to `client`.
    /// `pod`: the sending pod's IP (traffic captured in a pod), for its NetworkPolicies.
    pub async fn udp(self: &Arc<Self>, reply: &Arc<UdpSocket>, client: SocketAddr, data: &[u8], frontend: SocketAddrV4, via: UdpTarget, pod: Option<Ipv4Addr>) {
        let key = (client, frontend);
        let existing = self.flows.lock().ok().and_then(|f| f.get(&key).map(|f| (f.upstream.clone(), f.endpoint, f.last.clone())));
        if let Some((upstream, endpoint, last)) = existing {
            if let Ok(mut l) = last.lock() {
                *l = Instant::now();
            }
            let _ = upstream.send_to(data, endpoint).await;
            return;
        }
        let (endpoint, service) = match via {
            UdpTarget::Pod(addr) => (addr, None),
            UdpTarget::Service(port, external) => {
                let Some(endpoint) = port.pick(client.ip(), external, &self.table.node) else { return };
                (endpoint, Some(port.key.clone()))
            }
        };
        if pod.is_some_and(|from| !self.policies.allows(from, *endpoint.ip(), endpoint.port(), Protocol::Udp)) {
            return;
        }
        if self.is_dns(endpoint) {
            // Answered beside the caller's loop, not in it: a query forwarded upstream
            // waits up to 2 s per resolver, and the pod's other datagrams (the AAAA
            // query sent with an A one) must not wait behind it.
            let answer = self.dns.as_ref().and_then(|d| d.answer_bytes(data, client));
            if let (Some(answer), Ok(permit)) = (answer, self.dns_in_flight.clone().try_acquire_owned()) {
                let reply = reply.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Some(answer) = answer.await {
                        let _ = reply.send_to(&answer, client).await;
                    }
                });
            }
            return;
        }
        let flows = self.flows.lock().map(|f| f.len()).unwrap_or(0);
        let room = max_udp_flows();
        if flows >= room {
            warn_at_most_every_10s(&self.flows_full_warned, || {
                tracing::warn!(
                    "the Service proxy carries {room} UDP flows at most (a quarter of its descriptor limit): dropping datagrams that would start more"
                )
            });
            return;
        }
        let upstream = match self.pods.udp(endpoint).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::debug!(%endpoint, "a UDP socket to the endpoint: {e}");
                return;
            }
        };
        let last = Arc::new(Mutex::new(Instant::now()));
        if let Ok(mut f) = self.flows.lock() {
            f.insert(key, Flow { upstream: upstream.clone(), endpoint, last: last.clone() });
        }
        let _ = upstream.send_to(data, endpoint).await;
        let (me, reply, up) = (self.clone(), reply.clone(), upstream.clone());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(async move {
            loop {
                // A flow waits for its socket to be readable and takes a buffer only to
                // read what came: one held while waiting cost every flow 64 KiB (4,000
                // clients from ports of their own put 45 MiB on the server).
                match tokio::time::timeout(UDP_IDLE, up.readable()).await {
                    Ok(Ok(())) => {
                        let mut buf = Vec::with_capacity(DATAGRAM);
                        match up.try_recv_buf_from(&mut buf) {
                            Ok(_) => {
                                if let Ok(mut l) = last.lock() {
                                    *l = Instant::now();
                                }
                                let _ = reply.send_to(&buf, client).await;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {
                        if last.lock().map(|l| l.elapsed() >= UDP_IDLE).unwrap_or(true) {
                            break;
                        }
                    }
                }
            }
            if let Ok(mut f) = me.flows.lock() {
                f.remove(&key);
            }
            if let Ok(mut t) = me.tracked.lock() {
                t.remove(&id);
            }
        });
        if let (Some(service), Ok(mut t)) = (service, self.tracked.lock()) {
            t.insert(id, (service, endpoint, task.abort_handle()));
        }
    }

    /// Close the connections and flows whose endpoint has left its Service.
    pub fn prune(&self) {
        let present: HashSet<(Key, SocketAddrV4)> =
            self.table.ports().iter().flat_map(|p| p.endpoints.iter().map(|e| (p.key.clone(), e.addr)).collect::<Vec<_>>()).collect();
        let Ok(mut t) = self.tracked.lock() else { return };
        let mut gone = Vec::new();
        t.retain(|_, (key, endpoint, task)| {
            let keep = present.contains(&(key.clone(), *endpoint));
            if !keep {
                task.abort();
                gone.push(*endpoint);
            }
            keep
        });
        drop(t);
        if !gone.is_empty() {
            if let Ok(mut f) = self.flows.lock() {
                f.retain(|_, flow| !gone.contains(&flow.endpoint));
            }
        }
    }
}

/// What the host listens on for Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Listen {
    /// A ClusterIP (not external), load-balancer or external IP (external) at a port.
    Frontend(Protocol, SocketAddrV4, bool),
    /// A node port on one of the node's addresses.
    NodePort(Protocol, SocketAddrV4),
}

/// The host side of the proxy.
pub struct Proxy {
    forwarder: Arc<Forwarder>,
    node_ips: Vec<Ipv4Addr>,
    registry: Arc<Registry>,
}

impl Proxy {
    /// A proxy whose node ports listen on `node_ips`.
    pub fn new(forwarder: Arc<Forwarder>, registry: Arc<Registry>, node_ips: Vec<Ipv4Addr>) -> Proxy {
        Proxy { forwarder, node_ips, registry }
    }

    fn wanted(&self) -> (BTreeMap<Listen, Arc<ServicePort>>, Vec<Arc<ServicePort>>) {
        let mut want = BTreeMap::new();
        let mut sctp = Vec::new();
        for p in self.forwarder.table.ports() {
            if p.protocol == Protocol::Sctp {
                sctp.push(p);
                continue;
            }
            for f in &p.frontends {
                // Served by whatever listens there itself (the DNS server on its address).
                if self.forwarder.is_dns(*f) || p.endpoints.iter().any(|e| e.addr == *f) {
                    continue;
                }
                want.insert(Listen::Frontend(p.protocol, *f, !p.cluster_ips.contains(f.ip())), p.clone());
            }
            if let Some(np) = p.node_port {
                for ip in &self.node_ips {
                    want.insert(Listen::NodePort(p.protocol, SocketAddrV4::new(*ip, np)), p.clone());
                }
            }
        }
        (want, sctp)
    }

    /// Keep the listeners matching the Services until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut changed = self.forwarder.table.subscribe();
        let mut listening: BTreeMap<Listen, tokio::task::JoinHandle<()>> = BTreeMap::new();
        let mut failed: HashMap<Listen, Instant> = HashMap::new();
        let mut warned_sctp: HashSet<Key> = HashSet::new();
        let recorder = nanokube_apiserver::events::Recorder::new("kube-proxy", Some(&self.forwarder.table.node));
        loop {
            let (want, sctp) = self.wanted();
            listening.retain(|l, task| {
                let keep = want.contains_key(l) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for l in want.keys() {
                if listening.contains_key(l) || failed.get(l).is_some_and(|t| t.elapsed() < RETRY) {
                    continue;
                }
                match self.listen(*l).await {
                    Ok(task) => {
                        failed.remove(l);
                        listening.insert(*l, task);
                    }
                    Err(e) => {
                        if !failed.contains_key(l) {
                            tracing::warn!("the Service proxy cannot listen on {l:?}: {e}");
                        }
                        failed.insert(*l, Instant::now());
                    }
                }
            }
            failed.retain(|l, _| want.contains_key(l));
            for p in sctp {
                if warned_sctp.insert(p.key.clone()) {
                    let obj = serde_json::json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": p.key.1, "namespace": p.key.0}});
                    recorder
                        .record(
                            &*self.registry,
                            &obj,
                            None,
                            "Warning",
                            "SCTPNotSupported",
                            &format!("port {}/SCTP is not carried: nanokube's Service proxy carries TCP and UDP only", p.port),
                        )
                        .await;
                }
            }
            self.forwarder.prune();
            tokio::select! {
                _ = shutdown.changed() => break,
                r = changed.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(RETRY), if !failed.is_empty() => {}
            }
        }
        for (_, t) in listening {
            t.abort();
        }
    }

    async fn listen(&self, l: Listen) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let (protocol, addr, external) = match l {
            Listen::Frontend(p, a, external) => (p, a, external),
            Listen::NodePort(p, a) => (p, a, true),
        };
        let fw = self.forwarder.clone();
        let lookup = move |fw: &Forwarder| match l {
            Listen::Frontend(p, a, _) => fw.table.frontend(p, a),
            Listen::NodePort(p, a) => fw.table.node_port(p, a.port()),
        };
        Ok(match protocol {
            Protocol::Udp => {
                let socket = Arc::new(UdpSocket::bind(addr).await?);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; DATAGRAM];
                    loop {
                        let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                        if let Some(port) = lookup(&fw) {
                            fw.udp(&socket, from, &buf[..n], addr, UdpTarget::Service(port, external), None).await;
                        }
                    }
                })
            }
            _ => {
                let listener = nanokube_apiserver::server::listen_async(addr.into())?;
                tokio::spawn(async move {
                    let mut failed = AcceptBackoff::new("a Service port");
                    loop {
                        let (inbound, from) = failed.accept(|| listener.accept()).await;
                        match lookup(&fw) {
                            Some(port) => fw.tcp(inbound, port, from.ip(), external),
                            None => {
                                let _ = inbound.set_zero_linger();
                            }
                        }
                    }
                })
            }
        })
    }
}
