//! kube-controller-manager's `csrsigning` controller: approved CertificateSigningRequests
//! for the signers `kubernetes.io/kube-apiserver-client`,
//! `kubernetes.io/kube-apiserver-client-kubelet` and `kubernetes.io/kubelet-serving` are
//! signed with the cluster CA and the certificate written to `status.certificate`.
//!
//! Each signer checks what it signs as upstream's does (allowed and required usages;
//! for the kubelet signers the `system:nodes` organization, a `system:node:` common name,
//! and which subject alternative names); a request it refuses gets the `Failed`
//! condition with reason `SignerValidationFailure`. Certificates are valid from five
//! minutes before signing (clock skew) for `spec.expirationSeconds` (at least ten
//! minutes) or one year (`--cluster-signing-duration`), never past the CA's own end.
//! Who may approve is checked at admission (`CertificateApproval`), not here.

use std::sync::Arc;

use base64::Engine;
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{Registry, WriteOptions};
use rcgen::{ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::workqueue::Observed;
use crate::workqueue::WorkQueue;

const COMPONENT: &str = "certificatesigningrequest-signing-controller";
/// The signers this controller signs for.
pub const SIGNERS: &[&str] = &["kubernetes.io/kube-apiserver-client", "kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving"];
const DEFAULT_DURATION: i64 = 365 * 24 * 3600;
const MIN_DURATION: i64 = 600;
const BACKDATE: i64 = 300;

fn csrs() -> &'static resources::ResourceDef {
    resources::find("certificates.k8s.io", "v1", "certificatesigningrequests").expect("built-in resource")
}

fn condition_true(csr: &Value, ty: &str) -> bool {
    csr.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c.get("type").and_then(Value::as_str) == Some(ty) && c.get("status").and_then(Value::as_str) != Some("False")))
}

/// What a request asks for, read from its PKCS#10 body.
struct Requested {
    params: rcgen::CertificateSigningRequestParams,
    common_name: String,
    organizations: Vec<String>,
}

fn parse_request(csr: &Value) -> Result<Requested, String> {
    let b64 = csr.pointer("/spec/request").and_then(Value::as_str).unwrap_or("");
    let pem = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("request is not base64: {e}"))?;
    let pem = String::from_utf8(pem).map_err(|_| "request is not PEM".to_string())?;
    let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).map_err(|e| format!("unable to parse csr: {e}"))?;
    let dn = &params.params.distinguished_name;
    let common_name = dn.get(&rcgen::DnType::CommonName).map(dn_value_text).unwrap_or_default();
    let organizations = dn.iter().filter(|(t, _)| **t == rcgen::DnType::OrganizationName).map(|(_, v)| dn_value_text(v)).collect();
    Ok(Requested { params, common_name, organizations })
}

