//! The node and the scheduler: `nanokube server` registers a Node as kubelet does (labels,
//! addresses, capacity from the machine, conditions, nodeInfo, its Lease renewed), Ready
//! where it can run containers and otherwise `Ready=False` saying exactly what is missing
//! (tainted not-ready by the node lifecycle controller); the scheduler binds pods that fit
//! and tells the others why, in kube-scheduler's words, through the PodScheduled condition
//! and events.

mod common;

use std::time::Duration;

use common::{eventually, Server};
use serde_json::{json, Value};

fn pod_condition(s: &Server, name: &str) -> Value {
    let pod = s.get_json(&format!("/api/v1/namespaces/default/pods/{name}")).1;
    pod["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned()).unwrap_or(Value::Null)
}

fn create_pod(s: &Server, pod: Value) {
    let out = s.k_stdin(&["create", "-f", "-"], &pod.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_node_registers_as_kubelet_does_and_keeps_its_lease() {
    let s = Server::start_with(&["--node-name", "test-node"]);
    let node = s.get_json("/api/v1/nodes/test-node").1;
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "test-node");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
    assert_eq!(node["status"]["addresses"], json!([{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "test-node"}]));
    let cpus = std::thread::available_parallelism().unwrap().get().to_string();
    assert_eq!(node["status"]["capacity"]["cpu"], cpus);
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    assert!(node["status"]["allocatable"]["memory"].as_str().unwrap().ends_with("Ki"));
    // Its pods' block of the cluster's pod network, given by the node IPAM controller.
    assert!(eventually(Duration::from_secs(10), || s.get_json("/api/v1/nodes/test-node").1["spec"]["podCIDR"] == "127.244.0.0/24"));
    // The kubelet API's port as bound (the tests' servers ask for any free one).
    assert!(node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_i64().unwrap() > 0);
    let version = s.get_json("/version").1["gitVersion"].clone();
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], version);
    assert_eq!(node["status"]["nodeInfo"]["bootID"].as_str().unwrap(), std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim());
    let types: Vec<&str> = node["status"]["conditions"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]);
    let ready = &node["status"]["conditions"][3];
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str(), ready["message"].as_str()),
        (Some("True"), Some("KubeletReady"), Some("kubelet is posting ready status"))
    );

    // kubectl's view.
    let out = s.k(&["get", "nodes"]);
    assert!(out.contains("test-node") && out.contains(" Ready ") && out.contains("control-plane"), "{out}");

    // The not-ready taint it registered with is lifted by the node lifecycle controller.
    assert!(eventually(Duration::from_secs(15), || {
        let taints = s.get_json("/api/v1/nodes/test-node").1["spec"]["taints"].clone();
        taints.as_array().is_none_or(|t| t.is_empty())
    }));

    // The Lease, renewed every 10 seconds.
    let lease = s.get_json("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/test-node").1;
    assert_eq!(lease["spec"]["holderIdentity"], "test-node");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");
    let first = lease["spec"]["renewTime"].as_str().unwrap().to_string();
    assert!(first.contains('.') && first.ends_with('Z'), "a MicroTime: {first}");
    assert!(eventually(Duration::from_secs(25), || s.get_json("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/test-node").1["spec"]
        ["renewTime"]
        != first));
}

