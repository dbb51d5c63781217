//! The `abuse` scenario: a soak that runs the attacks of the hardening work against a
//! live server for a bounded time while normal clients keep working.
//!
//! Normal clients (create, get, list a page, delete ConfigMaps) first run alone, then
//! beside the attackers; a prober reads `/readyz` throughout. Every attacker request
//! has the answers the server must give (a 404 for a cluster-scoped kind under a
//! namespace, a 422 for a patch that grows past its budget, a closed connection for a
//! client that never finishes its handshake...): anything else is counted as
//! unexpected and fails the scenario. The figures are the normal clients' rate, error
//! rate and latency with and without the attack, and the server's peak RSS.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ensure_namespace, ms, percentile, proc_status_kib, rss_kib, Report};
use crate::client::{ApiClient, ClusterAccess};

/// Normal clients running beside the attack.
const NORMAL_CLIENTS: usize = 4;
/// TCP connections an attacker holds open without sending a byte.
const SILENT_CONNECTIONS: usize = 200;
/// TLS connections an attacker feeds headers one byte at a time.
const SLOW_HEADER_CONNECTIONS: usize = 20;
/// The server's limits the attacks expect (docs/security.md).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(32);
/// Slack for a loaded machine before a connection the server should have closed counts
/// as unexpected.
const CLOSE_SLACK: Duration = Duration::from_secs(5);

/// What one attacker (or the normal clients) saw: outcome → count, and the first few
/// outcomes the server must not give.
#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    unexpected: u64,
    examples: Vec<String>,
}

impl Tally {
    fn sent(&self) -> u64 {
        self.outcomes.values().sum()
    }

