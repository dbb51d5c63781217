//! The horizontal pod autoscaler on real figures: pods that burn their CPU limit are
//! scaled out to `maxReplicas` by an HPA made with `kubectl autoscale`, with upstream's
//! conditions and event; a target whose pods request no CPU cannot be measured, and says
//! so as upstream does.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image};

fn conditions(s: &common::Server, hpa: &str) -> String {
    s.k(&["get", "hpa", hpa, "-o", "jsonpath={range .status.conditions[*]}{.type}={.status}:{.reason}:{.message};{end}"])
}

/// Wait up to `secs` for the HPA's conditions to contain `text`.
fn await_condition(s: &common::Server, hpa: &str, text: &str, secs: u64) {
    assert!(eventually(Duration::from_secs(secs), || conditions(s, hpa).contains(text)), "{}", conditions(s, hpa));
}

#[test]
fn an_hpa_scales_busy_pods_out_and_explains_what_it_cannot_measure() {
    let s = server_with_image();
    let burn = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      containers:
      - name: main
        image: testbox:1.0
        command: [sh, -c, "trap 'exit 0' TERM; while :; do :; done"]
        resources: {requests: {cpu: 100m}, limits: {cpu: 200m}}
"#;
    assert!(s.k_stdin(&["apply", "-f", "-"], burn).status.success());
    s.k(&["create", "deployment", "idle", "--image=testbox:1.0", "--", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]);
    assert!(s.kubectl(&["rollout", "status", "deployment/burn", "--timeout=90s"]).status.success());
    s.k(&["autoscale", "deployment", "burn", "--cpu-percent=50", "--min=1", "--max=3"]);
    s.k(&["autoscale", "deployment", "idle", "--cpu-percent=50", "--min=1", "--max=3"]);

    // Twice the request in use, against a 50 % target: out to the maximum.
    let replicas = || s.k(&["get", "deployment", "burn", "-o", "jsonpath={.spec.replicas}"]);
    assert!(eventually(Duration::from_secs(120), || replicas() == "3"), "not scaled: {}", s.k(&["get", "hpa", "burn", "-o", "yaml"]));
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=burn,reason=SuccessfulRescale", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("reason: cpu resource utilization (percentage of request) above target"), "{events}");
    assert!(events.starts_with("New size: "), "{events}");
    let metric = s.k(&["get", "hpa", "burn", "-o", "jsonpath={.status.currentMetrics[0].resource.current.averageUtilization}"]);
    assert!(metric.parse::<i64>().is_ok_and(|u| u > 50), "{metric}");
    let c = conditions(&s, "burn");
    assert!(c.contains("AbleToScale=True") && c.contains("ScalingActive=True:ValidMetricFound:the HPA was able to successfully calculate a replica count from cpu resource utilization (percentage of request)"), "{c}");
    await_condition(&s, "burn", "ScalingLimited=True:TooManyReplicas", 60);
    let table = s.k(&["get", "hpa", "burn"]);
    assert!(table.contains("cpu: ") && table.contains("%/50%"), "{table}");
    s.k(&["delete", "deployment", "burn"]);

    // No CPU request: nothing to take a percentage of.
    await_condition(&s, "idle", "ScalingActive=False:FailedGetResourceMetric", 60);
    let c = conditions(&s, "idle");
    assert!(
        c.contains("the HPA was unable to compute the replica count: failed to get cpu utilization: missing request for cpu in container testbox of Pod idle-"),
        "{c}"
    );
    assert_eq!(s.k(&["get", "deployment", "idle", "-o", "jsonpath={.spec.replicas}"]), "1");
}

/// Where no node reports figures (a control plane only), an HPA says it has no metrics,
/// with upstream's reason, and leaves the replicas alone.
#[test]
fn without_figures_an_hpa_reports_it_cannot_get_metrics() {
    let s = common::Server::start_with(&["--node=false"]);
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: main, image: nothing:1, resources: {requests: {cpu: 100m}}}]\n";
    assert!(s.k_stdin(&["apply", "-f", "-"], deployment).status.success());
    s.k(&["autoscale", "deployment", "web", "--cpu-percent=50", "--min=1", "--max=3"]);
    await_condition(
        &s,
        "web",
        "ScalingActive=False:FailedGetResourceMetric:the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API",
        40,
    );
    assert_eq!(s.k(&["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"]), "2");
    let table = s.k(&["get", "hpa", "web"]);
    assert!(table.contains("cpu: <unknown>/50%"), "{table}");
}

