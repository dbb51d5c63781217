//! `nanokube bench`: measures a cluster the way users feel it. Scenarios: `startup`
//! (spawn any server command → `/readyz` 200, cold and warm, RSS after 1 s), `create` (durable creates/s
//! and latency at several client counts), `list` (LIST of N ConfigMaps as JSON and
//! Table, with and without `resourceVersion=0`, at each size given), `fsync` (the data disk's fdatasync
//! latency, the physical limit of one sequential durable writer), `deployments` (1,000
//! Deployments of 3 on simulated nodes until Available, then CPU and RSS at rest),
//! `service` (the Service proxy against direct connections, DNS answers/s, endpoint
//! propagation with 1,000 Services) and others (see `nanokube bench --help`). Figures print as a
//! table and optionally as JSON. The client is async Rust over pooled HTTPS
//! connections; its own CPU time is printed so a reader can tell it was not the
//! bottleneck.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::client::ApiClient;

mod abuse;
mod deployments;
mod pods_run;
mod service;

/// Options of a bench run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scenarios to run.
    pub scenarios: Vec<String>,
    /// Target cluster; `None` starts a fresh `nanokube server` (durable, default flags).
    pub kubeconfig: Option<PathBuf>,
    /// The nanokube binary for `startup` and for the fresh server.
    pub binary: PathBuf,
    /// The server `startup` starts (`{data}`, `{port}` substituted); `None`: `binary server`.
    pub server_command: Option<String>,
    /// Where that server writes its kubeconfig (`{data}`, `{port}` substituted).
    pub server_kubeconfig: String,
    /// Startup runs.
    pub runs: usize,
    /// Objects created per client count.
    pub count: usize,
    /// Client counts for `create`.
    pub clients: Vec<usize>,
    /// Collection sizes listed by `list`, each in turn.
    pub objects: Vec<usize>,
    /// Write figures as JSON here.
    pub json: Option<PathBuf>,
    /// Use HTTP/2 (one connection per client either way).
    pub http2: bool,
    /// Watcher counts for `watch`.
    pub watchers: Vec<usize>,
    /// Events written per watcher count.
    pub events: usize,
    /// Pods stored by `pods`, run by `pods-simulated`.
    pub pods: usize,
    /// Simulated nodes of `pods-simulated`.
    pub simulated_nodes: usize,
    /// Deployments made by `deployments`.
    pub deployments: usize,
    /// How long `abuse` attacks (the normal clients first run alone a third of it).
    pub seconds: u64,
    /// The attacks `abuse` runs (empty: all of them).
    pub attacks: Vec<String>,
    /// How long each load of the service scenario runs, in milliseconds.
    pub run_ms: u64,
    /// Services present while the service scenario measures propagation.
    pub services: usize,
    /// More arguments for the servers `pods-simulated` and `deployments` start.
    pub server_args: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A nanokube server started by the bench.
struct Spawned {
    child: Child,
    kubeconfig: PathBuf,
}

fn spawn_server(binary: &Path, data: &Path, port: u16) -> Result<Spawned, String> {
    // No scheduler: the scenarios measure the API server, as kube-apiserver + etcd were
    // measured beside it (the pods scenario stores pods no node runs).
    spawn_server_with(binary, data, port, &["--scheduler=false"])
}

fn spawn_server_with(binary: &Path, data: &Path, port: u16, extra: &[&str]) -> Result<Spawned, String> {
    let mut child = Command::new(binary)
        .args(["server", "--secure-port", &port.to_string(), "--merge-kubeconfig=false"])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("nanokube is ready at") => break,
            Some(Ok(_)) => continue,
            _ => {
                let _ = child.kill();
                return Err("server exited before it was ready".into());
            }
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Spawned { child, kubeconfig: data.join("kubeconfig") })
}

/// A `kB` field (`VmRSS:`, `VmHWM:`) of a process's `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

/// This process's user+system CPU time.
fn cpu_time() -> Duration {
    stat_cpu("/proc/self/stat").unwrap_or_default()
}

