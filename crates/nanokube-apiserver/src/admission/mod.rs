//! PodSecurity (`pod_security`) and dynamic admission: the admission webhooks (`MutatingWebhookConfiguration`,
//! `ValidatingWebhookConfiguration`) and `ValidatingAdmissionPolicy` with its bindings,
//! applied to every write the registry makes, as kube-apiserver's
//! `MutatingAdmissionWebhook`, `ValidatingAdmissionPolicy` and
//! `ValidatingAdmissionWebhook` plugins do.
//!
//! Order, as upstream: defaulting and the built-in mutating plugins (in the registry),
//! then the mutating webhooks ([`mutate`]; defaults run again on what they return),
//! then validation, then the policies and the validating webhooks ([`validate`]), then
//! the store. Objects of `admissionregistration.k8s.io` itself are never sent through
//! them, so a broken webhook can always be removed.
//!
//! Configurations are read from the store on each write (an in-memory prefix scan:
//! nothing is called when there are none).

mod certificates;
pub mod configuration;
mod matching;
pub mod node_restriction;
pub mod pod_security;
mod policy;
mod quota;
mod webhook;

use std::sync::Mutex;

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::ApiError;
use serde_json::{json, Value};

use crate::authn::UserInfo;
use crate::registry::{ListOptions, Registry};

/// What is being done, as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A create.
    Create,
    /// An update (PUT, PATCH, apply, a subresource write).
    Update,
    /// A delete.
    Delete,
}

impl Operation {
    /// The name in rules and AdmissionReviews.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }

    fn options_kind(self) -> &'static str {
        match self {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
        }
    }
}

/// Asks the server's authorizer whether the requester may do something besides the
/// request itself (for plugins that check a second permission, as CertificateApproval).
pub type Permission = std::sync::Arc<dyn Fn(&crate::request::RequestInfo) -> bool + Send + Sync>;

/// Who asked for a write, and the warnings admission has for them.
pub struct Requester {
    /// The user (after impersonation).
    pub user: UserInfo,
    warnings: Mutex<Vec<String>>,
    /// Audit annotations admission added (PodSecurity's), for the request's audit event.
    annotations: Mutex<Vec<(String, String)>>,
    permission: Option<Permission>,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Requester {
    /// A requester with no warnings yet.
    pub fn new(user: UserInfo) -> Self {
        Requester { user, warnings: Mutex::new(Vec::new()), annotations: Mutex::new(Vec::new()), permission: None }
    }

    /// A requester whose other permissions `permission` answers.
    pub fn with_permission(mut self, permission: Permission) -> Self {
        self.permission = Some(permission);
        self
    }

    /// Whether the requester may do `req` (a requester without an authorizer, the
    /// server's own, may).
    pub fn may(&self, req: &crate::request::RequestInfo) -> bool {
        self.permission.as_ref().is_none_or(|p| p(req))
    }

    fn warn(&self, w: String) {
        self.warnings.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(w);
    }

    /// The warnings webhooks and policies gave (Warning headers), taken once.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn annotate(&self, key: String, value: String) {
        let mut a = self.annotations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        a.retain(|(k, _)| *k != key);
        a.push((key, value));
    }

    /// The audit annotations admission added (a later write of a key replaces it).
    pub fn audit_annotations(&self) -> Vec<(String, String)> {
        self.annotations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// One write, as admission sees it.
#[derive(Clone, Copy)]
pub struct Attributes<'a> {
    /// The resource written (as requested).
    pub def: &'a ResourceDef,
    /// Create, update or delete.
    pub operation: Operation,
    /// Namespace ("" for cluster-scoped resources).
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The subresource written ("" for the object itself).
    pub subresource: &'a str,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// Who asks; `None` for the server's own controllers.
    pub requester: Option<&'a Requester>,
}

impl Attributes<'_> {
    /// Whether dynamic admission applies at all (not to its own configuration objects).
    fn applies(&self) -> bool {
        self.def.group != "admissionregistration.k8s.io"
    }

