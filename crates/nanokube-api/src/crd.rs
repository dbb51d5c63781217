//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): checking and defaulting a CRD,
//! reading it into the resources it serves, and what its structural schema does to
//! custom objects, in upstream's order: prune unknown fields, apply defaults, validate.
//! Pure: no IO.
//!
//! `x-kubernetes-validations` rules are CEL, evaluated with the `cel` crate (its standard
//! library and its strings, lists and math extensions, the cel-go extensions Kubernetes
//! enables) plus Kubernetes' list (`isSorted`, `sum`, `min`, `max`), regex (`find`,
//! `findAll`) and quantity libraries written here (quantities as `double`s, exact up to
//! 2^53), with `self` and, on updates, `oldSelf` for correlatable nodes. Kubernetes' url,
//! ip/cidr and semver libraries are not there: a rule that calls one is skipped, and
//! [`rule_warnings`] says so on the CRD write. `format` is not checked. Conversion webhooks are refused, since nothing
//! here could serve them.

use std::cmp::Ordering;

use serde_json::{json, Map, Value};

use crate::error::Cause;
use crate::resources::{self, ResourceDef};

/// The finalizer a CRD carries while its objects are being deleted.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// One `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Column title.
    pub name: String,
    /// `integer`, `number`, `string`, `boolean` or `date`.
    pub type_: String,
    /// OpenAPI format hint (e.g. `int32`, `byte`).
    pub format: String,
    /// Description shown by `kubectl explain`-like readers.
    pub description: String,
    /// 0 for `kubectl get`, higher for `-o wide`.
    pub priority: i64,
    /// The simple JSONPath the value is read from, e.g. `.spec.replicas`.
    pub json_path: String,
}

/// The paths the `scale` subresource reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    /// `.spec.replicas`-style path of the desired replicas.
    pub spec_replicas: String,
    /// Path of the observed replicas.
    pub status_replicas: String,
    /// Path of the label selector string, if declared.
    pub label_selector: Option<String>,
}

/// One version of a custom resource.
#[derive(Debug, Clone)]
pub struct CrdVersion {
    /// e.g. `v1beta1`.
    pub name: String,
    /// Whether the version is served.
    pub served: bool,
    /// Whether objects are stored in this version.
    pub storage: bool,
    /// The deprecation warning, if the version is deprecated.
    pub deprecation_warning: Option<String>,
    /// The `openAPIV3Schema`.
    pub schema: Value,
    /// Table columns (defaulting to Age when none are declared).
    pub columns: Vec<PrinterColumn>,
    /// Whether the status subresource is enabled.
    pub status: bool,
    /// The scale subresource, if enabled.
    pub scale: Option<ScalePaths>,
    /// `selectableFields`, as dotted paths (`spec.color`): field selectors beyond
    /// `metadata.name` and `metadata.namespace`.
    pub selectable: Vec<String>,
}

/// A custom resource as its CRD defines it.
#[derive(Debug, Clone)]
pub struct CustomResource {
    /// The CRD's name, `<plural>.<group>`.
    pub crd_name: String,
    /// API group.
    pub group: String,
    /// Plural name.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// List kind.
    pub list_kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories.
    pub categories: Vec<String>,
    /// Versions in the CRD's order (shared: requests hold one while they use its schema).
    pub versions: Vec<std::sync::Arc<CrdVersion>>,
    /// The CRD is being deleted: objects may be read and deleted, not created.
    pub terminating: bool,
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect()).unwrap_or_default()
}

impl CustomResource {
    /// Read a stored (already validated) CRD.
    pub fn from_crd(crd: &Value) -> Option<Self> {
        let spec = crd.get("spec")?;
        let names = spec.get("names")?;
        let versions = spec
            .get("versions")?
            .as_array()?
            .iter()
            .map(|v| {
                let scale = v.pointer("/subresources/scale").map(|sc| ScalePaths {
                    spec_replicas: s(sc, "/specReplicasPath").to_string(),
                    status_replicas: s(sc, "/statusReplicasPath").to_string(),
                    label_selector: sc.get("labelSelectorPath").and_then(Value::as_str).map(String::from),
                });
                let mut columns: Vec<PrinterColumn> = v
                    .get("additionalPrinterColumns")
                    .and_then(Value::as_array)
                    .map(|cols| {
                        cols.iter()
                            .map(|c| PrinterColumn {
                                name: s(c, "/name").into(),
                                type_: s(c, "/type").into(),
                                format: s(c, "/format").into(),
                                description: s(c, "/description").into(),
                                priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                                json_path: s(c, "/jsonPath").into(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if columns.is_empty() {
                    columns.push(PrinterColumn {
                        name: "Age".into(),
                        type_: "date".into(),
                        format: String::new(),
                        description: String::new(),
                        priority: 0,
                        json_path: ".metadata.creationTimestamp".into(),
                    });
                }
                let deprecated = v.get("deprecated").and_then(Value::as_bool).unwrap_or(false);
                std::sync::Arc::new(CrdVersion {
                    name: s(v, "/name").into(),
                    served: v.get("served").and_then(Value::as_bool).unwrap_or(false),
                    storage: v.get("storage").and_then(Value::as_bool).unwrap_or(false),
                    deprecation_warning: deprecated.then(|| {
                        v.get("deprecationWarning")
                            .and_then(Value::as_str)
                            .map(String::from)
                            .unwrap_or_else(|| format!("{}/{} {} is deprecated", s(spec, "/group"), s(v, "/name"), s(names, "/kind")))
                    }),
                    schema: v
                        .pointer("/schema/openAPIV3Schema")
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})),
                    columns,
                    status: v.pointer("/subresources/status").is_some(),
                    scale,
                    selectable: v
                        .get("selectableFields")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(|f| f.get("jsonPath").and_then(Value::as_str)).map(|p| p.trim_start_matches('.').to_string()).collect())
                        .unwrap_or_default(),
                })
            })
            .collect();
        Some(CustomResource {
            crd_name: s(crd, "/metadata/name").into(),
            group: s(spec, "/group").into(),
            plural: s(names, "/plural").into(),
            singular: s(names, "/singular").into(),
            kind: s(names, "/kind").into(),
            list_kind: s(names, "/listKind").into(),
            namespaced: s(spec, "/scope") == "Namespaced",
            short_names: strings(names.get("shortNames")),
            categories: strings(names.get("categories")),
            versions,
            terminating: crd.pointer("/metadata/deletionTimestamp").is_some(),
        })
    }

    /// A version by name.
    pub fn version(&self, name: &str) -> Option<&std::sync::Arc<CrdVersion>> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// The storage version's name.
    pub fn storage_version(&self) -> &str {
        self.versions.iter().find(|v| v.storage).map(|v| v.name.as_str()).unwrap_or("")
    }

    /// The served versions, highest priority first.
    pub fn served_versions(&self) -> Vec<&CrdVersion> {
        let mut out: Vec<&CrdVersion> = self.versions.iter().map(|v| &**v).filter(|v| v.served).collect();
        out.sort_by(|a, b| version_priority(&a.name, &b.name));
        out
    }

    /// The resource table entries of the served versions.
    pub fn defs(&self) -> Vec<&'static ResourceDef> {
        self.served_versions()
            .into_iter()
            .map(|v| {
                resources::intern_custom(&resources::CustomDefSpec {
                    group: self.group.clone(),
                    version: v.name.clone(),
                    storage_version: self.storage_version().to_string(),
                    kind: self.kind.clone(),
                    plural: self.plural.clone(),
                    singular: self.singular.clone(),
                    namespaced: self.namespaced,
                    short_names: self.short_names.clone(),
                    categories: self.categories.clone(),
                    status: v.status,
                    scale: v.scale.is_some(),
                })
            })
            .collect()
    }
}

