//! `pods/proxy` and `services/proxy`: a request passed on to a pod's IP and port, or to a
//! ready endpoint of a Service's port (`/api/v1/namespaces/<ns>/pods|services/
//! [https:]<name>[:<port>]/proxy/<path>`), after this server authorized the caller for the
//! `proxy` subresource (upgrades included: the connection is switched only when the
//! backend answers `101`, see [`crate::node_proxy`]).
//!
//! Where upstream's ResourceLocation is followed: a pod's port defaults to its first
//! container port; a Service's port is a port name or number (a number is turned into its
//! port's name), and an endpoint is chosen at random among the ready ones with that port
//! name; `https` is spoken without verifying the backend's certificate (as
//! kube-apiserver's proxy transport). Different from upstream, which refuses loopback
//! backends: nanokube's pod IPs are loopback addresses, so a pod's IP is reached through
//! its node (inside its network namespace).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use http::Response;
use nanokube_api::{resources, ApiError};
use serde_json::Value;

use crate::http::Body;
use crate::node_proxy::{unavailable, Forward};
use crate::pod_portforward::PortForwardNodes;
use crate::registry::{ListOptions, Registry};

/// `[scheme:]name[:port]` (upstream's `SplitSchemeNamePort`).
pub fn split_scheme_name_port(id: &str) -> Result<(&str, &str, &str), ApiError> {
    let parts: Vec<&str> = id.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("", *name, ""),
        [name, port] => ("", *name, *port),
        [scheme, name, port] => (*scheme, *name, *port),
        _ => return Err(ApiError::bad_request(format!("invalid request {id:?}"))),
    };
    if name.is_empty() || !matches!(scheme, "" | "http" | "https") {
        return Err(ApiError::bad_request(format!("invalid request {id:?}")));
    }
    Ok((scheme, name, port))
}

/// Where a proxied request goes.
pub struct Location {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The address.
    pub addr: SocketAddrV4,
    /// The node whose network holds it (`None`: the host's).
    pub node: Option<String>,
}

/// The pod `name`'s IP at `port` (a number; empty: its first container port).
pub fn pod_location(registry: &Registry, namespace: &str, id: &str) -> Result<Location, ApiError> {
    let (scheme, name, port) = split_scheme_name_port(id)?;
    let def = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no pods"))?;
    let pod = registry.get(def, namespace, name)?;
    let pod = pod.value();
    let port = if port.is_empty() {
        pod.pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|c| c.pointer("/ports/0/containerPort").and_then(Value::as_u64))
            .map(|p| p.to_string())
            .unwrap_or_else(|| if scheme == "https" { "443".into() } else { "80".into() })
    } else {
        port.to_string()
    };
    let port: u16 = port.parse().map_err(|_| ApiError::bad_request(format!("invalid port {port:?}")))?;
    let ip = pod.pointer("/status/podIP").and_then(Value::as_str).unwrap_or("");
    let ip: Ipv4Addr = ip.parse().map_err(|_| ApiError::new(503, "ServiceUnavailable", format!("address not allowed: pod {name} has no IP")))?;
    let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()).map(String::from);
    Ok(Location { scheme: if scheme == "https" { "https" } else { "http" }, addr: SocketAddrV4::new(ip, port), node })
}

