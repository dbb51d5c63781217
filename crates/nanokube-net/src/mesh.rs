//! Traffic from inside a pod to other pods and to Services. Every pod's network namespace
//! has only `lo`, where all of 127.0.0.0/8 is local, so a connection to another pod's IP
//! would stay in the pod. NAT rules in the pod's namespace send TCP and UDP for
//! 127.244.0.0/16 (but its own IP) and for the Service and load-balancer ranges to the
//! agent's capture port inside that namespace ([`PORT`], TCP and UDP), which finds where
//! the traffic was meant to go: for TCP the socket's original destination
//! (`SO_ORIGINAL_DST`), for UDP the namespace's conntrack entry of the flow. A pod's IP is
//! reached inside that pod's namespace; a Service address goes through the
//! [`Forwarder`] (an endpoint, or the cluster DNS answering in process); anything else
//! is refused (a reset). NetworkPolicies are checked here and in the forwarder
//! ([`crate::policy`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::proxy::{Forwarder, UdpTarget};
use crate::table::Protocol;

/// The agent's port inside every pod (Istio's outbound capture port), TCP and UDP.
pub const PORT: u16 = 15001;

/// What catches a pod's outbound traffic: the TCP listener and UDP socket on [`PORT`]
/// inside its namespace, and the namespace's conntrack table (for UDP destinations).
pub struct Capture {
    tcp: std::net::TcpListener,
    udp: std::net::UdpSocket,
    conntrack: crate::conntrack::Conntrack,
}

/// Install the pod's NAT rules (other pods, and the address ranges in `captured`: the
/// Service and load-balancer ranges) and open the capture in its namespace.
pub fn prepare(ns: &Path, own_ip: Ipv4Addr, captured: &[String]) -> Result<Capture, String> {
    let restore = nanokube_runtime::find_program("iptables-restore")
        .ok_or("iptables-restore was not found (Debian: apt-get install iptables), so pods cannot reach each other")?;
    let ranges: Vec<&str> = std::iter::once("127.244.0.0/16").chain(captured.iter().map(String::as_str)).collect();
    let rules = format!("*nat\n-A OUTPUT -d {own_ip}/32 -j RETURN\n{}COMMIT\n", redirects("-A", &ranges));
    nanokube_runtime::netns::within(ns, move || -> Result<Capture, String> {
        nanokube_runtime::netns::add_loopback_address(own_ip)?;
        restore_rules(&restore, &rules)?;
        bind()
    })?
}

/// The rules (`op`: `-A` to add, `-D` to delete) sending a pod's TCP and UDP to `ranges`
/// to the agent's port.
fn redirects(op: &str, ranges: &[&str]) -> String {
    let mut rules = String::new();
    for range in ranges {
        for proto in ["tcp", "udp"] {
            rules.push_str(&format!("{op} OUTPUT -d {range} -p {proto} -j REDIRECT --to-ports {PORT}\n"));
        }
    }
    rules
}

/// Run `iptables-restore --noflush` with `rules`; the child inherits the calling
/// thread's network namespace.
fn restore_rules(restore: &Path, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new(restore)
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
    Ok(())
}

/// Capture (`add`) or stop capturing pod traffic to `ranges` in the pod namespace at
/// `ns`, beside what [`prepare`] set up: another ServiceCIDR's range, made or removed
/// while the pod runs.
pub fn change_capture(ns: &Path, ranges: &[String], add: bool) -> Result<(), String> {
    let restore = nanokube_runtime::find_program("iptables-restore").ok_or("iptables-restore was not found")?;
    let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
    let rules = format!("*nat\n{}COMMIT\n", redirects(if add { "-A" } else { "-D" }, &ranges));
    nanokube_runtime::netns::within(ns, move || restore_rules(&restore, &rules))?
}

fn bind() -> Result<Capture, String> {
    let tcp = nanokube_apiserver::server::listen(SocketAddr::from(([127, 0, 0, 1], PORT))).map_err(|e| format!("the agent's listener in the pod: {e}"))?;
    let udp = std::net::UdpSocket::bind(("127.0.0.1", PORT)).map_err(|e| format!("the agent's UDP socket in the pod: {e}"))?;
    udp.set_nonblocking(true).map_err(|e| e.to_string())?;
    // Opened here, it answers about this namespace from any thread.
    let conntrack = crate::conntrack::Conntrack::open_here();
    Ok(Capture { tcp, udp, conntrack })
}

/// Open the capture again in a pod whose rules are in place (a pod adopted after the
/// server restarted: the namespace kept its rules, the old sockets went with the old
/// process).
pub fn listen(ns: &Path) -> Result<Capture, String> {
    nanokube_runtime::netns::within(ns, bind)?
}

