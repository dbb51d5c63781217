//! `nanokube agent`: a node that joins a cluster over the network and runs its pods, as
//! `k3s agent` (kubelet's part) does.
//!
//! Joining is kubeadm's: [`crate::join::discover`] checks `cluster-info` against the
//! bootstrap token, [`crate::join::request_client_certificate`] gets the node's client
//! certificate (`CN=system:node:<name>, O=system:nodes`) through a CSR the controllers
//! approve, and both are written to `<data-dir>/kubelet.conf` (kubelet's file of that
//! name), which later starts reuse without a token. From then on every read, watch and
//! write of the node agent goes through [`RemoteCluster`]: HTTPS with that certificate,
//! so the API server's Node authorizer and NodeRestriction hold the agent to its own
//! Node, its pods and what they use, exactly as they hold kubelet.
//!
//! The kubelet API is served on `--node-ip:--kubelet-port` with a serving certificate of
//! the cluster CA, asked for with a `kubernetes.io/kubelet-serving` request naming the
//! node's own addresses (which the control plane approves); its callers are judged by
//! [`RemoteGate`]: TokenReview and SubjectAccessReview, as kubelet's webhook modes. The
//! API server reaches it for logs, exec, attach and port-forward of the node's pods.
//!
//! The pods' traffic to Services and the cluster DNS is answered from a Service table
//! kept through the API with the service proxy's own credentials (`CN=system:kube-proxy`,
//! bound to `system:node-proxier`, asked for with the node's certificate and kept in
//! `<data-dir>/kube-proxy.conf`), as k3s agents run kube-proxy: a node itself may not
//! list EndpointSlices. NetworkPolicies are not enforced on joined nodes (their pods and
//! namespaces would be needed cluster-wide), nor are node ports and load-balancer
//! addresses opened there.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use nanokube_api::resources::ResourceDef;
use nanokube_api::ApiError;
use nanokube_apiserver::cluster::{BoxFuture, Change, Cluster, Event, Listed, TokenFor, Watch};
use serde_json::{json, Value};

use nanokube_apiserver::authn::UserInfo;
use nanokube_apiserver::request::RequestInfo;

use crate::client::{ApiClient, ClusterAccess};

/// The longest watch event line accepted from the server.
const MAX_EVENT_BYTES: usize = 16 << 20;
/// Attempts of a read-change-write before giving up on conflicts.
const UPDATE_ATTEMPTS: usize = 16;

/// The API over HTTPS with one identity (the node's certificate).
pub struct RemoteCluster {
    api: ApiClient,
}

/// A query value, percent-encoded (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The REST path of a kind's collection (in `namespace` when given and namespaced).
fn collection_path(def: &ResourceDef, namespace: Option<&str>) -> String {
    let base = if def.group.is_empty() { format!("/api/{}", def.version) } else { format!("/apis/{}/{}", def.group, def.version) };
    match namespace {
        Some(ns) if def.namespaced && !ns.is_empty() => format!("{base}/namespaces/{}/{}", encode(ns), def.plural),
        _ => format!("{base}/{}", def.plural),
    }
}

fn object_path(def: &ResourceDef, namespace: &str, name: &str) -> String {
    format!("{}/{}", collection_path(def, Some(namespace)), encode(name))
}

/// The error a response carries: its Status when it has one, else the code and body.
fn status_error(code: u16, body: &[u8]) -> ApiError {
    let status: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = status
        .get("message")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| format!("HTTP {code}: {}", String::from_utf8_lossy(&body[..body.len().min(512)])));
    let reason = match status.get("reason").and_then(Value::as_str).unwrap_or("") {
        "NotFound" => "NotFound",
        "AlreadyExists" => "AlreadyExists",
        "Conflict" => "Conflict",
        "Forbidden" => "Forbidden",
        "Unauthorized" => "Unauthorized",
        "Invalid" => "Invalid",
        "Expired" => "Expired",
        "Gone" => "Gone",
        "BadRequest" => "BadRequest",
        "TooManyRequests" => "TooManyRequests",
        "ServiceUnavailable" => "ServiceUnavailable",
        "Timeout" => "Timeout",
        "MethodNotAllowed" => "MethodNotAllowed",
        _ => "InternalError",
    };
    let code = status.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).filter(|c| *c >= 400).unwrap_or(code);
    ApiError::new(code, reason, message)
}

