//! Calling admission webhooks: an `AdmissionReview` POSTed over TLS (verified with the
//! webhook's `caBundle`) to its `url` or its Service, the answer read back (allowed or
//! the denial's Status, a JSON patch for mutating webhooks, warnings), with upstream's
//! `failurePolicy`, `timeoutSeconds`, `sideEffects` on dry runs, `matchConditions` and
//! `reinvocationPolicy`.
//!
//! A Service reference is resolved to one of its ready endpoints ([`crate::backend`]),
//! with the TLS server name `<name>.<namespace>.svc`.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use nanokube_api::ApiError;
use serde_json::{json, Value};

use super::matching::{any_rule_matches, cel_vars, conditions_match, selectors_match};
use super::{Attributes, Operation};
use crate::registry::Registry;

/// The most of a webhook's answer read (upstream reads at most 3 MiB of a patch body
/// per object; answers are small).
const MAX_RESPONSE: usize = 10 << 20;

/// Why a webhook could not be called or answered nonsense: failurePolicy decides.
struct CallError(String);

/// One webhook of a configuration, as read from it.
struct Hook<'a> {
    name: &'a str,
    spec: &'a Value,
}

impl Hook<'_> {
    fn fail_open(&self) -> bool {
        self.spec.get("failurePolicy").and_then(Value::as_str) == Some("Ignore")
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.spec.get("timeoutSeconds").and_then(Value::as_u64).unwrap_or(10).clamp(1, 30))
    }

    fn reinvoke_if_needed(&self) -> bool {
        self.spec.get("reinvocationPolicy").and_then(Value::as_str) == Some("IfNeeded")
    }

    /// Whether the webhook sees this write: rules, selectors, match conditions. A
    /// condition that cannot be evaluated is an error unless the webhook fails open.
    fn matches(&self, registry: &Registry, attrs: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) -> Result<bool, ApiError> {
        if !any_rule_matches(self.spec.get("rules"), attrs) {
            return Ok(false);
        }
        let selected = selectors_match(registry, self.spec, attrs, obj, old).map_err(ApiError::bad_request)?;
        if !selected {
            return Ok(false);
        }
        match conditions_match(self.spec.get("matchConditions"), &cel_vars(attrs, obj, old)) {
            Ok(m) => Ok(m),
            Err(_) if self.fail_open() => Ok(false),
            Err(e) => Err(ApiError::internal(format!("failed calling webhook \"{}\": {e}", self.name))),
        }
    }
}

fn hooks(configs: &[Value]) -> Vec<Hook<'_>> {
    configs
        .iter()
        .flat_map(|c| c.get("webhooks").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default())
        .map(|spec| Hook { name: spec.get("name").and_then(Value::as_str).unwrap_or(""), spec })
        .collect()
}

/// The mutating webhooks in order; those with `reinvocationPolicy: IfNeeded` are called
/// once more if a later webhook changed the object after them.
pub(super) async fn run_mutating(
    registry: &Registry,
    attrs: &Attributes<'_>,
    configs: &[Value],
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<bool, ApiError> {
    let hooks = hooks(configs);
    let mut called = vec![false; hooks.len()];
    // The index of the last webhook whose patch changed the object.
    let mut last_change = None;
    let delete = attrs.operation == Operation::Delete;
    for (i, hook) in hooks.iter().enumerate() {
        let current = (!delete).then_some(&*obj);
        if !hook.matches(registry, attrs, current, old)? {
            continue;
        }
        called[i] = true;
        let answer = call(registry, attrs, hook, current, old).await?;
        // A delete has no object to patch.
        if let (Some(patch), false) = (answer, delete) {
            if apply_patch(hook.name, obj, &patch)? {
                last_change = Some(i);
            }
        }
    }
    // Reinvocation, once: the IfNeeded webhooks called before the last change.
    if let Some(last) = last_change {
        for (i, hook) in hooks.iter().enumerate().take(last) {
            if called[i] && hook.reinvoke_if_needed() {
                if let Some(patch) = call(registry, attrs, hook, Some(&*obj), old).await? {
                    apply_patch(hook.name, obj, &patch)?;
                }
            }
        }
    }
    Ok(last_change.is_some())
}

/// The validating webhooks (each one's denial is the write's error).
pub(super) async fn run_validating(
    registry: &Registry,
    attrs: &Attributes<'_>,
    configs: &[Value],
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    for hook in hooks(configs) {
        if hook.matches(registry, attrs, obj, old)? {
            call(registry, attrs, &hook, obj, old).await?;
        }
    }
    Ok(())
}

/// Apply a webhook's JSON patch; whether it changed anything.
fn apply_patch(name: &str, obj: &mut Value, patch: &Value) -> Result<bool, ApiError> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| ApiError::internal(format!("received invalid webhook response: {e} (webhook \"{name}\")")))?;
    let before = obj.clone();
    json_patch::patch(obj, &patch).map_err(|e| ApiError::internal(format!("JSON patch from webhook \"{name}\" could not be applied: {e}")))?;
    Ok(*obj != before)
}

