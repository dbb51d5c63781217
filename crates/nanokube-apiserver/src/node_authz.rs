//! The Node authorizer: what a kubelet (user `system:node:<name>` in `system:nodes`) may
//! do, as upstream's `plugin/pkg/auth/authorizer/node` decides it (1.33, with
//! `AuthorizeNodeWithSelectors`):
//!
//! - secrets, configmaps, persistentvolumeclaims, persistentvolumes, volumeattachments and
//!   serviceaccount tokens only when a pod bound to the node uses them (the [`NodeGraph`]:
//!   node ← pod ← secret / configmap / pvc ← pv, node ← pod ← serviceaccount,
//!   node ← volumeattachment);
//! - pods: `get` of its own pods, `list`/`watch` only with `fieldSelector=spec.nodeName=<node>`,
//!   create/delete (mirror pods), status and eviction (NodeRestriction admission narrows
//!   these to its own pods);
//! - nodes: read its own Node only; create/update/patch (NodeRestriction: its own);
//! - leases in `kube-node-lease` and csinodes of its own name;
//! - everything else by the static node rules (the `system:node` ClusterRole's rules).
//!
//! Requests from anyone else get no opinion, so RBAC decides them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use nanokube_api::resources;
use nanokube_store::follow::{follow, Change};
use nanokube_store::{Backend, EventKind};
use serde_json::Value;

use crate::authn::UserInfo;
use crate::authz::{Authorizer, Decision};
use crate::rbac::Rule;
use crate::request::RequestInfo;

/// The group every node is in.
pub const NODES_GROUP: &str = "system:nodes";
/// A node's user name is this followed by the node name.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The node a user is, if it is one (a `system:node:` name and the `system:nodes` group);
/// `Some("")` for a node identity without a name.
pub fn node_identity(user: &UserInfo) -> Option<&str> {
    let name = user.name.strip_prefix(NODE_USER_PREFIX)?;
    user.in_group(NODES_GROUP).then_some(name)
}

/// What a pod bound to a node uses.
#[derive(Debug, Default, Clone, PartialEq)]
struct PodUses {
    node: String,
    secrets: Vec<String>,
    configmaps: Vec<String>,
    claims: Vec<String>,
    service_account: String,
}

/// Object kinds a node may reach through its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Vertex {
    Pod,
    Secret,
    ConfigMap,
    Claim,
    ServiceAccount,
}

fn names_at<'a>(v: &'a Value, paths: &[&str]) -> impl Iterator<Item = &'a str> + 'a {
    let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    paths.into_iter().filter_map(move |p| v.pointer(&p).and_then(Value::as_str)).filter(|s| !s.is_empty())
}

