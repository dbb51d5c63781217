//! kube-controller-manager's `csrcleaner`: CertificateSigningRequests do not pile up.
//! A request is deleted when its issued certificate has expired, an hour after it was
//! approved and issued, denied or failed (by the condition's `lastUpdateTime`), or a day
//! after it was made if nobody decided. Requests are looked at when they change and
//! every hour, as upstream polls.

use std::sync::Arc;
use std::time::Duration;

use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::clock::Clock;

const APPROVED_EXPIRATION: time::Duration = time::Duration::hours(1);
const DENIED_EXPIRATION: time::Duration = time::Duration::hours(1);
const FAILED_EXPIRATION: time::Duration = time::Duration::hours(1);
const PENDING_EXPIRATION: time::Duration = time::Duration::hours(24);
const POLLING_INTERVAL: Duration = Duration::from_secs(3600);

fn csrs() -> &'static resources::ResourceDef {
    resources::find("certificates.k8s.io", "v1", "certificatesigningrequests").expect("built-in resource")
}

/// The condition of a type, if the request has it.
fn condition<'a>(csr: &'a Value, ty: &str) -> Option<&'a Value> {
    csr.pointer("/status/conditions").and_then(Value::as_array)?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

/// Whether a time (RFC 3339) is more than `age` before `now`; an absent or unreadable
/// time is not old (upstream skips zero times).
fn older_than(t: Option<&Value>, age: time::Duration, now: OffsetDateTime) -> bool {
    t.and_then(Value::as_str).and_then(meta::parse_time).is_some_and(|t| now - t > age)
}

/// Whether any certificate in `status.certificate` (base64 PEM) has expired.
fn issued_expired(csr: &Value, now: OffsetDateTime) -> bool {
    use base64::Engine as _;
    let Some(pem) = csr.pointer("/status/certificate").and_then(Value::as_str).and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok()) else {
        return false;
    };
    x509_parser::pem::Pem::iter_from_buffer(&pem)
        .filter_map(Result::ok)
        .filter_map(|p| p.parse_x509().ok().map(|c| c.validity().not_after.to_datetime()))
        .any(|not_after| now > not_after)
}

/// Why a request should go now, or `None` to keep it.
pub fn expired(csr: &Value, now: OffsetDateTime) -> Option<&'static str> {
    let issued = csr.pointer("/status/certificate").and_then(Value::as_str).is_some_and(|c| !c.is_empty());
    let updated = |ty: &str| condition(csr, ty).and_then(|c| c.get("lastUpdateTime"));
    if issued_expired(csr, now) {
        return Some("its certificate has expired");
    }
    if issued && older_than(updated("Approved"), APPROVED_EXPIRATION, now) {
        return Some("it was approved and issued more than an hour ago");
    }
    if older_than(updated("Denied"), DENIED_EXPIRATION, now) {
        return Some("it was denied more than an hour ago");
    }
    if older_than(updated("Failed"), FAILED_EXPIRATION, now) {
        return Some("it failed more than an hour ago");
    }
    let decided = ["Approved", "Denied"].iter().any(|t| condition(csr, t).is_some());
    if !decided && older_than(csr.pointer("/metadata/creationTimestamp"), PENDING_EXPIRATION, now) {
        return Some("it has been pending for more than a day");
    }
    None
}

/// The cleaner.
pub struct CsrCleaner {
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
}

impl CsrCleaner {
    /// A cleaner reading the time from `clock`.
    pub fn new(registry: Arc<Registry>, clock: Arc<dyn Clock>) -> Arc<CsrCleaner> {
        Arc::new(CsrCleaner { registry, clock })
    }

    /// Clean until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let registry = self.registry.clone();
        let me = self.clone();
        let on_change = crate::certificates::run_csr_queue(&registry, "csrcleaner", shutdown.clone(), move |name, csr| {
            let me = me.clone();
            async move { me.handle(&name, &csr).await }
        });
        let poll = async {
            loop {
                tokio::time::sleep(POLLING_INTERVAL).await;
                let Ok(list) = self.registry.list(csrs(), None, &ListOptions::default()) else { continue };
                for obj in &list.items {
                    let csr = obj.to_value();
                    let _ = self.handle(meta::name(&csr), &csr).await;
                }
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = on_change => {}
            _ = poll => {}
        }
    }

    async fn handle(&self, name: &str, csr: &Value) -> Result<(), ApiError> {
        let Some(why) = expired(csr, self.clock.now()) else { return Ok(()) };
        tracing::info!(csr = name, why, "deleting CertificateSigningRequest");
        // Deleted only if it is still the request judged (its uid), as upstream's precondition.
        let opts = DeleteOptions { precondition_uid: Some(meta::uid(csr).to_string()), ..Default::default() };
        match self.registry.delete(csrs(), "", name, &opts).await {
            Err(e) if e.code != 404 && e.code != 409 => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deadlines_are_upstreams() {
        let now = OffsetDateTime::now_utc();
        let at = |ago: time::Duration| meta::format_time(now - ago);
        let pending = |ago| json!({"metadata": {"creationTimestamp": at(ago)}});
        assert_eq!(expired(&pending(time::Duration::hours(23)), now), None);
        assert!(expired(&pending(time::Duration::hours(25)), now).is_some());
        let with = |ty: &str, ago, cert: &str| {
            json!({"metadata": {"creationTimestamp": at(time::Duration::hours(30))},
                   "status": {"certificate": cert, "conditions": [{"type": ty, "status": "True", "lastUpdateTime": at(ago)}]}})
        };
        // Approved but not yet issued: kept however old the approval.
        assert_eq!(expired(&with("Approved", time::Duration::hours(2), ""), now), None);
        assert_eq!(expired(&with("Denied", time::Duration::minutes(59), ""), now), None);
        assert!(expired(&with("Denied", time::Duration::minutes(61), ""), now).is_some());
        assert!(expired(&with("Failed", time::Duration::minutes(61), ""), now).is_some());
        // An approval with no time is not old.
        let untimed = json!({"status": {"certificate": "x", "conditions": [{"type": "Approved", "status": "True"}]}});
        assert_eq!(expired(&untimed, now), None);
    }
}
