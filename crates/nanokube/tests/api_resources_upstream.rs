//! The built-in APIs are kube-apiserver 1.33's: `kubectl api-resources` and `kubectl
//! api-versions` (every kubectl 1.27–1.33) list what a real 1.33 lists
//! (`tests/upstream-1.33/`), the aggregation layer's APIServices included; HPAs answer in
//! both versions from one stored object; a CSR is approved through its `approval`
//! subresource by `kubectl certificate approve`.

mod common;

use common::{eventually, Server};
use serde_json::{json, Value};
use std::time::Duration;

fn upstream(file: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream-1.33").join(file)).unwrap()
}

fn squeeze(text: &str) -> Vec<String> {
    text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|l| !l.is_empty()).collect()
}

#[test]
fn every_kubectl_lists_upstreams_resources_and_versions() {
    let s = Server::start();
    let want_resources: Vec<String> = squeeze(&upstream("api-resources-wide.txt"));
    let want_versions: Vec<String> = squeeze(&upstream("api-versions.txt"));
    for bin in ["kubectl", "kubectl.1.27", "kubectl.1.28", "kubectl.1.29", "kubectl.1.30", "kubectl.1.31", "kubectl.1.32", "kubectl.1.33"] {
        let run = |args: &[&str]| {
            let out = s.kubectl_bin(bin, args);
            assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        // Upstream's, plus metrics-server's group (served as k3s bundles it).
        let (metrics, resources): (Vec<String>, Vec<String>) = squeeze(&run(&["api-resources"])).into_iter().partition(|l| l.contains("metrics.k8s.io"));
        assert_eq!(resources, want_resources, "{bin}");
        assert_eq!(metrics, ["nodes metrics.k8s.io/v1beta1 false NodeMetrics", "pods metrics.k8s.io/v1beta1 true PodMetrics"], "{bin}");
        let (metrics, versions): (Vec<String>, Vec<String>) = squeeze(&run(&["api-versions"])).into_iter().partition(|l| l.contains("metrics.k8s.io"));
        assert_eq!(versions, want_versions, "{bin}");
        assert_eq!(metrics, ["metrics.k8s.io/v1beta1"], "{bin}");
    }
}

#[test]
fn horizontal_pod_autoscalers_in_both_versions_share_one_object() {
    let s = Server::start();
    let v1 = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60}});
    let (code, body) =
        s.curl("POST", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers", Some("application/json"), Some(v1.to_string().as_bytes()));
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["apiVersion"], "autoscaling/v1");
    assert_eq!(created["spec"]["minReplicas"], 1);
    let (_, v2) = s.get_json("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web");
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(v2["spec"]["metrics"], json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]));
    assert_eq!(v2["metadata"]["uid"], created["metadata"]["uid"]);
    // One object, one resourceVersion in both versions (read between the HPA controller's
    // status writes: it reports the missing Deployment).
    assert!(eventually(Duration::from_secs(10), || {
        let (_, a) = s.get_json("/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web");
        let (_, b) = s.get_json("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web");
        let (_, c) = s.get_json("/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web");
        a["metadata"]["resourceVersion"] == c["metadata"]["resourceVersion"] && b["metadata"]["resourceVersion"] == a["metadata"]["resourceVersion"]
    }));
    // A v2-only metric survives a v1 round trip (kept in an annotation, as upstream).
    let (code, body) = s.curl(
        "PATCH",
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web",
        Some("application/merge-patch+json"),
        Some(br#"{"spec":{"metrics":[{"type":"Resource","resource":{"name":"cpu","target":{"type":"Utilization","averageUtilization":60}}},{"type":"Resource","resource":{"name":"memory","target":{"type":"AverageValue","averageValue":"1Gi"}}}]}}"#),
    );
    assert_eq!(code, 200, "{body}");
    let (_, as_v1) = s.get_json("/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web");
    assert_eq!(as_v1["spec"]["targetCPUUtilizationPercentage"], 60);
    let (code, body) =
        s.curl("PUT", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/web", Some("application/json"), Some(as_v1.to_string().as_bytes()));
    assert_eq!(code, 200, "{body}");
    let (_, v2) = s.get_json("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web");
    assert_eq!(v2["spec"]["metrics"].as_array().unwrap().len(), 2, "{v2}");
    assert!(v2["metadata"].get("annotations").is_none(), "{v2}");
    // kubectl reads them (the preferred version is v2).
    assert!(s.k(&["get", "hpa"]).contains("web"));
}

#[test]
fn a_csr_is_approved_through_its_approval_subresource() {
    let s = Server::start();
    // Any PEM CSR will do for approval: the server does not sign yet.
    let request = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "-----BEGIN CERTIFICATE REQUEST-----\nMIIBAA==\n-----END CERTIFICATE REQUEST-----\n",
    );
    let csr = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": "jane"},
        "spec": {"request": request, "signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"]}});
    let (code, body) = s.curl("POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", Some("application/json"), Some(csr.to_string().as_bytes()));
    assert_eq!(code, 201, "{body}");
    let out = s.kubectl(&["certificate", "approve", "jane"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, now) = s.get_json("/apis/certificates.k8s.io/v1/certificatesigningrequests/jane");
    assert_eq!(now["status"]["conditions"][0]["type"], "Approved", "{now}");
    assert_eq!(now["spec"]["signerName"], "kubernetes.io/kube-apiserver-client");
    // The approval subresource changes conditions only.
    let mut changed = now.clone();
    changed["spec"]["signerName"] = json!("example.com/other");
    changed["status"]["certificate"] = json!("Zm9v");
    let (code, body) =
        s.curl("PUT", "/apis/certificates.k8s.io/v1/certificatesigningrequests/jane/approval", Some("application/json"), Some(changed.to_string().as_bytes()));
    assert_eq!(code, 200, "{body}");
    let (_, after) = s.get_json("/apis/certificates.k8s.io/v1/certificatesigningrequests/jane");
    assert_eq!(after["spec"]["signerName"], "kubernetes.io/kube-apiserver-client");
    assert!(after["status"].get("certificate").is_none());
}

