//! The built-in ingress controller: Ingresses (networking.k8s.io/v1) of the IngressClass
//! `nanokube` (controller `nanokube.io/ingress`, the default class) served over HTTP and
//! HTTPS on the node (`127.0.0.1:80` and `:443` unless configured otherwise).
//!
//! - Routing as the Ingress API defines it: a rule's exact host before wildcard hosts
//!   (`*.example.com`, one label) before rules without a host; within those, the longest
//!   matching path, `Exact` before `Prefix` at equal length; `Prefix` matches whole path
//!   elements (`/foo` matches `/foo/bar`, not `/foobar`); `ImplementationSpecific` is
//!   `Prefix`. No rule: an Ingress's `defaultBackend`, else 404.
//! - A backend is a Service port (number or name) and an endpoint chosen by the Service
//!   proxy's table; no ready endpoint: 503. Requests keep their Host and credentials and
//!   gain `X-Forwarded-For/-Host/-Proto`; upgrades (WebSocket) pass through when the
//!   backend answers `101`.
//! - TLS: the certificates of `spec.tls` Secrets (`kubernetes.io/tls`) chosen by SNI; a
//!   name no Secret covers gets the first certificate.
//! - Status: each served Ingress's `status.loadBalancer.ingress` is the address served.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use nanokube_api::{meta, resources};
use nanokube_apiserver::http::Body;
use nanokube_apiserver::registry::{ListOptions, Registry, WriteOptions};
use nanokube_store::follow::{follow, Change};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::proxy::Forwarder;

/// The IngressClass served.
pub const CLASS: &str = "nanokube";
/// Its controller name.
pub const CONTROLLER: &str = "nanokube.io/ingress";

/// Hop-by-hop headers, not passed on (an upgrade's are put back).
const HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"];

#[derive(Debug, Clone, PartialEq)]
struct Backend {
    namespace: String,
    service: String,
    number: Option<u16>,
    port_name: Option<String>,
}

#[derive(Debug, Clone)]
struct PathRule {
    exact: bool,
    path: String,
    backend: Backend,
}

#[derive(Debug, Clone, Default)]
struct Routes {
    /// Host ("" for any) → its paths, in the order the Ingresses were created.
    hosts: Vec<(String, Vec<PathRule>)>,
    default: Option<Backend>,
}

impl Routes {
    /// The backend for `host` and `path`.
    fn route(&self, host: &str, path: &str) -> Option<&Backend> {
        let exact = |h: &str| h == host;
        let wildcard = |h: &str| h.strip_prefix("*.").is_some_and(|rest| host.split_once('.').is_some_and(|(first, tail)| !first.is_empty() && tail == rest));
        let any = |h: &str| h.is_empty();
        for matches in [&exact as &dyn Fn(&str) -> bool, &wildcard, &any] {
            let mut best: Option<&PathRule> = None;
            for (h, rules) in &self.hosts {
                if !matches(h) {
                    continue;
                }
                for r in rules.iter().filter(|r| path_matches(r, path)) {
                    let better = best.is_none_or(|b| r.path.len() > b.path.len() || (r.path.len() == b.path.len() && r.exact && !b.exact));
                    if better {
                        best = Some(r);
                    }
                }
            }
            if let Some(b) = best {
                return Some(&b.backend);
            }
        }
        self.default.as_ref()
    }
}

fn path_matches(rule: &PathRule, path: &str) -> bool {
    if rule.exact {
        return path == rule.path;
    }
    let prefix = rule.path.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

fn backend(namespace: &str, b: &Value) -> Option<Backend> {
    let svc = b.get("service")?;
    Some(Backend {
        namespace: namespace.to_string(),
        service: svc.get("name")?.as_str()?.to_string(),
        number: svc.pointer("/port/number").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()),
        port_name: svc.pointer("/port/name").and_then(Value::as_str).map(String::from),
    })
}