    fn note(&mut self, outcome: String, expected: bool, what: &str) {
        if !expected {
            self.unexpected += 1;
            if self.examples.len() < 3 {
                self.examples.push(format!("{what}: {outcome}"));
            }
        }
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    /// Records an HTTP answer that must be one of `want`.
    fn answer(&mut self, what: &str, result: Result<(u16, Bytes), String>, want: &[u16]) {
        match result {
            Ok((code, body)) => {
                let ok = want.contains(&code);
                // An unexpected answer is shown with its Status message (cut short, so
                // answers that differ only in names count as one outcome).
                let outcome = match serde_json::from_slice::<Value>(&body).ok().and_then(|s| s.get("message").and_then(Value::as_str).map(String::from)) {
                    Some(m) if !ok => format!("{code} {}", m.chars().take(80).collect::<String>()),
                    _ => code.to_string(),
                };
                self.note(outcome, ok, what);
            }
            Err(e) => self.note(format!("transport error {e}"), false, what),
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.unexpected += other.unexpected;
        for e in other.examples {
            if self.examples.len() < 3 {
                self.examples.push(e);
            }
        }
    }
}

/// What the attackers share.
struct Ctx {
    admin: ApiClient,
    anonymous: ApiClient,
    /// `host:port` of the server.
    addr: String,
    /// TLS without a client certificate, for hand-written HTTP.
    tls: Arc<rustls::ClientConfig>,
    ns: String,
    deadline: Instant,
}

impl Ctx {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The attacks, each run by its own task until the deadline.
const ATTACKS: &[&str] = &[
    "namespace-escape",
    "patch-copy-bomb",
    "patch-nesting",
    "deep-or-mistyped-objects",
    "yaml-brackets",
    "smp-long-lists",
    "metrics-labels",
    "silent-connections",
    "slow-headers",
    "watch-memory",
    "junk-parameters",
];

async fn attack(name: &'static str, ctx: Arc<Ctx>) -> Tally {
    let mut t = Tally::default();
    let ns = &ctx.ns;
    let cm = format!("/api/v1/namespaces/{ns}/configmaps/abuse-target");
    let json_patch = Some("application/json-patch+json");
    let mut i = 0u64;
    while ctx.running() {
        i += 1;
        match name {
            // Issue 11 item 1: cluster-scoped kinds under a namespace are not there.
            "namespace-escape" => {
                for path in [
                    format!("/api/v1/namespaces/{ns}/namespaces"),
                    format!("/api/v1/namespaces/{ns}/namespaces/kube-system"),
                    format!("/api/v1/namespaces/{ns}/nodes"),
                    format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/clusterroles"),
                ] {
                    t.answer("GET namespaced cluster-scoped", ctx.admin.request("GET", &path, None, None, Bytes::new()).await, &[404]);
                }
                let del = format!("/api/v1/namespaces/{ns}/namespaces/{ns}");
                t.answer("DELETE namespaced namespace", ctx.admin.request("DELETE", &del, None, None, Bytes::new()).await, &[404]);
            }
            // Item 2: repeated copy doubles a subtree; the copy budget stops it.
            "patch-copy-bomb" => {
                let mut ops = vec![json!({"op": "add", "path": "/bomb", "value": ["x".repeat(1024)]})];
                ops.extend((0..40).map(|_| json!({"op": "copy", "from": "/bomb", "path": "/bomb/0"})));
                t.answer("copy doubling", ctx.admin.request("PATCH", &cm, json_patch, None, Bytes::from(Value::Array(ops).to_string())).await, &[422]);
                let many: Vec<Value> = (0..10_001).map(|_| json!({"op": "test", "path": "/kind", "value": "ConfigMap"})).collect();
                t.answer("10,001 operations", ctx.admin.request("PATCH", &cm, json_patch, None, Bytes::from(Value::Array(many).to_string())).await, &[413]);
            }
            // Item 2: move chains that nest one level an operation.
            "patch-nesting" => {
                let mut ops = vec![json!({"op": "add", "path": "/x", "value": {}})];
                for _ in 0..300 {
                    ops.push(json!({"op": "add", "path": "/w", "value": {}}));
                    ops.push(json!({"op": "move", "from": "/x", "path": "/w/a"}));
                    ops.push(json!({"op": "move", "from": "/w", "path": "/x"}));
                }
                t.answer("move chain", ctx.admin.request("PATCH", &cm, json_patch, None, Bytes::from(Value::Array(ops).to_string())).await, &[422]);
                let deep = format!(r#"{{"metadata":{{"annotations":{{"a":{}}}}}}}"#, nested(300));
                t.answer("deep merge patch", ctx.admin.request("PATCH", &cm, Some("application/merge-patch+json"), None, Bytes::from(deep)).await, &[400, 422]);
            }
            // Items 3 and 11: too deep, or of the wrong JSON type for the Go field.
            "deep-or-mistyped-objects" => {
                let path = format!("/api/v1/namespaces/{ns}/configmaps");
                let deep = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"deep-{i}","annotations":{{"a":{}}}}}}}"#, nested(300));
                t.answer("deep annotation", ctx.admin.request("POST", &path, Some("application/json"), None, Bytes::from(deep)).await, &[400, 422]);
                let numeric = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"num-{i}","annotations":{{"a":5}}}}}}"#);
                t.answer("numeric annotation", ctx.admin.request("POST", &path, Some("application/json"), None, Bytes::from(numeric)).await, &[400]);
                let deploys = format!("/apis/apps/v1/namespaces/{ns}/deployments");
                for replicas in [r#""3""#, "1.5", "1e23", "2147483648"] {
                    let d = format!(
                        r#"{{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"name":"d-{i}"}},"spec":{{"replicas":{replicas},"selector":{{"matchLabels":{{"a":"b"}}}},"template":{{"metadata":{{"labels":{{"a":"b"}}}},"spec":{{"containers":[{{"name":"c","image":"i"}}]}}}}}}}}"#
                    );
                    t.answer("mistyped replicas", ctx.admin.request("POST", &deploys, Some("application/json"), None, Bytes::from(d)).await, &[400]);
                }
                let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("big-{i}")}, "data": {"a": "x".repeat((1 << 20) + 1)}});
                t.answer("ConfigMap over 1 MiB", ctx.admin.request("POST", &path, Some("application/json"), None, Bytes::from(big.to_string())).await, &[422]);
            }
            // Item 4: nested flow collections in YAML, from any authenticated user.
            "yaml-brackets" => {
                let body = Bytes::from("[".repeat(1_000_000));
                t.answer(
                    "1 MB of '['",
                    ctx.admin.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", Some("application/yaml"), None, body).await,
                    &[400, 422],
                );
            }
            // Item 4: strategic merge patches of long lists stay linear.
            "smp-long-lists" => {
                let list: Vec<String> = (0..20_000).map(|n| format!("example.com/f{n}")).collect();
                let add = json!({"metadata": {"finalizers": list}});
                t.answer(
                    "20,000 finalizers",
                    ctx.admin.request("PATCH", &cm, Some("application/strategic-merge-patch+json"), None, Bytes::from(add.to_string())).await,
                    &[200],
                );
                let remove = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": list}});
                t.answer(
                    "remove 20,000 finalizers",
                    ctx.admin.request("PATCH", &cm, Some("application/strategic-merge-patch+json"), None, Bytes::from(remove.to_string())).await,
                    &[200],
                );
            }
            // Item 6: user-chosen names in request paths.
            "metrics-labels" => {
                for k in 0..20 {
                    let path = format!("/apis/g{i}-{k}.example/v{k}/r{i}/x");
                    t.answer("anonymous unknown resource", ctx.anonymous.request("GET", &path, None, None, Bytes::new()).await, &[401, 403]);
                }
            }
            // Item 7: connections that never send a ClientHello are closed.
            "silent-connections" => {
                let mut open = tokio::task::JoinSet::new();
                for _ in 0..SILENT_CONNECTIONS {
                    let addr = ctx.addr.clone();
                    let deadline = ctx.deadline;
                    open.spawn(async move { silent_connection(&addr, deadline).await });
                }
                while let Some(r) = open.join_next().await {
                    let (outcome, ok) = r.unwrap_or_else(|e| (format!("task {e}"), false));
                    t.note(outcome, ok, "silent connection");
                }
            }
            // Item 7: headers sent one byte at a time are cut at the header timeout.
            "slow-headers" => {
                let mut open = tokio::task::JoinSet::new();
                for _ in 0..SLOW_HEADER_CONNECTIONS {
                    let ctx = ctx.clone();
                    open.spawn(async move { slow_headers(&ctx).await });
                }
                while let Some(r) = open.join_next().await {
                    let (outcome, ok) = r.unwrap_or_else(|e| (format!("task {e}"), false));
                    t.note(outcome, ok, "slow headers");
                }
            }
            // Item 8: a large object updated over and over, and short watches of empty
            // namespaces (the history is bounded in bytes; idle channels are swept).
            "watch-memory" => {
                let mut watches = tokio::task::JoinSet::new();
                for k in 0..10 {
                    let path = format!("/api/v1/namespaces/abuse-empty-{i}-{k}/configmaps?watch=1&timeoutSeconds=1");
                    let admin = ctx.admin.clone();
                    watches.spawn(async move { admin.request("GET", &path, None, None, Bytes::new()).await });
                }
                let big = format!("/api/v1/namespaces/{ns}/configmaps/abuse-big");
                let body =
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "abuse-big"}, "data": {"a": format!("{i}{}", "y".repeat(500_000))}});
                t.answer("500 KB update", ctx.admin.request("PUT", &big, Some("application/json"), None, Bytes::from(body.to_string())).await, &[200, 201]);
                while let Some(r) = watches.join_next().await {
                    t.answer("short watch of an empty namespace", r.unwrap_or_else(|e| Err(e.to_string())), &[200]);
                }
                // Five large updates a second: enough to fill the history, not the disk.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Items 10 and 14: parameters and credentials no client should send.
            "junk-parameters" => {
                let list = format!("/api/v1/namespaces/{ns}/configmaps");
                for q in ["fieldSelector=%C3%A9%3Dx", "limit=-1", "resourceVersion=-5", "timeoutSeconds=abc"] {
                    t.answer(q, ctx.admin.request("GET", &format!("{list}?{q}"), None, None, Bytes::new()).await, &[400]);
                }
                let headers: [(&str, &[u8]); 1] = [("authorization", b"Bearer \xff\xfe")];
                t.answer("non-UTF-8 Authorization", ctx.anonymous.request_with("GET", &list, None, None, &headers, Bytes::new()).await, &[401]);
                let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(br#"{"iss":"https://kubernetes.default.svc.cluster.local","sub":"system:serviceaccount:default:default","exp":"9999999999"}"#);
                let forged = format!("Bearer eyJhbGciOiJSUzI1NiJ9.{claims}.c2ln");
                let headers: [(&str, &[u8]); 1] = [("authorization", forged.as_bytes())];
                t.answer("forged JWT, string exp", ctx.anonymous.request_with("GET", &list, None, None, &headers, Bytes::new()).await, &[401]);
                let tr = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": "abc"}});
                let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/default/token");
                t.answer(
                    "TokenRequest expirationSeconds \"abc\"",
                    ctx.admin.request("POST", &path, Some("application/json"), None, Bytes::from(tr.to_string())).await,
                    &[400],
                );
            }
            other => {
                t.note(format!("unknown attack {other}"), false, other);
                break;
            }
        }
    }
    t
}