/// A process's user+system CPU time, from /proc.
fn process_cpu(pid: u32) -> Option<Duration> {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// utime + stime of a `/proc/<pid>/stat` (clock ticks of 10 ms, as Linux uses by default).
fn stat_cpu(path: &str) -> Option<Duration> {
    let s = std::fs::read_to_string(path).ok()?;
    // After "(comm)", field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let after = s.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ut: u64 = fields.get(11)?.parse().ok()?;
    let st: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((ut + st) * 10))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

struct Report {
    rows: Vec<(String, String)>,
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn add(&mut self, key: &str, shown: String, v: Value) {
        println!("  {key:<44} {shown}");
        std::io::stdout().flush().ok();
        self.rows.push((key.to_string(), shown));
        self.json.insert(key.to_string(), v);
    }
}

/// Run the bench.
pub async fn run(opts: BenchOptions) -> Result<(), String> {
    let mut report = Report { rows: Vec::new(), json: serde_json::Map::new() };
    let tmp = std::env::temp_dir().join(format!("nanokube-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    println!("nanokube bench: {}", opts.scenarios.join(", "));
    let mut target: Option<Spawned> = None;
    let result = async {
        for sc in &opts.scenarios {
            match sc.as_str() {
                "fsync" => fsync(&tmp, &mut report)?,
                "testcluster" => testcluster(&opts, &tmp, &mut report).await?,
                "startup" => startup(&opts, &tmp, &mut report).await?,
                "pods-simulated" if opts.kubeconfig.is_some() => {
                    // A cluster of the caller's, with simulated nodes of its own.
                    let kc = opts.kubeconfig.clone().unwrap_or_default();
                    pods_simulated(&opts, &kc, 0, &mut report).await?;
                }
                "pods-simulated" => {
                    // Its own server: no real node, the scheduler and N simulated nodes.
                    let data = tmp.join("pods-simulated");
                    let nodes = opts.simulated_nodes.to_string();
                    let args = [&["--node=false", "--simulated-nodes", &nodes][..], &opts.server_args.iter().map(String::as_str).collect::<Vec<_>>()].concat();
                    let mut s = spawn_server_with(&opts.binary, &data, free_port(), &args)?;
                    println!("  (pods-simulated: a fresh nanokube server with {nodes} simulated nodes, pid {})", s.child.id());
                    let r = pods_simulated(&opts, &s.kubeconfig, s.child.id(), &mut report).await;
                    let _ = s.child.kill();
                    let _ = s.child.wait();
                    r?;
                }
                "deployments" => {
                    // Its own server: no real node, the scheduler, and simulated nodes
                    // enough for every pod.
                    let data = tmp.join("deployments");
                    let nodes = (opts.deployments * 3 / 1000 + 1).max(opts.simulated_nodes.min(10)).to_string();
                    let args = [&["--node=false", "--simulated-nodes", &nodes][..], &opts.server_args.iter().map(String::as_str).collect::<Vec<_>>()].concat();
                    let mut s = spawn_server_with(&opts.binary, &data, free_port(), &args)?;
                    println!("  (deployments: a fresh nanokube server with {nodes} simulated nodes, pid {})", s.child.id());
                    let r = deployments::deployments(opts.deployments, &s.kubeconfig, s.child.id(), &mut report).await;
                    let _ = s.child.kill();
                    let _ = s.child.wait();
                    r?;
                }
                "pods-run" => {
                    // Its own server, scheduler and node on, stopped cleanly after (its
                    // pods' containers stop with it).
                    let data = tmp.join("pods-run");
                    let mut s = spawn_server_with(&opts.binary, &data, free_port(), &[])?;
                    println!("  (pods-run: a fresh nanokube server with its node, pid {})", s.child.id());
                    let r = pods_run::pods_run(&opts.binary, &data, &s.kubeconfig, s.child.id(), &mut report).await;
                    // SAFETY: kill(2) of the child this bench started.
                    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
                    let _ = s.child.wait();
                    r?;
                }
                "service" => {
                    // Its own server with its node, the host's Service listeners on a
                    // range of their own; stopped cleanly after.
                    let data = tmp.join("service");
                    let given = |flag: &str| opts.server_args.iter().any(|a| a.starts_with(flag));
                    let mut args = vec!["--service-proxy=true".to_string(), "--cluster-dns-upstream=none".to_string(), "--kubelet-port=0".to_string()];
                    if !given("--service-cluster-ip-range") {
                        args.push(format!("--service-cluster-ip-range={}", service::SERVICE_RANGE));
                    }
                    if !given("--load-balancer-cidr") {
                        args.push(format!("--load-balancer-cidr={}", service::LB_RANGE));
                    }
                    args.extend(opts.server_args.iter().cloned());
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    let mut s = spawn_server_with(&opts.binary, &data, free_port(), &args)?;
                    println!("  (service: a fresh nanokube server with its node, pid {})", s.child.id());
                    let r = service::service(&opts.binary, &data, &s.kubeconfig, Duration::from_millis(opts.run_ms.max(1)), opts.services, &mut report).await;
                    // SAFETY: kill(2) of the child this bench started.
                    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
                    let _ = s.child.wait();
                    r?;
                }
                "create" | "list" | "watch" | "get" | "update" | "delete" | "pods" | "abuse" => {
                    let kc = match (&opts.kubeconfig, &target) {
                        (Some(k), _) => k.clone(),
                        (None, Some(t)) => t.kubeconfig.clone(),
                        (None, None) => {
                            let s = spawn_server(&opts.binary, &tmp.join("target"), free_port())?;
                            println!("  (target: a fresh nanokube server, durable store, pid {})", s.child.id());
                            let k = s.kubeconfig.clone();
                            target = Some(s);
                            k
                        }
                    };
                    match sc.as_str() {
                        "create" => create(&opts, &kc, &mut report).await?,
                        "list" => list(&opts, &kc, &mut report).await?,
                        "watch" => watch(&opts, &kc, &mut report).await?,
                        "pods" => pods(&opts, &kc, target.as_ref().map(|t| t.child.id()), &mut report).await?,
                        "abuse" => abuse::abuse(&kc, opts.seconds, &opts.attacks, target.as_ref().map(|t| t.child.id()), &mut report).await?,
                        _ => get_update_delete(sc, &opts, &kc, &mut report).await?,
                    }
                }
                other => {
                    return Err(format!(
                    "unknown scenario {other:?} (fsync, startup, testcluster, create, get, update, delete, list, watch, pods, pods-simulated, pods-run, deployments, service, abuse)"
                ))
                }
            }
        }
        Ok::<(), String>(())
    }
    .await;
    if let Some(mut t) = target.take() {
        if let Some(r) = rss_kib(t.child.id()) {
            report.add("target RSS after the run (MiB)", format!("{:.1}", r as f64 / 1024.0), json!(r as f64 / 1024.0));
        }
        let _ = t.child.kill();
        let _ = t.child.wait();
    }
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    let cpu = cpu_time().saturating_sub(cpu0);
    report.add(
        "bench client CPU (s) / wall (s)",
        format!("{:.2} / {:.2}", cpu.as_secs_f64(), wall0.elapsed().as_secs_f64()),
        json!({"cpu_s": cpu.as_secs_f64(), "wall_s": wall0.elapsed().as_secs_f64()}),
    );
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_vec_pretty(&Value::Object(report.json)).expect("serialize")).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}

/// The fsync scenario's figure, which the create scenario reads when both ran.
const FSYNC_KEY: &str = "fsync: fdatasync p50 / mean (ms)";

fn fsync(dir: &Path, report: &mut Report) -> Result<(), String> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(|e| e.to_string())?;
    let block = vec![0u8; 4096];
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        f.write_all(&block).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        lat.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    lat.sort();
    let p50 = percentile(&lat, 0.5);
    let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
    report.add(FSYNC_KEY, format!("{} / {}", ms(p50), ms(mean)), json!({"p50_ms": ms(p50), "mean_ms": ms(mean)}));
    report.add("fsync: 1 sequential writer limit (writes/s)", format!("{:.0}", 1.0 / mean.as_secs_f64()), json!(1.0 / mean.as_secs_f64()));
    Ok(())
}

/// Polls `/readyz` with the credentials of the kubeconfig the server writes until it
/// answers 200. The client is made again whenever the file changes (a warm start
/// rewrites it with the new port), not on every poll: the polls share the two cores with
/// the server that is starting.
async fn wait_ready(child: &mut Child, kubeconfig: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = String::from("no kubeconfig yet");
    let mut client: Option<(std::time::SystemTime, u64, ApiClient)> = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the server exited ({status}) before /readyz answered 200; last: {last}"));
        }
        if Instant::now() > deadline {
            return Err(format!("/readyz did not answer 200 within 120 s; last: {last}"));
        }
        if let Some((modified, len)) = std::fs::metadata(kubeconfig).ok().and_then(|m| Some((m.modified().ok()?, m.len()))) {
            if !matches!(&client, Some((m, l, _)) if *m == modified && *l == len) {
                client = match ApiClient::from_kubeconfig(kubeconfig, false) {
                    Ok(c) => Some((modified, len, c)),
                    Err(e) => {
                        last = e;
                        None
                    }
                };
            }
        }
        if let Some((_, _, c)) = &client {
            match c.request("GET", "/readyz", None, None, Bytes::new()).await {
                Ok((200, _)) => return Ok(()),
                Ok((code, _)) => last = format!("/readyz answered {code}"),
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_micros(250)).await;
    }
}

