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

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

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

impl ApiClient {
    /// A client for the current context of a kubeconfig file.
    pub fn from_kubeconfig(path: &Path, http2: bool) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let cfg: Value = serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let ctx_name = cfg.get("current-context").and_then(Value::as_str).ok_or("kubeconfig has no current-context")?;
        let find = |section: &str, name: &str| cfg.get(section).and_then(Value::as_array).and_then(|l| l.iter().find(|e| e.get("name").and_then(Value::as_str) == Some(name)).cloned());
        let ctx = find("contexts", ctx_name).ok_or("current context not found")?;
        let cluster_name = ctx.pointer("/context/cluster").and_then(Value::as_str).unwrap_or("");
        let user_name = ctx.pointer("/context/user").and_then(Value::as_str).unwrap_or("");
        let cluster = find("clusters", cluster_name).and_then(|c| c.get("cluster").cloned()).ok_or("cluster not found")?;
        let user = find("users", user_name).and_then(|u| u.get("user").cloned()).unwrap_or(Value::Null);
        let server = cluster.get("server").and_then(Value::as_str).ok_or("cluster has no server")?.trim_end_matches('/').to_string();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = field_bytes(&cluster, "certificate-authority-data", "certificate-authority", base)? {
            for c in CertificateDer::pem_slice_iter(&ca) {
                roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().map_err(|e| e.to_string())?.with_root_certificates(roots);
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
        let b = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only();
        let connector = if http2 { b.enable_http2().build() } else { b.enable_http1().build() };
        let mut hb = HyperClient::builder(TokioExecutor::new());
        if http2 {
            hb.http2_only(true);
        }
        Ok(ApiClient { inner: hb.build(connector), server, token })
    }

    /// Send a request; returns the status code and the whole body.
    pub async fn request(&self, method: &str, path: &str, content_type: Option<&str>, accept: Option<&str>, body: Bytes) -> Result<(u16, Bytes), String> {
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
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = self.inner.request(req).await.map_err(|e| format!("{method} {path}: {e}"))?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((code, body))
    }
}
