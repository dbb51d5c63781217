//! Traffic from inside a pod to other pods and to Services. Every pod's network namespace
//! has only `lo`, where all of 127.0.0.0/8 is local, so a connection to another pod's IP
//! would stay in the pod. NAT rules in the pod's namespace send TCP connections for
//! 127.244.0.0/16 (but its own IP) and for the Service range to the agent's listener
//! inside that namespace ([`PORT`]), which reads the original destination
//! (`SO_ORIGINAL_DST`): a pod's IP is connected to inside that pod's namespace; a
//! Service's ClusterIP and port go to one of its ready endpoints (from its
//! EndpointSlices, else its Endpoints), a pod's inside its namespace and any other (the
//! `kubernetes` Service's: the API server) from the host. A Service with no ready
//! endpoint refuses (a reset), as kube-proxy's reject rule. TCP only; DNS is not served.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nanokube_api::resources;
use nanokube_apiserver::registry::Registry;
use serde_json::Value;
use tokio::sync::watch;

/// The agent's port inside every pod (Istio's outbound capture port).
pub const PORT: u16 = 15001;

/// The network namespaces of the node's pods, by pod IP.
#[derive(Default)]
pub struct Pods(Mutex<HashMap<Ipv4Addr, PathBuf>>);

impl Pods {
    /// A pod's namespace is reachable at `ip`.
    pub fn insert(&self, ip: Ipv4Addr, ns: PathBuf) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(ip, ns);
        }
    }
    /// It is not any more.
    pub fn remove(&self, ip: Ipv4Addr) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&ip);
        }
    }
    fn get(&self, ip: Ipv4Addr) -> Option<PathBuf> {
        self.0.lock().ok()?.get(&ip).cloned()
    }
}

/// Install the pod's NAT rules (pods, and Services in `service_cidr`) and open the
/// agent's listener in its namespace.
pub fn prepare(ns: &Path, own_ip: Ipv4Addr, service_cidr: &str) -> Result<std::net::TcpListener, String> {
    let restore = nanokube_runtime::find_program("iptables-restore")
        .ok_or("iptables-restore was not found (Debian: apt-get install iptables), so pods cannot reach each other")?;
    let rules = format!(
        "*nat\n-A OUTPUT -d {own_ip}/32 -j RETURN\n-A OUTPUT -d 127.244.0.0/16 -p tcp -j REDIRECT --to-ports {PORT}\n-A OUTPUT -d {service_cidr} -p tcp -j REDIRECT --to-ports {PORT}\nCOMMIT\n"
    );
    nanokube_runtime::netns::within(ns, move || -> Result<std::net::TcpListener, String> {
        use std::io::Write;
        // The child inherits this thread's network namespace.
        let mut child = std::process::Command::new(&restore)
            .arg("--noflush")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", restore.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(rules.as_bytes()).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("iptables-restore in the pod's namespace: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        bind()
    })?
}

fn bind() -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", PORT)).map_err(|e| format!("the agent's listener in the pod: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(listener)
}

/// Open the agent's listener again in a pod whose rules are in place (a pod adopted
/// after the server restarted: the namespace kept its rules, the old listener went with
/// the old process).
pub fn listen(ns: &Path) -> Result<std::net::TcpListener, String> {
    nanokube_runtime::netns::within(ns, bind)?
}

/// The destination a redirected connection was meant for.
fn original_destination(s: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
    // SAFETY: getsockopt(2) of SO_ORIGINAL_DST into a sockaddr_in we own, with its size.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        const SO_ORIGINAL_DST: libc::c_int = 80;
        if libc::getsockopt(s.as_raw_fd(), libc::SOL_IP, SO_ORIGINAL_DST, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), u16::from_be(addr.sin_port))))
    }
}

/// The ready endpoint behind Service address `ip:port`, if a Service has it.
fn service_endpoint(registry: &Registry, target: SocketAddrV4) -> Option<SocketAddr> {
    let def = resources::find("", "v1", "services")?;
    let list = registry.list(def, None, &Default::default()).ok()?;
    let ip = target.ip().to_string();
    let svc = list.items.iter().map(|o| o.value()).find(|s| {
        let ips = s.pointer("/spec/clusterIPs").and_then(Value::as_array);
        s.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(ip.as_str()) || ips.is_some_and(|a| a.iter().any(|x| x.as_str() == Some(ip.as_str())))
    })?;
    let (ns, name) = (svc.pointer("/metadata/namespace").and_then(Value::as_str)?, svc.pointer("/metadata/name").and_then(Value::as_str)?);
    let endpoint = nanokube_apiserver::backend::resolve_service(registry, ns, name, i64::from(target.port())).ok()?;
    endpoint.parse().ok()
}

/// Connect to `target` for a pod: inside the target pod's namespace, or to a Service's
/// endpoint.
async fn dial(pods: &Pods, registry: &Registry, target: SocketAddrV4) -> Option<tokio::net::TcpStream> {
    let inside = |ns: PathBuf, to: SocketAddr| async move {
        nanokube_runtime::netns::connect(&ns, to, Duration::from_secs(5)).await.map_err(|e| tracing::debug!(%to, "from a pod: {e}")).ok()
    };
    if let Some(ns) = pods.get(*target.ip()) {
        return inside(ns, SocketAddr::V4(target)).await;
    }
    let endpoint = service_endpoint(registry, target)?;
    match endpoint {
        SocketAddr::V4(e) if pods.get(*e.ip()).is_some() => inside(pods.get(*e.ip())?, endpoint).await,
        _ => tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(endpoint)).await.ok()?.ok(),
    }
}

/// Serve the pod's outbound connections until `stop` changes or its sender goes.
pub async fn serve(listener: std::net::TcpListener, pods: Arc<Pods>, registry: Arc<Registry>, mut stop: watch::Receiver<bool>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else { continue };
        let (pods, registry) = (pods.clone(), registry.clone());
        tokio::spawn(async move {
            let Ok(target) = original_destination(&inbound) else { return };
            let SocketAddr::V4(v4) = target else { return };
            let connected = dial(&pods, &registry, v4).await;
            match connected {
                Some(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                // No pod or endpoint there, or nothing listening: reset, as refused.
                None => {
                    let _ = inbound.set_zero_linger();
                }
            }
        });
    }
}