/// SIGTERM, then SIGKILL if the process is still there after 10 s.
fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn startup(opts: &BenchOptions, tmp: &Path, report: &mut Report) -> Result<(), String> {
    let command = match &opts.server_command {
        Some(c) => c.clone(),
        None => {
            let binary = opts.binary.display().to_string();
            let quoted = shlex::try_quote(&binary).map_err(|e| format!("{binary}: {e}"))?;
            format!("{quoted} server --secure-port {{port}} --merge-kubeconfig=false --data-dir {{data}}")
        }
    };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut rss = Vec::new();
    for run in 0..opts.runs {
        let data = tmp.join(format!("startup-{run}"));
        std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        for (phase, out) in [("cold", &mut cold), ("warm", &mut warm)] {
            let port = free_port().to_string();
            let fill = |template: &str| template.replace("{data}", &data.display().to_string()).replace("{port}", &port);
            let argv = shlex::split(&fill(&command)).filter(|a| !a.is_empty()).ok_or_else(|| format!("--server-command: cannot split {command:?}"))?;
            let kubeconfig = PathBuf::from(fill(&opts.server_kubeconfig));
            let t = Instant::now();
            let mut child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("spawn {}: {e}", argv[0]))?;
            let ready = wait_ready(&mut child, &kubeconfig).await;
            let ready = match ready {
                Ok(()) => t.elapsed(),
                Err(e) => {
                    stop(&mut child);
                    return Err(format!("startup ({phase}): {e}"));
                }
            };
            out.push(ready);
            if phase == "cold" {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(r) = rss_kib(child.id()) {
                    rss.push(r);
                }
            }
            stop(&mut child);
        }
    }
    cold.sort();
    warm.sort();
    rss.sort();
    report.add(
        &format!("startup: spawn → /readyz 200, cold (ms, {} runs)", opts.runs),
        format!("p50 {}  min {}  max {}", ms(percentile(&cold, 0.5)), ms(cold[0]), ms(*cold.last().unwrap())),
        json!({"p50_ms": ms(percentile(&cold, 0.5)), "min_ms": ms(cold[0]), "max_ms": ms(*cold.last().unwrap())}),
    );
    report.add(
        "startup: spawn → /readyz 200, warm (ms)",
        format!("p50 {}  min {}  max {}", ms(percentile(&warm, 0.5)), ms(warm[0]), ms(*warm.last().unwrap())),
        json!({"p50_ms": ms(percentile(&warm, 0.5)), "min_ms": ms(warm[0]), "max_ms": ms(*warm.last().unwrap())}),
    );
    if !rss.is_empty() {
        let mid = rss[rss.len() / 2] as f64 / 1024.0;
        report.add("startup: idle RSS 1 s after ready (MiB)", format!("{mid:.1}"), json!(mid));
    }
    Ok(())
}