impl PodUses {
    /// Read what a pod uses, as upstream's `VisitPodSecretNames`/`VisitPodConfigmapNames`
    /// and its graph populator's claims; `None` for a pod bound to no node.
    fn of(pod_name: &str, spec: &Value) -> Option<PodUses> {
        let node = spec.get("nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())?;
        let mut u = PodUses { node: node.to_string(), ..Default::default() };
        u.service_account = spec.get("serviceAccountName").and_then(Value::as_str).unwrap_or("default").to_string();
        for s in spec.get("imagePullSecrets").and_then(Value::as_array).into_iter().flatten() {
            u.secrets.extend(names_at(s, &["/name"]).map(String::from));
        }
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for c in spec.get(list).and_then(Value::as_array).into_iter().flatten() {
                for from in c.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
                    u.secrets.extend(names_at(from, &["/secretRef/name"]).map(String::from));
                    u.configmaps.extend(names_at(from, &["/configMapRef/name"]).map(String::from));
                }
                for env in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                    u.secrets.extend(names_at(env, &["/valueFrom/secretKeyRef/name"]).map(String::from));
                    u.configmaps.extend(names_at(env, &["/valueFrom/configMapKeyRef/name"]).map(String::from));
                }
            }
        }
        for vol in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
            u.secrets.extend(
                names_at(
                    vol,
                    &[
                        "/secret/secretName",
                        "/azureFile/secretName",
                        "/cephfs/secretRef/name",
                        "/cinder/secretRef/name",
                        "/flexVolume/secretRef/name",
                        "/iscsi/secretRef/name",
                        "/rbd/secretRef/name",
                        "/scaleIO/secretRef/name",
                        "/storageos/secretRef/name",
                        "/csi/nodePublishSecretRef/name",
                    ],
                )
                .map(String::from),
            );
            u.configmaps.extend(names_at(vol, &["/configMap/name"]).map(String::from));
            for src in vol.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten() {
                u.secrets.extend(names_at(src, &["/secret/name"]).map(String::from));
                u.configmaps.extend(names_at(src, &["/configMap/name"]).map(String::from));
            }
            u.claims.extend(names_at(vol, &["/persistentVolumeClaim/claimName"]).map(String::from));
            // A generic ephemeral volume's claim is named `<pod>-<volume>`.
            if vol.get("ephemeral").is_some_and(|e| !e.is_null()) {
                if let Some(v) = vol.get("name").and_then(Value::as_str) {
                    u.claims.push(format!("{pod_name}-{v}"));
                }
            }
        }
        Some(u)
    }
}

/// What a stored pod uses, read from its JSON: only its name and spec are decoded (a
/// pod's status and managed fields are most of it, and change on every status write),
/// and a pod not bound to a node (no `nodeName` key at all) is not decoded.
fn pod_uses(stored: &[u8]) -> Option<PodUses> {
    #[derive(serde::Deserialize)]
    struct Name {
        #[serde(default)]
        name: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Parts {
        metadata: Option<Name>,
        #[serde(default)]
        spec: Value,
    }
    memchr::memmem::find(stored, b"\"nodeName\"")?;
    let parts: Parts = serde_json::from_slice(stored).ok()?;
    let name = parts.metadata.and_then(|m| m.name).unwrap_or_default();
    PodUses::of(&name, &parts.spec)
}

/// `(node, kind, namespace, name)`: an edge from an object to a node through its pods.
type EdgeKey = (String, Vertex, String, String);

/// What the graph keeps of a bound pod: its node and service account, shared with every
/// other pod naming the same ones (100,000 pods name a hundred nodes and a few accounts),
/// and the secrets, config maps and claims it uses (most pods use none).
struct Bound {
    node: Arc<str>,
    service_account: Arc<str>,
    secrets: Box<[String]>,
    configmaps: Box<[String]>,
    claims: Box<[String]>,
}

impl Bound {
    fn edges(&self) -> impl Iterator<Item = (Vertex, &str)> {
        self.secrets
            .iter()
            .map(|n| (Vertex::Secret, n.as_str()))
            .chain(self.configmaps.iter().map(|n| (Vertex::ConfigMap, n.as_str())))
            .chain(self.claims.iter().map(|n| (Vertex::Claim, n.as_str())))
            .chain(std::iter::once((Vertex::ServiceAccount, &*self.service_account)))
    }
}

/// Node and service account names shared among the pods that use them; past this many
/// distinct names, new ones are kept unshared.
const SHARED_NAMES: usize = 65_536;

#[derive(Default)]
struct Graph {
    /// Pods bound to a node, by `namespace/name`.
    pods: HashMap<Box<str>, Bound>,
    /// How many of a node's pods use an object.
    edges: HashMap<EdgeKey, u32>,
    /// A bound claim's volume, by (namespace, claim).
    claim_volume: HashMap<(String, String), String>,
    /// A VolumeAttachment's node, by name.
    attachments: HashMap<String, String>,
    /// See [`SHARED_NAMES`].
    names: std::collections::HashSet<Arc<str>>,
}

impl Graph {
    fn shared(&mut self, name: String) -> Arc<str> {
        if let Some(n) = self.names.get(name.as_str()) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        if self.names.len() < SHARED_NAMES {
            self.names.insert(n.clone());
        }
        n
    }

    fn set_pod(&mut self, ns: &str, name: &str, uses: Option<PodUses>) {
        let key: Box<str> = format!("{ns}/{name}").into();
        if let Some(old) = self.pods.remove(&key) {
            for (kind, obj) in old.edges() {
                let k = (old.node.to_string(), kind, ns.to_string(), obj.to_string());
                if let Some(n) = self.edges.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        self.edges.remove(&k);
                    }
                }
            }
        }
        if let Some(new) = uses {
            let bound = Bound {
                node: self.shared(new.node),
                service_account: self.shared(new.service_account),
                secrets: new.secrets.into(),
                configmaps: new.configmaps.into(),
                claims: new.claims.into(),
            };
            for (kind, obj) in bound.edges() {
                *self.edges.entry((bound.node.to_string(), kind, ns.to_string(), obj.to_string())).or_default() += 1;
            }
            self.pods.insert(key, bound);
        }
    }

    fn related(&self, node: &str, kind: Vertex, ns: &str, name: &str) -> bool {
        match kind {
            Vertex::Pod => self.pods.get(format!("{ns}/{name}").as_str()).is_some_and(|p| &*p.node == node),
            _ => self.edges.contains_key(&(node.to_string(), kind, ns.to_string(), name.to_string())),
        }
    }

    /// Whether a persistent volume is bound to a claim a pod on the node uses.
    fn volume_related(&self, node: &str, pv: &str) -> bool {
        self.claim_volume.iter().any(|((ns, claim), v)| v == pv && self.related(node, Vertex::Claim, ns, claim))
    }
}

