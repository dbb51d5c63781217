//! Feeding and serving the access map (`nanokube_dashboard::map`): every request this
//! server answers is counted by identity, authentication method and what it touched,
//! and `GET /access-map` (a non-resource URL, so reading it takes an RBAC rule with
//! `nonResourceURLs: ["/access-map"]`, which `cluster-admin` has) draws it, as JSON or,
//! with `?format=svg`, as a standalone SVG.

use std::collections::HashMap;

use nanokube_api::resources;
use nanokube_dashboard::map::{Access, Paths};
use serde_json::Value;

use crate::authn::UserInfo;
use crate::registry::ListOptions;
use crate::request::RequestInfo;
use crate::server::ApiServer;

/// What one answered request tells the map.
pub struct Served<'a> {
    /// The identity authentication gave (none: the credential was refused).
    pub user: Option<&'a UserInfo>,
    /// The identity it acted as, when impersonating.
    pub impersonated: Option<&'a UserInfo>,
    /// The request's attributes.
    pub info: &'a RequestInfo,
    /// Whether authorization allowed it (none: not reached).
    pub allowed: Option<bool>,
    /// Why it was refused.
    pub reason: Option<&'a str>,
    /// Whether the connection presented a verified client certificate.
    pub certificate: bool,
    /// Whether the request carried an `Authorization` header.
    pub sent_authorization: bool,
    /// Whether it came through a proxy (an `X-Forwarded-For` header).
    pub forwarded: bool,
    /// The request URI as sent.
    pub uri: &'a str,
    /// The client's address (the first `X-Forwarded-For` hop, if any).
    pub source: &'a str,
    /// The status answered.
    pub code: u16,
}

/// Count one answered request.
pub fn record(server: &ApiServer, s: Served<'_>) {
    let via_dashboard = s.uri.starts_with("/dashboard/k8s/");
    let bearer = s.sent_authorization || via_dashboard;
    let (identity, groups) = match s.user {
        Some(u) => (u.name.clone(), u.groups.clone()),
        None => ("(refused credential)".to_string(), Vec::new()),
    };
    let method = if s.certificate && !via_dashboard {
        "x509 client certificate"
    } else if !bearer {
        "anonymous"
    } else if identity.starts_with("system:serviceaccount:") {
        "service-account token"
    } else if identity.starts_with("system:bootstrap:") {
        "bootstrap token"
    } else if s.user.is_none() {
        "bearer token (refused)"
    } else {
        "static token"
    };
    let mut via = Vec::new();
    if via_dashboard {
        via.push("dashboard session".to_string());
    }
    if s.forwarded {
        via.push("proxy".to_string());
    }
    if let Some(i) = s.impersonated {
        via.push(format!("impersonating {}", i.name));
    }
    let info = s.info;
    let target = if !info.is_resource {
        // Discovery and OpenAPI are many paths of one purpose: one target, so a kubectl's
        // start does not fill the map.
        let p = info.path.as_str();
        if p == "/api" || p == "/apis" || p.starts_with("/api/") || p.starts_with("/apis/") || p.starts_with("/openapi/") {
            "discovery (/api, /apis, /openapi)".to_string()
        } else {
            info.path.clone()
        }
    } else {
        let r = if info.subresource.is_empty() { info.resource.clone() } else { format!("{}/{}", info.resource, info.subresource) };
        if info.group.is_empty() {
            r
        } else {
            format!("{r}.{}", info.group)
        }
    };
    server.access_map.record(Access {
        identity,
        groups,
        method: method.to_string(),
        via,
        source: s.source.to_string(),
        verb: info.verb.clone(),
        target,
        namespace: info.namespace.clone(),
        allowed: s.allowed,
        code: s.code,
        reason: s.reason.unwrap_or("").to_string(),
        uri: s.uri.to_string(),
    });
}

/// The in-cluster paths the map draws besides the request stream.
fn paths(server: &ApiServer) -> Paths {
    let reg = &server.registry;
    let list = |plural: &str, group: &str, version: &str| -> Vec<Value> {
        resources::find(group, version, plural)
            .and_then(|def| reg.list(def, None, &ListOptions::default()).ok())
            .map(|l| l.items.iter().map(|o| o.to_value()).collect())
            .unwrap_or_default()
    };
    let s = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    let mut pods_by_ip = HashMap::new();
    for p in list("pods", "", "v1") {
        let ip = s(&p, "/status/podIP");
        if !ip.is_empty() && p.pointer("/spec/hostNetwork").and_then(Value::as_bool) != Some(true) {
            pods_by_ip.insert(ip, format!("{}/{}", s(&p, "/metadata/namespace"), s(&p, "/metadata/name")));
        }
    }
    let mut ready: HashMap<(String, String), usize> = HashMap::new();
    for slice in list("endpointslices", "discovery.k8s.io", "v1") {
        let key = (s(&slice, "/metadata/namespace"), s(&slice, "/metadata/labels/kubernetes.io~1service-name"));
        let n = slice
            .get("endpoints")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|e| e.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false)).count())
            .unwrap_or(0);
        *ready.entry(key).or_default() += n;
    }
    let mut services = Vec::new();
    let mut api_service = String::new();
    for svc in list("services", "", "v1") {
        let (ns, name) = (s(&svc, "/metadata/namespace"), s(&svc, "/metadata/name"));
        let ports = svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
        if ns == "default" && name == "kubernetes" {
            let port = ports.first().and_then(|p| p.get("port")).and_then(Value::as_u64).unwrap_or(443);
            api_service = format!("{}:{port}", s(&svc, "/spec/clusterIP"));
        }
        let kind = s(&svc, "/spec/type");
        if kind != "NodePort" && kind != "LoadBalancer" {
            continue;
        }
        let lb: Vec<String> = svc
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|i| i.get("ip").and_then(Value::as_str).map(String::from)).collect())
            .unwrap_or_default();
        for p in &ports {
            let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
            let mut entries = Vec::new();
            if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                entries.push(format!("NodePort 127.0.0.1:{np}"));
            }
            entries.extend(lb.iter().map(|ip| format!("LoadBalancer {ip}:{port}")));
            for e in entries {
                services.push((e, format!("Service {ns}/{name}:{port}"), ready.get(&(ns.clone(), name.clone())).copied().unwrap_or(0)));
            }
        }
    }
    services.sort();
    Paths { pods_by_ip, api_service, services }
}

/// `GET /access-map`: the map as JSON, or as SVG with `format=svg`.
pub fn serve(server: &ApiServer, svg: bool) -> (&'static str, String) {
    let paths = paths(server);
    let explain = |who: &str, groups: &[String], verb: &str, target: &str, ns: &str| -> Vec<String> {
        // Only resource targets have RBAC bindings worth naming here.
        let user = UserInfo { name: who.to_string(), groups: groups.to_vec(), ..Default::default() };
        let (resource, group) = target.split_once('.').unwrap_or((target, ""));
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        if target.starts_with("discovery") {
            return Vec::new();
        }
        if target.starts_with('/') {
            let req = RequestInfo { is_resource: false, verb: verb.to_string(), path: target.to_string(), ..Default::default() };
            return server.rbac.explain(&user, &req);
        }
        let req = RequestInfo {
            is_resource: true,
            verb: verb.to_string(),
            group: group.to_string(),
            resource: resource.to_string(),
            subresource: subresource.to_string(),
            namespace: ns.to_string(),
            ..Default::default()
        };
        server.rbac.explain(&user, &req)
    };
    if svg {
        ("image/svg+xml", server.access_map.svg(&paths, &explain))
    } else {
        ("application/json", server.access_map.to_json(&paths, &explain).to_string())
    }
}
