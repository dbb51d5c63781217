//! Request info: what a request asks for (verb, group, version, namespace, resource,
//! subresource, name), parsed from the path and method the way upstream's
//! `RequestInfoFactory` does. Authorization, audit and routing read it.

/// The parsed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// Whether this is a resource request (`/api/v1/...`, `/apis/g/v/...` with a resource).
    pub is_resource: bool,
    /// The path.
    pub path: String,
    /// Authorization verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or the lowercase HTTP method for non-resource requests.
    pub verb: String,
    /// `api` or `apis`.
    pub prefix: String,
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace, if any.
    pub namespace: String,
    /// Whether the path scoped the resource with a `namespaces/{ns}/` prefix (as opposed
    /// to naming a namespace object itself, `namespaces/{ns}[/status|/finalize]`). A
    /// cluster-scoped resource under such a prefix does not exist (404), even though
    /// authorization sees the namespace, as upstream's routing.
    pub namespace_scoped: bool,
    /// Resource plural.
    pub resource: String,
    /// Subresource (e.g. `status`).
    pub subresource: String,
    /// Object name.
    pub name: String,
    /// Remaining path after a subresource (proxy paths).
    pub rest: Vec<String>,
    /// The `fieldSelector` of a list, watch or deletecollection (empty otherwise), which
    /// authorizers may read (upstream's `AuthorizeWithSelectors`: the Node authorizer lets
    /// a node list only its own pods).
    pub field_selector: String,
}

/// Parse a request's method, path and whether it asks to watch.
pub fn parse(method: &str, path: &str, watch_param: bool) -> RequestInfo {
    let mut info = RequestInfo { path: path.to_string(), verb: method.to_ascii_lowercase(), ..Default::default() };
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (prefix, rest) = match parts.first() {
        Some(&"api") if parts.len() >= 2 => ("api", &parts[1..]),
        Some(&"apis") if parts.len() >= 3 => ("apis", &parts[1..]),
        _ => return info,
    };
    info.prefix = prefix.to_string();
    let rest = if prefix == "api" {
        info.version = rest[0].to_string();
        &rest[1..]
    } else {
        info.group = rest[0].to_string();
        info.version = rest[1].to_string();
        &rest[2..]
    };
    if rest.is_empty() {
        // Discovery of a group version.
        return info;
    }
    info.is_resource = true;
    let mut rest: Vec<&str> = rest.to_vec();
    // Deprecated `/watch/` path prefix.
    let mut watch = watch_param;
    if rest.first() == Some(&"watch") {
        watch = true;
        rest.remove(0);
    }
    // As upstream: `namespaces/{ns}/<resource>...` scopes a resource; `namespaces/{ns}`,
    // `namespaces/{ns}/status` and `namespaces/{ns}/finalize` are the namespace object
    // itself, whose namespace attribute is its own name.
    if rest.first() == Some(&"namespaces") && rest.len() >= 2 {
        info.namespace = rest[1].to_string();
        if rest.len() > 2 && rest[2] != "status" && rest[2] != "finalize" {
            rest.drain(..2);
            info.namespace_scoped = true;
        }
    }
    // `/api/v1/watch` alone (or `.../namespaces/x/` emptied above) names no resource.
    let Some(resource) = rest.first() else {
        info.is_resource = false;
        return info;
    };
    info.resource = resource.to_string();
    if let Some(n) = rest.get(1) {
        info.name = n.to_string();
    }
    if let Some(s) = rest.get(2) {
        info.subresource = s.to_string();
    }
    info.rest = rest.iter().skip(3).map(|s| s.to_string()).collect();
    info.verb = match method {
        "GET" | "HEAD" if watch => "watch",
        "GET" | "HEAD" if info.name.is_empty() => "list",
        "GET" | "HEAD" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if info.name.is_empty() => "deletecollection",
        "DELETE" => "delete",
        other => return RequestInfo { verb: other.to_ascii_lowercase(), ..info },
    }
    .to_string();
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_group_paths() {
        let i = parse("GET", "/api/v1/namespaces/default/pods", false);
        assert_eq!((i.verb.as_str(), i.namespace.as_str(), i.resource.as_str()), ("list", "default", "pods"));
        let i = parse("GET", "/apis/apps/v1/namespaces/ns/deployments/web/scale", false);
        assert_eq!((i.group.as_str(), i.name.as_str(), i.subresource.as_str(), i.verb.as_str()), ("apps", "web", "scale", "get"));
        let i = parse("GET", "/api/v1/pods", true);
        assert_eq!(i.verb, "watch");
        let i = parse("DELETE", "/api/v1/namespaces/ns/configmaps", false);
        assert_eq!(i.verb, "deletecollection");
    }

    #[test]
    fn namespace_objects() {
        let i = parse("GET", "/api/v1/namespaces/kube-system", false);
        assert_eq!((i.resource.as_str(), i.name.as_str(), i.namespace.as_str(), i.verb.as_str()), ("namespaces", "kube-system", "kube-system", "get"));
        let i = parse("PUT", "/api/v1/namespaces/x/finalize", false);
        assert_eq!((i.resource.as_str(), i.name.as_str(), i.subresource.as_str()), ("namespaces", "x", "finalize"));
        let i = parse("GET", "/api/v1/namespaces", false);
        assert_eq!((i.resource.as_str(), i.verb.as_str()), ("namespaces", "list"));
        assert!(!i.namespace_scoped);
        // A namespace "inside" a namespace is a scoped path to a cluster-scoped kind.
        let i = parse("GET", "/api/v1/namespaces/team/namespaces/kube-system", false);
        assert_eq!((i.resource.as_str(), i.name.as_str(), i.namespace.as_str()), ("namespaces", "kube-system", "team"));
        assert!(i.namespace_scoped);
    }

    #[test]
    fn non_resource() {
        let i = parse("GET", "/healthz", false);
        assert!(!i.is_resource);
        assert_eq!(i.verb, "get");
        let i = parse("GET", "/apis/apps/v1", false);
        assert!(!i.is_resource);
        // Found by fuzzing: the watch prefix alone panicked.
        let i = parse("GET", "/api/v1/watch", false);
        assert!(!i.is_resource);
    }
}