/// In-process start to ready, as `TestCluster` does it (in-memory store, no fsync).
async fn testcluster(opts: &BenchOptions, tmp: &Path, report: &mut Report) -> Result<(), String> {
    let mut lat = Vec::new();
    for run in 0..opts.runs.max(5) {
        let mut cfg = crate::ClusterConfig::new(tmp.join(format!("tc-{run}")));
        cfg.secure_port = 0;
        cfg.in_memory = true;
        cfg.fsync = false;
        cfg.service_proxy = false;
        cfg.dns_upstreams = Some(Vec::new());
        let t = Instant::now();
        let c = crate::Cluster::start(cfg).await?;
        lat.push(t.elapsed());
        c.shutdown().await;
    }
    lat.sort();
    report.add(
        &format!("testcluster: in-process start → ready (ms, {} runs)", lat.len()),
        format!("p50 {}  min {}  max {}", ms(percentile(&lat, 0.5)), ms(lat[0]), ms(*lat.last().unwrap())),
        json!({"p50_ms": ms(percentile(&lat, 0.5)), "min_ms": ms(lat[0]), "max_ms": ms(*lat.last().unwrap())}),
    );
    Ok(())
}

async fn ensure_namespace(client: &ApiClient, ns: &str) -> Result<(), String> {
    let body = Bytes::from(format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{ns}"}}}}"#));
    let (code, b) = client.request("POST", "/api/v1/namespaces", Some("application/json"), None, body).await?;
    if code != 201 && code != 409 {
        return Err(format!("create namespace {ns}: {code} {}", String::from_utf8_lossy(&b)));
    }
    // The namespace controller creates its default objects; give it a moment.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

fn configmap(name: &str) -> Bytes {
    // About 1 KB, as in the issue's scenario.
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","labels":{{"bench":"true"}}}},"data":{{"payload":"{}"}}}}"#,
        "x".repeat(900)
    ))
}

/// Create `count` ConfigMaps in `ns` with `clients` concurrent clients; latencies sorted.
async fn create_many(kubeconfig: &Path, ns: &str, prefix: &str, count: usize, clients: usize, http2: bool) -> Result<(Duration, Vec<Duration>), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let client = ApiClient::from_kubeconfig(kubeconfig, http2)?;
        let next = next.clone();
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let prefix = prefix.to_string();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, String>(lat);
                }
                // Long runs show progress, as the pods scenario does.
                if count >= 20_000 && i > 0 && i.is_multiple_of(count / 10) {
                    println!("  ... {i} of {count} ConfigMaps created");
                }
                let t = Instant::now();
                let (code, body) = client.request("POST", &path, Some("application/json"), None, configmap(&format!("{prefix}-{i}"))).await?;
                if code != 201 {
                    return Err(format!("create: {code} {}", String::from_utf8_lossy(&body)));
                }
                lat.push(t.elapsed());
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| e.to_string())??);
    }
    let wall = start.elapsed();
    all.sort();
    Ok((wall, all))
}

async fn create(opts: &BenchOptions, kubeconfig: &Path, report: &mut Report) -> Result<(), String> {
    let client = ApiClient::from_kubeconfig(kubeconfig, opts.http2)?;
    for &c in &opts.clients {
        let ns = format!("bench-create-{c}-{}", std::process::id());
        ensure_namespace(&client, &ns).await?;
        let (wall, lat) = create_many(kubeconfig, &ns, "cm", opts.count, c, opts.http2).await?;
        let rate = opts.count as f64 / wall.as_secs_f64();
        report.add(
            &format!("create: {} ConfigMaps, {c} client(s)", opts.count),
            format!("{rate:.0}/s  p50 {}  p90 {}  p99 {}  max {} ms", ms(percentile(&lat, 0.5)), ms(percentile(&lat, 0.9)), ms(percentile(&lat, 0.99)), ms(*lat.last().unwrap())),
            json!({"clients": c, "per_second": rate, "p50_ms": ms(percentile(&lat, 0.5)), "p90_ms": ms(percentile(&lat, 0.9)), "p99_ms": ms(percentile(&lat, 0.99)), "max_ms": ms(*lat.last().unwrap())}),
        );
        let fsync_mean = report.json.get(FSYNC_KEY).and_then(|f| f["mean_ms"].as_f64());
        if let (1, Some(fsync_ms)) = (c, fsync_mean) {
            one_client_against_the_ceiling(&client, &ns, rate, fsync_ms, report).await?;
        }
    }
    Ok(())
}

