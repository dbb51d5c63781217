//! Authorization: may this user do this? The [`Authorizer`] trait is what RBAC plugs into;
//! [`Chain`] asks each authorizer in turn, as upstream's union authorizer does. The
//! superuser group `system:masters` is allowed ahead of any authorizer.

use crate::authn::{UserInfo, SYSTEM_MASTERS};
use crate::request::RequestInfo;

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied with a reason; no later authorizer is asked.
    Deny(String),
    /// This authorizer has no opinion (with why, or empty); ask the next. When every
    /// authorizer abstains the request is refused, its message carrying their reasons.
    NoOpinion(String),
}

/// An authorizer.
pub trait Authorizer: Send + Sync {
    /// Decide on a request.
    fn authorize(&self, user: &UserInfo, req: &RequestInfo) -> Decision;
}

impl<T: Authorizer + ?Sized> Authorizer for std::sync::Arc<T> {
    fn authorize(&self, user: &UserInfo, req: &RequestInfo) -> Decision {
        (**self).authorize(user, req)
    }
}

/// Allows `system:masters` everything (upstream's privileged-group authorizer).
pub struct SuperuserAuthorizer;

impl Authorizer for SuperuserAuthorizer {
    fn authorize(&self, user: &UserInfo, _req: &RequestInfo) -> Decision {
        if user.in_group(SYSTEM_MASTERS) {
            Decision::Allow
        } else {
            Decision::NoOpinion(String::new())
        }
    }
}

/// Paths everyone may GET, authenticated or not (upstream's `system:public-info-viewer`).
pub const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version", "/version/"];

/// Public health and version paths for everyone, without consulting RBAC (what the
/// default `system:public-info-viewer` binding grants; useful when RBAC is not loaded).
pub struct PublicInfoAuthorizer;

impl Authorizer for PublicInfoAuthorizer {
    fn authorize(&self, _user: &UserInfo, req: &RequestInfo) -> Decision {
        let public = !req.is_resource
            && req.verb == "get"
            && (PUBLIC_PATHS.contains(&req.path.as_str()) || ["/healthz/", "/livez/", "/readyz/"].iter().any(|p| req.path.starts_with(p)));
        if public {
            Decision::Allow
        } else {
            Decision::NoOpinion(String::new())
        }
    }
}

/// Asks authorizers in order; the first Allow or Deny wins; when all abstain, no opinion
/// (a refusal) with their reasons joined, as upstream's union authorizer.
pub struct Chain(pub Vec<Box<dyn Authorizer>>);

impl Authorizer for Chain {
    fn authorize(&self, user: &UserInfo, req: &RequestInfo) -> Decision {
        let mut reasons: Vec<String> = Vec::new();
        for a in &self.0 {
            match a.authorize(user, req) {
                Decision::NoOpinion(r) => {
                    if !r.is_empty() {
                        reasons.push(r);
                    }
                }
                d => return d,
            }
        }
        Decision::NoOpinion(reasons.join("\n"))
    }
}

/// Upstream's Forbidden message for a denied request.
pub fn forbidden_message(user: &UserInfo, req: &RequestInfo, reason: &str) -> String {
    let suffix = if reason.is_empty() { String::new() } else { format!(": {reason}") };
    if !req.is_resource {
        return format!("forbidden: User \"{}\" cannot {} path \"{}\"{}", user.name, req.verb, req.path, suffix);
    }
    let resource = if req.subresource.is_empty() { req.resource.clone() } else { format!("{}/{}", req.resource, req.subresource) };
    let qualified = if req.group.is_empty() { req.resource.clone() } else { format!("{}.{}", req.resource, req.group) };
    let subject = if req.name.is_empty() { format!("{qualified} is forbidden") } else { format!("{qualified} \"{}\" is forbidden", req.name) };
    let scope = if req.namespace.is_empty() { "at the cluster scope".to_string() } else { format!("in the namespace \"{}\"", req.namespace) };
    format!("{subject}: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {}{}", user.name, req.verb, resource, req.group, scope, suffix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::parse;

    #[test]
    fn messages_match_upstream() {
        let u = UserInfo::authenticated("system:serviceaccount:ns:sa", "", vec![]);
        let r = parse("GET", "/api/v1/namespaces/ns/pods", false);
        assert_eq!(
            forbidden_message(&u, &r, ""),
            "pods is forbidden: User \"system:serviceaccount:ns:sa\" cannot list resource \"pods\" in API group \"\" in the namespace \"ns\""
        );
        let r = parse("GET", "/api", false);
        assert_eq!(forbidden_message(&UserInfo::anonymous(), &r, ""), "forbidden: User \"system:anonymous\" cannot get path \"/api\"");
        let r = parse("GET", "/apis/apps/v1/namespaces/x/deployments/d", false);
        assert!(forbidden_message(&u, &r, "").starts_with("deployments.apps \"d\" is forbidden"));
    }

    #[test]
    fn chain_denies_without_opinion() {
        let c = Chain(vec![Box::new(SuperuserAuthorizer), Box::new(PublicInfoAuthorizer)]);
        let admin = UserInfo::authenticated("a", "", vec![SYSTEM_MASTERS.into()]);
        let r = parse("GET", "/api/v1/pods", false);
        assert_eq!(c.authorize(&admin, &r), Decision::Allow);
        assert!(matches!(c.authorize(&UserInfo::anonymous(), &r), Decision::NoOpinion(_)));
        assert_eq!(c.authorize(&UserInfo::anonymous(), &parse("GET", "/readyz", false)), Decision::Allow);
    }
}
