//! API Priority and Fairness through the real API: the FlowSchemas classify each request
//! (the response names both UIDs, as kube-apiserver's `X-Kubernetes-PF-*` headers), a
//! priority level runs at most its share of the server's concurrency, queues the rest and
//! refuses with 429 once its queue is full or a request has waited too long; kubectl sees
//! the refusal as upstream's.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, Server};
use serde_json::Value;

/// (HTTP code, FlowSchema UID, priority level UID, Retry-After, body) of a curl request.
fn classified(mut curl: Command, url: &str, extra: &[&str]) -> (u16, String, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = curl.args(["-sS", "-D"]).arg(&headers).args(extra).arg(url).output().unwrap();
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    let headers = std::fs::read_to_string(&headers).unwrap_or_default().to_lowercase();
    let header = |name: &str| headers.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap_or("").trim().to_string();
    let code = headers.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, header("x-kubernetes-pf-flowschema-uid"), header("x-kubernetes-pf-prioritylevel-uid"), header("retry-after"), body)
}

fn uid(s: &Server, kind: &str, name: &str) -> String {
    s.k(&["get", kind, name, "-o", "jsonpath={.metadata.uid}"])
}

fn apply(s: &Server, manifest: &str) {
    let out = s.k_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A priority level and a FlowSchema sending user `user`'s requests to it.
fn level_for_user(s: &Server, name: &str, user: &str, limited: &str) {
    apply(
        s,
        &format!(
            "apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata: {{name: {name}}}
spec:
  type: Limited
  limited: {limited}
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {name}}}
spec:
  matchingPrecedence: 500
  priorityLevelConfiguration: {{name: {name}}}
  distinguisherMethod: {{type: ByUser}}
  rules:
  - subjects: [{{kind: User, user: {{name: {user}}}}}]
    resourceRules: [{{verbs: ['*'], apiGroups: ['*'], resources: ['*'], clusterScope: true, namespaces: ['*']}}]
"
        ),
    );
}

#[test]
fn responses_name_the_flow_schema_and_priority_level_that_classified_them() {
    let s = Server::start();
    let url = |p: &str| format!("{}{p}", s.url);
    // The admin (system:masters): exempt.
    let (code, fs, pl, _, _) = classified(s.admin_curl(), &url("/api/v1/namespaces"), &[]);
    assert_eq!(code, 200);
    assert_eq!((fs, pl), (uid(&s, "flowschema", "exempt"), uid(&s, "prioritylevelconfiguration", "exempt")));
    // kubectl's own requests carry them too.
    let out = s.kubectl(&["get", "namespaces", "-v=8"]);
    let log = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(log.contains(&format!("x-kubernetes-pf-flowschema-uid: {}", uid(&s, "flowschema", "exempt"))), "{log}");
    // Anonymous health checks: the probes schema, exempt.
    let mut anonymous = Command::new("curl");
    anonymous.arg("--cacert").arg(s.data.join("ca.crt"));
    let (code, fs, pl, _, _) = classified(anonymous, &url("/readyz"), &[]);
    assert_eq!(code, 200);
    assert_eq!((fs, pl), (uid(&s, "flowschema", "probes"), uid(&s, "prioritylevelconfiguration", "exempt")));
    // Anonymous API reads: global-default, classified before authorization refuses them.
    let mut anonymous = Command::new("curl");
    anonymous.arg("--cacert").arg(s.data.join("ca.crt"));
    let (code, fs, pl, _, _) = classified(anonymous, &url("/api/v1/namespaces"), &[]);
    assert_eq!(code, 403);
    assert_eq!((fs, pl), (uid(&s, "flowschema", "global-default"), uid(&s, "prioritylevelconfiguration", "global-default")));
    // A service account: service-accounts, workload-low.
    let token = s.k(&["create", "token", "default"]);
    let mut sa = Command::new("curl");
    sa.arg("--cacert").arg(s.data.join("ca.crt")).args(["-H", &format!("Authorization: Bearer {}", token.trim())]);
    let (code, fs, pl, _, _) = classified(sa, &url("/api/v1/namespaces/default/pods"), &[]);
    assert_eq!(code, 403);
    assert_eq!((fs, pl), (uid(&s, "flowschema", "service-accounts"), uid(&s, "prioritylevelconfiguration", "workload-low")));
    // Impersonation is classified as the impersonated user: leader election's schema
    // for kube-controller-manager's lease.
    let (_, fs, pl, _, _) = classified(
        s.admin_curl(),
        &url("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/kube-controller-manager"),
        &["-H", "Impersonate-User: system:kube-controller-manager"],
    );
    assert_eq!((fs, pl), (uid(&s, "flowschema", "system-leader-election"), uid(&s, "prioritylevelconfiguration", "leader-election")));
    // Its other requests: its own schema, workload-high.
    let (_, fs, pl, _, _) = classified(s.admin_curl(), &url("/api/v1/namespaces/default/pods"), &["-H", "Impersonate-User: system:kube-controller-manager"]);
    assert_eq!((fs, pl), (uid(&s, "flowschema", "kube-controller-manager"), uid(&s, "prioritylevelconfiguration", "workload-high")));
}