fn transport_error(e: String) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", e)
}

/// Run a future to completion from synchronous code on a runtime worker (the agent's
/// reads are synchronous; they wait here as kubelet's pod workers wait on a GET).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

impl RemoteCluster {
    /// A cluster reached through `api`.
    pub fn new(api: ApiClient) -> Self {
        RemoteCluster { api }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ApiError> {
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| ApiError::internal(e.to_string()))?),
            None => Bytes::new(),
        };
        let ct = body.map(|_| "application/json");
        let (code, resp) = self.api.request(method, path, ct, Some("application/json"), bytes).await.map_err(transport_error)?;
        if !(200..300).contains(&code) {
            return Err(status_error(code, &resp));
        }
        serde_json::from_slice(&resp).map_err(|e| ApiError::internal(format!("{method} {path}: the answer is not JSON: {e}")))
    }
}

struct RemoteWatch {
    body: hyper::body::Incoming,
    buf: BytesMut,
    done: bool,
}

impl RemoteWatch {
    /// The next complete line of the stream, or `None` at its end.
    async fn line(&mut self) -> Option<Result<Bytes, ApiError>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                let line = self.buf.split_to(i + 1).freeze();
                return Some(Ok(line.slice(..i)));
            }
            if self.done {
                return None;
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                self.done = true;
                return Some(Err(ApiError::internal("a watch event is larger than 16 MiB")));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(transport_error(e.to_string())));
                }
                None => self.done = true,
            }
        }
    }
}

impl Watch for RemoteWatch {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Event, ApiError>>> {
        Box::pin(async move {
            loop {
                let line = match self.line().await? {
                    Ok(l) => l,
                    Err(e) => return Some(Err(e)),
                };
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let mut ev: Value = match serde_json::from_slice(&line) {
                    Ok(v) => v,
                    Err(e) => return Some(Err(ApiError::internal(format!("a watch event is not JSON: {e}")))),
                };
                let ty = ev.get("type").and_then(Value::as_str).unwrap_or("").to_string();
                let obj = ev.get_mut("object").map(Value::take).unwrap_or(Value::Null);
                match ty.as_str() {
                    "ERROR" => {
                        let code = obj.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).unwrap_or(500);
                        return Some(Err(status_error(code, &serde_json::to_vec(&obj).unwrap_or_default())));
                    }
                    "BOOKMARK" => continue,
                    _ => return Some(Ok((ty, obj))),
                }
            }
        })
    }
}

impl Cluster for RemoteCluster {
    fn get(&self, def: &'static ResourceDef, namespace: &str, name: &str) -> Result<Value, ApiError> {
        block_on(self.call("GET", &object_path(def, namespace, name), None))
    }

    fn list(&self, def: &'static ResourceDef, namespace: Option<&str>, fields: &str) -> Result<Listed, ApiError> {
        let mut path = collection_path(def, namespace);
        if !fields.is_empty() {
            path += &format!("?fieldSelector={}", encode(fields));
        }
        let mut list = block_on(self.call("GET", &path, None))?;
        let resource_version = list.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("").to_string();
        let items = match list.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        Ok(Listed { items, resource_version })
    }

    fn watch<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: Option<&'a str>,
        fields: &'a str,
        rv: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Watch>, ApiError>> {
        Box::pin(async move {
            // A watch ends after five to ten minutes, as client-go's reflector asks, so a
            // connection the network lost silently is replaced.
            let timeout = fastrand::u64(300..600);
            let mut path = format!("{}?watch=true&resourceVersion={}&timeoutSeconds={timeout}", collection_path(def, namespace), encode(rv));
            if !fields.is_empty() {
                path += &format!("&fieldSelector={}", encode(fields));
            }
            let body = self.api.stream(&path).await.map_err(transport_error)?;
            Ok(Box::new(RemoteWatch { body, buf: BytesMut::new(), done: false }) as Box<dyn Watch>)
        })
    }