/// `warmup` untimed GETs of `path`, then `n` timed ones: their latencies, sorted, and
/// the last body.
async fn timed_gets(client: &ApiClient, path: &str, accept: &str, warmup: usize, n: usize) -> Result<(Vec<Duration>, Bytes), String> {
    let mut lat = Vec::with_capacity(n);
    let mut last = Bytes::new();
    for i in 0..warmup + n {
        let t = Instant::now();
        let (code, body) = client.request("GET", path, None, Some(accept), Bytes::new()).await?;
        let d = t.elapsed();
        if code != 200 {
            return Err(format!("GET {path}: {code}"));
        }
        if i >= warmup {
            lat.push(d);
        }
        last = body;
    }
    lat.sort();
    Ok((lat, last))
}

/// With one client and a measured fsync: the creates' share of the disk's ceiling, and
/// the share that a write doing nothing but one HTTPS round trip (a GET's, measured
/// here) and one fsync would reach — what limits one sequential client on a fast disk.
async fn one_client_against_the_ceiling(client: &ApiClient, ns: &str, rate: f64, fsync_ms: f64, report: &mut Report) -> Result<(), String> {
    let (rtt, _) = timed_gets(client, &format!("/api/v1/namespaces/{ns}"), "application/json", 0, 500).await?;
    let ceiling = 1000.0 / fsync_ms;
    let floor_ms = ms(percentile(&rtt, 0.5)) + fsync_ms;
    report.add(
        "create, 1 client: share of the fsync ceiling",
        format!("{:.0}%", rate / ceiling * 100.0),
        json!({"percent": rate / ceiling * 100.0, "ceiling_per_second": ceiling}),
    );
    report.add(
        "create, 1 client: floor (GET p50 + fsync)",
        format!("{floor_ms:.3} ms = {:.0}/s = {:.0}% of the ceiling", 1000.0 / floor_ms, 100.0 * fsync_ms / floor_ms),
        json!({"get_p50_ms": ms(percentile(&rtt, 0.5)), "floor_ms": floor_ms, "percent": 100.0 * fsync_ms / floor_ms}),
    );
    Ok(())
}

async fn list(opts: &BenchOptions, kubeconfig: &Path, report: &mut Report) -> Result<(), String> {
    let client = ApiClient::from_kubeconfig(kubeconfig, opts.http2)?;
    let ns = format!("bench-list-{}", std::process::id());
    ensure_namespace(&client, &ns).await?;
    let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let mut sizes = opts.objects.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut stored = 0;
    for (step, &size) in sizes.iter().enumerate() {
        if size > stored {
            if size >= 10_000 {
                println!("  ... storing {} more ConfigMaps for a list of {size}", size - stored);
            }
            create_many(kubeconfig, &ns, &format!("item{step}"), size - stored, 8, opts.http2).await?;
            stored = size;
            // The server's controllers are still reading the create events: let them
            // finish, so the lists below measure lists, not lists beside that backlog.
            tokio::time::sleep(Duration::from_millis(500 + size as u64 / 50)).await;
        }
        // Fewer timed runs for the large sizes: a LIST of 100,000 moves ~130 MB.
        let runs = (40_000 / size.max(1)).clamp(3, 20);
        for (label, query, accept) in [
            ("JSON", "", "application/json"),
            ("JSON, resourceVersion=0", "?resourceVersion=0", "application/json"),
            ("Table, first page (limit=500)", "?limit=500", table),
            ("Table, all rows", "", table),
        ] {
            let (lat, body) = timed_gets(&client, &format!("/api/v1/namespaces/{ns}/configmaps{query}"), accept, 2, runs).await?;
            let bytes = body.len();
            let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            let items = v.get("items").or_else(|| v.get("rows")).and_then(Value::as_array).map_or(0, Vec::len);
            report.add(
                &format!("list: {} ConfigMaps, {label}", size + 1),
                format!("p50 {}  min {} ms  ({} items, {} KB)", ms(percentile(&lat, 0.5)), ms(lat[0]), items, bytes / 1024),
                json!({"p50_ms": ms(percentile(&lat, 0.5)), "min_ms": ms(lat[0]), "items": items, "bytes": bytes, "runs": runs}),
            );
        }
    }
    Ok(())
}

/// One watch event, reduced to what the watch scenario measures.
#[derive(serde::Deserialize)]
struct WatchLine<'a> {
    #[serde(borrow)]
    object: WatchObject<'a>,
}

#[derive(serde::Deserialize)]
struct WatchObject<'a> {
    #[serde(borrow)]
    metadata: WatchMeta<'a>,
}

#[derive(serde::Deserialize)]
struct WatchMeta<'a> {
    #[serde(default)]
    name: &'a str,
    #[serde(default, rename = "resourceVersion")]
    resource_version: &'a str,
}

