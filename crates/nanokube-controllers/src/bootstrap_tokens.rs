//! The controllers that serve bootstrap tokens (the objects a first token brings, the
//! bindings and `cluster-info`, are made by `nanokube token create`, as kubeadm's init
//! makes them, so a fresh cluster's defaults stay kube-apiserver's):
//!
//! - [`run_signer`]: kube-controller-manager's `bootstrapsigner`, which signs that
//!   kubeconfig with every token allowed to sign (`jws-kubeconfig-<id>`), so a node holding
//!   a token can trust the CA it reads there without having been given it;
//! - [`run_cleaner`]: kube-controller-manager's `tokencleaner`, which deletes a token's
//!   Secret when its `expiration` passes.

use std::sync::Arc;

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::ApiError;
use nanokube_apiserver::bootstrap_token::{self, CLUSTER_INFO, NAMESPACE, SECRET_TYPE, SIGNATURE_PREFIX};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use nanokube_store::follow::follow;
use serde_json::Value;
use tokio::sync::{watch, Notify};

fn def(group: &str, plural: &str) -> &'static ResourceDef {
    resources::find(group, "v1", plural).expect("built-in resource")
}

/// The signatures `cluster-info` should carry: one per token that may sign (the right
/// type and shape, `usage-bootstrap-signing`, not expired), by data key.
fn wanted_signatures(registry: &Registry, kubeconfig: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(list) = registry.list(def("", "secrets"), Some(NAMESPACE), &ListOptions::default()) else { return out };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for obj in &list.items {
        let signed = obj.with_value(|s| {
            if s.get("type").and_then(Value::as_str) != Some(SECRET_TYPE) || bootstrap_token::data_field(s, "usage-bootstrap-signing") != "true" {
                return None;
            }
            if bootstrap_token::expiration(s).is_some_and(|at| at <= now) || nanokube_api::meta::is_deleting(s) {
                return None;
            }
            let (id, secret) = (bootstrap_token::data_field(s, "token-id"), bootstrap_token::data_field(s, "token-secret"));
            bootstrap_token::parse_token(&format!("{id}.{secret}"))?;
            Some((format!("{SIGNATURE_PREFIX}{id}"), bootstrap_token::detached_signature(kubeconfig, &id, &secret)))
        });
        out.extend(signed);
    }
    out
}

/// Bring `cluster-info`'s signatures in line with the tokens.
async fn sign(registry: &Registry) -> Result<(), ApiError> {
    let configmaps = def("", "configmaps");
    let cur = match registry.get(configmaps, "kube-public", CLUSTER_INFO) {
        Ok(c) => c.to_value(),
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    let kubeconfig = cur.pointer("/data/kubeconfig").and_then(Value::as_str).unwrap_or("");
    let wanted = wanted_signatures(registry, kubeconfig);
    let data = cur.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
    let have: std::collections::BTreeMap<String, String> =
        data.iter().filter(|(k, _)| k.starts_with(SIGNATURE_PREFIX)).map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect();
    if have == wanted {
        return Ok(());
    }
    let mut next = cur.clone();
    let mut data: serde_json::Map<String, Value> = data.into_iter().filter(|(k, _)| !k.starts_with(SIGNATURE_PREFIX)).collect();
    data.extend(wanted.into_iter().map(|(k, v)| (k, Value::String(v))));
    next["data"] = Value::Object(data);
    // The resourceVersion read above makes this a compare-and-swap: a kubeconfig changed
    // meanwhile is signed on the next pass, not overwritten.
    match registry.update(configmaps, "kube-public", CLUSTER_INFO, next, &WriteOptions::default()).await {
        Err(e) if e.code != 409 && e.code != 404 => Err(e),
        _ => Ok(()),
    }
}

/// Keep `cluster-info` signed by every signing token until `shutdown`.
pub async fn run_signer(registry: Arc<Registry>, shutdown: watch::Receiver<bool>) {
    let prefixes = vec![def("", "secrets").namespace_prefix(Some(NAMESPACE)), def("", "configmaps").key("kube-public", CLUSTER_INFO)];
    repeat_on_change(registry, prefixes, shutdown, |registry| async move {
        if let Err(e) = sign(&registry).await {
            tracing::warn!(error = %e, "signing cluster-info");
        }
        // Expiring tokens stop signing without an event: look again within a minute.
        60
    })
    .await
}

/// Run `pass` now, again whenever something under `prefixes` changes, and again after
/// the seconds it returns; until `shutdown`.
async fn repeat_on_change<F, Fut>(registry: Arc<Registry>, prefixes: Vec<String>, mut shutdown: watch::Receiver<bool>, pass: F)
where
    F: Fn(Arc<Registry>) -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let changed = Arc::new(Notify::new());
    for prefix in prefixes {
        let (store, changed, stop) = (registry.store().clone(), changed.clone(), shutdown.clone());
        let from = store.current_revision();
        tokio::spawn(async move {
            follow(store, &prefix, from, stop, |_| {
                changed.notify_one();
                true
            })
            .await
        });
    }
    loop {
        let wait = pass(registry.clone()).await;
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
        }
    }
}

/// Delete expired token Secrets; the seconds until the next one expires, if any.
async fn sweep(registry: &Registry) -> Option<i64> {
    let secrets = def("", "secrets");
    let Ok(list) = registry.list(secrets, Some(NAMESPACE), &ListOptions::default()) else { return None };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut next: Option<i64> = None;
    for obj in &list.items {
        let found = obj.with_value(|s| {
            (s.get("type").and_then(Value::as_str) == Some(SECRET_TYPE)).then(|| (nanokube_api::meta::name(s).to_string(), bootstrap_token::expiration(s)))
        });
        let Some((name, Some(at))) = found else { continue };
        if at <= now {
            let _ = registry.delete(secrets, NAMESPACE, &name, &DeleteOptions::default()).await;
        } else {
            next = Some(next.map_or(at - now, |n| n.min(at - now)));
        }
    }
    next
}

/// Delete each token Secret when it expires, until `shutdown`.
pub async fn run_cleaner(registry: Arc<Registry>, shutdown: watch::Receiver<bool>) {
    let prefixes = vec![def("", "secrets").namespace_prefix(Some(NAMESPACE))];
    repeat_on_change(registry, prefixes, shutdown, |registry| async move { sweep(&registry).await.map_or(3600, |s| s.clamp(1, 3600) as u64) }).await
}