    fn create<'a>(&'a self, def: &'static ResourceDef, namespace: &'a str, mut obj: Value) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            obj["apiVersion"] = json!(def.api_version());
            obj["kind"] = json!(def.kind);
            self.call("POST", &collection_path(def, Some(namespace)), Some(&obj)).await
        })
    }

    fn update_with<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: &'a str,
        name: &'a str,
        subresource: Option<&'a str>,
        change: Change<'a>,
    ) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            let path = object_path(def, namespace, name);
            let target = match subresource {
                Some(s) => format!("{path}/{s}"),
                None => path.clone(),
            };
            let mut last = ApiError::conflict(def.plural, def.group, name);
            for _ in 0..UPDATE_ATTEMPTS {
                let cur = self.call("GET", &path, None).await?;
                let mut next = change(&cur)?;
                // The write is conditional on the version read.
                next["metadata"]["resourceVersion"] = cur.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null);
                match self.call("PUT", &target, Some(&next)).await {
                    Err(e) if e.code == 409 => last = e,
                    other => return other,
                }
            }
            Err(last)
        })
    }

    fn delete<'a>(
        &'a self,
        def: &'static ResourceDef,
        namespace: &'a str,
        name: &'a str,
        grace: Option<i64>,
        uid: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            let mut opts = json!({"apiVersion": "v1", "kind": "DeleteOptions"});
            if let Some(g) = grace {
                opts["gracePeriodSeconds"] = json!(g);
            }
            if let Some(u) = uid {
                opts["preconditions"] = json!({"uid": u});
            }
            self.call("DELETE", &object_path(def, namespace, name), Some(&opts)).await.map(|_| ())
        })
    }

    fn service_account_token(&self, r: &TokenFor<'_>) -> Result<String, ApiError> {
        let Some(def) = nanokube_api::resources::find("", "v1", "serviceaccounts") else { return Err(ApiError::internal("no serviceaccounts resource")) };
        let mut spec = json!({
            "expirationSeconds": r.expiration_seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": r.pod_name, "uid": r.pod_uid},
        });
        if !r.audiences.is_empty() {
            spec["audiences"] = json!(r.audiences);
        }
        let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let path = format!("{}/token", object_path(def, r.namespace, r.service_account));
        let answer = block_on(self.call("POST", &path, Some(&request)))?;
        answer.pointer("/status/token").and_then(Value::as_str).map(String::from).ok_or_else(|| ApiError::internal("the TokenRequest answer has no token"))
    }
}

/// kubelet's webhook authentication and authorization: client certificates the TLS
/// layer verified against the cluster CA are taken as they are; bearer tokens go to a
/// TokenReview; every request is put to a SubjectAccessReview.
pub struct RemoteGate {
    api: ApiClient,
}

impl RemoteGate {
    async fn post(&self, path: &str, body: &Value) -> Option<Value> {
        let bytes = Bytes::from(serde_json::to_vec(body).ok()?);
        let (code, resp) = self.api.request("POST", path, Some("application/json"), Some("application/json"), bytes).await.ok()?;
        if code != 201 && code != 200 {
            tracing::warn!(path, code, "the kubelet API's review was refused: {}", String::from_utf8_lossy(&resp));
            return None;
        }
        serde_json::from_slice(&resp).ok()
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(String::from).collect()
}

impl nanokube_node::kubelet_api::Gate for RemoteGate {
    fn authenticate<'a>(&'a self, cert_user: Option<&'a UserInfo>, authorization: Option<&'a str>) -> BoxFuture<'a, Option<UserInfo>> {
        Box::pin(async move {
            if let Some(u) = cert_user {
                return Some(u.clone());
            }
            let token = authorization?.strip_prefix("Bearer ")?.trim();
            let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
            let answer = self.post("/apis/authentication.k8s.io/v1/tokenreviews", &review).await?;
            if answer.pointer("/status/authenticated") != Some(&Value::Bool(true)) {
                return None;
            }
            let user = answer.pointer("/status/user")?;
            let extra =
                user.get("extra").and_then(Value::as_object).map(|m| m.iter().map(|(k, v)| (k.clone(), strings(Some(v)))).collect()).unwrap_or_default();
            Some(UserInfo {
                name: user.get("username").and_then(Value::as_str).unwrap_or("").to_string(),
                uid: user.get("uid").and_then(Value::as_str).unwrap_or("").to_string(),
                groups: strings(user.get("groups")),
                extra,
            })
        })
    }

    fn authorize<'a>(&'a self, user: &'a UserInfo, attrs: &'a RequestInfo) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
                "user": user.name, "uid": user.uid, "groups": user.groups, "extra": user.extra,
                "resourceAttributes": {"verb": attrs.verb, "version": "v1", "resource": attrs.resource, "subresource": attrs.subresource, "name": attrs.name},
            }});
            let answer = self.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", &review).await;
            answer.is_some_and(|a| a.pointer("/status/allowed") == Some(&Value::Bool(true)))
        })
    }
}

