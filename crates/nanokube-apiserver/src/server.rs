//! Serving: TLS (rustls with the ring provider; client certificates requested and
//! verified against the cluster CA but optional; ALPN h2 and http/1.1) and one hyper
//! connection per client, with upgrades kept for later exec/attach/port-forward. An
//! HTTP/2 connection writes through [`crate::coalesce::Coalesce`], so while it has
//! watches open, the frames its streams produce together leave together.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::authn::{user_from_cert, Authenticator, UserInfo};
use crate::authz::Authorizer;
use crate::coalesce::{Coalesce, OpenWatches};
use crate::openapi::OpenApi;
use crate::pki::Pki;
use crate::registry::Registry;

/// The API server's shared state.
pub struct ApiServer {
    /// Objects.
    pub registry: Arc<Registry>,
    /// Authentication chain.
    pub authn: Authenticator,
    /// Authorization chain.
    pub authz: Box<dyn Authorizer>,
    /// OpenAPI documents.
    pub openapi: OpenApi,
    /// `host:port` advertised in `/api`'s `serverAddressByClientCIDRs`.
    pub server_address: String,
    /// The RBAC index (rules reviews and escalation checks read it).
    pub rbac: Arc<crate::rbac::Rbac>,
    /// Service-account token issuer (TokenRequest, OIDC discovery).
    pub tokens: Option<Arc<crate::satoken::TokenIssuer>>,
    /// `https://host:port` as clients reach it.
    pub server_url: String,
    /// The audit log, if enabled.
    pub audit: Option<crate::audit::AuditLog>,
    /// Request and store metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The aggregation layer (APIServices backed by other servers).
    pub aggregator: Arc<crate::aggregator::Aggregator>,
    /// Whether the in-process scheduler runs (for `componentstatuses`).
    pub scheduler: bool,
    /// The nodes whose kubelet side (logs) this server reaches.
    pub nodes: crate::pod_logs::Nodes,
    /// The nodes this server runs `pods/exec` processes on.
    pub exec_nodes: crate::pod_exec::ExecNodes,
    /// The nodes pods' ports are forwarded on.
    pub portforward_nodes: crate::pod_portforward::PortForwardNodes,
    /// The nodes whose resource figures `metrics.k8s.io` serves.
    pub metrics_nodes: crate::resource_metrics::MetricsNodes,
    /// How `nodes/proxy` reaches kubelets (TLS trusting the cluster CA, with this
    /// server's kubelet client certificate); none: the subresource answers 503.
    pub kubelet_client: Option<Arc<rustls::ClientConfig>>,
    /// API Priority and Fairness: which requests run now, wait, or are refused.
    pub flow_control: Arc<crate::priority_and_fairness::FlowControl>,
    /// The dashboard's login sessions.
    pub dashboard_sessions: nanokube_dashboard::session::Sessions,
    /// The access map's counts, fed by every request answered.
    pub access_map: nanokube_dashboard::map::AccessMap,
    ready: AtomicBool,
}

impl ApiServer {
    /// A new server, not yet ready.
    pub fn new(registry: Arc<Registry>, authn: Authenticator, authz: Box<dyn Authorizer>, rbac: Arc<crate::rbac::Rbac>, server_address: String) -> Self {
        let server_url = format!("https://{server_address}");
        ApiServer {
            registry,
            authn,
            authz,
            openapi: OpenApi::build(),
            server_address,
            rbac,
            tokens: None,
            server_url,
            audit: None,
            metrics: Arc::default(),
            aggregator: Arc::new(crate::aggregator::Aggregator::new(None)),
            scheduler: false,
            nodes: Default::default(),
            exec_nodes: Default::default(),
            portforward_nodes: Default::default(),
            metrics_nodes: Default::default(),
            kubelet_client: None,
            flow_control: Arc::new(crate::priority_and_fairness::FlowControl::new(crate::priority_and_fairness::DEFAULT_SERVER_CONCURRENCY)),
            dashboard_sessions: Default::default(),
            access_map: Default::default(),
            ready: AtomicBool::new(false),
        }
    }

    /// Whether `/readyz` answers ok.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Mark the server ready (after bootstrap objects exist).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// What is known about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The identity of a verified client certificate.
    pub cert_user: Option<UserInfo>,
    /// The peer address.
    pub peer: SocketAddr,
    /// The watches open on this connection.
    pub watches: OpenWatches,
}

/// The TLS configuration for serving.
pub fn tls_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, String> {
    serving_tls(&pki.ca_pem, &pki.server_pem, &pki.server_key_pem)
}

