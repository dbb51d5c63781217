//! The real kubectl against a fresh nanokube, with no extra flags: the commands of
//! issue #2, with their output checked (columns and values), not just exit codes.

mod common;

use std::time::Duration;

use common::{eventually, table, Server};
use serde_json::Value;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: c
    image: nginx:1.27
    ports: [{containerPort: 80}]
"#;

#[test]
fn discovery_version_and_cluster_info() {
    let s = Server::start();
    let v = s.k(&["version", "-o", "json"]);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["serverVersion"]["major"], "1");
    assert_eq!(v["serverVersion"]["minor"], "33");
    let ci = s.k(&["cluster-info"]);
    assert!(ci.contains("Kubernetes control plane") && ci.contains(&s.url), "{ci}");

    let ar = s.k(&["api-resources"]);
    let (h, rows) = table(&ar);
    assert_eq!(h, ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]);
    let find = |n: &str| rows.iter().find(|r| r[0] == n).cloned().unwrap_or_else(|| panic!("{n} missing from api-resources"));
    assert_eq!(find("pods"), ["pods", "po", "v1", "true", "Pod"]);
    assert_eq!(find("deployments"), ["deployments", "deploy", "apps/v1", "true", "Deployment"]);
    assert_eq!(find("namespaces")[3], "false");
    assert_eq!(find("clusterroles")[2], "rbac.authorization.k8s.io/v1");

    let ns = s.k(&["get", "ns"]);
    let (h, rows) = table(&ns);
    assert_eq!(h, ["NAME", "STATUS", "AGE"]);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["default", "kube-node-lease", "kube-public", "kube-system"]);
    assert!(rows.iter().all(|r| r[1] == "Active"));

    let all = s.k(&["get", "all", "-A"]);
    let (h, rows) = table(&all);
    assert_eq!(h, ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]);
    assert_eq!(rows[0][..6], ["default", "service/kubernetes", "ClusterIP", "127.96.0.1", "<none>", "443/TCP"]);
}

#[test]
fn create_get_describe_label_annotate_delete() {
    // A control plane only: the pod below stays Pending, as in the table asserted.
    let s = Server::start_with(&["--node=false"]);
    assert_eq!(s.k(&["create", "namespace", "x"]).trim(), "namespace/x created");
    assert_eq!(s.k(&["create", "deployment", "d", "--image=nginx", "-n", "x"]).trim(), "deployment.apps/d created");
    assert_eq!(s.k(&["create", "configmap", "cm1", "--from-literal=a=1", "--from-literal=b=2", "-n", "x"]).trim(), "configmap/cm1 created");
    assert_eq!(s.k(&["create", "secret", "generic", "s1", "--from-literal=password=hunter2", "-n", "x"]).trim(), "secret/s1 created");

    // Defaults clients read back.
    let d: Value = serde_json::from_str(&s.k(&["get", "deploy", "d", "-n", "x", "-o", "json"])).unwrap();
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");

    // Secret data round-trips through protobuf (kubectl create) and base64.
    let pw = s.k(&["get", "secret", "s1", "-n", "x", "-o", "jsonpath={.data.password}"]);
    assert_eq!(pw, "aHVudGVyMg==");

    let (h, rows) = table(&s.k(&["get", "cm", "-n", "x"]));
    assert_eq!(h, ["NAME", "DATA", "AGE"]);
    assert!(rows.iter().any(|r| r[0] == "cm1" && r[1] == "2"));
    assert!(rows.iter().any(|r| r[0] == "kube-root-ca.crt" && r[1] == "1"), "kube-root-ca.crt is created in new namespaces");
    let (h, rows) = table(&s.k(&["get", "secrets", "-n", "x"]));
    assert_eq!(h, ["NAME", "TYPE", "DATA", "AGE"]);
    assert!(rows.iter().any(|r| r[..3] == ["s1", "Opaque", "1"]), "{rows:?}");
    assert!(rows.iter().any(|r| r[0].starts_with("default-token-") && r[1] == "kubernetes.io/service-account-token" && r[2] == "3"), "{rows:?}");
    // The controller makes the Deployment's pod (it waits for its image): up to date,
    // not ready.
    assert!(eventually(Duration::from_secs(10), || table(&s.k(&["get", "deploy", "-n", "x"])).1[0][..4] == ["d", "0/1", "1", "0"]));
    let (h, rows) = table(&s.k(&["get", "deploy", "-n", "x", "-o", "wide"]));
    assert_eq!(h, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]);
    assert_eq!(rows[0][5..], ["nginx", "nginx", "app=d"]);

    // create -f with no flags: needs OpenAPI v3 with fieldValidation on PATCH.
    let out = s.k_stdin(&["create", "-f", "-"], POD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "pod/web created");
    let (h, rows) = table(&s.k(&["get", "pods", "-o", "wide"]));
    assert_eq!(h, ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"]);
    assert_eq!(rows[0][..4], ["web", "0/1", "Pending", "0"]);
    assert_eq!(rows[0][5..], ["<none>", "<none>", "<none>", "<none>"]);

    // Output formats.
    assert_eq!(s.k(&["get", "pod", "web", "-o", "name"]).trim(), "pod/web");
    assert_eq!(s.k(&["get", "pod", "web", "-o", "jsonpath={.spec.containers[0].image}"]), "nginx:1.27");
    let y = s.k(&["get", "pod", "web", "-o", "yaml"]);
    assert!(y.contains("kind: Pod") && y.contains("serviceAccountName: default") && y.contains("phase: Pending"), "{y}");
    let j: Value = serde_json::from_str(&s.k(&["get", "pods", "-o", "json"])).unwrap();
    assert_eq!(j["kind"], "List");
    assert_eq!(j["items"][0]["metadata"]["name"], "web");
    assert!(!j["items"][0]["metadata"]["resourceVersion"].as_str().unwrap().is_empty());

    // label, annotate, selectors.
    assert_eq!(s.k(&["label", "pod", "web", "tier=front"]).trim(), "pod/web labeled");
    assert_eq!(s.k(&["annotate", "pod", "web", "note=hello"]).trim(), "pod/web annotated");
    assert_eq!(s.k(&["get", "pods", "-l", "tier=front,app in (web)", "-o", "name"]).trim(), "pod/web");
    assert_eq!(s.k(&["get", "pods", "-l", "tier!=front", "-o", "name"]).trim(), "");
    let (h, rows) = table(&s.k(&["get", "pods", "--show-labels"]));
    assert_eq!(h.last().unwrap(), "LABELS");
    assert_eq!(rows[0].last().unwrap(), "app=web,tier=front");
    assert_eq!(s.k(&["get", "pods", "--field-selector", "status.phase=Pending", "-o", "name"]).trim(), "pod/web");

    let desc = s.k(&["describe", "pod", "web"]);
    for want in ["Name:", "web", "Namespace:", "default", "Labels:", "app=web", "tier=front", "Annotations:", "note: hello", "Status:", "Pending", "nginx:1.27"]
    {
        assert!(desc.contains(want), "describe lacks {want:?}:\n{desc}");
    }

    // delete waits for the object to be gone, then returns.
    assert_eq!(s.k(&["delete", "pod", "web"]).trim(), "pod \"web\" deleted");
    let out = s.kubectl(&["get", "pod", "web"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Error from server (NotFound): pods \"web\" not found"));
    assert_eq!(s.k(&["delete", "cm", "cm1", "-n", "x"]).trim(), "configmap \"cm1\" deleted");
}