/// A serving certificate of the cluster CA for the kubelet API (`CN=system:node:<name>`,
/// the node's address and name as subject alternative names), asked for as kubelet's
/// `serverTLSBootstrap` does: (certificate PEM, key PEM).
pub async fn serving_certificate(api: &ApiClient, node: &str, ip: Ipv4Addr, timeout: Duration) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::IpAddr::V4(ip))];
    if let Ok(name) = node.try_into() {
        params.subject_alt_names.push(rcgen::SanType::DnsName(name));
    }
    let request = params.serialize_request(&key).and_then(|r| r.pem()).map_err(|e| e.to_string())?;
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(request),
                 "signerName": "kubernetes.io/kubelet-serving",
                 "usages": ["digital signature", "server auth"]},
    });
    let cert = crate::join::await_certificate(api, &csr, &key, timeout).await?;
    Ok((cert, key.serialize_pem()))
}

/// How an agent joins and runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The API server (`https://host:port`), for discovery.
    pub server: String,
    /// The bootstrap token (`<id>.<secret>`); not needed once `kubelet.conf` exists.
    pub token: Option<String>,
    /// Pins of the cluster CA's public key (`sha256:<hex>`).
    pub ca_cert_hashes: Vec<String>,
    /// Join without pinning the CA (the token's signature still vouches for it).
    pub unsafe_skip_ca_verification: bool,
    /// The Node's name.
    pub node_name: String,
    /// The kubelet API's port on the node's address (0: any free port).
    pub kubelet_port: u16,
    /// Where the agent keeps its credentials, images, pods and logs.
    pub data_dir: PathBuf,
    /// The node's address (`InternalIP`, the pods' `hostIP`).
    pub node_ip: Ipv4Addr,
    /// The cluster's Service range (captured in pods).
    pub service_cidr: String,
    /// Eviction thresholds.
    pub eviction_hard: Vec<nanokube_node::eviction::Threshold>,
    /// Registry mirrors (`registry=host:port`).
    pub registry_mirrors: Vec<(String, String)>,
    /// Registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
}

/// `<data-dir>/kubelet.conf`.
pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("kubelet.conf")
}

/// Join (or reuse the credentials of an earlier join): the kubeconfig the agent runs on.
pub async fn credentials(cfg: &AgentConfig) -> Result<PathBuf, String> {
    let path = kubeconfig_path(&cfg.data_dir);
    if path.exists() {
        return Ok(path);
    }
    let token = cfg.token.as_deref().ok_or("this node has not joined yet: give --token (nanokube token create, on the server)")?;
    let discovered = crate::join::discover(&cfg.server, token, &cfg.ca_cert_hashes, cfg.unsafe_skip_ca_verification).await?;
    let (cert, key) = crate::join::request_client_certificate(&discovered, token, &cfg.node_name, Duration::from_secs(60)).await?;
    write_kubeconfig(&path, &discovered.server, &discovered.ca_pem, &cert, &key)?;
    Ok(path)
}

