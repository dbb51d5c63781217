//! Joining a cluster as a node with a bootstrap token, as `kubeadm join` and kubelet's
//! TLS bootstrap do it:
//!
//! 1. [`discover`]: read `cluster-info` from `kube-public` without trusting the server
//!    yet, check the token's signature on it (so the server address and CA in it come
//!    from someone holding the token), optionally pin the CA's public key
//!    (`--discovery-token-ca-cert-hash sha256:…`), then read it again trusting that CA,
//!    which only a server holding the CA's key can answer.
//! 2. [`request_client_certificate`]: a new key, a `kube-apiserver-client-kubelet`
//!    request for `CN=system:node:<name>, O=system:nodes` sent with the token, and the
//!    certificate once the controllers approve and sign it.
//!
//! The node agent that runs on these credentials over the network (`nanokube agent`) is
//! not built yet; these two steps are its first half, kept here so the control plane's
//! side of joining is tested end to end from a client's view.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use nanokube_apiserver::bootstrap_token::{self, CLUSTER_INFO, SIGNATURE_PREFIX};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

use crate::client::{ApiClient, ClusterAccess};

const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// Where the cluster is and the CA that proves it, as `cluster-info` told a token holder.
#[derive(Debug, Clone)]
pub struct Discovered {
    /// The API server's address (`https://host:port`) from `cluster-info`.
    pub server: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
}

fn tls_trusting(ca_pem: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    Ok(match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.map_err(|e| format!("the CA: {e}"))?).map_err(|e| format!("the CA: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        // Only for the first read of `cluster-info`, whose content the token's signature
        // then vouches for (kubeadm's "insecure" discovery client).
        None => builder.dangerous().with_custom_certificate_verifier(Arc::new(nanokube_apiserver::backend::NoVerification(provider))).with_no_client_auth(),
    })
}

fn client(server: &str, tls: rustls::ClientConfig, token: Option<&str>) -> ApiClient {
    let access = ClusterAccess { server: server.trim_end_matches('/').to_string(), tls, token: token.map(String::from), token_file: None, ca_pem: None };
    ApiClient::from_access(&access, false)
}

/// `sha256:<hex>` of each certificate's public key (its DER SubjectPublicKeyInfo), the
/// form of kubeadm's `--discovery-token-ca-cert-hash`.
pub fn public_key_hashes(ca_pem: &str) -> Vec<String> {
    CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .filter_map(Result::ok)
        .filter_map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
            Some(format!("sha256:{}", digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>()))
        })
        .collect()
}

