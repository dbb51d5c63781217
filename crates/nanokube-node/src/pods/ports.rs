//! A pod's IP answers from the host: for every port its containers declare, and every
//! port they listen on without declaring it (asked of the pod's network namespace through
//! `sock_diag`, as lima and VS Code discover ports to forward), a listener on the host at
//! the pod's IP forwards each connection into the pod's network namespace.
//!
//! A port bound only to the pod's `localhost` is not forwarded: kubelet could not reach
//! it either.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

/// How often the pod's listening sockets are looked at.
const SCAN: Duration = Duration::from_secs(1);

/// Of the listening sockets, the ports bound to all addresses or to the pod's `ip`.
pub fn reachable(listening: &[(Ipv4Addr, u16)], ip: Ipv4Addr) -> BTreeSet<u16> {
    listening.iter().filter(|(a, _)| a.is_unspecified() || *a == ip).map(|(_, p)| *p).collect()
}

/// Forward the pod's ports from the host until `stop` changes or its sender goes.
/// `declared` are the containers' TCP `containerPort`s.
pub async fn forward(pod_dir: PathBuf, ip: Ipv4Addr, declared: BTreeSet<u16>, mut stop: watch::Receiver<bool>) {
    let ns = pod_dir.join("ns-net");
    let ns2 = ns.clone();
    let diag = tokio::task::spawn_blocking(move || nanokube_runtime::netns::diag_socket(&ns2))
        .await
        .ok()
        .and_then(|r| r.map_err(|e| tracing::debug!("sock_diag: {e}")).ok());
    let mut listeners: BTreeMap<u16, tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        let mut want = declared.clone();
        if let Some(d) = &diag {
            match nanokube_runtime::netns::listening_tcp(d) {
                Ok(l) => want.extend(reachable(&l, ip)),
                Err(e) => tracing::debug!(%ip, "listing the pod's listening sockets: {e}"),
            }
        }
        listeners.retain(|port, task| {
            let keep = want.contains(port) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for port in want {
            if listeners.contains_key(&port) {
                continue;
            }
            match nanokube_apiserver::server::listen_async(SocketAddr::from((ip, port))) {
                Ok(l) => {
                    listeners.insert(port, tokio::spawn(serve(l, ns.clone(), SocketAddr::from((ip, port)))));
                }
                Err(e) => tracing::debug!(%ip, port, "listening for the pod on the host: {e}"),
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(SCAN) => {}
        }
    }
    for (_, t) in listeners {
        t.abort();
    }
}

async fn serve(listener: tokio::net::TcpListener, ns: PathBuf, target: SocketAddr) {
    let mut failed = nanokube_apiserver::server::AcceptBackoff::new("a pod's port on the host");
    loop {
        let (mut inbound, _) = failed.accept(|| listener.accept()).await;
        // Past the relays' share of descriptors: reset.
        let Some(relay) = nanokube_net::budget::Relay::try_start(&inbound) else { continue };
        let ns = ns.clone();
        tokio::spawn(async move {
            match connect(&ns, target).await {
                Ok(mut outbound) => relay.carry(&mut inbound, &mut outbound).await,
                // Refused inside: refused outside (the connection is dropped at once).
                Err(e) => tracing::debug!(%target, "forwarding into the pod: {e}"),
            }
        });
    }
}

async fn connect(ns: &Path, target: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    nanokube_runtime::netns::connect(ns, target, Duration::from_secs(5)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_of_a_namespace() {
        // A namespace of our own with four listeners: all addresses, the pod's IP,
        // localhost only (which is not forwarded) and IPv6's all addresses. Needs root, as
        // pods do.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("ns-net");
        nanokube_runtime::netns::create(nanokube_runtime::netns::Kind::Net, &ns).unwrap();
        let ip = Ipv4Addr::new(127, 244, 9, 9);
        let held = nanokube_runtime::netns::within(&ns, move || {
            ["0.0.0.0:8080", "127.244.9.9:5001", "127.0.0.1:80", "[::]:9090"].map(|a| std::net::TcpListener::bind(a).unwrap())
        })
        .unwrap();
        let diag = nanokube_runtime::netns::diag_socket(&ns).unwrap();
        let l = nanokube_runtime::netns::listening_tcp(&diag).unwrap();
        assert_eq!(l.len(), 4, "{l:?}");
        assert_eq!(reachable(&l, ip), BTreeSet::from([8080, 5001, 9090]), "an IPv6 socket on :: takes IPv4 too");
        drop(held);
        drop(diag);
        nanokube_runtime::netns::remove(&ns).unwrap();
    }
}
