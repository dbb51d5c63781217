//! `/metrics`: Prometheus text with request counts and latencies by verb/resource/code,
//! in-flight requests, watchers, store commits, object counts; readable by
//! `system:masters` and by an RBAC grant of the `/metrics` URL.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, Server};

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(name_and_labels)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn metrics_reflect_traffic_and_are_rbac_protected() {
    let s = Server::start();
    for i in 0..3 {
        s.k(&["create", "configmap", &format!("m{i}")]);
    }
    s.k(&["get", "configmaps"]);
    let _ = s.curl("GET", "/api/v1/namespaces/default/configmaps/missing", None, None);

    // A watch that stays open while we scrape.
    let mut watch = s
        .admin_curl()
        .arg("-sN")
        .arg(format!("{}/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=20", s.url))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (code, body) = s.curl("GET", "/metrics", None, None);
            text = body;
            code == 200 && metric(&text, r#"apiserver_registered_watchers{group="",kind="ConfigMap",version="v1"}"#) == Some(1.0)
        }),
        "{text}"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    let created = metric(
        &text,
        r#"apiserver_request_total{code="201",component="apiserver",group="",resource="configmaps",scope="namespace",subresource="",verb="POST",version="v1"}"#,
    );
    assert_eq!(created, Some(3.0), "{text}");
    assert_eq!(
        metric(
            &text,
            r#"apiserver_request_total{code="404",component="apiserver",group="",resource="configmaps",scope="resource",subresource="",verb="GET",version="v1"}"#
        ),
        Some(1.0)
    );
    assert!(metric(&text, r#"apiserver_request_total{code="200",component="apiserver",group="",resource="configmaps",scope="namespace",subresource="",verb="LIST",version="v1"}"#).unwrap_or(0.0) >= 1.0);
    assert!(text.contains("apiserver_request_duration_seconds_bucket{component=\"apiserver\",group=\"\",resource=\"configmaps\""));
    // 3 created + kube-root-ca.crt in each of the 4 system namespaces +
    // kube-system/extension-apiserver-authentication.
    assert_eq!(metric(&text, r#"apiserver_storage_objects{resource="configmaps"}"#), Some(8.0));
    let commits = metric(&text, "nanokube_store_commits_total").unwrap();
    let writes = metric(&text, "nanokube_store_writes_total").unwrap();
    assert!(commits > 0.0 && writes >= commits, "commits {commits}, writes {writes}");
    assert!(text.contains("apiserver_current_inflight_requests{request_kind=\"readOnly\"} 1"), "the scrape itself is in flight");

    // RBAC: a user needs the /metrics non-resource URL.
    let token = s.k(&["create", "token", "default"]).trim().to_string();
    let scrape = |tok: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(s.data.join("ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {tok}")])
            .arg(format!("{}/metrics", s.url))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(scrape(&token), "403");
    s.k(&["create", "clusterrole", "metrics-reader", "--verb=get", "--non-resource-url=/metrics"]);
    s.k(&["create", "clusterrolebinding", "metrics-reader", "--clusterrole=metrics-reader", "--serviceaccount=default:default"]);
    assert!(eventually(Duration::from_secs(5), || scrape(&token) == "200"));
}
