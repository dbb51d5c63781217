//! `pods/portforward` on this node: a TCP connection to `localhost:<port>` made inside
//! the pod's network namespace (as containerd makes it), so a server that listens on the
//! pod's loopback only is reached too. A pod on the host's network is reached on the
//! host's loopback.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nanokube_apiserver::pod_portforward::NodePortForward;
use serde_json::Value;
use tokio::net::TcpStream;

use super::PodRuntime;

/// How long a connection to the pod's port may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's port-forwarding.
pub struct PortForward(pub Arc<PodRuntime>);

impl nanokube_apiserver::node_link::NamedNode for PortForward {
    fn node_name(&self) -> &str {
        &self.0.node
    }
}

impl NodePortForward for PortForward {
    fn dial<'a>(&'a self, pod: &'a Value, port: u16) -> Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send + 'a>> {
        Box::pin(async move {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
            if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
                return tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| format!("dial tcp4 {addr}: i/o timeout"))?
                    .map_err(|e| format!("failed to connect to localhost:{port} on the host's network, IPv4: dial tcp4 {addr}: connect: {}", lower(&e)));
            }
            let ns = self.0.pods_dir().join(uid).join("ns-net");
            if !nanokube_runtime::netns::is_namespace(&ns) {
                return Err(format!("failed to find the network namespace of pod {uid}: the sandbox is not running"));
            }
            nanokube_runtime::netns::connect(&ns, addr, DIAL_TIMEOUT).await.map_err(|e| {
                format!(
                    "failed to execute portforward in network namespace {:?}: failed to connect to localhost:{port} inside namespace {uid:?}, IPv4: dial tcp4 {addr}: connect: {} ",
                    ns.display().to_string(),
                    lower(&e)
                )
            })
        })
    }

    fn connect_to(&self, addr: std::net::SocketAddrV4) -> Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send + '_>> {
        Box::pin(async move { self.0.network.forwarder.pods.connect(addr).await.map_err(|e| format!("dial tcp {addr}: connect: {}", lower(&e))) })
    }
}

/// An I/O error as Go words it ("connection refused", no " (os error 111)").
fn lower(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_string();
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => s,
    }
}
