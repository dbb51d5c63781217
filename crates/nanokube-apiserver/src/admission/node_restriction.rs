//! kube-apiserver's `NodeRestriction` admission plugin: a node (user `system:node:<name>`
//! in `system:nodes`) may write only itself and what is bound to it. The Node authorizer
//! lets nodes create, update and delete nodes, pods, leases and csinodes in general; this
//! plugin, which sees the objects, narrows that:
//!
//! - pods: create only mirror pods (`kubernetes.io/config.mirror`) bound to itself that
//!   use no secrets, configmaps or claims; update only the status of, evict and delete only
//!   pods bound to itself;
//! - nodes: create, update and delete only its own Node, never changing its taints on
//!   update, nor setting `node-restriction.kubernetes.io/` labels or `kubernetes.io` and
//!   `k8s.io` labels other than the ones kubelets set;
//! - leases in `kube-node-lease` and csinodes: only its own name;
//! - service-account tokens ([`check_token_request`]): only bound to a pod on itself.

use nanokube_api::ApiError;
use serde_json::Value;

use super::{Attributes, Operation};
use crate::node_authz::node_identity;

/// The annotation that marks a mirror pod (a static pod's API copy).
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

fn forbidden(attrs: &Attributes<'_>, why: String) -> ApiError {
    let qualified = if attrs.def.group.is_empty() { attrs.def.plural.to_string() } else { format!("{}.{}", attrs.def.plural, attrs.def.group) };
    let mut e = ApiError::forbidden(format!("{qualified} {:?} is forbidden: {why}", attrs.name));
    e.details.name = Some(attrs.name.to_string());
    e.details.group = (!attrs.def.group.is_empty()).then(|| attrs.def.group.to_string());
    e.details.kind = Some(attrs.def.plural.to_string());
    e
}

fn node_name_of(obj: Option<&Value>) -> &str {
    obj.and_then(|o| o.pointer("/spec/nodeName")).and_then(Value::as_str).unwrap_or("")
}

/// The labels kubelets set themselves (upstream's `kubeletapis.KubeletLabels`).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// Whether a node may not set this label itself (upstream's `getForbiddenLabels`).
fn forbidden_label(key: &str) -> bool {
    let Some((namespace, _)) = key.split_once('/') else { return false };
    if namespace == "node-restriction.kubernetes.io" || namespace.ends_with(".node-restriction.kubernetes.io") {
        return true;
    }
    if KUBELET_LABELS.contains(&key) || namespace == "kubelet.kubernetes.io" || namespace.ends_with(".kubelet.kubernetes.io") {
        return false;
    }
    if namespace == "node.kubernetes.io" || namespace.ends_with(".node.kubernetes.io") {
        return false;
    }
    ["kubernetes.io", "k8s.io"].iter().any(|d| namespace == *d || namespace.ends_with(&format!(".{d}")))
}

