//! The table of served resources: the built-in ones (static), and per cluster a
//! [`ResourceTable`] that adds those CustomResourceDefinitions define. Discovery, OpenAPI,
//! routing, storage keys and the registry strategies are all driven from here, so a
//! resource exists in exactly one place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::crd::{version_priority, CustomResource};

/// The verbs of an ordinary read-write resource, as discovery lists them.
pub const STANDARD_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
/// The verbs of a create-only review resource.
pub const CREATE_ONLY: &[&str] = &["create"];
/// Verbs of a resource read from the server's own state, never stored
/// (`componentstatuses`).
pub const GET_LIST: &[&str] = &["get", "list"];

/// A subresource served under `.../{name}/{subresource}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// One served resource (a group/version/plural): built in, or defined by a
/// CustomResourceDefinition (then interned, see [`intern`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The version objects are stored as (all versions of a resource share one key prefix).
    pub storage_version: &'static str,
    /// Defined by a CustomResourceDefinition.
    pub custom: bool,
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

    /// The storage key prefix of this resource, as kube-apiserver lays out etcd (so that
    /// either can serve a store the other wrote): `/registry/<plural>/` for built-in
    /// resources of every group, with upstream's special cases (`services/specs`,
    /// `services/endpoints`, `minions`, `controllers`, `ingress`); `/registry/<group>/
    /// <plural>/` for custom resources and for the resources of the extension and
    /// aggregation servers (CustomResourceDefinitions, APIServices), which upstream
    /// stores under their group. events.k8s.io Events share core Events' prefix.
    pub fn key_prefix(&self) -> String {
        if self.custom || matches!(self.group, "apiextensions.k8s.io" | "apiregistration.k8s.io") {
            return format!("/registry/{}/{}/", self.group, self.plural);
        }
        let special = match (self.group, self.plural) {
            ("", "services") => Some("services/specs"),
            ("", "endpoints") => Some("services/endpoints"),
            ("", "nodes") => Some("minions"),
            ("", "replicationcontrollers") => Some("controllers"),
            ("networking.k8s.io" | "extensions", "ingresses") => Some("ingress"),
            _ => None,
        };
        format!("/registry/{}/", special.unwrap_or(self.plural))
    }

    /// The key prefix nanokube used before it followed upstream's layout (core
    /// resources by plural, all others by group and plural), for moving old data.
    pub fn legacy_key_prefix(&self) -> String {
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
        self.verbs != CREATE_ONLY && self.verbs != GET_LIST
    }
}

const fn status(kind: &'static str, group: &'static str) -> SubresourceDef {
    SubresourceDef { name: "status", group, version: "v1", kind, verbs: &["get", "patch", "update"] }
}

const fn status_in(kind: &'static str, group: &'static str, version: &'static str) -> SubresourceDef {
    SubresourceDef { name: "status", group, version, kind, verbs: &["get", "patch", "update"] }
}

const fn approval(kind: &'static str, group: &'static str) -> SubresourceDef {
    SubresourceDef { name: "approval", group, version: "v1", kind, verbs: &["get", "patch", "update"] }
}

/// A cluster-scoped admissionregistration.k8s.io configuration (category
/// `api-extensions`, generation tracked, as upstream's).
const fn admission_config(kind: &'static str, plural: &'static str, singular: &'static str, subresources: &'static [SubresourceDef]) -> ResourceDef {
    with_generation(res("admissionregistration.k8s.io", kind, plural, singular, false, NONE, &["api-extensions"], subresources))
}

const HPA_STATUS_V1: &[SubresourceDef] = &[status_in("HorizontalPodAutoscaler", "autoscaling", "v1")];
const HPA_STATUS_V2: &[SubresourceDef] = &[status_in("HorizontalPodAutoscaler", "autoscaling", "v2")];

