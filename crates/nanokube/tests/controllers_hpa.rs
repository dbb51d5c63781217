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
    assert!(eventually(Duration::from_secs(60), || conditions(&s, "burn").contains("ScalingLimited=True:TooManyReplicas")), "{}", conditions(&s, "burn"));
    let table = s.k(&["get", "hpa", "burn"]);
    assert!(table.contains("cpu: ") && table.contains("%/50%"), "{table}");
    s.k(&["delete", "deployment", "burn"]);

    // No CPU request: nothing to take a percentage of.
    assert!(
        eventually(Duration::from_secs(60), || conditions(&s, "idle").contains("ScalingActive=False:FailedGetResourceMetric")),
        "{}",
        conditions(&s, "idle")
    );
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
    assert!(
        eventually(Duration::from_secs(40), || {
            conditions(&s, "web").contains(
            "ScalingActive=False:FailedGetResourceMetric:the HPA was unable to compute the replica count: failed to get cpu utilization: unable to get metrics for resource cpu: no metrics returned from resource metrics API"
        )
        }),
        "{}",
        conditions(&s, "web")
    );
    assert_eq!(s.k(&["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"]), "2");
    let table = s.k(&["get", "hpa", "web"]);
    assert!(table.contains("cpu: <unknown>/50%"), "{table}");
}