/// The labels a write sets or changes that a node may not (sorted).
fn forbidden_label_changes(obj: &Value, old: Option<&Value>) -> Vec<String> {
    let labels = |o: Option<&Value>| o.and_then(|o| o.pointer("/metadata/labels")).and_then(Value::as_object).cloned().unwrap_or_default();
    let (new, before) = (labels(Some(obj)), labels(old));
    let mut out: Vec<String> = new
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(before.keys().filter(|k| !new.contains_key(*k)).cloned())
        .filter(|k| forbidden_label(k))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Check a write made by a node; writes by anyone else pass.
pub fn check(attrs: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
    let Some(requester) = attrs.requester else { return Ok(()) };
    let Some(node) = node_identity(&requester.user) else { return Ok(()) };
    if node.is_empty() {
        return Err(forbidden(attrs, format!("could not determine node from user {:?}", requester.user.name)));
    }
    match (attrs.def.group, attrs.def.plural) {
        ("", "pods") => check_pod(attrs, node, obj, old),
        ("", "nodes") => check_node(attrs, node, obj, old),
        ("coordination.k8s.io", "leases") if attrs.namespace == "kube-node-lease" && attrs.name != node => {
            Err(forbidden(attrs, "can only access node lease with the same name as the requesting node".into()))
        }
        ("storage.k8s.io", "csinodes") if attrs.name != node => {
            Err(forbidden(attrs, format!("node {node:?} is not allowed to modify CSINode {:?}", attrs.name)))
        }
        _ => Ok(()),
    }
}

fn check_pod(attrs: &Attributes<'_>, node: &str, obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
    match (attrs.subresource, attrs.operation) {
        ("", Operation::Create) => {
            let pod = obj.unwrap_or(&Value::Null);
            if pod.pointer("/metadata/annotations").and_then(|a| a.get(MIRROR_POD_ANNOTATION)).is_none() {
                return Err(forbidden(attrs, format!("pod does not have {MIRROR_POD_ANNOTATION:?} annotation, node {node:?} can only create mirror pods")));
            }
            if node_name_of(obj) != node {
                return Err(forbidden(attrs, format!("node {node:?} can only create pods with spec.nodeName set to itself")));
            }
            let owners = pod.pointer("/metadata/ownerReferences").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            if owners.len() > 1 {
                return Err(forbidden(attrs, format!("node {node:?} can only create pods with a single owner reference set to itself")));
            }
            if let Some(o) = owners.first() {
                let is_self = o.get("kind").and_then(Value::as_str) == Some("Node") && o.get("name").and_then(Value::as_str) == Some(node);
                if !is_self {
                    return Err(forbidden(attrs, format!("node {node:?} can only create pods with an owner reference set to itself")));
                }
            }
            let spec = pod.get("spec").unwrap_or(&Value::Null);
            let containers = || {
                ["initContainers", "containers", "ephemeralContainers"].into_iter().flat_map(|l| spec.get(l).and_then(Value::as_array).into_iter().flatten())
            };
            let env_uses = |key: &str, from_key: &str| {
                containers().any(|c| {
                    c.get("envFrom").and_then(Value::as_array).into_iter().flatten().any(|f| f.get(from_key).is_some())
                        || c.get("env").and_then(Value::as_array).into_iter().flatten().any(|e| e.pointer(&format!("/valueFrom/{key}")).is_some())
                })
            };
            let volumes = || spec.get("volumes").and_then(Value::as_array).into_iter().flatten();
            let projected =
                |kind: &str| volumes().any(|v| v.pointer("/projected/sources").and_then(Value::as_array).into_iter().flatten().any(|s| s.get(kind).is_some()));
            if spec.get("imagePullSecrets").and_then(Value::as_array).is_some_and(|a| !a.is_empty())
                || env_uses("secretKeyRef", "secretRef")
                || volumes().any(|v| v.get("secret").is_some())
                || projected("secret")
            {
                return Err(forbidden(attrs, format!("node {node:?} can not create pods that reference secrets")));
            }
            if env_uses("configMapKeyRef", "configMapRef") || volumes().any(|v| v.get("configMap").is_some()) || projected("configMap") {
                return Err(forbidden(attrs, format!("node {node:?} can not create pods that reference configmaps")));
            }
            if volumes().any(|v| v.get("persistentVolumeClaim").is_some() || v.get("ephemeral").is_some()) {
                return Err(forbidden(attrs, format!("node {node:?} can not create pods that reference persistentvolumeclaims")));
            }
            Ok(())
        }
        ("", Operation::Delete) if node_name_of(old) != node => {
            Err(forbidden(attrs, format!("node {node:?} can only delete pods with spec.nodeName set to itself")))
        }
        ("", Operation::Delete) => Ok(()),
        ("", op) => Err(forbidden(attrs, format!("unexpected operation {:?}, node {node:?} can only create and delete mirror pods", op.as_str()))),
        ("status", Operation::Update) if node_name_of(old) != node => {
            Err(forbidden(attrs, format!("node {node:?} can only update pod status for pods with spec.nodeName set to itself")))
        }
        ("status", Operation::Update) => Ok(()),
        (sub, _) => Err(forbidden(attrs, format!("unexpected subresource {sub:?}"))),
    }
}

fn check_node(attrs: &Attributes<'_>, node: &str, obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
    if attrs.name != node {
        return Err(forbidden(attrs, format!("node {node:?} is not allowed to modify node {:?}", attrs.name)));
    }
    let Some(obj) = obj else { return Ok(()) };
    if obj.pointer("/spec/configSource").is_some_and(|c| !c.is_null()) {
        return Err(forbidden(attrs, format!("node {node:?} is not allowed to create pods with a non-nil configSource")));
    }
    let labels = forbidden_label_changes(obj, old);
    if let Some(old) = old {
        let taints = |o: &Value| o.pointer("/spec/taints").filter(|t| !t.is_null()).cloned().unwrap_or(Value::Array(Vec::new()));
        if taints(obj) != taints(old) {
            return Err(forbidden(attrs, format!("node {node:?} is not allowed to modify taints")));
        }
        if !labels.is_empty() {
            return Err(forbidden(attrs, format!("is not allowed to modify labels: {}", labels.join(", "))));
        }
    } else if !labels.is_empty() {
        return Err(forbidden(attrs, format!("node {node:?} is not allowed to set the following labels: {}", labels.join(", "))));
    }
    Ok(())
}

/// A token a node asks for a service account must be bound to a pod on that node
/// (`pod` is the bound pod as stored, `None` when the token is not bound to a pod; its
/// uid was checked against the reference already).
pub fn check_token_request(user: &crate::authn::UserInfo, sa_name: &str, pod: Option<&Value>) -> Result<(), ApiError> {
    let Some(node) = node_identity(user) else { return Ok(()) };
    let refuse = |why: &str| ApiError::forbidden(format!("serviceaccounts {sa_name:?} is forbidden: {why}"));
    match pod {
        None => Err(refuse("node requested token not bound to a pod")),
        Some(pod) if node_name_of(Some(pod)) != node => Err(refuse("node requested token bound to a pod scheduled on a different node")),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubelet_labels_pass_and_restricted_ones_do_not() {
        for ok in [
            "kubernetes.io/hostname",
            "node.kubernetes.io/instance-type",
            "kubelet.kubernetes.io/x",
            "example.com/x",
            "plain",
            "node.kubernetes.io/exclude-from-external-load-balancers",
        ] {
            assert!(!forbidden_label(ok), "{ok}");
        }
        for bad in ["node-restriction.kubernetes.io/x", "kubernetes.io/role", "node-role.kubernetes.io/control-plane", "foo.k8s.io/x", "k8s.io/x"] {
            assert!(forbidden_label(bad), "{bad}");
        }
        let old = json!({"metadata": {"labels": {"kubernetes.io/role": "a", "keep": "1"}}});
        let new = json!({"metadata": {"labels": {"keep": "2", "node-restriction.kubernetes.io/z": "1"}}});
        assert_eq!(forbidden_label_changes(&new, Some(&old)), vec!["kubernetes.io/role", "node-restriction.kubernetes.io/z"]);
    }
}
