//! Taint-based eviction and the pod garbage collector, on a node made by hand (no
//! kubelet): a `NoExecute` taint evicts the pods that do not tolerate it at once, those
//! that tolerate it for a while after that while, and never those that tolerate it;
//! once the node is gone its pods are removed.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Server};
use serde_json::Value;

fn pod(name: &str, tolerations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: far\n  tolerations: {tolerations}\n  containers: [{{name: main, image: nothing:1}}]\n"
    )
}

fn get(s: &Server, name: &str) -> Option<Value> {
    let out = s.kubectl(&["get", "pod", name, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn deleting(s: &Server, name: &str) -> bool {
    get(s, name).is_none_or(|p| p["metadata"].get("deletionTimestamp").is_some())
}

#[test]
fn no_execute_taints_evict_and_pods_of_gone_nodes_are_collected() {
    let s = Server::start_with(&["--node=false"]);
    let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"far"}}"#;
    assert!(s.k_stdin(&["create", "-f", "-"], node).status.success());
    for (name, tolerations) in [
        ("plain", "[]"),
        ("patient", "[{key: gpu, operator: Exists, effect: NoExecute, tolerationSeconds: 3}]"),
        ("forever", "[{key: gpu, operator: Exists, effect: NoExecute}]"),
    ] {
        let out = s.k_stdin(&["create", "-f", "-"], &pod(name, tolerations));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let tainted = Instant::now();
    s.k(&["taint", "node", "far", "gpu=yes:NoExecute"]);
    assert!(eventually(Duration::from_secs(10), || deleting(&s, "plain")), "an untolerating pod stayed");
    let plain = get(&s, "plain").unwrap();
    let condition = plain["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "DisruptionTarget").cloned().unwrap();
    assert_eq!((condition["reason"].as_str(), condition["status"].as_str()), (Some("DeletionByTaintManager"), Some("True")));
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=plain,reason=TaintManagerEviction", "-o", "jsonpath={.items[*].message}"]);
    assert_eq!(events, "Marking for deletion Pod default/plain");
    assert!(!deleting(&s, "patient"), "evicted before its tolerationSeconds");
    assert!(eventually(Duration::from_secs(15), || deleting(&s, "patient")));
    assert!(tainted.elapsed() >= Duration::from_secs(3), "evicted after {:?}", tainted.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!deleting(&s, "forever"), "a pod tolerating the taint for ever was evicted");

    // The node goes: after the 40 s quarantine its pods (terminating or not) are removed.
    s.k(&["delete", "node", "far"]);
    assert!(eventually(Duration::from_secs(120), || get(&s, "forever").is_none() && get(&s, "plain").is_none()), "pods of a gone node stayed");
}
