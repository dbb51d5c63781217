//! `nanokube bench service`: what the Service proxy and the cluster DNS cost. A fresh
//! server (node on, host listeners on a Service range of its own) and two HTTP backends
//! run by the bench on 127.0.0.1 (so both paths hit the same server process):
//!
//! - requests through a ClusterIP against the same requests sent directly, keep-alive and
//!   a new connection per request, 1 and 64 clients (throughput, p50/p99 latency, and the
//!   added p99), twice: to a backend on the host (a Service whose EndpointSlice names
//!   127.0.0.1), and to a pod against its pod IP (the issue's "direct connection to the
//!   pod": the same keep-alive server, listening in the pod's network namespace);
//! - a new connection per request to a pod's busybox httpd through its ClusterIP against
//!   its pod IP;
//! - DNS answers per second at the cluster DNS address (UDP, 32 clients), and from inside
//!   the pod with a new socket per query (each a new flow through the pod's capture);
//! - with 1,000 Services present (`--services`): the time from an EndpointSlice write's acknowledgement
//!   to the first request the proxy carries to the new endpoint (propagation).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ms, percentile, Report};
use crate::client::ApiClient;

/// The Service range and load-balancer range the bench's server uses unless
/// `--server-arg` names others (away from the defaults, so a cluster on them is not
/// disturbed).
pub const SERVICE_RANGE: &str = "127.99.0.0/16";
/// The load-balancer range of the bench's server.
pub const LB_RANGE: &str = "127.242.0.0/16";

/// A keep-alive HTTP/1.1 server on 127.0.0.1 answering every request with `body`; its port.
async fn backend(body: &'static str) -> Result<u16, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    serve(listener, body)
}

/// The same server on `port` inside the network namespace at `ns` (a pod's): the socket
/// is made by a thread that entered the namespace, and stays there after it, so
/// connections reach it exactly as they reach a container of that pod.
async fn backend_in(ns: &Path, port: u16, body: &'static str) -> Result<u16, String> {
    let listener = nanokube_runtime::netns::within(ns, move || std::net::TcpListener::bind(("0.0.0.0", port)))?
        .map_err(|e| format!("listening in {}: {e}", ns.display()))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    serve(tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?, body)
}

/// Serve `listener` as [`backend`] does; its port.
fn serve(listener: tokio::net::TcpListener, body: &'static str) -> Result<u16, String> {
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                loop {
                    match s.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                    if have == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// One request on `s`; the body.
async fn request(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").await.map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            // HTTP/1.0 servers (busybox httpd) end the body by closing.
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").ok_or("connection closed")?;
            return Ok(buf[end + 4..].to_vec());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()) {
                if buf.len() >= end + 4 + len {
                    return Ok(buf[end + 4..end + 4 + len].to_vec());
                }
            }
        }
    }
}

