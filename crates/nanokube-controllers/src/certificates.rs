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
use nanokube_apiserver::authn::UserInfo;
use nanokube_apiserver::registry::{Registry, WriteOptions};
use nanokube_apiserver::request::RequestInfo;
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
    ca_pem: String,
    ca_key_pem: String,
}

impl CsrSigner {
    /// A signer with the cluster CA.
    pub fn new(registry: Arc<Registry>, ca_pem: &str, ca_key_pem: &str) -> Arc<CsrSigner> {
        Arc::new(CsrSigner { registry, ca_pem: ca_pem.into(), ca_key_pem: ca_key_pem.into() })
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let registry = self.registry.clone();
        run_csr_queue(&registry, COMPONENT, shutdown, move |name, csr| {
            let me = self.clone();
            async move { me.sync(&name, csr).await }
        })
        .await
    }

    async fn sync(&self, name: &str, csr: Value) -> Result<(), ApiError> {
        let signer = csr.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or("");
        let issued = csr.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
        if issued || !SIGNERS.contains(&signer) || !condition_true(&csr, "Approved") || condition_true(&csr, "Denied") || condition_true(&csr, "Failed") {
            return Ok(());
        }
        let usages = usages(&csr);
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

/// The work queue both CSR controllers run on: every request by name, handed to
/// `handle` as it is now (requests deleted meanwhile are skipped).
struct CsrQueue {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
}

impl CsrQueue {
    fn enqueue_all(&self) {
        crate::workqueue::enqueue_each(&self.registry, &self.queue, csrs(), None);
    }

    fn observe(&self, change: &Observed) {
        self.queue.add(&format!("/{}", meta::name(change.value())));
    }
}

pub(crate) async fn run_csr_queue<F, Fut>(registry: &Arc<Registry>, component: &str, shutdown: watch::Receiver<bool>, handle: F)
where
    F: Fn(String, Value) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let me = Arc::new(CsrQueue { registry: registry.clone(), queue: WorkQueue::new() });
    let (store, queue) = (registry.store().clone(), me.queue.clone());
    let prefixes = &[csrs().key_prefix()];
    crate::workqueue::run(me, &store, &queue, component, prefixes, shutdown, CsrQueue::enqueue_all, CsrQueue::observe, |me, key| {
        let name = key.trim_start_matches('/').to_string();
        let work = match me.registry.get(csrs(), "", &name) {
            Ok(o) => Ok(Some(handle(name, o.to_value()))),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        };
        async move {
            match work {
                Ok(Some(f)) => f.await,
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            }
        }
    })
    .await
}

/// Whether the requester named in a CSR may do something (the server's authorizer; a
/// SubjectAccessReview in kube-controller-manager).
pub type Authorize = Arc<dyn Fn(&UserInfo, &RequestInfo) -> bool + Send + Sync>;

const APPROVER: &str = "csrapproving";

/// kube-controller-manager's `csrapproving` controller: a kubelet's request for a client
/// certificate (`kubernetes.io/kube-apiserver-client-kubelet`, `O=system:nodes`,
/// `CN=system:node:<name>`, no subject alternative names, the kubelet's usages) is approved
/// when its requester may `create` `certificatesigningrequests/selfnodeclient` (renewing
/// its own) or `certificatesigningrequests/nodeclient` (joining with a bootstrap token);
/// other requests are left for people to approve.
pub struct CsrApprover {
    registry: Arc<Registry>,
    authorize: Authorize,
}

/// The usages a request asks for.
fn usages(csr: &Value) -> Vec<String> {
    csr.pointer("/spec/usages").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(String::from).collect()
}

/// The kubelet client request's usages, with and without key encipherment (upstream's
/// `kubeletClientRequiredUsages` and its no-RSA variant).
fn kubelet_client_usages(usages: &[String]) -> bool {
    let mut set: Vec<&str> = usages.iter().map(String::as_str).collect();
    set.sort_unstable();
    set.dedup();
    set == ["client auth", "digital signature", "key encipherment"] || set == ["client auth", "digital signature"]
}

impl CsrApprover {
    /// An approver asking `authorize` about each requester.
    pub fn new(registry: Arc<Registry>, authorize: Authorize) -> Arc<CsrApprover> {
        Arc::new(CsrApprover { registry, authorize })
    }

    /// Approve until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let registry = self.registry.clone();
        run_csr_queue(&registry, APPROVER, shutdown, move |name, csr| {
            let me = self.clone();
            async move { me.sync(&name, csr).await }
        })
        .await
    }

    /// The subresource whose `create` approves this request, or `None` when it is not a
    /// kubelet client request.
    fn recognise(csr: &Value) -> Option<(&'static str, &'static str)> {
        if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some("kubernetes.io/kube-apiserver-client-kubelet") {
            return None;
        }
        let usages = usages(csr);
        let req = parse_request(csr).ok()?;
        if !kubelet_client_usages(&usages) || validate("kubernetes.io/kube-apiserver-client-kubelet", &usages, &req).is_err() {
            return None;
        }
        if csr.pointer("/spec/username").and_then(Value::as_str) == Some(req.common_name.as_str()) {
            Some(("selfnodeclient", "Auto approving self kubelet client certificate after SubjectAccessReview."))
        } else {
            Some(("nodeclient", "Auto approving kubelet client certificate after SubjectAccessReview."))
        }
    }

