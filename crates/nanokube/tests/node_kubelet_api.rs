//! The kubelet API on the node (HTTPS, a certificate of the cluster CA): anonymous and
//! bad tokens refused (401), callers authorized per subresource of `nodes` as kubelet's
//! SubjectAccessReviews ask (403 in kubelet's words), and what it serves (`/healthz`,
//! `/pods`, `/containerLogs`, `/stats/summary`, `/metrics`, `/metrics/resource`,
//! `/logs/`), directly and through the API server's `nodes/proxy` (kubectl `get --raw`),
//! exec through it with kube-rs's `kubelet-debug` client and a WebSocket.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, Server};

/// `curl` at the kubelet: (code, body). `who` is the admin's client certificate for
/// `None`, a bearer token for `Some(token)`, nothing at all for `Some("")`.
fn kubelet(s: &Server, port: u16, who: Option<&str>, path: &str) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--path-as-is", "-o", "-", "-w", "\n%{http_code}", "--cacert"]).arg(s.data.join("ca.crt"));
    match who {
        None => {
            cmd.arg("--cert").arg(s.data.join("client.crt")).arg("--key").arg(s.data.join("client.key"));
        }
        Some("") => {}
        Some(t) => {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
    }
    let out = cmd.arg(format!("https://127.0.0.1:{port}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn the_kubelet_api_authenticates_authorizes_and_serves_the_node() {
    let s = server_with_image();
    s.k(&["run", "box", "--image=testbox:1.0", "--", "sh", "-c", "echo hello from box; while true; do sleep 1; done"]);
    let ok = s.kubectl(&["wait", "--for=condition=Ready", "pod/box", "--timeout=30s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let node = s.k(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let port: u16 = s.k(&["get", "node", &node, "-o", "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}"]).parse().unwrap();
    assert!(port > 0);

    // Who may call: nobody anonymous, no bad token; the admin's certificate everywhere.
    assert_eq!(kubelet(&s, port, Some(""), "/healthz"), (401, "Unauthorized".to_string()));
    assert_eq!(kubelet(&s, port, Some("not-a-token"), "/pods").0, 401);
    assert_eq!(kubelet(&s, port, None, "/healthz"), (200, "ok".to_string()));

    // A service account is judged per subresource, as kubelet's SubjectAccessReviews.
    s.k(&["create", "serviceaccount", "monitor"]);
    let token = s.k(&["create", "token", "monitor"]).trim().to_string();
    let (code, body) = kubelet(&s, port, Some(&token), "/stats/summary");
    assert_eq!(code, 403);
    assert_eq!(body, "Forbidden (user=system:serviceaccount:default:monitor, verb=get, resource=nodes, subresource=stats)");
    s.k(&["create", "clusterrole", "node-stats", "--verb=get", "--resource=nodes/stats"]);
    s.k(&["create", "clusterrolebinding", "monitor-stats", "--clusterrole=node-stats", "--serviceaccount=default:monitor"]);
    assert!(eventually(Duration::from_secs(5), || kubelet(&s, port, Some(&token), "/stats/summary").0 == 200));
    let (code, body) = kubelet(&s, port, Some(&token), "/pods");
    assert_eq!((code, body.as_str()), (403, "Forbidden (user=system:serviceaccount:default:monitor, verb=get, resource=nodes, subresource=proxy)"));

    // What it serves.
    let (code, body) = kubelet(&s, port, None, "/pods");
    assert_eq!(code, 200);
    let pods: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pods["kind"], "PodList");
    assert!(pods["items"].as_array().unwrap().iter().any(|p| p["metadata"]["name"] == "box"), "{body}");
    let (code, body) = kubelet(&s, port, None, "/containerLogs/default/box/box");
    assert_eq!((code, body.as_str()), (200, "hello from box\n"));
    // The figures come once the node has sampled twice.
    assert!(eventually(Duration::from_secs(30), || {
        let (_, body) = kubelet(&s, port, None, "/stats/summary");
        let summary: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let pod = summary["pods"].as_array().and_then(|ps| ps.iter().find(|p| p["podRef"]["name"] == "box").cloned());
        summary["node"]["nodeName"] == node.as_str()
            && summary["node"]["cpu"]["usageCoreNanoSeconds"].as_u64().is_some_and(|n| n > 0)
            && pod.is_some_and(|p| p["containers"][0]["name"] == "box" && p["containers"][0]["memory"]["workingSetBytes"].as_u64().is_some_and(|n| n > 0))
    }));
    let (code, body) = kubelet(&s, port, None, "/metrics/resource");
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE node_cpu_usage_seconds_total counter"), "{body}");
    assert!(body.contains("container_memory_working_set_bytes{container=\"box\",namespace=\"default\",pod=\"box\"}"), "{body}");
    let (code, body) = kubelet(&s, port, None, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains(&format!("kubelet_node_name{{node=\"{node}\"}} 1")) && body.contains("kubelet_running_pods 1"), "{body}");
    let (code, body) = kubelet(&s, port, None, "/logs/");
    assert_eq!(code, 200);
    assert!(body.starts_with("<pre>\n"), "{body}");
    assert_eq!(kubelet(&s, port, None, "/logs/../etc/passwd").0, 404);

    // Through the API server: nodes/proxy, authorized there first.
    let raw = s.k(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/pods")]);
    assert!(raw.contains("\"name\":\"box\""), "{raw}");
    assert_eq!(s.k(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/healthz")]), "ok");
    let logs = s.k(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/containerLogs/default/box/box")]);
    assert_eq!(logs, "hello from box\n");
    let (code, body) = s.curl_as(Some(&token), "GET", &format!("/api/v1/nodes/{node}/proxy/pods"), None, None);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("cannot get resource \\\"nodes/proxy\\\""), "{body}");
    let (code, _) = s.curl("GET", "/api/v1/nodes/no-such-node/proxy/pods", None, None);
    assert_eq!(code, 404);

    // exec straight at the kubelet, over WebSocket, as kube-rs's kubelet-debug client does.
    let uid = s.k(&["get", "pod", "box", "-o", "jsonpath={.metadata.uid}"]);
    let said = kube_rs_kubelet_exec(&s, &format!("https://127.0.0.1:{port}"), &uid);
    assert_eq!(said, "inside box\n");
    // The same through nodes/proxy: the upgrade passes through the API server.
    let said = kube_rs_kubelet_exec(&s, &format!("{}/api/v1/nodes/{node}/proxy", s.url), &uid);
    assert_eq!(said, "inside box\n");
    // An upgrade the kubelet refuses (no such container) is answered, never switched:
    // the client's connection ends with the answer (CVE-2018-1002105's class).
    let started = std::time::Instant::now();
    let out = s
        .admin_curl()
        .args(["-s", "-i", "--http1.1", "-m", "20", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "-H", "Sec-WebSocket-Protocol: v5.channel.k8s.io"])
        .arg(format!("{}/api/v1/nodes/{node}/proxy/exec/default/box/nope?command=id&output=1", s.url))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("container nope is not valid for pod box"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(15), "the connection was left open");
}

/// `Client::kubelet_node_exec` (kube-rs, feature `kubelet-debug`) against the kubelet
/// with the admin's certificate.
fn kube_rs_kubelet_exec(s: &Server, url: &str, uid: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let kubeconfig = kube::config::Kubeconfig::read_from(s.kubeconfig()).unwrap();
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        config.cluster_url = url.parse().unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let params = kube::core::kubelet_debug::KubeletDebugParams { name: "box", namespace: "default", pod_uid: Some(uid) };
        let ap = kube::api::AttachParams::default().stdout(true).stderr(false);
        let mut p = client.kubelet_node_exec(&params, "box", ["sh", "-c", "echo inside $HOSTNAME"], &ap).await.unwrap();
        let mut out = String::new();
        p.stdout().unwrap().read_to_string(&mut out).await.unwrap();
        p.join().await.unwrap();
        out
    })
}