/// A kubeconfig with its certificates inline, readable by root only, written by rename.
fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str, cert: &str, key: &str) -> Result<(), String> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: default-auth\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: default-context\n  context:\n    cluster: default-cluster\n    user: default-auth\ncurrent-context: default-context\n",
        server,
        b64(ca_pem),
        b64(cert),
        b64(key)
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("conf.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The service proxy's credentials (`CN=system:kube-proxy`, bound to
/// `system:node-proxier`), asked for with the node's own and kept in
/// `<data-dir>/kube-proxy.conf`: a node may not list EndpointSlices, kube-proxy may.
pub async fn kube_proxy_credentials(cfg: &AgentConfig, node: &ApiClient, access: &ClusterAccess) -> Result<PathBuf, String> {
    let path = cfg.data_dir.join("kube-proxy.conf");
    if path.exists() {
        return Ok(path);
    }
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "system:kube-proxy");
    let request = params.serialize_request(&key).and_then(|r| r.pem()).map_err(|e| e.to_string())?;
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "kube-proxy-"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(request),
                 "signerName": "kubernetes.io/kube-apiserver-client",
                 "usages": ["digital signature", "client auth"]},
    });
    let cert = crate::join::await_certificate(node, &csr, &key, Duration::from_secs(60)).await?;
    let ca = String::from_utf8_lossy(access.ca_pem.as_deref().unwrap_or_default()).into_owned();
    write_kubeconfig(&path, &access.server, &ca, &cert, &key.serialize_pem())?;
    Ok(path)
}

