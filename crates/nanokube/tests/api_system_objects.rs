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

/// kube-apiserver's API Priority and Fairness bootstrap configuration: the 13
/// FlowSchemas and 8 priority levels as `kubectl get` shows them upstream, each
/// FlowSchema's `Dangling` condition, and the producer's rules (missing ones recreated,
/// drifted suggested ones put back unless annotated `apf.kubernetes.io/autoupdate-spec:
/// "false"`, mandatory ones always put back, auto-updated strays deleted).
#[test]
fn the_flow_control_configuration_is_upstreams_and_kept() {
    let s = Server::start();
    // `kubectl get` rows without their AGE column.
    let rows = |what: &str, age: usize| -> Vec<String> {
        s.k(&["get", what, "--no-headers"])
            .lines()
            .map(|l| {
                let mut cols: Vec<&str> = l.split_whitespace().collect();
                cols.remove(age);
                cols.join(" ")
            })
            .collect()
    };
    // Rows in matching order (precedence, then name), the ages left out; MissingPL once
    // the consumer has looked.
    let want_schemas = [
        "exempt exempt 1 <none> False",
        "probes exempt 2 <none> False",
        "system-leader-election leader-election 100 ByUser False",
        "endpoint-controller workload-high 150 ByUser False",
        "workload-leader-election leader-election 200 ByUser False",
        "system-node-high node-high 400 ByUser False",
        "system-nodes system 500 ByUser False",
        "kube-controller-manager workload-high 800 ByNamespace False",
        "kube-scheduler workload-high 800 ByNamespace False",
        "kube-system-service-accounts workload-high 900 ByNamespace False",
        "service-accounts workload-low 9000 ByUser False",
        "global-default global-default 9900 ByUser False",
        "catch-all catch-all 10000 ByUser False",
    ];
    let mut last = Vec::new();
    let shown = eventually(Duration::from_secs(10), || {
        last = rows("flowschemas", 4);
        last == want_schemas
    });
    assert!(shown, "{last:#?}");
    let header = s.k(&["get", "flowschemas"]);
    assert!(
        header.starts_with("NAME")
            && header.lines().next().unwrap().split_whitespace().eq(["NAME", "PRIORITYLEVEL", "MATCHINGPRECEDENCE", "DISTINGUISHERMETHOD", "AGE", "MISSINGPL"]),
        "{header}"
    );
    let levels = rows("prioritylevelconfigurations", 6);
    assert_eq!(
        levels,
        [
            "catch-all Limited 5 <none> <none> <none>",
            "exempt Exempt <none> <none> <none> <none>",
            "global-default Limited 20 128 6 50",
            "leader-election Limited 10 16 4 50",
            "node-high Limited 40 64 6 50",
            "system Limited 30 64 6 50",
            "workload-high Limited 40 128 6 50",
            "workload-low Limited 100 128 6 50",
        ]
    );
    let fs = |name: &str| s.get_json(&format!("/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas/{name}")).1;
    let pl = |name: &str| s.get_json(&format!("/apis/flowcontrol.apiserver.k8s.io/v1/prioritylevelconfigurations/{name}")).1;
    let probes = fs("probes");
    assert_eq!(probes["metadata"]["annotations"]["apf.kubernetes.io/autoupdate-spec"], "true");
    assert_eq!(
        probes["spec"]["rules"],
        serde_json::json!([{
            "subjects": [{"kind": "Group", "group": {"name": "system:unauthenticated"}}, {"kind": "Group", "group": {"name": "system:authenticated"}}],
            "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]}],
        }])
    );
    let dangling = &probes["status"]["conditions"][0];
    assert_eq!(
        (dangling["type"].as_str(), dangling["status"].as_str(), dangling["reason"].as_str(), dangling["message"].as_str()),
        (
            Some("Dangling"),
            Some("False"),
            Some("Found"),
            Some(r#"This FlowSchema references the PriorityLevelConfiguration object named "exempt" and it exists"#)
        )
    );
    assert_eq!(pl("workload-low")["spec"]["limited"]["lendablePercent"], 90);

    // A deleted suggested FlowSchema comes back.
    let before = fs("global-default")["metadata"]["uid"].clone();
    s.k(&["delete", "flowschema", "global-default"]);
    assert!(eventually(Duration::from_secs(10), || fs("global-default")["metadata"]["uid"].as_str().is_some_and(|u| before != u)));

    // An edited suggested level is put back, unless it opts out.
    let shares = |name: &str| pl(name)["spec"]["limited"]["nominalConcurrencyShares"].clone();
    s.k(&["patch", "prioritylevelconfiguration", "workload-low", "--type=merge", "-p", r#"{"spec":{"limited":{"nominalConcurrencyShares":7}}}"#]);
    assert!(eventually(Duration::from_secs(10), || shares("workload-low") == 100), "not put back: {}", shares("workload-low"));
    s.k(&["annotate", "--overwrite", "prioritylevelconfiguration", "workload-low", "apf.kubernetes.io/autoupdate-spec=false"]);
    s.k(&["patch", "prioritylevelconfiguration", "workload-low", "--type=merge", "-p", r#"{"spec":{"limited":{"nominalConcurrencyShares":7}}}"#]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(shares("workload-low"), 7, "an opted-out level was changed");
    // A mandatory one is put back whatever it says.
    s.k(&["annotate", "--overwrite", "prioritylevelconfiguration", "catch-all", "apf.kubernetes.io/autoupdate-spec=false"]);
    s.k(&["patch", "prioritylevelconfiguration", "catch-all", "--type=merge", "-p", r#"{"spec":{"limited":{"nominalConcurrencyShares":1}}}"#]);
    assert!(eventually(Duration::from_secs(10), || shares("catch-all") == 5
        && pl("catch-all")["metadata"]["annotations"]["apf.kubernetes.io/autoupdate-spec"] == "true"));

    // A FlowSchema naming a level that does not exist is Dangling until it does.
    let mine = r#"{"apiVersion":"flowcontrol.apiserver.k8s.io/v1","kind":"FlowSchema","metadata":{"name":"mine"},
        "spec":{"priorityLevelConfiguration":{"name":"nope"},"matchingPrecedence":5000,
        "rules":[{"subjects":[{"kind":"User","user":{"name":"alice"}}],"nonResourceRules":[{"verbs":["get"],"nonResourceURLs":["/version"]}]}]}}"#;
    let out = s.k_stdin(&["create", "-f", "-"], mine);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let condition = |name: &str| fs(name)["status"]["conditions"][0].clone();
    assert!(eventually(Duration::from_secs(10), || condition("mine")["status"] == "True"), "{}", condition("mine"));
    assert_eq!(condition("mine")["reason"], "NotFound");
    assert_eq!(condition("mine")["message"], r#"This FlowSchema references the PriorityLevelConfiguration object named "nope" but there is no such object"#);
    assert!(s.k(&["get", "flowschema", "mine", "--no-headers"]).trim_end().ends_with("True"));
    let nope = r#"{"apiVersion":"flowcontrol.apiserver.k8s.io/v1","kind":"PriorityLevelConfiguration","metadata":{"name":"nope"},
        "spec":{"type":"Limited","limited":{"limitResponse":{"type":"Reject"}}}}"#;
    let out = s.k_stdin(&["create", "-f", "-"], nope);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(10), || condition("mine")["reason"] == "Found"), "{}", condition("mine"));
    // A user's own objects stay; an auto-updated one that is not part of the set goes.
    let stray = mine.replace(r#""name":"mine"}"#, r#""name":"stray","annotations":{"apf.kubernetes.io/autoupdate-spec":"true"}}"#);
    let out = s.k_stdin(&["create", "-f", "-"], &stray);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(10), || s.get_json("/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas/stray").0 == 404));
    assert_eq!(s.get_json("/apis/flowcontrol.apiserver.k8s.io/v1/flowschemas/mine").0, 200);
    assert_eq!(s.get_json("/apis/flowcontrol.apiserver.k8s.io/v1/prioritylevelconfigurations/nope").0, 200);
}
