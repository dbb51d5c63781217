//! API errors, rendered as `metav1.Status` bodies exactly as kube-apiserver writes them.

use serde_json::{json, Value};

/// One entry of `details.causes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// Machine-readable reason, e.g. `FieldValueRequired`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// JSON path of the field, e.g. `spec.containers[0].image`.
    pub field: String,
}

/// An error answered to a client: HTTP code, Status reason, message and details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code, also written into the Status body.
    pub code: u16,
    /// Status `reason` (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// Status `message`, as kubectl prints it after `Error from server (<reason>): `.
    pub message: String,
    /// `details` (boxed: errors travel in `Result`s everywhere and stay small).
    pub details: Box<Details>,
}

/// `metav1.StatusDetails`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Details {
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.kind`: the plural resource for NotFound/AlreadyExists/Conflict, the Kind for Invalid.
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds`, also sent as a `Retry-After` header.
    pub retry_after: Option<u32>,
    /// The Status's `metadata.continue`: set on the 410 for an expired continue token,
    /// a token that goes on from the same key at the newest revision (inconsistently).
    pub continue_token: Option<String>,
}

/// `"pods"` or `"deployments.apps"`: how upstream names a resource in messages.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    /// A bare error with a code, reason and message.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: Box::default() }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden with an already formatted message.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 404 NotFound for a named object: `pods "x" not found`.
    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{} \"{}\" not found", qualified(resource, group), name));
        e.details.name = Some(name.to_string());
        e.details.kind = Some(resource.to_string());
        if !group.is_empty() {
            e.details.group = Some(group.to_string());
        }
        e
    }

    /// 404 for a path no handler serves.
    pub fn path_not_found() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource")
    }

    /// 409 AlreadyExists: `pods "x" already exists`.
    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        let mut e = Self::new(409, "AlreadyExists", format!("{} \"{}\" already exists", qualified(resource, group), name));
        e.details.name = Some(name.to_string());
        e.details.kind = Some(resource.to_string());
        if !group.is_empty() {
            e.details.group = Some(group.to_string());
        }
        e
    }

    /// 409 Conflict with upstream's optimistic-lock message.
    pub fn conflict(resource: &str, group: &str, name: &str) -> Self {
        Self::conflict_msg(resource, group, name, "the object has been modified; please apply your changes to the latest version and try again")
    }

    /// 409 Conflict with a custom reason text after "Operation cannot be fulfilled on ...".
    pub fn conflict_msg(resource: &str, group: &str, name: &str, why: &str) -> Self {
        let mut e = Self::new(409, "Conflict", format!("Operation cannot be fulfilled on {} \"{}\": {}", qualified(resource, group), name, why));
        e.details.name = Some(name.to_string());
        e.details.kind = Some(resource.to_string());
        if !group.is_empty() {
            e.details.group = Some(group.to_string());
        }
        e
    }

    /// 422 Invalid: `Pod "x" is invalid: <cause>, <cause>`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list = causes.iter().map(|c| if c.field.is_empty() { c.message.clone() } else { format!("{}: {}", c.field, c.message) }).collect::<Vec<_>>();
        let joined = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        let mut e = Self::new(422, "Invalid", format!("{} \"{}\" is invalid: {}", qualified(kind, group), name, joined));
        e.details.name = Some(name.to_string());
        e.details.kind = Some(kind.to_string());
        if !group.is_empty() {
            e.details.group = Some(group.to_string());
        }
        e.details.causes = causes;
        e
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 406 NotAcceptable.
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    /// 410 Expired (Gone).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf; got {content_type}"))
    }

    /// 504 Timeout for a resourceVersion newer than the store's, with `Retry-After`.
    pub fn too_large_resource_version(requested: i64, current: i64) -> Self {
        let mut e = Self::new(504, "Timeout", format!("Too large resource version: {requested}, current: {current}"));
        e.details.causes.push(Cause { reason: "ResourceVersionTooLarge".into(), message: "Too large resource version".into(), field: String::new() });
        e.details.retry_after = Some(1);
        e
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` as kube-apiserver writes it: fields in Go's order (`kind`,
    /// `apiVersion`, `metadata`, `status`, `message`, `reason`, `details` {`name`, `group`,
    /// `kind`, `causes`, `retryAfterSeconds`}, `code`), empty ones left out; the trailing
    /// newline is the caller's.
    pub fn to_status_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.status_out()).unwrap_or_default()
    }

    /// The same `metav1.Status` as a value (watch `ERROR` events, and bodies embedded in
    /// other objects).
    pub fn to_status(&self) -> Value {
        serde_json::to_value(self.status_out()).unwrap_or(Value::Null)
    }

    fn status_out(&self) -> StatusOut<'_> {
        let d = &self.details;
        let details = DetailsOut {
            name: d.name.as_deref(),
            group: d.group.as_deref(),
            kind: d.kind.as_deref(),
            causes: d.causes.iter().map(|c| CauseOut { reason: &c.reason, message: &c.message, field: &c.field }).collect(),
            retry_after_seconds: d.retry_after,
        };
        let has_details =
            details.name.is_some() || details.group.is_some() || details.kind.is_some() || !details.causes.is_empty() || details.retry_after_seconds.is_some();
        StatusOut {
            kind: "Status",
            api_version: "v1",
            metadata: match &d.continue_token {
                Some(c) => json!({ "continue": c }),
                None => json!({}),
            },
            status: "Failure",
            message: &self.message,
            reason: self.reason,
            details: has_details.then_some(details),
            code: self.code,
        }
    }
}

/// `metav1.Status` in Go's field order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusOut<'a> {
    kind: &'a str,
    api_version: &'a str,
    metadata: Value,
    status: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<DetailsOut<'a>>,
    code: u16,
}

/// `metav1.StatusDetails` in Go's field order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailsOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<CauseOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u32>,
}

/// `metav1.StatusCause`.
#[derive(serde::Serialize)]
struct CauseOut<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    field: &'a str,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A `Status` with `status: Success`, as DELETE returns for types that do not return the object.
pub fn success_status(name: &str, group: &str, kind: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": kind, "uid": uid});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}
