//! PodDisruptionBudgets and the eviction subresource with running pods: the budget's
//! status follows the pods, an eviction spends a disruption, the next one is refused with
//! upstream's 429, `kubectl drain` stops at the budget, and a percentage budget counts
//! the Deployment's replicas.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, Server};
use serde_json::Value;

const SCRIPT: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

fn status(s: &Server, pdb: &str) -> Value {
    serde_json::from_str(&s.k(&["get", "pdb", pdb, "-o", "jsonpath={.status}"])).unwrap_or(Value::Null)
}

fn evict(s: &Server, pod: &str) -> (u16, Value) {
    let body = format!(r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"default"}}}}"#);
    let (code, out) = s.curl("POST", &format!("/api/v1/namespaces/default/pods/{pod}/eviction"), Some("application/json"), Some(body.as_bytes()));
    (code, serde_json::from_str(&out).unwrap_or(Value::Null))
}

#[test]
fn budgets_allow_evictions_one_disruption_at_a_time() {
    let s = server_with_image();
    s.k(&["create", "deployment", "web", "--image=testbox:1.0", "--replicas=3", "--", "sh", "-c", SCRIPT]);
    assert!(s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]).status.success());
    s.k(&["create", "pdb", "web", "--selector=app=web", "--min-available=2"]);
    let mut st = Value::Null;
    assert!(eventually(Duration::from_secs(20), || {
        st = status(&s, "web");
        st["disruptionsAllowed"] == 1
    }));
    assert_eq!((st["currentHealthy"].as_i64(), st["desiredHealthy"].as_i64(), st["expectedPods"].as_i64()), (Some(3), Some(2), Some(3)), "{st}");
    assert_eq!(st["conditions"][0]["reason"], "SufficientPods");
    let table = s.k(&["get", "pdb", "web"]);
    assert!(table.contains("ALLOWED DISRUPTIONS") && table.lines().nth(1).unwrap().split_whitespace().nth(3) == Some("1"), "{table}");

    let pods: Vec<String> = s.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]).split_whitespace().map(String::from).collect();
    let (code, body) = evict(&s, &pods[0]);
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["status"], "Success");
    // The disruption is spent: the next eviction waits for the replacement.
    let (code, body) = evict(&s, &pods[1]);
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(body["message"], "Cannot evict pod as it would violate the pod's disruption budget.");
    let cause = body["details"]["causes"][0]["message"].as_str().unwrap();
    assert!(cause.starts_with("The disruption budget web needs 2 healthy pods and has"), "{cause}");
    assert_eq!(body["details"]["causes"][0]["reason"], "DisruptionBudget");
    assert!(s.kubectl(&["get", "pod", &pods[1]]).status.success(), "a refused eviction deleted nothing");
    // The Deployment replaces the evicted pod; the budget allows one again.
    assert!(eventually(Duration::from_secs(60), || status(&s, "web")["disruptionsAllowed"] == 1 && status(&s, "web")["currentHealthy"] == 3));

    // kubectl drain evicts through the budget: on a cordoned single node the evicted
    // pods cannot come back, so it stops at the budget.
    let node = s.k(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let out = s.kubectl(&["drain", &node, "--ignore-daemonsets", "--timeout=8s"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("Cannot evict pod as it would violate the pod's disruption budget"), "{text}");
    assert!(text.contains("evicted"), "one pod went: {text}");
    assert!(s.k(&["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"]) == "true");
    s.k(&["uncordon", &node]);
    assert!(eventually(Duration::from_secs(60), || status(&s, "web")["currentHealthy"] == 3));

    // A percentage of the Deployment's replicas: 3 - ceil(50% of 3) = 1 must stay.
    s.k(&["create", "pdb", "half", "--selector=app=web", "--max-unavailable=50%"]);
    let mut half = Value::Null;
    assert!(eventually(Duration::from_secs(20), || {
        half = status(&s, "half");
        half["expectedPods"] == 3
    }));
    assert_eq!(half["desiredHealthy"], 1, "{half}");
    // Two budgets for one pod: the eviction cannot choose.
    let pod = s.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[0].metadata.name}"]);
    let (code, body) = evict(&s, &pod);
    assert_eq!(code, 500, "{body}");
    assert!(body["message"].as_str().unwrap().contains("more than one PodDisruptionBudget"));
}
