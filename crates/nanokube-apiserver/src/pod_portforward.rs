//! `pods/portforward`, as kube-apiserver and kubelet (with containerd) serve it: a TCP
//! connection to `localhost:<port>` inside the pod's network namespace per forwarded
//! connection, over one of three wires:
//!
//! - **SPDY/3.1** (`portforward.k8s.io`, kubectl 1.27–1.30): the client opens a pair of
//!   streams per connection, `streamType` `error` and `data`, with the same `requestID`
//!   and `port` headers. Data is copied both ways; the client's half-close of the data
//!   stream half-closes the TCP connection, the pod's end of it ends the stream, and a
//!   failure is written on the error stream, in kubelet's words.
//! - **SPDY tunnelled in a WebSocket** (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31 and
//!   newer): the same SPDY bytes carried in binary messages.
//! - **WebSocket channels** (`v4.channel.k8s.io`, the client libraries): the ports are
//!   named in the query (`?ports=8080&ports=9090`); port *i* has data channel `2i` and
//!   error channel `2i+1`, each opened with the port as two little-endian bytes, one
//!   connection per port for the life of the WebSocket.
//!
//! As for exec, everything that can be refused is decided before the upgrade
//! (authorization, the pod, its node, the ports); connections are made after it, as
//! kubelet makes them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use nanokube_api::ApiError;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{Message, Role, WebSocketConfig};

use crate::spdy::{Connection, Stream};

/// A node that connects to its pods' ports.
pub trait NodePortForward: crate::node_link::NamedNode {
    /// A connection to `localhost:port` in `pod`'s network namespace, or why not (the
    /// runtime's words, which kubelet wraps).
    fn dial<'a>(&'a self, pod: &'a Value, port: u16) -> Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send + 'a>>;

    /// A connection to `addr` as the node's network routes it (a pod's IP inside that
    /// pod's network namespace), for `pods/proxy` and `services/proxy`.
    fn connect_to(&self, addr: std::net::SocketAddrV4) -> Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send + '_>>;
}

/// The nodes this API server forwards ports on.
pub type PortForwardNodes = crate::node_link::LocalNode<dyn NodePortForward>;

/// The SPDY protocol served.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of SPDY tunnelled in binary messages.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The WebSocket channel protocols served, best first.
pub const CHANNEL_PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"];

/// How long the second stream of a pair may come after the first (kubelet's stream
/// creation timeout).
const PAIR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest WebSocket message taken from a client.
const MAX_MESSAGE: usize = 1 << 20;

/// The ports of the request's `ports` query values (each may hold a comma-separated list),
/// checked as upstream checks them.
pub fn ports(values: &[String]) -> Result<Vec<u16>, ApiError> {
    let mut out = Vec::new();
    for v in values.iter().flat_map(|v| v.split(',')) {
        let n: u16 = v.trim().parse().map_err(|_| ApiError::bad_request(format!("unable to parse {v:?} as a port: invalid syntax")))?;
        if n == 0 {
            return Err(ApiError::bad_request(format!("port {v:?} must be > 0")));
        }
        out.push(n);
    }
    Ok(out)
}

/// A forwarder bound to one pod on its node.
#[derive(Clone)]
pub struct Target {
    node: Arc<dyn NodePortForward>,
    pod: Arc<Value>,
}

impl Target {
    /// The pod's node, or the error when it cannot be reached.
    pub fn new(nodes: &PortForwardNodes, pod: Value) -> Result<Target, ApiError> {
        let node = nodes.reach(&pod)?.clone();
        Ok(Target { node, pod: Arc::new(pod) })
    }

    async fn dial(&self, port: u16) -> Result<TcpStream, String> {
        self.node.dial(&self.pod, port).await.map_err(|e| {
            let uid = self.pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
            // kubelet's words around the runtime's (the sandbox is named by the pod's uid here).
            format!("error forwarding port {port} to pod {uid}, uid : {e}")
        })
    }
}

/// Serve SPDY port-forwarding on an upgraded connection until the client ends it.
pub async fn serve_spdy<S>(io: S, target: Target)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = Connection::serve(io);
    // Streams waiting for their pair, by request, with when the first came.
    let mut waiting: HashMap<String, (Option<Stream>, Option<Stream>, tokio::time::Instant)> = HashMap::new();
    while let Some(stream) = conn.accept().await {
        let request = stream.header("requestid").unwrap_or("").to_string();
        // A pair not whole within kubelet's stream creation timeout is dropped (the
        // connection's stream limit bounds them meanwhile).
        let now = tokio::time::Instant::now();
        waiting.retain(|_, (_, _, since)| now.duration_since(*since) < PAIR_TIMEOUT);
        let entry = waiting.entry(request.clone()).or_insert_with(|| (None, None, now));
        match stream.header("streamtype") {
            Some("error") => entry.0 = Some(stream),
            Some("data") => entry.1 = Some(stream),
            _ => {
                stream.writer.reset().await;
                continue;
            }
        }
        if let (Some(_), Some(_), _) = entry {
            if let Some((Some(error), Some(data), _)) = waiting.remove(&request) {
                tokio::spawn(forward_pair(target.clone(), error, data));
            }
        }
    }
    conn.close().await;
}

