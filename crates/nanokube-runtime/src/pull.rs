//! Pulling images from OCI and Docker registries with `oci-client` (rustls with ring, as
//! the rest of the binary): anonymous token auth as Docker Hub needs, basic credentials
//! when given, plain HTTP only for loopback registries and those marked insecure. The
//! manifest (this platform's, from an index), the config and the layers are verified
//! against their digests as they are stored, then the layers are unpacked.

use serde_json::Value;

use crate::store::{Image, ImageStore};
use crate::Reference;

/// Credentials for one registry.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Whether a registry is spoken to over plain HTTP: loopback ones and `insecure` ones.
pub fn plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h).trim_matches(['[', ']']);
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || insecure.iter().any(|i| i == registry)
}

/// Pull `reference` into the store; the image as recorded.
pub async fn pull(store: &ImageStore, reference: &str, credentials: Option<&Credentials>, insecure: &[String]) -> Result<Image, String> {
    pull_via(store, reference, credentials, insecure, None).await
}

/// Pull `reference` from `endpoint` (`host[:port]`, a mirror) instead of its registry's
/// own address when given; the image is recorded under its own name.
pub async fn pull_via(
    store: &ImageStore,
    reference: &str,
    credentials: Option<&Credentials>,
    insecure: &[String],
    endpoint: Option<&str>,
) -> Result<Image, String> {
    // reqwest is built without a default provider: ring, as everywhere in nanokube.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = Reference::parse(reference)?;
    let registry = match endpoint {
        Some(e) => e.to_string(),
        None if r.registry == "docker.io" => "registry-1.docker.io".to_string(),
        None => r.registry.clone(),
    };
    let protocol = if plain_http(&registry, insecure) { oci_client::client::ClientProtocol::Http } else { oci_client::client::ClientProtocol::Https };
    let client = oci_client::Client::new(oci_client::client::ClientConfig { protocol, ..Default::default() });
    let oci_ref = match (&r.tag, &r.digest) {
        (_, Some(d)) => oci_client::Reference::with_digest(registry, r.repository.clone(), d.clone()),
        (Some(t), None) => oci_client::Reference::with_tag(registry, r.repository.clone(), t.clone()),
        (None, None) => return Err(format!("{reference}: no tag or digest")),
    };
    let auth = match credentials {
        Some(c) => oci_client::secrets::RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => oci_client::secrets::RegistryAuth::Anonymous,
    };
    let fail = |e: &dyn std::fmt::Display| format!("failed to pull and unpack image \"{r}\": {e}");
    let (bytes, digest) = client.pull_manifest_raw(&oci_ref, &auth, ACCEPTED).await.map_err(|e| fail(&e))?;
    let digest = store.put_blob(&bytes, Some(&digest)).map_err(|e| fail(&e))?;
    let mut doc: Value = serde_json::from_slice(&bytes).map_err(|e| fail(&e))?;
    let mut manifest_digest = digest.clone();
    if doc.get("manifests").is_some() {
        let (os, arch) = ("linux", if std::env::consts::ARCH == "aarch64" { "arm64" } else { "amd64" });
        let chosen = doc["manifests"]
            .as_array()
            .and_then(|ms| {
                ms.iter().find(|m| {
                    m.pointer("/platform/os").and_then(Value::as_str) == Some(os) && m.pointer("/platform/architecture").and_then(Value::as_str) == Some(arch)
                })
            })
            .and_then(|m| m.get("digest").and_then(Value::as_str))
            .map(String::from)
            .ok_or_else(|| fail(&format!("no match for platform {os}/{arch} in manifest {digest}")))?;
        let by_digest = oci_client::Reference::with_digest(oci_ref.registry().to_string(), oci_ref.repository().to_string(), chosen.clone());
        let (bytes, d) = client.pull_manifest_raw(&by_digest, &auth, ACCEPTED).await.map_err(|e| fail(&e))?;
        manifest_digest = store.put_blob(&bytes, Some(&d)).map_err(|e| fail(&e))?;
        doc = serde_json::from_slice(&bytes).map_err(|e| fail(&e))?;
    }
    let mut blobs: Vec<String> = doc.pointer("/config/digest").and_then(Value::as_str).map(String::from).into_iter().collect();
    blobs.extend(doc.get("layers").and_then(Value::as_array).into_iter().flatten().filter_map(|l| l.get("digest").and_then(Value::as_str).map(String::from)));
    for blob in blobs {
        if store.has_blob(&blob) {
            continue;
        }
        let tmp = store.tmp("pull");
        let file = tokio::fs::File::create(&tmp).await.map_err(|e| fail(&e))?;
        let result = client.pull_blob(&oci_ref, blob.as_str(), file).await;
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(&e));
        }
        store.put_blob_file(&tmp, Some(&blob)).map_err(|e| fail(&e))?;
    }
    let names = match &r.tag {
        Some(_) => vec![Reference { digest: None, ..r.clone() }.to_string()],
        None => vec![r.to_string()],
    };
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.commit(names, &manifest_digest, &doc)).await.map_err(|e| fail(&e))?.map_err(|e| fail(&e))
}