/// HorizontalPodAutoscalers of `version`, all stored as v2 (v1 is converted, see
/// `convert`).
const fn hpa(version: &'static str) -> ResourceDef {
    let status = if version.len() == 2 && version.as_bytes()[1] == b'2' { HPA_STATUS_V2 } else { HPA_STATUS_V1 };
    let mut r = res("autoscaling", "HorizontalPodAutoscaler", "horizontalpodautoscalers", "horizontalpodautoscaler", true, &["hpa"], ALL, status);
    r.version = version;
    r.storage_version = "v2";
    r
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
        storage_version: "v1",
        custom: false,
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
        storage_version: "v1",
        custom: false,
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

/// Every built-in resource nanokube serves, in discovery order.
pub static BUILTIN: &[ResourceDef] = &[
    // core/v1
    res("", "Binding", "bindings", "binding", true, NONE, NONE, &[]),
    {
        let mut cs = res("", "ComponentStatus", "componentstatuses", "componentstatus", false, &["cs"], NONE, &[]);
        cs.verbs = GET_LIST;
        cs
    },
    res("", "ConfigMap", "configmaps", "configmap", true, &["cm"], NONE, &[]),
    res("", "Endpoints", "endpoints", "endpoints", true, &["ep"], NONE, &[]),
    res("", "Event", "events", "event", true, &["ev"], NONE, &[]),
    res("", "LimitRange", "limitranges", "limitrange", true, &["limits"], NONE, &[]),
    res("", "Namespace", "namespaces", "namespace", false, &["ns"], NONE, &[status("Namespace", "")]),
    res(
        "",
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        NONE,
        &[
            SubresourceDef { name: "proxy", group: "", version: "v1", kind: "NodeProxyOptions", verbs: &["create", "delete", "get", "patch", "update"] },
            status("Node", ""),
        ],
    ),
    res("", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", true, &["pvc"], NONE, &[status("PersistentVolumeClaim", "")]),
    res("", "PersistentVolume", "persistentvolumes", "persistentvolume", false, &["pv"], NONE, &[status("PersistentVolume", "")]),
    // Pods count generations since 1.33 (KEP-5067, not feature-gated in the API server):
    // 1 on create, +1 per spec change (updates, resizes, ephemeral containers).
    with_generation(res(
        "",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        ALL,
        &[
            SubresourceDef { name: "attach", group: "", version: "v1", kind: "PodAttachOptions", verbs: &["create", "get"] },
            SubresourceDef { name: "binding", group: "", version: "v1", kind: "Binding", verbs: &["create"] },
            SubresourceDef { name: "ephemeralcontainers", group: "", version: "v1", kind: "Pod", verbs: &["get", "patch", "update"] },
            SubresourceDef { name: "eviction", group: "policy", version: "v1", kind: "Eviction", verbs: &["create"] },
            SubresourceDef { name: "exec", group: "", version: "v1", kind: "PodExecOptions", verbs: &["create", "get"] },
            SubresourceDef { name: "portforward", group: "", version: "v1", kind: "PodPortForwardOptions", verbs: &["create", "get"] },
            SubresourceDef { name: "log", group: "", version: "v1", kind: "Pod", verbs: &["get"] },
            SubresourceDef { name: "proxy", group: "", version: "v1", kind: "PodProxyOptions", verbs: &["create", "delete", "get", "patch", "update"] },
            SubresourceDef { name: "resize", group: "", version: "v1", kind: "Pod", verbs: &["get", "patch", "update"] },
            status("Pod", ""),
        ],
    )),
    res("", "PodTemplate", "podtemplates", "podtemplate", true, NONE, NONE, &[]),
    with_generation(res(
        "",
        "ReplicationController",
        "replicationcontrollers",
        "replicationcontroller",
        true,
        &["rc"],
        ALL,
        &[status("ReplicationController", ""), scale()],
    )),
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
    res(
        "",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        ALL,
        &[
            SubresourceDef { name: "proxy", group: "", version: "v1", kind: "ServiceProxyOptions", verbs: &["create", "delete", "get", "patch", "update"] },
            status("Service", ""),
        ],
    ),
    // admissionregistration.k8s.io/v1 (stored; webhooks are not called and policies
    // not evaluated yet)
    admission_config("MutatingWebhookConfiguration", "mutatingwebhookconfigurations", "mutatingwebhookconfiguration", &[]),
    admission_config(
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        "validatingadmissionpolicy",
        &[status("ValidatingAdmissionPolicy", "admissionregistration.k8s.io")],
    ),
    admission_config("ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings", "validatingadmissionpolicybinding", &[]),
    admission_config("ValidatingWebhookConfiguration", "validatingwebhookconfigurations", "validatingwebhookconfiguration", &[]),
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
    // autoscaling/v2 (stored), and v1 converted to and from it
    hpa("v2"),
    hpa("v1"),
    // batch/v1
    with_generation(res("batch", "CronJob", "cronjobs", "cronjob", true, &["cj"], ALL, &[status("CronJob", "batch")])),
    with_generation(res("batch", "Job", "jobs", "job", true, NONE, ALL, &[status("Job", "batch")])),
    // certificates.k8s.io/v1 (stored and approved; signing comes with the controllers)
    res(
        "certificates.k8s.io",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        false,
        &["csr"],
        NONE,
        &[approval("CertificateSigningRequest", "certificates.k8s.io"), status("CertificateSigningRequest", "certificates.k8s.io")],
    ),
    // coordination.k8s.io/v1
    res("coordination.k8s.io", "Lease", "leases", "lease", true, NONE, NONE, &[]),
    // discovery.k8s.io/v1
    res("discovery.k8s.io", "EndpointSlice", "endpointslices", "endpointslice", true, NONE, NONE, &[]),
    // events.k8s.io/v1
    res("events.k8s.io", "Event", "events", "event", true, &["ev"], NONE, &[]),
    // flowcontrol.apiserver.k8s.io/v1
    with_generation(res(
        "flowcontrol.apiserver.k8s.io",
        "FlowSchema",
        "flowschemas",
        "flowschema",
        false,
        NONE,
        NONE,
        &[status("FlowSchema", "flowcontrol.apiserver.k8s.io")],
    )),
    with_generation(res(
        "flowcontrol.apiserver.k8s.io",
        "PriorityLevelConfiguration",
        "prioritylevelconfigurations",
        "prioritylevelconfiguration",
        false,
        NONE,
        NONE,
        &[status("PriorityLevelConfiguration", "flowcontrol.apiserver.k8s.io")],
    )),
    // networking.k8s.io/v1
    res("networking.k8s.io", "IngressClass", "ingressclasses", "ingressclass", false, NONE, NONE, &[]),
    res("networking.k8s.io", "IPAddress", "ipaddresses", "ipaddress", false, &["ip"], NONE, &[]),
    res("networking.k8s.io", "ServiceCIDR", "servicecidrs", "servicecidr", false, NONE, NONE, &[status("ServiceCIDR", "networking.k8s.io")]),
    with_generation(res("networking.k8s.io", "Ingress", "ingresses", "ingress", true, &["ing"], NONE, &[status("Ingress", "networking.k8s.io")])),
    with_generation(res("networking.k8s.io", "NetworkPolicy", "networkpolicies", "networkpolicy", true, &["netpol"], NONE, &[])),
    // node.k8s.io/v1
    res("node.k8s.io", "RuntimeClass", "runtimeclasses", "runtimeclass", false, NONE, NONE, &[]),
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
    // apiextensions.k8s.io/v1
    with_generation(res(
        "apiextensions.k8s.io",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        false,
        &["crd", "crds"],
        &["api-extensions"],
        &[status("CustomResourceDefinition", "apiextensions.k8s.io")],
    )),
    // apiregistration.k8s.io/v1
    res(
        "apiregistration.k8s.io",
        "APIService",
        "apiservices",
        "apiservice",
        false,
        NONE,
        &["api-extensions"],
        &[status("APIService", "apiregistration.k8s.io")],
    ),
    res("scheduling.k8s.io", "PriorityClass", "priorityclasses", "priorityclass", false, &["pc"], NONE, &[]),
    // storage.k8s.io/v1
    res("storage.k8s.io", "CSIDriver", "csidrivers", "csidriver", false, NONE, NONE, &[]),
    res("storage.k8s.io", "CSINode", "csinodes", "csinode", false, NONE, NONE, &[]),
    res("storage.k8s.io", "CSIStorageCapacity", "csistoragecapacities", "csistoragecapacity", true, NONE, NONE, &[]),
    res("storage.k8s.io", "StorageClass", "storageclasses", "storageclass", false, &["sc"], NONE, &[]),
    res("storage.k8s.io", "VolumeAttachment", "volumeattachments", "volumeattachment", false, NONE, NONE, &[status("VolumeAttachment", "storage.k8s.io")]),
    // metrics.k8s.io/v1beta1: metrics-server's API (as k3s bundles it), computed from the
    // node agents' figures, never stored.
    metrics("NodeMetrics", "nodes", "nodemetrics", false),
    metrics("PodMetrics", "pods", "podmetrics", true),
];

const fn metrics(kind: &'static str, plural: &'static str, singular: &'static str, namespaced: bool) -> ResourceDef {
    let mut r = res("metrics.k8s.io", kind, plural, singular, namespaced, NONE, NONE, &[]);
    r.version = "v1beta1";
    r.storage_version = "v1beta1";
    r.verbs = GET_LIST;
    r
}

/// The API groups in discovery order, core excluded: by group priority, highest first
/// (then by name), as upstream's aggregator orders them.
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in BUILTIN {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out.sort_by_key(|g| (std::cmp::Reverse(priority(g, "v1").0), *g));
    out
}

/// The `groupPriorityMinimum` and `versionPriority` of a group-version's APIService, as
/// kube-apiserver 1.33 registers them (`DefaultGenericAPIServicePriorities` and the
/// controlplane's additions); custom resources' group-versions get 1000 and 100, as
/// upstream's CRD registration does.
pub fn priority(group: &str, version: &str) -> (i64, i64) {
    let group_priority = match group {
        "" => return (18000, 1),
        "apiregistration.k8s.io" => 18000,
        "apps" => 17800,
        "events.k8s.io" => 17750,
        "authentication.k8s.io" => 17700,
        "authorization.k8s.io" => 17600,
        "autoscaling" => 17500,
        "batch" => 17400,
        "certificates.k8s.io" => 17300,
        "networking.k8s.io" => 17200,
        "policy" => 17100,
        "rbac.authorization.k8s.io" => 17000,
        "storage.k8s.io" => 16800,
        "apiextensions.k8s.io" | "admissionregistration.k8s.io" => 16700,
        "scheduling.k8s.io" => 16600,
        "coordination.k8s.io" => 16500,
        "node.k8s.io" => 16300,
        "discovery.k8s.io" => 16200,
        "flowcontrol.apiserver.k8s.io" => 16100,
        // metrics-server's APIService.
        "metrics.k8s.io" => return (100, 100),
        _ => return (1000, 100),
    };
    let version_priority = match (group, version) {
        ("autoscaling", "v2") => 30,
        ("flowcontrol.apiserver.k8s.io", "v1") => 21,
        _ => 15,
    };
    (group_priority, version_priority)
}

/// The resources of one group/version.
pub fn in_group_version<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static ResourceDef> + 'a {
    BUILTIN.iter().filter(move |r| r.group == group && r.version == version)
}

/// Look up a resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    builtin_index().by_plural.get(plural)?.iter().copied().find(|r| r.group == group && r.version == version)
}

