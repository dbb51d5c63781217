//! Reaching an address the way the pod network routes it: a pod IP of this node inside
//! that pod's network namespace (where only its `lo` carries it), anything else (the API
//! server's endpoint, a host service) from the host.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// How long a connection to an endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The network namespaces of the node's pods, by pod IP.
#[derive(Default)]
pub struct PodNamespaces(Mutex<HashMap<Ipv4Addr, PathBuf>>);

impl PodNamespaces {
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

    /// Every pod namespace here.
    pub fn all(&self) -> Vec<PathBuf> {
        self.0.lock().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// The namespace of the pod at `ip`, if it runs here.
    pub fn get(&self, ip: Ipv4Addr) -> Option<PathBuf> {
        self.0.lock().ok()?.get(&ip).cloned()
    }

    /// A TCP connection to `to`.
    pub async fn connect(&self, to: SocketAddrV4) -> std::io::Result<tokio::net::TcpStream> {
        match self.get(*to.ip()) {
            Some(ns) => nanokube_runtime::netns::connect(&ns, SocketAddr::V4(to), CONNECT_TIMEOUT).await,
            None => within_connect_timeout(to, tokio::net::TcpStream::connect(to)).await,
        }
    }

    /// [`Self::connect`] on behalf of `client`: where `to` is on the host (not a pod),
    /// the socket is bound first and registered with the API server's
    /// [`nanokube_apiserver::origins`] before it connects, so a server in this process
    /// (the API server behind the `kubernetes` Service) sees `client` as its peer, as it
    /// would behind kube-proxy's DNAT. The registration lasts as long as it is kept.
    pub async fn connect_from(
        &self,
        to: SocketAddrV4,
        client: IpAddr,
    ) -> std::io::Result<(tokio::net::TcpStream, Option<nanokube_apiserver::origins::Registration>)> {
        if self.get(*to.ip()).is_some() || client.is_unspecified() || client == IpAddr::V4(Ipv4Addr::LOCALHOST) {
            return Ok((self.connect(to).await?, None));
        }
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))?;
        let registration = nanokube_apiserver::origins::register(socket.local_addr()?, client);
        Ok((within_connect_timeout(to, socket.connect(SocketAddr::V4(to))).await?, Some(registration)))
    }

    /// A UDP socket to talk to `to` from (made inside the pod's namespace when `to` is a
    /// pod here: a socket stays in the namespace it was made in). It is not connected: a
    /// server bound to all addresses answers from whichever address the route picks
    /// (127.0.0.1 on `lo`), not necessarily the one asked, and that answer must count.
    pub async fn udp(&self, to: SocketAddrV4) -> std::io::Result<tokio::net::UdpSocket> {
        match self.get(*to.ip()) {
            Some(ns) => nanokube_runtime::netns::udp_socket(&ns).await,
            None => tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await,
        }
    }
}

/// A host-side connect to `to`, given up after [`CONNECT_TIMEOUT`].
async fn within_connect_timeout(
    to: SocketAddrV4,
    connect: impl std::future::Future<Output = std::io::Result<tokio::net::TcpStream>>,
) -> std::io::Result<tokio::net::TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {to}"))),
    }
}
