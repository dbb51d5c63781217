//! The aggregation layer (kube-aggregator): `apiregistration.k8s.io/v1` APIServices.
//!
//! A *local* APIService (no `spec.service`) names a group-version this server serves
//! itself; the controllers register one for each, as upstream's autoregister controller
//! does. A *service-backed* one hands its group-version to another API server:
//!
//! - requests under `/apis/{group}/{version}` are proxied, after this server's own
//!   authentication and authorization, to one of the Service's endpoints over TLS (its
//!   `caBundle`, or `insecureSkipTLSVerify`) presenting the front-proxy client
//!   certificate, with the user in `X-Remote-User`, `X-Remote-Group` and
//!   `X-Remote-Extra-*` and the caller's own credentials removed — what the
//!   `kube-system/extension-apiserver-authentication` ConfigMap tells backends to trust;
//! - [`Aggregator::run`] checks each one as upstream's `AvailableConditionController`
//!   does (its Service, an endpoint, a discovery GET answered 200) every 10 seconds and
//!   whenever an APIService changes, and writes the `Available` condition;
//! - the discovery documents of the available ones are kept for `/apis` (legacy and
//!   aggregated discovery).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response};
use http_body_util::{BodyExt, Full, Limited};
use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::{meta, ApiError};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::authn::UserInfo;
use crate::backend::{self, ClientIdentity};
use crate::http::Body;
use crate::registry::{ListOptions, Registry, WriteOptions};

/// How often every service-backed APIService is checked (upstream: every 30 s and on
/// changes; a shorter period shows a backend coming up sooner).
const CHECK_PERIOD: Duration = Duration::from_secs(10);
/// How long a discovery check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Request headers not passed on: the caller's credentials, hop-by-hop headers, and the
/// ones this server sets.
const DROPPED_HEADERS: &[&str] = &["authorization", "host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"];

/// Versions of one backed group: (versionPriority, version, discovery document).
type BackedVersions = Vec<(i64, String, Value)>;

/// The aggregation layer's state: the front-proxy identity and the discovery documents
/// of the available service-backed group-versions.
pub struct Aggregator {
    identity: Option<ClientIdentity>,
    /// `APIResourceList` by APIService name, for the available ones.
    discovery: RwLock<BTreeMap<String, Value>>,
}

fn apiservices() -> &'static ResourceDef {
    resources::find("apiregistration.k8s.io", "v1", "apiservices").expect("apiservices is a built-in resource")
}

/// Whether an APIService hands its group-version to a Service.
fn backed(apiservice: &Value) -> bool {
    apiservice.pointer("/spec/service").is_some_and(Value::is_object)
}

fn available(apiservice: &Value) -> bool {
    apiservice.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| c.get("type").and_then(Value::as_str) == Some("Available") && c.get("status").and_then(Value::as_str) == Some("True"))
    })
}

impl Aggregator {
    /// An aggregator presenting `identity` (the front-proxy client certificate) to
    /// backends; without one, backends see no client certificate.
    pub fn new(identity: Option<ClientIdentity>) -> Self {
        Aggregator { identity, discovery: RwLock::new(BTreeMap::new()) }
    }

    /// The service-backed APIService serving `path`, when `path` is under
    /// `/apis/{group}/{version}` of a group-version this server does not serve itself.
    pub fn backend_for(&self, registry: &Registry, path: &str) -> Option<Value> {
        let rest = path.strip_prefix("/apis/")?;
        let mut segs = rest.split('/');
        let (group, version) = (segs.next()?, segs.next()?);
        if group.is_empty() || version.is_empty() || registry.resources().versions(group).contains(&version) {
            return None;
        }
        let obj = registry.get(apiservices(), "", &format!("{version}.{group}")).ok()?;
        let v = obj.value();
        backed(v).then(|| v.clone())
    }

