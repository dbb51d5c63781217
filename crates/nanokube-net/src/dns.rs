//! Cluster DNS, as CoreDNS's `kubernetes` plugin answers (with `pods insecure`, TTL 5 s),
//! served by hickory-server over UDP and TCP at the `kube-dns` Service's address, and
//! answered in process for traffic captured in pods (so each server's pods ask their own
//! server, whatever else listens on the host).
//!
//! - `<svc>.<ns>.svc.<domain>`: A of the ClusterIP; a headless Service's ready endpoints;
//!   ExternalName: a CNAME, followed (in the zone, or through the upstream resolvers).
//! - `<hostname>.<svc>.<ns>.svc.<domain>`: an endpoint with that hostname (a StatefulSet
//!   pod's), or whose address is that name with dashes.
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>` (and the Service's own name): SRV records
//!   with the targets' A records as additionals.
//! - `<a-b-c-d>.<ns>.pod.<domain>`: A a.b.c.d.
//! - PTR of ClusterIPs and endpoint addresses; other 127.0.0.0/8 reverse names are the
//!   cluster's and answer NXDOMAIN.
//! - A name in the zone that does not exist: NXDOMAIN; one that exists without the asked
//!   type: NODATA (NOERROR, no answer); both with the zone's SOA as authority.
//! - Everything else goes to the upstream resolvers (by default the host's
//!   `/etc/resolv.conf`), as CoreDNS's `forward . /etc/resolv.conf`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::table::{Protocol, ServiceRecord, ServiceTable};

/// Every answer's TTL (CoreDNS's `kubernetes` plugin default `ttl 5`).
pub const TTL: u32 = 5;
/// How long an upstream resolver may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest message read over TCP (the length prefix's limit) or UDP.
const MAX_MESSAGE: usize = 65_535;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The cluster DNS server.
pub struct Dns {
    /// Where it answers (the `kube-dns` Service's ClusterIP, port 53).
    pub addr: SocketAddrV4,
    domain: Name,
    table: Arc<ServiceTable>,
    upstreams: Vec<SocketAddr>,
}

/// What a name resolves to.
enum Outcome {
    Answer(Vec<Record>, Vec<Record>),
    NoData,
    NxDomain,
    Forward,
}

impl Dns {
    /// A server at `addr` for zone `domain` (`cluster.local`), forwarding other names to
    /// `upstreams`.
    pub fn new(addr: SocketAddrV4, domain: &str, table: Arc<ServiceTable>, upstreams: Vec<SocketAddr>) -> Result<Arc<Dns>, String> {
        let domain = Name::from_ascii(format!("{}.", domain.trim_end_matches('.'))).map_err(|e| format!("cluster domain {domain}: {e}"))?;
        Ok(Arc::new(Dns { addr, domain: domain.to_lowercase(), table, upstreams }))
    }

    /// The host's resolvers, from `/etc/resolv.conf`.
    pub fn host_resolvers() -> Vec<SocketAddr> {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        conf.lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    }

    /// Serve at [`Dns::addr`] over UDP and TCP until `shutdown`.
    pub async fn serve(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
        let udp = tokio::net::UdpSocket::bind(self.addr).await.map_err(|e| format!("cluster DNS on {}/udp: {e}", self.addr))?;
        let tcp = nanokube_apiserver::server::listen_async(self.addr.into()).map_err(|e| format!("cluster DNS on {}/tcp: {e}", self.addr))?;
        let mut server = hickory_server::Server::new(Handler(self.clone()));
        server.register_socket(udp);
        // TCP is accepted here rather than by hickory's listener, which tries again at
        // once when accept fails and so spins a core while descriptors are exhausted.
        let me = self.clone();
        let tcp_task = tokio::spawn(async move {
            let mut failed = nanokube_apiserver::server::AcceptBackoff::new("the cluster DNS");
            loop {
                let (stream, _) = failed.accept(|| tcp.accept()).await;
                tokio::spawn(me.clone().serve_tcp(stream));
            }
        });
        let _ = shutdown.changed().await;
        tcp_task.abort();
        let _ = server.shutdown_gracefully().await;
        Ok(())
    }

    /// The answer to one query message `data` from `client`, or `None` for what is not
    /// a query.
    pub fn answer_bytes(self: &Arc<Self>, data: &[u8], client: SocketAddr) -> Option<impl std::future::Future<Output = Option<Vec<u8>>> + Send + 'static> {
        let query = Message::from_vec(data).ok()?;
        if query.metadata.message_type != MessageType::Query {
            return None;
        }
        let (me, raw) = (self.clone(), data.to_vec());
        Some(async move {
            let mut response = me.respond(&query, &raw).await;
            tracing::trace!(%client, "cluster DNS answered in process");
            if let Some(e) = &query.edns {
                response.set_edns(e.clone());
            }
            response.to_vec().ok()
        })
    }

    /// Answer DNS over TCP on `stream` (two-byte length prefixes) until it goes quiet:
    /// each message must arrive whole within [`TCP_IDLE`] (a client that sends a length
    /// and then trickles is cut off), and the buffer is the message's own size.
    pub async fn serve_tcp(self: Arc<Self>, mut stream: tokio::net::TcpStream) {
        let peer = stream.peer_addr().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        loop {
            let message = tokio::time::timeout(TCP_IDLE, async {
                let mut buf = vec![0u8; usize::from(stream.read_u16().await?)];
                stream.read_exact(&mut buf).await?;
                Ok::<_, std::io::Error>(buf)
            })
            .await;
            let Ok(Ok(message)) = message else { return };
            let Some(answer) = self.answer_bytes(&message, peer) else { return };
            let Some(answer) = answer.await else { return };
            let Ok(n) = u16::try_from(answer.len()) else { return };
            if stream.write_u16(n).await.is_err() || stream.write_all(&answer).await.is_err() {
                return;
            }
        }
    }

    fn soa(&self) -> Record {
        let ns = Name::from_ascii("ns.dns").ok().and_then(|n| n.append_domain(&self.domain).ok()).unwrap_or_else(|| self.domain.clone());
        let mbox = Name::from_ascii("hostmaster").ok().and_then(|n| n.append_domain(&self.domain).ok()).unwrap_or_else(|| self.domain.clone());
        Record::from_rdata(self.domain.clone(), TTL, RData::SOA(SOA::new(ns, mbox, serial(), 7200, 1800, 86400, TTL)))
    }

    /// The response to `query` (whose bytes are `raw`, for forwarding).
    async fn respond(&self, query: &Message, raw: &[u8]) -> Message {
        let mut metadata = Metadata::response_from_request(&query.metadata);
        metadata.recursion_available = true;
        let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        let Some(q) = query.queries.first().filter(|_| query.queries.len() == 1 && query.metadata.op_code == OpCode::Query) else {
            metadata.response_code = if query.metadata.op_code == OpCode::Query { ResponseCode::FormErr } else { ResponseCode::NotImp };
            response.metadata = metadata;
            response.queries = query.queries.clone();
            return response;
        };
        response.queries = vec![q.clone()];
        let name = q.name().to_lowercase();
        match self.resolve(&name, q.query_type()).await {
            Outcome::Answer(answers, additionals) => {
                metadata.authoritative = true;
                response.answers = answers;
                response.additionals = additionals;
            }
            Outcome::NoData => {
                metadata.authoritative = true;
                response.authorities = vec![self.soa()];
            }
            Outcome::NxDomain => {
                metadata.authoritative = true;
                metadata.response_code = ResponseCode::NXDomain;
                response.authorities = vec![self.soa()];
            }
            Outcome::Forward => match self.forward(raw).await {
                Some(mut upstream) => {
                    upstream.metadata.id = query.metadata.id;
                    return upstream;
                }
                None => metadata.response_code = ResponseCode::ServFail,
            },
        }
        response.metadata = metadata;
        response
    }

    /// Ask the upstream resolvers, each in turn.
    async fn forward(&self, raw: &[u8]) -> Option<Message> {
        for upstream in &self.upstreams {
            let bind: SocketAddr = if upstream.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
            let Ok(socket) = tokio::net::UdpSocket::bind(bind).await else { continue };
            if socket.connect(upstream).await.is_err() || socket.send(raw).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; MAX_MESSAGE];
            if let Ok(Ok(n)) = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await {
                if let Ok(m) = Message::from_vec(&buf[..n]) {
                    return Some(m);
                }
            }
        }
        None
    }

    fn name(&self, relative: &str) -> Option<Name> {
        Name::from_ascii(relative).ok()?.append_domain(&self.domain).ok()
    }

    fn a(&self, name: &Name, ip: Ipv4Addr) -> Record {
        Record::from_rdata(name.clone(), TTL, RData::A(A(ip)))
    }

    async fn resolve(&self, name: &Name, qtype: RecordType) -> Outcome {
        if let Some(ip) = reverse_ipv4(name) {
            return self.reverse(name, ip, qtype);
        }
        if !self.domain.zone_of(name) {
            return Outcome::Forward;
        }
        let labels: Vec<String> =
            name.iter().take(usize::from(name.num_labels() - self.domain.num_labels())).map(|l| String::from_utf8_lossy(l).to_string()).collect();
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        match l.as_slice() {
            [] => match qtype {
                RecordType::SOA => Outcome::Answer(vec![self.soa()], vec![]),
                _ => Outcome::NoData,
            },
            ["svc"] | ["pod"] => Outcome::NoData,
            [ns, "svc"] => {
                if self.table.has_namespace(ns) {
                    Outcome::NoData
                } else {
                    Outcome::NxDomain
                }
            }
            [ip, _ns, "pod"] => match dashed_ipv4(ip) {
                Some(addr) if qtype == RecordType::A => Outcome::Answer(vec![self.a(name, addr)], vec![]),
                Some(_) => Outcome::NoData,
                None => Outcome::NxDomain,
            },
            [svc, ns, "svc"] => match self.table.record(ns, svc) {
                None => Outcome::NxDomain,
                Some(r) => self.service(name, svc, ns, &r, qtype, None).await,
            },
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => match self.table.record(ns, svc) {
                None => Outcome::NxDomain,
                Some(r) => {
                    let wanted = (&port[1..], &proto[1..]);
                    if !r.ports.iter().any(|(n, p, _)| n == wanted.0 && p.as_str().eq_ignore_ascii_case(wanted.1)) {
                        return Outcome::NxDomain;
                    }
                    self.service(name, svc, ns, &r, qtype, Some(wanted)).await
                }
            },
            [host, svc, ns, "svc"] => {
                let Some(r) = self.table.record(ns, svc) else { return Outcome::NxDomain };
                let found = r.endpoints.iter().find(|e| e.hostname.as_deref() == Some(*host) || dashed(*e.addr.ip()) == *host);
                match (found, qtype) {
                    (Some(e), RecordType::A) => Outcome::Answer(vec![self.a(name, *e.addr.ip())], vec![]),
                    (Some(_), _) => Outcome::NoData,
                    (None, _) => Outcome::NxDomain,
                }
            }
            _ => Outcome::NxDomain,
        }
    }

    /// A Service's name (`srv`: its `_port._proto` SRV name).
    async fn service(&self, name: &Name, svc: &str, ns: &str, r: &ServiceRecord, qtype: RecordType, srv: Option<(&str, &str)>) -> Outcome {
        if let Some(target) = &r.external_name {
            if srv.is_some() {
                return Outcome::NoData;
            }
            let Ok(target_name) = Name::from_ascii(format!("{}.", target.trim_end_matches('.'))) else { return Outcome::NxDomain };
            let mut answers = vec![Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target_name.clone())))];
            if qtype != RecordType::CNAME {
                // Follow the CNAME as CoreDNS does, so stub resolvers get addresses.
                answers.extend(self.follow(&target_name, qtype).await);
            }
            return Outcome::Answer(answers, vec![]);
        }
        let headless = r.cluster_ips.is_empty();
        match qtype {
            RecordType::A if srv.is_none() => {
                if headless {
                    if r.endpoints.is_empty() {
                        return Outcome::NxDomain;
                    }
                    Outcome::Answer(r.endpoints.iter().map(|e| self.a(name, *e.addr.ip())).collect(), vec![])
                } else {
                    Outcome::Answer(r.cluster_ips.iter().map(|ip| self.a(name, *ip)).collect(), vec![])
                }
            }
            RecordType::SRV => {
                let ports: Vec<&(String, Protocol, u16)> =
                    r.ports.iter().filter(|(n, p, _)| srv.is_none_or(|(wn, wp)| n == wn && p.as_str().eq_ignore_ascii_case(wp))).collect();
                let (mut answers, mut additionals) = (Vec::new(), Vec::new());
                for (_, _, port) in ports {
                    if headless {
                        let weight = u16::try_from(100 / r.endpoints.len().max(1)).unwrap_or(100);
                        for e in &r.endpoints {
                            let host = e.hostname.clone().unwrap_or_else(|| dashed(*e.addr.ip()));
                            let Some(target) = self.name(&format!("{host}.{svc}.{ns}.svc")) else { continue };
                            answers.push(Record::from_rdata(name.clone(), TTL, RData::SRV(SRV::new(0, weight, *port, target.clone()))));
                            additionals.push(self.a(&target, *e.addr.ip()));
                        }
                    } else if let Some(target) = self.name(&format!("{svc}.{ns}.svc")) {
                        answers.push(Record::from_rdata(name.clone(), TTL, RData::SRV(SRV::new(0, 100, *port, target.clone()))));
                        additionals.extend(r.cluster_ips.iter().map(|ip| self.a(&target, *ip)));
                    }
                }
                if answers.is_empty() {
                    Outcome::NoData
                } else {
                    Outcome::Answer(answers, additionals)
                }
            }
            _ => Outcome::NoData,
        }
    }

    /// The records of `target` of type `qtype` (an ExternalName's target).
    async fn follow(&self, target: &Name, qtype: RecordType) -> Vec<Record> {
        if self.domain.zone_of(target) {
            return match Box::pin(self.resolve(&target.to_lowercase(), qtype)).await {
                Outcome::Answer(a, _) => a,
                _ => Vec::new(),
            };
        }
        let mut q = Message::new(fastrand_id(), MessageType::Query, OpCode::Query);
        q.metadata.recursion_desired = true;
        q.add_query(hickory_server::proto::op::Query::query(target.clone(), qtype));
        let Ok(raw) = q.to_vec() else { return Vec::new() };
        self.forward(&raw).await.map(|m| m.answers).unwrap_or_default()
    }

    fn reverse(&self, name: &Name, ip: Ipv4Addr, qtype: RecordType) -> Outcome {
        let found = self.table.reverse(ip);
        let Some(((ns, svc), endpoint)) = found else {
            // The cluster's own addresses are all in 127.0.0.0/8; other reverse names are
            // the world's.
            return if ip.is_loopback() { Outcome::NxDomain } else { Outcome::Forward };
        };
        if qtype != RecordType::PTR {
            return Outcome::NoData;
        }
        let relative = match endpoint {
            None => format!("{svc}.{ns}.svc"),
            Some(e) => format!("{}.{svc}.{ns}.svc", e.hostname.clone().unwrap_or_else(|| dashed(ip))),
        };
        match self.name(&relative) {
            Some(target) => Outcome::Answer(vec![Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(target)))], vec![]),
            None => Outcome::NxDomain,
        }
    }
}

/// The handler hickory-server calls for what arrives on the DNS address.
struct Handler(Arc<Dns>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response_handle: R) -> ResponseInfo {
        let serve_failed = |request: &Request| {
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_server::proto::op::Header { metadata, counts: Default::default() })
        };
        let Ok(query) = Message::from_vec(request.as_slice()) else { return serve_failed(request) };
        let response = self.0.respond(&query, request.as_slice()).await;
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = &request.edns {
            builder.edns(e);
        }
        let soa: Vec<Record> = Vec::new();
        let built = builder.build(response.metadata, response.answers.iter(), response.authorities.iter(), soa.iter(), response.additionals.iter());
        match response_handle.send_response(built).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("sending a DNS response: {e}");
                serve_failed(request)
            }
        }
    }
}

fn serial() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1)
}

fn fastrand_id() -> u16 {
    (serial() ^ std::process::id()) as u16
}

/// `1-2-3-4` → 1.2.3.4.
fn dashed_ipv4(s: &str) -> Option<Ipv4Addr> {
    Ipv4Addr::from_str(&s.replace('-', ".")).ok().filter(|_| s.split('-').count() == 4)
}

/// 1.2.3.4 → `1-2-3-4`.
fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

/// `d.c.b.a.in-addr.arpa.` → a.b.c.d.
fn reverse_ipv4(name: &Name) -> Option<Ipv4Addr> {
    let s = name.to_ascii().to_ascii_lowercase();
    let digits = s.trim_end_matches('.').strip_suffix(".in-addr.arpa")?;
    let parts: Vec<u8> = digits.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [d, c, b, a] = parts.as_slice() else { return None };
    Some(Ipv4Addr::new(*a, *b, *c, *d))
}

/// One question to a DNS server over UDP (TCP when the answer is truncated), for people
/// on the host (`nanokube dns lookup`): `name` is taken as fully qualified, as `dig`
/// does. Returns the response code's name and the answer records in zone-file form.
pub fn lookup(server: SocketAddr, name: &str, qtype: &str, timeout: Duration) -> Result<(String, Vec<String>), String> {
    let qtype = RecordType::from_str(&qtype.to_ascii_uppercase()).map_err(|_| format!("unknown record type {qtype:?}"))?;
    let fqdn = if name.ends_with('.') { name.to_string() } else { format!("{name}.") };
    let target = Name::from_ascii(&fqdn).map_err(|e| format!("{name:?}: {e}"))?;
    let mut q = Message::new(fastrand_id(), MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(hickory_server::proto::op::Query::query(target, qtype));
    let raw = q.to_vec().map_err(|e| e.to_string())?;
    let sock = std::net::UdpSocket::bind(if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    sock.send_to(&raw, server).map_err(|e| format!("{server}: {e}"))?;
    let mut buf = vec![0u8; 65535];
    let reply = loop {
        let (n, from) = sock.recv_from(&mut buf).map_err(|e| format!("no answer from {server}: {e}"))?;
        let Ok(m) = Message::from_vec(&buf[..n]) else { continue };
        if from == server && m.metadata.id == q.metadata.id {
            break m;
        }
    };
    let reply = if reply.metadata.truncation {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect_timeout(&server, timeout).map_err(|e| format!("{server}: {e}"))?;
        tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let mut framed = (raw.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&raw);
        tcp.write_all(&framed).map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).map_err(|e| e.to_string())?;
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut body).map_err(|e| e.to_string())?;
        Message::from_vec(&body).map_err(|e| e.to_string())?
    } else {
        reply
    };
    Ok((format!("{:?}", reply.metadata.response_code).to_uppercase(), reply.answers.iter().map(|r| r.to_string()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dns() -> Arc<Dns> {
        let t = ServiceTable::new("n1");
        for obj in [
            json!({"kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "127.96.0.5", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            json!({"kind": "Service", "metadata": {"name": "db", "namespace": "default"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}}),
            json!({"kind": "EndpointSlice", "addressType": "IPv4", "metadata": {"name": "db-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "db"}},
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.244.0.7"], "hostname": "db-0", "conditions": {"ready": true}}, {"addresses": ["127.244.0.8"], "conditions": {"ready": true}}]}),
            json!({"kind": "Service", "metadata": {"name": "ext", "namespace": "default"}, "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}}),
        ] {
            t.apply(&obj, false);
        }
        Dns::new(SocketAddrV4::new(Ipv4Addr::new(127, 96, 0, 10), 53), "cluster.local", t, vec![]).unwrap()
    }

    async fn ask(d: &Dns, name: &str, qtype: RecordType) -> Message {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(hickory_server::proto::op::Query::query(Name::from_ascii(name).unwrap(), qtype));
        let raw = q.to_vec().unwrap();
        d.respond(&q, &raw).await
    }

    fn rdata(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[tokio::test]
    async fn the_kubernetes_plugin_answers() {
        let d = dns();
        let m = ask(&d, "web.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(rdata(&m), ["127.96.0.5"]);
        assert!(m.metadata.authoritative);
        let m = ask(&d, "web.default.svc.cluster.local.", RecordType::AAAA).await;
        assert_eq!((m.metadata.response_code, m.answers.len(), m.authorities.len()), (ResponseCode::NoError, 0, 1), "NODATA with the SOA");
        let m = ask(&d, "nope.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let mut headless = rdata(&ask(&d, "db.default.svc.cluster.local.", RecordType::A).await);
        headless.sort();
        assert_eq!(headless, ["127.244.0.7", "127.244.0.8"]);
        assert_eq!(rdata(&ask(&d, "db-0.db.default.svc.cluster.local.", RecordType::A).await), ["127.244.0.7"]);
        assert_eq!(rdata(&ask(&d, "127-244-0-8.db.default.svc.cluster.local.", RecordType::A).await), ["127.244.0.8"]);
        assert_eq!(rdata(&ask(&d, "127-0-0-9.default.pod.cluster.local.", RecordType::A).await), ["127.0.0.9"]);
        let srv = ask(&d, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV).await;
        assert_eq!(rdata(&srv), ["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(srv.additionals.len(), 1);
        assert_eq!(ask(&d, "_http._udp.web.default.svc.cluster.local.", RecordType::SRV).await.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(rdata(&ask(&d, "ext.default.svc.cluster.local.", RecordType::A).await), ["web.default.svc.cluster.local.", "127.96.0.5"]);
        assert_eq!(rdata(&ask(&d, "5.0.96.127.in-addr.arpa.", RecordType::PTR).await), ["web.default.svc.cluster.local."]);
        assert_eq!(rdata(&ask(&d, "7.0.244.127.in-addr.arpa.", RecordType::PTR).await), ["db-0.db.default.svc.cluster.local."]);
        assert_eq!(ask(&d, "9.9.96.127.in-addr.arpa.", RecordType::PTR).await.metadata.response_code, ResponseCode::NXDomain);
        // No upstream: a name outside the zone fails as SERVFAIL.
        assert_eq!(ask(&d, "example.test.", RecordType::A).await.metadata.response_code, ResponseCode::ServFail);
    }
}
