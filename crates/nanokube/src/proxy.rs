//! `nanokube proxy`: a drop-in for `kubectl proxy` (seed S6, S12). Plain HTTP on
//! loopback (or a unix socket) in front of the API server, with the credentials of a
//! kubeconfig context or, inside a pod, of the pod's service account.
//!
//! Filters behave as kubectl's: the Host (split as Go's `net.SplitHostPort` does, so a
//! Host without a port matches nothing) must match `--accept-hosts`, the path must match
//! `--accept-paths` and not `--reject-paths` (default: exec and attach), the method must
//! not match `--reject-methods`. A rejected request is answered here with
//! `403 Forbidden` and never reaches the server. Bodies stream both ways without
//! buffering (watches, logs); upgrades (exec, attach, port-forward) pass through.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use regex::Regex;

use crate::client::{ClusterAccess, Connector};
use nanokube_apiserver::server::AcceptBackoff;

/// kubectl proxy's default `--accept-hosts`.
pub const DEFAULT_ACCEPT_HOSTS: &str = r"^localhost$,^127\.0\.0\.1$,^\[::1\]$";
/// kubectl proxy's default `--accept-paths`.
pub const DEFAULT_ACCEPT_PATHS: &str = "^.*";
/// kubectl proxy's default `--reject-paths`.
pub const DEFAULT_REJECT_PATHS: &str = r"^/api/.*/pods/.*/exec,^/api/.*/pods/.*/attach";
/// kubectl proxy's default `--reject-methods`.
pub const DEFAULT_REJECT_METHODS: &str = "^$";

/// Options of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Listen address.
    pub address: String,
    /// Port (0: any free port).
    pub port: u16,
    /// Listen on a unix socket instead.
    pub unix_socket: Option<PathBuf>,
    /// Prefix under which the API is served.
    pub api_prefix: String,
    /// Comma-separated regexes.
    pub accept_hosts: String,
    /// Comma-separated regexes.
    pub accept_paths: String,
    /// Comma-separated regexes.
    pub reject_paths: String,
    /// Comma-separated regexes.
    pub reject_methods: String,
    /// Serve everything, no filters.
    pub disable_filter: bool,
    /// Serve static files from this directory.
    pub www: Option<PathBuf>,
    /// Under this prefix.
    pub www_prefix: String,
    /// TCP keep-alive period of the connections to the API server (`None`: off).
    pub keepalive: Option<std::time::Duration>,
    /// Put the path of the kubeconfig's server URL in front of every request's path
    /// (kubectl's `--append-server-path`); without it only its scheme and host are used.
    pub append_server_path: bool,
}

fn regexes(list: &str) -> Result<Vec<Regex>, String> {
    list.split(',').filter(|s| !s.is_empty()).map(|r| Regex::new(r).map_err(|e| format!("invalid filter {r:?}: {e}"))).collect()
}

/// The request filter.
pub struct Filter {
    accept_hosts: Vec<Regex>,
    accept_paths: Vec<Regex>,
    reject_paths: Vec<Regex>,
    reject_methods: Vec<Regex>,
}

impl Filter {
    /// Build from comma-separated regex lists.
    pub fn new(accept_hosts: &str, accept_paths: &str, reject_paths: &str, reject_methods: &str) -> Result<Self, String> {
        Ok(Filter {
            accept_hosts: regexes(accept_hosts)?,
            accept_paths: regexes(accept_paths)?,
            reject_paths: regexes(reject_paths)?,
            reject_methods: regexes(reject_methods)?,
        })
    }

    /// Whether a request passes.
    pub fn accept(&self, method: &str, path: &str, host_header: &str) -> bool {
        let host = split_host(host_header);
        let any = |rs: &[Regex], s: &str| rs.iter().any(|r| r.is_match(s));
        any(&self.accept_paths, path) && !any(&self.reject_paths, path) && any(&self.accept_hosts, &host) && !any(&self.reject_methods, method)
    }
}

/// The host part of a Host header as kubectl's filter takes it: Go's `net.SplitHostPort`
/// host (brackets removed from IPv6), or the whole header when it has no port.
fn split_host(h: &str) -> String {
    if let Some(rest) = h.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once("]:") {
            return host.to_string();
        }
        return h.to_string();
    }
    match h.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host.to_string(),
        _ => h.to_string(),
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

fn text(code: StatusCode, s: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(s.to_string())).map_err(|never: Infallible| match never {}).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    r
}

struct Proxy {
    access: ClusterAccess,
    /// Where requests go: the server URL, or only its scheme and host.
    target: String,
    client: HyperClient<Connector, Incoming>,
    filter: Option<Filter>,
    api_prefix: String,
    www: Option<(PathBuf, String)>,
}

const HOP_BY_HOP: &[&str] = &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "host", "authorization"];