/// Opens a TCP connection and sends nothing: the server must close it within its
/// handshake timeout (plus slack), or it is still open at the deadline but younger.
async fn silent_connection(addr: &str, deadline: Instant) -> (String, bool) {
    let opened = Instant::now();
    match TcpStream::connect(addr).await {
        Ok(mut s) => closed_or_open(&mut s, opened, deadline, HANDSHAKE_TIMEOUT).await,
        Err(e) => (format!("connect failed: {e}"), false),
    }
}

/// Reads until the peer closes (or the deadline): how long the connection lived.
async fn closed_or_open<R: tokio::io::AsyncRead + Unpin>(r: &mut R, opened: Instant, deadline: Instant, limit: Duration) -> (String, bool) {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return verdict(opened.elapsed(), limit, true),
            Ok(Ok(_)) => continue,
            Err(_) => return verdict(opened.elapsed(), limit, false),
        }
    }
}

/// Whether a connection that `lived` this long, and was `closed` by the server (or is
/// still open at the end of the run), kept within `limit` plus slack.
fn verdict(lived: Duration, limit: Duration, closed: bool) -> (String, bool) {
    let ok = lived <= limit + CLOSE_SLACK;
    let outcome = match (closed, ok) {
        (true, true) => format!("closed by the server within {} s", (limit + CLOSE_SLACK).as_secs()),
        (true, false) => format!("closed after {} s, past the limit", lived.as_secs()),
        (false, true) => "still open at the end, younger than the limit".into(),
        (false, false) => format!("open for {} s, past the limit", lived.as_secs()),
    };
    (outcome, ok)
}

