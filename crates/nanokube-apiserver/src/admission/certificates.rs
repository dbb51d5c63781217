//! kube-apiserver's certificate admission plugins for CertificateSigningRequests:
//!
//! - `CertificateApproval`: writing the `approval` subresource needs the `approve` verb on
//!   `signers` (group `certificates.k8s.io`) named after the request's `signerName`, or
//!   its domain's wildcard (`kubernetes.io/*`).
//! - `CertificateSigning`: changing `status.certificate` needs the `sign` verb likewise.
//! - `CertificateSubjectRestriction`: no request to `kubernetes.io/kube-apiserver-client`
//!   may ask for the `system:masters` group.
//!
//! The server's own controllers (no requester) are not checked.

use nanokube_api::ApiError;
use serde_json::Value;
use x509_parser::prelude::FromDer;

use super::{Attributes, Operation};
use crate::request::RequestInfo;

/// The signer whose certificates authenticate clients to the API server.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";

fn forbidden(attrs: &Attributes<'_>, why: &str) -> ApiError {
    let mut e = ApiError::forbidden(format!("certificatesigningrequests.certificates.k8s.io {:?} is forbidden: {why}", attrs.name));
    e.details.name = Some(attrs.name.to_string());
    e.details.group = Some("certificates.k8s.io".into());
    e.details.kind = Some("certificatesigningrequests".into());
    e
}

/// Upstream's `IsAuthorizedForSignerName`: the signer by name, else its domain's `*`.
fn may_for_signer(attrs: &Attributes<'_>, verb: &str, signer: &str) -> bool {
    let Some(requester) = attrs.requester else { return true };
    let ask = |name: &str| RequestInfo {
        is_resource: true,
        verb: verb.into(),
        group: "certificates.k8s.io".into(),
        version: "*".into(),
        resource: "signers".into(),
        name: name.into(),
        ..Default::default()
    };
    if requester.may(&ask(signer)) {
        return true;
    }
    match signer.split_once('/') {
        Some((domain, _)) => requester.may(&ask(&format!("{domain}/*"))),
        None => false,
    }
}

/// The organizations of the subject a PEM certificate request asks for.
pub fn requested_organizations(request_pem: &[u8]) -> Option<Vec<String>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(request_pem).ok()?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents).ok()?;
    let subject = &csr.certification_request_info.subject;
    Some(subject.iter_organization().filter_map(|o| o.as_str().ok()).map(String::from).collect())
}

/// Check a write of a CertificateSigningRequest.
pub fn check(attrs: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
    if attrs.def.group != "certificates.k8s.io" || attrs.def.plural != "certificatesigningrequests" {
        return Ok(());
    }
    let Some(obj) = obj else { return Ok(()) };
    let signer = obj.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or("");
    match (attrs.operation, attrs.subresource) {
        (Operation::Update, "approval") if !may_for_signer(attrs, "approve", signer) => {
            Err(forbidden(attrs, &format!("user not permitted to approve requests with signerName {signer:?}")))
        }
        (Operation::Update, "status")
            if old.and_then(|o| o.pointer("/status/certificate")) != obj.pointer("/status/certificate") && !may_for_signer(attrs, "sign", signer) =>
        {
            Err(forbidden(attrs, &format!("user not permitted to sign requests with signerName {signer:?}")))
        }
        (Operation::Create, _) if signer == KUBE_APISERVER_CLIENT => {
            let request = obj.pointer("/spec/request").and_then(Value::as_str).unwrap_or("");
            let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, request).unwrap_or_default();
            if requested_organizations(&pem).unwrap_or_default().iter().any(|o| o == crate::authn::SYSTEM_MASTERS) {
                return Err(forbidden(attrs, &format!("use of {KUBE_APISERVER_CLIENT} signer with system:masters group is not allowed")));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