#[test]
fn a_level_with_no_seats_refuses_with_429_and_a_retry_after() {
    let s = Server::start();
    // Nothing of its own and nothing to borrow: upstream refuses every request too.
    level_for_user(&s, "nothing", "alice", "{nominalConcurrencyShares: 0, borrowingLimitPercent: 0, limitResponse: {type: Reject}}");
    let url = format!("{}/api/v1/namespaces/default/configmaps", s.url);
    let mut refused = (0, String::new(), String::new(), String::new(), String::new());
    assert!(eventually(Duration::from_secs(10), || {
        refused = classified(s.admin_curl(), &url, &["-H", "Impersonate-User: alice"]);
        refused.0 == 429
    }));
    let (_, fs, pl, retry_after, body) = refused;
    assert_eq!((fs, pl), (uid(&s, "flowschema", "nothing"), uid(&s, "prioritylevelconfiguration", "nothing")));
    assert_eq!(retry_after, "1");
    assert_eq!(body, "Too many requests, please try again later.\n", "upstream's text, not a Status");
    // kubectl gives up after its retries with upstream's message.
    let out = s.kubectl(&["get", "configmaps", "--as", "alice"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Error from server (TooManyRequests)"), "{out:?}");
    // Others are not held back; bob is refused by RBAC, not by flow control.
    assert_eq!(classified(s.admin_curl(), &url, &["-H", "Impersonate-User: bob"]).0, 403);
    assert_eq!(classified(s.admin_curl(), &url, &[]).0, 200);
    // Without the FlowSchema alice falls to global-default again.
    s.k(&["delete", "flowschema", "nothing"]);
    assert!(eventually(Duration::from_secs(10), || classified(s.admin_curl(), &url, &["-H", "Impersonate-User: alice"]).0 == 403));
}

/// Holds a write whose body never finishes, as user `user`: it keeps its seat.
fn held_write(s: &Server, user: &str) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let access = nanokube::client::ClusterAccess::from_kubeconfig(&s.kubeconfig(), None).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(access.tls), rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    write!(
        stream,
        "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nImpersonate-User: {user}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    )
    .unwrap();
    stream.flush().unwrap();
    stream
}

fn configmap_as(s: &Server, user: &str, name: &str) -> std::thread::JoinHandle<(u16, Instant)> {
    let (mut curl, url) = (s.admin_curl(), format!("{}/api/v1/namespaces/default/configmaps", s.url));
    let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#);
    let impersonate = format!("Impersonate-User: {user}");
    std::thread::spawn(move || {
        let out = curl
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", &impersonate, "-H", "Content-Type: application/json", "--data-binary", &body])
            .arg(url)
            .output()
            .unwrap();
        (String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0), Instant::now())
    })
}

#[test]
fn a_busy_level_queues_its_requests_then_refuses_past_the_queue() {
    let s = Server::start();
    s.k(&["create", "clusterrolebinding", "holder-admin", "--clusterrole=cluster-admin", "--user=holder"]);
    level_for_user(
        &s,
        "narrow",
        "holder",
        "{nominalConcurrencyShares: 1, lendablePercent: 0, limitResponse: {type: Queue, queuing: {queues: 1, handSize: 1, queueLengthLimit: 2}}}",
    );
    // Its seats: its share of the server's 600 (400 read-only + 200 mutating), rounded up.
    let levels: Value = serde_json::from_str(&s.k(&["get", "prioritylevelconfigurations", "-o", "json"])).unwrap();
    let shares: f64 = levels["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["spec"]["limited"]["nominalConcurrencyShares"].as_f64().or(l["spec"]["exempt"]["nominalConcurrencyShares"].as_f64()).unwrap_or(0.0))
        .sum();
    let seats = (600.0 / shares).ceil() as usize;
    assert!(seats >= 1);
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<_> = (0..seats).map(|_| held_write(&s, "holder")).collect();
    std::thread::sleep(Duration::from_millis(500));
    // Two more wait in the one queue...
    let waiting: Vec<_> = (0..2).map(|i| configmap_as(&s, "holder", &format!("queued-{i}"))).collect();
    std::thread::sleep(Duration::from_millis(500));
    // ...and the next finds the queue full.
    let url = format!("{}/api/v1/namespaces/default/configmaps", s.url);
    let (code, _, pl, retry_after, _) = classified(s.admin_curl(), &url, &["-H", "Impersonate-User: holder"]);
    assert_eq!((code, pl.as_str(), retry_after.as_str()), (429, uid(&s, "prioritylevelconfiguration", "narrow").as_str(), "1"));
    // Other levels serve on.
    assert_eq!(s.curl("GET", "/api/v1/namespaces/default/configmaps", None, None).0, 200);
    assert!(waiting.iter().all(|w| !w.is_finished()), "queued requests run only when a seat is free");
    let freed = Instant::now();
    drop(held);
    for w in waiting {
        let (code, done) = w.join().unwrap();
        assert_eq!(code, 201, "a queued write runs once a seat is free");
        assert!(done >= freed);
    }
    // A request that waits longer than 15 s is refused.
    let held: Vec<_> = (0..seats).map(|_| held_write(&s, "holder")).collect();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (code, done) = configmap_as(&s, "holder", "too-late").join().unwrap();
    assert_eq!(code, 429);
    assert!(done - started >= Duration::from_secs(14), "refused only after waiting: {:?}", done - started);
    drop(held);
    assert!(eventually(Duration::from_secs(10), || configmap_as(&s, "holder", "after").join().unwrap().0 == 201));
}