/// `/openapi/v2` carries the definitions of every built-in kind (JSON and protobuf), so
/// `kubectl explain --output=plaintext-openapiv2` works; v3 has a document for every
/// group-version, autoscaling/v2 included.
#[test]
fn openapi_v2_has_definitions_and_v3_every_group_version() {
    let s = Server::start();
    let (code, v2) = s.get_json("/openapi/v2");
    assert_eq!(code, 200);
    let defs = v2["definitions"].as_object().unwrap();
    let pod = &defs["io.k8s.api.core.v1.Pod"];
    assert_eq!(pod["x-kubernetes-group-version-kind"], json!([{"group": "", "kind": "Pod", "version": "v1"}]));
    assert_eq!(pod["properties"]["metadata"]["$ref"], "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta");
    assert_eq!(defs["io.k8s.api.core.v1.ContainerPort"]["properties"]["containerPort"]["format"], "int32");
    assert_eq!(defs["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["x-kubernetes-patch-merge-key"], "name");
    assert!(defs.contains_key("io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler"));
    assert!(!v2.to_string().contains("#/components/"), "v3 references left in v2");
    for bin in ["kubectl", "kubectl.1.27", "kubectl.1.33"] {
        let out = s.kubectl_bin(bin, &["explain", "--output=plaintext-openapiv2", "pods.spec.containers.ports"]);
        assert!(out.status.success(), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("RESOURCE: ports <[]Object>") && text.contains("containerPort"), "{bin}: {text}");
    }
    let (_, root) = s.get_json("/openapi/v3");
    assert!(root["paths"]["apis/autoscaling/v2"]["serverRelativeURL"].is_string(), "{root}");
    let out = s.kubectl(&["explain", "hpa.spec.metrics"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `kubectl get componentstatuses` answers with this server's own health, deprecated as
/// upstream says; it is read-only.
#[test]
fn component_statuses_report_this_servers_parts() {
    let s = Server::start();
    let out = s.kubectl(&["get", "componentstatuses"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Warning: v1 ComponentStatus is deprecated in v1.19+"));
    let (head, rows) = common::table(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(head, ["NAME", "STATUS", "MESSAGE", "ERROR"]);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["scheduler", "controller-manager", "etcd-0"]);
    let (code, etcd) = s.get_json("/api/v1/componentstatuses/etcd-0");
    assert_eq!(code, 200);
    assert_eq!(etcd["conditions"][0], json!({"type": "Healthy", "status": "True", "message": "ok"}));
    let (code, scheduler) = s.get_json("/api/v1/componentstatuses/scheduler");
    assert_eq!(code, 200);
    assert_eq!(scheduler["conditions"][0]["status"], "True", "the in-process scheduler: {scheduler}");
    let bare = Server::start_with(&["--scheduler=false"]);
    let scheduler = bare.get_json("/api/v1/componentstatuses/scheduler").1;
    assert_eq!(scheduler["conditions"][0]["status"], "False", "{scheduler}");
    assert!(scheduler["conditions"][0]["error"].as_str().unwrap().contains("--scheduler=false"));
    assert_eq!(s.get_json("/api/v1/componentstatuses/nope").0, 404);
    assert_eq!(s.curl("DELETE", "/api/v1/componentstatuses/etcd-0", None, None).0, 405);
}
