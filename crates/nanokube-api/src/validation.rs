//! Validation of names and of the required fields of the core kinds, producing
//! upstream's `422 Invalid` causes.

use serde_json::{json, Value};

use crate::error::Cause;
use crate::resources::ResourceDef;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !s.starts_with('-') && !s.ends_with('-')
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (Service names).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Which rule an object name follows for a resource.
pub fn name_rule(def: &ResourceDef) -> NameRule {
    match (def.group, def.plural) {
        ("", "namespaces") => NameRule::Dns1123Label,
        ("", "services") => NameRule::Dns1035Label,
        ("rbac.authorization.k8s.io", _) | ("apiregistration.k8s.io", "apiservices") => NameRule::PathSegment,
        _ => NameRule::Dns1123Subdomain,
    }
}

/// The naming rules upstream applies to `metadata.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// Namespaces.
    Dns1123Label,
    /// Services.
    Dns1035Label,
    /// Most kinds.
    Dns1123Subdomain,
    /// RBAC objects: anything but `.`, `..`, or containing `/` or `%`.
    PathSegment,
}

/// Check a name against a rule; the cause message on failure.
pub fn check_name(rule: NameRule, name: &str) -> Option<String> {
    let bad = |msg: &str| Some(format!("Invalid value: {name:?}: {msg}"));
    match rule {
        NameRule::Dns1123Label if !is_dns1123_label(name) => bad(if name.len() > 63 { "must be no more than 63 characters" } else { DNS1123_LABEL_MSG }),
        NameRule::Dns1035Label if !is_dns1035_label(name) => bad(if name.len() > 63 { "must be no more than 63 characters" } else { DNS1035_LABEL_MSG }),
        NameRule::Dns1123Subdomain if !is_dns1123_subdomain(name) => {
            bad(if name.len() > 253 { "must be no more than 253 characters" } else { DNS1123_SUBDOMAIN_MSG })
        }
        NameRule::PathSegment if name == "." || name == ".." => bad("may not be '.' or '..'"),
        NameRule::PathSegment if name.contains('/') || name.contains('%') => bad("may not contain '/' or '%'"),
        _ => None,
    }
}

fn required(field: &str) -> Cause {
    Cause { reason: "FieldValueRequired".into(), message: "Required value".into(), field: field.into() }
}

fn invalid(field: &str, value: &Value, msg: &str) -> Cause {
    let shown = match value {
        Value::String(s) => format!("{s:?}"),
        v => v.to_string(),
    };
    Cause { reason: "FieldValueInvalid".into(), message: format!("Invalid value: {shown}: {msg}"), field: field.into() }
}

fn not_supported(field: &str, value: &str, allowed: &[&str]) -> Cause {
    let list = allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    Cause { reason: "FieldValueNotSupported".into(), message: format!("Unsupported value: {value:?}: supported values: {list}"), field: field.into() }
}

fn valid_qualified_name(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns1123_subdomain)
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

fn valid_config_key(k: &str) -> bool {
    !k.is_empty() && k.len() <= 253 && k != "." && k != ".." && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Validate metadata common to every kind: name, labels, annotations.
pub fn validate_meta(def: &ResourceDef, obj: &Value, causes: &mut Vec<Cause>) {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired".into(),
            message: "Required value: name or generateName is required".into(),
            field: "metadata.name".into(),
        });
    } else if let Some(msg) = check_name(name_rule(def), name) {
        causes.push(Cause { reason: "FieldValueInvalid".into(), message: msg, field: "metadata.name".into() });
    }
    if let Some(labels) = obj.pointer("/metadata/labels") {
        match labels.as_object() {
            Some(map) => {
                for (k, v) in map {
                    if !valid_qualified_name(k) {
                        causes.push(invalid(
                            "metadata.labels",
                            &Value::String(k.clone()),
                            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                        ));
                    }
                    match v.as_str() {
                        Some(s) if valid_label_value(s) => {}
                        _ => causes.push(invalid("metadata.labels", v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character")),
                    }
                }
            }
            None if labels.is_null() => {}
            None => causes.push(invalid("metadata.labels", labels, "must be a map of strings")),
        }
    }
    if let Some(ann) = obj.pointer("/metadata/annotations").and_then(Value::as_object) {
        let total: usize = ann.iter().map(|(k, v)| k.len() + v.as_str().map_or(0, str::len)).sum();
        if total > 256 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong".into(),
                message: "Too long: must have at most 262144 bytes".into(),
                field: "metadata.annotations".into(),
            });
        }
        for k in ann.keys() {
            if !valid_qualified_name(k) {
                causes.push(invalid(
                    "metadata.annotations",
                    &Value::String(k.clone()),
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
                ));
            }
        }
    }
}

