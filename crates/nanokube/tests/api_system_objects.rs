//! What the system itself lives in is kept: `default`, `kube-system` and `kube-public`
//! cannot be deleted (upstream's 403), and `kube-node-lease` and the `kubernetes`
//! Service, Endpoints and EndpointSlice come back when deleted.

mod common;

use std::time::Duration;

use common::{eventually, Server};
use serde_json::Value;

#[test]
fn system_namespaces_cannot_be_deleted() {
    let s = Server::start();
    for ns in ["default", "kube-system", "kube-public"] {
        let out = s.kubectl(&["delete", "namespace", ns]);
        assert!(!out.status.success(), "{ns} deleted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!(r#"Error from server (Forbidden): namespaces "{ns}" is forbidden: this namespace may not be deleted"#)), "{err}");
        let (code, body) = s.curl("DELETE", &format!("/api/v1/namespaces/{ns}"), None, None);
        assert_eq!(code, 403);
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["reason"], "Forbidden");
        assert_eq!(status["details"]["name"], ns);
        assert_eq!(status["details"]["kind"], "namespaces");
        let (_, now) = s.get_json(&format!("/api/v1/namespaces/{ns}"));
        assert_eq!(now["status"]["phase"], "Active", "{ns} is not terminating");
    }
}

#[test]
fn kube_node_lease_and_the_kubernetes_service_come_back() {
    let s = Server::start();
    let uid = |path: &str| s.get_json(path).1["metadata"]["uid"].as_str().map(String::from);
    let ns = "/api/v1/namespaces/kube-node-lease";
    let before = uid(ns).unwrap();
    s.k(&["delete", "namespace", "kube-node-lease", "--wait=false"]);
    assert!(eventually(Duration::from_secs(30), || uid(ns).is_some_and(|u| u != before)), "kube-node-lease was not recreated");
    assert!(eventually(Duration::from_secs(10), || s.get_json(ns).1["status"]["phase"] == "Active"));

    let (_, svc) = s.get_json("/api/v1/namespaces/default/services/kubernetes");
    for path in [
        "/api/v1/namespaces/default/services/kubernetes",
        "/api/v1/namespaces/default/endpoints/kubernetes",
        "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes",
    ] {
        let before = uid(path).unwrap();
        let (code, body) = s.curl("DELETE", path, None, None);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(eventually(Duration::from_secs(10), || uid(path).is_some_and(|u| u != before)), "{path} was not recreated");
    }
    let (_, again) = s.get_json("/api/v1/namespaces/default/services/kubernetes");
    assert_eq!(again["spec"]["clusterIP"], svc["spec"]["clusterIP"], "the same first service IP");
    assert_eq!(again["spec"]["ports"], svc["spec"]["ports"]);
}