/// What the Node authorizer knows of pods, claims and attachments, fed by store watches.
pub struct NodeGraph {
    graph: RwLock<Graph>,
}

/// The resources the graph follows.
const FOLLOWED: [(&str, &str); 3] = [("", "pods"), ("", "persistentvolumeclaims"), ("storage.k8s.io", "volumeattachments")];

impl NodeGraph {
    /// A graph loaded from the store and kept current until `shutdown`.
    pub fn start(store: Arc<dyn Backend>, shutdown: tokio::sync::watch::Receiver<bool>) -> Arc<NodeGraph> {
        let graph = Arc::new(NodeGraph { graph: RwLock::new(Graph::default()) });
        for (group, plural) in FOLLOWED {
            let Some(def) = resources::find(group, "v1", plural) else { continue };
            let prefix = def.key_prefix();
            let from = graph.reload(&*store, plural, &prefix);
            let (g, s, shutdown) = (Arc::downgrade(&graph), store.clone(), shutdown.clone());
            tokio::spawn(async move {
                let prefix2 = prefix.clone();
                follow(s.clone(), &prefix, from, shutdown, move |change| {
                    let Some(g) = g.upgrade() else { return false };
                    match change {
                        Change::Event(ev) => {
                            let value = if ev.kind == EventKind::Deleted { None } else { Some(&ev.kv.value[..]) };
                            // A pod's status writes leave its spec, and so its edges, as
                            // they were.
                            let spec_kept = plural == "pods"
                                && value.is_some()
                                && ev.prev.as_ref().is_some_and(|prev| nanokube_api::json::same_spec(&prev.value, &ev.kv.value));
                            if !spec_kept {
                                g.apply(plural, &ev.kv.key, value);
                            }
                        }
                        Change::Resync => {
                            g.reload(&*s, plural, &prefix2);
                        }
                    }
                    true
                })
                .await;
            });
        }
        graph
    }

    /// Load one resource afresh; the revision it was read at.
    fn reload(&self, store: &dyn Backend, plural: &str, prefix: &str) -> nanokube_store::Revision {
        let listed = store.list(prefix, None, 0);
        {
            let mut g = self.graph.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            match plural {
                "pods" => {
                    g.pods.clear();
                    g.edges.clear();
                }
                "persistentvolumeclaims" => g.claim_volume.clear(),
                _ => g.attachments.clear(),
            }
        }
        for kv in &listed.items {
            self.apply(plural, &kv.key, Some(&kv.value));
        }
        listed.revision
    }