/// A TLS connection (no client certificate) that sends a request's headers one byte
/// every 5 s: the server must close it at its header read timeout.
async fn slow_headers(ctx: &Ctx) -> (String, bool) {
    let stream = match TcpStream::connect(&ctx.addr).await {
        Ok(s) => s,
        Err(e) => return (format!("connect failed: {e}"), false),
    };
    let host = ctx.addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1").trim_matches(['[', ']']).to_string();
    let name = match rustls::pki_types::ServerName::try_from(host) {
        Ok(n) => n,
        Err(e) => return (format!("server name: {e}"), false),
    };
    let mut tls = match tokio_rustls::TlsConnector::from(ctx.tls.clone()).connect(name, stream).await {
        Ok(s) => s,
        Err(e) => return (format!("handshake failed: {e}"), false),
    };
    let header = b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    if tls.write_all(header).await.is_err() {
        return ("closed before the headers".into(), false);
    }
    let sent_headers = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        if Instant::now() >= ctx.deadline {
            return verdict(sent_headers.elapsed(), HEADER_READ_TIMEOUT, false);
        }
        if tls.write_all(b"a").await.is_err() || tls.flush().await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            // An answer (408 or 400) before the close is fine: the server gave up on us.
            Ok(Ok(_)) | Err(_) => continue,
        }
    }
    verdict(sent_headers.elapsed(), HEADER_READ_TIMEOUT, true)
}

/// One normal client: create, get, list a page, delete, until the deadline. Returns
/// latencies of every call and the tally of answers.
async fn normal_client(client: ApiClient, ns: String, id: usize, deadline: Instant) -> (Vec<Duration>, Tally) {
    let mut lat = Vec::new();
    let mut t = Tally::default();
    let list = format!("/api/v1/namespaces/{ns}/configmaps");
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let name = format!("normal-{id}-{i}");
        let item = format!("{list}/{name}");
        let body = Bytes::from(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"normal": "true"}}, "data": {"k": "v"}}).to_string(),
        );
        let calls: [(&str, &str, Option<&str>, Bytes, u16); 4] = [
            ("POST", &list, Some("application/json"), body, 201),
            ("GET", &item, None, Bytes::new(), 200),
            ("GET", &format!("{list}?labelSelector=normal%3Dtrue&limit=20"), None, Bytes::new(), 200),
            ("DELETE", &item, None, Bytes::new(), 200),
        ];
        for (method, path, ct, body, want) in calls {
            let start = Instant::now();
            let r = client.request(method, path, ct, None, body).await;
            lat.push(start.elapsed());
            t.answer(method, r, &[want]);
        }
    }
    (lat, t)
}

