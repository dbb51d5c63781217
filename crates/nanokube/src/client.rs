//! A small HTTPS client for the API, configured from a kubeconfig: used by `nanokube
//! bench` (and by tools that need a client without pulling in a full Kubernetes client).

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

/// The HTTPS connector used by clients of the API.
pub type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A connection pool to one API server with one identity.
#[derive(Clone)]
pub struct ApiClient {
    inner: HyperClient<Connector, Full<Bytes>>,
    /// `https://host:port`.
    pub server: String,
    token: Option<String>,
}

fn field_bytes(map: &Value, data_key: &str, file_key: &str, base: &Path) -> Result<Option<Vec<u8>>, String> {
    if let Some(d) = map.get(data_key).and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD.decode(d.trim()).map(Some).map_err(|e| format!("{data_key}: {e}"));
    }
    if let Some(f) = map.get(file_key).and_then(Value::as_str) {
        let p = base.join(f);
        return std::fs::read(&p).map(Some).map_err(|e| format!("{}: {e}", p.display()));
    }
    Ok(None)
}

/// Where a cluster is and how to authenticate to it: from a kubeconfig context, or from
/// the in-cluster service-account files.
#[derive(Clone)]
pub struct ClusterAccess {
    /// `https://host:port`.
    pub server: String,
    /// TLS with the cluster CA and, if any, the client certificate.
    pub tls: rustls::ClientConfig,
    /// A bearer token.
    pub token: Option<String>,
    /// A file the token is read from on every request (in-cluster; the kubelet rotates it).
    pub token_file: Option<std::path::PathBuf>,
    /// The cluster CA's certificates (PEM) the server is verified with, if named.
    pub ca_pem: Option<Vec<u8>>,
}

/// The default directory of a pod's service-account files.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn tls_builder(ca: Option<Vec<u8>>) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().map_err(|e| e.to_string())?.with_root_certificates(roots))
}

impl ClusterAccess {
    /// The access a kubeconfig gives: its `context` or the current one.
    pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<Self, String> {
        Self::load(path, context, true)
    }

    /// The cluster of a kubeconfig's current context reached with no credentials (an
    /// anonymous client that still verifies the server with the cluster's CA).
    pub fn anonymous_from_kubeconfig(path: &Path) -> Result<Self, String> {
        Self::load(path, None, false)
    }

    fn load(path: &Path, context: Option<&str>, credentials: bool) -> Result<Self, String> {
        // Every problem names the file it is in.
        Self::load_unnamed(path, context, credentials)
            .map_err(|e| if e.starts_with(&path.display().to_string()) { e } else { format!("{}: {e}", path.display()) })
    }

