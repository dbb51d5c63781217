//! Services from inside pods: a TCP connection to a Service's ClusterIP and port is
//! captured in the pod's namespace and carried to one of the Service's ready endpoints;
//! a Service with none resets the connection at once.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image};

#[test]
fn pods_reach_services_through_their_endpoints_and_empty_ones_refuse() {
    let s = server_with_image();
    s.k(&["run", "web", "--image=testbox:1.0", "--", "sh", "-c", "mkdir /www; echo served > /www/index.html; exec httpd -f -p 8080 -h /www"]);
    let ok = s.kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let web_ip = s.k(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"]);
    // Services without selectors, their endpoints written by hand (no endpoints controller yet).
    let manifests = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n    targetPort: 8080\n---\n\
         apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: web\nsubsets:\n- addresses:\n  - ip: {web_ip}\n  ports:\n  - port: 8080\n---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: empty\nspec:\n  ports:\n  - port: 80\n"
    );
    let out = s.k_stdin(&["apply", "-f", "-"], &manifests);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let web = s.k(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let empty = s.k(&["get", "service", "empty", "-o", "jsonpath={.spec.clusterIP}"]);
    let script = format!(
        "wget -qO- http://{web}/; t=$(date +%s); wget -qO- -T 5 http://{empty}/ >/dev/null 2>&1 || echo failed after $(( $(date +%s) - t ))s; echo done; sleep 3600"
    );
    s.k(&["run", "client", "--image=testbox:1.0", "--", "sh", "-c", &script]);
    assert!(eventually(Duration::from_secs(30), || s.kubectl(&["logs", "client"]).stdout.ends_with(b"done\n")), "{}", s.k(&["logs", "client"]));
    let log = s.k(&["logs", "client"]);
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("served"), "{log}");
    // No ready endpoint: the connection is reset at once, not left to time out (the
    // capture accepted it first, so the client sees a reset rather than kube-proxy's
    // refusal of the SYN).
    assert!(lines.next().is_some_and(|l| l == "failed after 0s" || l == "failed after 1s"), "{log}");

    // Every thread of the server is back in the host's network namespace (those that
    // made sockets inside the pods' left them), so none keeps a deleted pod's alive.
    let pid = s.child.id();
    let host = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if let Ok(ns) = std::fs::read_link(task.path().join("ns/net")) {
            assert_eq!(ns, host, "thread {} ({}) is in another network namespace", task.file_name().to_string_lossy(), name.trim());
        }
    }
}
