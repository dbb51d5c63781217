//! kube-apiserver's `ResourceQuota` admission plugin (LimitRanger runs with the
//! built-in mutating plugins, in the registry's pod admission):
//!
//! - every create in a namespace with quotas, and every update that can change usage
//!   (a pod's in-place `resize`, a claim's resize, a Service's type or ports; the
//!   increase only, as upstream's delta), charged the same way: the object's usage is added
//!   to each matching quota's `status.used` by compare-and-swap before the object is
//!   stored, so concurrent creates cannot together overshoot; over `hard` is a 403
//!   `exceeded quota`, a pod without a request or limit a quota covers is a 403
//!   `must specify`. The quota controller recounts `used` from what is stored on
//!   deletes and at its 5-minute resync, which returns what a failed create charged.

use nanokube_api::quota::{self, Usage};
use nanokube_api::{meta, resources, ApiError};
use serde_json::Value;

use super::{Attributes, Operation};
use crate::registry::{ListOptions, Registry, WriteOptions};

fn forbidden(attrs: &Attributes<'_>, why: String) -> ApiError {
    let mut e = ApiError::forbidden(format!("{} {:?} is forbidden: {why}", nanokube_api::error::qualified(attrs.def.plural, attrs.def.group), attrs.name));
    e.details.name = Some(attrs.name.to_string());
    e.details.group = Some(attrs.def.group.to_string()).filter(|g| !g.is_empty());
    e.details.kind = Some(attrs.def.plural.to_string());
    e
}

fn list(registry: &Registry, plural: &str, namespace: &str) -> Vec<Value> {
    let Some(def) = resources::find("", "v1", plural) else { return Vec::new() };
    registry.list(def, Some(namespace), &ListOptions::default()).map(|l| l.items.iter().map(|o| o.to_value()).collect()).unwrap_or_default()
}

/// ResourceQuota: check and charge the quotas of the namespace for a write. Boxed: the
/// quota's own status write passes through admission again (a recursion in types).
pub fn charge<'a>(
    registry: &'a Registry,
    attrs: &'a Attributes<'a>,
    obj: &'a Value,
    old: Option<&'a Value>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ApiError>> + Send + 'a>> {
    Box::pin(charge_now(registry, attrs, obj, old))
}

/// Whether the quota evaluators look at this write (upstream's `Handles`): creates, and
/// the updates that can change what an object uses.
fn handled(attrs: &Attributes<'_>) -> bool {
    matches!(
        (attrs.operation, attrs.def.group, attrs.def.plural, attrs.subresource),
        (Operation::Create, _, _, "") | (Operation::Update, "", "pods", "resize") | (Operation::Update, "", "persistentvolumeclaims" | "services", "")
    )
}

async fn charge_now(registry: &Registry, attrs: &Attributes<'_>, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    if !handled(attrs) || attrs.namespace.is_empty() {
        return Ok(());
    }
    let quotas = list(registry, "resourcequotas", attrs.namespace);
    if quotas.is_empty() {
        return Ok(());
    }
    // What the object uses, for the "must specify" check, and what this write adds: all
    // of it on a create, the increase on an update (`SubtractWithNonNegativeResult`,
    // zeros removed).
    let whole = quota::usage_of(attrs.def.group, attrs.def.plural, obj);
    let usage: Usage = match old.filter(|_| attrs.operation == Operation::Update) {
        Some(old) => {
            let before = quota::usage_of(attrs.def.group, attrs.def.plural, old);
            whole.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).filter(|(_, d)| *d > 0.0).collect()
        }
        None => whole.clone(),
    };
    if usage.is_empty() {
        return Ok(());
    }
    let Some(def) = resources::find("", "v1", "resourcequotas") else { return Ok(()) };
    for q in &quotas {
        let scopes = quota::scopes_of(q);
        if !quota::quota_counts(&scopes, attrs.def.group, attrs.def.plural, obj) {
            continue;
        }
        let hard = quota::from_json(q.pointer("/status/hard").or_else(|| q.pointer("/spec/hard")));
        // A pod must state every compute resource a quota limits.
        if attrs.def.plural == "pods" && attrs.def.group.is_empty() {
            let mut missing: Vec<&str> = hard
                .keys()
                .filter(|k| k.starts_with("requests.") || k.starts_with("limits.") || matches!(k.as_str(), "cpu" | "memory"))
                .filter(|k| !whole.contains_key(*k))
                .map(String::as_str)
                .collect();
            missing.sort();
            if !missing.is_empty() {
                return Err(forbidden(attrs, format!("failed quota: {}: must specify {}", meta::name(q), missing.join(","))));
            }
        }
        let requested: Usage = usage.iter().filter(|(k, _)| hard.contains_key(*k)).map(|(k, v)| (k.clone(), *v)).collect();
        if requested.is_empty() || attrs.dry_run {
            continue;
        }
        let name = meta::name(q).to_string();
        let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
        registry
            .update_with(def, attrs.namespace, &name, &opts, |cur| {
                let hard = quota::from_json(cur.pointer("/status/hard").or_else(|| cur.pointer("/spec/hard")));
                let mut used = quota::from_json(cur.pointer("/status/used"));
                let exceeded: Vec<String> = requested
                    .iter()
                    .filter(|(k, v)| used.get(*k).copied().unwrap_or(0.0) + **v > hard.get(*k).copied().unwrap_or(f64::MAX))
                    .map(|(k, _)| k.clone())
                    .collect();
                if !exceeded.is_empty() {
                    let mask = |u: &Usage| -> Usage { exceeded.iter().map(|k| (k.clone(), u.get(k).copied().unwrap_or(0.0))).collect() };
                    return Err(forbidden(
                        attrs,
                        format!(
                            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                            quota::pretty(&mask(&requested)),
                            quota::pretty(&mask(&used)),
                            quota::pretty(&mask(&hard))
                        ),
                    ));
                }
                for (k, v) in &requested {
                    *used.entry(k.clone()).or_default() += v;
                }
                let mut next = cur.clone();
                next["status"]["hard"] = quota::to_json(&hard);
                next["status"]["used"] = quota::to_json(&used);
                Ok(next)
            })
            .await?;
    }
    Ok(())
}