/// Kubernetes' version order: GA before beta before alpha, higher numbers first, then
/// other names alphabetically (`v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > foo`).
pub fn version_priority(a: &str, b: &str) -> Ordering {
    fn parse(v: &str) -> Option<(u64, u8, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: u64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((major, 2, 0));
        }
        let (level, n) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n)
        } else {
            return None;
        };
        Some((major, level, n.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, la, na)), Some((mb, lb, nb))) => lb.cmp(&la).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

fn cause(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause { reason: reason.into(), message: message.into(), field: field.into() }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') && !s.starts_with('-') && !s.ends_with('-')
}

/// Fill in what upstream defaults on a CRD: singular and list kind names, the `None`
/// conversion strategy.
pub fn default_crd(crd: &mut Value) {
    let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        if names.get("singular").and_then(Value::as_str).is_none_or(str::is_empty) && !kind.is_empty() {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names.get("listKind").and_then(Value::as_str).is_none_or(str::is_empty) && !kind.is_empty() {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    if !spec.contains_key("conversion") {
        spec.insert("conversion".into(), json!({"strategy": "None"}));
    }
}

/// Check a CRD as upstream's validation does; the causes carry upstream's field paths.
pub fn validate_crd(crd: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let group = s(crd, "/spec/group");
    let plural = s(crd, "/spec/names/plural");
    let kind = s(crd, "/spec/names/kind");
    let name = s(crd, "/metadata/name");
    if name != format!("{plural}.{group}") {
        out.push(cause("FieldValueInvalid", "metadata.name", format!("Invalid value: {name:?}: must be spec.names.plural+\".\"+spec.group")));
    }
    if group.is_empty() {
        out.push(cause("FieldValueRequired", "spec.group", "Required value"));
    } else if !group.contains('.') {
        out.push(cause("FieldValueInvalid", "spec.group", format!("Invalid value: {group:?}: should be a domain with at least one dot")));
    }
    // Kubernetes' own groups take an approval annotation, as upstream requires.
    let protected = ["k8s.io", "kubernetes.io"].iter().any(|d| group == *d || group.ends_with(&format!(".{d}")));
    if protected && crd.pointer("/metadata/annotations/api-approved.kubernetes.io").and_then(Value::as_str).is_none_or(str::is_empty) {
        out.push(cause(
            "FieldValueRequired",
            "metadata.annotations[api-approved.kubernetes.io]",
            "Required value: protected groups must have approval annotation \"api-approved.kubernetes.io\", see https://github.com/kubernetes/enhancements/pull/1111",
        ));
    }
    match s(crd, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        "" => out.push(cause("FieldValueRequired", "spec.scope", "Required value")),
        other => {
            out.push(cause("FieldValueNotSupported", "spec.scope", format!("Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\"")))
        }
    }
    for (field, value) in [("plural", plural), ("singular", s(crd, "/spec/names/singular"))] {
        if value.is_empty() && field == "plural" {
            out.push(cause("FieldValueRequired", "spec.names.plural", "Required value"));
        } else if !value.is_empty() && !is_dns_label(value) {
            out.push(cause(
                "FieldValueInvalid",
                format!("spec.names.{field}"),
                format!("Invalid value: {value:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
            ));
        }
    }
    for (i, sn) in strings(crd.pointer("/spec/names/shortNames")).iter().enumerate() {
        if !is_dns_label(sn) {
            out.push(cause("FieldValueInvalid", format!("spec.names.shortNames[{i}]"), format!("Invalid value: {sn:?}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character")));
        }
    }
    if kind.is_empty() {
        out.push(cause("FieldValueRequired", "spec.names.kind", "Required value"));
    }
    match s(crd, "/spec/conversion/strategy") {
        "" | "None" => {}
        other => out.push(cause(
            "FieldValueNotSupported",
            "spec.conversion.strategy",
            format!("Unsupported value: {other:?}: supported values: \"None\" (nanokube cannot call conversion webhooks)"),
        )),
    }
    let versions = crd.pointer("/spec/versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.is_empty() {
        out.push(cause("FieldValueRequired", "spec.versions", "Required value: must have exactly one version marked as storage version"));
    } else if versions.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).count() != 1 {
        out.push(cause("FieldValueInvalid", "spec.versions", "Invalid value: must have exactly one version marked as storage version"));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let base = format!("spec.versions[{i}]");
        let vname = s(v, "/name");
        if vname.is_empty() {
            out.push(cause("FieldValueRequired", format!("{base}.name"), "Required value"));
        } else if !is_dns_label(vname) || vname.starts_with(|c: char| c.is_ascii_digit()) {
            out.push(cause("FieldValueInvalid", format!("{base}.name"), format!("Invalid value: {vname:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character")));
        } else if seen.contains(&vname) {
            out.push(cause("FieldValueDuplicate", format!("{base}.name"), format!("Duplicate value: {vname:?}")));
        }
        seen.push(vname);
        match v.pointer("/schema/openAPIV3Schema") {
            None => out.push(cause("FieldValueRequired", format!("{base}.schema.openAPIV3Schema"), "Required value: schemas are required")),
            Some(schema) => {
                let path = format!("{base}.schema.openAPIV3Schema");
                if schema.get("type").and_then(Value::as_str) != Some("object") {
                    out.push(cause("FieldValueInvalid", format!("{path}.type"), "Invalid value: must be object at the root"));
                }
                structural(schema, &path, true, &mut out);
            }
        }
        if let Some(sc) = v.pointer("/subresources/scale") {
            let spec_path = s(sc, "/specReplicasPath");
            if !spec_path.starts_with(".spec.") {
                out.push(cause(
                    "FieldValueInvalid",
                    format!("{base}.subresources.scale.specReplicasPath"),
                    format!("Invalid value: {spec_path:?}: should be a json path under .spec"),
                ));
            }
            let status_path = s(sc, "/statusReplicasPath");
            if !status_path.starts_with(".status.") {
                out.push(cause(
                    "FieldValueInvalid",
                    format!("{base}.subresources.scale.statusReplicasPath"),
                    format!("Invalid value: {status_path:?}: should be a json path under .status"),
                ));
            }
        }
        let selectable = v.get("selectableFields").and_then(Value::as_array).cloned().unwrap_or_default();
        if selectable.len() > 8 {
            out.push(cause("FieldValueTooMany", format!("{base}.selectableFields"), format!("Too many: {}: must have at most 8 items", selectable.len())));
        }
        for (j, f) in selectable.iter().enumerate() {
            let path = s(f, "/jsonPath");
            let at = format!("{base}.selectableFields[{j}].jsonPath");
            let target = v
                .pointer("/schema/openAPIV3Schema")
                .and_then(|root| path.trim_start_matches('.').split('.').try_fold(root, |node, seg| node.get("properties")?.get(seg)));
            if path.is_empty() {
                out.push(cause("FieldValueRequired", at, "Required value"));
            } else if !path.starts_with('.') || target.is_none() {
                out.push(cause("FieldValueInvalid", at, format!("Invalid value: {path:?}: is an invalid path: does not refer to a field of the schema")));
            } else if !matches!(target.and_then(|t| t.get("type")).and_then(Value::as_str), Some("string" | "integer" | "boolean")) {
                out.push(cause("FieldValueInvalid", at, format!("Invalid value: {path:?}: must point to a field of type string, boolean or integer")));
            }
        }
        for (j, c) in v.get("additionalPrinterColumns").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let cbase = format!("{base}.additionalPrinterColumns[{j}]");
            if s(c, "/name").is_empty() {
                out.push(cause("FieldValueRequired", format!("{cbase}.name"), "Required value"));
            }
            match s(c, "/type") {
                "integer" | "number" | "string" | "boolean" | "date" => {}
                "" => out.push(cause("FieldValueRequired", format!("{cbase}.type"), "Required value")),
                other => out.push(cause(
                    "FieldValueNotSupported",
                    format!("{cbase}.type"),
                    format!("Unsupported value: {other:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\""),
                )),
            }
            if s(c, "/jsonPath").is_empty() {
                out.push(cause("FieldValueRequired", format!("{cbase}.jsonPath"), "Required value"));
            }
        }
    }
    out
}

/// The structural-schema rules upstream enforces on every node.
fn structural(schema: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    if ty.is_empty() && !preserve && !int_or_string && !root {
        out.push(cause("FieldValueRequired", format!("{path}.type"), "Required value: must not be empty for specified object fields"));
    }
    if int_or_string && !ty.is_empty() {
        out.push(cause("FieldValueForbidden", format!("{path}.type"), "Forbidden: must be empty if x-kubernetes-int-or-string is true"));
    }
    if schema.get("properties").is_some() && schema.get("additionalProperties").is_some_and(|a| a != &json!(false)) {
        out.push(cause("FieldValueForbidden", format!("{path}.additionalProperties"), "Forbidden: additionalProperties and properties are mutual exclusive"));
    }
    for (i, rule) in schema.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or("");
        let field = format!("{path}.x-kubernetes-validations[{i}].rule");
        if text.is_empty() {
            out.push(cause("FieldValueRequired", field, "Required value"));
        } else if let Err(e) = crate::expressions::program(text) {
            out.push(cause("FieldValueInvalid", field, format!("Invalid value: {text:?}: compilation failed: {e}")));
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, p) in props {
            structural(p, &format!("{path}.properties[{k}]"), false, out);
        }
    }
    if let Some(a) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        structural(a, &format!("{path}.additionalProperties"), false, out);
    }
    if let Some(items) = schema.get("items") {
        if items.is_object() {
            structural(items, &format!("{path}.items"), false, out);
        }
    } else if ty == "array" {
        out.push(cause("FieldValueRequired", format!("{path}.items"), "Required value: must be specified"));
    }
}