fn dn_value_text(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_string(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_string(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_string(),
        rcgen::DnValue::BmpString(_) | rcgen::DnValue::UniversalString(_) => String::new(),
        _ => String::new(),
    }
}

/// Upstream's per-signer checks; the usages to put in the certificate.
fn validate(signer: &str, usages: &[String], req: &Requested) -> Result<(Vec<KeyUsagePurpose>, Vec<ExtendedKeyUsagePurpose>), String> {
    let serving = signer == "kubernetes.io/kubelet-serving";
    let (required, kind) = if serving { ("server auth", "serving") } else { ("client auth", "client") };
    let mut key = Vec::new();
    let mut extended = Vec::new();
    for u in usages {
        match u.as_str() {
            "digital signature" => key.push(KeyUsagePurpose::DigitalSignature),
            "key encipherment" => key.push(KeyUsagePurpose::KeyEncipherment),
            "client auth" if !serving => extended.push(ExtendedKeyUsagePurpose::ClientAuth),
            "server auth" if serving => extended.push(ExtendedKeyUsagePurpose::ServerAuth),
            other => return Err(format!("invalid usage for {kind} certificate: {other}")),
        }
    }
    if !usages.iter().any(|u| u == required) {
        return Err(format!("missing required usage for {kind} certificate: {required}"));
    }
    let sans = &req.params.params.subject_alt_names;
    if signer != "kubernetes.io/kube-apiserver-client" {
        if req.organizations != ["system:nodes"] {
            return Err("subject organization is not system:nodes".into());
        }
        if !req.common_name.starts_with("system:node:") {
            return Err("subject common name does not begin with system:node:".into());
        }
        let has = |f: fn(&SanType) -> bool| sans.iter().any(f);
        if has(|s| matches!(s, SanType::Rfc822Name(_))) {
            return Err("email subjectAltNames are not allowed".into());
        }
        if has(|s| matches!(s, SanType::URI(_))) {
            return Err("URI subjectAltNames are not allowed".into());
        }
        if serving {
            if !has(|s| matches!(s, SanType::DnsName(_) | SanType::IpAddress(_))) {
                return Err("DNS or IP subjectAltName is required".into());
            }
        } else if !sans.is_empty() {
            return Err("DNS, IP, email, and URI subjectAltNames are not allowed".into());
        }
    }
    Ok((key, extended))
}

/// The controller.
pub struct CsrSigner {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
    ca_pem: String,
    ca_key_pem: String,
}

impl CsrSigner {
    /// A signer with the cluster CA.
    pub fn new(registry: Arc<Registry>, ca_pem: &str, ca_key_pem: &str) -> Arc<CsrSigner> {
        Arc::new(CsrSigner { registry, queue: WorkQueue::new(), ca_pem: ca_pem.into(), ca_key_pem: ca_key_pem.into() })
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[csrs().key_prefix()];
        crate::workqueue::run(self.clone(), &store, &queue, COMPONENT, prefixes, shutdown, Self::enqueue_all, Self::observe, |me, key| async move {
            me.sync(&key).await
        })
        .await
    }

    fn enqueue_all(&self) {
        crate::workqueue::enqueue_each(&self.registry, &self.queue, csrs(), None);
    }

    fn observe(&self, change: &Observed) {
        self.queue.add(&format!("/{}", meta::name(change.value())));
    }

    async fn sync(&self, key: &str) -> Result<(), ApiError> {
        let name = key.trim_start_matches('/');
        let csr = match self.registry.get(csrs(), "", name) {
            Ok(o) => o.value().clone(),
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let signer = csr.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or("");
        let issued = csr.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
        if issued || !SIGNERS.contains(&signer) || !condition_true(&csr, "Approved") || condition_true(&csr, "Denied") || condition_true(&csr, "Failed") {
            return Ok(());
        }
        let usages: Vec<String> =
            csr.pointer("/spec/usages").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
        let signed = parse_request(&csr).and_then(|req| {
            let (key_usages, extended) = validate(signer, &usages, &req)?;
            let seconds = csr.pointer("/spec/expirationSeconds").and_then(Value::as_i64).map_or(DEFAULT_DURATION, |s| s.clamp(MIN_DURATION, DEFAULT_DURATION));
            self.sign(req, key_usages, extended, seconds)
        });
        let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
        let written = self
            .registry
            .update_with(csrs(), "", name, &opts, |cur| {
                let mut next = cur.clone();
                match &signed {
                    Ok(pem) => next["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(pem)),
                    Err(why) => {
                        let now = meta::now_rfc3339();
                        let failed = json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": why,
                                            "lastUpdateTime": now, "lastTransitionTime": now});
                        let conditions = next["status"].as_object_mut().map(|s| s.entry("conditions").or_insert_with(|| json!([])));
                        if let Some(list) = conditions.and_then(Value::as_array_mut) {
                            list.push(failed);
                        }
                    }
                }
                Ok(next)
            })
            .await;
        match written {
            Err(e) if e.code != 404 => Err(e),
            _ => Ok(()),
        }
    }

    fn sign(&self, req: Requested, key_usages: Vec<KeyUsagePurpose>, extended: Vec<ExtendedKeyUsagePurpose>, seconds: i64) -> Result<String, String> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(|e| format!("the CA key: {e}"))?;
        let ca_end =
            x509_parser::pem::parse_x509_pem(self.ca_pem.as_bytes()).ok().and_then(|(_, p)| p.parse_x509().ok().map(|c| c.validity().not_after.to_datetime()));
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, ca_key).map_err(|e| format!("the CA certificate: {e}"))?;
        let mut csr = req.params;
        let now = time::OffsetDateTime::now_utc();
        let params = &mut csr.params;
        params.not_before = now - time::Duration::seconds(BACKDATE);
        params.not_after = now + time::Duration::seconds(seconds);
        if let Some(end) = ca_end {
            params.not_after = params.not_after.min(end);
        }
        params.key_usages = key_usages;
        params.extended_key_usages = extended;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&fastrand::u128(..).to_be_bytes()[..16]));
        let cert = csr.signed_by(&issuer).map_err(|e| format!("signing: {e}"))?;
        Ok(cert.pem())
    }
}
