//! The upgrades the streaming subresources answer (exec, attach, port-forward), shared by
//! the API server and the node's kubelet API: which wire a request asks for, the
//! subprotocol negotiated, and the `101 Switching Protocols` answer. The session itself
//! starts on the upgraded connection once the answer is sent ([`crate::pod_exec`],
//! [`crate::pod_portforward`]).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use nanokube_api::ApiError;

use crate::http as h;
use crate::http::Body;
use crate::pod_exec::{ExecRequest, ExecSession};

/// The upgrade a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `Upgrade: websocket`.
    WebSocket,
    /// `Upgrade: SPDY/3.1`.
    Spdy,
}

/// The upgrade asked for, or upstream's 400 when there is none.
pub fn requested(headers: &HeaderMap) -> Result<Wire, ApiError> {
    let to = headers.get(http::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if to.eq_ignore_ascii_case("websocket") {
        Ok(Wire::WebSocket)
    } else if to.to_ascii_lowercase().starts_with("spdy/3.1") {
        Ok(Wire::Spdy)
    } else {
        Err(ApiError::bad_request("Upgrade request required"))
    }
}

/// The WebSocket subprotocols the client offers.
pub fn offered(headers: &HeaderMap) -> Vec<String> {
    headers.get_all("sec-websocket-protocol").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(|p| p.trim().to_string()).collect()
}

/// The first of `served` (upstream's server order) that the client's
/// `X-Stream-Protocol-Version` values offer, or httpstream's 403.
pub fn spdy_protocol(headers: &HeaderMap, served: &[&'static str]) -> Result<&'static str, ApiError> {
    let offered: Vec<&str> = headers.get_all("x-stream-protocol-version").iter().filter_map(|v| v.to_str().ok()).collect();
    served
        .iter()
        .copied()
        .find(|p| offered.iter().flat_map(|v| v.split(',')).any(|o| o.trim() == *p))
        .ok_or_else(|| ApiError::forbidden(format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {served:?}")))
}

/// The `101` answer to a WebSocket upgrade with `protocol`.
pub fn websocket_accept(headers: &HeaderMap, protocol: &'static str) -> Result<Response<Body>, ApiError> {
    let key = headers.get("sec-websocket-key").ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(h::full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hdrs = resp.headers_mut();
    hdrs.insert(http::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    hdrs.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    hdrs.insert("sec-websocket-accept", HeaderValue::from_str(&accept).map_err(|e| ApiError::internal(e.to_string()))?);
    hdrs.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
    Ok(resp)
}

/// The `101` answer to a SPDY/3.1 upgrade with `protocol`.
pub fn spdy_accept(protocol: &'static str) -> Response<Body> {
    let mut resp = Response::new(h::full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hdrs = resp.headers_mut();
    hdrs.insert(http::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    hdrs.insert(http::header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    hdrs.insert("x-stream-protocol-version", HeaderValue::from_static(protocol));
    resp
}

/// An exec or attach session's negotiated wire.
pub enum ExecWire {
    /// A WebSocket channel protocol.
    WebSocket(crate::pod_exec::websocket::Protocol),
    /// SPDY/3.1 with this stream protocol.
    Spdy(&'static str),
}

/// Negotiate an exec or attach request's wire (before anything is started).
pub fn exec_wire(headers: &HeaderMap, wire: Wire) -> Result<ExecWire, ApiError> {
    match wire {
        Wire::WebSocket => {
            let offered = offered(headers).join(", ");
            let protocol = crate::pod_exec::websocket::Protocol::negotiate(&offered).ok_or_else(|| {
                ApiError::bad_request(format!("requested protocol(s) {offered:?} are not supported: use one of {:?}", crate::pod_exec::websocket::PROTOCOLS))
            })?;
            Ok(ExecWire::WebSocket(protocol))
        }
        Wire::Spdy => Ok(ExecWire::Spdy(spdy_protocol(headers, &crate::pod_exec::spdy::PROTOCOLS)?)),
    }
}

/// Answer `101` and serve a started session on the connection once it is upgraded.
pub fn serve_exec(
    headers: &HeaderMap,
    wire: ExecWire,
    upgrade: hyper::upgrade::OnUpgrade,
    req: ExecRequest,
    session: ExecSession,
) -> Result<Response<Body>, ApiError> {
    match wire {
        ExecWire::WebSocket(protocol) => {
            let resp = websocket_accept(headers, protocol.name())?;
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    crate::pod_exec::websocket::serve(hyper_util::rt::TokioIo::new(upgraded), protocol, req, session).await;
                }
            });
            Ok(resp)
        }
        ExecWire::Spdy(protocol) => {
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    crate::pod_exec::spdy::serve(hyper_util::rt::TokioIo::new(upgraded), protocol, req, session).await;
                }
            });
            Ok(spdy_accept(protocol))
        }
    }
}

/// Answer a port-forward upgrade and serve `target` on it: SPDY, SPDY tunnelled in a
/// WebSocket, or WebSocket channels for `ports`.
pub fn serve_portforward(
    headers: &HeaderMap,
    wire: Wire,
    upgrade: hyper::upgrade::OnUpgrade,
    ports: Vec<u16>,
    target: crate::pod_portforward::Target,
) -> Result<Response<Body>, ApiError> {
    use crate::pod_portforward as pf;
    if wire == Wire::Spdy {
        let protocol = spdy_protocol(headers, &[pf::SPDY_PROTOCOL])?;
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                pf::serve_spdy(hyper_util::rt::TokioIo::new(upgraded), target).await;
            }
        });
        return Ok(spdy_accept(protocol));
    }
    let offered = offered(headers);
    if offered.iter().any(|p| p == pf::TUNNEL_PROTOCOL) {
        let resp = websocket_accept(headers, pf::TUNNEL_PROTOCOL)?;
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                pf::serve_tunnel(hyper_util::rt::TokioIo::new(upgraded), target).await;
            }
        });
        return Ok(resp);
    }
    let Some(protocol) = pf::CHANNEL_PROTOCOLS.iter().copied().find(|p| offered.iter().any(|o| o == p)) else {
        return Err(ApiError::bad_request(format!("requested protocol(s) {offered:?} are not supported: use one of {:?}", pf::CHANNEL_PROTOCOLS)));
    };
    if ports.is_empty() {
        return Err(ApiError::bad_request("query parameter \"port\" is required"));
    }
    let resp = websocket_accept(headers, protocol)?;
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            pf::serve_channels(hyper_util::rt::TokioIo::new(upgraded), protocol.contains("base64"), ports, target).await;
        }
    });
    Ok(resp)
}