#[test]
fn apply_twice_and_config_view() {
    let s = Server::start();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n  k: v\n";
    let first = s.k_stdin(&["apply", "-f", "-"], cm);
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), "configmap/applied created", "{}", String::from_utf8_lossy(&first.stderr));
    let second = s.k_stdin(&["apply", "-f", "-"], cm);
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), "configmap/applied unchanged");
    let third = s.k_stdin(&["apply", "-f", "-"], &cm.replace("k: v", "k: w"));
    assert_eq!(String::from_utf8_lossy(&third.stdout).trim(), "configmap/applied configured");
    assert_eq!(s.k(&["get", "cm", "applied", "-o", "jsonpath={.data.k}"]), "w");

    let view = s.k(&["config", "view", "--minify"]);
    assert!(view.contains(&format!("server: {}", s.url)), "{view}");
    assert!(view.contains("certificate-authority-data: DATA+OMITTED"));
    assert!(view.contains("client-key-data: DATA+OMITTED"));
    assert!(view.contains("current-context: nanokube"));
}

#[test]
fn scale_subresource_and_status_split() {
    let s = Server::start();
    s.k(&["create", "deployment", "web", "--image=nginx"]);
    assert_eq!(s.k(&["scale", "deploy/web", "--replicas=3"]).trim(), "deployment.apps/web scaled");
    assert_eq!(s.k(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.metadata.generation}"]), "3 2");
    let (code, scale) = s.get_json("/apis/apps/v1/namespaces/default/deployments/web/scale");
    assert_eq!(code, 200);
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=web");
    // A status write does not move generation; a spec write through the main resource
    // cannot change status.
    // (The answers are read, not a later GET: the Deployment controller owns the status
    // and rewrites it.)
    let (code, body) = s.curl(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/web/status",
        Some("application/merge-patch+json"),
        Some(br#"{"status":{"replicas":3,"readyReplicas":2}}"#),
    );
    assert_eq!(code, 200);
    let written: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((written["status"]["readyReplicas"].as_i64(), written["metadata"]["generation"].as_i64()), (Some(2), Some(2)));
    let (code, body) =
        s.curl("PATCH", "/apis/apps/v1/namespaces/default/deployments/web", Some("application/merge-patch+json"), Some(br#"{"status":{"readyReplicas":99}}"#));
    assert_eq!(code, 200);
    let written: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(written["status"]["readyReplicas"], 99);
    assert_eq!(written["metadata"]["generation"], 2);
}

#[test]
fn services_get_cluster_ips_and_node_ports() {
    let s = Server::start();
    s.k(&["create", "service", "nodeport", "np", "--tcp=80:8080"]);
    s.k(&["create", "service", "clusterip", "cip", "--tcp=443:8443"]);
    let np: Value = serde_json::from_str(&s.k(&["get", "svc", "np", "-o", "json"])).unwrap();
    let ip = np["spec"]["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("127.96."), "{ip}");
    let port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&port));
    assert_eq!(np["spec"]["sessionAffinity"], "None");
    let (_, rows) = table(&s.k(&["get", "svc", "np"]));
    assert_eq!(rows[0][4], format!("80:{port}/TCP"));
    // Requesting a taken node port is refused; after delete it is free again.
    let dup =
        format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"dup"}},"spec":{{"type":"NodePort","ports":[{{"port":80,"nodePort":{port}}}]}}}}"#);
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/services", Some("application/json"), Some(dup.as_bytes()));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("provided port is already allocated"));
    s.k(&["delete", "svc", "np"]);
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/services", Some("application/json"), Some(dup.as_bytes()));
    assert_eq!(code, 201, "{body}");
}