/// Whether this controller serves `ing` (its class is ours; no class at all counts as
/// ours, since the class is the default one the admission would have set).
fn ours(ing: &Value) -> bool {
    let class = ing
        .pointer("/spec/ingressClassName")
        .and_then(Value::as_str)
        .or_else(|| ing.pointer("/metadata/annotations/kubernetes.io~1ingress.class").and_then(Value::as_str));
    class.is_none_or(|c| c == CLASS)
}

/// How the controller serves.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// The HTTP address (`127.0.0.1:80`).
    pub http: SocketAddr,
    /// The HTTPS address (`127.0.0.1:443`).
    pub https: SocketAddr,
}

/// The ingress controller.
pub struct IngressController {
    registry: Arc<Registry>,
    forwarder: Arc<Forwarder>,
    routes: RwLock<Arc<Routes>>,
    certs: Arc<Certs>,
    config: IngressConfig,
}

/// Certificates by host name, from the served Ingresses' TLS Secrets, and the one for
/// names none covers.
#[derive(Debug, Default)]
struct Certs {
    by_host: RwLock<CertMap>,
}

#[derive(Debug, Default)]
struct CertMap {
    hosts: HashMap<String, Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for Certs {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let m = self.by_host.read().ok()?;
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let wildcard = name.as_deref().and_then(|n| n.split_once('.')).map(|(_, rest)| format!("*.{rest}"));
        name.and_then(|n| m.hosts.get(&n).cloned()).or_else(|| wildcard.and_then(|w| m.hosts.get(&w).cloned())).or_else(|| m.fallback.clone())
    }
}

fn certified_key(secret: &Value) -> Option<Arc<CertifiedKey>> {
    use base64::Engine as _;
    let decode = |k: &str| base64::engine::general_purpose::STANDARD.decode(secret.pointer(&format!("/data/{k}"))?.as_str()?).ok();
    let (cert, key) = (decode("tls.crt")?, decode("tls.key")?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert).collect::<Result<_, _>>().ok()?;
    let key = PrivateKeyDer::from_pem_slice(&key).ok()?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).ok()?;
    Some(Arc::new(CertifiedKey::new(chain, signer)))
}

impl IngressController {
    /// A controller for `config`, reaching backends through `forwarder`.
    pub fn new(registry: Arc<Registry>, forwarder: Arc<Forwarder>, config: IngressConfig) -> Arc<IngressController> {
        Arc::new(IngressController { registry, forwarder, routes: RwLock::default(), certs: Arc::default(), config })
    }

