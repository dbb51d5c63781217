//! Server-side field validation, content negotiation (YAML bodies, Tables with objects,
//! PartialObjectMetadata, aggregated discovery), namespace deletion and the objects the
//! controllers keep in every namespace.

mod common;

use std::time::Duration;

use common::{eventually, table, Server};
use serde_json::Value;

const TYPO: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\nspec:\n  containers:\n  - name: c\n    image: nginx\n    imagee: nginx\n";

#[test]
fn field_validation_strict_warn_ignore() {
    let s = Server::start();
    let out = s.k_stdin(&["create", "-f", "-"], TYPO);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"Error from server (BadRequest): error when creating "STDIN": Pod in version "v1" cannot be handled as a Pod: strict decoding error: unknown field "spec.containers[0].imagee""#), "{err}");
    assert_eq!(s.curl("GET", "/api/v1/namespaces/default/pods/typo", None, None).0, 404, "nothing stored");

    let out = s.k_stdin(&["create", "--validate=warn", "-f", "-"], TYPO);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"Warning: unknown field "spec.containers[0].imagee""#));
    let c = s.get_json("/api/v1/namespaces/default/pods/typo").1["spec"]["containers"][0].clone();
    assert!(c.get("imagee").is_none(), "unknown fields are dropped, as typed decoding does: {c}");
    assert_eq!(c["image"], "nginx");

    // Duplicate fields in a JSON body are refused under Strict and reported under Warn.
    let dup = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup","name":"dup"},"data":{"a":"1"}}"#;
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Strict", Some("application/json"), Some(dup));
    assert_eq!(code, 400);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["message"], r#"ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: duplicate field "metadata.name""#);
    let (code, _) = s.curl("POST", "/api/v1/namespaces/default/configmaps?fieldValidation=Warn", Some("application/json"), Some(dup));
    assert_eq!(code, 201);

    let out = s.k_stdin(&["apply", "--validate=false", "-f", "-"], &TYPO.replace("typo", "typo2"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.get_json("/api/v1/namespaces/default/pods/typo2").1["spec"]["containers"][0].get("imagee").is_none());
}

#[test]
fn yaml_bodies_partial_metadata_and_aggregated_discovery() {
    let s = Server::start();
    let (code, body) = s.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/yaml"),
        Some(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n"),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/from-yaml").1["data"]["k"], "v");

    let meta = |accept: &str, path: &str| -> (String, Value) {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-D", "-", "-H", &format!("Accept: {accept}"), "--cacert"])
            .arg(s.data.join("ca.crt"))
            .arg("--cert")
            .arg(s.data.join("client.crt"))
            .arg("--key")
            .arg(s.data.join("client.key"))
            .arg(format!("{}{}", s.url, path))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let ct = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-type:")).unwrap_or("").split_once(':').unwrap().1.trim().to_string();
        (ct, serde_json::from_str(body).unwrap())
    };
    let (ct, list) = meta("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1", "/api/v1/namespaces/default/configmaps");
    assert_eq!(ct, "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io");
    assert_eq!(list["kind"], "PartialObjectMetadataList");
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["kind"] == "PartialObjectMetadata" && i.get("data").is_none() && !i["metadata"]["resourceVersion"].as_str().unwrap().is_empty()));

    let (ct, d) = meta("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json", "/apis");
    assert_eq!(ct, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
    assert_eq!(d["kind"], "APIGroupDiscoveryList");
    assert_eq!(d["items"][0]["metadata"]["name"], "apiregistration.k8s.io", "groups by priority, as upstream");
    let (ct, d) = meta("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList", "/api");
    assert!(ct.contains("v=v2beta1"));
    assert!(d["items"][0]["versions"][0]["resources"].as_array().unwrap().iter().any(|r| r["resource"] == "pods" && r["scope"] == "Namespaced"));
    let (ct, v) = meta("application/json", "/api");
    assert_eq!(ct, "application/json");
    assert_eq!(v["serverAddressByClientCIDRs"][0]["serverAddress"], format!("127.0.0.1:{}", s.port));

    // --sort-by asks for Tables with the whole object embedded (includeObject=Object).
    s.k(&["create", "configmap", "zz"]);
    s.k(&["create", "configmap", "aa", "--from-literal=a=b"]);
    let (_, rows) = table(&s.k(&["get", "cm", "--sort-by=.metadata.name"]));
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["aa", "from-yaml", "kube-root-ca.crt", "zz"]);
    let (code, _) = s.curl("GET", "/api/v1/namespaces/default/configmaps?includeObject=Everything", None, None);
    assert_eq!(code, 200, "includeObject only matters for Tables");
}

