//! Probes and lifecycle hooks, as kubelet's prober runs them: a startup probe first
//! (liveness and readiness wait for it), then liveness and readiness each on their own
//! period, with `initialDelaySeconds`, `timeoutSeconds`, `successThreshold` and
//! `failureThreshold`; every failure an `Unhealthy` event; a liveness or startup probe
//! that reaches its threshold restarts the container.
//!
//! exec runs in the container (`runc exec`); httpGet, tcpSocket and grpc connect from
//! inside the pod's network namespace to the pod's IP (kubelet connects to the pod IP
//! from the node). HTTP(S) with `User-Agent: kube-probe/1.33`, certificates not checked,
//! same-host redirects followed, success on 200–399; gRPC is the standard health check
//! (`grpc.health.v1.Health/Check`) over plain HTTP/2, success on `SERVING`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use tokio::sync::mpsc;

use super::worker::Msg;
use super::PodRuntime;

/// What a probe concluded.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Readiness changed.
    Ready(bool),
    /// The startup probe succeeded.
    Started,
    /// Restart the container (why, as kubelet's `Killing` event says it).
    Restart(String),
}

/// The container a probe looks at.
pub struct Target {
    /// The node's runtime.
    pub rt: Arc<PodRuntime>,
    /// The pod (for events).
    pub pod: Value,
    /// The pod's directory (its network namespace).
    pub dir: PathBuf,
    /// The pod's IP.
    pub ip: Option<Ipv4Addr>,
    /// The runc container ID.
    pub id: String,
    /// The container's name.
    pub name: String,
    /// Its attempt.
    pub attempt: u32,
    /// `spec.containers{name}`.
    pub field_path: String,
    /// The worker's inbox.
    pub tx: mpsc::Sender<Msg>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Startup,
    Liveness,
    Readiness,
}

impl Which {
    fn title(self) -> &'static str {
        match self {
            Which::Startup => "Startup",
            Which::Liveness => "Liveness",
            Which::Readiness => "Readiness",
        }
    }
}

/// Start the container's probes.
pub fn start(t: Target, spec: &Container) -> Vec<tokio::task::JoinHandle<()>> {
    let (startup, liveness, readiness) = (spec.startup_probe.clone(), spec.liveness_probe.clone(), spec.readiness_probe.clone());
    if startup.is_none() && liveness.is_none() && readiness.is_none() {
        return Vec::new();
    }
    let ports = spec.ports.clone().unwrap_or_default();
    let t = Arc::new(t);
    vec![tokio::spawn(async move {
        let named = |name: &str| ports.iter().find(|p| p.name.as_deref() == Some(name)).map(|p| p.container_port);
        if let Some(p) = &startup {
            if !probe_loop(&t, p, Which::Startup, &named).await {
                return;
            }
            let _ = t.tx.send(Msg::Probe { name: t.name.clone(), attempt: t.attempt, verdict: Verdict::Started }).await;
        }
        let live = async {
            if let Some(p) = &liveness {
                probe_loop(&t, p, Which::Liveness, &named).await;
            }
        };
        let ready = async {
            if let Some(p) = &readiness {
                probe_loop(&t, p, Which::Readiness, &named).await;
            }
        };
        tokio::join!(live, ready);
    })]
}