/// W watchers on one collection while one writer creates `events` objects: the delay from
/// each write's acknowledgement to each watcher's receipt, and that every watcher got
/// every event once, in order.
async fn watch(opts: &BenchOptions, kubeconfig: &Path, report: &mut Report) -> Result<(), String> {
    use http_body_util::BodyExt;
    use std::collections::HashMap;
    use std::sync::Mutex;
    let writer = ApiClient::from_kubeconfig(kubeconfig, false)?;
    for &w in &opts.watchers {
        let ns = format!("bench-watch-{w}-{}", std::process::id());
        ensure_namespace(&writer, &ns).await?;
        let (_, body) = writer.request("GET", &format!("/api/v1/namespaces/{ns}/configmaps"), None, Some("application/json"), Bytes::new()).await?;
        let rv = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["metadata"]["resourceVersion"].as_str().map(String::from)).unwrap_or_default();
        let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        // HTTP/2, at most 50 watch streams per connection.
        let clients: Vec<ApiClient> = (0..w.div_ceil(50)).map(|_| ApiClient::from_kubeconfig(kubeconfig, true)).collect::<Result<_, _>>()?;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..w {
            let body = clients[i / 50].stream(&format!("/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=120")).await?;
            let (events, acks) = (opts.events, acks.clone());
            tasks.spawn(async move {
                let mut body = body;
                // The part of a line that the last frame ended in.
                let mut partial = Vec::new();
                let mut got: Vec<(String, i64, Instant)> = Vec::new();
                while got.len() < events {
                    let Some(frame) = body.frame().await else { break };
                    let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else { continue };
                    let now = Instant::now();
                    let mut start = 0;
                    for end in memchr::memchr_iter(b'\n', &data) {
                        let line = if partial.is_empty() {
                            &data[start..end]
                        } else {
                            partial.extend_from_slice(&data[start..end]);
                            &partial[..]
                        };
                        // Only the two fields the figures need: skipping the rest without
                        // building a tree keeps the client's CPU off the critical path.
                        let ev: WatchLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
                        got.push((ev.object.metadata.name.to_string(), ev.object.metadata.resource_version.parse().unwrap_or(0), now));
                        partial.clear();
                        start = end + 1;
                    }
                    partial.extend_from_slice(&data[start..]);
                }
                let acks = acks.lock().expect("acks");
                let ordered = got.windows(2).all(|p| p[0].1 < p[1].1);
                let delays: Vec<Duration> = got.iter().filter_map(|(n, _, t)| acks.get(n).map(|a| t.saturating_duration_since(*a))).collect();
                Ok::<_, String>((got.len(), ordered, delays))
            });
        }
        // Churn: one writer, sequential acknowledged creates.
        for i in 0..opts.events {
            let name = format!("ev-{i}");
            let (code, b) = writer.request("POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some("application/json"), None, configmap(&name)).await?;
            if code != 201 {
                return Err(format!("watch churn: {code} {}", String::from_utf8_lossy(&b)));
            }
            acks.lock().expect("acks").insert(name, Instant::now());
        }
        let mut delays = Vec::new();
        let (mut missed, mut disordered) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            let (n, ordered, d) = r.map_err(|e| e.to_string())??;
            missed += opts.events.saturating_sub(n);
            disordered += usize::from(!ordered);
            delays.extend(d);
        }
        delays.sort();
        report.add(
            &format!("watch: {w} watcher(s), {} events", opts.events),
            format!("ack→receipt p50 {}  p99 {}  max {} ms; missed {missed}, out of order {disordered}", ms(percentile(&delays, 0.5)), ms(percentile(&delays, 0.99)), ms(delays.last().copied().unwrap_or_default())),
            json!({"watchers": w, "events": opts.events, "p50_ms": ms(percentile(&delays, 0.5)), "p99_ms": ms(percentile(&delays, 0.99)), "max_ms": ms(delays.last().copied().unwrap_or_default()), "missed": missed, "out_of_order": disordered}),
        );
    }
    Ok(())
}

/// `get`, `update` (own objects, and all clients on one object: conflicts) and `delete`.
async fn get_update_delete(scenario: &str, opts: &BenchOptions, kubeconfig: &Path, report: &mut Report) -> Result<(), String> {
    let client = ApiClient::from_kubeconfig(kubeconfig, opts.http2)?;
    for &c in &opts.clients {
        let ns = format!("bench-{scenario}-{c}-{}", std::process::id());
        ensure_namespace(&client, &ns).await?;
        create_many(kubeconfig, &ns, "obj", opts.count, c.max(1), opts.http2).await?;
        let runs: Vec<(&str, bool)> = if scenario == "update" { vec![("own objects", false), ("one shared object", true)] } else { vec![("", false)] };
        for (label, shared) in runs {
            let next = Arc::new(AtomicUsize::new(0));
            let conflicts = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..c {
                let (client, next, conflicts, ns, count, sc) =
                    (ApiClient::from_kubeconfig(kubeconfig, opts.http2)?, next.clone(), conflicts.clone(), ns.clone(), opts.count, scenario.to_string());
                tasks.spawn(async move {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok::<_, String>(lat);
                        }
                        let path = format!("/api/v1/namespaces/{ns}/configmaps/obj-{}", if shared { 0 } else { i });
                        let t = Instant::now();
                        match sc.as_str() {
                            "get" => {
                                let (code, _) = client.request("GET", &path, None, Some("application/json"), Bytes::new()).await?;
                                if code != 200 {
                                    return Err(format!("get: {code}"));
                                }
                            }
                            "delete" => {
                                let (code, _) = client.request("DELETE", &path, None, None, Bytes::new()).await?;
                                if code != 200 {
                                    return Err(format!("delete: {code}"));
                                }
                            }
                            _ => loop {
                                // Read-modify-write with the object's resourceVersion: a 409 means retry.
                                let (_, body) = client.request("GET", &path, None, Some("application/json"), Bytes::new()).await?;
                                let mut obj: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                                obj["data"]["n"] = json!(i.to_string());
                                let (code, _) = client
                                    .request("PUT", &path, Some("application/json"), None, Bytes::from(serde_json::to_vec(&obj).expect("serialize")))
                                    .await?;
                                match code {
                                    200 => break,
                                    409 => {
                                        conflicts.fetch_add(1, Ordering::Relaxed);
                                    }
                                    other => return Err(format!("update: {other}")),
                                }
                            },
                        }
                        lat.push(t.elapsed());
                    }
                });
            }
            let mut lat = Vec::new();
            while let Some(r) = tasks.join_next().await {
                lat.extend(r.map_err(|e| e.to_string())??);
            }
            let wall = start.elapsed();
            lat.sort();
            let rate = opts.count as f64 / wall.as_secs_f64();
            let key = if label.is_empty() {
                format!("{scenario}: {} ConfigMaps, {c} client(s)", opts.count)
            } else {
                format!("{scenario}: {} ConfigMaps, {c} client(s), {label}", opts.count)
            };
            let conflicts = conflicts.load(Ordering::Relaxed);
            report.add(
                &key,
                format!("{rate:.0}/s  p50 {}  p99 {}  max {} ms{}", ms(percentile(&lat, 0.5)), ms(percentile(&lat, 0.99)), ms(*lat.last().unwrap()), if scenario == "update" { format!("  ({conflicts} conflicts retried)") } else { String::new() }),
                json!({"clients": c, "per_second": rate, "p50_ms": ms(percentile(&lat, 0.5)), "p99_ms": ms(percentile(&lat, 0.99)), "max_ms": ms(*lat.last().unwrap()), "conflicts": conflicts}),
            );
        }
    }
    Ok(())
}