    /// Take in the stored JSON of an object (`None`: it was deleted).
    fn apply(&self, plural: &str, key: &str, stored: Option<&[u8]>) {
        // Keys end `<namespace>/<name>` (namespaced) or `<name>`.
        let mut parts = key.trim_end_matches('/').rsplit('/');
        let name = parts.next().unwrap_or("");
        let ns = parts.next().unwrap_or("");
        if plural == "pods" {
            let uses = stored.and_then(pod_uses);
            self.graph.write().unwrap_or_else(std::sync::PoisonError::into_inner).set_pod(ns, name, uses);
            return;
        }
        let obj = stored.and_then(|b| serde_json::from_slice::<Value>(b).ok());
        let obj = obj.as_ref();
        let mut g = self.graph.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match plural {
            "persistentvolumeclaims" => {
                let k = (ns.to_string(), name.to_string());
                match obj.and_then(|o| o.pointer("/spec/volumeName")).and_then(Value::as_str).filter(|v| !v.is_empty()) {
                    Some(v) => g.claim_volume.insert(k, v.to_string()),
                    None => g.claim_volume.remove(&k),
                };
            }
            _ => match obj.and_then(|o| o.pointer("/spec/nodeName")).and_then(Value::as_str) {
                Some(n) => {
                    g.attachments.insert(name.to_string(), n.to_string());
                }
                None => {
                    g.attachments.remove(name);
                }
            },
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Graph> {
        self.graph.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Node authorizer.
pub struct NodeAuthorizer {
    graph: Arc<NodeGraph>,
    /// The static rules for what is not subdivided (the `system:node` ClusterRole's).
    rules: Vec<Rule>,
}

fn allow() -> Decision {
    Decision::Allow
}

fn abstain(reason: impl Into<String>) -> Decision {
    Decision::NoOpinion(reason.into())
}

/// The name a request is about: its path's, or for a list or watch the one its
/// `metadata.name` field selector pins (upstream's RequestInfo does the same).
fn request_name(req: &RequestInfo) -> String {
    if !req.name.is_empty() {
        return req.name.clone();
    }
    nanokube_api::selector::FieldSelector::parse(&req.field_selector).ok().and_then(|s| s.pinned_name().map(String::from)).unwrap_or_default()
}

fn selects_node(req: &RequestInfo, node: &str) -> bool {
    nanokube_api::selector::FieldSelector::parse(&req.field_selector)
        .is_ok_and(|s| s.terms.iter().any(|t| t.field == "spec.nodeName" && !t.negated && t.value == node))
}

impl NodeAuthorizer {
    /// An authorizer over `graph` with the static node rules.
    pub fn new(graph: Arc<NodeGraph>, rules: Vec<Rule>) -> Self {
        NodeAuthorizer { graph, rules }
    }

    fn related(&self, node: &str, kind: Vertex, req: &RequestInfo) -> Decision {
        let name = request_name(req);
        if name.is_empty() {
            return abstain("No Object name found");
        }
        if self.graph.read().related(node, kind, &req.namespace, &name) {
            allow()
        } else {
            abstain(format!("no relationship found between node '{node}' and this object"))
        }
    }

    fn get_only(&self, node: &str, kind: Vertex, req: &RequestInfo) -> Decision {
        if req.verb != "get" {
            return abstain("can only get individual resources of this type");
        }
        if !req.subresource.is_empty() {
            return abstain("cannot get subresource");
        }
        self.related(node, kind, req)
    }

    fn read_namespaced(&self, node: &str, kind: Vertex, req: &RequestInfo) -> Decision {
        if !matches!(req.verb.as_str(), "get" | "list" | "watch") {
            return abstain("can only read resources of this type");
        }
        if !req.subresource.is_empty() {
            return abstain("cannot read subresource");
        }
        if req.namespace.is_empty() {
            return abstain("can only read namespaced object of this type");
        }
        self.related(node, kind, req)
    }

    fn own_named(&self, node: &str, req: &RequestInfo, what: &str) -> Decision {
        if !matches!(req.verb.as_str(), "get" | "create" | "update" | "patch" | "delete") {
            return abstain(format!("can only get, create, update, patch, or delete a {what}"));
        }
        // Creates are checked by NodeRestriction, which sees the name in the body.
        if req.verb != "create" && req.name != node {
            return abstain(format!("can only access {what} with the same name as the requesting node"));
        }
        allow()
    }

    fn pods(&self, node: &str, req: &RequestInfo) -> Decision {
        match (req.subresource.as_str(), req.verb.as_str()) {
            ("", "get") => self.get_only(node, Vertex::Pod, req),
            ("", "list" | "watch") => {
                if selects_node(req, node) {
                    allow()
                } else if !request_name(req).is_empty() {
                    self.related(node, Vertex::Pod, req)
                } else {
                    abstain("can only list/watch pods with spec.nodeName field selector")
                }
            }
            // Mirror pods, their status, evictions: NodeRestriction keeps them to its own.
            ("", "create" | "delete") | ("status", "update" | "patch") | ("eviction", "create") => allow(),
            _ => abstain(""),
        }
    }

    fn nodes(&self, node: &str, req: &RequestInfo) -> Decision {
        match (req.subresource.as_str(), req.verb.as_str()) {
            ("", "create" | "update" | "patch") | ("status", "update" | "patch") => allow(),
            ("", "get" | "list" | "watch") => match request_name(req) {
                n if n == node => allow(),
                n if n.is_empty() => abstain(format!("node '{node}' cannot read all nodes, only its own Node object")),
                n => abstain(format!("node '{node}' cannot read '{n}', only its own Node object")),
            },
            _ => abstain(""),
        }
    }
}

impl Authorizer for NodeAuthorizer {
    fn authorize(&self, user: &UserInfo, req: &RequestInfo) -> Decision {
        let Some(node) = node_identity(user) else { return abstain("") };
        if node.is_empty() {
            return abstain(format!("unknown node for user {:?}", user.name));
        }
        if req.is_resource {
            match (req.group.as_str(), req.resource.as_str()) {
                ("", "secrets") => return self.read_namespaced(node, Vertex::Secret, req),
                ("", "configmaps") => return self.read_namespaced(node, Vertex::ConfigMap, req),
                ("", "persistentvolumeclaims") if req.subresource == "status" => {
                    if !matches!(req.verb.as_str(), "update" | "patch") {
                        return abstain("can only get/update/patch this type");
                    }
                    return self.related(node, Vertex::Claim, req);
                }
                ("", "persistentvolumeclaims") => return self.get_only(node, Vertex::Claim, req),
                ("", "persistentvolumes") => {
                    if req.verb != "get" {
                        return abstain("can only get individual resources of this type");
                    }
                    if !req.subresource.is_empty() {
                        return abstain("cannot get subresource");
                    }
                    return if self.graph.read().volume_related(node, &req.name) {
                        allow()
                    } else {
                        abstain(format!("no relationship found between node '{node}' and this object"))
                    };
                }
                ("storage.k8s.io", "volumeattachments") => {
                    if req.verb != "get" || !req.subresource.is_empty() {
                        return abstain("can only get individual resources of this type");
                    }
                    return if self.graph.read().attachments.get(&req.name).is_some_and(|n| n == node) {
                        allow()
                    } else {
                        abstain(format!("no relationship found between node '{node}' and this object"))
                    };
                }
                ("", "serviceaccounts") => {
                    if req.verb != "create" || req.name.is_empty() {
                        return abstain("can only create tokens for individual service accounts");
                    }
                    if req.subresource != "token" {
                        return abstain("can only create token subresource of serviceaccount");
                    }
                    return self.related(node, Vertex::ServiceAccount, req);
                }
                ("coordination.k8s.io", "leases") => {
                    if req.namespace != "kube-node-lease" {
                        return abstain("can only access leases in the \"kube-node-lease\" system namespace");
                    }
                    return self.own_named(node, req, "node lease");
                }
                ("storage.k8s.io", "csinodes") => {
                    if !req.subresource.is_empty() {
                        return abstain("cannot authorize CSINode subresources");
                    }
                    return self.own_named(node, req, "CSINode");
                }
                ("", "nodes") => return self.nodes(node, req),
                ("", "pods") => return self.pods(node, req),
                _ => {}
            }
        }
        if self.rules.iter().any(|r| r.allows(req)) {
            allow()
        } else {
            abstain("")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_reaches_what_it_uses() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "serviceAccountName": "sa",
            "imagePullSecrets": [{"name": "pull"}],
            "containers": [{"env": [{"valueFrom": {"secretKeyRef": {"name": "env-s"}}}], "envFrom": [{"configMapRef": {"name": "env-c"}}]}],
            "volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "proj"}}]}}, {"name": "e", "ephemeral": {}},
                        {"name": "c", "persistentVolumeClaim": {"claimName": "data"}}]}});
        let mut g = Graph::default();
        // Read from the stored bytes, with a status and managed fields beside the spec.
        let mut stored = pod.clone();
        stored["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        stored["metadata"]["managedFields"] = json!([{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]);
        g.set_pod("ns", "p", pod_uses(&serde_json::to_vec(&stored).unwrap()));
        for (kind, name) in [
            (Vertex::Secret, "pull"),
            (Vertex::Secret, "env-s"),
            (Vertex::Secret, "proj"),
            (Vertex::ConfigMap, "env-c"),
            (Vertex::Claim, "p-e"),
            (Vertex::Claim, "data"),
            (Vertex::ServiceAccount, "sa"),
            (Vertex::Pod, "p"),
        ] {
            assert!(g.related("n1", kind, "ns", name), "{kind:?} {name}");
            assert!(!g.related("n2", kind, "ns", name), "{kind:?} {name}");
            assert!(!g.related("n1", kind, "other", name), "{kind:?} {name}");
        }
        g.claim_volume.insert(("ns".into(), "data".into()), "pv1".into());
        assert!(g.volume_related("n1", "pv1") && !g.volume_related("n2", "pv1"));
        // Moved off the node (deleted): nothing is reachable any more.
        g.set_pod("ns", "p", None);
        assert!(g.edges.is_empty() && !g.related("n1", Vertex::Secret, "ns", "pull"));
        // Unbound pods reach nothing.
        assert!(PodUses::of("p", &json!({})).is_none());
        assert!(pod_uses(br#"{"metadata":{"name":"p"},"spec":{"containers":[]},"status":{}}"#).is_none());
        assert!(pod_uses(br#"{"metadata":{"name":"p"},"spec":{"nodeName":"n1"}}"#).is_some_and(|u| u.node == "n1"));
        // Status writes keep the spec; a binding does not.
        let bound = br#"{"metadata":{"name":"p","annotations":{"spec":"x"}},"spec":{"nodeName":"n1"},"status":{"phase":"Pending"}}"#;
        let running = br#"{"metadata":{"name":"p","annotations":{"spec":"y"}},"spec":{"nodeName":"n1"},"status":{"phase":"Running"}}"#;
        let unbound = br#"{"metadata":{"name":"p"},"spec":{},"status":{"phase":"Pending"}}"#;
        assert!(nanokube_api::json::same_spec(bound, running));
        assert!(!nanokube_api::json::same_spec(unbound, bound));
        assert!(!nanokube_api::json::same_spec(b"not json", b"not json"));
    }
}