    /// Ensure the IngressClass, keep routes, certificates and statuses current and serve
    /// until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        if let Some(def) = resources::find("networking.k8s.io", "v1", "ingressclasses") {
            let class = json!({"metadata": {"name": CLASS, "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}}, "spec": {"controller": CONTROLLER}});
            if let Err(e) = self.registry.create(def, "", class, &WriteOptions::default()).await {
                if e.code != 409 {
                    tracing::warn!("creating the IngressClass {CLASS}: {}", e.message);
                }
            }
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let store = self.registry.store().clone();
        let start = store.current_revision();
        let _ = tx.send(());
        let mut followers = Vec::new();
        for (group, plural) in [("networking.k8s.io", "ingresses"), ("", "secrets")] {
            let Some(def) = resources::find(group, "v1", plural) else { continue };
            let (store, tx, sd) = (store.clone(), tx.clone(), shutdown.clone());
            followers.push(tokio::spawn(async move {
                follow(store, &def.key_prefix(), start, sd, |change| {
                    // Secrets matter only as TLS certificates.
                    if let Change::Event(ev) = change {
                        if plural == "secrets" && !ev.kv.value.windows(18).any(|w| w == b"kubernetes.io/tls\"") {
                            return true;
                        }
                    }
                    tx.send(()).is_ok()
                })
                .await
            }));
        }
        let mut servers = Vec::new();
        let me = self.clone();
        match nanokube_apiserver::server::listen_async(self.config.http) {
            Ok(l) => servers.push(tokio::spawn(nanokube_apiserver::server::serve_plain_with(l, shutdown.clone(), move |info, req| {
                let me = me.clone();
                async move { me.handle(req, info.peer, "http").await }
            }))),
            Err(e) => tracing::warn!("the ingress controller cannot listen on {}: {e}", self.config.http),
        }
        let me = self.clone();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_no_client_auth().with_cert_resolver(self.certs.clone()));
        match (nanokube_apiserver::server::listen_async(self.config.https), tls) {
            (Ok(l), Ok(mut tls)) => {
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                servers.push(tokio::spawn(nanokube_apiserver::server::serve_with(l, Arc::new(tls), shutdown.clone(), move |info, req| {
                    let me = me.clone();
                    async move { me.handle(req, info.peer, "https").await }
                })));
            }
            (Err(e), _) => tracing::warn!("the ingress controller cannot listen on {}: {e}", self.config.https),
            (_, Err(e)) => tracing::warn!("the ingress controller's TLS: {e}"),
        }
        let mut shutdown = shutdown;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                r = rx.recv() => if r.is_none() { break },
            }
            while rx.try_recv().is_ok() {}
            self.reload().await;
        }
        for t in followers.into_iter().chain(servers) {
            t.abort();
        }
    }

    /// Rebuild routes and certificates from the served Ingresses and write their status.
    async fn reload(&self) {
        let Some(def) = resources::find("networking.k8s.io", "v1", "ingresses") else { return };
        let Ok(list) = self.registry.list(def, None, &ListOptions::default()) else { return };
        let mut items: Vec<Value> = list.items.iter().map(|o| o.to_value()).filter(ours).collect();
        items.sort_by(|a, b| {
            let created = |v: &Value| v.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("").to_string();
            created(a).cmp(&created(b)).then_with(|| meta::name(a).cmp(meta::name(b)))
        });
        let mut routes = Routes::default();
        let mut certs: HashMap<String, Arc<CertifiedKey>> = HashMap::new();
        let mut first_cert = None;
        let secrets = resources::find("", "v1", "secrets");
        for ing in &items {
            let ns = meta::namespace(ing);
            if routes.default.is_none() {
                routes.default = ing.pointer("/spec/defaultBackend").and_then(|b| backend(ns, b));
            }
            for rule in ing.pointer("/spec/rules").and_then(Value::as_array).into_iter().flatten() {
                let host = rule.get("host").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
                let paths: Vec<PathRule> = rule
                    .pointer("/http/paths")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        Some(PathRule {
                            exact: p.get("pathType").and_then(Value::as_str) == Some("Exact"),
                            path: p.get("path").and_then(Value::as_str).unwrap_or("/").to_string(),
                            backend: backend(ns, p.get("backend")?)?,
                        })
                    })
                    .collect();
                routes.hosts.push((host, paths));
            }
            for tls in ing.pointer("/spec/tls").and_then(Value::as_array).into_iter().flatten() {
                let Some(name) = tls.get("secretName").and_then(Value::as_str) else { continue };
                let Some(key) = secrets.and_then(|d| self.registry.get(d, ns, name).ok()).and_then(|s| certified_key(s.value())) else {
                    tracing::debug!(ingress = %meta::name(ing), "TLS Secret {ns}/{name} is missing or not a kubernetes.io/tls pair");
                    continue;
                };
                first_cert.get_or_insert_with(|| key.clone());
                for h in tls.get("hosts").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                    certs.entry(h.to_ascii_lowercase()).or_insert_with(|| key.clone());
                }
            }
        }
        if let Ok(mut r) = self.routes.write() {
            *r = Arc::new(routes);
        }
        if let Ok(mut c) = self.certs.by_host.write() {
            *c = CertMap { hosts: certs, fallback: first_cert };
        }
        let status = json!({"ingress": [{"ip": self.config.http.ip().to_string()}]});
        for ing in &items {
            if ing.pointer("/status/loadBalancer") == Some(&status) {
                continue;
            }
            crate::loadbalancer::write_status(&self.registry, def, ing, status.clone()).await;
        }
    }

    /// Answer one request.
    async fn handle(&self, mut req: Request<hyper::body::Incoming>, peer: SocketAddr, scheme: &'static str) -> Response<Body> {
        let host_header = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(String::from).or_else(|| req.uri().host().map(String::from));
        let host = host_header.as_deref().unwrap_or("").rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| host_header.clone().unwrap_or_default());
        let host = host.to_ascii_lowercase();
        let routes = self.routes.read().map(|r| r.clone()).unwrap_or_default();
        let Some(b) = routes.route(&host, req.uri().path()).cloned() else {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        };
        let table = &self.forwarder.table;
        let Some(port) = table.service_port(&b.namespace, &b.service, b.number, b.port_name.as_deref()) else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable: no such Service port\n");
        };
        let Some(endpoint) = port.pick(peer.ip(), false, &table.node) else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable: no ready endpoint\n");
        };
        let stream = match self.forwarder.pods.connect(endpoint).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%endpoint, "ingress backend: {e}");
                return text(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n");
            }
        };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await else {
            return text(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n");
        };
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let upgrade_to = req.headers().get(http::header::UPGRADE).cloned();
        let client_upgrade = upgrade_to.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        for h in HOP {
            parts.headers.remove(*h);
        }
        if let Some(to) = &upgrade_to {
            parts.headers.insert(http::header::CONNECTION, HeaderValue::from_static("Upgrade"));
            parts.headers.insert(http::header::UPGRADE, to.clone());
        }
        let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        for (name, value) in [
            ("x-forwarded-for", forwarded_for),
            ("x-real-ip", peer.ip().to_string()),
            ("x-forwarded-host", host_header.unwrap_or_default()),
            ("x-forwarded-proto", scheme.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                parts.headers.insert(name, v);
            }
        }
        // The backend sees an origin-form request.
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        parts.uri = path.parse().unwrap_or_default();
        parts.version = http::Version::HTTP_11;
        let mut resp = match sender.send_request(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%endpoint, "ingress backend: {e}");
                return text(StatusCode::BAD_GATEWAY, "502 Bad Gateway\n");
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client) = client_upgrade {
                let backend = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    let (Ok(client), Ok(backend)) = (client.await, backend.await) else { return };
                    let (mut c, mut b) = (hyper_util::rt::TokioIo::new(client), hyper_util::rt::TokioIo::new(backend));
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                });
                let mut answer = Response::new(nanokube_apiserver::http::full(Bytes::new()));
                *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                *answer.headers_mut() = resp.headers().clone();
                return answer;
            }
        }
        let (mut head, incoming) = resp.into_parts();
        for h in HOP {
            head.headers.remove(*h);
        }
        Response::from_parts(head, nanokube_apiserver::aggregator::EndOnError(incoming).boxed())
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(nanokube_apiserver::http::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The addresses served by default: 127.0.0.1 ports 80 and 443.
pub fn default_addresses() -> (SocketAddr, SocketAddr) {
    (SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 80), SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 443))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(exact: bool, path: &str, svc: &str) -> PathRule {
        PathRule { exact, path: path.into(), backend: Backend { namespace: "ns".into(), service: svc.into(), number: Some(80), port_name: None } }
    }

    #[test]
    fn routing_follows_the_ingress_api() {
        let routes = Routes {
            hosts: vec![
                ("a.example".into(), vec![rule(false, "/", "a-root"), rule(false, "/api", "a-api"), rule(true, "/api", "a-api-exact")]),
                ("*.example".into(), vec![rule(false, "/", "wild")]),
                ("".into(), vec![rule(false, "/shop/", "any-shop")]),
            ],
            default: Some(rule(false, "/", "default").backend),
        };
        let to = |host: &str, path: &str| routes.route(host, path).map(|b| b.service.clone()).unwrap_or_default();
        assert_eq!(to("a.example", "/"), "a-root");
        assert_eq!(to("a.example", "/api"), "a-api-exact", "Exact wins at equal length");
        assert_eq!(to("a.example", "/api/v1"), "a-api");
        assert_eq!(to("a.example", "/apix"), "a-root", "whole path elements");
        assert_eq!(to("b.example", "/x"), "wild");
        assert_eq!(to("c.b.example", "/x"), "default", "a wildcard covers one label");
        assert_eq!(to("other", "/shop"), "any-shop");
        assert_eq!(to("other", "/shopping"), "default");
    }
}
