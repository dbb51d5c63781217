//! Leader election on a `coordination.k8s.io` Lease, as client-go's `leaderelection`
//! with kube-controller-manager's settings (lease 15 s, renew deadline 10 s, retry every
//! 2 s): of several servers sharing one store, only the holder runs the controllers.
//!
//! The holder writes `holderIdentity`, `leaseDurationSeconds`, `acquireTime`,
//! `renewTime` and `leaseTransitions`; another candidate takes the Lease only once
//! `renewTime + leaseDurationSeconds` has passed. Every write is a compare-and-swap on
//! the Lease's resourceVersion, so two candidates never both win. A holder that cannot
//! renew within the deadline stops its controllers and becomes a candidate again
//! (upstream's controller manager exits instead). On a clean stop the Lease is released
//! (client-go's `ReleaseOnCancel`) so a successor need not wait.

use std::sync::Arc;
use std::time::Duration;

use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{Registry, WriteOptions};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::watch;

/// How long a Lease is good for without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long a holder keeps trying to renew before it gives up.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the holder renews and candidates retry.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

fn leases() -> &'static resources::ResourceDef {
    resources::find("coordination.k8s.io", "v1", "leases").expect("built-in resource")
}

/// A candidate for one Lease.
pub struct Elector {
    registry: Arc<Registry>,
    namespace: String,
    name: String,
    identity: String,
}

fn micro(t: OffsetDateTime) -> String {
    meta::format_micro_time(t)
}

impl Elector {
    /// A candidate named `identity` for the Lease `namespace/name`.
    pub fn new(registry: Arc<Registry>, namespace: &str, name: &str, identity: &str) -> Elector {
        Elector { registry, namespace: namespace.into(), name: name.into(), identity: identity.into() }
    }

    /// Try once to take or renew the Lease; whether this candidate holds it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, ApiError> {
        let now = OffsetDateTime::now_utc();
        let current = match self.registry.get(leases(), &self.namespace, &self.name) {
            Ok(l) => l.to_value(),
            Err(e) if e.code == 404 => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": LEASE_DURATION.as_secs(),
                             "acquireTime": micro(now), "renewTime": micro(now), "leaseTransitions": 0},
                });
                return match self.registry.create(leases(), &self.namespace, lease, &WriteOptions::default()).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let spec = current.get("spec").cloned().unwrap_or(json!({}));
        let holder = spec.get("holderIdentity").and_then(Value::as_str).unwrap_or("");
        let duration = spec.get("leaseDurationSeconds").and_then(Value::as_i64).unwrap_or(LEASE_DURATION.as_secs() as i64);
        let renewed = spec.get("renewTime").and_then(Value::as_str).and_then(meta::parse_time);
        let expired = renewed.is_none_or(|r| r + time::Duration::seconds(duration) < now);
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() && !expired {
            return Ok(false);
        }
        let mut next = current.clone();
        next["spec"]["holderIdentity"] = json!(self.identity);
        next["spec"]["leaseDurationSeconds"] = json!(LEASE_DURATION.as_secs());
        next["spec"]["renewTime"] = json!(micro(now));
        if !mine {
            next["spec"]["acquireTime"] = json!(micro(now));
            next["spec"]["leaseTransitions"] = json!(spec.get("leaseTransitions").and_then(Value::as_i64).unwrap_or(0) + 1);
        }
        // Compare-and-swap on the version read: a rival's write in between wins.
        let rv = meta::resource_version(&current).to_string();
        let written = self
            .registry
            .update_with(leases(), &self.namespace, &self.name, &WriteOptions::default(), |cur| {
                if meta::resource_version(cur) != rv {
                    return Err(ApiError::conflict(leases().plural, leases().group, &self.name));
                }
                Ok(next.clone())
            })
            .await;
        match written {
            Ok(_) => Ok(true),
            Err(e) if e.code == 409 || e.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up, if held (a successor may take it at once).
    pub async fn release(&self) {
        let _ = self
            .registry
            .update_with(leases(), &self.namespace, &self.name, &WriteOptions::default(), |cur| {
                if cur.pointer("/spec/holderIdentity").and_then(Value::as_str) != Some(self.identity.as_str()) {
                    return Err(ApiError::conflict(leases().plural, leases().group, &self.name));
                }
                let mut next = cur.clone();
                next["spec"]["holderIdentity"] = json!("");
                next["spec"]["leaseDurationSeconds"] = json!(1);
                Ok(next)
            })
            .await;
    }

    /// Until `shutdown`: wait to hold the Lease, then run `lead` with a receiver that
    /// turns true when leadership is lost (or the server stops); a lost Lease is contended
    /// for again.
    pub async fn run<F, Fut>(self, mut shutdown: watch::Receiver<bool>, lead: F)
    where
        F: Fn(watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            // Candidate: retry until the Lease is ours.
            loop {
                if *shutdown.borrow() {
                    return;
                }
                if let Ok(true) = self.try_acquire_or_renew().await {
                    break;
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(RETRY_PERIOD) => {}
                }
            }
            tracing::info!(lease = %format!("{}/{}", self.namespace, self.name), identity = %self.identity, "became leader");
            let (stop_tx, stop_rx) = watch::channel(false);
            let led = tokio::spawn(lead(stop_rx));
            // Leader: renew every retry period; give up after the renew deadline.
            let mut last_renewed = tokio::time::Instant::now();
            let stopped = loop {
                tokio::select! {
                    _ = shutdown.changed() => break true,
                    _ = tokio::time::sleep(RETRY_PERIOD) => {}
                }
                if let Ok(true) = self.try_acquire_or_renew().await {
                    last_renewed = tokio::time::Instant::now();
                } else if last_renewed.elapsed() > RENEW_DEADLINE {
                    tracing::warn!(lease = %self.name, "leader election lost");
                    break false;
                }
            };
            let _ = stop_tx.send(true);
            let _ = led.await;
            if stopped {
                self.release().await;
                return;
            }
        }
    }
}