/// `clients` clients sending requests to `addr` for `run` (over one kept connection
/// each, or a new one per request): requests per second and latencies.
async fn load(addr: String, clients: usize, keep_alive: bool, run: Duration) -> Result<(f64, Vec<Duration>), String> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (addr, done) = (addr.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut conn: Option<TcpStream> = None;
            while Instant::now() < deadline {
                let t = Instant::now();
                if conn.is_none() {
                    let s = TcpStream::connect(&addr).await.map_err(|e| format!("{addr}: {e}"))?;
                    let _ = s.set_nodelay(true);
                    conn = Some(s);
                }
                let Some(s) = conn.as_mut() else { continue };
                request(s).await.map_err(|e| format!("{addr}: {e}"))?;
                if !keep_alive {
                    conn = None;
                }
                lat.push(t.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    all.sort();
    Ok((done.load(Ordering::Relaxed) as f64 / run.as_secs_f64(), all))
}

async fn apply(client: &ApiClient, path: &str, obj: Value) -> Result<(), String> {
    let (code, body) = client.request("POST", path, Some("application/json"), None, bytes::Bytes::from(obj.to_string())).await?;
    if code >= 300 && code != 409 {
        return Err(format!("POST {path}: {code} {}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

fn slice(name: &str, port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]})
}

async fn cluster_ip(client: &ApiClient, name: &str) -> Result<String, String> {
    cluster_ip_in(client, "default", name).await
}

async fn cluster_ip_in(client: &ApiClient, namespace: &str, name: &str) -> Result<String, String> {
    let (_, body) = client.request("GET", &format!("/api/v1/namespaces/{namespace}/services/{name}"), None, None, bytes::Bytes::new()).await?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    v.pointer("/spec/clusterIP").and_then(Value::as_str).map(String::from).ok_or_else(|| format!("service {name} has no ClusterIP"))
}

/// Until `addr` answers `want` (or 10 s).
async fn until_answers(addr: &str, want: &[u8]) -> Result<Instant, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            if request(&mut s).await.is_ok_and(|b| b == want) {
                return Ok(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Err(format!("{addr} did not answer {:?} within 10 s", String::from_utf8_lossy(want)))
}

fn row(report: &mut Report, key: &str, (rps, lat): &(f64, Vec<Duration>)) {
    report.add(
        key,
        format!("{rps:.0} req/s  p50 {}  p99 {}", ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99))),
        json!({"rps": rps, "p50_ms": percentile(lat, 0.5).as_secs_f64() * 1000.0, "p99_ms": percentile(lat, 0.99).as_secs_f64() * 1000.0}),
    );
}

/// DNS answers per second (answers with one record) to `clients` clients sending `query`
/// to `dns` for `run`: each from one socket on the host, or (`fresh_in`) from a new
/// socket per query made inside that network namespace.
async fn dns_answers(query: &[u8], dns: &str, clients: usize, run: Duration, fresh_in: Option<std::path::PathBuf>) -> Result<f64, String> {
    let answered = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (query, answered, dns, fresh_in) = (query.to_vec(), answered.clone(), dns.to_string(), fresh_in.clone());
        tasks.push(tokio::spawn(async move {
            let mut kept = None;
            let mut buf = [0u8; 512];
            while Instant::now() < deadline {
                let fresh;
                let sock = match (&fresh_in, &kept) {
                    (Some(ns), _) => {
                        fresh = nanokube_runtime::netns::udp_socket(ns).await.map_err(|e| e.to_string())?;
                        fresh.connect(&dns).await.map_err(|e| e.to_string())?;
                        &fresh
                    }
                    (None, Some(sock)) => sock,
                    (None, None) => {
                        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
                        sock.connect(&dns).await.map_err(|e| e.to_string())?;
                        kept.insert(sock)
                    }
                };
                sock.send(&query).await.map_err(|e| e.to_string())?;
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                    if n > 12 && buf[7] == 1 {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(answered.load(Ordering::Relaxed) as f64 / run.as_secs_f64())
}

/// Requests through the ClusterIP `vip` against the same requests sent to `direct`
/// (what `base` names), keep-alive and a new connection per request, 1 and 64 clients:
/// each path's rate and latency, and the ClusterIP's share of the direct rate and added p99.
async fn compare(report: &mut Report, base: &str, vip: &str, direct: &str, run: Duration) -> Result<(), String> {
    for (keep_alive, what) in [(true, "keep-alive"), (false, "new connection per request")] {
        for clients in [1usize, 64] {
            let through = load(vip.to_string(), clients, keep_alive, run).await?;
            let straight = load(direct.to_string(), clients, keep_alive, run).await?;
            row(report, &format!("service: {base} by ClusterIP, {what}, {clients} client(s)"), &through);
            row(report, &format!("service: {base} directly, {what}, {clients} client(s)"), &straight);
            let share = through.0 / straight.0.max(1.0) * 100.0;
            let added = percentile(&through.1, 0.99).as_secs_f64() - percentile(&straight.1, 0.99).as_secs_f64();
            report.add(
                &format!("service: ClusterIP / {base} ({what}, {clients})"),
                format!("{share:.0}% of the throughput, p99 {added:+.3} ms", added = added * 1000.0),
                json!({"throughput_pct": share, "added_p99_ms": added * 1000.0}),
            );
        }
    }
    Ok(())
}

/// Run the scenario against the server at `kubeconfig` (data directory `data`), each
/// load for `run`, propagation measured with `services` Services.
pub async fn service(binary: &Path, data: &Path, kubeconfig: &Path, run: Duration, services: usize, report: &mut Report) -> Result<(), String> {
    let client = Arc::new(ApiClient::from_kubeconfig(kubeconfig, false)?);
    let a = backend("A").await?;
    let b = backend("B").await?;
    apply(&client, "/api/v1/namespaces/default/services", json!({"metadata": {"name": "direct"}, "spec": {"ports": [{"port": 80}]}})).await?;
    apply(&client, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", slice("direct", a)).await?;
    let vip = format!("{}:80", cluster_ip(&client, "direct").await?);
    until_answers(&vip, b"A").await?;
    let direct = format!("127.0.0.1:{a}");

    // A Service in front of a host process: its ClusterIP against the process's own
    // address on the host (no pod network on either path).
    compare(report, "host process", &vip, &direct, run).await?;

    // A pod behind a Service (busybox httpd on 8080, and the bench's own keep-alive
    // server in the pod's network namespace on 8081).
    let archive = data.join("benchbox.tar");
    std::fs::write(&archive, super::pods_run::test_image(Path::new("/bin/busybox"), "benchbox:1.0")?).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(binary).args(["image", "load"]).arg(&archive).arg("--data-dir").arg(data).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("loading the bench image: {}", String::from_utf8_lossy(&out.stderr)));
    }
    apply(
        &client,
        "/api/v1/namespaces/default/pods",
        json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "benchbox:1.0", "imagePullPolicy": "Never",
            "command": ["sh", "-c", "mkdir /www; echo -n P > /www/index.html; exec busybox httpd -f -p 8080 -h /www"], "ports": [{"containerPort": 8080}, {"containerPort": 8081}]}]}}),
    )
    .await?;
    apply(
        &client,
        "/api/v1/namespaces/default/services",
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "httpd", "port": 80, "targetPort": 8080}, {"name": "bench", "port": 81, "targetPort": 8081}]}}),
    )
    .await?;
    let web = format!("{}:80", cluster_ip(&client, "web").await?);
    until_answers(&web, b"P").await?;
    let (_, pod) = client.request("GET", "/api/v1/namespaces/default/pods/web", None, None, bytes::Bytes::new()).await?;
    let pod: Value = serde_json::from_slice(&pod).map_err(|e| e.to_string())?;
    let pod_ip = format!("{}:8080", pod.pointer("/status/podIP").and_then(Value::as_str).unwrap_or(""));
    until_answers(&pod_ip, b"P").await?;
    let through = load(web.clone(), 1, false, run).await?;
    let straight = load(pod_ip.clone(), 1, false, run).await?;
    row(report, "service: pod (httpd) by ClusterIP, new connections, 1 client", &through);
    row(report, "service: pod (httpd) by pod IP, new connections, 1 client", &straight);
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str).ok_or("the pod has no uid")?;
    let pod_ns = data.join("pods").join(uid).join("ns-net");
    backend_in(&pod_ns, 8081, "Q").await?;
    let (web, pod_ip) = (web.replace(":80", ":81"), pod_ip.replace(":8080", ":8081"));
    until_answers(&web, b"Q").await?;
    until_answers(&pod_ip, b"Q").await?;
    // The figure: a Service's cost over reaching the pod directly.
    compare(report, "pod IP", &web, &pod_ip, run).await?;

    // DNS answers per second, at the kube-dns Service's address.
    let dns = format!("{}:53", cluster_ip_in(&client, "kube-system", "kube-dns").await?);
    let query = {
        // A query for web.default.svc.cluster.local, type A, class IN.
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["web", "default", "svc", "cluster", "local"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    };
    let qps = dns_answers(&query, &dns, 32, run, None).await?;
    report.add("service: DNS answers/s (UDP, 32 clients)", format!("{qps:.0}"), json!(qps));
    // From inside the pod, each query from a socket of its own as glibc's resolver sends
    // each lookup: every query is a new UDP flow through the pod's capture.
    let qps = dns_answers(&query, &dns, 8, run, Some(pod_ns)).await?;
    report.add("service: DNS answers/s from a pod, a new socket per query (8 clients)", format!("{qps:.0}"), json!(qps));

    // Propagation with `services` Services: each points at backend A; then a tenth of
    // them, one at a time, are moved to backend B.
    let names: Vec<String> = (0..services.max(1)).map(|i| format!("svc-{i}")).collect();
    for chunk in names.chunks(50) {
        let mut writes = Vec::new();
        for name in chunk {
            let (c, name) = (client.clone(), name.clone());
            writes.push(tokio::spawn(async move {
                apply(&c, "/api/v1/namespaces/default/services", json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}})).await?;
                apply(&c, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", slice(&name, a)).await
            }));
        }
        for w in writes {
            w.await.map_err(|e| e.to_string())??;
        }
    }
    let mut lat = Vec::new();
    for name in names.iter().step_by(10) {
        let addr = format!("{}:80", cluster_ip(&client, name).await?);
        until_answers(&addr, b"A").await?;
        let moved = slice(name, b);
        let path = format!("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{name}");
        let (code, body) = client.request("PUT", &path, Some("application/json"), None, bytes::Bytes::from(moved.to_string())).await?;
        let acked = Instant::now();
        if code >= 300 {
            return Err(format!("PUT {path}: {code} {}", String::from_utf8_lossy(&body)));
        }
        let seen = until_answers(&addr, b"B").await?;
        lat.push(seen.duration_since(acked));
    }
    lat.sort();
    report.add(
        &format!("service: endpoint propagation, {} Services (ms)", names.len()),
        format!(
            "p50 {}  p99 {}  max {}  ({} moves)",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap_or(&Duration::ZERO)),
            lat.len()
        ),
        json!({"p50_ms": percentile(&lat, 0.5).as_secs_f64() * 1000.0, "p99_ms": percentile(&lat, 0.99).as_secs_f64() * 1000.0, "moves": lat.len()}),
    );
    Ok(())
}