/// A ready endpoint of the Service `id`'s port, with upstream's errors: a Service port
/// number the Service lacks and a Service without ready endpoints are 503, a Service
/// without an Endpoints object (ExternalName, no selector) is the Endpoints' 404.
pub fn service_location(registry: &Registry, namespace: &str, id: &str) -> Result<Location, ApiError> {
    let (scheme, name, port) = split_scheme_name_port(id)?;
    let def = resources::find("", "v1", "services").ok_or_else(|| ApiError::internal("no services"))?;
    let svc = registry.get(def, namespace, name)?;
    let svc = svc.value();
    let mut port_name = port.to_string();
    if let Ok(number) = port.parse::<i64>() {
        let ports = svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
        let found = ports.iter().find(|p| p.get("port").and_then(Value::as_i64) == Some(number));
        port_name = found
            .map(|p| p.get("name").and_then(Value::as_str).unwrap_or("").to_string())
            .ok_or_else(|| ApiError::new(503, "ServiceUnavailable", format!("no service port {number} found for service {name:?}")))?;
    }
    // As upstream's ResourceLocation: the Service's Endpoints must exist (an
    // ExternalName or selector-less Service has none: 404) and have subsets.
    let endpoints_def = resources::find("", "v1", "endpoints").ok_or_else(|| ApiError::internal("no endpoints"))?;
    let endpoints = registry.get(endpoints_def, namespace, name)?;
    if endpoints.value().get("subsets").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        return Err(ApiError::new(503, "ServiceUnavailable", format!("no endpoints available for service {name:?}")));
    }
    let scheme = if scheme == "https" { "https" } else { "http" };
    let mut ready: Vec<Location> = Vec::new();
    if let Some(slices) = resources::find("discovery.k8s.io", "v1", "endpointslices") {
        let labels = nanokube_api::selector::LabelSelector::parse(&format!("kubernetes.io/service-name={name}")).map_err(|e| ApiError::internal(e.message))?;
        let list = registry.list(slices, Some(namespace), &ListOptions { labels, ..Default::default() })?;
        for slice in &list.items {
            let slice = slice.value();
            let Some(port) = slice
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
                .and_then(|p| p.get("port")?.as_u64())
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for ep in slice.get("endpoints").and_then(Value::as_array).into_iter().flatten() {
                if ep.pointer("/conditions/ready") == Some(&Value::Bool(false)) {
                    continue;
                }
                let node = ep.get("nodeName").and_then(Value::as_str).map(String::from);
                for ip in ep.get("addresses").and_then(Value::as_array).into_iter().flatten().filter_map(|a| a.as_str()?.parse::<Ipv4Addr>().ok()) {
                    ready.push(Location { scheme, addr: SocketAddrV4::new(ip, port), node: node.clone() });
                }
            }
        }
    }
    if ready.is_empty() {
        return Err(ApiError::new(503, "ServiceUnavailable", format!("no endpoints available for service {id:?}")));
    }
    let i = fastrand::usize(..ready.len());
    Ok(ready.swap_remove(i))
}

/// Pass `fwd` on to `location`, dialled through its node.
pub async fn proxy(nodes: &PortForwardNodes, location: Location, fwd: Forward<'_>) -> Result<Response<Body>, ApiError> {
    let stream = match &location.node {
        Some(node) => nodes.reach_node(node)?.connect_to(location.addr).await.map_err(unavailable)?,
        None => tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(location.addr))
            .await
            .map_err(|_| unavailable(format!("dial tcp {}: i/o timeout", location.addr)))?
            .map_err(|e| unavailable(format!("dial tcp {}: {e}", location.addr)))?,
    };
    let addr = location.addr.to_string();
    if location.scheme == "https" {
        let tls = crate::backend::tls_config("", true, None).map_err(ApiError::internal)?;
        let name = rustls::pki_types::ServerName::IpAddress((*location.addr.ip()).into());
        let tls_stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls)).connect(name, stream).await.map_err(|e| unavailable(format!("tls: {e}")))?;
        return crate::node_proxy::send_over(tls_stream, &addr, fwd).await;
    }
    crate::node_proxy::send_over(stream, &addr, fwd).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_name_port() {
        assert_eq!(split_scheme_name_port("web").unwrap(), ("", "web", ""));
        assert_eq!(split_scheme_name_port("web:http").unwrap(), ("", "web", "http"));
        assert_eq!(split_scheme_name_port("https:web:443").unwrap(), ("https", "web", "443"));
        assert_eq!(split_scheme_name_port("https:web:").unwrap(), ("https", "web", ""));
        assert!(split_scheme_name_port("ftp:web:21").is_err());
        assert!(split_scheme_name_port("a:b:c:d").is_err());
        assert!(split_scheme_name_port(":80").is_err());
    }
}