/// Where containers cannot run the node says exactly why: a server keeping no files
/// (`--in-memory`: no image store), and one run by an unprivileged user.
#[test]
fn a_node_that_cannot_run_containers_says_what_is_missing() {
    let ready = |s: &Server| -> Value {
        let node = s.get_json("/api/v1/nodes").1["items"][0].clone();
        node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone()
    };
    let s = Server::start_with(&["--in-memory"]);
    let r = ready(&s);
    assert_eq!((r["status"].as_str(), r["reason"].as_str()), (Some("False"), Some("KubeletNotReady")));
    assert!(r["message"].as_str().unwrap().starts_with("container runtime is down: the server keeps no files (--in-memory)"), "{r}");
    let out = s.k(&["get", "nodes"]);
    assert!(out.contains("NotReady"), "{out}");

    // As nobody (uid 65534), with a data directory it owns.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for p in [dir.path(), data.as_path()] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_nanokube"))
        .args(["server", "--secure-port", &port.to_string(), "--merge-kubeconfig=false", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("setpriv (util-linux)");
    let _guard = common::KillOnDrop(child);
    let kubeconfig = data.join("kubeconfig");
    let mut message = String::new();
    assert!(eventually(Duration::from_secs(20), || {
        let out = std::process::Command::new(common::kubectl_path("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "nodes", "-o", "jsonpath={.items[0].status.conditions[3].message}"])
            .output()
            .unwrap();
        message = String::from_utf8_lossy(&out.stdout).to_string();
        !message.is_empty()
    }));
    assert!(message.starts_with("container runtime is down: nanokube runs as an unprivileged user, and containers need root"), "{message}");
}

#[test]
fn the_scheduler_binds_what_fits_and_says_why_the_rest_waits() {
    // A node that runs no containers (in memory), so it stays tainted not-ready.
    let s = Server::start_with(&["--node-name", "n1", "--in-memory"]);
    assert!(eventually(Duration::from_secs(15), || s.get_json("/api/v1/nodes/n1").1["spec"]["taints"].as_array().is_some_and(|t| t.len() == 2)));

    // The node is not ready: a plain pod waits, and says why.
    s.k(&["run", "plain", "--image=nginx"]);
    assert!(eventually(Duration::from_secs(10), || pod_condition(&s, "plain")["reason"] == "Unschedulable"));
    let c = pod_condition(&s, "plain");
    assert_eq!(c["status"], "False");
    assert_eq!(
        c["message"],
        "0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    );
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=plain"]);
    assert!(events.contains("FailedScheduling") && events.contains("0/1 nodes are available"), "{events}");

    // Tolerating it, a pod is bound, with the Scheduled event.
    let tolerate = json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]);
    create_pod(
        &s,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tolerant"}, "spec": {"tolerations": tolerate, "containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": "100m"}}}]}}),
    );
    assert!(eventually(Duration::from_secs(10), || pod_condition(&s, "tolerant")["status"] == "True"));
    assert_eq!(s.get_json("/api/v1/namespaces/default/pods/tolerant").1["spec"]["nodeName"], "n1");
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=tolerant"]);
    assert!(events.contains("Scheduled") && events.contains("Successfully assigned default/tolerant to n1"), "{events}");

    // Too big, or selecting another node: upstream's reasons.
    create_pod(
        &s,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge"}, "spec": {"tolerations": tolerate, "containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": "1000", "memory": "1Ti"}}}]}}),
    );
    create_pod(
        &s,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "picky"}, "spec": {"tolerations": tolerate, "nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "nginx"}]}}),
    );
    assert!(eventually(Duration::from_secs(10), || pod_condition(&s, "huge")["reason"] == "Unschedulable"
        && pod_condition(&s, "picky")["reason"] == "Unschedulable"));
    assert_eq!(
        pod_condition(&s, "huge")["message"],
        "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    );
    assert!(pod_condition(&s, "picky")["message"]
        .as_str()
        .unwrap()
        .starts_with("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."));
    // The node gains the label: the waiting pod is tried again and bound.
    s.k(&["label", "node", "n1", "disk=ssd"]);
    assert!(eventually(Duration::from_secs(10), || pod_condition(&s, "picky")["status"] == "True"));

    // Another scheduler's pod is left alone; a Binding assigns it, once.
    create_pod(
        &s,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mine"}, "spec": {"schedulerName": "my-scheduler", "containers": [{"name": "c", "image": "nginx"}]}}),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(pod_condition(&s, "mine").is_null());
    let binding = br#"{"apiVersion":"v1","kind":"Binding","metadata":{"name":"mine"},"target":{"apiVersion":"v1","kind":"Node","name":"n1"}}"#;
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/pods/mine/binding", Some("application/json"), Some(binding));
    assert_eq!(code, 201, "{body}");
    assert_eq!(pod_condition(&s, "mine")["status"], "True");
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/bindings", Some("application/json"), Some(binding));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains(r#"pod mine is already assigned to node \"n1\""#), "{body}");
}

#[test]
fn a_control_plane_only_server_has_no_node() {
    let s = Server::start_with(&["--node=false"]);
    assert_eq!(s.get_json("/api/v1/nodes").1["items"].as_array().unwrap().len(), 0);
    s.k(&["run", "lonely", "--image=nginx"]);
    assert!(eventually(Duration::from_secs(10), || pod_condition(&s, "lonely")["message"] == "no nodes available to schedule pods"));
}