/// `Pods`, `Object` and `External` metrics come from an adapter behind APIServices (a
/// Python process, `tests/support/metrics_adapter.py`, trusting only the front proxy and
/// answering only the HPA's service account): without one the HPA says the custom
/// metrics API cannot be reached; with one it scales on the largest proposal.
#[test]
fn an_hpa_scales_on_custom_and_external_metrics_from_an_adapter() {
    let s = server_with_image();
    s.k(&["create", "deployment", "web", "--image=testbox:1.0", "--", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]);
    assert!(s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]).status.success());
    let hpa = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 5
  metrics:
  - type: Pods
    pods: {metric: {name: requests_per_second}, target: {type: AverageValue, averageValue: "20"}}
  - type: Object
    object:
      describedObject: {apiVersion: v1, kind: Service, name: web}
      metric: {name: hits, selector: {matchLabels: {verb: get}}}
      target: {type: Value, value: "80"}
  - type: External
    external:
      metric: {name: queue_depth, selector: {matchLabels: {queue: jobs}}}
      target: {type: AverageValue, averageValue: "15"}
"#;
    assert!(s.k_stdin(&["apply", "-f", "-"], hpa).status.success());
    // No adapter yet: the first metric's failure is the condition, and nothing scales.
    await_condition(
        &s,
        "web",
        "ScalingActive=False:FailedGetPodsMetric:the HPA was unable to compute the replica count: unable to get metric requests_per_second: unable to fetch metrics from custom metrics API",
        40,
    );

    // The adapter: 30 requests/s on the one pod (20 wanted: 2 pods), 80 hits on the
    // Service (as wanted: no change), a queue of 45 (15 a pod wanted: 3 pods).
    let dir = tempfile::tempdir().unwrap();
    let pod = s.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]);
    let figures = serde_json::json!({
        "pods": {"requests_per_second": {pod.as_str(): "30"}},
        "objects": {"services/web/hits": "80"},
        "external": {"queue_depth": {"selector": "queue=jobs", "values": ["20", "25"]}},
    });
    let figures_path = dir.path().join("figures.json");
    std::fs::write(&figures_path, figures.to_string()).unwrap();
    let (ca, cert, key) = common::serving_cert(&["adapter.monitoring.svc"]);
    let cm = s.get_json("/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication").1;
    let front_proxy_ca = cm["data"]["requestheader-client-ca-file"].as_str().unwrap().to_string();
    for (f, text) in [("tls.crt", &cert), ("tls.key", &key), ("front-proxy-ca.crt", &front_proxy_ca)] {
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let (child, port) = common::spawn_python_server(
        "metrics_adapter.py",
        &[
            dir.path().join("tls.crt").as_os_str(),
            dir.path().join("tls.key").as_os_str(),
            dir.path().join("front-proxy-ca.crt").as_os_str(),
            figures_path.as_os_str(),
        ],
    );
    let _adapter = common::KillOnDrop(child);
    use base64::Engine as _;
    let ca_b64 = base64::engine::general_purpose::STANDARD.encode(ca);
    let apiservice = |group: &str, version: &str| {
        format!(
            r#"{{"apiVersion":"apiregistration.k8s.io/v1","kind":"APIService","metadata":{{"name":"{version}.{group}"}},
              "spec":{{"group":"{group}","version":"{version}","service":{{"namespace":"monitoring","name":"adapter","port":443}},
                      "caBundle":"{ca_b64}","groupPriorityMinimum":100,"versionPriority":100}}}}"#
        )
    };
    let manifest = format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[
          {{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"monitoring"}}}},
          {{"apiVersion":"v1","kind":"Service","metadata":{{"name":"adapter","namespace":"monitoring"}},"spec":{{"ports":[{{"port":443,"targetPort":{port}}}]}}}},
          {{"apiVersion":"v1","kind":"Endpoints","metadata":{{"name":"adapter","namespace":"monitoring"}},"subsets":[{{"addresses":[{{"ip":"127.0.0.1"}}],"ports":[{{"port":{port}}}]}}]}},
          {}, {}]}}"#,
        apiservice("custom.metrics.k8s.io", "v1beta2"),
        apiservice("external.metrics.k8s.io", "v1beta1")
    );
    let out = s.k_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let replicas = || s.k(&["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"]);
    assert!(eventually(Duration::from_secs(90), || replicas() == "3"), "not scaled: {}{}", replicas(), s.k(&["get", "hpa", "web", "-o", "yaml"]));
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=web,reason=SuccessfulRescale", "-o", "jsonpath={.items[*].message}"]);
    assert!(
        events.contains(
            "New size: 3; reason: external metric queue_depth(&LabelSelector{MatchLabels:map[string]string{queue: jobs,},MatchExpressions:[]LabelSelectorRequirement{},}) above target"
        ),
        "{events}"
    );
    // At three replicas every proposal is at most three: it stays, and the status shows
    // each metric's figure (the queue now 15 a pod).
    let current = || {
        s.k(&[
            "get",
            "hpa",
            "web",
            "-o",
            "jsonpath={.status.currentMetrics[0].pods.current.averageValue} {.status.currentMetrics[1].object.current.value} {.status.currentMetrics[2].external.current.averageValue}",
        ])
    };
    assert!(eventually(Duration::from_secs(40), || current() == "30 80 15"), "{} {}", current(), s.k(&["get", "hpa", "web", "-o", "yaml"]));
    assert_eq!(replicas(), "3");
    assert!(conditions(&s, "web").contains("ScalingActive=True:ValidMetricFound"), "{}", conditions(&s, "web"));
    // Each metric is named in the status as in the spec, its selector included.
    assert_eq!(
        s.k(&["get", "hpa", "web", "-o", "jsonpath={.status.currentMetrics[1].object.metric}"]),
        r#"{"name":"hits","selector":{"matchLabels":{"verb":"get"}}}"#
    );
    // What the adapter was asked: the target's pod selector, the Service, the metric's selector.
    let asked = std::fs::read_to_string(dir.path().join("figures.json.log")).unwrap();
    for want in [
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/requests_per_second?labelSelector=app%3Dweb",
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/services/web/hits?metricLabelSelector=verb%3Dget",
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/queue_depth?labelSelector=queue%3Djobs",
    ] {
        assert!(asked.contains(want), "{want} not in {asked}");
    }

    // A `behavior`: scale up by one pod per 5 minutes, never down. The API completes it
    // with upstream's defaults.
    let behavior = r#"{"spec":{"behavior":{"scaleUp":{"policies":[{"type":"Pods","value":1,"periodSeconds":300}]},
      "scaleDown":{"stabilizationWindowSeconds":0,"selectPolicy":"Disabled"}}}}"#;
    assert!(s.kubectl(&["patch", "hpa", "web", "--type=merge", "-p", behavior]).status.success());
    let stored = s.get_json("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web").1;
    assert_eq!(
        stored["spec"]["behavior"],
        serde_json::json!({
            "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
            "scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": "Disabled", "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}
        })
    );
    // A queue of 150 wants 10 pods (5 at most): one more, then no more within the period.
    let mut figures = figures;
    figures["external"]["queue_depth"]["values"] = serde_json::json!(["150"]);
    std::fs::write(&figures_path, figures.to_string()).unwrap();
    assert!(eventually(Duration::from_secs(40), || replicas() == "4"), "{}", s.k(&["get", "hpa", "web", "-o", "yaml"]));
    await_condition(&s, "web", "ScalingLimited=True:ScaleUpLimit:the desired replica count is increasing faster than the maximum scale rate", 40);
    assert_eq!(replicas(), "4");
    // A queue of 15 and 20 hits want one pod (the pods metric two): scale-down is
    // disabled.
    figures["external"]["queue_depth"]["values"] = serde_json::json!(["15"]);
    figures["objects"]["services/web/hits"] = serde_json::json!("20");
    std::fs::write(&figures_path, figures.to_string()).unwrap();
    await_condition(&s, "web", "ScalingLimited=True:ScaleDownLimit:the desired replica count is decreasing faster than the maximum scale rate", 40);
    assert_eq!(replicas(), "4");
}