impl Proxy {
    async fn serve(self: Arc<Self>, peer: Option<SocketAddr>, mut req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let host = req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if let Some(f) = &self.filter {
            if !f.accept(req.method().as_str(), &path, &host) {
                return text(StatusCode::FORBIDDEN, "Forbidden\n");
            }
        }
        if let Some((dir, prefix)) = &self.www {
            if let Some(rel) = path.strip_prefix(prefix.as_str()) {
                return serve_file(dir, rel).await;
            }
        }
        let Some(rest) = path.strip_prefix(self.api_prefix.trim_end_matches('/')) else {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        };
        let rest = if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") };
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let uri = match format!("{}{}{}", self.target, rest, query).parse::<http::Uri>() {
            Ok(u) => u,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad path: {e}\n")),
        };
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        let client_upgrade = if upgrade { Some(hyper::upgrade::on(&mut req)) } else { None };
        let (mut parts, body) = req.into_parts();
        parts.uri = uri;
        for h in HOP_BY_HOP {
            if upgrade && *h == "connection" {
                continue;
            }
            parts.headers.remove(*h);
        }
        if let Some(p) = peer {
            let xff = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {}", p.ip()),
                None => p.ip().to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                parts.headers.insert("x-forwarded-for", v);
            }
        }
        if let Some(t) = self.access.bearer() {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                parts.headers.insert(http::header::AUTHORIZATION, v);
            }
        }
        let mut resp = match self.client.request(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                // hyper's error says "client error (Connect)"; the cause is in its sources.
                let mut cause = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    cause.push_str(&format!(": {s}"));
                    source = s.source();
                }
                return text(StatusCode::BAD_GATEWAY, &format!("error trying to reach the API server at {}: {cause}\n", self.access.server));
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_side) = client_upgrade {
                let server_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    if let (Ok(c), Ok(s)) = (client_side.await, server_side.await) {
                        let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(s)).await;
                    }
                });
            }
        }
        resp.map(|b| b.boxed())
    }
}

async fn serve_file(dir: &std::path::Path, rel: &str) -> Response<Body> {
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|seg| seg == "..") {
        return text(StatusCode::BAD_REQUEST, "invalid path\n");
    }
    let mut path = dir.join(rel);
    if path.is_dir() {
        path = path.join("index.html");
    }
    match std::fs::read(&path) {
        Ok(bytes) => {
            let ct = match path.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                Some("json") => "application/json",
                Some("svg") => "image/svg+xml",
                Some("png") => "image/png",
                _ => "application/octet-stream",
            };
            let mut r = Response::new(Full::new(Bytes::from(bytes)).map_err(|never: Infallible| match never {}).boxed());
            r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
            r
        }
        Err(_) => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// Run the proxy until the process is stopped. `ready` receives the listening address.
pub async fn run(opts: ProxyOptions, access: ClusterAccess, ready: impl FnOnce(&str)) -> Result<(), String> {
    let filter = if opts.disable_filter { None } else { Some(Filter::new(&opts.accept_hosts, &opts.accept_paths, &opts.reject_paths, &opts.reject_methods)?) };
    let client = HyperClient::builder(TokioExecutor::new()).build(access.connector_with_keepalive(false, opts.keepalive));
    let api_prefix = if opts.api_prefix.starts_with('/') { opts.api_prefix.clone() } else { format!("/{}", opts.api_prefix) };
    let www = opts.www.clone().map(|d| (d, opts.www_prefix.clone()));
    let target = if opts.append_server_path {
        access.server.trim_end_matches('/').to_string()
    } else {
        let uri: http::Uri = access.server.parse().map_err(|e| format!("server {:?}: {e}", access.server))?;
        format!("{}://{}", uri.scheme_str().unwrap_or("https"), uri.authority().map(|a| a.as_str()).unwrap_or(""))
    };
    let proxy = Arc::new(Proxy { access, target, client, filter, api_prefix, www });
    if let Some(sock) = &opts.unix_socket {
        let _ = std::fs::remove_file(sock);
        let listener = tokio::net::UnixListener::bind(sock).map_err(|e| format!("listen on {}: {e}", sock.display()))?;
        ready(&format!("unix:{}", sock.display()));
        let mut failed = AcceptBackoff::new("nanokube proxy");
        loop {
            let (stream, _) = failed.accept(|| listener.accept()).await;
            let p = proxy.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let p = p.clone();
                    async move { Ok::<_, Infallible>(p.serve(None, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
            });
        }
    }
    let listen = async {
        let addr = tokio::net::lookup_host((opts.address.as_str(), opts.port)).await?.next().ok_or(std::io::ErrorKind::AddrNotAvailable)?;
        nanokube_apiserver::server::listen_async(addr)
    };
    let listener = listen.await.map_err(|e| format!("listen on {}:{}: {e}", opts.address, opts.port))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    ready(&local.to_string());
    let mut failed = AcceptBackoff::new("nanokube proxy");
    loop {
        let (stream, peer) = failed.accept(|| listener.accept()).await;
        let p = proxy.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let p = p.clone();
                async move { Ok::<_, Infallible>(p.serve(Some(peer), req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filters_match_kubectl() {
        let f = Filter::new(DEFAULT_ACCEPT_HOSTS, DEFAULT_ACCEPT_PATHS, DEFAULT_REJECT_PATHS, DEFAULT_REJECT_METHODS).unwrap();
        assert!(f.accept("GET", "/api/", "localhost:8080"));
        assert!(f.accept("GET", "/api/v1/pods", "127.0.0.1:8001"));
        assert!(!f.accept("GET", "/api/v1/pods", "example.com:8001"));
        // Without a port, kubectl's extractHost falls back to the whole header.
        assert!(f.accept("GET", "/api/v1/pods", "localhost"));
        assert!(f.accept("GET", "/api/v1/pods", "[::1]"));
        assert!(!f.accept("GET", "/api/v1/pods", "example.com"));
        assert!(!f.accept("POST", "/api/v1/namespaces/default/pods/web/exec", "localhost:8001"));
        assert!(!f.accept("GET", "/api/v1/namespaces/default/pods/web/attach", "localhost:8001"));
        assert!(f.accept("GET", "/api/v1/namespaces/default/pods/web/portforward", "localhost:8001"));
        assert_eq!(split_host("[::1]:8001"), "::1");
    }
}