fn pod(name: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","labels":{{"app":"bench","tier":"web"}}}},"spec":{{"containers":[{{"name":"app","image":"registry.example/app:1.0","ports":[{{"containerPort":8080}}],"resources":{{"requests":{{"cpu":"100m","memory":"64Mi"}}}}}}]}}}}"#
    ))
}

/// N pods through the scheduler onto simulated nodes until every one is Running: how
/// long, the server's RSS at the end, and kubectl's first page of `get pods -A` (a Table
/// of 500) timed every second meanwhile.
async fn pods_simulated(opts: &BenchOptions, kubeconfig: &Path, server_pid: u32, report: &mut Report) -> Result<(), String> {
    use http_body_util::BodyExt;
    let client = ApiClient::from_kubeconfig(kubeconfig, false)?;
    let ns = format!("bench-sim-{}", std::process::id());
    ensure_namespace(&client, &ns).await?;
    let n = opts.pods;
    // Count pods reaching Running from a watch opened before the first create.
    let (code, body) = client.request("GET", &format!("/api/v1/namespaces/{ns}/pods?limit=1"), None, Some("application/json"), Bytes::new()).await?;
    if code != 200 {
        return Err(format!("list pods: {code}"));
    }
    let rv = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(String::from))
        .unwrap_or_default();
    let mut watch = client.stream(&format!("/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion={rv}&timeoutSeconds=3600")).await?;
    let start = Instant::now();
    let cpu_at_start = process_cpu(server_pid);
    let running = tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut pending = Vec::new();
        while seen.len() < n {
            let Some(frame) = watch.frame().await else { return Err("the watch ended".to_string()) };
            let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if memchr::memmem::find(&line, br#""phase":"Running""#).is_some() {
                    if let Some(at) = memchr::memmem::find(&line, br#""name":"pod-"#) {
                        let rest = &line[at + 12..];
                        let num: usize = rest.iter().take_while(|b| b.is_ascii_digit()).fold(0, |a, d| a * 10 + usize::from(d - b'0'));
                        seen.insert(num);
                    }
                }
            }
        }
        Ok(start.elapsed())
    });
    // kubectl's first page while it happens, once a second until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pager = {
        let client = ApiClient::from_kubeconfig(kubeconfig, false)?;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let t = Instant::now();
                let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
                match client.request("GET", "/api/v1/pods?limit=500", None, Some(accept), Bytes::new()).await {
                    Ok((200, _)) => lat.push(t.elapsed()),
                    _ => return lat,
                }
            }
            lat
        })
    };
    create_pods(kubeconfig, &ns, n, "created", simulated_pod).await?;
    let created_in = start.elapsed();
    report.add(
        &format!("pods-simulated: {n} created (64 clients)"),
        format!("{:.1} s ({:.0}/s)", created_in.as_secs_f64(), n as f64 / created_in.as_secs_f64()),
        json!({"pods": n, "seconds": created_in.as_secs_f64()}),
    );
    let all_running = running.await.map_err(|e| e.to_string())??;
    report.add(
        &format!("pods-simulated: {n} Running on {} nodes", opts.simulated_nodes),
        format!("{:.1} s after the first create", all_running.as_secs_f64()),
        json!({"pods": n, "nodes": opts.simulated_nodes, "seconds": all_running.as_secs_f64()}),
    );
    // The server's CPU over the same span: steadier than the wall clock on a shared machine.
    if let (Some(before), Some(after)) = (cpu_at_start, process_cpu(server_pid)) {
        let cpu = after.saturating_sub(before).as_secs_f64();
        report.add(
            "pods-simulated: server CPU until all Running (s)",
            format!("{cpu:.1} ({:.2} cores)", cpu / start.elapsed().as_secs_f64()),
            json!({"cpu_seconds": cpu}),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut lat = pager.await.unwrap_or_default();
    lat.sort();
    report.add(
        "pods-simulated: get pods -A first page (Table of 500)",
        format!("p50 {} ms, max {} ms ({} samples)", ms(percentile(&lat, 0.5)), ms(*lat.last().unwrap_or(&Duration::ZERO)), lat.len()),
        json!({"p50_ms": ms(percentile(&lat, 0.5)), "max_ms": ms(*lat.last().unwrap_or(&Duration::ZERO)), "samples": lat.len()}),
    );
    if let Some(rss) = rss_kib(server_pid) {
        report.add(&format!("pods-simulated: server RSS with {n} pods (MiB)"), format!("{:.0}", rss as f64 / 1024.0), json!(rss as f64 / 1024.0));
    }
    if let Some(peak) = proc_status_kib(server_pid, "VmHWM:") {
        report.add("pods-simulated: server peak RSS meanwhile (MiB)", format!("{:.0}", peak as f64 / 1024.0), json!(peak as f64 / 1024.0));
    }
    Ok(())
}

/// Create pods `0..n` in `ns` from `body` with 64 concurrent clients, saying how far
/// it got every tenth.
async fn create_pods(kubeconfig: &Path, ns: &str, n: usize, done: &'static str, body: fn(usize) -> Bytes) -> Result<(), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    let step = (n / 10).max(1);
    for _ in 0..64 {
        let (client, next, ns) = (ApiClient::from_kubeconfig(kubeconfig, false)?, next.clone(), ns.to_string());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(());
                }
                if i > 0 && i % step == 0 {
                    println!("  ... {i} of {n} pods {done}");
                }
                let (code, b) = client.request("POST", &format!("/api/v1/namespaces/{ns}/pods"), Some("application/json"), None, body(i)).await?;
                if code != 201 {
                    return Err(format!("create pod: {code} {}", String::from_utf8_lossy(&b)));
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// A pod for simulated nodes: tolerates their taint and selects them.
fn simulated_pod(i: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"pod-{i}","labels":{{"app":"bench"}}}},"spec":{{"nodeSelector":{{"nanokube.io/simulated":"true"}},"tolerations":[{{"key":"nanokube.io/simulated","operator":"Exists","effect":"NoSchedule"}}],"containers":[{{"name":"app","image":"registry.example/app:1.0","resources":{{"requests":{{"cpu":"100m","memory":"64Mi"}}}}}}]}}}}"#
    ))
}

