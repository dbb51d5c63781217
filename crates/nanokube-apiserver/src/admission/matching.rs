//! Which writes a webhook or a policy sees: rules (operations, groups, versions,
//! resources with their subresources, scope, resource names), namespace and object
//! selectors, and CEL match conditions, with upstream's semantics
//! (`admission/plugin/webhook/predicates`).

use nanokube_api::expressions::cel;
use nanokube_api::resources;
use nanokube_api::selector::LabelSelector;
use serde_json::{Map, Value};

use super::Attributes;
use crate::registry::Registry;

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn listed(list: &[&str], want: &str) -> bool {
    list.iter().any(|x| *x == "*" || *x == want)
}

/// One `RuleWithOperations` (or `NamedRuleWithOperations`) against the write.
pub(super) fn rule_matches(rule: &Value, attrs: &Attributes<'_>) -> bool {
    let operations = strings(rule.get("operations"));
    if !listed(&operations, attrs.operation.as_str()) {
        return false;
    }
    if !listed(&strings(rule.get("apiGroups")), attrs.def.group) || !listed(&strings(rule.get("apiVersions")), attrs.def.version) {
        return false;
    }
    let resource_ok = strings(rule.get("resources")).iter().any(|r| {
        let (res, sub) = r.split_once('/').unwrap_or((r, ""));
        (res == "*" || res == attrs.def.plural) && (sub == "*" || sub == attrs.subresource)
    });
    if !resource_ok {
        return false;
    }
    let names = strings(rule.get("resourceNames"));
    if !names.is_empty() && !names.contains(&attrs.name) {
        return false;
    }
    let is_namespace = attrs.def.group.is_empty() && attrs.def.plural == "namespaces";
    match rule.get("scope").and_then(Value::as_str).unwrap_or("*") {
        "Namespaced" => !is_namespace && !attrs.namespace.is_empty(),
        "Cluster" => is_namespace || attrs.namespace.is_empty(),
        _ => true,
    }
}

/// Whether any of `rules` matches.
pub(super) fn any_rule_matches(rules: Option<&Value>, attrs: &Attributes<'_>) -> bool {
    rules.and_then(Value::as_array).is_some_and(|rules| rules.iter().any(|r| rule_matches(r, attrs)))
}

fn labels(obj: Option<&Value>) -> Option<&Map<String, Value>> {
    obj?.pointer("/metadata/labels")?.as_object()
}

fn selector(v: Option<&Value>) -> Result<LabelSelector, String> {
    match v {
        None | Some(Value::Null) => Ok(LabelSelector::default()),
        Some(s) => LabelSelector::from_object(s).map_err(|e| e.message),
    }
}

/// `namespaceSelector` and `objectSelector` of `spec` (a webhook, or a policy's or
/// binding's match resources) against the write. A cluster-scoped object other than a
/// namespace is never excluded by a namespace selector; a namespace is matched by its own
/// labels; an object selector matches the new or the old object.
pub(super) fn selectors_match(registry: &Registry, spec: &Value, attrs: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) -> Result<bool, String> {
    let ns_selector = selector(spec.get("namespaceSelector"))?;
    let is_namespace = attrs.def.group.is_empty() && attrs.def.plural == "namespaces";
    if !ns_selector.is_empty() && (is_namespace || !attrs.namespace.is_empty()) {
        let ns_labels =
            if is_namespace { labels(obj.or(old)).cloned() } else { namespace_object(registry, attrs.namespace).and_then(|n| labels(Some(&n)).cloned()) };
        if !ns_selector.matches(ns_labels.as_ref()) {
            return Ok(false);
        }
    }
    let obj_selector = selector(spec.get("objectSelector"))?;
    // An absent object (the new one of a delete, the old one of a create) matches nothing.
    let matches = |o: Option<&Value>| o.is_some_and(|o| obj_selector.matches(labels(Some(o))));
    if !obj_selector.is_empty() && !matches(obj) && !matches(old) {
        return Ok(false);
    }
    Ok(true)
}

/// The namespace object a namespaced write is in.
pub(super) fn namespace_object(registry: &Registry, namespace: &str) -> Option<Value> {
    let def = resources::find("", "v1", "namespaces")?;
    registry.get(def, "", namespace).ok().map(|o| o.to_value())
}

/// `matchConditions`: each CEL expression must be true. `Ok(false)` when one is false;
/// `Err` names the first that could not be evaluated.
pub(super) fn conditions_match(conditions: Option<&Value>, vars: &[(&str, cel::Value)]) -> Result<bool, String> {
    for c in conditions.and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        let expr = c.get("expression").and_then(Value::as_str).unwrap_or("");
        match nanokube_api::expressions::evaluate(expr, vars) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => return Ok(false),
            Ok(other) => return Err(format!("matchCondition '{name}': expression did not evaluate to a bool: {other:?}")),
            Err(e) => return Err(format!("failed to evaluate matchCondition '{name}': {e}")),
        }
    }
    Ok(true)
}

/// The CEL variables every admission expression sees: `object`, `oldObject` (null
/// when absent) and `request`.
pub(super) fn cel_vars(attrs: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) -> Vec<(&'static str, cel::Value)> {
    use nanokube_api::expressions::cel_value;
    vec![
        ("object", obj.map_or(cel::Value::Null, cel_value)),
        ("oldObject", old.map_or(cel::Value::Null, cel_value)),
        ("request", cel_value(&attrs.request(""))),
    ]
}
