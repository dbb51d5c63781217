//! RBAC: Role, ClusterRole, RoleBinding and ClusterRoleBinding evaluated as upstream's
//! RBAC authorizer does, from an in-memory index kept current by store watches (no store
//! read per request). Also the rule-coverage check behind escalation prevention and the
//! rule listing behind SelfSubjectRulesReview.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use nanokube_api::resources;
use nanokube_store::Backend;
use serde_json::Value;

use crate::authn::UserInfo;
use crate::authz::{Authorizer, Decision};
use crate::registry::decode;
use crate::request::RequestInfo;

/// One policy rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Verbs (`*` for all).
    pub verbs: Vec<String>,
    /// API groups (`""` core, `*` all).
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/log`, `*`, `*/scale`).
    pub resources: Vec<String>,
    /// Object names (empty: all).
    pub resource_names: Vec<String>,
    /// Non-resource URLs (`/healthz`, `/api/*`, `*`).
    pub non_resource_urls: Vec<String>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

impl Rule {
    /// Parse a `PolicyRule`.
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v.get("verbs")),
            api_groups: strings(v.get("apiGroups")),
            resources: strings(v.get("resources")),
            resource_names: strings(v.get("resourceNames")),
            non_resource_urls: strings(v.get("nonResourceURLs")),
        }
    }

    /// The rules of a Role or ClusterRole object.
    pub fn list_from(obj: &Value) -> Vec<Rule> {
        obj.get("rules").and_then(Value::as_array).map(|a| a.iter().map(Rule::from_json).collect()).unwrap_or_default()
    }

    fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    fn group_matches(&self, group: &str) -> bool {
        self.api_groups.iter().any(|g| g == "*" || g == group)
    }

    fn resource_matches(&self, resource: &str, subresource: &str) -> bool {
        let combined = if subresource.is_empty() { resource.to_string() } else { format!("{resource}/{subresource}") };
        self.resources.iter().any(|r| {
            r == "*" || *r == combined || (!subresource.is_empty() && r.len() == subresource.len() + 2 && r.starts_with("*/") && r.ends_with(subresource))
        })
    }

    fn name_matches(&self, name: &str) -> bool {
        self.resource_names.is_empty() || (!name.is_empty() && self.resource_names.iter().any(|n| n == name))
    }

    fn url_matches(&self, path: &str) -> bool {
        self.non_resource_urls.iter().any(|u| u == "*" || u == path || (u.ends_with('*') && path.starts_with(&u[..u.len() - 1])))
    }

    /// Whether this rule allows a request.
    pub fn allows(&self, req: &RequestInfo) -> bool {
        if req.is_resource {
            self.verb_matches(&req.verb)
                && self.group_matches(&req.group)
                && self.resource_matches(&req.resource, &req.subresource)
                && self.name_matches(&req.name)
        } else {
            self.verb_matches(&req.verb) && self.url_matches(&req.path)
        }
    }
}

/// A binding's subjects and role reference.
#[derive(Debug, Clone)]
struct Binding {
    namespace: String,
    role_kind: String,
    role_name: String,
    subjects: Vec<(String, String, String)>,
}

impl Binding {
    fn from_json(obj: &Value) -> Binding {
        let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Binding {
            role_kind: obj.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or("").to_string(),
            role_name: obj.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or("").to_string(),
            subjects: obj
                .get("subjects")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            // A ServiceAccount subject of a RoleBinding defaults to the binding's namespace.
                            let ns = s(x, "namespace");
                            (s(x, "kind"), s(x, "name"), if ns.is_empty() { namespace.clone() } else { ns })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            namespace,
        }
    }

    fn applies_to(&self, user: &UserInfo) -> bool {
        self.subject_for(user).is_some()
    }

    /// The first subject naming `user`: (kind, name, namespace).
    fn subject_for(&self, user: &UserInfo) -> Option<&(String, String, String)> {
        self.subjects.iter().find(|(kind, name, ns)| match kind.as_str() {
            "User" => *name == user.name,
            "Group" => user.in_group(name),
            "ServiceAccount" => user.name == format!("system:serviceaccount:{ns}:{name}"),
            _ => false,
        })
    }
}

#[derive(Default)]
struct Index {
    cluster_roles: HashMap<String, Vec<Rule>>,
    roles: HashMap<(String, String), Vec<Rule>>,
    cluster_bindings: HashMap<String, Binding>,
    bindings: HashMap<(String, String), Binding>,
}