    /// Proxy one request to the APIService's backend and stream its answer back.
    pub async fn proxy(
        &self,
        registry: &Registry,
        apiservice: &Value,
        user: &UserInfo,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Body>, ApiError> {
        let unavailable = |why: String| {
            tracing::debug!(apiservice = meta::name(apiservice), "proxy: {why}");
            ApiError::new(503, "ServiceUnavailable", "service unavailable")
        };
        if !available(apiservice) {
            return Err(unavailable("not available".into()));
        }
        let (addr, server_name) = endpoint(registry, apiservice).map_err(|(_, why)| unavailable(why))?;
        let tls = self.tls(apiservice).map_err(unavailable)?;
        let mut sender = backend::connect(&addr, &server_name, tls)
            .await
            .map_err(|e| ApiError::new(503, "ServiceUnavailable", format!("error trying to reach service: {e}")))?;
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req = http::Request::builder().method(parts.method.clone()).uri(path_and_query);
        for (name, value) in &parts.headers {
            let n = name.as_str();
            if DROPPED_HEADERS.contains(&n) || n.starts_with("impersonate-") || n.starts_with("x-remote-") {
                continue;
            }
            req = req.header(name, value);
        }
        req = req.header(http::header::HOST, &server_name);
        for (name, value) in remote_headers(user) {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(body)).map_err(|e| ApiError::internal(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| ApiError::new(503, "ServiceUnavailable", format!("error trying to reach service: {e}")))?;
        let (mut head, incoming) = resp.into_parts();
        for h in ["connection", "keep-alive", "transfer-encoding", "upgrade", "trailer"] {
            head.headers.remove(h);
        }
        Ok(Response::from_parts(head, EndOnError(incoming).boxed()))
    }

    /// GET `path_and_query` from the backend of the aggregated group-version it names,
    /// as `user` (the way in-process controllers reach aggregated APIs, e.g. the HPA the
    /// custom and external metrics APIs): the answer's JSON, or why there is none.
    pub async fn get_json(&self, registry: &Registry, path_and_query: &str, user: &UserInfo) -> Result<Value, String> {
        let path = path_and_query.split('?').next().unwrap_or("");
        let Some(apiservice) = self.backend_for(registry, path) else {
            let gv: Vec<&str> = path.trim_start_matches("/apis/").splitn(3, '/').take(2).collect();
            return Err(format!("the server could not find the requested resource ({} is not registered)", gv.join("/")));
        };
        if !available(&apiservice) {
            return Err(format!("the server is currently unable to handle the request (APIService {} is not available)", meta::name(&apiservice)));
        }
        let (addr, server_name) = endpoint(registry, &apiservice).map_err(|(_, why)| why)?;
        let tls = self.tls(&apiservice)?;
        let (status, bytes) = get_from_backend(&addr, &server_name, tls, path_and_query, remote_headers(user)).await?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if !status.is_success() {
            let message = body.get("message").and_then(Value::as_str).unwrap_or("").to_string();
            return Err(format!("{} ({message})", status.as_u16()));
        }
        Ok(body)
    }

    fn tls(&self, apiservice: &Value) -> Result<Arc<rustls::ClientConfig>, String> {
        let bundle = apiservice.pointer("/spec/caBundle").and_then(Value::as_str).unwrap_or("");
        let insecure = apiservice.pointer("/spec/insecureSkipTLSVerify").and_then(Value::as_bool).unwrap_or(false);
        backend::tls_config(bundle, insecure, self.identity.as_ref())
    }

    /// Check one service-backed APIService: `Ok` with its discovery document, or the
    /// reason and message of the `Available=False` condition.
    async fn check(&self, registry: &Registry, apiservice: &Value) -> Result<Value, (&'static str, String)> {
        let (addr, server_name) = endpoint(registry, apiservice)?;
        let group = apiservice.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
        let version = apiservice.pointer("/spec/version").and_then(Value::as_str).unwrap_or("");
        let url = format!("https://{addr}/apis/{group}/{version}");
        let failed = |e: String| ("FailedDiscoveryCheck", format!("failing or missing response from {url}: {e}"));
        let tls = self.tls(apiservice).map_err(failed)?;
        // The check is made as the front proxy's own identity (no X-Remote headers), as
        // upstream's is.
        let (status, bytes) = get_from_backend(&addr, &server_name, tls, &format!("/apis/{group}/{version}"), Vec::new()).await.map_err(failed)?;
        if !status.is_success() {
            return Err(failed(format!("bad status from {url}: {}", status.as_u16())));
        }
        serde_json::from_slice::<Value>(&bytes).map_err(|e| failed(e.to_string()))
    }

    /// Check every APIService once and write what changed.
    pub async fn sync(&self, registry: &Registry) {
        let Ok(list) = registry.list(apiservices(), None, &ListOptions::default()) else { return };
        let mut seen = Vec::new();
        for obj in &list.items {
            let svc = obj.to_value();
            let name = meta::name(&svc).to_string();
            let (status, reason, message) = if !backed(&svc) {
                ("True", "Local", "Local APIServices are always available".to_string())
            } else {
                match self.check(registry, &svc).await {
                    Ok(doc) => {
                        self.discovery.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.clone(), doc);
                        seen.push(name.clone());
                        ("True", "Passed", "all checks passed".to_string())
                    }
                    Err((reason, message)) => ("False", reason, message),
                }
            };
            set_available(registry, &svc, status, reason, &message).await;
        }
        self.discovery.write().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|k, _| seen.contains(k));
    }

