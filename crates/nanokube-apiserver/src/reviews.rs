//! Review resources (create-only, never stored): SelfSubjectReview (`kubectl auth
//! whoami`), SelfSubjectAccessReview / SubjectAccessReview / LocalSubjectAccessReview
//! (`kubectl auth can-i`), SelfSubjectRulesReview (`can-i --list`) and TokenReview. Each
//! asks the same authenticator and authorizer the request path uses.

use std::sync::Arc;

use nanokube_api::resources::ResourceDef;
use nanokube_api::ApiError;
use serde_json::{json, Value};

use crate::authn::{UserInfo, SYSTEM_MASTERS};
use crate::authz::Decision;
use crate::request::RequestInfo;
use crate::server::ApiServer;

fn attributes_to_request(spec: &Value, namespace_override: Option<&str>) -> Result<RequestInfo, ApiError> {
    if let Some(ra) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let s = |k: &str| ra.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Ok(RequestInfo {
            is_resource: true,
            verb: s("verb"),
            group: s("group"),
            version: s("version"),
            namespace: namespace_override.map(String::from).unwrap_or_else(|| s("namespace")),
            resource: s("resource"),
            subresource: s("subresource"),
            name: s("name"),
            ..Default::default()
        })
    } else if let Some(nr) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        Ok(RequestInfo {
            is_resource: false,
            verb: nr.get("verb").and_then(Value::as_str).unwrap_or("").to_string(),
            path: nr.get("path").and_then(Value::as_str).unwrap_or("").to_string(),
            ..Default::default()
        })
    } else {
        Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "authorization.k8s.io",
            "",
            vec![nanokube_api::error::Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
                field: "spec.resourceAttributes".into(),
            }],
        ))
    }
}

fn access_status(server: &ApiServer, user: &UserInfo, req: &RequestInfo) -> Value {
    match server.authz.authorize(user, req) {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) if !reason.is_empty() => json!({"allowed": false, "denied": true, "reason": reason}),
        Decision::Deny(_) => json!({"allowed": false, "denied": true}),
        Decision::NoOpinion(reason) if !reason.is_empty() => json!({"allowed": false, "reason": reason}),
        Decision::NoOpinion(_) => json!({"allowed": false}),
    }
}

/// Answer a review request.
pub fn review(server: &Arc<ApiServer>, user: &UserInfo, def: &ResourceDef, namespace: &str, mut obj: Value) -> Result<Value, ApiError> {
    obj["kind"] = json!(def.kind);
    obj["apiVersion"] = json!(def.api_version());
    if obj.get("metadata").is_none_or(Value::is_null) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    let spec = obj.get("spec").cloned().unwrap_or(json!({}));
    match def.plural {
        "selfsubjectreviews" => {
            obj["status"] = json!({"userInfo": user.to_json()});
        }
        "selfsubjectaccessreviews" => {
            let req = attributes_to_request(&spec, None)?;
            obj["status"] = access_status(server, user, &req);
        }
        "localsubjectaccessreviews" | "subjectaccessreviews" => {
            let who = UserInfo {
                name: spec.get("user").and_then(Value::as_str).unwrap_or("").to_string(),
                uid: spec.get("uid").and_then(Value::as_str).unwrap_or("").to_string(),
                groups: spec
                    .get("groups")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|g| g.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
                extra: Default::default(),
            };
            if def.plural == "localsubjectaccessreviews" {
                // As upstream: the review lives in the URL's namespace and may only ask
                // about that namespace.
                let body_ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
                if !body_ns.is_empty() && body_ns != namespace {
                    return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
                }
                obj["metadata"]["namespace"] = json!(namespace);
                if let Some(ra) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
                    let asked = ra.get("namespace").and_then(Value::as_str).unwrap_or("");
                    if asked != namespace {
                        return Err(ApiError::invalid(
                            def.kind,
                            def.group,
                            "",
                            vec![nanokube_api::error::Cause {
                                reason: "FieldValueInvalid".into(),
                                message: format!("Invalid value: {asked:?}: must match metadata.namespace"),
                                field: "spec.resourceAttributes.namespace".into(),
                            }],
                        ));
                    }
                }
            }
            let req = attributes_to_request(&spec, None)?;
            obj["status"] = access_status(server, &who, &req);
        }
        "selfsubjectrulesreviews" => {
            let ns = spec.get("namespace").and_then(Value::as_str).unwrap_or("");
            let mut resource_rules = Vec::new();
            let mut non_resource_rules = Vec::new();
            if user.in_group(SYSTEM_MASTERS) {
                resource_rules.push(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
                non_resource_rules.push(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
            }
            for r in server.rbac.rules_for(user, ns) {
                if r.non_resource_urls.is_empty() {
                    let mut rule = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
                    if !r.resource_names.is_empty() {
                        rule["resourceNames"] = json!(r.resource_names);
                    }
                    resource_rules.push(rule);
                } else {
                    non_resource_rules.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
                }
            }
            obj["status"] = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false});
        }
        "tokenreviews" => {
            let token = spec.get("token").and_then(Value::as_str).unwrap_or("");
            let audiences: Vec<String> =
                spec.get("audiences").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
            let api_audiences = server.tokens.as_ref().map(|t| t.api_audiences.clone()).unwrap_or_default();
            // As upstream: authenticated only for the requested audiences (the API's when
            // none are asked for), and `status.audiences` is what token and request share.
            let found = server.authn.tokens.iter().find_map(|a| a.authenticate_for(token, &audiences, &api_audiences));
            obj["status"] = match found {
                Some(Ok((u, common))) => json!({"authenticated": true, "user": u.to_json(), "audiences": common}),
                _ => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
            };
        }
        _ => return Err(ApiError::path_not_found()),
    }
    Ok(obj)
}
