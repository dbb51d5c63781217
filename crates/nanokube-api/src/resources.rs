//! The table of built-in resources. Discovery, OpenAPI, routing, storage keys and the
//! registry strategies are all driven from here, so a resource exists in exactly one place.

/// The verbs of an ordinary read-write resource, as discovery lists them.
pub const STANDARD_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
/// The verbs of a create-only review resource.
pub const CREATE_ONLY: &[&str] = &["create"];

/// A subresource served under `.../{name}/{subresource}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubresourceDef {
    /// e.g. `status`, `scale`.
    pub name: &'static str,
    /// Group of the kind the subresource returns (`autoscaling` for scale).
    pub group: &'static str,
    /// Version of the returned kind.
    pub version: &'static str,
    /// The returned kind.
    pub kind: &'static str,
    /// Verbs, as discovery lists them.
    pub verbs: &'static [&'static str],
}

/// One built-in resource (a group/version/plural).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group, `""` for core.
    pub group: &'static str,
    /// Version, e.g. `v1`.
    pub version: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// Plural resource name, e.g. `pods`.
    pub plural: &'static str,
    /// Singular name, e.g. `pod`.
    pub singular: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names, e.g. `po`.
    pub short_names: &'static [&'static str],
    /// Categories, e.g. `all`.
    pub categories: &'static [&'static str],
    /// Verbs on the main resource.
    pub verbs: &'static [&'static str],
    /// Subresources served.
    pub subresources: &'static [SubresourceDef],
    /// Whether `metadata.generation` moves on spec changes (types with a status subresource and a spec).
    pub tracks_generation: bool,
}

impl ResourceDef {
    /// `apps/v1`, or `v1` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `PodList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// Whether the resource has a `status` subresource (writes to the main resource keep status).
    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|s| s.name == "status")
    }

    /// Find a subresource by name.
    pub fn subresource(&self, name: &str) -> Option<&'static SubresourceDef> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether the verb is served on the main resource.
    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// The storage key prefix of this resource: `/registry/<group>/<plural>/`.
    /// Core resources have no group segment, as upstream lays out etcd.
    pub fn key_prefix(&self) -> String {
        // events.k8s.io/v1 Events share storage with core/v1 Events, as upstream's do.
        if self.group.is_empty() || (self.group == "events.k8s.io" && self.plural == "events") {
            format!("/registry/{}/", self.plural)
        } else {
            format!("/registry/{}/{}/", self.group, self.plural)
        }
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        if self.namespaced {
            format!("{}{}/{}", self.key_prefix(), namespace, name)
        } else {
            format!("{}{}", self.key_prefix(), name)
        }
    }

    /// The key prefix of one namespace's objects (or of all objects for cluster-scoped types).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{}/", self.key_prefix(), ns),
            _ => self.key_prefix(),
        }
    }

    /// Whether objects of this resource are stored (review resources are not).
    pub fn is_stored(&self) -> bool {
        self.verbs != CREATE_ONLY
    }
}

const fn status(kind: &'static str, group: &'static str) -> SubresourceDef {
    SubresourceDef { name: "status", group, version: "v1", kind, verbs: &["get", "patch", "update"] }
}

const fn scale() -> SubresourceDef {
    SubresourceDef { name: "scale", group: "autoscaling", version: "v1", kind: "Scale", verbs: &["get", "patch", "update"] }
}

#[allow(clippy::too_many_arguments)]
const fn res(
    group: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [SubresourceDef],
) -> ResourceDef {
    ResourceDef {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        categories,
        verbs: STANDARD_VERBS,
        subresources,
        tracks_generation: false,
    }
}

const fn with_generation(mut r: ResourceDef) -> ResourceDef {
    r.tracks_generation = true;
    r
}