/// A container's name (a DNS label, unique among `seen`) and image (required).
fn validate_name_and_image<'a>(c: &'a Value, cpath: &str, seen: &mut Vec<&'a str>, causes: &mut Vec<Cause>) {
    match c.get("name").and_then(Value::as_str) {
        None | Some("") => causes.push(required(&format!("{cpath}.name"))),
        Some(n) if !is_dns1123_label(n) => causes.push(invalid(&format!("{cpath}.name"), &Value::String(n.into()), DNS1123_LABEL_MSG)),
        Some(n) if seen.contains(&n) => {
            causes.push(Cause { reason: "FieldValueDuplicate".into(), message: format!("Duplicate value: {n:?}"), field: format!("{cpath}.name") })
        }
        Some(n) => seen.push(n),
    }
    if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
        causes.push(required(&format!("{cpath}.image")));
    }
}

fn validate_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        causes.push(required(&format!("{path}.containers")));
        return;
    };
    match spec.get("containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            let mut seen = Vec::new();
            for (i, c) in cs.iter().enumerate() {
                let cpath = format!("{path}.containers[{i}]");
                validate_name_and_image(c, &cpath, &mut seen, causes);
                validate_resize_policy(c, spec, &format!("{cpath}.resizePolicy"), causes);
                if let Some(ports) = c.get("ports").and_then(Value::as_array) {
                    for (j, p) in ports.iter().enumerate() {
                        match p.get("containerPort").and_then(Value::as_i64) {
                            Some(n) if (1..=65535).contains(&n) => {}
                            Some(n) => {
                                causes.push(invalid(&format!("{cpath}.ports[{j}].containerPort"), &Value::from(n), "must be between 1 and 65535, inclusive"))
                            }
                            None => causes.push(required(&format!("{cpath}.ports[{j}].containerPort"))),
                        }
                    }
                }
            }
        }
        _ => causes.push(required(&format!("{path}.containers"))),
    }
    validate_ephemeral_containers(spec, path, causes);
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            causes.push(not_supported(&format!("{path}.restartPolicy"), rp, &["Always", "OnFailure", "Never"]));
        }
    }
    if let Some(dp) = spec.get("dnsPolicy").and_then(Value::as_str) {
        if !["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"].contains(&dp) {
            causes.push(not_supported(&format!("{path}.dnsPolicy"), dp, &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"]));
        }
    }
    validate_host_users(spec, path, causes);
}

/// A container's `resizePolicy`, as upstream's `validateResizePolicy`: cpu and memory
/// once each, `NotRequired` or `RestartContainer`, and only `NotRequired` in a pod that
/// never restarts.
fn validate_resize_policy(c: &Value, spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let never = spec.get("restartPolicy").and_then(Value::as_str) == Some("Never");
    let mut seen = Vec::new();
    for (i, p) in c.get("resizePolicy").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let resource = p.get("resourceName").and_then(Value::as_str).unwrap_or("");
        let policy = p.get("restartPolicy").and_then(Value::as_str).unwrap_or("");
        if seen.contains(&resource) {
            causes.push(Cause { reason: "FieldValueDuplicate".into(), message: format!("Duplicate value: {resource:?}"), field: format!("{path}[{i}]") });
        }
        seen.push(resource);
        match resource {
            "cpu" | "memory" => {}
            "" => causes.push(required(path)),
            r => causes.push(not_supported(path, r, &["cpu", "memory"])),
        }
        match policy {
            "NotRequired" | "RestartContainer" => {}
            "" => causes.push(required(path)),
            r => causes.push(not_supported(path, r, &["NotRequired", "RestartContainer"])),
        }
        if never && policy != "NotRequired" {
            causes.push(invalid(path, &Value::from(policy), "must be 'NotRequired' when `restartPolicy` is 'Never'"));
        }
    }
}

