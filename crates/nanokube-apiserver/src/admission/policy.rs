//! `ValidatingAdmissionPolicy` and `ValidatingAdmissionPolicyBinding`
//! (`admissionregistration.k8s.io/v1`): for each binding whose policy matches the write
//! (the policy's `matchConstraints`, then the binding's `matchResources`), the policy's
//! `matchConditions`, `variables` and `validations` are evaluated in CEL with `object`,
//! `oldObject`, `request`, `params` (from the binding's `paramRef`), `namespaceObject`
//! and `variables`; a failed validation is answered by the binding's
//! `validationActions` (`Deny`: the write's error, as upstream words it; `Warn`: a
//! Warning header; `Audit`: nothing here, audit events carry no annotations yet).
//! `authorizer` is not available: an expression using it fails by `failurePolicy`.

use nanokube_api::error::{qualified, Cause};
use nanokube_api::expressions::cel;
use nanokube_api::expressions::{self, cel_value};
use nanokube_api::resources;
use nanokube_api::selector::LabelSelector;
use nanokube_api::ApiError;
use serde_json::Value;

use super::matching::{any_rule_matches, cel_vars, conditions_match, namespace_object, selectors_match};
use super::Attributes;
use crate::registry::{ListOptions, Registry};

/// Evaluate every binding against the write; the first denial is the error.
pub(super) fn run(registry: &Registry, attrs: &Attributes<'_>, bindings: &[Value], obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
    let Some(policy_def) = resources::find("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies") else { return Ok(()) };
    for binding in bindings {
        let binding_name = binding.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let spec = binding.get("spec").cloned().unwrap_or(Value::Null);
        let policy_name = spec.get("policyName").and_then(Value::as_str).unwrap_or("");
        let Ok(policy) = registry.get(policy_def, "", policy_name) else { continue };
        let policy = policy.value();
        let pspec = policy.get("spec").cloned().unwrap_or(Value::Null);
        if !constraints_match(registry, pspec.get("matchConstraints"), attrs, obj, old, true) {
            continue;
        }
        if !constraints_match(registry, spec.get("matchResources"), attrs, obj, old, false) {
            continue;
        }
        let decision = Decision {
            attrs,
            policy: policy_name,
            binding: binding_name,
            actions: &spec,
            fail_open: pspec.get("failurePolicy").and_then(Value::as_str) == Some("Ignore"),
        };
        let params = match params(registry, attrs, &pspec, &spec) {
            Ok(p) => p,
            Err(message) => {
                decision.failed(&message, "")?;
                continue;
            }
        };
        for param in params {
            evaluate(registry, &decision, &pspec, param.as_ref(), obj, old)?;
        }
    }
    Ok(())
}

/// A policy's `matchConstraints` or a binding's `matchResources`. A binding without
/// `matchResources` (or with no rules in it) takes everything its policy matched.
fn constraints_match(
    registry: &Registry,
    constraints: Option<&Value>,
    attrs: &Attributes<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
    required: bool,
) -> bool {
    let Some(c) = constraints.filter(|c| c.is_object()) else { return !required };
    let has_rules = c.get("resourceRules").and_then(Value::as_array).is_some_and(|r| !r.is_empty());
    if (required || has_rules) && !any_rule_matches(c.get("resourceRules"), attrs) {
        return false;
    }
    if any_rule_matches(c.get("excludeResourceRules"), attrs) {
        return false;
    }
    selectors_match(registry, c, attrs, obj, old).unwrap_or(false)
}

/// The parameter objects of a binding: `[None]` when the policy takes none.
fn params(registry: &Registry, attrs: &Attributes<'_>, pspec: &Value, bspec: &Value) -> Result<Vec<Option<Value>>, String> {
    let Some(kind) = pspec.get("paramKind").filter(|k| k.is_object()) else { return Ok(vec![None]) };
    let api_version = kind.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind_name = kind.get("kind").and_then(Value::as_str).unwrap_or("");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let def = registry
        .resources()
        .find_kind(group, kind_name)
        .and_then(|d| registry.resources().find(group, version, d.plural))
        .ok_or_else(|| format!("failed to configure binding: paramKind {api_version}, Kind={kind_name} is not served"))?;
    let pref = bspec.get("paramRef").cloned().unwrap_or(Value::Null);
    let namespace = match pref.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => ns.to_string(),
        _ if def.namespaced => attrs.namespace.to_string(),
        _ => String::new(),
    };
    let found: Vec<Option<Value>> = match pref.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(name) => registry.get(def, &namespace, name).ok().map(|o| Some(o.to_value())).into_iter().collect(),
        None => {
            let labels = match pref.get("selector") {
                Some(s) if s.is_object() => LabelSelector::from_object(s).map_err(|e| e.message)?,
                _ => LabelSelector::default(),
            };
            let ns = (!namespace.is_empty()).then_some(namespace.as_str());
            registry.list(def, ns, &ListOptions { labels, ..Default::default() }).map_err(|e| e.message)?.items.iter().map(|o| Some(o.to_value())).collect()
        }
    };
    if !found.is_empty() {
        return Ok(found);
    }
    match pref.get("parameterNotFoundAction").and_then(Value::as_str) {
        Some("Allow") => Ok(Vec::new()),
        _ => Err("failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction".into()),
    }
}