    fn load_unnamed(path: &Path, context: Option<&str>, credentials: bool) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cfg: Value = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ctx_name = match context {
            Some(c) => c.to_string(),
            None => cfg.get("current-context").and_then(Value::as_str).ok_or("kubeconfig has no current-context")?.to_string(),
        };
        let find = |section: &str, name: &str| {
            cfg.get(section).and_then(Value::as_array).and_then(|l| l.iter().find(|e| e.get("name").and_then(Value::as_str) == Some(name)).cloned())
        };
        let ctx = find("contexts", &ctx_name).ok_or_else(|| format!("context {ctx_name:?} not found"))?;
        let cluster_name = ctx.pointer("/context/cluster").and_then(Value::as_str).unwrap_or("");
        let user_name = ctx.pointer("/context/user").and_then(Value::as_str).unwrap_or("");
        let cluster = find("clusters", cluster_name).and_then(|c| c.get("cluster").cloned()).ok_or("cluster not found")?;
        let user = if credentials { find("users", user_name).and_then(|u| u.get("user").cloned()).unwrap_or(Value::Null) } else { Value::Null };
        let server = cluster.get("server").and_then(Value::as_str).ok_or("cluster has no server")?.trim_end_matches('/').to_string();
        let ca_pem = field_bytes(&cluster, "certificate-authority-data", "certificate-authority", base)?;
        let builder = tls_builder(ca_pem.clone())?;
        let cert = field_bytes(&user, "client-certificate-data", "client-certificate", base)?;
        let key = field_bytes(&user, "client-key-data", "client-key", base)?;
        let tls = match (cert, key) {
            (Some(c), Some(k)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&c).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
                let key = PrivateKeyDer::from_pem_slice(&k).map_err(|e| e.to_string())?;
                builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
            }
            _ => builder.with_no_client_auth(),
        };
        let token = user.get("token").and_then(Value::as_str).map(String::from);
        let token_file = user.get("tokenFile").and_then(Value::as_str).map(|f| base.join(f));
        Ok(ClusterAccess { server, tls, token, token_file, ca_pem })
    }

    /// In-cluster access, as client-go's `InClusterConfig`: `KUBERNETES_SERVICE_HOST` and
    /// `KUBERNETES_SERVICE_PORT`, and `token` and `ca.crt` in the service-account directory.
    pub fn in_cluster(dir: &Path) -> Result<Self, String> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| "KUBERNETES_SERVICE_HOST is not set: not running in a pod")?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").map_err(|_| "KUBERNETES_SERVICE_PORT is not set: not running in a pod")?;
        if host.is_empty() || port.is_empty() {
            return Err("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must not be empty".into());
        }
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        let ca = std::fs::read(dir.join("ca.crt")).map_err(|e| format!("{}/ca.crt: {e}", dir.display()))?;
        let token_file = dir.join("token");
        std::fs::metadata(&token_file).map_err(|e| format!("{}: {e}", token_file.display()))?;
        Ok(ClusterAccess {
            server: format!("https://{host}:{port}"),
            tls: tls_builder(Some(ca.clone()))?.with_no_client_auth(),
            token: None,
            token_file: Some(token_file),
            ca_pem: Some(ca),
        })
    }

    /// The bearer token to send now, if any.
    pub fn bearer(&self) -> Option<String> {
        if let Some(f) = &self.token_file {
            if let Ok(t) = std::fs::read_to_string(f) {
                return Some(t.trim().to_string());
            }
        }
        self.token.clone()
    }

    /// An HTTPS connector for this cluster.
    pub fn connector(&self, http2: bool) -> Connector {
        self.connector_with_keepalive(http2, None)
    }

    /// An HTTPS connector whose connections send TCP keep-alives every `keepalive`.
    pub fn connector_with_keepalive(&self, http2: bool, keepalive: Option<std::time::Duration>) -> Connector {
        // TCP_NODELAY, as client-go sets it: without it an HTTP/2 request's DATA frame waits
        // behind Nagle for the server's delayed ACK of its HEADERS frame (~40 ms a write).
        let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
        tcp.set_keepalive(keepalive);
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(self.tls.clone()).https_only();
        if http2 {
            b.enable_http2().wrap_connector(tcp)
        } else {
            b.enable_http1().wrap_connector(tcp)
        }
    }
}

impl ApiClient {
    /// A client for the current context of a kubeconfig file.
    pub fn from_kubeconfig(path: &Path, http2: bool) -> Result<Self, String> {
        Ok(Self::from_access(&ClusterAccess::from_kubeconfig(path, None)?, http2))
    }

    /// A client with the given access.
    pub fn from_access(access: &ClusterAccess, http2: bool) -> Self {
        let mut hb = HyperClient::builder(TokioExecutor::new());
        if http2 {
            hb.http2_only(true);
        }
        ApiClient { inner: hb.build(access.connector(http2)), server: access.server.clone(), token: access.bearer() }
    }

    /// Open a streaming GET (a watch); returns the body to read frames from.
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming, String> {
        let mut req = http::Request::builder().method("GET").uri(format!("{}{}", self.server, path));
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let resp = self.inner.request(req).await.map_err(|e| format!("GET {path}: {e}"))?;
        if resp.status() != 200 {
            return Err(format!("GET {path}: {}", resp.status()));
        }
        Ok(resp.into_body())
    }

    /// Send a request; returns the status code and the whole body.
    pub async fn request(&self, method: &str, path: &str, content_type: Option<&str>, accept: Option<&str>, body: Bytes) -> Result<(u16, Bytes), String> {
        self.request_with(method, path, content_type, accept, &[], body).await
    }

    /// Send a request with extra headers (raw bytes: a caller may send what no client
    /// should); returns the status code and the whole body.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        accept: Option<&str>,
        headers: &[(&str, &[u8])],
        body: Bytes,
    ) -> Result<(u16, Bytes), String> {
        let mut req = http::Request::builder().method(method).uri(format!("{}{}", self.server, path));
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(a) = accept {
            req = req.header(http::header::ACCEPT, a);
        }
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (name, value) in headers {
            req = req.header(*name, http::HeaderValue::from_bytes(value).map_err(|e| e.to_string())?);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = self.inner.request(req).await.map_err(|e| format!("{method} {path}: {e}"))?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((code, body))
    }
}
