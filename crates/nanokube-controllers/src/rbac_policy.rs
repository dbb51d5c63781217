//! The default RBAC policy, as kube-apiserver 1.33 bootstraps it: 67 ClusterRoles, 48
//! ClusterRoleBindings, and 7 Roles and 7 RoleBindings in `kube-system` and
//! `kube-public` (`system:auth-delegator`, `system:node`, `system:kube-scheduler`, every
//! `system:controller:*`, ...). The objects are data, read from a real kube-apiserver 1.33
//! (`data/rbac-bootstrap-1.33.json`); `admin`, `edit` and `view` carry only their
//! `aggregationRule`, and [`crate::rbac_aggregation`] fills their rules from the
//! `system:aggregate-to-*` roles (and any role a user labels to join them).
//!
//! Created at start; [`run`] recreates deleted ones and adds back rules, aggregation
//! selectors and subjects removed from them, unless they are annotated
//! `rbac.authorization.kubernetes.io/autoupdate: "false"` (upstream's reconciliation).

use std::sync::{Arc, OnceLock};

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::ApiError;
use nanokube_apiserver::registry::{Registry, WriteOptions};
use serde_json::Value;
use tokio::sync::watch;

/// The bootstrap policy of kube-apiserver 1.33, a `List` of RBAC objects.
const BOOTSTRAP_1_33: &str = include_str!("../data/rbac-bootstrap-1.33.json");

/// The default policy objects: cluster-scoped first (ClusterRoles, ClusterRoleBindings),
/// then those in namespaces (Roles, RoleBindings), which need their namespaces to exist.
pub struct Policy {
    /// ClusterRoles and ClusterRoleBindings.
    pub cluster: Vec<Value>,
    /// Roles and RoleBindings (in `kube-system` and `kube-public`).
    pub namespaced: Vec<Value>,
}

/// The default policy (parsed once).
pub fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        // Compiled-in data, checked by this module's tests.
        let list: Value = serde_json::from_str(BOOTSTRAP_1_33).unwrap_or(Value::Null);
        let items = list.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        let (namespaced, mut cluster): (Vec<Value>, Vec<Value>) = items.into_iter().partition(|o| o.pointer("/metadata/namespace").is_some());
        // A new cluster's aggregated roles are created with their rules already
        // aggregated from the other default roles (no user role exists yet), so a first
        // start writes them once instead of creating and then updating them.
        let (mut roles, bindings): (Vec<Value>, Vec<Value>) = cluster.drain(..).partition(|o| o["kind"] == "ClusterRole");
        crate::rbac_aggregation::aggregate(&mut roles);
        cluster = roles.into_iter().chain(bindings).collect();
        Policy { cluster, namespaced }
    })
}

/// The resource of a policy object, and the field reconciliation adds back to.
fn kind_of(obj: &Value) -> Option<(&'static ResourceDef, &'static str)> {
    let (plural, field) = match obj.get("kind").and_then(Value::as_str)? {
        "ClusterRole" if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) => ("clusterroles", "aggregationRule"),
        "ClusterRole" => ("clusterroles", "rules"),
        "ClusterRoleBinding" => ("clusterrolebindings", "subjects"),
        "Role" => ("roles", "rules"),
        "RoleBinding" => ("rolebindings", "subjects"),
        _ => return None,
    };
    Some((def(plural), field))
}

/// The entries of `field` a default object must have: rules, subjects, or the
/// aggregation's `clusterRoleSelectors` (the aggregated rules belong to the aggregation).
fn wanted(obj: &Value, field: &str) -> Vec<Value> {
    let list = if field == "aggregationRule" { obj.pointer("/aggregationRule/clusterRoleSelectors") } else { obj.get(field) };
    list.and_then(Value::as_array).cloned().unwrap_or_default()
}

fn with_entries(obj: &mut Value, field: &str, items: Vec<Value>) {
    if field == "aggregationRule" {
        obj["aggregationRule"]["clusterRoleSelectors"] = Value::Array(items);
    } else {
        obj[field] = Value::Array(items);
    }
}

fn def(plural: &str) -> &'static ResourceDef {
    resources::find("rbac.authorization.k8s.io", "v1", plural).expect("rbac resource")
}

/// Create whatever cluster-scoped part of the default policy is missing, and add back
/// what was removed from default objects (see the module docs).
pub async fn ensure(registry: &Arc<Registry>) -> Result<(), ApiError> {
    ensure_objects(registry, &policy().cluster).await
}

/// [`ensure`] for the Roles and RoleBindings, once their namespaces exist.
pub async fn ensure_namespaced(registry: &Arc<Registry>) -> Result<(), ApiError> {
    ensure_objects(registry, &policy().namespaced).await
}