/// Functions of Kubernetes' own CEL libraries that the `cel` crate does not have.
const KUBERNETES_ONLY_CEL: &[&str] = &[
    "url",
    "isURL",
    "ip",
    "isIP",
    "cidr",
    "isCIDR",
    "semver",
    "isSemver",
    "getScheme",
    "getHost",
    "getHostname",
    "getPort",
    "getEscapedPath",
    "getQuery",
    "authorizer",
];

/// Warnings for a CRD whose rules call functions nanokube cannot evaluate (those rules
/// are skipped), one per rule.
pub fn rule_warnings(crd: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "x-kubernetes-validations" {
                        for rule in x.as_array().into_iter().flatten().filter_map(|r| r.get("rule").and_then(Value::as_str)) {
                            if let Ok(p) = crate::expressions::program(rule) {
                                let refs = p.references();
                                let missing: Vec<&str> = KUBERNETES_ONLY_CEL.iter().copied().filter(|f| refs.has_function(f)).collect();
                                if !missing.is_empty() {
                                    out.push(format!(
                                        "x-kubernetes-validations rule {rule:?} calls {} (Kubernetes CEL libraries nanokube does not have): it is not enforced",
                                        missing.join(", ")
                                    ));
                                }
                            }
                        }
                    } else {
                        walk(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(crd.get("spec").unwrap_or(&Value::Null), &mut out);
    out
}

/// Evaluate one `x-kubernetes-validations` entry against `v` (and `old`, for transition
/// rules); push a cause when it fails.
fn check_rule(rule: &Value, schema: &Value, v: &Value, old: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let Some(text) = rule.get("rule").and_then(Value::as_str) else { return };
    let Ok(p) = crate::expressions::program(text) else { return }; // compile errors are refused with the CRD
    let refs = p.references();
    if KUBERNETES_ONLY_CEL.iter().any(|f| refs.has_function(f)) {
        return; // said on the CRD write
    }
    let transition = refs.has_variable("oldSelf");
    if transition && old.is_none() {
        return; // transition rules run on updates of correlatable values only
    }
    let ty = schema.get("type").and_then(Value::as_str).filter(|t| !t.is_empty()).unwrap_or(type_name(v));
    let field = match rule.get("fieldPath").and_then(Value::as_str) {
        Some(fp) if !fp.is_empty() => format!("{path}{}", if path.is_empty() { fp.trim_start_matches('.') } else { fp }),
        _ => path.to_string(),
    };
    let detail = crate::expressions::CEL_ROOT.with(|root| {
        let mut ctx = root.new_inner_scope();
        ctx.add_variable_from_value("self", crate::expressions::cel_value(v));
        if let Some(o) = old {
            ctx.add_variable_from_value("oldSelf", crate::expressions::cel_value(o));
        }
        match p.execute(&ctx) {
            Ok(cel::Value::Bool(true)) => None,
            Ok(cel::Value::Bool(false)) => {
                let from_expression =
                    rule.get("messageExpression").and_then(Value::as_str).and_then(|e| match crate::expressions::program(e).ok()?.execute(&ctx).ok()? {
                        cel::Value::String(s) if !s.is_empty() => Some(s.to_string()),
                        _ => None,
                    });
                Some(
                    from_expression
                        .or_else(|| rule.get("message").and_then(Value::as_str).filter(|m| !m.is_empty()).map(String::from))
                        .unwrap_or_else(|| format!("failed rule: {text}")),
                )
            }
            Ok(other) => Some(format!("rule did not evaluate to a bool: {other:?} evaluating rule: {text}")),
            Err(cel::ExecutionError::UndeclaredReference(name)) if refs.has_function(name.as_str()) => None, // a function the cel crate lacks
            Err(e) => Some(format!("{e} evaluating rule: {text}")),
        }
    });
    let Some(detail) = detail else { return };
    let (reason, message) = match rule.get("reason").and_then(Value::as_str).unwrap_or("FieldValueInvalid") {
        "FieldValueForbidden" => ("FieldValueForbidden", format!("Forbidden: {detail}")),
        "FieldValueRequired" => ("FieldValueRequired", format!("Required value: {detail}")),
        "FieldValueDuplicate" => ("FieldValueDuplicate", format!("Duplicate value: \"{ty}\": {detail}")),
        _ => ("FieldValueInvalid", format!("Invalid value: \"{ty}\": {detail}")),
    };
    out.push(cause(reason, field, message));
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name) == Some(&json!(true))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Walk the fields the schema does not declare: remove them (`remove`) and/or record their
/// paths. The root's and embedded resources' `apiVersion`, `kind` and `metadata` are kept.
fn unknown(schema: &Value, v: &mut Value, root: bool, path: &str, remove: bool, found: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keep_unknown = flag(schema, "x-kubernetes-preserve-unknown-fields") || additional == Some(&json!(true));
            let resource = root || flag(schema, "x-kubernetes-embedded-resource");
            let mut drop = Vec::new();
            for (k, x) in m.iter_mut() {
                if resource && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    unknown(p, x, false, &join(path, k), remove, found);
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    unknown(a, x, false, &join(path, k), remove, found);
                } else if !keep_unknown {
                    drop.push(k.clone());
                }
            }
            for k in drop {
                found.push(join(path, &k));
                if remove {
                    m.remove(&k);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
                for (i, x) in a.iter_mut().enumerate() {
                    unknown(items, x, false, &format!("{path}[{i}]"), remove, found);
                }
            }
        }
        _ => {}
    }
}