    /// A kubelet's serving-certificate request (`kubernetes.io/kubelet-serving`) made by
    /// the node it names, every subject alternative name one of that Node's own
    /// addresses: approved, as k3s signs its agents' serving certificates and clusters
    /// run kubelet-csr-approver with upstream's kubelets (kube-controller-manager leaves
    /// these to people). The API server verifies kubelets against the cluster CA, so a
    /// joined node needs one to be reached for logs, exec and port-forward.
    fn serving_for_own_addresses(&self, csr: &Value) -> bool {
        if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some("kubernetes.io/kubelet-serving") {
            return false;
        }
        let usages = usages(csr);
        let Ok(req) = parse_request(csr) else { return false };
        if validate("kubernetes.io/kubelet-serving", &usages, &req).is_err() {
            return false;
        }
        let user = Self::requester(csr);
        let Some(node) = req.common_name.strip_prefix("system:node:") else { return false };
        if user.name != req.common_name || !user.groups.iter().any(|g| g == "system:nodes") {
            return false;
        }
        let Ok(obj) = self.registry.get(resources::find("", "v1", "nodes").expect("nodes is built in"), "", node) else { return false };
        let own: Vec<String> = obj
            .value()
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("address").and_then(Value::as_str).map(String::from))
            .collect();
        let names: Vec<String> = req
            .params
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::IpAddress(ip) => ip.to_string(),
                SanType::DnsName(d) => d.as_str().to_string(),
                _ => String::new(),
            })
            .collect();
        !names.is_empty() && names.iter().all(|n| own.contains(n))
    }

    /// A node's request for the service proxy's client certificate
    /// (`kubernetes.io/kube-apiserver-client`, `CN=system:kube-proxy` and nothing else,
    /// client usages only): approved, as k3s gives every agent its kube-proxy certificate
    /// and kubeadm every node's kube-proxy its service account (the user is bound to
    /// `system:node-proxier`: list and watch Services, EndpointSlices, Endpoints, Nodes).
    fn kube_proxy_for_a_node(csr: &Value) -> bool {
        if csr.pointer("/spec/signerName").and_then(Value::as_str) != Some("kubernetes.io/kube-apiserver-client") {
            return false;
        }
        let usages = usages(csr);
        let Ok(req) = parse_request(csr) else { return false };
        let user = Self::requester(csr);
        kubelet_client_usages(&usages)
            && validate("kubernetes.io/kube-apiserver-client", &usages, &req).is_ok()
            && req.common_name == "system:kube-proxy"
            && req.organizations.is_empty()
            && req.params.params.subject_alt_names.is_empty()
            && req.params.params.distinguished_name.iter().count() == 1
            && user.name.starts_with("system:node:")
            && user.groups.iter().any(|g| g == "system:nodes")
    }

    fn requester(csr: &Value) -> UserInfo {
        let strings =
            |v: Option<&Value>| -> Vec<String> { v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(String::from).collect() };
        let spec = &csr["spec"];
        let extra = spec.get("extra").and_then(Value::as_object).map(|m| m.iter().map(|(k, v)| (k.clone(), strings(Some(v)))).collect()).unwrap_or_default();
        UserInfo {
            name: spec.get("username").and_then(Value::as_str).unwrap_or("").to_string(),
            uid: spec.get("uid").and_then(Value::as_str).unwrap_or("").to_string(),
            groups: strings(spec.get("groups")),
            extra,
        }
    }

    async fn sync(&self, name: &str, csr: Value) -> Result<(), ApiError> {
        let issued = csr.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
        if issued || condition_true(&csr, "Approved") || condition_true(&csr, "Denied") {
            return Ok(());
        }
        if Self::kube_proxy_for_a_node(&csr) {
            return self.approve(name, "Auto approving the service proxy's client certificate for a node.").await;
        }
        if self.serving_for_own_addresses(&csr) {
            return self.approve(name, "Auto approving kubelet serving certificate: its names are the node's own addresses.").await;
        }
        // A self-renewal is also a node-client request: try the narrower permission first.
        let Some(first) = Self::recognise(&csr) else { return Ok(()) };
        let mut tries = vec![first];
        if first.0 == "selfnodeclient" {
            tries.push(("nodeclient", "Auto approving kubelet client certificate after SubjectAccessReview."));
        }
        let user = Self::requester(&csr);
        let Some((_, message)) = tries.into_iter().find(|(sub, _)| {
            (self.authorize)(
                &user,
                &RequestInfo {
                    is_resource: true,
                    verb: "create".into(),
                    group: "certificates.k8s.io".into(),
                    version: "*".into(),
                    resource: "certificatesigningrequests".into(),
                    subresource: (*sub).into(),
                    ..Default::default()
                },
            )
        }) else {
            return Ok(());
        };
        self.approve(name, message).await
    }

    /// Add the `Approved` condition (unless the request was decided meanwhile).
    async fn approve(&self, name: &str, message: &str) -> Result<(), ApiError> {
        let opts = WriteOptions { subresource: Some("approval".into()), ..Default::default() };
        let written = self
            .registry
            .update_with(csrs(), "", name, &opts, |cur| {
                let mut next = cur.clone();
                if condition_true(cur, "Approved") || condition_true(cur, "Denied") {
                    return Ok(next);
                }
                let now = meta::now_rfc3339();
                let approved = json!({"type": "Approved", "status": "True", "reason": "AutoApproved", "message": message,
                                      "lastUpdateTime": now, "lastTransitionTime": now});
                if !next["status"].is_object() {
                    next["status"] = json!({});
                }
                let list = next["status"].as_object_mut().map(|s| s.entry("conditions").or_insert_with(|| json!([])));
                if let Some(list) = list.and_then(Value::as_array_mut) {
                    list.push(approved);
                }
                Ok(next)
            })
            .await;
        match written {
            Err(e) if e.code != 404 => Err(e),
            _ => Ok(()),
        }
    }
}