/// N pods stored (no runtime): the server's memory, LIST of all of them, and a watch
/// from resourceVersion=0 delivering them as the initial ADDED events.
async fn pods(opts: &BenchOptions, kubeconfig: &Path, server_pid: Option<u32>, report: &mut Report) -> Result<(), String> {
    use http_body_util::BodyExt;
    let client = ApiClient::from_kubeconfig(kubeconfig, false)?;
    let ns = format!("bench-pods-{}", std::process::id());
    ensure_namespace(&client, &ns).await?;
    let rss_before = server_pid.and_then(rss_kib);
    let start = Instant::now();
    create_pods(kubeconfig, &ns, opts.pods, "stored", |i| pod(&format!("pod-{i}"))).await?;
    let stored_in = start.elapsed();
    report.add(
        &format!("pods: {} stored (64 clients)", opts.pods),
        format!("{:.1} s ({:.0}/s)", stored_in.as_secs_f64(), opts.pods as f64 / stored_in.as_secs_f64()),
        json!({"pods": opts.pods, "seconds": stored_in.as_secs_f64()}),
    );
    if let (Some(pid), Some(before)) = (server_pid, rss_before) {
        if let Some(after) = rss_kib(pid) {
            report.add(
                &format!("pods: server RSS with {} pods (MiB)", opts.pods),
                format!("{:.0} (before: {:.0})", after as f64 / 1024.0, before as f64 / 1024.0),
                json!({"mib": after as f64 / 1024.0, "before_mib": before as f64 / 1024.0}),
            );
        }
    }
    let (lat, body) = timed_gets(&client, &format!("/api/v1/namespaces/{ns}/pods"), "application/json", 0, 3).await?;
    let bytes = body.len();
    report.add(
        &format!("pods: LIST {} pods, JSON", opts.pods),
        format!("p50 {} ms ({} MB)", ms(percentile(&lat, 0.5)), bytes / (1024 * 1024)),
        json!({"p50_ms": ms(percentile(&lat, 0.5)), "bytes": bytes}),
    );
    // A watch from resourceVersion=0 replays every pod as ADDED.
    let t = Instant::now();
    let mut body = client.stream(&format!("/api/v1/namespaces/{ns}/pods?watch=true&resourceVersion=0&timeoutSeconds=300")).await?;
    let mut seen = 0usize;
    while seen < opts.pods {
        let Some(frame) = body.frame().await else { break };
        if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
            seen += data.iter().filter(|b| **b == b'\n').count();
        }
    }
    report.add(
        &format!("pods: watch from resourceVersion=0, {} initial events", opts.pods),
        format!("{} ms ({seen} events)", ms(t.elapsed())),
        json!({"ms": ms(t.elapsed()), "events": seen}),
    );
    Ok(())
}