/// Probe until the probe is settled (startup: success → true; liveness: failure → false);
/// readiness probes run until the task is aborted.
async fn probe_loop(t: &Target, p: &Probe, which: Which, named: &(dyn Fn(&str) -> Option<i32> + Sync)) -> bool {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    tokio::time::sleep(secs(p.initial_delay_seconds, 0)).await;
    let period = secs(p.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = secs(p.timeout_seconds, 1).max(Duration::from_secs(1));
    let (need_ok, need_fail) = (p.success_threshold.unwrap_or(1).max(1), p.failure_threshold.unwrap_or(3).max(1));
    let (mut ok, mut failed) = (0, 0);
    let mut reported: Option<bool> = None;
    loop {
        let result = once(t, p, timeout, named).await;
        match result {
            Ok(()) => {
                ok += 1;
                failed = 0;
                if ok >= need_ok {
                    match which {
                        Which::Startup => return true,
                        Which::Readiness if reported != Some(true) => {
                            reported = Some(true);
                            let _ = t.tx.send(Msg::Probe { name: t.name.clone(), attempt: t.attempt, verdict: Verdict::Ready(true) }).await;
                        }
                        _ => {}
                    }
                }
            }
            Err(why) => {
                failed += 1;
                ok = 0;
                t.rt.recorder
                    .record(&*t.rt.cluster, &t.pod, Some(&t.field_path), "Warning", "Unhealthy", &format!("{} probe failed: {why}", which.title()))
                    .await;
                if failed >= need_fail {
                    match which {
                        Which::Startup | Which::Liveness => {
                            let word = if which == Which::Startup { "startup" } else { "liveness" };
                            let why = format!("Container {} failed {word} probe, will be restarted", t.name);
                            let _ = t.tx.send(Msg::Probe { name: t.name.clone(), attempt: t.attempt, verdict: Verdict::Restart(why) }).await;
                            return false;
                        }
                        Which::Readiness if reported != Some(false) => {
                            reported = Some(false);
                            let _ = t.tx.send(Msg::Probe { name: t.name.clone(), attempt: t.attempt, verdict: Verdict::Ready(false) }).await;
                        }
                        _ => {}
                    }
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

async fn once(t: &Target, p: &Probe, timeout: Duration, named: &(dyn Fn(&str) -> Option<i32> + Sync)) -> Result<(), String> {
    if let Some(e) = &p.exec {
        return exec(&t.rt, &t.id, e, timeout).await;
    }
    if let Some(h) = &p.http_get {
        return http_get(&t.dir, t.ip, h, timeout, named).await;
    }
    if let Some(s) = &p.tcp_socket {
        return tcp(&t.dir, t.ip, s, timeout, named).await;
    }
    if let Some(g) = &p.grpc {
        return grpc(&t.dir, t.ip, g, timeout).await;
    }
    Ok(())
}

async fn exec(rt: &PodRuntime, id: &str, e: &ExecAction, timeout: Duration) -> Result<(), String> {
    let argv = e.command.clone().unwrap_or_default();
    let (runc, id2, argv2) = (rt.runc.clone(), id.to_string(), argv.clone());
    let r = tokio::task::spawn_blocking(move || runc.exec(&id2, &argv2, timeout)).await.map_err(|e| e.to_string())?;
    match r {
        Ok((0, _)) => Ok(()),
        Ok((_, out)) => Err(String::from_utf8_lossy(&out).trim_end().to_string()),
        Err(e) if e.contains("timed out") => Err(format!("command {:?} timed out", argv.join(" "))),
        Err(e) => Err(e),
    }
}

fn port_of(port: &IntOrString, named: &(dyn Fn(&str) -> Option<i32> + Sync)) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(s) => {
            s.parse::<u16>().ok().or_else(|| named(s).and_then(|n| u16::try_from(n).ok())).ok_or_else(|| format!("couldn't find port: {s}"))
        }
    }
}

async fn connect(dir: &Path, ip: Option<Ipv4Addr>, host: Option<&str>, port: u16, timeout: Duration) -> Result<tokio::net::TcpStream, String> {
    let target: Ipv4Addr = match host.filter(|h| !h.is_empty()) {
        Some(h) => h.parse().map_err(|_| format!("probe host {h:?} is not an IPv4 address"))?,
        None => ip.ok_or("the pod has no IP")?,
    };
    let addr = SocketAddr::from((target, port));
    let ns = dir.join("ns-net");
    let stream = if nanokube_runtime::netns::is_namespace(&ns) {
        nanokube_runtime::netns::connect(&ns, addr, timeout).await
    } else {
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    };
    stream.map_err(|e| format!("dial tcp {addr}: connect: {}", go_error(&e)))
}

fn go_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        _ => e.to_string(),
    }
}

async fn tcp(dir: &Path, ip: Option<Ipv4Addr>, s: &TCPSocketAction, timeout: Duration, named: &(dyn Fn(&str) -> Option<i32> + Sync)) -> Result<(), String> {
    let port = port_of(&s.port, named)?;
    connect(dir, ip, s.host.as_deref(), port, timeout).await.map(|_| ())
}

async fn http_get(dir: &Path, ip: Option<Ipv4Addr>, h: &HTTPGetAction, timeout: Duration, named: &(dyn Fn(&str) -> Option<i32> + Sync)) -> Result<(), String> {
    let https = h.scheme.as_deref() == Some("HTTPS");
    let scheme = if https { "https" } else { "http" };
    let port = port_of(&h.port, named)?;
    let mut path = h.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let host = h.host.clone().filter(|x| !x.is_empty()).or_else(|| ip.map(|i| i.to_string())).unwrap_or_default();
    let url = format!("{scheme}://{host}:{port}{path}");
    let work = async {
        // kubelet's client: redirects followed on the same host (at most 10); one to
        // another host ends the probe with the redirect's own status (a success).
        let (mut https, mut port, mut path) = (https, port, path.clone());
        for _ in 0..=10 {
            let here = format!("{}://{host}:{port}{path}", if https { "https" } else { "http" });
            let (code, location) = http_request(dir, ip, h, &host, https, port, &path, timeout).await.map_err(|e| format!("Get \"{here}\": {e}"))?;
            let Some(location) = location.filter(|_| matches!(code, 301 | 302 | 303 | 307 | 308)) else {
                return if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP probe failed with statuscode: {code}")) };
            };
            match redirect_target(&location, https, port, &path) {
                Some((next_host, s, p, next_path)) if next_host.as_deref().is_none_or(|n| n == host) => (https, port, path) = (s, p, next_path),
                // To another host: not followed, the 3xx stands.
                _ => return Ok(()),
            }
        }
        Err(format!("Get \"{url}\": stopped after 10 redirects"))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)")),
    }
}

/// One GET (no keep-alive, no compression, as kubelet's prober): its status code and
/// `Location`.
#[allow(clippy::too_many_arguments)]
async fn http_request(
    dir: &Path,
    ip: Option<Ipv4Addr>,
    h: &HTTPGetAction,
    host: &str,
    https: bool,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(u16, Option<String>), String> {
    let tcp = connect(dir, ip, h.host.as_deref(), port, timeout).await?;
    let mut req = http::Request::get(path);
    let has = |n: &str| h.http_headers.iter().flatten().any(|x| x.name.eq_ignore_ascii_case(n));
    if !has("host") {
        req = req.header("host", format!("{host}:{port}"));
    }
    if !has("user-agent") {
        req = req.header("user-agent", "kube-probe/1.33");
    }
    if !has("accept") {
        req = req.header("accept", "*/*");
    }
    for x in h.http_headers.iter().flatten() {
        req = req.header(x.name.as_str(), x.value.as_str());
    }
    let req = req.header("connection", "close").body(http_body_util::Empty::<bytes::Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = if https {
        // kubelet does not verify a probed server's certificate.
        let tls = nanokube_apiserver::backend::tls_config("", true, None)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| e.to_string())?;
        send_http1(stream, req).await?
    } else {
        send_http1(tcp, req).await?
    };
    let location = resp.headers().get("location").and_then(|l| l.to_str().ok()).map(String::from);
    Ok((resp.status().as_u16(), location))
}

async fn send_http1<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    req: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// Where a redirect leads from `(https, port, path)`: the host (`None`: the same), the
/// scheme, port and path.
fn redirect_target(location: &str, https: bool, port: u16, path: &str) -> Option<(Option<String>, bool, u16, String)> {
    if location.starts_with("//") || location.contains("://") {
        let uri: http::Uri = location.parse().ok()?;
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
        return Some((uri.host().map(String::from), https, port, path));
    }
    if location.starts_with('/') {
        return Some((None, https, port, location.to_string()));
    }
    // Relative to the current path's directory.
    let base = path.split('?').next().unwrap_or("/");
    let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(0)];
    Some((None, https, port, format!("{dir}{location}")))
}

/// A gRPC health check (`grpc.health.v1.Health/Check`) over HTTP/2 without TLS, with
/// kubelet's messages.
async fn grpc(dir: &Path, ip: Option<Ipv4Addr>, g: &GRPCAction, timeout: Duration) -> Result<(), String> {
    let port = u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))?;
    let addr = format!("{}:{port}", ip.map(|i| i.to_string()).unwrap_or_default());
    let secs = format!("{}s", timeout.as_secs());
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = match tokio::time::timeout_at(deadline, connect(dir, ip, None, port, timeout)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if !e.ends_with("i/o timeout") => return Err(format!("error: failed to connect service at {addr:?}: {e}")),
        _ => return Err(format!("timeout: failed to connect service {addr:?} within {secs}: context deadline exceeded")),
    };
    let service = g.service.clone().unwrap_or_default();
    let rpc = async {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", "kube-probe/1.33")
            .body(http_body_util::Full::new(bytes::Bytes::from(grpc_frame(&health_check_request(&service)))))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        let headers = resp.headers().clone();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        // The status is in the trailers, or in the headers of a trailers-only answer.
        let trailers = body.trailers().cloned().unwrap_or_default();
        let field = |n: &str| trailers.get(n).or_else(|| headers.get(n)).and_then(|v| v.to_str().ok()).map(String::from);
        let code: u32 = field("grpc-status").and_then(|c| c.parse().ok()).unwrap_or(2);
        if code != 0 {
            let message = percent_decode(&field("grpc-message").unwrap_or_default());
            return Err(match code {
                12 => format!("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {message}"),
                4 => format!("timeout: health rpc did not complete within {secs}"),
                _ => format!("error: health rpc probe failed: rpc error: code = {} desc = {message}", grpc_code_name(code)),
            });
        }
        let data = body.to_bytes();
        let status = data.get(5..).map(health_status).unwrap_or(0);
        if status == 1 {
            Ok(())
        } else {
            let name =
                ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"].get(status as usize).map(|s| s.to_string()).unwrap_or_else(|| status.to_string());
            Err(format!("service unhealthy (responded with {name:?})"))
        }
    };
    match tokio::time::timeout_at(deadline, rpc).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout: health rpc did not complete within {secs}")),
    }
}

