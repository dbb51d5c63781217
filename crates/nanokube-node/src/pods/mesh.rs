//! Traffic from inside a pod to other pods. Every pod's network namespace has only `lo`,
//! where all of 127.0.0.0/8 is local, so a connection to another pod's IP would stay in
//! the pod. A NAT rule in the pod's namespace sends connections for 127.244.0.0/16 (but
//! its own IP) to the agent's listener inside that namespace ([`PORT`]), which reads the
//! original destination (`SO_ORIGINAL_DST`) and connects to it inside the target pod's
//! namespace. Services' addresses (127.96.0.0/16) and DNS plug into the same listener
//! when the Service data plane exists.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Install the pod's NAT rules and open the agent's listener in its namespace.
pub fn prepare(ns: &Path, own_ip: Ipv4Addr) -> Result<std::net::TcpListener, String> {
    let restore = nanokube_runtime::find_program("iptables-restore")
        .ok_or("iptables-restore was not found (Debian: apt-get install iptables), so pods cannot reach each other")?;
    let rules = format!("*nat\n-A OUTPUT -d {own_ip}/32 -j RETURN\n-A OUTPUT -d 127.244.0.0/16 -p tcp -j REDIRECT --to-ports {PORT}\nCOMMIT\n");
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

/// Serve the pod's outbound connections until `stop` changes or its sender goes.
pub async fn serve(listener: std::net::TcpListener, pods: Arc<Pods>, mut stop: watch::Receiver<bool>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((mut inbound, _)) = accepted else { continue };
        let pods = pods.clone();
        tokio::spawn(async move {
            let Ok(target) = original_destination(&inbound) else { return };
            let SocketAddr::V4(v4) = target else { return };
            let connected = match pods.get(*v4.ip()) {
                Some(ns) => {
                    nanokube_runtime::netns::connect(&ns, target, Duration::from_secs(5)).await.map_err(|e| tracing::debug!(%target, "pod to pod: {e}")).ok()
                }
                None => None,
            };
            match connected {
                Some(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                // No pod there, or nothing listening: reset, as a refused connection.
                None => {
                    let _ = inbound.set_zero_linger();
                }
            }
        });
    }
}
