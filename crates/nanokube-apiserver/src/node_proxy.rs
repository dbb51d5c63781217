//! `nodes/proxy`: a request passed on to the node's kubelet API
//! (`/api/v1/nodes/<name>[:<port>]/proxy/<path>`), after this server authorized the
//! caller for the `proxy` subresource of that node. The kubelet is reached at the node's
//! `InternalIP` (else another address) and its `daemonEndpoints` port, over TLS that
//! trusts the cluster CA only, presenting this server's kubelet client certificate.
//!
//! Upgrades (exec, attach, port-forward through the kubelet) pass through: the client's
//! connection is switched only when the kubelet answered `101`, so a failed upgrade can
//! never leave an authorized connection open to the client (the CVE-2018-1002105 class).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, Full};
use nanokube_api::ApiError;
use serde_json::Value;

use crate::http::Body;

/// Request headers not passed on: the caller's credentials and hop-by-hop headers (an
/// upgrade's own are put back).
const DROPPED: &[&str] = &["authorization", "host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"];

pub(crate) fn unavailable(why: impl std::fmt::Display) -> ApiError {
    ApiError::new(503, "ServiceUnavailable", format!("error trying to reach service: {why}"))
}

/// The kubelet's `host:port` for `node`: `port` when the request named one, else the
/// node's published kubelet port.
pub fn kubelet_address(node: &Value, port: Option<u16>) -> Result<(String, String), ApiError> {
    let addresses = node.pointer("/status/addresses").and_then(Value::as_array).cloned().unwrap_or_default();
    let by_type = |t: &str| {
        addresses.iter().find(|a| a.get("type").and_then(Value::as_str) == Some(t)).and_then(|a| a.get("address")).and_then(Value::as_str).map(String::from)
    };
    let host = by_type("InternalIP").or_else(|| by_type("ExternalIP")).or_else(|| by_type("Hostname")).ok_or_else(|| unavailable("the node has no address"))?;
    let port = match port {
        Some(p) => i64::from(p),
        None => node.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_i64).unwrap_or(0),
    };
    if port <= 0 {
        return Err(unavailable("the node publishes no kubelet port"));
    }
    Ok((crate::backend::join_host_port(&host, port), host))
}

/// The request passed on.
pub struct Forward<'a> {
    /// Its method.
    pub method: &'a Method,
    /// The kubelet's path and query.
    pub path_and_query: &'a str,
    /// The client's headers.
    pub headers: &'a HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The client's connection, switched only if the kubelet switches.
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Pass the request on to the kubelet of `node` (at `port` when the request named one)
/// and its answer back.
pub async fn proxy(tls: Arc<rustls::ClientConfig>, node: &Value, port: Option<u16>, fwd: Forward<'_>) -> Result<Response<Body>, ApiError> {
    let (addr, host) = kubelet_address(node, port)?;
    let sender = crate::backend::connect(&addr, &host, tls).await.map_err(unavailable)?;
    send(sender, &addr, fwd).await
}

/// Pass the request on over `stream` (to `addr`, named in `Host`) and its answer back.
pub async fn send_over<S>(stream: S, addr: &str, fwd: Forward<'_>) -> Result<Response<Body>, ApiError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(unavailable)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    send(sender, addr, fwd).await
}

async fn send(mut sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>, addr: &str, fwd: Forward<'_>) -> Result<Response<Body>, ApiError> {
    let Forward { method, path_and_query, headers, body, upgrade } = fwd;
    let wants_upgrade = headers.contains_key(http::header::UPGRADE) && upgrade.is_some();
    let mut req = http::Request::builder().method(method.clone()).uri(path_and_query);
    for (name, value) in headers {
        let n = name.as_str();
        if DROPPED.contains(&n) || n.starts_with("impersonate-") {
            continue;
        }
        req = req.header(name, value);
    }
    req = req.header(http::header::HOST, addr);
    if wants_upgrade {
        if let Some(to) = headers.get(http::header::UPGRADE) {
            req = req.header(http::header::CONNECTION, "Upgrade").header(http::header::UPGRADE, to);
        }
    }
    let req = req.body(Full::new(body)).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut resp = sender.send_request(req).await.map_err(unavailable)?;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = upgrade.filter(|_| wants_upgrade) else {
            return Err(unavailable("the backend switched protocols unasked"));
        };
        let backend = hyper::upgrade::on(&mut resp);
        let mut answer = Response::new(crate::http::full(Bytes::new()));
        *answer.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = resp.headers().clone();
        tokio::spawn(async move {
            let (Ok(client), Ok(backend)) = (client.await, backend.await) else { return };
            let (mut client, mut backend) = (hyper_util::rt::TokioIo::new(client), hyper_util::rt::TokioIo::new(backend));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
        });
        return Ok(answer);
    }
    let (mut head, incoming) = resp.into_parts();
    for h in ["connection", "keep-alive", "transfer-encoding", "upgrade", "trailer"] {
        head.headers.remove(h);
    }
    Ok(Response::from_parts(head, crate::aggregator::EndOnError(incoming).boxed()))
}
