//! The default RBAC policy, as kube-apiserver bootstraps it: ClusterRoles
//! `cluster-admin`, `admin`, `edit`, `view` (shipped flattened rather than aggregated),
//! `system:discovery`, `system:basic-user`, `system:public-info-viewer`,
//! `system:service-account-issuer-discovery`, and their ClusterRoleBindings. Created at
//! start; [`run`] recreates deleted ones and adds back rules and subjects removed from
//! them (unless annotated `rbac.authorization.kubernetes.io/autoupdate: "false"`).
//!
//! The built-in controllers run in-process through the registry, not as API clients, so
//! they need no `system:controller:*` roles.

use std::sync::Arc;

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::ApiError;
use nanokube_apiserver::registry::{Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL_RW: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "bindings",
                "configmaps",
                "endpoints",
                "events",
                "limitranges",
                "namespaces",
                "namespaces/status",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
                "serviceaccounts",
                "services",
                "services/status",
            ],
            READ,
        ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
        rule(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["events.k8s.io"], &["events"], READ),
        rule(&["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"], READ),
        rule(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
    ]
}

fn edit_rules() -> Vec<Value> {
    let mut r = view_rules();
    r.extend([
        rule(&[""], &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"], READ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(&[""], &["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], WRITE),
        rule(&[""], &["pods/eviction"], &["create"]),
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
        rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
        rule(&["coordination.k8s.io"], &["leases"], ALL_RW),
    ]);
    r
}

fn admin_rules() -> Vec<Value> {
    let mut r = edit_rules();
    r.extend([
        rule(&["rbac.authorization.k8s.io"], &["rolebindings", "roles"], ALL_RW),
        rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
    ]);
    r
}

fn cluster_role(name: &str, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    })
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": groups.iter().map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g})).collect::<Vec<_>>(),
    })
}

/// The default ClusterRoles and ClusterRoleBindings.
pub fn policy() -> (Vec<Value>, Vec<Value>) {
    let roles = vec![
        cluster_role("cluster-admin", vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        cluster_role("admin", admin_rules()),
        cluster_role("edit", edit_rules()),
        cluster_role("view", view_rules()),
        cluster_role(
            "system:discovery",
            vec![urls(&["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], &["get"])],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"], &["create"]),
            ],
        ),
        cluster_role("system:public-info-viewer", vec![urls(&["/healthz", "/livez", "/readyz", "/version", "/version/"], &["get"])]),
        cluster_role(
            "system:service-account-issuer-discovery",
            vec![urls(&["/.well-known/openid-configuration", "/.well-known/openid-configuration/", "/openid/v1/jwks", "/openid/v1/jwks/"], &["get"])],
        ),
    ];
    let bindings = vec![
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding("system:discovery", "system:discovery", &["system:authenticated"]),
        binding("system:basic-user", "system:basic-user", &["system:authenticated"]),
        binding("system:public-info-viewer", "system:public-info-viewer", &["system:authenticated", "system:unauthenticated"]),
        binding("system:service-account-issuer-discovery", "system:service-account-issuer-discovery", &["system:serviceaccounts"]),
    ];
    (roles, bindings)
}

fn def(plural: &str) -> &'static ResourceDef {
    resources::find("rbac.authorization.k8s.io", "v1", plural).expect("rbac resource")
}

/// Create whatever part of the default policy is missing, and add back rules and
/// subjects removed from default objects, unless they are annotated
/// `rbac.authorization.kubernetes.io/autoupdate: "false"` (upstream's reconciliation).
pub async fn ensure(registry: &Arc<Registry>) -> Result<(), ApiError> {
    let (roles, bindings) = policy();
    let mut tasks = tokio::task::JoinSet::new();
    for (plural, field, objs) in [("clusterroles", "rules", roles), ("clusterrolebindings", "subjects", bindings)] {
        for obj in objs {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            let r = registry.clone();
            match registry.get(def(plural), "", &name) {
                Ok(cur) => {
                    let opted_out = cur.pointer("/metadata/annotations/rbac.authorization.kubernetes.io~1autoupdate").and_then(Value::as_str) == Some("false");
                    let have = cur.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
                    let missing: Vec<Value> = obj[field].as_array().cloned().unwrap_or_default().into_iter().filter(|w| !have.contains(w)).collect();
                    if opted_out || missing.is_empty() {
                        continue;
                    }
                    tasks.spawn(async move {
                        r.update_with(def(plural), "", &name, &WriteOptions::default(), |cur| {
                            let mut next = cur.clone();
                            let mut items = cur.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
                            items.extend(missing.iter().filter(|m| !items.contains(m)).cloned().collect::<Vec<_>>());
                            next[field] = Value::Array(items);
                            nanokube_api::meta::metadata_mut(&mut next).remove("resourceVersion");
                            Ok(next)
                        })
                        .await
                        .map(|_| ())
                    });
                }
                // Creates are independent: let the store commit them together.
                Err(_) => {
                    tasks.spawn(async move { r.create(def(plural), "", obj, &WriteOptions::default()).await.map(|_| ()) });
                }
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| ApiError::internal(e.to_string()))? {
            Ok(()) => {}
            Err(e) if e.code == 409 || e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Recreate default policy objects that get deleted, and reconcile edited ones, until
/// `shutdown`.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let store = registry.store().clone();
    let mut from = store.current_revision();
    let prefixes = [def("clusterroles").key_prefix(), def("clusterrolebindings").key_prefix()];
    loop {
        let mut w = match store.watch("/registry/rbac.authorization.k8s.io/cluster", from) {
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
                    Some(Ok(ev)) => {
                        // ensure() writes only when something is missing, so its own
                        // writes end the loop.
                        if prefixes.iter().any(|p| ev.kv.key.starts_with(p.as_str())) {
                            if let Err(e) = ensure(&registry).await {
                                tracing::warn!(error = %e, "recreating default RBAC policy failed");
                            }
                        }
                    }
                    _ => break,
                }
            }
        }
        from = store.current_revision();
        if let Err(e) = ensure(&registry).await {
            tracing::warn!(error = %e, "default RBAC policy reconcile failed");
        }
    }
}
