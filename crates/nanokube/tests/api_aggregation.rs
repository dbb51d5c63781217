//! The aggregation layer: a local APIService for every served group-version (as
//! kube-apiserver's autoregister keeps them), and an APIService backed by a real
//! aggregated API server (a Python process, `tests/support/aggregated_apiserver.py`,
//! that trusts only the front proxy's CA from `extension-apiserver-authentication`):
//! its availability checked for real, its discovery merged into the server's, requests
//! proxied after this server's own authentication and authorization, with the user in
//! the front-proxy headers.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{eventually, table, Server};
use serde_json::Value;

struct Backend {
    _child: common::KillOnDrop,
    port: u16,
    ca_b64: String,
    _dir: tempfile::TempDir,
}

fn start_backend(s: &Server) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::serving_cert(&["widgets.agg.svc"]);
    // What an aggregated API server reads to know whom to trust for the user headers.
    let cm = s.get_json("/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication").1;
    assert_eq!(cm["data"]["requestheader-allowed-names"], "[\"front-proxy-client\"]");
    assert_eq!(cm["data"]["requestheader-username-headers"], "[\"X-Remote-User\"]");
    let front_proxy_ca = cm["data"]["requestheader-client-ca-file"].as_str().unwrap().to_string();
    assert!(front_proxy_ca.starts_with("-----BEGIN CERTIFICATE-----"));
    for (f, text) in [("tls.crt", &cert), ("tls.key", &key), ("front-proxy-ca.crt", &front_proxy_ca)] {
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let args = [dir.path().join("tls.crt"), dir.path().join("tls.key"), dir.path().join("front-proxy-ca.crt")];
    let (child, port) = common::spawn_python_server(
        "aggregated_apiserver.py",
        &[args[0].as_os_str(), args[1].as_os_str(), args[2].as_os_str(), "widgets.example.com".as_ref(), "v1beta1".as_ref()],
    );
    Backend { _child: common::KillOnDrop(child), port, ca_b64: base64::engine::general_purpose::STANDARD.encode(ca), _dir: dir }
}