async fn normal_clients(kubeconfig: &Path, ns: &str, deadline: Instant) -> Result<(Vec<Duration>, Tally), String> {
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..NORMAL_CLIENTS {
        tasks.spawn(normal_client(ApiClient::from_kubeconfig(kubeconfig, false)?, ns.to_string(), id, deadline));
    }
    let mut lat = Vec::new();
    let mut tally = Tally::default();
    while let Some(r) = tasks.join_next().await {
        let (l, t) = r.map_err(|e| e.to_string())?;
        lat.extend(l);
        tally.merge(t);
    }
    lat.sort();
    Ok((lat, tally))
}

fn report_normal(report: &mut Report, key: &str, lat: &[Duration], tally: &Tally, seconds: f64) {
    let sent = tally.sent();
    let errors = tally.unexpected;
    let rate = sent as f64 / seconds;
    let error_pct = if sent == 0 { 0.0 } else { 100.0 * errors as f64 / sent as f64 };
    let (p50, p99, max) = (ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99)), ms(lat.last().copied().unwrap_or_default()));
    report.add(
        key,
        format!("{rate:.0} calls/s  errors {errors} of {sent} ({error_pct:.2}%)  p50 {p50}  p99 {p99}  max {max} ms"),
        json!({"calls_per_second": rate, "calls": sent, "errors": errors, "error_percent": error_pct, "p50_ms": p50, "p99_ms": p99, "max_ms": max, "examples": tally.examples}),
    );
}