/// Look up a resource by group and kind.
pub fn find_kind(group: &str, kind: &str) -> Option<&'static ResourceDef> {
    builtin_index().by_kind.get(kind)?.iter().copied().find(|r| r.group == group)
}

/// [`BUILTIN`] by plural and by kind, each list in the table's order: every request
/// and every write looks resources up, and a scan of the table compared strings of
/// ~100 entries each time (8% of the server's CPU creating 100,000 pods).
struct BuiltinIndex {
    by_plural: crate::FastMap<&'static str, Vec<&'static ResourceDef>>,
    by_kind: crate::FastMap<&'static str, Vec<&'static ResourceDef>>,
}

fn builtin_index() -> &'static BuiltinIndex {
    static INDEX: std::sync::OnceLock<BuiltinIndex> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index = BuiltinIndex { by_plural: Default::default(), by_kind: Default::default() };
        for r in BUILTIN {
            index.by_plural.entry(r.plural).or_default().push(r);
            index.by_kind.entry(r.kind).or_default().push(r);
        }
        index
    })
}

/// What a custom resource's table entry is made of (owned, hashable).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomDefSpec {
    /// API group.
    pub group: String,
    /// Served version.
    pub version: String,
    /// Storage version.
    pub storage_version: String,
    /// Kind.
    pub kind: String,
    /// Plural.
    pub plural: String,
    /// Singular.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Status subresource enabled.
    pub status: bool,
    /// Scale subresource enabled.
    pub scale: bool,
}