    /// Check every APIService now, every [`CHECK_PERIOD`], and whenever one changes.
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let from = registry.store().current_revision();
            self.sync(&registry).await;
            let Ok(mut changes) = registry.watch(apiservices(), None, from, Default::default(), Default::default()) else { return };
            tokio::select! {
                _ = tokio::time::sleep(CHECK_PERIOD) => {}
                _ = changes.next() => {
                    // Let a burst of writes (ours included) settle.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The legacy `APIGroup` entries of the groups only backends serve, available ones.
    pub fn groups(&self, registry: &Registry) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        for (group, versions) in self.backed_versions(registry) {
            let versions: Vec<Value> = versions.iter().map(|(v, _)| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
            let preferred = versions.first().cloned().unwrap_or(Value::Null);
            out.push(json!({"name": group, "versions": versions, "preferredVersion": preferred}));
        }
        out
    }

    /// Aggregated-discovery entries of the groups only backends serve.
    pub fn aggregated_groups(&self, registry: &Registry) -> Vec<Value> {
        self.backed_versions(registry)
            .into_iter()
            .map(|(group, versions)| {
                let versions: Vec<Value> = versions
                    .into_iter()
                    .map(|(v, doc)| json!({"version": v, "resources": aggregated_resources(&group, &v, &doc), "freshness": "Current"}))
                    .collect();
                json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
            })
            .collect()
    }

    /// Available backed group-versions of groups this server does not serve, by group
    /// priority then name, versions by priority, each with its discovery document.
    fn backed_versions(&self, registry: &Registry) -> Vec<(String, Vec<(String, Value)>)> {
        let docs = self.discovery.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if docs.is_empty() {
            return Vec::new();
        }
        let Ok(list) = registry.list(apiservices(), None, &ListOptions::default()) else { return Vec::new() };
        let mut by_group: BTreeMap<String, (i64, BackedVersions)> = BTreeMap::new();
        for obj in &list.items {
            let svc = obj.value();
            let Some(doc) = docs.get(meta::name(svc)) else { continue };
            if !available(svc) {
                continue;
            }
            let group = svc.pointer("/spec/group").and_then(Value::as_str).unwrap_or("").to_string();
            let version = svc.pointer("/spec/version").and_then(Value::as_str).unwrap_or("").to_string();
            if group.is_empty() || !registry.resources().versions(&group).is_empty() {
                continue;
            }
            let gp = svc.pointer("/spec/groupPriorityMinimum").and_then(Value::as_i64).unwrap_or(0);
            let vp = svc.pointer("/spec/versionPriority").and_then(Value::as_i64).unwrap_or(0);
            let entry = by_group.entry(group).or_insert((gp, Vec::new()));
            entry.0 = entry.0.max(gp);
            entry.1.push((vp, version, doc.clone()));
        }
        let mut groups: Vec<(i64, String, BackedVersions)> = by_group.into_iter().map(|(g, (p, vs))| (p, g, vs)).collect();
        groups.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        groups
            .into_iter()
            .map(|(_, g, mut vs)| {
                vs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                (g, vs.into_iter().map(|(_, v, d)| (v, d)).collect())
            })
            .collect()
    }
}

/// Where a service-backed APIService's backend is: an endpoint address, and the TLS
/// server name `<service>.<namespace>.svc`. Errors carry the condition's reason.
fn endpoint(registry: &Registry, apiservice: &Value) -> Result<(String, String), (&'static str, String)> {
    let svc = apiservice.pointer("/spec/service").cloned().unwrap_or(Value::Null);
    let ns = svc.get("namespace").and_then(Value::as_str).unwrap_or("");
    let name = svc.get("name").and_then(Value::as_str).unwrap_or("");
    let port = svc.get("port").and_then(Value::as_i64).unwrap_or(443);
    let services = resources::find("", "v1", "services").ok_or(("ServiceNotFound", String::new()))?;
    if registry.get(services, ns, name).is_err() {
        return Err(("ServiceNotFound", format!("service/{name} in \"{ns}\" is not present")));
    }
    let addr = backend::resolve_service(registry, ns, name, port)
        .map_err(|_| ("MissingEndpoints", format!("endpoints for service/{name} in \"{ns}\" have no addresses with port {port}")))?;
    Ok((addr, format!("{name}.{ns}.svc")))
}

/// Write the `Available` condition when it differs (its transition time moves only when
/// its status does).
async fn set_available(registry: &Registry, apiservice: &Value, status: &str, reason: &str, message: &str) {
    let current = apiservice
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Available")));
    if let Some(c) = current {
        if c.get("status").and_then(Value::as_str) == Some(status)
            && c.get("reason").and_then(Value::as_str) == Some(reason)
            && c.get("message").and_then(Value::as_str) == Some(message)
        {
            return;
        }
    }
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    let result = registry
        .update_with(apiservices(), "", meta::name(apiservice), &opts, |cur| {
            let mut next = cur.clone();
            let conditions: Vec<Value> = cur.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            let old = conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Available"));
            let since = match old {
                Some(c) if c.get("status").and_then(Value::as_str) == Some(status) => c.get("lastTransitionTime").cloned().unwrap_or(Value::Null),
                _ => json!(meta::now_rfc3339()),
            };
            let mut rest: Vec<Value> = conditions.into_iter().filter(|c| c.get("type").and_then(Value::as_str) != Some("Available")).collect();
            rest.insert(0, json!({"type": "Available", "status": status, "lastTransitionTime": since, "reason": reason, "message": message}));
            next["status"] = json!({"conditions": rest});
            Ok(next)
        })
        .await;
    if let Err(e) = result {
        tracing::debug!(apiservice = meta::name(apiservice), "writing its Available condition: {}", e.message);
    }
}

/// One GET to an APIService's backend, bounded by `CHECK_TIMEOUT`: the status and the
/// body (at most 10 MiB).
async fn get_from_backend(
    addr: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    path_and_query: &str,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Result<(http::StatusCode, Bytes), String> {
    let get = async {
        let mut sender = backend::connect(addr, server_name, tls).await?;
        let mut req = http::Request::get(path_and_query).header(http::header::HOST, server_name).header(http::header::ACCEPT, "application/json");
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), 10 << 20).collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(CHECK_TIMEOUT, get).await.unwrap_or_else(|_| Err("context deadline exceeded".into()))
}

/// `X-Remote-User`, `X-Remote-Group` (one per group) and `X-Remote-Extra-<key>` (the
/// key percent-escaped, as upstream writes it).
fn remote_headers(user: &UserInfo) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Ok(v) = HeaderValue::from_str(&user.name) {
        out.push((HeaderName::from_static("x-remote-user"), v));
    }
    for g in &user.groups {
        if let Ok(v) = HeaderValue::from_str(g) {
            out.push((HeaderName::from_static("x-remote-group"), v));
        }
    }
    for (k, vs) in &user.extra {
        let escaped: String = form_urlencoded::byte_serialize(k.as_bytes()).collect();
        let Ok(name) = HeaderName::from_bytes(format!("x-remote-extra-{escaped}").as_bytes()) else { continue };
        for v in vs {
            if let Ok(v) = HeaderValue::from_str(v) {
                out.push((name.clone(), v));
            }
        }
    }
    out
}

/// A backend's `APIResourceList` as aggregated-discovery resources.
fn aggregated_resources(group: &str, version: &str, doc: &Value) -> Vec<Value> {
    let list = doc.get("resources").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut out: Vec<Value> = Vec::new();
    for r in list.iter().filter(|r| !r.get("name").and_then(Value::as_str).unwrap_or("").contains('/')) {
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        let mut e = json!({
            "resource": name,
            "responseKind": {"group": group, "version": version, "kind": r.get("kind").cloned().unwrap_or(Value::Null)},
            "scope": if r.get("namespaced").and_then(Value::as_bool).unwrap_or(false) { "Namespaced" } else { "Cluster" },
            "singularResource": r.get("singularName").cloned().unwrap_or(json!("")),
            "verbs": r.get("verbs").cloned().unwrap_or(json!([])),
        });
        for k in ["shortNames", "categories"] {
            if let Some(v) = r.get(k).filter(|v| v.as_array().is_some_and(|a| !a.is_empty())) {
                e[k] = v.clone();
            }
        }
        let subs: Vec<Value> = list
            .iter()
            .filter_map(|s| {
                let n = s.get("name").and_then(Value::as_str)?;
                let sub = n.strip_prefix(name)?.strip_prefix('/')?;
                Some(json!({"subresource": sub, "responseKind": {"group": group, "version": version, "kind": s.get("kind").cloned().unwrap_or(Value::Null)}, "verbs": s.get("verbs").cloned().unwrap_or(json!([]))}))
            })
            .collect();
        if !subs.is_empty() {
            e["subresources"] = json!(subs);
        }
        out.push(e);
    }
    out
}

/// A backend's response body as this server's body type: a read error ends the stream
/// (the connection to the client is then closed short, as a proxy does).
pub struct EndOnError(pub hyper::body::Incoming);

impl http_body::Body for EndOnError {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.get_mut().0).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
