//! ClusterRole aggregation, as kube-controller-manager's `clusterrole-aggregation`
//! controller does it: a ClusterRole with an `aggregationRule` gets as its `rules` the
//! rules of every other ClusterRole its `clusterRoleSelectors` match, those roles taken in
//! name order and each rule once. That is how `admin`, `edit` and `view` get their rules
//! (from `system:aggregate-to-*` and from each other), and how a CRD's author extends
//! them by labelling a ClusterRole `rbac.authorization.k8s.io/aggregate-to-view: "true"`.

use std::sync::Arc;

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::selector::LabelSelector;
use nanokube_api::ApiError;
use nanokube_apiserver::registry::{Registry, WriteOptions};
use serde_json::Value;

fn cluster_roles() -> Result<&'static ResourceDef, ApiError> {
    resources::find("rbac.authorization.k8s.io", "v1", "clusterroles").ok_or_else(|| ApiError::internal("clusterroles are not served"))
}

/// The selectors of an aggregated role (`None`: the role is not aggregated). A selector
/// that does not parse matches nothing, as upstream skips it.
fn selectors(role: &Value) -> Option<Vec<LabelSelector>> {
    let rule = role.get("aggregationRule").filter(|a| !a.is_null())?;
    let list = rule.get("clusterRoleSelectors").and_then(Value::as_array).cloned().unwrap_or_default();
    Some(list.iter().filter_map(|s| LabelSelector::from_object(s).ok()).collect())
}

fn name(role: &Value) -> &str {
    role.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

/// The rules `role` aggregates from `all` (every ClusterRole, in name order).
fn aggregated_rules(role: &Value, selectors: &[LabelSelector], all: &[Value]) -> Vec<Value> {
    let mut rules: Vec<Value> = Vec::new();
    for other in all {
        if name(other) == name(role) {
            continue;
        }
        let labels = other.pointer("/metadata/labels").and_then(Value::as_object);
        if !selectors.iter().any(|s| s.matches(labels)) {
            continue;
        }
        for rule in other.get("rules").and_then(Value::as_array).into_iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    rules
}

/// Fills the `rules` of every aggregated role among `all` (ClusterRoles; sorted by name
/// here) from the others, until nothing changes.
pub fn aggregate(all: &mut [Value]) {
    all.sort_by(|a, b| name(a).cmp(name(b)));
    for _ in 0..16 {
        let mut changed = false;
        for i in 0..all.len() {
            let Some(sel) = selectors(&all[i]) else { continue };
            let rules = Value::Array(aggregated_rules(&all[i], &sel, all));
            if all[i].get("rules") != Some(&rules) {
                all[i]["rules"] = rules;
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
}

/// Brings the rules of every aggregated ClusterRole up to date. Aggregated roles may
/// aggregate each other (`admin` takes `edit`, which takes `view`), so the rules are
/// worked out in memory until nothing changes (bounded: more than 16 passes is a loop of
/// selectors between roles, left as it stands), then the roles that changed are written
/// together, in one commit.
pub async fn aggregate_all(registry: &Arc<Registry>) -> Result<(), ApiError> {
    let def = cluster_roles()?;
    // The stored bytes parsed once each (no resourceVersion is needed here); a row that
    // does not parse is not aggregated from.
    let mut all: Vec<Value> = registry.store().list(&def.key_prefix(), None, 0).items.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
    let stored: Vec<Option<Value>> = {
        all.sort_by(|a, b| name(a).cmp(name(b)));
        all.iter().map(|r| r.get("rules").cloned()).collect()
    };
    aggregate(&mut all);
    let mut writes = tokio::task::JoinSet::new();
    for (role, before) in all.into_iter().zip(stored) {
        let Some(rules) = role.get("rules").cloned() else { continue };
        if before.as_ref() == Some(&rules) || (before.is_none() && rules.as_array().is_some_and(Vec::is_empty)) {
            continue;
        }
        let (registry, role) = (registry.clone(), name(&role).to_string());
        writes.spawn(async move {
            registry
                .update_with(def, "", &role, &WriteOptions::default(), move |cur| {
                    let mut next = cur.clone();
                    next["rules"] = rules.clone();
                    nanokube_api::meta::metadata_mut(&mut next).remove("resourceVersion");
                    Ok(next)
                })
                .await
        });
    }
    // Deleted meanwhile: its own event brings another pass.
    crate::join_writes(&mut writes, &[404]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(name: &str, labels: Value, rules: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "rules": rules})
    }

    #[test]
    fn rules_come_from_matching_roles_in_name_order_each_once() {
        let get = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]});
        let list = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]});
        let view = json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-view": "true"}}]}});
        let all = vec![
            role("b", json!({"to-view": "true"}), json!([list, get])),
            role("a", json!({"to-view": "true"}), json!([get])),
            role("c", json!({"other": "true"}), json!([{"apiGroups": ["x"], "resources": ["y"], "verbs": ["*"]}])),
            view.clone(),
        ];
        let mut sorted = all.clone();
        sorted.sort_by(|a, b| name(a).cmp(name(b)));
        let sel = selectors(&view).unwrap();
        assert_eq!(aggregated_rules(&view, &sel, &sorted), vec![get, list]);
        assert!(selectors(&role("plain", json!({}), json!([]))).is_none());
    }
}