#[test]
fn namespace_deletion_removes_contents_then_the_namespace() {
    let s = Server::start();
    s.k(&["create", "namespace", "doomed"]);
    s.k(&["create", "configmap", "c", "-n", "doomed"]);
    s.k(&["create", "deployment", "d", "--image=nginx", "-n", "doomed"]);
    // Creation is refused while it terminates; kubectl delete waits until it is gone.
    let out = s.kubectl(&["delete", "namespace", "doomed", "--wait=false"]);
    assert!(out.status.success());
    let (code, body) = s.curl(
        "POST",
        "/api/v1/namespaces/doomed/configmaps",
        Some("application/json"),
        Some(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"late"}}"#),
    );
    assert!(code == 403 || code == 404, "{code} {body}");
    if code == 403 {
        assert!(body.contains("because it is being terminated"), "{body}");
    }
    assert!(eventually(Duration::from_secs(20), || s.curl("GET", "/api/v1/namespaces/doomed", None, None).0 == 404));
    assert_eq!(s.get_json("/api/v1/namespaces/doomed/configmaps").1["items"].as_array().unwrap().len(), 0);
    assert_eq!(s.get_json("/apis/apps/v1/namespaces/doomed/deployments").1["items"].as_array().unwrap().len(), 0);
    // Deleting a namespace through kubectl waits and returns.
    s.k(&["create", "namespace", "again"]);
    assert_eq!(s.k(&["delete", "namespace", "again"]).trim(), "namespace \"again\" deleted");
}

#[test]
fn controllers_keep_defaults_and_the_kubernetes_service_endpoints() {
    let s = Server::start();
    s.k(&["create", "namespace", "team"]);
    assert!(eventually(Duration::from_secs(10), || s.curl("GET", "/api/v1/namespaces/team/serviceaccounts/default", None, None).0 == 200));
    s.k(&["delete", "sa", "default", "-n", "team"]);
    s.k(&["delete", "cm", "kube-root-ca.crt", "-n", "team"]);
    assert!(
        eventually(Duration::from_secs(10), || s.curl("GET", "/api/v1/namespaces/team/serviceaccounts/default", None, None).0 == 200),
        "default SA recreated"
    );
    assert!(
        eventually(Duration::from_secs(10), || s.curl("GET", "/api/v1/namespaces/team/configmaps/kube-root-ca.crt", None, None).0 == 200),
        "kube-root-ca.crt recreated"
    );
    let ca = s.get_json("/api/v1/namespaces/team/configmaps/kube-root-ca.crt").1["data"]["ca.crt"].as_str().unwrap().to_string();
    assert_eq!(ca, std::fs::read_to_string(s.data.join("ca.crt")).unwrap());

    let ep = s.get_json("/api/v1/namespaces/default/endpoints/kubernetes").1;
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "127.0.0.1");
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], s.port);
    let slice = s.get_json("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes").1;
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["metadata"]["labels"]["kubernetes.io/service-name"], "kubernetes");
    let svc = s.get_json("/api/v1/namespaces/default/services/kubernetes").1;
    assert_eq!(svc["spec"]["clusterIP"], "127.96.0.1");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], s.port);
    assert_eq!(svc["metadata"]["labels"]["component"], "apiserver");
}

#[test]
fn both_event_apis_share_one_storage() {
    let s = Server::start();
    let ev = br#"{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"pulled"},"eventTime":"2026-11-29T10:00:00.000000Z",
        "regarding":{"kind":"Pod","name":"web","namespace":"default"},"note":"Pulled image","reason":"Pulled","type":"Normal",
        "reportingController":"kubelet","reportingInstance":"node-1","action":"Pull"}"#;
    let (code, body) = s.curl("POST", "/apis/events.k8s.io/v1/namespaces/default/events", Some("application/json"), Some(ev));
    assert_eq!(code, 201, "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["apiVersion"], "events.k8s.io/v1");
    assert_eq!(created["note"], "Pulled image");

    // Read through core/v1: the same object, in core's field names.
    let core = s.get_json("/api/v1/namespaces/default/events/pulled").1;
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["message"], "Pulled image");
    assert_eq!(core["involvedObject"]["name"], "web");
    assert_eq!(core["reportingComponent"], "kubelet");
    assert_eq!(core["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"]);
    // Field selectors in each API's own names.
    let by_core = s.get_json("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dweb").1;
    assert_eq!(by_core["items"].as_array().unwrap().len(), 1);
    let by_v1 = s.get_json("/apis/events.k8s.io/v1/namespaces/default/events?fieldSelector=regarding.name%3Dweb").1;
    assert_eq!(by_v1["items"][0]["regarding"]["kind"], "Pod");
    // A write through core/v1 shows through events.k8s.io/v1, and kubectl lists it.
    let (code, _) = s.curl(
        "PATCH",
        "/api/v1/namespaces/default/events/pulled",
        Some("application/merge-patch+json"),
        Some(br#"{"message":"Pulled image again","count":2}"#),
    );
    assert_eq!(code, 200);
    let v1 = s.get_json("/apis/events.k8s.io/v1/namespaces/default/events/pulled").1;
    assert_eq!(v1["note"], "Pulled image again");
    assert_eq!(v1["deprecatedCount"], 2);
    let (_, rows) = table(&s.k(&["get", "events"]));
    assert!(rows.iter().any(|r| r.iter().any(|c| c == "pod/web")), "{rows:?}");
}

