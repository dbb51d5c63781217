//! kubelet's eviction manager on the node: pods past their local storage limits are
//! evicted with kubelet's messages, and a hard threshold that is met (`--eviction-hard`
//! set above what the machine has) raises the node's pressure condition and its taint,
//! refuses a BestEffort pod and evicts a running one. Real containers (busybox image,
//! runc), real kubectl.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, server_with_image_and, Server};
use serde_json::Value;

fn pod(s: &Server, name: &str) -> Value {
    s.get_json(&format!("/api/v1/namespaces/default/pods/{name}")).1
}

fn apply(s: &Server, yaml: &str) {
    let out = s.k_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Wait for the pod to be evicted; the pod then.
fn evicted(s: &Server, name: &str) -> Value {
    let mut last = Value::Null;
    let ok = eventually(Duration::from_secs(60), || {
        last = pod(s, name);
        last["status"]["reason"] == "Evicted"
    });
    assert!(ok, "{name} not evicted: {}", serde_json::to_string_pretty(&last["status"]).unwrap());
    assert_eq!(last["status"]["phase"], "Failed", "{}", last["status"]);
    last
}

fn disruption(p: &Value) -> Option<Value> {
    p["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "DisruptionTarget").cloned()
}

fn events(s: &Server, name: &str) -> Vec<(String, String)> {
    let (_, list) = s.get_json(&format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"));
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["reason"].as_str().unwrap_or("").to_string(), e["message"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn pods_past_their_local_storage_limits_are_evicted() {
    let s = server_with_image();
    apply(
        &s,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  containers:
  - name: main
    image: testbox:1.0
    command: [sh, -c, "dd if=/dev/zero of=/big bs=1M count=4 2>/dev/null; exec sleep 3600"]
    resources: {limits: {ephemeral-storage: 1Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: scratch}
spec:
  volumes: [{name: cache, emptyDir: {sizeLimit: 1Mi}}]
  containers:
  - name: main
    image: testbox:1.0
    command: [sh, -c, "dd if=/dev/zero of=/cache/big bs=1M count=3 2>/dev/null; exec sleep 3600"]
    volumeMounts: [{name: cache, mountPath: /cache}]
---
apiVersion: v1
kind: Pod
metadata: {name: pair}
spec:
  containers:
  - name: roomy
    image: testbox:1.0
    command: [sleep, "3600"]
    resources: {limits: {ephemeral-storage: 64Mi}}
  - name: tight
    image: testbox:1.0
    command: [sh, -c, "dd if=/dev/zero of=/big bs=1M count=4 2>/dev/null; exec sleep 3600"]
    resources: {limits: {ephemeral-storage: 1Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: calm}
spec:
  containers:
  - name: main
    image: testbox:1.0
    command: [sh, -c, "dd if=/dev/zero of=/small bs=1M count=1 2>/dev/null; exec sleep 3600"]
    resources: {limits: {ephemeral-storage: 64Mi}}
"#,
    );
    let hog = evicted(&s, "hog");
    let message = "Pod ephemeral local storage usage exceeds the total limit of containers 1Mi. ";
    assert_eq!(hog["status"]["message"], message);
    let d = disruption(&hog).expect("a DisruptionTarget condition");
    assert_eq!((d["status"].as_str(), d["reason"].as_str(), d["message"].as_str()), (Some("True"), Some("TerminationByKubelet"), Some(message)));
    assert!(events(&s, "hog").contains(&("Evicted".into(), message.into())), "{:?}", events(&s, "hog"));
    // Its container was stopped, and is not started again.
    assert!(eventually(Duration::from_secs(20), || pod(&s, "hog")["status"]["containerStatuses"][0]["state"].get("terminated").is_some()));

    assert_eq!(evicted(&s, "scratch")["status"]["message"], "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". ");
    // Within the pod's total (65Mi) but past one container's own.
    assert_eq!(evicted(&s, "pair")["status"]["message"], "Container tight exceeded its local ephemeral storage limit \"1Mi\". ");

    let calm = pod(&s, "calm");
    assert_eq!(calm["status"]["phase"], "Running", "{}", calm["status"]);
    assert!(calm["status"].get("reason").is_none());
    s.k(&["delete", "pod", "hog", "scratch", "pair", "calm", "--wait=true", "--grace-period=1"]);
}

#[test]
fn a_threshold_met_raises_pressure_refuses_and_evicts() {
    // Less than 1 PiB of memory available: always met on this machine.
    let s = server_with_image_and(&["--eviction-hard=memory.available<1Pi", "--eviction-pressure-transition-period=0s"]);
    let node = s.k(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let condition =
        |n: &Value| n["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "MemoryPressure").cloned()).unwrap_or(Value::Null);
    let mut last = Value::Null;
    let under = eventually(Duration::from_secs(40), || {
        last = s.get_json(&format!("/api/v1/nodes/{node}")).1;
        condition(&last)["status"] == "True"
            && last["spec"]["taints"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["key"] == "node.kubernetes.io/memory-pressure" && t["effect"] == "NoSchedule"))
    });
    assert!(under, "no memory pressure: {}", serde_json::to_string_pretty(&last).unwrap());
    assert_eq!(condition(&last)["reason"], "KubeletHasInsufficientMemory");
    assert_eq!(condition(&last)["message"], "kubelet has insufficient memory available");
    // The other conditions are untouched.
    let disk = last["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "DiskPressure").unwrap().clone();
    assert_eq!(disk["status"], "False");

    // Bound straight to the node (past the scheduler and its taint): a BestEffort pod is
    // refused at admission, a Burstable one is admitted and then evicted.
    apply(
        &s,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: besteffort}}
spec:
  nodeName: {node}
  containers: [{{name: main, image: testbox:1.0, command: [sleep, "3600"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: burstable}}
spec:
  nodeName: {node}
  containers:
  - name: main
    image: testbox:1.0
    command: [sleep, "3600"]
    resources: {{requests: {{memory: 1Mi}}}}
"#
        ),
    );
    let refused = evicted(&s, "besteffort");
    assert_eq!(refused["status"]["message"], "The node had condition: [MemoryPressure]. ");
    assert!(disruption(&refused).is_none(), "refused at admission, not disrupted");
    let gone = evicted(&s, "burstable");
    let message = gone["status"]["message"].as_str().unwrap();
    assert!(message.starts_with("The node was low on resource: memory. Threshold quantity: 1Pi, available: "), "{message}");
    assert!(disruption(&gone).is_some());

    // The scheduler keeps new pods off the tainted node.
    apply(&s, "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"waiting\"},\"spec\":{\"containers\":[{\"name\":\"main\",\"image\":\"testbox:1.0\"}]}}");
    let ok = eventually(Duration::from_secs(20), || {
        let p = pod(&s, "waiting");
        p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["type"] == "PodScheduled" && c["status"] == "False" && c["message"].as_str().is_some_and(|m| m.contains("node.kubernetes.io/memory-pressure"))
            })
        })
    });
    assert!(ok, "{}", pod(&s, "waiting")["status"]);
    s.k(&["delete", "pod", "besteffort", "burstable", "waiting", "--wait=true", "--grace-period=1"]);
}