/// Remove the fields the schema does not declare (upstream's pruning).
pub fn prune(schema: &Value, obj: &mut Value) {
    unknown(schema, obj, true, "", true, &mut Vec::new());
}

/// The paths of the fields pruning would remove (`spec.foo`), for field validation.
pub fn unknown_fields(schema: &Value, obj: &Value) -> Vec<String> {
    let mut found = Vec::new();
    unknown(schema, &mut obj.clone(), true, "", false, &mut found);
    found.sort();
    found
}

/// Apply the schema's defaults to missing (and null, unless nullable) fields.
pub fn apply_defaults(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    if let Some(d) = p.get("default") {
                        let missing = match m.get(k) {
                            None => true,
                            Some(Value::Null) => !flag(p, "nullable"),
                            Some(_) => false,
                        };
                        if missing {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                    if let Some(x) = m.get_mut(k) {
                        apply_defaults(p, x);
                    }
                }
            } else if let Some(a) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for x in m.values_mut() {
                    apply_defaults(a, x);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
                for x in a {
                    apply_defaults(items, x);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as upstream's messages print it: strings quoted, the rest as JSON.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn number(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn fmt_num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// Validate an object against its version's schema. Field paths are upstream's
/// (`spec.replicas`, `spec.items[0]`); messages follow upstream's wording.
pub fn validate(schema: &Value, obj: &Value) -> Vec<Cause> {
    validate_update(schema, obj, None)
}

/// As [`validate`], for an update from `old`: transition rules (`oldSelf`) run where the
/// old value correlates (object fields, items of `map` lists by key).
pub fn validate_update(schema: &Value, obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut out = Vec::new();
    validate_value(schema, obj, old, "", true, &mut out);
    out
}

fn validate_value(schema: &Value, v: &Value, old: Option<&Value>, path: &str, root: bool, out: &mut Vec<Cause>) {
    // Ratcheting (on by default since 1.30, GA in 1.33): a value an update leaves as it
    // was is not validated again, so tightening a schema does not lock objects.
    if !root && old == Some(v) {
        return;
    }
    let shown_path = if path.is_empty() { "<root>" } else { path };
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    if v.is_null() {
        if !ty.is_empty() && !flag(schema, "nullable") {
            out.push(cause("FieldValueTypeInvalid", path, format!("Invalid value: \"null\": {shown_path} in body must be of type {ty}: \"null\"")));
        }
        return;
    }
    let got = type_name(v);
    if flag(schema, "x-kubernetes-int-or-string") {
        if got != "integer" && got != "string" {
            out.push(cause("FieldValueTypeInvalid", path, format!("Invalid value: \"{got}\": {shown_path} in body must be of type integer,string: \"{got}\"")));
            return;
        }
    } else {
        let ok = match ty {
            "" => true,
            "number" => got == "number" || got == "integer",
            t => t == got,
        };
        if !ok {
            out.push(cause("FieldValueTypeInvalid", path, format!("Invalid value: \"{got}\": {shown_path} in body must be of type {ty}: \"{got}\"")));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(shown).collect();
            out.push(cause("FieldValueNotSupported", path, format!("Unsupported value: {}: supported values: {}", shown(v), list.join(", "))));
        }
    }
    match v {
        Value::String(text) => {
            let len = text.chars().count() as f64;
            if let Some(max) = number(schema, "maxLength").filter(|m| len > *m) {
                out.push(cause("FieldValueTooLong", path, format!("Too long: may not be more than {} bytes", fmt_num(max))));
            }
            if let Some(min) = number(schema, "minLength").filter(|m| len < *m) {
                out.push(cause(
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {}: {shown_path} in body should be at least {} chars long", shown(v), fmt_num(min)),
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex_lite::Regex::new(pattern) {
                    Ok(re) if !re.is_match(text) => {
                        out.push(cause("FieldValueInvalid", path, format!("Invalid value: {}: {shown_path} in body should match '{pattern}'", shown(v))))
                    }
                    Ok(_) => {}
                    Err(e) => out.push(cause("FieldValueInvalid", path, format!("Invalid value: {pattern:?}: the schema's pattern does not compile: {e}"))),
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = number(schema, "minimum") {
                let exclusive = flag(schema, "exclusiveMinimum");
                if x < min || (exclusive && x == min) {
                    let how = if exclusive { "greater than" } else { "greater than or equal to" };
                    out.push(cause("FieldValueInvalid", path, format!("Invalid value: {}: {shown_path} in body should be {how} {}", shown(v), fmt_num(min))));
                }
            }
            if let Some(max) = number(schema, "maximum") {
                let exclusive = flag(schema, "exclusiveMaximum");
                if x > max || (exclusive && x == max) {
                    let how = if exclusive { "less than" } else { "less than or equal to" };
                    out.push(cause("FieldValueInvalid", path, format!("Invalid value: {}: {shown_path} in body should be {how} {}", shown(v), fmt_num(max))));
                }
            }
            if let Some(m) = number(schema, "multipleOf").filter(|m| *m != 0.0) {
                if (x / m).fract().abs() > 1e-9 {
                    out.push(cause(
                        "FieldValueInvalid",
                        path,
                        format!("Invalid value: {}: {shown_path} in body should be a multiple of {}", shown(v), fmt_num(m)),
                    ));
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as f64;
            if let Some(max) = number(schema, "maxItems").filter(|m| len > *m) {
                out.push(cause("FieldValueTooMany", path, format!("Too many: {}: must have at most {} items", items.len(), fmt_num(max))));
            }
            if let Some(min) = number(schema, "minItems").filter(|m| len < *m) {
                out.push(cause(
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {}: {shown_path} in body should have at least {} items", items.len(), fmt_num(min)),
                ));
            }
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str).unwrap_or("");
            let map_keys = strings(schema.get("x-kubernetes-list-map-keys"));
            for (i, item) in items.iter().enumerate() {
                let earlier = &items[..i];
                let duplicate = match list_type {
                    "set" => earlier.contains(item),
                    "map" => {
                        let key = |x: &Value| map_keys.iter().map(|k| x.get(k).cloned().unwrap_or(Value::Null)).collect::<Vec<_>>();
                        earlier.iter().any(|e| key(e) == key(item))
                    }
                    _ => flag(schema, "uniqueItems") && earlier.contains(item),
                };
                if duplicate {
                    out.push(cause("FieldValueDuplicate", format!("{path}[{i}]"), format!("Duplicate value: {}", shown(item))));
                }
                if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                    // Only items of map lists correlate with an old item (by key).
                    let old_item = match list_type {
                        "map" => old.and_then(Value::as_array).and_then(|olds| {
                            let key = |x: &Value| map_keys.iter().map(|k| x.get(k).cloned().unwrap_or(Value::Null)).collect::<Vec<_>>();
                            olds.iter().find(|o| key(o) == key(item))
                        }),
                        _ => None,
                    };
                    validate_value(s, item, old_item, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        Value::Object(m) => {
            for req in strings(schema.get("required")) {
                if !m.contains_key(&req) {
                    out.push(cause("FieldValueRequired", join(path, &req), "Required value"));
                }
            }
            let n = m.len() as f64;
            if let Some(max) = number(schema, "maxProperties").filter(|x| n > *x) {
                out.push(cause("FieldValueTooMany", path, format!("Too many: {}: must have at most {} items", m.len(), fmt_num(max))));
            }
            if let Some(min) = number(schema, "minProperties").filter(|x| n < *x) {
                out.push(cause(
                    "FieldValueInvalid",
                    path,
                    format!("Invalid value: {}: {shown_path} in body should have at least {} properties", m.len(), fmt_num(min)),
                ));
            }
            if flag(schema, "x-kubernetes-embedded-resource") {
                for k in ["apiVersion", "kind"] {
                    if m.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                        out.push(cause("FieldValueRequired", join(path, k), "Required value: must not be empty"));
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in m {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let old_x = old.and_then(|o| o.get(k));
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    validate_value(p, x, old_x, &join(path, k), false, out);
                } else if let Some(a) = additional {
                    validate_value(a, x, old_x, &join(path, k), false, out);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
    // Value-validation combinators (structural schemas allow them without types).
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            validate_value(s, v, old, path, root, out);
        }
    }
    let passes = |s: &Value| {
        let mut e = Vec::new();
        validate_value(s, v, old, path, root, &mut e);
        e.is_empty()
    };
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(passes) {
            out.push(cause("FieldValueInvalid", path, format!("Invalid value: {}: {shown_path} in body must validate at least one schema (anyOf)", shown(v))));
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        if one.iter().filter(|s| passes(s)).count() != 1 {
            out.push(cause(
                "FieldValueInvalid",
                path,
                format!("Invalid value: {}: {shown_path} in body must validate one and only one schema (oneOf)", shown(v)),
            ));
        }
    }
    if let Some(not) = schema.get("not") {
        if passes(not) {
            out.push(cause("FieldValueInvalid", path, format!("Invalid value: {}: {shown_path} in body must not validate the schema (not)", shown(v))));
        }
    }
    // CEL rules (a value of the wrong type returned above: `self` would not be what the
    // rule expects).
    for rule in schema.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
        check_rule(rule, schema, v, old, path, out);
    }
}

/// Evaluate the simple JSONPath CRDs use in printer columns and scale paths:
/// `.a.b`, `.a[0]`, `.a[*].b`, `.a['dotted.key']`, optionally wrapped in `{}`.
/// Returns every match (empty when the path leads nowhere).
pub fn json_path(obj: &Value, path: &str) -> Vec<Value> {
    let p = path.trim();
    let p = p.strip_prefix('{').and_then(|x| x.strip_suffix('}')).unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut current: Vec<&Value> = vec![obj];
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            current = current.into_iter().filter_map(|v| v.get(key)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { return Vec::new() };
            let sel = &r[..end];
            rest = &r[end + 1..];
            if sel == "*" {
                current = current
                    .into_iter()
                    .flat_map(|v| match v {
                        Value::Array(a) => a.iter().collect::<Vec<_>>(),
                        Value::Object(m) => m.values().collect(),
                        _ => Vec::new(),
                    })
                    .collect();
            } else if let Ok(i) = sel.parse::<i64>() {
                current = current
                    .into_iter()
                    .filter_map(|v| {
                        let a = v.as_array()?;
                        let idx = if i < 0 { a.len() as i64 + i } else { i };
                        a.get(usize::try_from(idx).ok()?)
                    })
                    .collect();
            } else {
                let key = sel.trim_matches(|c| c == '\'' || c == '"');
                current = current.into_iter().filter_map(|v| v.get(key)).collect();
            }
        } else {
            return Vec::new();
        }
    }
    current.into_iter().cloned().collect()
}

/// A `.spec.replicas`-style path as a JSON pointer (`/spec/replicas`).
pub fn path_to_pointer(path: &str) -> String {
    path.split('.').filter(|s| !s.is_empty()).fold(String::new(), |acc, seg| format!("{acc}/{seg}"))
}

/// The name of a CRD's storage version (as a JSON string), if one is marked.
fn storage_version(crd: &Value) -> Option<Value> {
    crd.pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|vs| vs.iter().find(|v| v.get("storage").and_then(Value::as_bool) == Some(true)))
        .and_then(|v| v.get("name").cloned())
}

/// What the API server itself writes into a CRD's status on create and on spec updates,
/// before any controller runs (upstream's strategy does the same): `acceptedNames` present
/// (empty until the names are accepted) and the storage version recorded in
/// `storedVersions`, so a client reading the CRD back always finds a status.
pub fn record_storage_version(crd: &mut Value) {
    let storage = storage_version(crd);
    let Some(obj) = crd.as_object_mut() else { return };
    let status = obj.entry("status").or_insert_with(|| json!({}));
    if !status.is_object() {
        *status = json!({});
    }
    let st = status.as_object_mut().expect("status is an object");
    st.entry("acceptedNames").or_insert_with(|| json!({"plural": "", "kind": ""}));
    let stored = st.entry("storedVersions").or_insert_with(|| json!([]));
    if let (Some(list), Some(sv)) = (stored.as_array_mut(), storage) {
        if !list.contains(&sv) {
            list.push(sv);
        }
    }
}

/// The CRD status the controller keeps: accepted names, conditions and stored versions.
/// `conflict` is the reason the names are not accepted, if another CRD holds them.
pub fn status_for(crd: &Value, conflict: Option<&str>, now: &str) -> Value {
    let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let old = crd.get("status").cloned().unwrap_or(json!({}));
    let old_cond =
        |ty: &str| old.get("conditions").and_then(Value::as_array).and_then(|c| c.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(ty))).cloned();
    let cond = |ty: &str, status: &str, reason: &str, message: &str| {
        let since = old_cond(ty)
            .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now));
        json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": since})
    };
    let mut conditions = Vec::new();
    let accepted = match conflict {
        None => {
            conditions.push(cond("NamesAccepted", "True", "NoConflicts", "no conflicts found"));
            conditions.push(cond("Established", "True", "InitialNamesAccepted", "the initial names have been accepted"));
            names.clone()
        }
        Some(why) => {
            conditions.push(cond("NamesAccepted", "False", "NameConflict", why));
            conditions.push(cond("Established", "False", "NotAccepted", "not all names are accepted"));
            old.get("acceptedNames").cloned().unwrap_or(json!({"plural": "", "kind": ""}))
        }
    };
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        conditions.push(cond("Terminating", "True", "InstanceDeletionInProgress", "CustomResource deletion is in progress"));
    }
    let mut stored: Vec<Value> = old.get("storedVersions").and_then(Value::as_array).cloned().unwrap_or_default();
    if conflict.is_none() {
        if let Some(sv) = storage_version(crd) {
            if !stored.contains(&sv) {
                stored.push(sv);
            }
        }
    }
    let mut accepted_map = Map::new();
    for k in ["plural", "singular", "shortNames", "kind", "listKind", "categories"] {
        if let Some(v) = accepted.get(k) {
            accepted_map.insert(k.into(), v.clone());
        }
    }
    json!({"acceptedNames": accepted_map, "conditions": conditions, "storedVersions": stored})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["cronSpec"], "properties": {
                "cronSpec": {"type": "string", "pattern": "^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$"},
                "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "port": {"x-kubernetes-int-or-string": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set", "maxItems": 2},
                "template": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}}},
            "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}})
    }

    #[test]
    fn prune_default_validate() {
        let mut obj = json!({"apiVersion": "x.io/v1", "kind": "T", "metadata": {"name": "a"}, "extra": 1,
            "spec": {"cronSpec": "* * * * */5", "unknown": true, "free": {"anything": {"deep": 1}}, "port": "http"}});
        assert_eq!(unknown_fields(&schema(), &obj), vec!["extra".to_string(), "spec.unknown".to_string()]);
        prune(&schema(), &mut obj);
        assert!(obj.get("extra").is_none() && obj.pointer("/spec/unknown").is_none());
        assert_eq!(obj.pointer("/spec/free/anything/deep"), Some(&json!(1)));
        apply_defaults(&schema(), &mut obj);
        assert_eq!(obj.pointer("/spec/replicas"), Some(&json!(1)));
        assert!(validate(&schema(), &obj).is_empty());

        let bad = json!({"spec": {"cronSpec": "nope", "replicas": "3", "mode": "c", "port": 1.5, "tags": ["x", "x", "y"], "template": {"kind": "Pod"}}});
        let causes = validate(&schema(), &bad);
        let fields: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.reason.as_str())).collect();
        assert!(fields.contains(&("spec.cronSpec", "FieldValueInvalid")), "{causes:?}");
        assert!(fields.contains(&("spec.replicas", "FieldValueTypeInvalid")));
        assert!(fields.contains(&("spec.mode", "FieldValueNotSupported")));
        assert!(fields.contains(&("spec.port", "FieldValueTypeInvalid")));
        assert!(fields.contains(&("spec.tags", "FieldValueTooMany")));
        assert!(fields.contains(&("spec.tags[1]", "FieldValueDuplicate")));
        assert!(fields.contains(&("spec.template.apiVersion", "FieldValueRequired")));
        let replicas = causes.iter().find(|c| c.field == "spec.replicas").unwrap();
        assert_eq!(replicas.message, "Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"");
        let missing = validate(&schema(), &json!({"spec": {"replicas": 0}}));
        assert!(missing.iter().any(|c| c.field == "spec.cronSpec" && c.message == "Required value"));
        assert!(missing.iter().any(|c| c.message.ends_with("spec.replicas in body should be greater than or equal to 1")));
    }

    #[test]
    fn cel_rules() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
                {"rule": "self.name.startsWith('app-')", "fieldPath": ".name"},
                {"rule": "self.maxReplicas >= oldSelf.maxReplicas", "message": "maxReplicas may not shrink", "reason": "FieldValueForbidden"},
                {"rule": "!has(self.memory) || quantity(self.memory).isGreaterThan(quantity('1Gi'))"}],
            "properties": {"minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"}, "name": {"type": "string"}, "memory": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-validations": [{"rule": "self.all(t, t.lowerAscii() == t)"}]}}}}});
        let ok = json!({"spec": {"minReplicas": 1, "maxReplicas": 3, "name": "app-x", "memory": "2Gi", "tags": ["a"]}});
        assert!(validate(&schema, &ok).is_empty(), "{:?}", validate(&schema, &ok));
        let bad = json!({"spec": {"minReplicas": 5, "maxReplicas": 3, "name": "x", "tags": ["A"]}});
        let causes = validate(&schema, &bad);
        let got: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect();
        assert!(got.contains(&("spec", "Invalid value: \"object\": minReplicas must not exceed maxReplicas")), "{got:?}");
        assert!(got.contains(&("spec.name", "Invalid value: \"object\": failed rule: self.name.startsWith('app-')")), "{got:?}");
        assert!(got.contains(&("spec.tags", "Invalid value: \"array\": failed rule: self.all(t, t.lowerAscii() == t)")), "{got:?}");
        assert_eq!(causes.len(), 3, "the transition rule needs an old object; no memory, no quantity rule: {got:?}");
        let shrunk = json!({"spec": {"minReplicas": 1, "maxReplicas": 2, "name": "app-x", "memory": "2Gi"}});
        let causes = validate_update(&schema, &shrunk, Some(&ok));
        assert_eq!(causes.len(), 1, "{causes:?}");
        // Ratcheting: an unchanged invalid value passes an update.
        let still_bad = json!({"spec": {"minReplicas": 5, "maxReplicas": 3, "name": "x", "tags": ["A"]}, "other": 1});
        assert!(validate_update(&schema, &still_bad, Some(&bad)).is_empty());
        assert_eq!((causes[0].reason.as_str(), causes[0].message.as_str()), ("FieldValueForbidden", "Forbidden: maxReplicas may not shrink"));
        // Compile errors are the CRD's, with the rule's path.
        let mut out = Vec::new();
        structural(&json!({"type": "object", "x-kubernetes-validations": [{"rule": "self.a >"}]}), "root", true, &mut out);
        assert_eq!(out[0].field, "root.x-kubernetes-validations[0].rule");
        assert!(out[0].message.contains("compilation failed"), "{:?}", out[0]);
        let crd = json!({"spec": {"versions": [{"schema": {"openAPIV3Schema": schema}}]}});
        assert!(rule_warnings(&crd).is_empty());
        let with_url =
            json!({"spec": {"versions": [{"schema": {"openAPIV3Schema": {"type": "string", "x-kubernetes-validations": [{"rule": "isURL(self)"}]}}}]}});
        assert_eq!(rule_warnings(&with_url).len(), 1);

        // Quantities.
        for (q, want) in [("500m", 0.5), ("1Gi", 1073741824.0), ("1.5", 1.5), ("2e3", 2000.0), ("-1k", -1000.0), ("1E", 1e18)] {
            assert_eq!(crate::expressions::parse_quantity(q), Some(want), "{q}");
        }
        for bad in ["", "Gi", "1.2.3", "1Gb", "--1", "1e"] {
            assert_eq!(crate::expressions::parse_quantity(bad), None, "{bad}");
        }
        let res = json!({"type": "object", "properties": {"memory": {"type": "string", "x-kubernetes-validations": [
            {"rule": "isQuantity(self) && quantity(self).isLessThan(quantity('2Gi'))", "message": "at most 2Gi"},
            {"rule": "quantity(self).compareTo(quantity('1Mi')) >= 0"}]}}});
        assert!(validate(&res, &json!({"memory": "1536Mi"})).is_empty());
        assert_eq!(validate(&res, &json!({"memory": "3Gi"}))[0].message, "Invalid value: \"string\": at most 2Gi");
        assert_eq!(validate(&res, &json!({"memory": "512Ki"})).len(), 1);
        assert_eq!(validate(&res, &json!({"memory": "lots"})).len(), 2, "not a quantity: the first rule is false, the second errors");

        // Kubernetes' list and regex libraries.
        let lists = json!({"type": "object", "properties": {
            "ports": {"type": "array", "items": {"type": "integer"}, "x-kubernetes-validations": [
                {"rule": "self.isSorted()", "message": "ports must be sorted"},
                {"rule": "self.sum() <= 1000", "messageExpression": "'ports add up to ' + string(self.sum())"},
                {"rule": "self.min() > 0 && self.max() < 70000"}]},
            "image": {"type": "string", "x-kubernetes-validations": [
                {"rule": "self.find('[0-9]+') != ''", "message": "needs a digit"},
                {"rule": "self.findAll('[a-z]').size() >= 2"}]}}});
        assert!(
            validate(&lists, &json!({"ports": [1, 2, 3], "image": "ab1"})).is_empty(),
            "{:?}",
            validate(&lists, &json!({"ports": [1, 2, 3], "image": "ab1"}))
        );
        let msgs: Vec<String> = validate(&lists, &json!({"ports": [600, 500, 0], "image": "a"})).into_iter().map(|c| c.message).collect();
        assert_eq!(
            msgs,
            vec![
                "Invalid value: \"string\": needs a digit".to_string(),
                "Invalid value: \"string\": failed rule: self.findAll('[a-z]').size() >= 2".to_string(),
                "Invalid value: \"array\": ports must be sorted".to_string(),
                "Invalid value: \"array\": ports add up to 1100".to_string(),
                "Invalid value: \"array\": failed rule: self.min() > 0 && self.max() < 70000".to_string(),
            ]
        );
    }

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec!["v1alpha1", "foo", "v1", "v2beta1", "v1beta2", "v2", "v1beta1"];
        v.sort_by(|a, b| version_priority(a, b));
        assert_eq!(v, vec!["v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }

    #[test]
    fn json_paths() {
        let o = json!({"spec": {"a": [{"b": 1}, {"b": 2}], "d.e": "x"}});
        assert_eq!(json_path(&o, ".spec.a[1].b"), vec![json!(2)]);
        assert_eq!(json_path(&o, ".spec.a[*].b"), vec![json!(1), json!(2)]);
        assert_eq!(json_path(&o, "{.spec['d.e']}"), vec![json!("x")]);
        assert!(json_path(&o, ".spec.missing").is_empty());
        assert_eq!(path_to_pointer(".spec.replicas"), "/spec/replicas");
    }

    #[test]
    fn crd_checks() {
        let mut crd = json!({"metadata": {"name": "crontabs.stable.example.com"}, "spec": {"group": "stable.example.com", "scope": "Namespaced",
            "names": {"plural": "crontabs", "kind": "CronTab"}, "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": schema()}}]}});
        default_crd(&mut crd);
        assert_eq!(crd.pointer("/spec/names/singular"), Some(&json!("crontab")));
        assert!(validate_crd(&crd).is_empty(), "{:?}", validate_crd(&crd));
        let mut protected = crd.clone();
        protected["spec"]["group"] = json!("stable.k8s.io");
        protected["metadata"]["name"] = json!("crontabs.stable.k8s.io");
        assert_eq!(validate_crd(&protected)[0].field, "metadata.annotations[api-approved.kubernetes.io]");
        protected["metadata"]["annotations"] = json!({"api-approved.kubernetes.io": "https://github.com/kubernetes/kubernetes/pull/1"});
        assert!(validate_crd(&protected).is_empty());
        let mut bad = crd.clone();
        bad["metadata"]["name"] = json!("wrong");
        bad["spec"]["versions"][0]["storage"] = json!(false);
        bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["untyped"] = json!({});
        let fields: Vec<String> = validate_crd(&bad).into_iter().map(|c| c.field).collect();
        assert!(fields.contains(&"metadata.name".to_string()));
        assert!(fields.contains(&"spec.versions".to_string()));
        assert!(fields.contains(&"spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[untyped].type".to_string()));
        let mut sel = crd.clone();
        sel["spec"]["versions"][0]["selectableFields"] = json!([{"jsonPath": ".spec.replicas"}, {"jsonPath": ".spec.nope"}, {"jsonPath": ".spec"}]);
        let fields: Vec<String> = validate_crd(&sel).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, vec!["spec.versions[0].selectableFields[1].jsonPath", "spec.versions[0].selectableFields[2].jsonPath"]);
        sel["spec"]["versions"][0]["selectableFields"] = json!([{"jsonPath": ".spec.replicas"}]);
        assert_eq!(CustomResource::from_crd(&sel).unwrap().version("v1").unwrap().selectable, vec!["spec.replicas"]);
        let cr = CustomResource::from_crd(&crd).unwrap();
        assert_eq!(cr.version("v1").unwrap().columns[0].name, "Age");
        let st = status_for(&crd, None, "2026-01-01T00:00:00Z");
        assert_eq!(st["conditions"][1]["type"], "Established");
        assert_eq!(st["storedVersions"], json!(["v1"]));
    }
}