#[test]
fn explain_prints_docs_from_the_served_openapi() {
    let s = Server::start();
    for bin in ["kubectl", "kubectl.1.27"] {
        let out = s.kubectl_bin(bin, &["explain", "pod.spec.containers"]);
        assert!(out.status.success(), "{bin}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("FIELD: containers <[]Container>") || text.contains("FIELD:    containers <[]Object>") || text.contains("containers <[]"),
            "{bin}: {text}"
        );
        assert!(text.contains("List of containers belonging to the pod."), "{bin}: {text}");
        assert!(text.contains("imagePullPolicy"), "{bin}: {text}");
    }
    let text = s.k(&["explain", "deployment.spec.strategy", "--recursive"]);
    assert!(text.contains("rollingUpdate\t<RollingUpdateDeployment>") && text.contains("maxSurge\t<IntOrString>"), "{text}");
}

#[test]
fn apply_of_a_changed_manifest_keeps_list_items_added_by_others() {
    let s = Server::start();
    let manifest = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: app\n        image: {image}\n        env:\n        - {{name: MODE, value: prod}}\n"
        )
    };
    let out = s.k_stdin(&["apply", "-f", "-"], &manifest("nginx:1.26"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Another client adds an env var and a second container.
    s.k(&["set", "env", "deployment/web", "-c", "app", "EXTRA=1"]);
    let (code, body) = s.curl(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/web",
        Some("application/strategic-merge-patch+json"),
        Some(br#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox"}]}}}}"#),
    );
    assert_eq!(code, 200, "{body}");
    // Applying the changed manifest updates the image and keeps what others added.
    let out = s.k_stdin(&["apply", "-f", "-"], &manifest("nginx:1.27"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "deployment.apps/web configured", "{}", String::from_utf8_lossy(&out.stderr));
    let d: Value = serde_json::from_str(&s.k(&["get", "deploy", "web", "-o", "json"])).unwrap();
    let cs = d["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    let app = cs.iter().find(|c| c["name"] == "app").unwrap();
    assert_eq!(app["image"], "nginx:1.27");
    let env: Vec<&str> = app["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(env, ["MODE", "EXTRA"]);
    assert!(cs.iter().any(|c| c["name"] == "sidecar"), "the other client's container stays");
    assert_eq!(d["metadata"]["generation"], 4);
}

/// Later pages of a paged list read the first page's snapshot, as etcd-backed
/// kube-apiserver does, across a restart too.
#[test]
fn paged_lists_are_one_snapshot() {
    let mut s = Server::start();
    for i in 0..5 {
        s.k(&["create", "configmap", &format!("cm-{i}"), "--from-literal=v=old"]);
    }
    let names = |v: &Value| v["items"].as_array().unwrap().iter().map(|o| o["metadata"]["name"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let (code, first) = s.get_json("/api/v1/namespaces/default/configmaps?limit=2");
    assert_eq!(code, 200, "{first}");
    assert_eq!(names(&first), ["cm-0", "cm-1"]);
    let rv = first["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    assert_eq!(first["metadata"]["remainingItemCount"], 4); // cm-2..4 and kube-root-ca.crt

    // Changes after the first page: none of them may show in the later pages.
    s.k(&["patch", "configmap", "cm-2", "-p", r#"{"data":{"v":"new"}}"#]);
    s.k(&["delete", "configmap", "cm-3"]);
    s.k(&["create", "configmap", "cm-3a"]);
    // The snapshot is rebuilt from the log after a crash.
    s.kill9();
    s.restart();

    let (code, second) = s.get_json(&format!("/api/v1/namespaces/default/configmaps?limit=2&continue={token}"));
    assert_eq!(code, 200, "{second}");
    assert_eq!(names(&second), ["cm-2", "cm-3"]);
    assert_eq!(second["items"][0]["data"]["v"], "old");
    assert_eq!(second["metadata"]["resourceVersion"].as_str().unwrap(), rv);
    let token = second["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, third) = s.get_json(&format!("/api/v1/namespaces/default/configmaps?limit=2&continue={token}"));
    assert_eq!(names(&third), ["cm-4", "kube-root-ca.crt"]);
    assert!(third["metadata"].get("continue").is_none(), "{third}");

    // resourceVersionMatch=Exact reads the same snapshot in one go.
    let (code, exact) = s.get_json(&format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv}&resourceVersionMatch=Exact"));
    assert_eq!(code, 200, "{exact}");
    assert_eq!(names(&exact), ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4", "kube-root-ca.crt"]);
    assert_eq!(exact["metadata"]["resourceVersion"].as_str().unwrap(), rv);
    assert_eq!(exact["items"][2]["data"]["v"], "old");
    let (code, _) = s.get_json("/api/v1/namespaces/default/configmaps?resourceVersion=999999&resourceVersionMatch=Exact");
    assert_eq!(code, 504);

    // A fresh list sees the changes.
    let (_, now) = s.get_json("/api/v1/namespaces/default/configmaps");
    assert_eq!(names(&now), ["cm-0", "cm-1", "cm-2", "cm-3a", "cm-4", "kube-root-ca.crt"]);
    // kubectl's own paging (--chunk-size) walks the same way.
    let out = s.k(&["get", "configmaps", "--chunk-size=2", "-o", "name"]);
    assert_eq!(out.lines().count(), 6, "{out}");
}

/// Generations as kube-apiserver 1.33 counts them: a pod starts at 1 whatever it was sent
/// with and moves on spec changes (not on status writes or its binding); an object that
/// counts generations moves once more when it is first marked for deletion, gracefully
/// (a pod on a node) or held by a finalizer.
#[test]
fn generations_move_on_spec_changes_and_on_deletion() {
    let s = Server::start_with(&["--node=false"]);
    let generation = |path: &str| s.get_json(path).1["metadata"]["generation"].as_i64();
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","generation":7},"spec":{"containers":[{"name":"c","image":"nginx:1"}]}}"#;
    s.k_stdin(&["create", "-f", "-"], pod);
    let p = "/api/v1/namespaces/default/pods/p";
    assert_eq!(generation(p), Some(1));
    s.k(&["set", "image", "pod/p", "c=nginx:2"]);
    assert_eq!(generation(p), Some(2));
    let (code, out) = s.curl("PATCH", &format!("{p}/status"), Some("application/merge-patch+json"), Some(br#"{"status":{"message":"hello"}}"#));
    assert_eq!(code, 200, "{out}");
    assert_eq!(generation(p), Some(2), "a status write is not a spec change");
    let binding = br#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"p"},"target":{"kind":"Node","name":"n1"}}"#;
    let (code, out) = s.curl("POST", &format!("{p}/binding"), Some("application/json"), Some(binding));
    assert_eq!(code, 201, "{out}");
    let (_, bound) = s.get_json(p);
    assert_eq!((bound["spec"]["nodeName"].as_str(), bound["metadata"]["generation"].as_i64()), (Some("n1"), Some(2)));
    // On a node, the pod is deleted gracefully: marked, one generation on.
    s.k(&["delete", "pod", "p", "--wait=false"]);
    let (_, deleting) = s.get_json(p);
    assert!(deleting["metadata"]["deletionTimestamp"].is_string(), "{deleting}");
    assert_eq!(deleting["metadata"]["generation"], 3);
    // A shorter grace period moves nothing.
    s.k(&["delete", "pod", "p", "--wait=false", "--grace-period=5"]);
    assert_eq!(generation(p), Some(3));

    let held = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"d","finalizers":["test.nanokube.io/hold"]},"spec":{"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"nginx"}]}}}}"#;
    s.k_stdin(&["create", "-f", "-"], held);
    let d = "/apis/apps/v1/namespaces/default/deployments/d";
    assert_eq!(generation(d), Some(1));
    s.k(&["delete", "deployment", "d", "--wait=false"]);
    assert_eq!(generation(d), Some(2), "marked for deletion: one generation on");
    s.k(&["delete", "deployment", "d", "--wait=false"]);
    assert_eq!(generation(d), Some(2), "only the first mark counts");
}