/// `HealthCheckRequest{service}` in protobuf: field 1, a string (absent when empty).
fn health_check_request(service: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if !service.is_empty() {
        out.push(0x0a);
        let mut n = service.len();
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// A gRPC message frame: uncompressed, its length, the message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// `HealthCheckResponse.status` (field 1, a varint) from its protobuf bytes; 0
/// (UNKNOWN) when absent or unreadable.
pub fn health_status(mut b: &[u8]) -> u64 {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut status = 0;
    while !b.is_empty() {
        let Some(tag) = varint(&mut b) else { return 0 };
        let skip = match tag & 7 {
            0 => {
                let Some(v) = varint(&mut b) else { return 0 };
                if tag >> 3 == 1 {
                    status = v;
                }
                0
            }
            1 => 8,
            2 => match varint(&mut b) {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => return 0,
            },
            5 => 4,
            _ => return 0,
        };
        if skip > b.len() {
            return 0;
        }
        b = &b[skip..];
    }
    status
}

fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES.get(code as usize).copied().unwrap_or("Unknown")
}

/// `grpc-message` is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Run a lifecycle hook (postStart, preStop): exec, httpGet or sleep.
pub async fn run_handler(rt: &PodRuntime, dir: &Path, ip: Option<Ipv4Addr>, id: &str, h: &LifecycleHandler, timeout: Duration) -> Result<(), String> {
    if let Some(e) = &h.exec {
        return exec(rt, id, e, timeout.max(Duration::from_secs(1))).await;
    }
    if let Some(g) = &h.http_get {
        return http_get(dir, ip, g, timeout.max(Duration::from_secs(1)), &|_| None).await;
    }
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(timeout)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_responses_and_requests() {
        assert_eq!(health_status(b"\x08\x01"), 1);
        assert_eq!(health_status(b"\x12\x02hi\x08\x02"), 2, "unknown fields are skipped");
        assert_eq!(health_status(b""), 0);
        assert_eq!(health_status(b"\x12\xff\xff\xff\xff\x0f"), 0, "a length past the end");
        assert_eq!(health_check_request(""), b"");
        assert_eq!(health_check_request("db"), b"\x0a\x02db");
        assert_eq!(grpc_frame(b"\x08\x01"), b"\x00\x00\x00\x00\x02\x08\x01");
        assert_eq!(percent_decode("bad%20thing%2"), "bad thing%2");
        assert_eq!(percent_decode("%E2%9C%93 ok %"), "\u{2713} ok %");
    }

    #[test]
    fn redirects() {
        assert_eq!(redirect_target("/b", false, 80, "/a"), Some((None, false, 80, "/b".into())));
        assert_eq!(redirect_target("c?x=1", false, 80, "/a/b"), Some((None, false, 80, "/a/c?x=1".into())));
        assert_eq!(redirect_target("https://h:8443/z", false, 80, "/a"), Some((Some("h".into()), true, 8443, "/z".into())));
        assert_eq!(redirect_target("http://h/", false, 80, "/a"), Some((Some("h".into()), false, 80, "/".into())));
    }
}