/// A pod in its own user namespace shares no other namespace with the host (upstream's
/// `validateHostUsers`, whose paths are under the security context, capitals as there).
fn validate_host_users(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    if spec.get("hostUsers").and_then(Value::as_bool) != Some(false) {
        return;
    }
    for (field, name) in [("hostNetwork", "hostNetwork"), ("hostPID", "HostPID"), ("hostIPC", "HostIPC")] {
        if spec.get(field).and_then(Value::as_bool) == Some(true) {
            causes.push(Cause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: when `pod.Spec.HostUsers` is false".into(),
                field: format!("{path}.securityContext.{name}"),
            });
        }
    }
}

/// Fields an ephemeral container may not have (upstream's `validateEphemeralContainers`).
const EPHEMERAL_FORBIDDEN: &[&str] = &["ports", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "resources", "resizePolicy", "restartPolicy"];

/// An ephemeral container's rules: a unique DNS-label name among all the pod's
/// containers, an image, none of the fields only long-lived containers have, and a
/// target that is one of the pod's containers.
fn validate_ephemeral_containers(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let Some(list) = spec.get("ephemeralContainers").and_then(Value::as_array) else { return };
    let names =
        |k: &str| -> Vec<&str> { spec.get(k).and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.get("name").and_then(Value::as_str)).collect() };
    let (regular, init) = (names("containers"), names("initContainers"));
    let mut seen: Vec<&str> = regular.iter().chain(&init).copied().collect();
    for (i, c) in list.iter().enumerate() {
        let cpath = format!("{path}.ephemeralContainers[{i}]");
        validate_name_and_image(c, &cpath, &mut seen, causes);
        for k in EPHEMERAL_FORBIDDEN {
            if c.get(*k).is_some_and(|v| !v.is_null() && v != &json!({}) && v != &json!([])) {
                causes.push(Cause {
                    reason: "FieldValueForbidden".into(),
                    message: "Forbidden: cannot be set for an Ephemeral Container".into(),
                    field: format!("{cpath}.{k}"),
                });
            }
        }
        if let Some(t) = c.get("targetContainerName").and_then(Value::as_str).filter(|t| !t.is_empty()) {
            if !regular.contains(&t) && !init.contains(&t) {
                causes.push(Cause { reason: "FieldValueNotFound".into(), message: format!("Not found: {t:?}"), field: format!("{cpath}.targetContainerName") });
            }
        }
    }
}

/// Upstream's `ValidatePodEphemeralContainersUpdate`: ephemeral containers are only
/// added, never removed or changed.
pub fn validate_ephemeral_update(old: &Value, new: &Value) -> Vec<Cause> {
    let list = |v: &Value| v.pointer("/spec/ephemeralContainers").and_then(Value::as_array).cloned().unwrap_or_default();
    let (old_list, new_list) = (list(old), list(new));
    let mut causes = Vec::new();
    for o in &old_list {
        let name = o.get("name").and_then(Value::as_str).unwrap_or("");
        match new_list.iter().find(|n| n.get("name").and_then(Value::as_str) == Some(name)) {
            None => causes.push(Cause {
                reason: "FieldValueForbidden".into(),
                message: format!("Forbidden: existing ephemeral containers {name:?} may not be removed\n"),
                field: "spec.ephemeralContainers".into(),
            }),
            Some(n) if n != o => causes.push(Cause {
                reason: "FieldValueForbidden".into(),
                message: format!("Forbidden: existing ephemeral containers {name:?} may not be changed\n"),
                field: format!("spec.ephemeralContainers.{name}"),
            }),
            Some(_) => {}
        }
    }
    causes
}