async fn ensure_objects(registry: &Arc<Registry>, objects: &[Value]) -> Result<(), ApiError> {
    let mut tasks = tokio::task::JoinSet::new();
    for obj in objects {
        let Some((def, field)) = kind_of(obj) else { continue };
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        let r = registry.clone();
        // The stored bytes parsed once (no resourceVersion is needed to compare): this
        // runs for every default object on every start.
        match registry.store().get(&def.key(&ns, &name)).map(|kv| serde_json::from_slice::<Value>(&kv.value)) {
            Some(Ok(cur)) => {
                let cur = &cur;
                let opted_out = cur.pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate").and_then(Value::as_str) == Some("false");
                let have = wanted(cur, field);
                let missing: Vec<Value> = wanted(obj, field).into_iter().filter(|w| !have.contains(w)).collect();
                if opted_out || missing.is_empty() {
                    continue;
                }
                tasks.spawn(async move {
                    r.update_with(def, &ns, &name, &WriteOptions::default(), |cur| {
                        let mut next = cur.clone();
                        let mut items = wanted(cur, field);
                        items.extend(missing.iter().filter(|m| !items.contains(m)).cloned().collect::<Vec<_>>());
                        with_entries(&mut next, field, items);
                        nanokube_api::meta::metadata_mut(&mut next).remove("resourceVersion");
                        Ok(next)
                    })
                    .await
                    .map(|_| ())
                });
            }
            // Creates are independent: let the store commit them together. (A stored
            // row that does not parse is left to the create's conflict.)
            _ => {
                let obj = obj.clone();
                tasks.spawn(async move { r.create(def, &ns, obj, &WriteOptions::default()).await.map(|_| ()) });
            }
        }
    }
    crate::join_writes(&mut tasks, &[409, 404]).await
}

/// The store keys of the default policy's objects.
fn default_keys() -> &'static std::collections::HashSet<String> {
    static KEYS: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let p = policy();
        p.cluster
            .iter()
            .chain(&p.namespaced)
            .filter_map(|o| {
                let (def, _) = kind_of(o)?;
                let ns = o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
                Some(def.key(ns, o.pointer("/metadata/name").and_then(Value::as_str)?))
            })
            .collect()
    })
}

async fn reconcile(registry: &Arc<Registry>) {
    for (what, r) in [("default RBAC policy", ensure(registry).await), ("default RBAC Roles", ensure_namespaced(registry).await)] {
        if let Err(e) = r {
            tracing::warn!(error = %e, "reconciling the {what} failed");
        }
    }
}

/// Recreate default policy objects that get deleted, reconcile edited ones, and keep
/// aggregated ClusterRoles up to date ([`crate::rbac_aggregation`]), until `shutdown`.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let store = registry.store().clone();
    let mut from = store.current_revision();
    let cluster_roles = def("clusterroles").key_prefix();
    let rbac_prefixes: Vec<String> = ["clusterroles", "clusterrolebindings", "roles", "rolebindings"].iter().map(|p| def(p).key_prefix()).collect();
    loop {
        // RBAC's four kinds have no common prefix but `/registry/` (upstream's layout);
        // the keys are filtered below.
        let mut w = match store.watch("/registry/", from) {
            Ok(w) => w,
            Err(_) => {
                from = store.current_revision();
                continue;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                ev = w.next() => match ev {
                    Some(Ok(ev)) if !rbac_prefixes.iter().any(|p| ev.kv.key.starts_with(p.as_str())) => {}
                    Some(Ok(ev)) => {
                        // Both write only when something is missing or stale, so their
                        // own writes end the loop.
                        if default_keys().contains(&ev.kv.key) {
                            reconcile(&registry).await;
                        }
                        if ev.kv.key.starts_with(cluster_roles.as_str()) {
                            if let Err(e) = crate::rbac_aggregation::aggregate_all(&registry).await {
                                tracing::warn!(error = %e, "aggregating ClusterRoles failed");
                            }
                        }
                    }
                    _ => break,
                }
            }
        }
        from = store.current_revision();
        reconcile(&registry).await;
        if let Err(e) = crate::rbac_aggregation::aggregate_all(&registry).await {
            tracing::warn!(error = %e, "aggregating ClusterRoles failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_data_is_upstreams_whole_policy() {
        let p = policy();
        let count = |objs: &[Value], kind: &str| objs.iter().filter(|o| o["kind"] == kind).count();
        assert_eq!(count(&p.cluster, "ClusterRole"), 67);
        assert_eq!(count(&p.cluster, "ClusterRoleBinding"), 48);
        assert_eq!(count(&p.namespaced, "Role"), 7);
        assert_eq!(count(&p.namespaced, "RoleBinding"), 7);
        assert!(p.cluster.iter().chain(&p.namespaced).all(|o| kind_of(o).is_some()));
        assert_eq!(default_keys().len(), 129);
    }
}