const fn create_only(group: &'static str, kind: &'static str, plural: &'static str, singular: &'static str, namespaced: bool) -> ResourceDef {
    ResourceDef {
        group,
        version: "v1",
        kind,
        plural,
        singular,
        namespaced,
        short_names: &[],
        categories: &[],
        verbs: CREATE_ONLY,
        subresources: &[],
        tracks_generation: false,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

/// Every built-in resource nanokube serves, in discovery order.
pub static BUILTIN: &[ResourceDef] = &[
    // core/v1
    res("", "Binding", "bindings", "binding", true, NONE, NONE, &[]),
    res("", "ConfigMap", "configmaps", "configmap", true, &["cm"], NONE, &[]),
    res("", "Endpoints", "endpoints", "endpoints", true, &["ep"], NONE, &[]),
    res("", "Event", "events", "event", true, &["ev"], NONE, &[]),
    res("", "LimitRange", "limitranges", "limitrange", true, &["limits"], NONE, &[]),
    res("", "Namespace", "namespaces", "namespace", false, &["ns"], NONE, &[status("Namespace", "")]),
    res("", "Node", "nodes", "node", false, &["no"], NONE, &[status("Node", "")]),
    res("", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", true, &["pvc"], NONE, &[status("PersistentVolumeClaim", "")]),
    res("", "PersistentVolume", "persistentvolumes", "persistentvolume", false, &["pv"], NONE, &[status("PersistentVolume", "")]),
    res("", "Pod", "pods", "pod", true, &["po"], ALL, &[status("Pod", "")]),
    res("", "ReplicationController", "replicationcontrollers", "replicationcontroller", true, &["rc"], ALL, &[status("ReplicationController", ""), scale()]),
    res("", "ResourceQuota", "resourcequotas", "resourcequota", true, &["quota"], NONE, &[status("ResourceQuota", "")]),
    res("", "Secret", "secrets", "secret", true, NONE, NONE, &[]),
    res(
        "",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        NONE,
        &[SubresourceDef { name: "token", group: "authentication.k8s.io", version: "v1", kind: "TokenRequest", verbs: &["create"] }],
    ),
    res("", "Service", "services", "service", true, &["svc"], ALL, &[status("Service", "")]),
    // apps/v1
    res("apps", "ControllerRevision", "controllerrevisions", "controllerrevision", true, NONE, NONE, &[]),
    with_generation(res("apps", "DaemonSet", "daemonsets", "daemonset", true, &["ds"], ALL, &[status("DaemonSet", "apps")])),
    with_generation(res("apps", "Deployment", "deployments", "deployment", true, &["deploy"], ALL, &[status("Deployment", "apps"), scale()])),
    with_generation(res("apps", "ReplicaSet", "replicasets", "replicaset", true, &["rs"], ALL, &[status("ReplicaSet", "apps"), scale()])),
    with_generation(res("apps", "StatefulSet", "statefulsets", "statefulset", true, &["sts"], ALL, &[status("StatefulSet", "apps"), scale()])),
    // authentication / authorization reviews (create-only, never stored)
    create_only("authentication.k8s.io", "SelfSubjectReview", "selfsubjectreviews", "selfsubjectreview", false),
    create_only("authentication.k8s.io", "TokenReview", "tokenreviews", "tokenreview", false),
    create_only("authorization.k8s.io", "LocalSubjectAccessReview", "localsubjectaccessreviews", "localsubjectaccessreview", true),
    create_only("authorization.k8s.io", "SelfSubjectAccessReview", "selfsubjectaccessreviews", "selfsubjectaccessreview", false),
    create_only("authorization.k8s.io", "SelfSubjectRulesReview", "selfsubjectrulesreviews", "selfsubjectrulesreview", false),
    create_only("authorization.k8s.io", "SubjectAccessReview", "subjectaccessreviews", "subjectaccessreview", false),
    // batch/v1
    with_generation(res("batch", "CronJob", "cronjobs", "cronjob", true, &["cj"], ALL, &[status("CronJob", "batch")])),
    with_generation(res("batch", "Job", "jobs", "job", true, NONE, ALL, &[status("Job", "batch")])),
    // coordination.k8s.io/v1
    res("coordination.k8s.io", "Lease", "leases", "lease", true, NONE, NONE, &[]),
    // discovery.k8s.io/v1
    res("discovery.k8s.io", "EndpointSlice", "endpointslices", "endpointslice", true, NONE, NONE, &[]),
    // events.k8s.io/v1
    res("events.k8s.io", "Event", "events", "event", true, &["ev"], NONE, &[]),
    // networking.k8s.io/v1
    with_generation(res("networking.k8s.io", "Ingress", "ingresses", "ingress", true, &["ing"], NONE, &[status("Ingress", "networking.k8s.io")])),
    with_generation(res("networking.k8s.io", "NetworkPolicy", "networkpolicies", "networkpolicy", true, &["netpol"], NONE, &[])),
    // policy/v1
    with_generation(res(
        "policy",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        &["pdb"],
        NONE,
        &[status("PodDisruptionBudget", "policy")],
    )),
    // rbac.authorization.k8s.io/v1
    res("rbac.authorization.k8s.io", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", false, NONE, NONE, &[]),
    res("rbac.authorization.k8s.io", "ClusterRole", "clusterroles", "clusterrole", false, NONE, NONE, &[]),
    res("rbac.authorization.k8s.io", "RoleBinding", "rolebindings", "rolebinding", true, NONE, NONE, &[]),
    res("rbac.authorization.k8s.io", "Role", "roles", "role", true, NONE, NONE, &[]),
    // scheduling.k8s.io/v1
    res("scheduling.k8s.io", "PriorityClass", "priorityclasses", "priorityclass", false, &["pc"], NONE, &[]),
    // storage.k8s.io/v1
    res("storage.k8s.io", "StorageClass", "storageclasses", "storageclass", false, &["sc"], NONE, &[]),
];

/// The API groups in discovery order (preferred version first), core excluded.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in BUILTIN {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    // Upstream lists apps first among named groups; the rest follow alphabetically.
    out.sort_by_key(|g| (*g != "apps", *g));
    out
}

/// The resources of one group/version.
pub fn in_group_version<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static ResourceDef> + 'a {
    BUILTIN.iter().filter(move |r| r.group == group && r.version == version)
}

/// Look up a resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    BUILTIN.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Look up a resource by group and kind.
pub fn find_kind(group: &str, kind: &str) -> Option<&'static ResourceDef> {
    BUILTIN.iter().find(|r| r.group == group && r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_event_apis_share_storage() {
        let core = find("", "v1", "events").unwrap();
        let ev = find("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(core.key("default", "x"), ev.key("default", "x"));
        assert_eq!(core.key("default", "x"), "/registry/events/default/x");
    }

    #[test]
    fn apps_is_the_first_named_group() {
        assert_eq!(groups()[0], "apps");
    }

    #[test]
    fn cluster_scoped_keys_have_no_namespace() {
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(ns.key("", "default"), "/registry/namespaces/default");
    }
}
