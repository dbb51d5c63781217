//! Load-balancer IPs for Services of type `LoadBalancer`, as k3s's servicelb or MetalLB
//! give them: an address from the configured range (127.240.0.0/16 by default), the one
//! asked in `spec.loadBalancerIP` when it is in the range and free, written to
//! `status.loadBalancer.ingress` (`ipMode: VIP`); the proxy then listens there. A Service
//! with a `loadBalancerClass` belongs to another implementation and is left alone; an
//! address goes back to the range when its Service changes type or is deleted.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use nanokube_api::{meta, resources};
use nanokube_apiserver::registry::{ListOptions, Registry, WriteOptions};
use nanokube_store::follow::{follow, Change};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

/// An IPv4 range `a.b.c.d/n`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    first: u32,
    last: u32,
}

impl Range {
    /// Parse `a.b.c.d/n`.
    pub fn parse(cidr: &str) -> Result<Range, String> {
        let (ip, bits) = cidr.split_once('/').ok_or_else(|| format!("{cidr}: not a CIDR"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| format!("{cidr}: not an IPv4 CIDR"))?;
        let bits: u32 = bits.parse().ok().filter(|b| *b <= 32).ok_or_else(|| format!("{cidr}: bad prefix length"))?;
        let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
        let base = u32::from(ip) & mask;
        let size = if bits == 32 { 1 } else { 1u32 << (32 - bits) };
        // The network and broadcast addresses are not handed out.
        let (first, last) = if size > 2 { (base + 1, base + size - 2) } else { (base, base + size - 1) };
        Ok(Range { first, last })
    }

    /// Parse `a.b.c.d/n` keeping every address (a NetworkPolicy's `ipBlock`).
    pub fn parse_all(cidr: &str) -> Result<Range, String> {
        let r = Range::parse(cidr)?;
        let bits: u32 = cidr.split_once('/').and_then(|(_, b)| b.parse().ok()).unwrap_or(32);
        let size = if bits == 0 { u64::from(u32::MAX) + 1 } else { 1u64 << (32 - bits) };
        if size <= 2 {
            return Ok(r);
        }
        Ok(Range { first: r.first - 1, last: r.last + 1 })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(ip))
    }

    fn first_free(&self, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        (self.first..=self.last).map(Ipv4Addr::from).find(|ip| !used.contains(ip))
    }
}

/// Whether this implementation serves `svc`.
fn ours(svc: &Value) -> bool {
    svc.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer") && svc.pointer("/spec/loadBalancerClass").is_none_or(Value::is_null)
}

fn ingress_ips(svc: &Value) -> Vec<Ipv4Addr> {
    svc.pointer("/status/loadBalancer/ingress").and_then(Value::as_array).into_iter().flatten().filter_map(|i| i.get("ip")?.as_str()?.parse().ok()).collect()
}

/// Assign and release load-balancer IPs in `range` until `shutdown`.
pub async fn run(registry: Arc<Registry>, range: Range, shutdown: watch::Receiver<bool>) {
    let Some(def) = resources::find("", "v1", "services") else { return };
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<(String, String)>>();
    let start = registry.store().current_revision();
    let _ = tx.send(None);
    let follower = {
        let (store, tx, sd) = (registry.store().clone(), tx.clone(), shutdown.clone());
        tokio::spawn(async move {
            follow(store, &def.key_prefix(), start, sd, |change| {
                let key = match change {
                    Change::Resync => None,
                    Change::Event(ev) => match nanokube_apiserver::registry::decode(&ev.kv) {
                        Ok(o) => Some((meta::namespace(o.value()).to_string(), meta::name(o.value()).to_string())),
                        Err(_) => return true,
                    },
                };
                tx.send(key).is_ok()
            })
            .await
        })
    };
    let mut shutdown = shutdown;
    loop {
        let next = tokio::select! {
            _ = shutdown.changed() => break,
            k = rx.recv() => k,
        };
        let Some(key) = next else { break };
        let Ok(list) = registry.list(def, None, &ListOptions::default()) else { continue };
        let mut used: BTreeSet<Ipv4Addr> = list.items.iter().filter(|s| ours(s.value())).flat_map(|s| ingress_ips(s.value())).collect();
        for svc in &list.items {
            let v = svc.value();
            if key.as_ref().is_some_and(|(ns, name)| meta::namespace(v) != ns || meta::name(v) != name) {
                continue;
            }
            let current = ingress_ips(v);
            let status = if ours(v) && current.is_empty() {
                let asked = v.pointer("/spec/loadBalancerIP").and_then(Value::as_str).and_then(|s| s.parse::<Ipv4Addr>().ok());
                let ip = asked.filter(|ip| range.contains(*ip) && !used.contains(ip)).or_else(|| range.first_free(&used));
                let Some(ip) = ip else {
                    tracing::warn!(service = %meta::name(v), "no load-balancer IP left in the range");
                    continue;
                };
                used.insert(ip);
                json!({"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]})
            } else if !ours(v) && v.pointer("/spec/loadBalancerClass").is_none_or(Value::is_null) && current.iter().any(|ip| range.contains(*ip)) {
                json!({})
            } else {
                continue;
            };
            write_status(&registry, def, v, status).await;
        }
    }
    follower.abort();
}

/// Write `status.loadBalancer` of `obj` (a Service or an Ingress, of `def`).
pub(crate) async fn write_status(registry: &Registry, def: &resources::ResourceDef, obj: &Value, status: Value) {
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    let written = registry
        .update_with(def, meta::namespace(obj), meta::name(obj), &opts, |cur| {
            let mut next = cur.clone();
            next["status"]["loadBalancer"] = status.clone();
            Ok(next)
        })
        .await;
    if let Err(e) = written {
        tracing::debug!(object = %meta::name(obj), "writing status.loadBalancer: {}", e.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = Range::parse("127.240.0.0/16").unwrap();
        assert!(r.contains("127.240.0.1".parse().unwrap()) && r.contains("127.240.255.254".parse().unwrap()));
        assert!(!r.contains("127.240.0.0".parse().unwrap()) && !r.contains("127.241.0.1".parse().unwrap()));
        let used = BTreeSet::from(["127.240.0.1".parse().unwrap()]);
        assert_eq!(r.first_free(&used), Some("127.240.0.2".parse().unwrap()));
        assert!(Range::parse("127.240.0.0").is_err());
    }
}