fn leak_str(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// The `&'static` table entry of a custom resource. Entries are interned process-wide:
/// the same definition (in any cluster of the process, created any number of times)
/// is allocated once, so memory is bounded by the distinct definitions ever served.
pub fn intern_custom(spec: &CustomDefSpec) -> &'static ResourceDef {
    static INTERNED: OnceLock<Mutex<HashMap<CustomDefSpec, &'static ResourceDef>>> = OnceLock::new();
    let mut map = INTERNED.get_or_init(Default::default).lock().expect("interner");
    if let Some(d) = map.get(spec) {
        return d;
    }
    let group = leak_str(&spec.group);
    let version = leak_str(&spec.version);
    let kind = leak_str(&spec.kind);
    let mut subresources = Vec::new();
    if spec.status {
        subresources.push(SubresourceDef { name: "status", group, version, kind, verbs: &["get", "patch", "update"] });
    }
    if spec.scale {
        subresources.push(scale());
    }
    let strs = |v: &[String]| -> &'static [&'static str] { Box::leak(v.iter().map(|s| leak_str(s)).collect::<Vec<_>>().into_boxed_slice()) };
    let def: &'static ResourceDef = Box::leak(Box::new(ResourceDef {
        group,
        version,
        kind,
        plural: leak_str(&spec.plural),
        singular: leak_str(&spec.singular),
        namespaced: spec.namespaced,
        short_names: strs(&spec.short_names),
        categories: strs(&spec.categories),
        verbs: STANDARD_VERBS,
        subresources: Box::leak(subresources.into_boxed_slice()),
        tracks_generation: true,
        storage_version: leak_str(&spec.storage_version),
        custom: true,
    }));
    map.insert(spec.clone(), def);
    def
}