/// Call one webhook. `Ok(Some(patch))` when it allowed the write with a patch, `Ok(None)`
/// when it allowed it as is (or could not be reached and fails open).
async fn call(registry: &Registry, attrs: &Attributes<'_>, hook: &Hook<'_>, obj: Option<&Value>, old: Option<&Value>) -> Result<Option<Value>, ApiError> {
    if attrs.dry_run && !matches!(hook.spec.get("sideEffects").and_then(Value::as_str), Some("None" | "NoneOnDryRun")) {
        let mut e = ApiError::bad_request(format!("admission webhook \"{}\" does not support dry run", hook.name));
        e.details.name = Some(attrs.name.to_string());
        return Err(e);
    }
    let versions: Vec<&str> =
        hook.spec.get("admissionReviewVersions").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let version = if versions.contains(&"v1") || versions.is_empty() { "v1" } else { "v1beta1" };
    let uid = uuid::Uuid::new_v4().to_string();
    let mut request = attrs.request(&uid);
    request["object"] = obj.cloned().unwrap_or(Value::Null);
    request["oldObject"] = old.cloned().unwrap_or(Value::Null);
    let review = json!({"kind": "AdmissionReview", "apiVersion": format!("admission.k8s.io/{version}"), "request": request});
    let answer = match post(registry, hook, &review).await {
        Ok(a) => a,
        Err(CallError(why)) if hook.fail_open() => {
            tracing::warn!(webhook = hook.name, "failed calling webhook, failing open: {why}");
            return Ok(None);
        }
        Err(CallError(why)) => return Err(ApiError::internal(format!("failed calling webhook \"{}\": {why}", hook.name))),
    };
    let response = answer.get("response").cloned().unwrap_or(Value::Null);
    let got_uid = response.get("uid").and_then(Value::as_str).unwrap_or("");
    if got_uid != uid {
        let why = format!("expected response.uid=\"{uid}\", got \"{got_uid}\"");
        if hook.fail_open() {
            return Ok(None);
        }
        return Err(ApiError::internal(format!("failed calling webhook \"{}\": received invalid webhook response: {why}", hook.name)));
    }
    for w in response.get("warnings").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
        if let Some(w) = w.as_str() {
            attrs.warn(w.to_string());
        }
    }
    if response.get("allowed").and_then(Value::as_bool) != Some(true) {
        return Err(denied(hook.name, response.get("result").or_else(|| response.get("status"))));
    }
    match response.get("patch").and_then(Value::as_str) {
        None | Some("") => Ok(None),
        Some(b64) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ApiError::internal(format!("failed calling webhook \"{}\": received invalid webhook response: {e}", hook.name)))?;
            let patch: Value = serde_json::from_slice(&raw)
                .map_err(|e| ApiError::internal(format!("failed calling webhook \"{}\": received invalid webhook response: {e}", hook.name)))?;
            Ok(Some(patch))
        }
    }
}