/// The destination a redirected connection was meant for.
fn original_destination(s: &tokio::net::TcpStream) -> std::io::Result<SocketAddrV4> {
    // SAFETY: getsockopt(2) of SO_ORIGINAL_DST into a sockaddr_in we own, with its size.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        const SO_ORIGINAL_DST: libc::c_int = 80;
        if libc::getsockopt(s.as_raw_fd(), libc::SOL_IP, SO_ORIGINAL_DST, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SocketAddrV4::new(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)), u16::from_be(addr.sin_port)))
    }
}

/// Serve the pod's outbound traffic until `stop` changes or its sender goes.
pub async fn serve(capture: Capture, own_ip: Ipv4Addr, forwarder: Arc<Forwarder>, stop: watch::Receiver<bool>) {
    let Capture { tcp, udp, conntrack } = capture;
    let (Ok(tcp), Ok(udp)) = (tokio::net::TcpListener::from_std(tcp), tokio::net::UdpSocket::from_std(udp)) else { return };
    let udp_task = tokio::spawn(serve_udp(Arc::new(udp), conntrack, own_ip, forwarder.clone()));
    let mut stop = stop;
    let mut failed = nanokube_apiserver::server::AcceptBackoff::new("a pod's capture");
    loop {
        let (mut inbound, _) = tokio::select! {
            _ = stop.changed() => break,
            accepted = failed.accept(|| tcp.accept()) => accepted,
        };
        let fw = forwarder.clone();
        let Ok(target) = original_destination(&inbound) else { continue };
        if fw.pods.get(*target.ip()).is_some() {
            if !fw.policies.allows(own_ip, *target.ip(), target.port(), Protocol::Tcp) {
                let _ = inbound.set_zero_linger();
                continue;
            }
            let Some(relay) = crate::budget::Relay::try_start(&inbound) else { continue };
            tokio::spawn(async move {
                match fw.pods.connect(target).await {
                    Ok(mut outbound) => relay.carry(&mut inbound, &mut outbound).await,
                    Err(e) => {
                        tracing::debug!(%target, "from a pod: {e}");
                        let _ = inbound.set_zero_linger();
                    }
                }
            });
            continue;
        }
        match fw.table.frontend(Protocol::Tcp, target) {
            Some(port) => {
                let external = !port.cluster_ips.contains(target.ip());
                fw.tcp(inbound, port, std::net::IpAddr::V4(own_ip), external);
            }
            // No pod or Service there: reset, as refused.
            None => {
                let _ = inbound.set_zero_linger();
            }
        }
    }
    udp_task.abort();
}

/// How long a UDP client's destination is remembered without lookups (short: a port
/// the pod reuses for another destination must be looked up again).
const FLOW_MEMORY: Duration = Duration::from_secs(5);

async fn serve_udp(socket: Arc<tokio::net::UdpSocket>, conntrack: crate::conntrack::Conntrack, own_ip: Ipv4Addr, fw: Arc<Forwarder>) {
    if !conntrack.is_available() {
        tracing::debug!("no connection tracking in the pod's namespace: its UDP to Services is not carried");
        return;
    }
    let capture = SocketAddrV4::new(Ipv4Addr::LOCALHOST, PORT);
    let mut known: HashMap<SocketAddrV4, (SocketAddrV4, Instant)> = HashMap::new();
    // Forgotten flows are swept once per FLOW_MEMORY, not per datagram: a pod sending
    // from many ports would otherwise make each datagram cost a pass over all of them.
    let mut next_sweep = Instant::now() + FLOW_MEMORY;
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
        let SocketAddr::V4(client) = from else { continue };
        let target = match known.get(&client).filter(|(_, t)| t.elapsed() < FLOW_MEMORY) {
            Some((t, _)) => Some(*t),
            // REDIRECT from the pod's own output sends to 127.0.0.1: the entry's reply
            // tuple runs from there, at the capture's port, to the client.
            None => conntrack.udp_destination(client, capture).await,
        };
        let Some(target) = target else { continue };
        if Instant::now() >= next_sweep {
            known.retain(|_, (_, t)| t.elapsed() < FLOW_MEMORY);
            next_sweep = Instant::now() + FLOW_MEMORY;
        }
        known.insert(client, (target, Instant::now()));
        let via = if fw.pods.get(*target.ip()).is_some() {
            UdpTarget::Pod(target)
        } else {
            match fw.table.frontend(Protocol::Udp, target) {
                Some(port) => UdpTarget::Service(port.clone(), !port.cluster_ips.contains(target.ip())),
                None => continue,
            }
        };
        fw.udp(&socket, from, &buf[..n], target, via, Some(own_ip)).await;
    }
}