/// The custom part of a cluster's table, replaced whole when a CRD changes.
#[derive(Default)]
struct Custom {
    defs: Vec<&'static ResourceDef>,
    resources: Vec<Arc<CustomResource>>,
}

/// One cluster's resources: the built-in ones and those its CRDs define. Several
/// clusters in one process (tests) each have their own.
#[derive(Default)]
pub struct ResourceTable {
    custom: RwLock<Arc<Custom>>,
}

impl ResourceTable {
    /// A table of the built-in resources only.
    pub fn new() -> Self {
        Self::default()
    }

    fn custom(&self) -> Arc<Custom> {
        self.custom.read().expect("resource table").clone()
    }

    /// Replace the custom resources (the CRD controller's view of every established CRD).
    pub fn set_custom(&self, resources: Vec<CustomResource>) {
        let resources: Vec<Arc<CustomResource>> = resources.into_iter().map(Arc::new).collect();
        let defs = resources.iter().flat_map(|r| r.defs()).collect();
        *self.custom.write().expect("resource table") = Arc::new(Custom { defs, resources });
    }

    /// Every served resource, built-in first.
    pub fn all(&self) -> Vec<&'static ResourceDef> {
        BUILTIN.iter().chain(self.custom().defs.iter().copied()).collect()
    }

    /// One entry per storage key prefix (the storage version for custom resources):
    /// what walks over every stored object (namespace deletion, garbage collection) visits.
    pub fn stored(&self) -> Vec<&'static ResourceDef> {
        let mut seen = std::collections::HashSet::new();
        let custom = self.custom();
        BUILTIN
            .iter()
            .filter(|d| d.is_stored())
            .chain(custom.defs.iter().copied().filter(|d| d.version == d.storage_version))
            .filter(|d| seen.insert(d.key_prefix()))
            .collect()
    }

    /// Look up a resource by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
        find(group, version, plural).or_else(|| self.custom().defs.iter().copied().find(|r| r.group == group && r.version == version && r.plural == plural))
    }

    /// Look up a resource by group and kind (a custom resource's storage version).
    pub fn find_kind(&self, group: &str, kind: &str) -> Option<&'static ResourceDef> {
        find_kind(group, kind).or_else(|| {
            let custom = self.custom();
            let mut matching = custom.defs.iter().copied().filter(|r| r.group == group && r.kind == kind);
            let first = matching.next()?;
            Some(std::iter::once(first).chain(matching).find(|d| d.version == d.storage_version).unwrap_or(first))
        })
    }

    /// The definition behind a custom resource.
    pub fn custom_resource(&self, group: &str, plural: &str) -> Option<Arc<CustomResource>> {
        self.custom().resources.iter().find(|r| r.group == group && r.plural == plural).cloned()
    }

    /// The API groups in discovery order: built-in ones, then custom ones alphabetically.
    pub fn groups(&self) -> Vec<&'static str> {
        let mut out = groups();
        let mut custom: Vec<&'static str> = self.custom().defs.iter().map(|d| d.group).filter(|g| !out.contains(g)).collect();
        custom.sort();
        custom.dedup();
        out.extend(custom);
        out
    }

    /// The served versions of a group, preferred first.
    pub fn versions(&self, group: &str) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = self.all().into_iter().filter(|d| d.group == group).map(|d| d.version).collect();
        out.sort_by(|a, b| version_priority(a, b));
        out.dedup();
        out
    }

    /// The resources of one group/version.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<&'static ResourceDef> {
        self.all().into_iter().filter(|r| r.group == group && r.version == version).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexed_lookups_find_what_a_scan_of_the_table_finds() {
        let groups: Vec<&str> = BUILTIN.iter().map(|r| r.group).chain(["x.io"]).collect();
        for r in BUILTIN {
            for g in &groups {
                let scan = BUILTIN.iter().find(|d| d.group == *g && d.version == r.version && d.plural == r.plural);
                assert_eq!(find(g, r.version, r.plural).map(|d| d as *const _), scan.map(|d| d as *const _));
                let scan = BUILTIN.iter().find(|d| d.group == *g && d.kind == r.kind);
                assert_eq!(find_kind(g, r.kind).map(|d| d as *const _), scan.map(|d| d as *const _));
            }
        }
        assert!(find("", "v1", "nothings").is_none());
        assert!(find_kind("", "Nothing").is_none());
    }

    #[test]
    fn both_event_apis_share_storage() {
        let core = find("", "v1", "events").unwrap();
        let ev = find("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(core.key("default", "x"), ev.key("default", "x"));
        assert_eq!(core.key("default", "x"), "/registry/events/default/x");
    }

    #[test]
    fn named_groups_come_in_upstreams_priority_order() {
        let g = groups();
        assert_eq!(&g[..3], ["apiregistration.k8s.io", "apps", "events.k8s.io"]);
        assert_eq!(g[g.len() - 2..], ["flowcontrol.apiserver.k8s.io", "metrics.k8s.io"]);
        let admission = g.iter().position(|x| *x == "admissionregistration.k8s.io");
        assert!(admission < g.iter().position(|x| *x == "apiextensions.k8s.io"), "equal priorities by name");
    }

    #[test]
    fn keys_are_where_kube_apiserver_puts_them() {
        let key = |g: &str, v: &str, p: &str, ns: &str| find(g, v, p).unwrap().key(ns, "x");
        assert_eq!(key("apps", "v1", "deployments", "default"), "/registry/deployments/default/x");
        assert_eq!(key("", "v1", "services", "default"), "/registry/services/specs/default/x");
        assert_eq!(key("", "v1", "endpoints", "default"), "/registry/services/endpoints/default/x");
        assert_eq!(key("", "v1", "nodes", ""), "/registry/minions/x");
        assert_eq!(key("", "v1", "replicationcontrollers", "default"), "/registry/controllers/default/x");
        assert_eq!(key("networking.k8s.io", "v1", "ingresses", "default"), "/registry/ingress/default/x");
        assert_eq!(key("rbac.authorization.k8s.io", "v1", "clusterroles", ""), "/registry/clusterroles/x");
        assert_eq!(key("apiextensions.k8s.io", "v1", "customresourcedefinitions", ""), "/registry/apiextensions.k8s.io/customresourcedefinitions/x");
        assert_eq!(key("apiregistration.k8s.io", "v1", "apiservices", ""), "/registry/apiregistration.k8s.io/apiservices/x");
        // One prefix per group-resource, none inside another's (events are shared on purpose).
        let mut seen: std::collections::HashMap<String, (&str, &str)> = std::collections::HashMap::new();
        for d in BUILTIN.iter().filter(|d| d.is_stored()) {
            let p = d.key_prefix();
            if let Some((g, r)) = seen.insert(p.clone(), (d.group, d.plural)) {
                assert!(r == d.plural && (g == d.group || r == "events"), "{p} shared by {g}/{r} and {}/{}", d.group, d.plural);
            }
        }
        for a in seen.keys() {
            for b in seen.keys() {
                assert!(a == b || !b.starts_with(a.as_str()), "{a} contains {b}");
            }
        }
    }

    #[test]
    fn cluster_scoped_keys_have_no_namespace() {
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(ns.key("", "default"), "/registry/namespaces/default");
    }
}
