//! Probes and lifecycle hooks, as kubelet's prober runs them: a startup probe first
//! (liveness and readiness wait for it), then liveness and readiness each on their own
//! period, with `initialDelaySeconds`, `timeoutSeconds`, `successThreshold` and
//! `failureThreshold`; every failure an `Unhealthy` event; a liveness or startup probe
//! that reaches its threshold restarts the container.
//!
//! exec runs in the container (`runc exec`); httpGet and tcpSocket connect from inside
//! the pod's network namespace to the pod's IP (kubelet connects to the pod IP from the
//! node), HTTP with `User-Agent: kube-probe/1.33` and success on 200–399.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
                    .record(&t.rt.registry, &t.pod, Some(&t.field_path), "Warning", "Unhealthy", &format!("{} probe failed: {why}", which.title()))
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
    if p.grpc.is_some() {
        return Err("gRPC probes are not supported by this node yet".into());
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
    if h.scheme.as_deref() == Some("HTTPS") {
        return Err("HTTPS probes are not supported by this node yet".into());
    }
    let port = port_of(&h.port, named)?;
    let path = h.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
    let host = h.host.clone().filter(|x| !x.is_empty()).or_else(|| ip.map(|i| i.to_string())).unwrap_or_default();
    let url = format!("http://{host}:{port}{path}");
    let work = async {
        let mut stream = connect(dir, ip, h.host.as_deref(), port, timeout).await?;
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        let has = |n: &str| h.http_headers.iter().flatten().any(|x| x.name.eq_ignore_ascii_case(n));
        if !has("host") {
            req += &format!("Host: {host}:{port}\r\n");
        }
        if !has("user-agent") {
            req += "User-Agent: kube-probe/1.33\r\n";
        }
        if !has("accept") {
            req += "Accept: */*\r\n";
        }
        for x in h.http_headers.iter().flatten() {
            req += &format!("{}: {}\r\n", x.name, x.value);
        }
        req += "Connection: close\r\n\r\n";
        stream.write_all(req.as_bytes()).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
        // Only the status line matters; at most 10 KiB are read.
        let mut buf = vec![0u8; 10 * 1024];
        let mut n = 0;
        while n < buf.len() {
            let got = stream.read(&mut buf[n..]).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
            if got == 0 || buf[..n + got].windows(2).any(|w| w == b"\r\n") {
                n += got;
                break;
            }
            n += got;
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)")),
    }
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