impl Index {
    fn role_rules(&self, b: &Binding) -> Option<&Vec<Rule>> {
        match b.role_kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&b.role_name),
            "Role" => self.roles.get(&(b.namespace.clone(), b.role_name.clone())),
            _ => None,
        }
    }
}

/// The RBAC authorizer.
pub struct Rbac {
    index: RwLock<Index>,
}

const KINDS: [(&str, &str); 4] = [
    ("rbac.authorization.k8s.io", "clusterroles"),
    ("rbac.authorization.k8s.io", "roles"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("rbac.authorization.k8s.io", "rolebindings"),
];

impl Rbac {
    /// An authorizer loaded from the store and kept current by watching it until the
    /// store's history ends.
    pub fn start(store: Arc<dyn Backend>, shutdown: tokio::sync::watch::Receiver<bool>) -> Arc<Rbac> {
        let rbac = Arc::new(Rbac { index: RwLock::new(Index::default()) });
        for (g, plural) in KINDS {
            let prefix = resources::find(g, "v1", plural).expect("rbac resource").key_prefix();
            let from = rbac.resync(&*store, plural, &prefix);
            crate::store_follow::follow(
                &rbac,
                store.clone(),
                prefix,
                from,
                shutdown.clone(),
                move |r, ev| {
                    let obj = if ev.kind == nanokube_store::EventKind::Deleted { None } else { decode(&ev.kv).ok() };
                    r.apply(plural, &ev.kv.key, obj.as_deref().map(|o| o.value()));
                },
                move |r, store, prefix| r.resync(store, plural, prefix),
            );
        }
        rbac
    }

    /// Reload one kind from the store; returns the revision read at.
    fn resync(&self, store: &dyn Backend, plural: &str, prefix: &str) -> nanokube_store::Revision {
        let listed = store.list(prefix, None, 0);
        self.reset(plural);
        for kv in &listed.items {
            // The stored bytes parsed once: the index needs no resourceVersion, so the
            // served encoding (a parse and a write more) is not made for every object.
            if let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) {
                self.apply(plural, &kv.key, Some(&obj));
            }
        }
        listed.revision
    }

    fn reset(&self, plural: &str) {
        let mut idx = self.index.write().expect("rbac index");
        match plural {
            "clusterroles" => idx.cluster_roles.clear(),
            "roles" => idx.roles.clear(),
            "clusterrolebindings" => idx.cluster_bindings.clear(),
            _ => idx.bindings.clear(),
        }
    }

    /// Apply one object (or its deletion) to the index.
    fn apply(&self, plural: &str, key: &str, obj: Option<&Value>) {
        let parts: Vec<&str> = key.trim_end_matches('/').rsplit('/').collect();
        let name = parts.first().copied().unwrap_or("").to_string();
        let ns = parts.get(1).copied().unwrap_or("").to_string();
        let mut idx = self.index.write().expect("rbac index");
        match (plural, obj) {
            ("clusterroles", Some(o)) => {
                idx.cluster_roles.insert(name, Rule::list_from(o));
            }
            ("clusterroles", None) => {
                idx.cluster_roles.remove(&name);
            }
            ("roles", Some(o)) => {
                idx.roles.insert((ns, name), Rule::list_from(o));
            }
            ("roles", None) => {
                idx.roles.remove(&(ns, name));
            }
            ("clusterrolebindings", Some(o)) => {
                idx.cluster_bindings.insert(name, Binding::from_json(o));
            }
            ("clusterrolebindings", None) => {
                idx.cluster_bindings.remove(&name);
            }
            (_, Some(o)) => {
                idx.bindings.insert((ns, name), Binding::from_json(o));
            }
            (_, None) => {
                idx.bindings.remove(&(ns, name));
            }
        }
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide rules included;
    /// non-resource rules only from ClusterRoleBindings).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> Vec<Rule> {
        let idx = self.index.read().expect("rbac index");
        let mut out = Vec::new();
        for b in idx.cluster_bindings.values().filter(|b| b.role_kind == "ClusterRole" && b.applies_to(user)) {
            if let Some(rules) = idx.role_rules(b) {
                out.extend(rules.iter().cloned());
            }
        }
        if !namespace.is_empty() {
            for b in idx.bindings.iter().filter(|((ns, _), b)| ns == namespace && b.applies_to(user)).map(|(_, b)| b) {
                if let Some(rules) = idx.role_rules(b) {
                    out.extend(rules.iter().filter(|r| r.non_resource_urls.is_empty()).cloned());
                }
            }
        }
        out
    }

    /// The bindings whose roles allow `req` for `user`, as upstream's RBAC names them in
    /// its reasons (`ClusterRoleBinding "x" of ClusterRole "y"`, `RoleBinding "ns/x" of
    /// Role "y"`): what the access map shows for an allowed edge.
    pub fn explain(&self, user: &UserInfo, req: &RequestInfo) -> Vec<String> {
        let idx = self.index.read().expect("rbac index");
        let allows = |b: &Binding| idx.role_rules(b).is_some_and(|rules| rules.iter().any(|r| r.allows(req)));
        let mut out: Vec<String> = idx
            .cluster_bindings
            .iter()
            .filter(|(_, b)| b.role_kind == "ClusterRole" && b.applies_to(user) && allows(b))
            .map(|(name, b)| format!("ClusterRoleBinding {name:?} of ClusterRole {:?}", b.role_name))
            .collect();
        if req.is_resource && !req.namespace.is_empty() {
            out.extend(
                idx.bindings
                    .iter()
                    .filter(|((ns, _), b)| *ns == req.namespace && b.applies_to(user) && allows(b))
                    .map(|((ns, name), b)| format!("RoleBinding \"{ns}/{name}\" of {} {:?}", b.role_kind, b.role_name)),
            );
        }
        out.sort();
        out
    }

    /// Upstream RBAC's reason for allowing `req`, which the audit event carries as
    /// `authorization.k8s.io/reason`: `RBAC: allowed by ClusterRoleBinding "b" of
    /// ClusterRole "r" to Group "g"` (a RoleBinding as `"b/ns"`, a ServiceAccount as
    /// `"name/ns"`). Upstream names the first binding its informer lists; this names the
    /// first by name, cluster bindings first. `None` when RBAC does not allow it.
    pub fn allow_reason(&self, user: &UserInfo, req: &RequestInfo) -> Option<String> {
        let idx = self.index.read().ok()?;
        let allows = |b: &Binding| idx.role_rules(b).is_some_and(|rules| rules.iter().any(|r| r.allows(req)));
        let describe = |(kind, name, ns): &(String, String, String)| {
            if kind == "ServiceAccount" {
                format!("{kind} {:?}", format!("{name}/{ns}"))
            } else {
                format!("{kind} {name:?}")
            }
        };
        let mut cluster: Vec<(&String, &Binding)> = idx.cluster_bindings.iter().filter(|(_, b)| b.role_kind == "ClusterRole" && allows(b)).collect();
        cluster.sort_by(|a, b| a.0.cmp(b.0));
        for (name, b) in cluster {
            if let Some(subject) = b.subject_for(user) {
                return Some(format!("RBAC: allowed by ClusterRoleBinding {name:?} of ClusterRole {:?} to {}", b.role_name, describe(subject)));
            }
        }
        if !req.is_resource || req.namespace.is_empty() {
            return None;
        }
        let mut namespaced: Vec<(&(String, String), &Binding)> = idx.bindings.iter().filter(|((ns, _), b)| *ns == req.namespace && allows(b)).collect();
        namespaced.sort_by(|a, b| a.0.cmp(b.0));
        namespaced.into_iter().find_map(|((ns, name), b)| {
            b.subject_for(user)
                .map(|subject| format!("RBAC: allowed by RoleBinding \"{name}/{ns}\" of {} {:?} to {}", b.role_kind, b.role_name, describe(subject)))
        })
    }

    /// Whether rules granted to `user` in `namespace` cover every rule in `wanted`
    /// (upstream's escalation check).
    pub fn covers(&self, user: &UserInfo, namespace: &str, wanted: &[Rule]) -> Result<(), Vec<Rule>> {
        let owned = self.rules_for(user, namespace);
        let missing: Vec<Rule> = wanted.iter().flat_map(atomize).filter(|atom| !owned.iter().any(|o| covers_atom(o, atom))).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// Split a rule into rules with one verb, group, resource and name each.
fn atomize(r: &Rule) -> Vec<Rule> {
    let mut out = Vec::new();
    if !r.non_resource_urls.is_empty() {
        for v in &r.verbs {
            for u in &r.non_resource_urls {
                out.push(Rule { verbs: vec![v.clone()], non_resource_urls: vec![u.clone()], ..Default::default() });
            }
        }
        return out;
    }
    let names: Vec<Option<&String>> = if r.resource_names.is_empty() { vec![None] } else { r.resource_names.iter().map(Some).collect() };
    for v in &r.verbs {
        for g in &r.api_groups {
            for res in &r.resources {
                for n in &names {
                    out.push(Rule {
                        verbs: vec![v.clone()],
                        api_groups: vec![g.clone()],
                        resources: vec![res.clone()],
                        resource_names: n.map(|x| vec![x.clone()]).unwrap_or_default(),
                        non_resource_urls: vec![],
                    });
                }
            }
        }
    }
    out
}

fn covers_atom(owner: &Rule, atom: &Rule) -> bool {
    let has = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
    if !atom.non_resource_urls.is_empty() {
        let u = &atom.non_resource_urls[0];
        return has(&owner.verbs, &atom.verbs[0])
            && owner.non_resource_urls.iter().any(|o| o == "*" || o == u || (o.ends_with('*') && u.starts_with(&o[..o.len() - 1])));
    }
    let res = &atom.resources[0];
    let resource_ok = owner.resources.iter().any(|o| o == "*" || o == res || (res.contains('/') && o.starts_with("*/") && res.ends_with(&o[1..])));
    has(&owner.verbs, &atom.verbs[0])
        && has(&owner.api_groups, &atom.api_groups[0])
        && resource_ok
        && (owner.resource_names.is_empty() || atom.resource_names.first().is_some_and(|n| owner.resource_names.contains(n)))
}

impl Authorizer for Rbac {
    fn authorize(&self, user: &UserInfo, req: &RequestInfo) -> Decision {
        let idx = self.index.read().expect("rbac index");
        for b in idx.cluster_bindings.values() {
            if b.role_kind == "ClusterRole" && b.applies_to(user) {
                if let Some(rules) = idx.role_rules(b) {
                    if rules.iter().any(|r| r.allows(req)) {
                        return Decision::Allow;
                    }
                }
            }
        }
        if req.is_resource && !req.namespace.is_empty() {
            for ((ns, _), b) in idx.bindings.iter() {
                if ns == &req.namespace && b.applies_to(user) {
                    if let Some(rules) = idx.role_rules(b) {
                        if rules.iter().any(|r| r.non_resource_urls.is_empty() && r.allows(req)) {
                            return Decision::Allow;
                        }
                    }
                }
            }
        }
        Decision::NoOpinion(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse;
    use serde_json::json;

    fn rule(v: Value) -> Rule {
        Rule::from_json(&v)
    }

    #[test]
    fn resource_matching_like_upstream() {
        let r = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}));
        assert!(r.allows(&parse("GET", "/api/v1/namespaces/a/pods/x", false)));
        assert!(!r.allows(&parse("GET", "/api/v1/namespaces/a/pods/x/log", false)), "pods does not match pods/log");
        assert!(!r.allows(&parse("GET", "/api/v1/namespaces/a/pods", false)), "get is not list");
        let scale = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*/scale"]}));
        assert!(scale.allows(&parse("PATCH", "/apis/apps/v1/namespaces/a/deployments/d/scale", false)));
        assert!(!scale.allows(&parse("PATCH", "/apis/apps/v1/namespaces/a/deployments/d", false)));
        let named = rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["c1"]}));
        assert!(named.allows(&parse("GET", "/api/v1/namespaces/a/configmaps/c1", false)));
        assert!(!named.allows(&parse("GET", "/api/v1/namespaces/a/configmaps/c2", false)));
        assert!(!named.allows(&parse("GET", "/api/v1/namespaces/a/configmaps", false)), "lists never match named rules");
        let urls = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*"]}));
        assert!(urls.allows(&parse("GET", "/api", false)));
        assert!(urls.allows(&parse("GET", "/api/v1", false)));
        assert!(!urls.allows(&parse("GET", "/apis", false)));
    }

    #[test]
    fn coverage_for_escalation() {
        let owner = rule(json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "pods/log"]}));
        let atoms = atomize(&rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]})));
        assert!(atoms.iter().all(|a| covers_atom(&owner, a)));
        let atoms = atomize(&rule(json!({"verbs": ["delete"], "apiGroups": [""], "resources": ["pods"]})));
        assert!(!atoms.iter().all(|a| covers_atom(&owner, a)));
        let star = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
        assert!(atomize(&rule(json!({"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments/scale"]}))).iter().all(|a| covers_atom(&star, a)));
        assert!(!covers_atom(&owner, &atomize(&rule(json!({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]})))[0]), "* is only covered by *");
    }
}