fn available(s: &Server, name: &str) -> (String, String, String) {
    let svc = s.get_json(&format!("/apis/apiregistration.k8s.io/v1/apiservices/{name}")).1;
    let c = svc["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "Available").cloned()).unwrap_or(Value::Null);
    let text = |k: &str| c[k].as_str().unwrap_or("").to_string();
    (text("status"), text("reason"), text("message"))
}

#[test]
fn local_apiservices_for_every_served_group_version() {
    let s = Server::start();
    let (head, rows) = table(&s.k(&["get", "apiservices"]));
    assert_eq!(head, ["NAME", "SERVICE", "AVAILABLE", "AGE"]);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    for want in ["v1.", "v1.apps", "v2.autoscaling", "v1.autoscaling", "v1.apiregistration.k8s.io", "v1.flowcontrol.apiserver.k8s.io"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    assert!(rows.iter().all(|r| r[1] == "Local" && r[2] == "True"), "{rows:?}");
    let apps = s.get_json("/apis/apiregistration.k8s.io/v1/apiservices/v1.apps").1;
    assert_eq!(apps["spec"], serde_json::json!({"group": "apps", "version": "v1", "groupPriorityMinimum": 17800, "versionPriority": 15}));
    assert_eq!(apps["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"], "onstart");

    // A CRD's group-version gets one, and loses it with the CRD.
    let crd = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"gizmos.example.org"},
      "spec":{"group":"example.org","scope":"Namespaced","names":{"plural":"gizmos","singular":"gizmo","kind":"Gizmo"},
      "versions":[{"name":"v1","served":true,"storage":true,"schema":{"openAPIV3Schema":{"type":"object"}}}]}}"#;
    s.k_stdin(&["create", "-f", "-"], crd);
    assert!(eventually(Duration::from_secs(10), || s.curl("GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1.example.org", None, None).0 == 200));
    let gizmo = s.get_json("/apis/apiregistration.k8s.io/v1/apiservices/v1.example.org").1;
    assert_eq!(gizmo["spec"]["groupPriorityMinimum"], 1000);
    assert_eq!(gizmo["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"], "true");
    s.k(&["delete", "crd", "gizmos.example.org"]);
    assert!(eventually(Duration::from_secs(10), || s.curl("GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1.example.org", None, None).0 == 404));

    // Deleting a local one brings it back; its name must be version.group.
    s.k(&["delete", "apiservice", "v1.batch"]);
    assert!(eventually(Duration::from_secs(10), || s.curl("GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1.batch", None, None).0 == 200));
    let bad = r#"{"apiVersion":"apiregistration.k8s.io/v1","kind":"APIService","metadata":{"name":"wrong"},"spec":{"group":"x.io","version":"v1","groupPriorityMinimum":10,"versionPriority":10}}"#;
    let (code, body) = s.curl("POST", "/apis/apiregistration.k8s.io/v1/apiservices", Some("application/json"), Some(bad.as_bytes()));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains(r#"must be `spec.version+\".\"+spec.group`: \"v1.x.io\""#), "{body}");
}

#[test]
fn a_service_backed_apiservice_is_checked_discovered_and_proxied() {
    let s = Server::start();
    let backend = start_backend(&s);
    s.k(&["create", "namespace", "agg"]);
    let manifest = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
          {{"apiVersion":"v1","kind":"Service","metadata":{{"name":"widgets","namespace":"agg"}},"spec":{{"ports":[{{"port":443,"targetPort":{port}}}]}}}},
          {{"apiVersion":"v1","kind":"Endpoints","metadata":{{"name":"widgets","namespace":"agg"}},"subsets":[{{"addresses":[{{"ip":"127.0.0.1"}}],"ports":[{{"port":{port}}}]}}]}},
          {{"apiVersion":"apiregistration.k8s.io/v1","kind":"APIService","metadata":{{"name":"v1beta1.widgets.example.com"}},
            "spec":{{"group":"widgets.example.com","version":"v1beta1","service":{{"namespace":"agg","name":"widgets","port":443}},
                    "caBundle":"{ca}","groupPriorityMinimum":1000,"versionPriority":15}}}}]}}"#,
        port = backend.port,
        ca = backend.ca_b64
    );
    let out = s.k_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The availability check reaches the backend, front-proxy certificate and all.
    assert!(
        eventually(Duration::from_secs(20), || available(&s, "v1beta1.widgets.example.com").0 == "True"),
        "{:?}",
        available(&s, "v1beta1.widgets.example.com")
    );
    assert_eq!(available(&s, "v1beta1.widgets.example.com"), ("True".into(), "Passed".into(), "all checks passed".into()));
    let (_, rows) = table(&s.k(&["get", "apiservice", "v1beta1.widgets.example.com"]));
    assert_eq!(rows[0][1..3], ["agg/widgets".to_string(), "True".to_string()]);

    // Discovery: legacy and aggregated, as kubectl reads them.
    let groups = s.get_json("/apis").1;
    assert!(groups["groups"].as_array().unwrap().iter().any(|g| g["name"] == "widgets.example.com"), "{groups}");
    assert_eq!(s.get_json("/apis/widgets.example.com").1["preferredVersion"]["version"], "v1beta1");
    let out = s.k(&["api-resources", "--api-group=widgets.example.com"]);
    assert!(out.contains("widgets") && out.contains("widgets.example.com/v1beta1") && out.contains("Widget"), "{out}");

    // Proxied as the caller, after this server's own authorization.
    let list: Value = serde_json::from_str(&s.k(&["get", "widgets", "-n", "default", "-o", "json"])).unwrap();
    let spec = &list["items"][0]["spec"];
    assert_eq!(spec["user"], "nanokube-admin", "{list}");
    assert!(spec["groups"].as_array().unwrap().iter().any(|g| g == "system:masters"), "{spec}");
    assert_eq!(spec["sawAuthorization"], false, "the caller's credentials stay here");
    let out = s.kubectl(&["get", "widgets", "-n", "default", "--as=nobody"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"User "nobody" cannot list resource "widgets" in API group "widgets.example.com""#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The backend goes away: the check says so and requests get 503.
    drop(backend);
    assert!(eventually(Duration::from_secs(30), || available(&s, "v1beta1.widgets.example.com").0 == "False"));
    let (_, reason, message) = available(&s, "v1beta1.widgets.example.com");
    assert_eq!(reason, "FailedDiscoveryCheck");
    assert!(message.starts_with("failing or missing response from https://127.0.0.1:"), "{message}");
    let (code, body) = s.curl("GET", "/apis/widgets.example.com/v1beta1/namespaces/default/widgets", None, None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("ServiceUnavailable"), "{body}");
    s.k(&["delete", "apiservice", "v1beta1.widgets.example.com"]);
    assert_eq!(s.curl("GET", "/apis/widgets.example.com/v1beta1/namespaces/default/widgets", None, None).0, 404);
}
