//! Where connections relayed by this process's own Service proxy really began.
//!
//! kube-proxy forwards in the kernel (DNAT), so kube-apiserver sees a pod that reaches it
//! through the `kubernetes` Service with the pod's own address. nanokube's proxy relays
//! in userspace, so the API server's peer is the proxy's socket on 127.0.0.1. The proxy
//! (in `nanokube-net`) registers the local address of each socket it dials with the
//! client's address *before* connecting; the API server looks its peer up when it
//! accepts the connection, and audit, the access map and everything else then see the
//! pod's address, as upstream's would.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{LazyLock, Mutex};

static ORIGINS: LazyLock<Mutex<HashMap<SocketAddr, IpAddr>>> = LazyLock::new(Mutex::default);

/// A registered relay socket; dropping it forgets the entry.
pub struct Registration(SocketAddr);

impl Drop for Registration {
    fn drop(&mut self) {
        ORIGINS.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// Record that the connection leaving from `local` carries traffic from `origin`.
pub fn register(local: SocketAddr, origin: IpAddr) -> Registration {
    ORIGINS.lock().unwrap_or_else(|e| e.into_inner()).insert(local, origin);
    Registration(local)
}

/// The peer as the client it stands for: its origin's address if a relay registered
/// it, itself otherwise.
pub fn resolve(peer: SocketAddr) -> SocketAddr {
    if !peer.ip().is_loopback() {
        return peer;
    }
    match ORIGINS.lock().unwrap_or_else(|e| e.into_inner()).get(&peer) {
        Some(ip) => SocketAddr::new(*ip, peer.port()),
        None => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_peers_resolve_until_dropped() {
        let local: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        let pod: IpAddr = "127.244.0.9".parse().expect("ip");
        let r = register(local, pod);
        assert_eq!(resolve(local).ip(), pod);
        drop(r);
        assert_eq!(resolve(local), local);
    }
}