/// One policy, binding and parameter: who decided, and what to do with a failure.
struct Decision<'a> {
    attrs: &'a Attributes<'a>,
    policy: &'a str,
    binding: &'a str,
    actions: &'a Value,
    fail_open: bool,
}

impl Decision<'_> {
    /// A validation failed with `message`: deny, warn or (audit) nothing, as the binding says.
    fn failed(&self, message: &str, reason: &str) -> Result<(), ApiError> {
        let actions: Vec<&str> =
            self.actions.get("validationActions").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if actions.contains(&"Warn") {
            self.attrs.warn(format!("Validation failed for ValidatingAdmissionPolicy '{}' with binding '{}': {message}", self.policy, self.binding));
        }
        if !actions.contains(&"Deny") {
            return Ok(());
        }
        let why = format!("ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {message}", self.policy, self.binding);
        let (def, name) = (self.attrs.def, self.attrs.name);
        let resource = qualified(def.plural, def.group);
        let text = if name.is_empty() { format!("{resource} is forbidden: {why}") } else { format!("{resource} \"{name}\" is forbidden: {why}") };
        let (code, reason) = match reason {
            "Unauthorized" => (401, "Unauthorized"),
            "Forbidden" => (403, "Forbidden"),
            "RequestEntityTooLarge" => (413, "RequestEntityTooLarge"),
            _ => (422, "Invalid"),
        };
        let mut e = ApiError::new(code, reason, text);
        e.details.name = Some(name.to_string());
        e.details.group = Some(def.group.to_string());
        e.details.kind = Some(def.plural.to_string());
        e.details.causes.push(Cause { reason: String::new(), message: why, field: String::new() });
        Err(e)
    }

    /// An expression could not be evaluated: ignored when the policy fails open.
    fn error(&self, message: String) -> Result<(), ApiError> {
        if self.fail_open {
            return Ok(());
        }
        self.failed(&message, "")
    }
}

fn evaluate(registry: &Registry, d: &Decision<'_>, pspec: &Value, param: Option<&Value>, obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
    let attrs = d.attrs;
    let mut vars = cel_vars(attrs, obj, old);
    vars.push(("params", param.map_or(cel::Value::Null, cel_value)));
    let ns_obj = if attrs.namespace.is_empty() { None } else { namespace_object(registry, attrs.namespace) };
    vars.push(("namespaceObject", ns_obj.as_ref().map_or(cel::Value::Null, cel_value)));
    // Variables in order, each seeing those before it.
    let mut variables = std::collections::HashMap::new();
    vars.push(("variables", cel::Value::from(variables.clone())));
    for v in pspec.get("variables").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("").to_string();
        let expr = v.get("expression").and_then(Value::as_str).unwrap_or("");
        match expressions::evaluate(expr, &vars) {
            Ok(value) => {
                variables.insert(name, value);
                if let Some(last) = vars.last_mut() {
                    last.1 = cel::Value::from(variables.clone());
                }
            }
            Err(e) => return d.error(format!("variable '{name}' resulted in error: {e}")),
        }
    }
    match conditions_match(pspec.get("matchConditions"), &vars) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) => return d.error(e),
    }
    for v in pspec.get("validations").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        let expr = v.get("expression").and_then(Value::as_str).unwrap_or("");
        match expressions::evaluate(expr, &vars) {
            Ok(cel::Value::Bool(true)) => {}
            Ok(cel::Value::Bool(false)) => {
                let from_expression = v.get("messageExpression").and_then(Value::as_str).and_then(|m| match expressions::evaluate(m, &vars).ok()? {
                    cel::Value::String(s) if !s.trim().is_empty() => Some(s.to_string()),
                    _ => None,
                });
                let message = from_expression
                    .or_else(|| v.get("message").and_then(Value::as_str).filter(|m| !m.is_empty()).map(String::from))
                    .unwrap_or_else(|| format!("failed expression: {expr}"));
                d.failed(&message, v.get("reason").and_then(Value::as_str).unwrap_or(""))?;
            }
            Ok(other) => d.error(format!("expression '{expr}' resulted in error: expected a bool, got {other:?}"))?,
            Err(e) => d.error(format!("expression '{expr}' resulted in error: {e}"))?,
        }
    }
    Ok(())
}