async fn forward_pair(target: Target, error: Stream, data: Stream) {
    let port = data.header("port").and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
    match target.dial(port).await {
        Err(e) => {
            let _ = error.writer.write(e.as_bytes()).await;
        }
        Ok(tcp) => {
            let writer = data.writer.clone();
            relay(tcp, data.data, |chunk| {
                let w = writer.clone();
                async move { w.write(&chunk).await.is_ok() }
            })
            .await;
        }
    }
    data.writer.close().await;
    error.writer.close().await;
}

/// Copy between a connection to the pod and a client: what `from_client` yields is
/// written to the pod (its end half-closes the pod's side); what the pod sends goes to
/// `to_client` (false: the client is gone) until the pod's end, then the client's side
/// has a second to end too, as containerd's port forwarding gives it.
async fn relay<F, Fut>(tcp: TcpStream, mut from_client: tokio::sync::mpsc::Receiver<Bytes>, mut to_client: F)
where
    F: FnMut(Bytes) -> Fut,
    Fut: Future<Output = bool>,
{
    let (from_pod, mut to_pod) = tcp.into_split();
    let inbound = tokio::spawn(async move {
        while let Some(chunk) = from_client.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    crate::pump::pump(from_pod, &mut to_client).await;
    // As containerd: the other direction gets a second to finish before the forward ends.
    let abort = inbound.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(1), inbound).await.is_err() {
        abort.abort();
    }
}

/// Serve SPDY tunnelled in a WebSocket (kubectl 1.31 and newer).
pub async fn serve_tunnel<S>(io: S, target: Target)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut source) = ws.split();
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let (mut from_spdy, mut to_spdy) = tokio::io::split(theirs);
    let inbound = tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            match m {
                Message::Binary(b) if to_spdy.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    let outbound = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_spdy.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    serve_spdy(ours, target).await;
    let _ = outbound.await;
    inbound.abort();
}

/// Serve the WebSocket channel protocol: one connection per port in `ports`.
pub async fn serve_channels<S>(io: S, base64: bool, ports: Vec<u16>, target: Target)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use crate::pod_exec::websocket::{channel_data, frame};
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, mut source) = ws.split();
    let frame = move |channel: u8, data: &[u8]| frame(base64, channel, data);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let mut to_pods: Vec<Option<tokio::sync::mpsc::Sender<Bytes>>> = Vec::new();
    let mut forwards = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, error_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let _ = out_tx.send(frame(data_ch, &port.to_le_bytes())).await;
        let _ = out_tx.send(frame(error_ch, &port.to_le_bytes())).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        to_pods.push(Some(tx));
        let (target, out) = (target.clone(), out_tx.clone());
        forwards.push(tokio::spawn(async move {
            match target.dial(port).await {
                Err(e) => {
                    let _ = out.send(frame(error_ch, e.as_bytes())).await;
                }
                Ok(tcp) => {
                    relay(tcp, rx, |chunk| {
                        let out = out.clone();
                        async move { out.send(frame(data_ch, &chunk)).await.is_ok() }
                    })
                    .await;
                }
            }
        }));
    }
    drop(out_tx);
    let aborts: Vec<_> = forwards.iter().map(|f| f.abort_handle()).collect();
    let all_done = futures_util::future::join_all(forwards);
    tokio::pin!(all_done);
    loop {
        tokio::select! {
            _ = &mut all_done => break,
            msg = source.next() => {
                let data = match msg {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(m)) => match channel_data(m, base64) {
                        Some(d) => d,
                        None => continue,
                    },
                };
                let Some((&channel, payload)) = data.split_first() else { continue };
                let i = usize::from(channel / 2);
                // Data channels only; what comes on an error channel is ignored, as kubelet does.
                if channel % 2 == 0 && !payload.is_empty() {
                    if let Some(Some(tx)) = to_pods.get(i) {
                        if tx.send(Bytes::copy_from_slice(payload)).await.is_err() {
                            to_pods[i] = None;
                        }
                    }
                }
            }
        }
    }
    // The client went (or every connection ended): nothing is left running.
    aborts.iter().for_each(|a| a.abort());
    drop(to_pods);
    let _ = writer.await;
}