/// A running agent.
pub struct Agent {
    /// The Node's name.
    pub node_name: String,
    /// The kubeconfig it runs on.
    pub kubeconfig: PathBuf,
    /// Why it runs no pods, if it does not.
    pub not_ready: Option<String>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Join, register the Node and start running its pods.
    pub async fn start(cfg: AgentConfig) -> Result<Agent, String> {
        let kubeconfig = credentials(&cfg).await?;
        let access = ClusterAccess::from_kubeconfig(&kubeconfig, None)?;
        let api = ApiClient::from_access(&access, false);
        let cluster: Arc<dyn Cluster> = Arc::new(RemoteCluster::new(api.clone()));
        // The cluster DNS address pods are told: the kube-dns Service's.
        let services = nanokube_api::resources::find("", "v1", "services").ok_or("no services resource")?;
        let dns_ip = tokio::task::spawn_blocking({
            let c = cluster.clone();
            move || {
                c.get(services, "kube-system", "kube-dns")
                    .ok()
                    .and_then(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str).and_then(|ip| ip.parse().ok()))
            }
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(Ipv4Addr::new(127, 96, 0, 10));
        let network = nanokube_net::Network::new(nanokube_net::NetworkConfig {
            node: cfg.node_name.clone(),
            node_ips: vec![cfg.node_ip],
            service_cidr: cfg.service_cidr.clone(),
            dns_addr: SocketAddrV4::new(dns_ip, 53),
            cluster_domain: "cluster.local".into(),
            dns_upstreams: nanokube_net::dns::Dns::host_resolvers(),
            load_balancer_cidr: "127.240.0.0/16".into(),
            host_listeners: false,
            ingress: None,
        })?;
        let table = network.table.clone();
        let images = nanokube_runtime::ImageStore::open(&cfg.data_dir).ok();
        let (runtime, not_ready) = match nanokube_node::pods::runtime_for_machine(
            cluster.clone(),
            &cfg.node_name,
            &cfg.node_ip.to_string(),
            images.clone(),
            &cfg.data_dir,
            nanokube_node::pods::Mirrors(cfg.registry_mirrors.clone()),
            cfg.insecure_registries.clone(),
            Some(network),
        ) {
            Ok(rt) => (Some(Arc::new(rt)), None),
            Err(why) => (None, Some(why)),
        };
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        // The kubelet API, with a serving certificate of the cluster CA.
        let mut kubelet_port = 0;
        let mut kubelet_api = None;
        if let Some(rt) = &runtime {
            let ca = String::from_utf8_lossy(access.ca_pem.as_deref().unwrap_or_default()).into_owned();
            let listener = nanokube_apiserver::server::listen_async(std::net::SocketAddr::from((cfg.node_ip, cfg.kubelet_port)))
                .map_err(|e| format!("the kubelet API on {}:{}: {e}", cfg.node_ip, cfg.kubelet_port))?;
            kubelet_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            let stats = nanokube_node::pods::stats::Stats::new(rt.clone());
            tokio::spawn(stats.clone().run(rx.clone()));
            let gate = Arc::new(RemoteGate { api: api.clone() });
            let kubelet = nanokube_node::kubelet_api::KubeletApi::new(gate, cluster.clone(), rt, stats);
            let (node, ip, rx, api) = (cfg.node_name.clone(), cfg.node_ip, rx.clone(), api.clone());
            // The Node must exist (with its addresses) before its serving certificate is
            // approved: serve once registered.
            let serving = async move {
                let (cert, key) = serving_certificate(&api, &node, ip, Duration::from_secs(60)).await?;
                nanokube_apiserver::server::serving_tls(&ca, &cert, &key)
            };
            kubelet_api = Some(async move {
                match serving.await {
                    Ok(tls) => kubelet.serve(listener, tls, rx).await,
                    Err(e) => tracing::warn!("not serving the kubelet API: {e}"),
                }
            });
        }
        let eviction = Arc::new(nanokube_node::eviction::Manager::new(cfg.eviction_hard.clone(), Duration::from_secs(300)));
        let agent = Arc::new(nanokube_node::NodeAgent::new(
            cluster,
            None,
            nanokube_node::NodeConfig {
                name: cfg.node_name.clone(),
                internal_ip: cfg.node_ip.to_string(),
                data_dir: cfg.data_dir.clone(),
                version: nanokube_apiserver::discovery::GIT_VERSION.into(),
                images,
                not_ready: not_ready.clone(),
                kubelet_port: i32::from(kubelet_port),
                eviction,
                control_plane: false,
            },
            runtime,
        ));
        agent.register().await?;
        if let Some(serve) = kubelet_api {
            tokio::spawn(serve);
        }
        // The Service table behind the pods' traffic to Services and the cluster DNS.
        if not_ready.is_none() {
            let proxy = kube_proxy_credentials(&cfg, &api, &access).await?;
            let proxy = ClusterAccess::from_kubeconfig(&proxy, None)?;
            let proxy: Arc<dyn Cluster> = Arc::new(RemoteCluster::new(ApiClient::from_access(&proxy, false)));
            tokio::spawn(table.run_from(proxy, rx.clone()));
        }
        let task = tokio::spawn(agent.run(rx));
        Ok(Agent { node_name: cfg.node_name, kubeconfig, not_ready, shutdown, task })
    }

    /// Stop every pod (they start again on the next start) and return.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_rest_layout() {
        let pods = nanokube_api::resources::find("", "v1", "pods").unwrap();
        let leases = nanokube_api::resources::find("coordination.k8s.io", "v1", "leases").unwrap();
        let nodes = nanokube_api::resources::find("", "v1", "nodes").unwrap();
        assert_eq!(collection_path(pods, None), "/api/v1/pods");
        assert_eq!(object_path(pods, "default", "web-0"), "/api/v1/namespaces/default/pods/web-0");
        assert_eq!(object_path(leases, "kube-node-lease", "n1"), "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1");
        assert_eq!(object_path(nodes, "", "n1"), "/api/v1/nodes/n1");
        assert_eq!(encode("spec.nodeName=a b"), "spec.nodeName%3Da%20b");
    }

    #[test]
    fn errors_keep_the_servers_status() {
        let e = status_error(403, br#"{"kind":"Status","status":"Failure","message":"pods \"x\" is forbidden: no","reason":"Forbidden","code":403}"#);
        assert_eq!((e.code, e.reason, e.message.as_str()), (403, "Forbidden", "pods \"x\" is forbidden: no"));
        let e = status_error(502, b"<html>bad gateway</html>");
        assert_eq!((e.code, e.reason), (502, "InternalError"));
        assert!(e.message.contains("bad gateway"));
    }
}