/// TLS serving `cert_pem` with `key_pem`, asking for (not requiring) a client
/// certificate signed by `ca_pem`.
pub fn serving_tls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| format!("ca.crt: {e}"))?).map_err(|e| format!("ca.crt: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| format!("serving certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("serving key: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("serving certificate: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Longest a client may take to complete the TLS handshake after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a client may take to send a request's headers (upstream's
/// `ReadHeaderTimeout`, 32 s); an HTTP/1.1 connection idle between requests is closed
/// after it as well.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(32);

/// Most connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 10_000;

/// Accept connections until `shutdown` turns true. Connections, reads and watches are
/// served on the read lane, and mutating requests on the runtime this is called on, where
/// the controllers run too ([`crate::lanes`]).
pub async fn serve(api: Arc<ApiServer>, listener: TcpListener, tls: Arc<rustls::ServerConfig>, shutdown: watch::Receiver<bool>) {
    let writes = tokio::runtime::Handle::current();
    let handler = move |info: Arc<ConnInfo>, req: hyper::Request<hyper::body::Incoming>| {
        let (api, writes) = (api.clone(), writes.clone());
        async move {
            if crate::lanes::is_mutating(req.method()) {
                let failed = || crate::http::error(&nanokube_api::ApiError::internal("the request's handling ended unexpectedly"));
                crate::lanes::run_on(&writes, crate::handler::handle(api, info, req), failed).await
            } else {
                crate::handler::handle(api, info, req).await
            }
        }
    };
    // The listener moves to the read lane's reactor, so that the connections accepted from
    // it are woken there.
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the API server's listener");
            return;
        }
    };
    let accepting = async move {
        match TcpListener::from_std(listener) {
            Ok(l) => accept_loop(l, Some(tls), shutdown, handler).await,
            Err(e) => tracing::error!(error = %e, "the API server's listener"),
        }
    };
    // Ended (its connections with it) when this returns or is dropped.
    let lane = match crate::lanes::ReadLane::start() {
        Ok(lane) => lane,
        Err(e) => {
            tracing::error!(error = %e, "the API server's read lane");
            return;
        }
    };
    if let Some(reads) = lane.handle() {
        crate::lanes::run_on(reads, accepting, || ()).await;
    }
}

/// Accept TLS connections until `shutdown` turns true, each request answered by
/// `handler` (with what is known of its connection): the same bounds for every server
/// of the product (connections, handshake and header timeouts).
pub async fn serve_with<H, F>(listener: TcpListener, tls: Arc<rustls::ServerConfig>, shutdown: watch::Receiver<bool>, handler: H)
where
    H: Fn(Arc<ConnInfo>, hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<crate::http::Body>> + Send + 'static,
{
    accept_loop(listener, Some(tls), shutdown, handler).await
}

/// As [`serve_with`], over plain HTTP/1.1 (an ingress's port 80): the same bounds.
pub async fn serve_plain_with<H, F>(listener: TcpListener, shutdown: watch::Receiver<bool>, handler: H)
where
    H: Fn(Arc<ConnInfo>, hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<crate::http::Body>> + Send + 'static,
{
    accept_loop(listener, None, shutdown, handler).await
}

/// A listening TCP socket at `addr` (non-blocking, `SO_REUSEADDR` as std sets it) with the
/// backlog Go programs (kube-apiserver, kubelet, kube-proxy) listen with: the kernel's
/// `somaxconn`, read as Go reads it. std and mio listen with 128, and connects in a burst
/// past the backlog while the accept loop is busy have their SYNs dropped, each waiting a
/// second or more for the retransmit.
pub fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(listen_backlog())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// As [`listen`], registered with the tokio runtime it is called in.
pub fn listen_async(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(listen(addr)?)
}

/// `/proc/sys/net/core/somaxconn`, at most 65,535 (the kernel kept it in 16 bits before
/// 4.1), 4,096 (its default since 5.4) when unreadable.
fn listen_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse::<i32>().ok()).filter(|n| *n > 0).unwrap_or(4096).min(65_535)
}

/// What an accept loop does when `accept(2)` fails: out of file descriptors (or another
/// resource), a loop that tried again at once would spin a core for as long as the
/// pending connections stay queued, and one that gave up would stop serving for good.
/// Instead it waits 100 ms (connections closing meanwhile free descriptors) and says so
/// at most once a second, as Go's `http.Server` backs off on temporary accept errors.
pub struct AcceptBackoff {
    what: &'static str,
    warned: Option<std::time::Instant>,
}

impl AcceptBackoff {
    /// How long a failed accept waits before the next.
    pub const PAUSE: Duration = Duration::from_millis(100);

    /// The backoff of the listener serving `what` (named in the warning).
    pub fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff { what, warned: None }
    }

    /// The next connection `accept` (a listener's) gives, waiting after each failure.
    /// Cancel-safe as the listener's own `accept` is.
    pub async fn accept<T, F>(&mut self, mut accept: impl FnMut() -> F) -> T
    where
        F: std::future::Future<Output = std::io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(accepted) => return accepted,
                Err(e) => self.wait(&e).await,
            }
        }
    }

    async fn wait(&mut self, error: &std::io::Error) {
        if self.warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(%error, listener = self.what, "accept failed; backing off");
            self.warned = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Self::PAUSE).await;
    }
}

async fn accept_loop<H, F>(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>, mut shutdown: watch::Receiver<bool>, handler: H)
where
    H: Fn(Arc<ConnInfo>, hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = hyper::Response<crate::http::Body>> + Send + 'static,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut accept_failed = AcceptBackoff::new("the API server");
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = tokio::select! {
            accepted = accept_failed.accept(|| listener.accept()) => accepted,
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let watches = OpenWatches::default();
            let svc = |info: Arc<ConnInfo>| {
                service_fn(move |req| {
                    let answer = handler(info.clone(), req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                })
            };
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            builder.http2().timer(TokioTimer::new());
            let Some(acceptor) = acceptor else {
                let info = Arc::new(ConnInfo { cert_user: None, peer, watches: watches.clone() });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(Coalesce::new(tcp, None)), svc(info));
                return drive(conn, &mut conn_shutdown, peer).await;
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let cert_user = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| user_from_cert(c.as_ref()));
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            // A pod reaching the API through the Service proxy is seen at its own address.
            let info = Arc::new(ConnInfo { cert_user, peer: crate::origins::resolve(peer), watches: watches.clone() });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(Coalesce::new(tls, h2.then_some(watches))), svc(info));
            drive(conn, &mut conn_shutdown, peer).await
        });
    }
}

/// Serve one connection until it ends or the server shuts down.
async fn drive<C, E>(conn: C, shutdown: &mut watch::Receiver<bool>, peer: SocketAddr)
where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = shutdown.changed() => {}
    }
}