/// Upstream's `ValidatePodCreate`: ephemeral containers come only through the
/// `ephemeralcontainers` subresource.
pub fn validate_pod_create(pod: &Value) -> Vec<Cause> {
    match pod.pointer("/spec/ephemeralContainers").and_then(Value::as_array) {
        Some(l) if !l.is_empty() => {
            vec![Cause { reason: "FieldValueForbidden".into(), message: "Forbidden: cannot be set on create".into(), field: "spec.ephemeralContainers".into() }]
        }
        _ => Vec::new(),
    }
}

fn validate_template_selector(obj: &Value, causes: &mut Vec<Cause>, restart_always: bool) {
    let sel = obj.pointer("/spec/selector");
    match sel {
        Some(s) if s.get("matchLabels").is_some() || s.get("matchExpressions").is_some() => {
            if let Ok(selector) = crate::selector::LabelSelector::from_object(s) {
                let labels = obj.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
                if !selector.matches(labels) {
                    causes.push(invalid(
                        "spec.template.metadata.labels",
                        &obj.pointer("/spec/template/metadata/labels").cloned().unwrap_or(Value::Null),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        }
        _ => causes.push(required("spec.selector")),
    }
    validate_pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", causes);
    if restart_always {
        if let Some(rp) = obj.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str) {
            if rp != "Always" {
                causes.push(not_supported("spec.template.spec.restartPolicy", rp, &["Always"]));
            }
        }
    }
}

/// Most bytes a ConfigMap's or a Secret's data may hold (upstream's `MaxConfigMapSize`,
/// `MaxSecretSize`: 1 MiB), keys included.
pub const MAX_DATA_SIZE: usize = 1024 * 1024;

/// Bytes of keys and values under `field` (base64 values counted as the bytes they hold).
fn data_size(obj: &Value, field: &str, base64: bool) -> usize {
    obj.get(field)
        .and_then(Value::as_object)
        .map_or(0, |m| m.iter().map(|(k, v)| k.len() + v.as_str().map_or(0, |s| if base64 { s.len() / 4 * 3 } else { s.len() })).sum())
}

fn too_long(field: &str) -> Cause {
    Cause { reason: "FieldValueTooLong".into(), message: format!("Too long: must have at most {MAX_DATA_SIZE} bytes"), field: field.into() }
}

/// The scopes a quota may name (upstream's `standardResourceQuotaScopes`).
const QUOTA_SCOPES: &[&str] = &["Terminating", "NotTerminating", "BestEffort", "NotBestEffort", "PriorityClass", "CrossNamespacePodAffinity"];

/// Whether `scope` may limit quota resource `resource` (upstream's
/// `IsResourceQuotaScopeValidForResource`, for the standard resource names).
fn quota_scope_fits(scope: &str, resource: &str) -> bool {
    let standard = matches!(
        resource,
        "cpu"
            | "memory"
            | "ephemeral-storage"
            | "requests.cpu"
            | "requests.memory"
            | "requests.storage"
            | "requests.ephemeral-storage"
            | "limits.cpu"
            | "limits.memory"
            | "limits.ephemeral-storage"
            | "pods"
            | "services"
            | "replicationcontrollers"
            | "resourcequotas"
            | "secrets"
            | "persistentvolumeclaims"
            | "configmaps"
            | "services.nodeports"
            | "services.loadbalancers"
    ) || resource.starts_with("hugepages-")
        || resource.starts_with("requests.hugepages-");
    let compute = matches!(resource, "cpu" | "memory" | "requests.cpu" | "requests.memory" | "limits.cpu" | "limits.memory");
    !standard
        || match scope {
            "BestEffort" => resource == "pods",
            "Terminating" | "NotTerminating" | "NotBestEffort" | "PriorityClass" | "CrossNamespacePodAffinity" => resource == "pods" || compute,
            _ => true,
        }
}

/// A ResourceQuota's `scopes` and `scopeSelector`, as upstream's
/// `validateResourceQuotaScopes` and `validateScopedResourceSelectorRequirement`.
fn validate_quota_scopes(obj: &Value, causes: &mut Vec<Cause>) {
    let hard: Vec<&str> = obj.pointer("/spec/hard").and_then(Value::as_object).map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
    let scopes: Vec<&str> = obj.pointer("/spec/scopes").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let go_list = || format!("[]core.ResourceQuotaScope{{{}}}", scopes.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "));
    let bad_scopes =
        |msg: &str| Cause { reason: "FieldValueInvalid".into(), message: format!("Invalid value: {}: {msg}", go_list()), field: "spec.scopes".into() };
    for scope in &scopes {
        if !QUOTA_SCOPES.contains(scope) {
            causes.push(bad_scopes("unsupported scope"));
        }
        for r in &hard {
            if !quota_scope_fits(scope, r) {
                causes.push(bad_scopes("unsupported scope applied to resource"));
            }
        }
    }
    for pair in [["BestEffort", "NotBestEffort"], ["Terminating", "NotTerminating"]] {
        if pair.iter().all(|p| scopes.contains(p)) {
            causes.push(bad_scopes("conflicting scopes"));
        }
    }
    let field = "spec.scopeSelector.matchExpressions";
    for req in obj.pointer("/spec/scopeSelector/matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let name = req.get("scopeName").and_then(Value::as_str).unwrap_or("");
        let operator = req.get("operator").and_then(Value::as_str).unwrap_or("");
        let values = req.get("values").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
        if !QUOTA_SCOPES.contains(&name) {
            causes.push(invalid(&format!("{field}.scopeName"), &Value::from(name), "unsupported scope"));
        }
        if hard.iter().any(|r| !quota_scope_fits(name, r)) {
            causes.push(Cause {
                reason: "FieldValueInvalid".into(),
                message: "Invalid value: the scope selector: unsupported scope applied to resource".into(),
                field: field.into(),
            });
        }
        if name != "PriorityClass" && QUOTA_SCOPES.contains(&name) && operator != "Exists" {
            causes.push(invalid(&format!("{field}.operator"), &Value::from(operator), "must be 'Exist' when scope is any of ResourceQuotaScopeTerminating, ResourceQuotaScopeNotTerminating, ResourceQuotaScopeBestEffort, ResourceQuotaScopeNotBestEffort or ResourceQuotaScopeCrossNamespacePodAffinity"));
        }
        match operator {
            "In" | "NotIn" if values == 0 => causes.push(Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector".into(),
                field: format!("{field}.values"),
            }),
            "Exists" | "DoesNotExist" if values != 0 => causes.push(invalid(
                &format!("{field}.values"),
                req.get("values").unwrap_or(&Value::Null),
                "must be no value when `operator` is 'Exist' or 'DoesNotExist' for scope selector",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(invalid(&format!("{field}.operator"), &Value::from(other), "not a valid selector operator")),
        }
    }
}

/// Validate the kind-specific required fields of an object.
pub fn validate_object(def: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    validate_meta(def, obj, &mut causes);
    match (def.group, def.plural) {
        ("apiextensions.k8s.io", "customresourcedefinitions") => causes.extend(crate::crd::validate_crd(obj)),
        ("apiregistration.k8s.io", "apiservices") => {
            // Upstream's ValidateAPIService: the name is version.group, priorities positive.
            let group = obj.pointer("/spec/group").and_then(Value::as_str).unwrap_or("");
            let version = obj.pointer("/spec/version").and_then(Value::as_str).unwrap_or("");
            let required = format!("{version}.{group}");
            let name = obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
            if name.as_str() != Some(required.as_str()) {
                causes.push(invalid("metadata.name", &name, &format!("must be `spec.version+\".\"+spec.group`: {required:?}")));
            }
            if version.is_empty() {
                causes.push(Cause { reason: "FieldValueRequired".into(), message: "Required value".into(), field: "spec.version".into() });
            }
            for (field, max) in [("groupPriorityMinimum", 20000), ("versionPriority", 1000)] {
                let v = obj.pointer(&format!("/spec/{field}")).and_then(Value::as_i64).unwrap_or(0);
                if v <= 0 || v > max {
                    causes.push(invalid(&format!("spec.{field}"), &Value::from(v), &format!("must be positive and less than {max}")));
                }
            }
        }
        ("", "pods") => validate_pod_spec(obj.get("spec"), "spec", &mut causes),
        ("", "services") => validate_service(obj, &mut causes),
        ("", "resourcequotas") => validate_quota_scopes(obj, &mut causes),
        ("", "configmaps") => {
            for field in ["data", "binaryData"] {
                if let Some(m) = obj.get(field).and_then(Value::as_object) {
                    for k in m.keys() {
                        if !valid_config_key(k) {
                            causes.push(invalid(&format!("{field}[{k}]"), &Value::String(k.clone()), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                        }
                    }
                }
            }
            if data_size(obj, "data", false) + data_size(obj, "binaryData", true) > MAX_DATA_SIZE {
                causes.push(too_long(""));
            }
        }
        ("", "secrets") => {
            if let Some(m) = obj.get("data").and_then(Value::as_object) {
                for (k, v) in m {
                    if !valid_config_key(k) {
                        causes.push(invalid(
                            &format!("data[{k}]"),
                            &Value::String(k.clone()),
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    }
                    if let Some(s) = v.as_str() {
                        use base64::Engine;
                        // Go's decoder skips line breaks; so does this check.
                        let clean: String = s.chars().filter(|c| *c != '\n' && *c != '\r').collect();
                        if base64::engine::general_purpose::STANDARD.decode(clean).is_err() {
                            causes.push(invalid(&format!("data[{k}]"), v, "illegal base64 data"));
                        }
                    }
                }
            }
            let size = data_size(obj, "data", true) + data_size(obj, "stringData", false);
            if size > MAX_DATA_SIZE {
                causes.push(too_long("data"));
            }
        }
        ("apps", "deployments") | ("apps", "replicasets") | ("apps", "daemonsets") | ("apps", "statefulsets") => {
            validate_template_selector(obj, &mut causes, true);
            if let Some(r) = obj.pointer("/spec/replicas").and_then(Value::as_i64) {
                if r < 0 {
                    causes.push(invalid("spec.replicas", &Value::from(r), "must be greater than or equal to 0"));
                }
            }
        }
        ("batch", "jobs") => {
            validate_pod_spec(obj.pointer("/spec/template/spec"), "spec.template.spec", &mut causes);
            validate_job_spec(obj.get("spec").unwrap_or(&Value::Null), "spec", &mut causes);
        }
        ("batch", "cronjobs") => {
            if obj.pointer("/spec/schedule").and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(required("spec.schedule"));
            }
            validate_pod_spec(obj.pointer("/spec/jobTemplate/spec/template/spec"), "spec.jobTemplate.spec.template.spec", &mut causes);
            if let Some(schedule) = obj.pointer("/spec/schedule").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                let zone = obj.pointer("/spec/timeZone").and_then(Value::as_str);
                match crate::schedule::Schedule::parse(schedule, zone) {
                    Ok(_) => {}
                    Err(crate::schedule::ScheduleError::Schedule(m)) => causes.push(invalid("spec.schedule", &Value::from(schedule), &m)),
                    Err(crate::schedule::ScheduleError::TimeZone(m)) => causes.push(invalid("spec.timeZone", &Value::from(zone.unwrap_or("")), &m)),
                }
            }
            if let Some(p) = obj.pointer("/spec/concurrencyPolicy").and_then(Value::as_str) {
                const POLICIES: &[&str] = &["Allow", "Forbid", "Replace"];
                if !POLICIES.contains(&p) {
                    causes.push(not_supported("spec.concurrencyPolicy", p, POLICIES));
                }
            }
            validate_job_spec(obj.pointer("/spec/jobTemplate/spec").unwrap_or(&Value::Null), "spec.jobTemplate.spec", &mut causes);
        }
        ("rbac.authorization.k8s.io", "rolebindings") | ("rbac.authorization.k8s.io", "clusterrolebindings") => match obj.get("roleRef") {
            Some(r) if r.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) => {
                let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
                let allowed: &[&str] = if def.plural == "rolebindings" { &["Role", "ClusterRole"] } else { &["ClusterRole"] };
                if !allowed.contains(&kind) {
                    causes.push(not_supported("roleRef.kind", kind, allowed));
                }
            }
            _ => causes.push(required("roleRef.name")),
        },
        _ => {}
    }
    causes
}

/// A Job's spec as upstream's `validateJobSpec` words it: counts not negative, what
/// Indexed mode needs, `backoffLimitPerIndex`/`maxFailedIndexes`, the failure policy's
/// actions, the replacement policy, and the restart policies a Job may use.
fn validate_job_spec(spec: &Value, prefix: &str, causes: &mut Vec<Cause>) {
    let int = |k: &str| spec.get(k).and_then(Value::as_i64);
    let required_because =
        |field: &str, why: &str| Cause { reason: "FieldValueRequired".into(), message: format!("Required value: {why}"), field: field.into() };
    for k in ["parallelism", "completions", "activeDeadlineSeconds", "backoffLimit", "ttlSecondsAfterFinished", "backoffLimitPerIndex", "maxFailedIndexes"] {
        if let Some(n) = int(k).filter(|n| *n < 0) {
            causes.push(invalid(&format!("{prefix}.{k}"), &Value::from(n), "must be greater than or equal to 0"));
        }
    }
    let (per_index, max_failed, completions, parallelism) = (int("backoffLimitPerIndex"), int("maxFailedIndexes"), int("completions"), int("parallelism"));
    if max_failed.is_some() && per_index.is_none() {
        causes.push(required_because(&format!("{prefix}.backoffLimitPerIndex"), "when maxFailedIndexes is specified"));
    }
    match spec.get("completionMode").and_then(Value::as_str) {
        Some("Indexed") => {
            if completions.is_none() {
                causes.push(required_because(&format!("{prefix}.completions"), "when completion mode is Indexed"));
            }
            if let Some(p) = parallelism.filter(|p| *p > 100_000) {
                causes.push(invalid(&format!("{prefix}.parallelism"), &Value::from(p), "must be less than or equal to 100000 when completion mode is Indexed"));
            }
            if let (Some(c), Some(m)) = (completions, max_failed) {
                if m > c {
                    causes.push(invalid(&format!("{prefix}.maxFailedIndexes"), &Value::from(m), "must be less than or equal to completions"));
                }
            }
            if let Some(m) = max_failed.filter(|m| *m > 100_000) {
                causes.push(invalid(&format!("{prefix}.maxFailedIndexes"), &Value::from(m), "must be less than or equal to 100000"));
            }
            if completions.is_some_and(|c| c > 100_000) && per_index.is_some() {
                if max_failed.is_none() {
                    causes.push(required_because(&format!("{prefix}.maxFailedIndexes"), "must be specified when completions is above 100000"));
                }
                let high = "when completions are above 100000 and used with backoff limit per index";
                if let Some(p) = parallelism.filter(|p| *p > 10_000) {
                    causes.push(invalid(&format!("{prefix}.parallelism"), &Value::from(p), &format!("must be less than or equal to 10000 {high}")));
                }
                if let Some(m) = max_failed.filter(|m| *m > 10_000) {
                    causes.push(invalid(&format!("{prefix}.maxFailedIndexes"), &Value::from(m), &format!("must be less than or equal to 10000 {high}")));
                }
            }
        }
        None | Some("NonIndexed") => {
            for (k, v) in [("backoffLimitPerIndex", per_index), ("maxFailedIndexes", max_failed)] {
                if let Some(v) = v {
                    causes.push(invalid(&format!("{prefix}.{k}"), &Value::from(v), "requires indexed completion mode"));
                }
            }
        }
        Some(other) => causes.push(not_supported(&format!("{prefix}.completionMode"), other, &["NonIndexed", "Indexed"])),
    }
    let failure_policy = spec.get("podFailurePolicy").filter(|v| !v.is_null());
    for (i, rule) in failure_policy.and_then(|p| p.get("rules")).and_then(Value::as_array).into_iter().flatten().enumerate() {
        let field = format!("{prefix}.podFailurePolicy.rules[{i}].action");
        const ACTIONS: &[&str] = &["Count", "FailIndex", "FailJob", "Ignore"];
        match rule.get("action").and_then(Value::as_str).unwrap_or("") {
            "" => causes.push(required_because(&field, "valid values: [\"Count\" \"FailIndex\" \"FailJob\" \"Ignore\"]")),
            "FailIndex" if per_index.is_none() => causes.push(invalid(&field, &json!("FailIndex"), "requires the backoffLimitPerIndex to be set")),
            a if !ACTIONS.contains(&a) => causes.push(not_supported(&field, a, ACTIONS)),
            _ => {}
        }
    }
    if let Some(policy) = spec.get("podReplacementPolicy").and_then(Value::as_str) {
        if failure_policy.is_some() && policy != "Failed" {
            causes.push(not_supported(&format!("{prefix}.podReplacementPolicy"), policy, &["Failed"]));
        } else if !["Failed", "TerminatingOrFailed"].contains(&policy) {
            causes.push(not_supported(&format!("{prefix}.podReplacementPolicy"), policy, &["Failed", "TerminatingOrFailed"]));
        }
    }
    let restart = spec.pointer("/template/spec/restartPolicy").and_then(Value::as_str).unwrap_or("");
    let field = &format!("{prefix}.template.spec.restartPolicy");
    match restart {
        "" | "Always" => causes.push(required_because(field, "valid values: \"OnFailure\", \"Never\"")),
        "OnFailure" | "Never" => {
            if failure_policy.is_some() && restart != "Never" {
                causes.push(invalid(field, &Value::from(restart), "only \"Never\" is supported when podFailurePolicy is specified"));
            }
        }
        other => causes.push(not_supported(field, other, &["OnFailure", "Never"])),
    }
}

fn validate_service(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
    const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !TYPES.contains(&ty) {
        causes.push(not_supported("spec.type", ty, TYPES));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec.get("ports").and_then(Value::as_array);
    if ty == "ExternalName" {
        if spec.get("externalName").and_then(Value::as_str).is_none_or(str::is_empty) {
            causes.push(required("spec.externalName"));
        }
    } else if ports.is_none_or(|p| p.is_empty()) && !headless {
        causes.push(required("spec.ports"));
    }
    if let Some(ports) = ports {
        let multi = ports.len() > 1;
        for (i, p) in ports.iter().enumerate() {
            let path = format!("spec.ports[{i}]");
            match p.get("port").and_then(Value::as_i64) {
                Some(n) if (1..=65535).contains(&n) => {}
                Some(n) => causes.push(invalid(&format!("{path}.port"), &Value::from(n), "must be between 1 and 65535, inclusive")),
                None => causes.push(required(&format!("{path}.port"))),
            }
            if multi && p.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(required(&format!("{path}.name")));
            }
            if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
                if !["TCP", "UDP", "SCTP"].contains(&proto) {
                    causes.push(not_supported(&format!("{path}.protocol"), proto, &["SCTP", "TCP", "UDP"]));
                }
            }
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                if np != 0 && !(30000..=32767).contains(&np) {
                    causes.push(invalid(
                        &format!("{path}.nodePort"),
                        &Value::from(np),
                        "provided port is not in the valid range. The range of valid ports is 30000-32767",
                    ));
                }
            }
        }
    }
    if let Some(sa) = spec.get("sessionAffinity").and_then(Value::as_str) {
        if !["ClientIP", "None"].contains(&sa) {
            causes.push(not_supported("spec.sessionAffinity", sa, &["ClientIP", "None"]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("Bad_Name"));
        assert!(is_dns1123_label("default"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1abc"));
    }

    #[test]
    fn pod_without_containers_is_invalid() {
        let def = find("", "v1", "pods").unwrap();
        let c = validate_object(def, &json!({"metadata": {"name": "p"}, "spec": {}}));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "spec.containers");
        assert_eq!(c[0].reason, "FieldValueRequired");
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let def = find("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let c = validate_object(def, &d);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn service_port_range() {
        let def = find("", "v1", "services").unwrap();
        let s = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 70000}]}});
        assert_eq!(validate_object(def, &s)[0].field, "spec.ports[0].port");
    }
}
