//! Reaching servers behind Services: webhooks and aggregated API servers. A Service is
//! resolved to one of its ready endpoints (upstream's endpoint resolver, what
//! `--enable-aggregator-routing` selects: Service IPs carry no traffic until the node's
//! proxy exists), and spoken to over TLS that trusts the given CA bundle only, as
//! HTTP/1.1.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use nanokube_api::resources;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

use crate::registry::Registry;

/// A client certificate chain and key (PEM), presented to the backend.
pub struct ClientIdentity {
    /// Certificate chain PEM.
    pub cert_pem: String,
    /// Key PEM.
    pub key_pem: String,
}

/// A ready endpoint of the Service's port: from its EndpointSlices, else its Endpoints.
pub fn resolve_service(registry: &Registry, ns: &str, name: &str, port: i64) -> Result<String, String> {
    let svc_def = resources::find("", "v1", "services").ok_or("no services")?;
    let svc = registry.get(svc_def, ns, name).map_err(|_| format!("service \"{name}\" not found"))?;
    let svc = svc.value();
    let ports = svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let sp = ports.iter().find(|p| p.get("port").and_then(Value::as_i64) == Some(port)).ok_or_else(|| format!("service \"{name}\" has no port {port}"))?;
    let port_name = sp.get("name").and_then(Value::as_str).unwrap_or("");
    let target_number = match sp.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(_)) => None,
        _ => Some(port),
    };
    // EndpointSlices name their ports as the Service's do.
    if let Some(def) = resources::find("discovery.k8s.io", "v1", "endpointslices") {
        let labels = nanokube_api::selector::LabelSelector::parse(&format!("kubernetes.io/service-name={name}")).map_err(|e| e.message)?;
        let opts = crate::registry::ListOptions { labels, ..Default::default() };
        if let Ok(list) = registry.list(def, Some(ns), &opts) {
            for slice in &list.items {
                let slice = slice.value();
                let p = slice
                    .get("ports")
                    .and_then(Value::as_array)
                    .and_then(|ps| ps.iter().find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name));
                let Some(p) = p.and_then(|p| p.get("port")).and_then(Value::as_i64).or(target_number) else { continue };
                for ep in slice.get("endpoints").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                    if ep.pointer("/conditions/ready") == Some(&Value::Bool(false)) {
                        continue;
                    }
                    if let Some(ip) = ep.pointer("/addresses/0").and_then(Value::as_str) {
                        return Ok(join_host_port(ip, p));
                    }
                }
            }
        }
    }
    let ep_def = resources::find("", "v1", "endpoints").ok_or("no endpoints")?;
    if let Ok(eps) = registry.get(ep_def, ns, name) {
        for subset in eps.value().get("subsets").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let p = subset
                .get("ports")
                .and_then(Value::as_array)
                .and_then(|ps| ps.iter().find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name));
            let Some(p) = p.and_then(|p| p.get("port")).and_then(Value::as_i64).or(target_number) else { continue };
            if let Some(ip) = subset.pointer("/addresses/0/ip").and_then(Value::as_str) {
                return Ok(join_host_port(ip, p));
            }
        }
    }
    Err(format!("service \"{ns}/{name}\" has no ready endpoints"))
}

pub fn join_host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// TLS trusting `ca_bundle` (base64 of PEM, as API objects carry it) only, or nothing
/// at all when `insecure` (an APIService's `insecureSkipTLSVerify`), presenting `identity`.
pub fn tls_config(ca_bundle: &str, insecure: bool, identity: Option<&ClientIdentity>) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let builder = if insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(roots(ca_bundle)?)
    };
    let cfg = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(id.cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(certs, key).map_err(|e| e.to_string())?
        }
    };
    Ok(Arc::new(cfg))
}

fn roots(ca_bundle: &str) -> Result<rustls::RootCertStore, String> {
    let pem = base64::engine::general_purpose::STANDARD.decode(ca_bundle).map_err(|e| format!("invalid caBundle: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("invalid caBundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("invalid caBundle: {e}"))?;
    }
    if roots.is_empty() {
        return Err("x509: certificate signed by unknown authority (no caBundle)".into());
    }
    Ok(roots)
}

/// `insecureSkipTLSVerify`: any certificate is accepted (signatures still checked). Also
/// what a joining node reads `cluster-info` with before it trusts any CA.
#[derive(Debug)]
pub struct NoVerification(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An HTTP/1.1 connection over TLS to `addr`, the certificate checked for `server_name`.
pub async fn connect(addr: &str, server_name: &str, tls: Arc<rustls::ClientConfig>) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("dial tcp {addr}: {e}"))?;
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    // Upgrades (exec through `nodes/proxy`) take the connection over when answered `101`.
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}
