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

/// The default ServiceCIDR is the Service range, `Ready` and protected by its finalizer
/// as kube-apiserver 1.33 and kube-controller-manager leave it; deleting it while the
/// `kubernetes` and DNS Services hold addresses in it leaves it `Terminating`.
#[test]
fn the_default_service_cidr_is_the_service_range() {
    let s = Server::start_with(&["--service-cluster-ip-range=127.97.0.0/20"]);
    let path = "/apis/networking.k8s.io/v1/servicecidrs/kubernetes";
    let ready = |c: &serde_json::Value, status: &str, message: &str| {
        c["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|x| x["type"] == "Ready" && x["status"] == status && x["message"] == message))
    };
    let settled = eventually(Duration::from_secs(10), || {
        let c = s.get_json(path).1;
        ready(&c, "True", "Kubernetes Service CIDR is ready") && c["metadata"]["finalizers"] == serde_json::json!(["networking.k8s.io/service-cidr-finalizer"])
    });
    assert!(settled, "{}", s.get_json(path).1);
    assert_eq!(s.get_json(path).1["spec"]["cidrs"], serde_json::json!(["127.97.0.0/20"]));
    assert_eq!(s.k(&["get", "servicecidrs", "-o", "jsonpath={.items[*].metadata.name}"]), "kubernetes");
    s.k(&["delete", "servicecidr", "kubernetes", "--wait=false"]);
    let blocked = eventually(Duration::from_secs(10), || {
        ready(&s.get_json(path).1, "False", "There are still IPAddresses referencing the ServiceCIDR, please remove them or create a new ServiceCIDR")
    });
    assert!(blocked, "{}", s.get_json(path).1);
    let c = s.get_json(path).1;
    assert!(c["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(c["status"]["conditions"][0]["reason"], "Terminating");
}
