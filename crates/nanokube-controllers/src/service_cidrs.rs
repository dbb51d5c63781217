//! kube-controller-manager's `servicecidrs` controller: every ServiceCIDR gets the
//! `networking.k8s.io/service-cidr-finalizer` and `Ready=True` ("Kubernetes Service CIDR
//! is ready"), which lets the API server's allocator take addresses from it. A
//! ServiceCIDR being deleted keeps its finalizer, with `Ready=False`/`Terminating`,
//! while an IPAddress the allocator made lies in it and in no other ServiceCIDR (unless
//! another ServiceCIDR contains the whole range); once none does, the finalizer goes
//! after upstream's 10-second grace period, so no allocator still hands out its
//! addresses. ServiceCIDRs are few: they are looked at every second.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

/// The finalizer that keeps a ServiceCIDR while addresses depend on it.
pub const FINALIZER: &str = "networking.k8s.io/service-cidr-finalizer";
/// How long a deleted ServiceCIDR waits, once nothing depends on it (upstream's
/// `deletionGracePeriod`).
const DELETION_GRACE: time::Duration = time::Duration::seconds(10);
const PERIOD: Duration = Duration::from_secs(1);

fn def(plural: &str) -> &'static resources::ResourceDef {
    resources::find("networking.k8s.io", "v1", plural).expect("built-in resource")
}

/// `address/prefix` as (first address, size).
fn prefix(cidr: &str) -> Option<(u32, u64)> {
    let (ip, bits) = cidr.split_once('/')?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
    let size = 1u64 << (32 - bits);
    let base = u32::from(ip.parse::<Ipv4Addr>().ok()?) & !((size - 1) as u32);
    Some((base, size))
}

fn contains_prefix(outer: (u32, u64), inner: (u32, u64)) -> bool {
    u64::from(inner.0) >= u64::from(outer.0) && u64::from(inner.0) + inner.1 <= u64::from(outer.0) + outer.1
}

fn cidrs(c: &Value) -> Vec<(u32, u64)> {
    c.pointer("/spec/cidrs").and_then(Value::as_array).into_iter().flatten().filter_map(|x| prefix(x.as_str()?)).collect()
}

/// Look at every ServiceCIDR every second until `shutdown`.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {
                if let Err(e) = sync(&registry).await {
                    tracing::debug!("servicecidrs: {}", e.message);
                }
            }
        }
    }
}

/// One pass.
pub async fn sync(registry: &Registry) -> Result<(), ApiError> {
    let all: Vec<Value> = registry.list(def("servicecidrs"), None, &ListOptions::default())?.items.iter().map(|o| o.to_value()).collect();
    for cidr in &all {
        let name = meta::name(cidr).to_string();
        if !meta::is_deleting(cidr) {
            if !meta::finalizers(cidr).iter().any(|f| f == FINALIZER) {
                registry
                    .update_with(def("servicecidrs"), "", &name, &WriteOptions::default(), |cur| {
                        let mut next = cur.clone();
                        let m = meta::metadata_mut(&mut next);
                        let list = m.entry("finalizers").or_insert_with(|| json!([]));
                        if let Some(l) = list.as_array_mut() {
                            if !l.iter().any(|f| f == FINALIZER) {
                                l.push(json!(FINALIZER));
                            }
                        }
                        Ok(next)
                    })
                    .await?;
            }
            set_ready(registry, cidr, "True", "", "Kubernetes Service CIDR is ready").await?;
            continue;
        }
        if !meta::finalizers(cidr).iter().any(|f| f == FINALIZER) {
            continue;
        }
        if in_use(registry, cidr, &all)? {
            set_ready(
                registry,
                cidr,
                "False",
                "Terminating",
                "There are still IPAddresses referencing the ServiceCIDR, please remove them or create a new ServiceCIDR",
            )
            .await?;
            continue;
        }
        let since = meta::field(cidr, "deletionTimestamp").and_then(Value::as_str).and_then(meta::parse_time);
        if since.is_some_and(|t| time::OffsetDateTime::now_utc() - t < DELETION_GRACE) {
            continue;
        }
        registry
            .update_with(def("servicecidrs"), "", &name, &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                if let Some(l) = meta::metadata_mut(&mut next).get_mut("finalizers").and_then(Value::as_array_mut) {
                    l.retain(|f| f != FINALIZER);
                }
                Ok(next)
            })
            .await?;
    }
    Ok(())
}

/// Whether an address the allocator made depends on `cidr` alone (upstream's
/// canDeleteCIDR): false at once when every range of it lies inside another ServiceCIDR.
fn in_use(registry: &Registry, cidr: &Value, all: &[Value]) -> Result<bool, ApiError> {
    let mine = cidrs(cidr);
    let others: Vec<Vec<(u32, u64)>> = all.iter().filter(|c| meta::name(c) != meta::name(cidr)).map(cidrs).collect();
    let has_parent = mine.iter().all(|p| others.iter().flatten().any(|o| contains_prefix(*o, *p)));
    if has_parent {
        return Ok(false);
    }
    let ips = registry.list(def("ipaddresses"), None, &ListOptions::default())?;
    let orphaned = ips.items.iter().map(|o| o.value()).any(|ip| {
        let managed = ip.pointer("/metadata/labels/ipaddress.kubernetes.io~1managed-by").and_then(Value::as_str) == Some("ipallocator.k8s.io");
        let Some(addr) = meta::name(ip).parse::<Ipv4Addr>().ok().map(|a| (u32::from(a), 1u64)) else { return false };
        managed && mine.iter().any(|p| contains_prefix(*p, addr)) && !others.iter().flatten().any(|o| contains_prefix(*o, addr))
    });
    Ok(orphaned)
}

async fn set_ready(registry: &Registry, cidr: &Value, status: &str, reason: &str, message: &str) -> Result<(), ApiError> {
    let current = cidr.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    if current.is_some_and(|c| c["status"] == status && c["reason"].as_str().unwrap_or("") == reason && c["message"] == message) {
        return Ok(());
    }
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    let condition = json!({"type": "Ready", "status": status, "reason": reason, "message": message, "lastTransitionTime": meta::now_rfc3339()});
    registry
        .update_with(def("servicecidrs"), "", meta::name(cidr), &opts, |cur| {
            let mut next = cur.clone();
            let mut conditions: Vec<Value> = cur.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
            conditions.retain(|c| c["type"] != "Ready");
            conditions.push(condition.clone());
            next["status"] = json!({"conditions": conditions});
            Ok(next)
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_as_networks_do() {
        let slash16 = prefix("127.96.0.0/16").unwrap();
        assert!(contains_prefix(slash16, prefix("127.96.4.0/24").unwrap()));
        assert!(!contains_prefix(prefix("127.96.4.0/24").unwrap(), slash16));
        assert!(contains_prefix(slash16, (u32::from(Ipv4Addr::new(127, 96, 255, 255)), 1)));
        assert!(!contains_prefix(slash16, (u32::from(Ipv4Addr::new(127, 97, 0, 0)), 1)));
        assert_eq!(prefix("127.96.1.7/24"), Some((u32::from(Ipv4Addr::new(127, 96, 1, 0)), 256)));
        assert!(prefix("127.96.0.0/33").is_none());
    }
}