/// Polls `/readyz` every 100 ms until the deadline.
async fn probe_readyz(client: ApiClient, deadline: Instant) -> (Vec<Duration>, Tally) {
    let mut lat = Vec::new();
    let mut t = Tally::default();
    while Instant::now() < deadline {
        let start = Instant::now();
        let r = client.request("GET", "/readyz", None, None, Bytes::new()).await;
        lat.push(start.elapsed());
        t.answer("GET /readyz", r, &[200]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lat.sort();
    (lat, t)
}

/// Runs the soak for `seconds` (a third of it first with the normal clients alone).
pub(super) async fn abuse(kubeconfig: &Path, seconds: u64, only: &[String], server_pid: Option<u32>, report: &mut Report) -> Result<(), String> {
    if let Some(unknown) = only.iter().find(|a| !ATTACKS.contains(&a.as_str())) {
        return Err(format!("unknown attack {unknown:?}; the attacks are {}", ATTACKS.join(", ")));
    }
    let attacks: Vec<&'static str> = ATTACKS.iter().copied().filter(|a| only.is_empty() || only.iter().any(|o| o == a)).collect();
    let admin = ApiClient::from_kubeconfig(kubeconfig, false)?;
    let anonymous_access = ClusterAccess::anonymous_from_kubeconfig(kubeconfig)?;
    let anonymous = ApiClient::from_access(&anonymous_access, false);
    let addr = admin.server.trim_start_matches("https://").to_string();
    let ns = format!("bench-abuse-{}", std::process::id());
    ensure_namespace(&admin, &ns).await?;
    let target = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "abuse-target"}, "data": {"k": "v"}});
    let (code, body) =
        admin.request("POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some("application/json"), None, Bytes::from(target.to_string())).await?;
    if code != 201 {
        return Err(format!("create abuse-target: {code} {}", String::from_utf8_lossy(&body)));
    }
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "abuse-big"}});
    admin.request("POST", &format!("/api/v1/namespaces/{ns}/configmaps"), Some("application/json"), None, Bytes::from(big.to_string())).await?;
    let metrics_len = |c: ApiClient| async move { c.request("GET", "/metrics", None, None, Bytes::new()).await.map(|(_, b)| b.len()).unwrap_or(0) };
    let metrics_before = metrics_len(admin.clone()).await;
    let rss_before = server_pid.and_then(rss_kib);

    let baseline = Duration::from_secs((seconds / 3).max(2));
    println!("  ... normal clients alone for {} s", baseline.as_secs());
    let (lat, tally) = normal_clients(kubeconfig, &ns, Instant::now() + baseline).await?;
    report_normal(report, "abuse: normal clients alone", &lat, &tally, baseline.as_secs_f64());
    let mut failed = tally.unexpected;

    println!("  ... {} attacks beside the normal clients for {seconds} s", attacks.len());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let ctx = Arc::new(Ctx { admin: admin.clone(), anonymous, addr, tls: Arc::new(anonymous_access.tls.clone()), ns: ns.clone(), deadline });
    let mut attackers = tokio::task::JoinSet::new();
    for &name in &attacks {
        let ctx = ctx.clone();
        attackers.spawn(async move { (name, attack(name, ctx).await) });
    }
    let probe = tokio::spawn(probe_readyz(admin.clone(), deadline));
    let (lat, tally) = normal_clients(kubeconfig, &ns, deadline).await?;
    report_normal(report, "abuse: normal clients under attack", &lat, &tally, start.elapsed().as_secs_f64());
    failed += tally.unexpected;
    let (ready_lat, ready) = probe.await.map_err(|e| e.to_string())?;
    report.add(
        "abuse: /readyz every 100 ms under attack",
        format!("failures {} of {}  p50 {}  max {} ms", ready.unexpected, ready.sent(), ms(percentile(&ready_lat, 0.5)), ms(ready_lat.last().copied().unwrap_or_default())),
        json!({"failures": ready.unexpected, "probes": ready.sent(), "p50_ms": ms(percentile(&ready_lat, 0.5)), "max_ms": ms(ready_lat.last().copied().unwrap_or_default())}),
    );
    failed += ready.unexpected;
    let mut by_name = BTreeMap::new();
    // A request the server never answers would hold its attacker past the deadline.
    let give_up = tokio::time::Instant::from_std(deadline + Duration::from_secs(60));
    while let Ok(Some(r)) = tokio::time::timeout_at(give_up, attackers.join_next()).await {
        let (name, t) = r.map_err(|e| e.to_string())?;
        by_name.insert(name, t);
    }
    attackers.abort_all();
    for &name in &attacks {
        by_name.entry(name).or_insert_with(|| {
            let mut t = Tally::default();
            t.note("still waiting for an answer a minute after the end".into(), false, name);
            t
        });
    }
    for (name, t) in by_name {
        let outcomes: Vec<String> = t.outcomes.iter().map(|(k, v)| format!("{k} ×{v}")).collect();
        let mut shown = format!("{} sent, unexpected {}: {}", t.sent(), t.unexpected, outcomes.join(", "));
        if !t.examples.is_empty() {
            shown.push_str(&format!("  e.g. {}", t.examples.join(" | ")));
        }
        report.add(
            &format!("abuse: attack {name}"),
            shown,
            json!({"sent": t.sent(), "unexpected": t.unexpected, "outcomes": t.outcomes, "examples": t.examples}),
        );
        failed += t.unexpected;
    }
    if let Some(pid) = server_pid {
        // The kernel's own high-water mark of the server's resident set.
        let hwm = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
        let mib = |k: u64| k as f64 / 1024.0;
        report.add(
            "abuse: server RSS before / peak / after (MiB)",
            format!("{:.1} / {:.1} / {:.1}", mib(rss_before.unwrap_or(0)), mib(hwm), mib(rss_kib(pid).unwrap_or(0))),
            json!({"before_mib": mib(rss_before.unwrap_or(0)), "peak_mib": mib(hwm), "after_mib": mib(rss_kib(pid).unwrap_or(0))}),
        );
    }
    let metrics_after = metrics_len(admin.clone()).await;
    report.add(
        "abuse: /metrics bytes before / after",
        format!("{metrics_before} / {metrics_after}"),
        json!({"before": metrics_before, "after": metrics_after}),
    );
    // The server must still serve after the attack, and let the namespace go.
    let (code, _) = admin.request("DELETE", &format!("/api/v1/namespaces/{ns}"), None, None, Bytes::new()).await?;
    if code != 200 && code != 202 {
        failed += 1;
        println!("  delete namespace {ns} after the attack: {code}");
    }
    if failed > 0 {
        return Err(format!("abuse: {failed} unexpected answers (see above)"));
    }
    Ok(())
}