/// A denial, as upstream's `webhookerrors.ToStatusErr` makes it: the webhook's code (400
/// or above, 400 when it gave none) and reason, its message after who denied.
fn denied(name: &str, status: Option<&Value>) -> ApiError {
    let empty = Value::Null;
    let status = status.unwrap_or(&empty);
    let code = status.get("code").and_then(Value::as_u64).map_or(400, |c| c.clamp(400, 599) as u16);
    let denied_by = format!("admission webhook \"{name}\" denied the request");
    let message = status.get("message").and_then(Value::as_str).filter(|m| !m.is_empty());
    let reason = status.get("reason").and_then(Value::as_str).unwrap_or("");
    let text = match (message, reason) {
        (Some(m), _) => format!("{denied_by}: {m}"),
        (None, r) if !r.is_empty() => format!("{denied_by}: {r}"),
        _ => format!("{denied_by} without explanation"),
    };
    ApiError::new(code, known_reason(reason), text)
}

/// A Status reason a webhook gave, as one of upstream's (others are dropped).
fn known_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    KNOWN.iter().find(|k| **k == reason).copied().unwrap_or("")
}

/// Where a webhook is: the address to connect to, the TLS server name, the URL (for
/// messages and the request line's path).
struct Target {
    connect: String,
    server_name: String,
    url: String,
    path_and_query: String,
}

fn target(registry: &Registry, hook: &Hook<'_>) -> Result<Target, CallError> {
    let cc = hook.spec.get("clientConfig").cloned().unwrap_or(Value::Null);
    let timeout = format!("timeout={}s", hook.timeout().as_secs());
    if let Some(url) = cc.get("url").and_then(Value::as_str) {
        let uri: http::Uri = url.parse().map_err(|e| CallError(format!("webhook URL {url:?}: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(CallError(format!("webhook URL {url:?} is not https")));
        }
        let host = uri.host().ok_or_else(|| CallError(format!("webhook URL {url:?} has no host")))?.trim_matches(['[', ']']).to_string();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let sep = if path.contains('?') { '&' } else { '?' };
        return Ok(Target {
            connect: crate::backend::join_host_port(&host, uri.port_u16().unwrap_or(443).into()),
            server_name: host,
            url: url.to_string(),
            path_and_query: format!("{path}{sep}{timeout}"),
        });
    }
    let svc = cc.get("service").cloned().unwrap_or(Value::Null);
    let (ns, name) = (svc.get("namespace").and_then(Value::as_str).unwrap_or(""), svc.get("name").and_then(Value::as_str).unwrap_or(""));
    let port = svc.get("port").and_then(Value::as_i64).unwrap_or(443);
    let path = svc.get("path").and_then(Value::as_str).unwrap_or("/");
    let url = format!("https://{name}.{ns}.svc:{port}{path}");
    let addr =
        crate::backend::resolve_service(registry, ns, name, port).map_err(|e| CallError(format!("failed to call webhook: Post \"{url}?{timeout}\": {e}")))?;
    Ok(Target { connect: addr, server_name: format!("{name}.{ns}.svc"), path_and_query: format!("{path}?{timeout}"), url })
}

/// POST the review and read the answer, all within the webhook's timeout.
async fn post(registry: &Registry, hook: &Hook<'_>, review: &Value) -> Result<Value, CallError> {
    let target = target(registry, hook)?;
    let post_err = |e: String| CallError(format!("failed to call webhook: Post \"{}?timeout={}s\": {e}", target.url, hook.timeout().as_secs()));
    let bundle = hook.spec.pointer("/clientConfig/caBundle").and_then(Value::as_str).unwrap_or("");
    let tls = crate::backend::tls_config(bundle, false, None).map_err(post_err)?;
    let body = Bytes::from(nanokube_api::go_order::to_vec(review));
    let exchange = async {
        let mut sender = crate::backend::connect(&target.connect, &target.server_name, tls).await?;
        let req = http::Request::post(&target.path_and_query)
            .header(http::header::HOST, &target.server_name)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE).collect().await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!(
                "an error on the server (\"{}\") has prevented the request from succeeding",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
        serde_json::from_slice::<Value>(&bytes).map_err(|e| format!("received invalid webhook response: {e}"))
    };
    match tokio::time::timeout(hook.timeout(), exchange).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(post_err(e)),
        Err(_) => Err(post_err("context deadline exceeded".into())),
    }
}