    /// The user as AdmissionReview and CEL `request.userInfo` show it; the server's own
    /// controllers appear as the loopback user, as upstream's in-process clients do.
    fn user_info(&self) -> Value {
        match self.requester {
            Some(r) => {
                let mut u = json!({"username": r.user.name, "groups": r.user.groups});
                if !r.user.uid.is_empty() {
                    u["uid"] = json!(r.user.uid);
                }
                if !r.user.extra.is_empty() {
                    u["extra"] = json!(r.user.extra);
                }
                u
            }
            None => json!({"username": "system:apiserver", "groups": ["system:authenticated", "system:masters"]}),
        }
    }

    /// The `request` of an AdmissionReview (and of CEL expressions), without the objects.
    fn request(&self, uid: &str) -> Value {
        let gvk = json!({"group": self.def.group, "version": self.def.version, "kind": self.def.kind});
        let gvr = json!({"group": self.def.group, "version": self.def.version, "resource": self.def.plural});
        let mut r = json!({
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": self.name,
            "operation": self.operation.as_str(),
            "userInfo": self.user_info(),
            "dryRun": self.dry_run,
            "options": {"kind": self.operation.options_kind(), "apiVersion": "meta.k8s.io/v1"},
        });
        if !self.subresource.is_empty() {
            r["subResource"] = json!(self.subresource);
            r["requestSubResource"] = json!(self.subresource);
        }
        if !self.namespace.is_empty() {
            r["namespace"] = json!(self.namespace);
        }
        r
    }

    fn warn(&self, w: String) {
        if let Some(r) = self.requester {
            r.warn(w);
        }
    }

    /// Add an annotation to the request's audit event.
    fn annotate(&self, key: String, value: String) {
        if let Some(r) = self.requester {
            r.annotate(key, value);
        }
    }
}

/// The mutating webhooks, in order (configurations by name, then each one's webhooks);
/// `obj` is changed by their patches. Returns whether anything changed.
pub async fn mutate(registry: &Registry, attrs: &Attributes<'_>, obj: &mut Value, old: Option<&Value>) -> Result<bool, ApiError> {
    if !attrs.applies() {
        return Ok(false);
    }
    let configs = configurations(registry, "mutatingwebhookconfigurations");
    if configs.is_empty() {
        return Ok(false);
    }
    webhook::run_mutating(registry, attrs, &configs, obj, old).await
}

/// PodSecurity, then the validating admission policies, then the validating webhooks.
/// `obj` is `None` for a delete.
pub async fn validate(registry: &Registry, attrs: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
    if attrs.def.group.is_empty() && attrs.def.plural == "namespaces" {
        if let Some(ns) = obj {
            pod_security::check_namespace_labels(ns, old)?;
        }
        pod_security::check_namespace_update(registry, attrs, obj, old);
        pod_security::check_exempt_namespace_create(registry, attrs, obj);
    }
    pod_security::check(registry, attrs, obj, old)?;
    certificates::check(attrs, obj, old)?;
    node_restriction::check(attrs, obj, old)?;
    if !attrs.applies() {
        return Ok(());
    }
    let bindings = configurations(registry, "validatingadmissionpolicybindings");
    if !bindings.is_empty() {
        policy::run(registry, attrs, &bindings, obj, old)?;
    }
    let configs = configurations(registry, "validatingwebhookconfigurations");
    if !configs.is_empty() {
        webhook::run_validating(registry, attrs, &configs, obj, old).await?;
    }
    // ResourceQuota last: it charges the quota for what is about to be stored.
    if let Some(obj) = obj {
        quota::charge(registry, attrs, obj, old).await?;
    }
    Ok(())
}

/// Every stored object of an `admissionregistration.k8s.io/v1` resource, by name.
fn configurations(registry: &Registry, plural: &str) -> Vec<Value> {
    let Some(def) = resources::find("admissionregistration.k8s.io", "v1", plural) else { return Vec::new() };
    match registry.list(def, None, &ListOptions::default()) {
        Ok(l) => l.items.iter().map(|o| o.to_value()).collect(),
        Err(_) => Vec::new(),
    }
}