async fn read_cluster_info(client: &ApiClient) -> Result<Value, String> {
    let (code, body) = client.request("GET", CLUSTER_INFO_PATH, None, Some("application/json"), Bytes::new()).await?;
    if code != 200 {
        return Err(format!("reading {CLUSTER_INFO} from kube-public: HTTP {code}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{CLUSTER_INFO}: {e}"))
}

/// Find the cluster behind `server` with `token`, trusting its CA only if the token
/// signed `cluster-info` and, when `ca_hashes` are given, the CA's key is one of them
/// (with none given, `unsafe_skip_ca_verification` must say so, as kubeadm insists).
pub async fn discover(server: &str, token: &str, ca_hashes: &[String], unsafe_skip_ca_verification: bool) -> Result<Discovered, String> {
    let (id, secret) = bootstrap_token::parse_token(token).ok_or("the token must match [a-z0-9]{6}.[a-z0-9]{16}")?;
    if ca_hashes.is_empty() && !unsafe_skip_ca_verification {
        return Err("give the CA's public key hash (sha256:…) or explicitly skip CA verification".into());
    }
    let info = read_cluster_info(&client(server, tls_trusting(None)?, None)).await?;
    let kubeconfig = info.pointer("/data/kubeconfig").and_then(Value::as_str).ok_or("cluster-info has no kubeconfig")?;
    let signature = info.pointer(&format!("/data/{SIGNATURE_PREFIX}{id}")).and_then(Value::as_str).ok_or_else(|| {
        format!("there is no signature for token id {id:?} in cluster-info: the token is invalid for this cluster or has expired (make another with `nanokube token create`)")
    })?;
    if bootstrap_token::detached_signature(kubeconfig, id, secret) != signature {
        return Err("the signature on cluster-info does not verify with this token: the server cannot be trusted".into());
    }
    let cfg: Value = serde_norway::from_str(kubeconfig).map_err(|e| format!("cluster-info's kubeconfig: {e}"))?;
    let cluster = cfg.pointer("/clusters/0/cluster").ok_or("cluster-info's kubeconfig names no cluster")?;
    let signed_server = cluster.get("server").and_then(Value::as_str).ok_or("cluster-info's kubeconfig names no server")?.to_string();
    let ca_pem = cluster
        .get("certificate-authority-data")
        .and_then(Value::as_str)
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or("cluster-info's kubeconfig carries no CA")?;
    if !ca_hashes.is_empty() {
        let found = public_key_hashes(&ca_pem);
        if !found.iter().any(|h| ca_hashes.iter().any(|want| want.eq_ignore_ascii_case(h))) {
            return Err(format!("the CA in cluster-info (public key {}) is none of the pinned ones", found.join(", ")));
        }
    }
    // Again, trusting the CA: only a server holding its key answers, and it must say the same.
    let again = read_cluster_info(&client(&signed_server, tls_trusting(Some(&ca_pem))?, None)).await?;
    if again.pointer("/data/kubeconfig").and_then(Value::as_str) != Some(kubeconfig) {
        return Err("cluster-info changed between the two reads; try again".into());
    }
    Ok(Discovered { server: signed_server, ca_pem })
}

/// Ask the cluster for node `node`'s client certificate with `token` and wait up to
/// `timeout` for it to be approved and signed: (certificate PEM, key PEM).
pub async fn request_client_certificate(cluster: &Discovered, token: &str, node: &str, timeout: Duration) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    let request = params.serialize_request(&key).and_then(|r| r.pem()).map_err(|e| e.to_string())?;
    // An ECDSA key: no key encipherment, as kubelet asks.
    let csr = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(request),
                 "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                 "usages": ["digital signature", "client auth"]},
    });
    let api = client(&cluster.server, tls_trusting(Some(&cluster.ca_pem))?, Some(token));
    let pem = await_certificate(&api, &csr, &key, timeout).await?;
    Ok((pem, key.serialize_pem()))
}

/// Send the CertificateSigningRequest `csr` (for `key`) and wait up to `timeout` for it
/// to be approved and signed: the certificate (PEM), checked to be for `key`.
pub async fn await_certificate(api: &ApiClient, csr: &Value, key: &rcgen::KeyPair, timeout: Duration) -> Result<String, String> {
    let body = Bytes::from(serde_json::to_vec(csr).map_err(|e| e.to_string())?);
    let (code, resp) = api.request("POST", CSRS, Some("application/json"), Some("application/json"), body).await?;
    if code != 201 {
        return Err(format!("creating the certificate request: HTTP {code}: {}", String::from_utf8_lossy(&resp)));
    }
    let created: Value = serde_json::from_slice(&resp).map_err(|e| e.to_string())?;
    let name = created.pointer("/metadata/name").and_then(Value::as_str).ok_or("the created request has no name")?.to_string();
    let deadline = Instant::now() + timeout;
    loop {
        let (code, resp) = api.request("GET", &format!("{CSRS}/{name}"), None, Some("application/json"), Bytes::new()).await?;
        if code != 200 {
            return Err(format!("reading certificate request {name}: HTTP {code}: {}", String::from_utf8_lossy(&resp)));
        }
        let now: Value = serde_json::from_slice(&resp).map_err(|e| e.to_string())?;
        let refused =
            now.pointer("/status/conditions").and_then(Value::as_array).into_iter().flatten().find(|c| {
                matches!(c.get("type").and_then(Value::as_str), Some("Denied" | "Failed")) && c.get("status").and_then(Value::as_str) != Some("False")
            });
        if let Some(c) = refused {
            return Err(format!("certificate request {name} {}: {}", c["type"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")));
        }
        if let Some(cert) = now.pointer("/status/certificate").and_then(Value::as_str).filter(|c| !c.is_empty()) {
            let pem = base64::engine::general_purpose::STANDARD.decode(cert).map_err(|e| format!("the issued certificate: {e}"))?;
            let pem = String::from_utf8(pem).map_err(|_| "the issued certificate is not PEM")?;
            // The certificate must be for the key made here.
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("the issued certificate: {e}"))?;
            let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("the issued certificate: {e}"))?;
            if parsed.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(key).as_slice() {
                return Err("the issued certificate is not for the key that asked".into());
            }
            return Ok(pem);
        }
        if Instant::now() >= deadline {
            return Err(format!("certificate request {name} was not approved and signed within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
