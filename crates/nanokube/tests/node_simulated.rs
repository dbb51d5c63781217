//! Simulated nodes (kwok's idea): `--simulated-nodes N` registers Ready nodes labelled and
//! tainted `nanokube.io/simulated=true`; pods that tolerate the taint go through the real
//! scheduler and become Running and Ready with IPs, statuses and events, with no process;
//! failure injection by annotation (a crashing container, a node whose heartbeat stops);
//! a Node made by hand with the label is simulated too.

mod common;

use std::time::Duration;

use common::{eventually, table, Server};

fn sim_pod(name: &str, extra_meta: &str, restart: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: sim}}\n{extra_meta}spec:\n  restartPolicy: {restart}\n  nodeSelector: {{nanokube.io/simulated: \"true\"}}\n  tolerations: [{{key: nanokube.io/simulated, operator: Exists, effect: NoSchedule}}]\n  containers: [{{name: app, image: registry.example/app:1.0}}]\n---\n"
    )
}

#[test]
fn simulated_nodes_run_pods_without_processes() {
    let s = Server::start_with(&["--node=false", "--simulated-nodes", "2", "--simulated-start-delay", "100ms"]);
    let (h, rows) = table(&s.k(&["get", "nodes", "-l", "nanokube.io/simulated=true"]));
    assert_eq!(h[..2], ["NAME", "STATUS"]);
    assert_eq!(rows.iter().map(|r| (r[0].as_str(), r[1].as_str())).collect::<Vec<_>>(), [("sim-0", "Ready"), ("sim-1", "Ready")]);
    assert_eq!(
        s.k(&["get", "node", "sim-0", "-o", "jsonpath={.spec.taints[0].key}={.spec.taints[0].value}:{.spec.taints[0].effect}"]),
        "nanokube.io/simulated=true:NoSchedule"
    );
    assert!(s.k(&["get", "lease", "-n", "kube-node-lease", "sim-1", "-o", "jsonpath={.spec.holderIdentity}"]) == "sim-1");

    // Twenty pods through the scheduler, spread over both nodes, Running and Ready.
    let manifest = s.dir.path().join("pods.yaml");
    std::fs::write(&manifest, (0..20).map(|i| sim_pod(&format!("p{i}"), "", "Always")).collect::<String>()).unwrap();
    s.k(&["apply", "-f", manifest.to_str().unwrap()]);
    let ok = s.kubectl(&["wait", "--for=condition=Ready", "pod", "-l", "app=sim", "--timeout=30s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let out = s.k(&["get", "pods", "-o", "jsonpath={range .items[*]}{.spec.nodeName} {.status.podIP} {.status.hostIP} {.status.phase}{\"\\n\"}{end}"]);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 20);
    let mut ips: Vec<&str> = lines.iter().map(|l| l[1]).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "every pod its own IP: {out}");
    assert!(lines.iter().all(|l| l[1].starts_with("127.128.") && l[3] == "Running"), "{out}");
    assert!(lines.iter().any(|l| l[0] == "sim-0") && lines.iter().any(|l| l[0] == "sim-1"), "spread over both: {out}");
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=p0", "-o", "jsonpath={range .items[*]}{.reason},{end}"]);
    assert!(events.contains("Scheduled,") && events.contains("Started,"), "{events}");

    // Without the toleration: never there (no other node here), in the scheduler's words.
    s.k(&["run", "plain", "--image=registry.example/app:1.0"]);
    assert!(eventually(Duration::from_secs(10), || s
        .k(&["get", "pod", "plain", "-o", "jsonpath={.status.conditions[0].message}"])
        .contains("2 node(s) had untolerated taint {nanokube.io/simulated: true}")));

    // Failure injection: a crashing container, and one that fails for good.
    let crash = "  annotations: {nanokube.io/simulated-exit-code: \"3\"}\n";
    std::fs::write(&manifest, sim_pod("crash", crash, "Always") + &sim_pod("fail", crash, "Never")).unwrap();
    s.k(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(10), || s.k(&["get", "pod", "crash", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}"])
        == "CrashLoopBackOff"));
    assert_eq!(s.k(&["get", "pod", "crash", "-o", "jsonpath={.status.containerStatuses[0].lastState.terminated.exitCode}"]), "3");
    assert!(eventually(Duration::from_secs(10), || s.k(&["get", "pod", "fail", "-o", "jsonpath={.status.phase}"]) == "Failed"));

    // Deleted pods go as from kubelet: `Killing`, then (the stop delay, 1 s, later) the
    // node confirms with grace 0.
    let asked = std::time::Instant::now();
    s.k(&["delete", "pod", "p0", "p1", "--timeout=10s"]);
    assert!(asked.elapsed() >= Duration::from_secs(1), "confirmed before the stop delay");
    assert!(s.kubectl(&["get", "pod", "p0"]).status.code() == Some(1));
    let killing = s.k(&["get", "events", "--field-selector", "involvedObject.name=p0,reason=Killing", "-o", "jsonpath={.items[*].message}"]);
    assert!(killing.starts_with("Stopping container "), "{killing}");

    // A Node made by hand with the label is simulated: a pod bound to it runs.
    let node = s.dir.path().join("node.yaml");
    std::fs::write(&node, "apiVersion: v1\nkind: Node\nmetadata:\n  name: handmade\n  labels: {nanokube.io/simulated: \"true\"}\n").unwrap();
    s.k(&["apply", "-f", node.to_str().unwrap()]);
    std::fs::write(&manifest, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: bound\nspec:\n  nodeName: handmade\n  containers: [{name: app, image: x}]\n")
        .unwrap();
    s.k(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(10), || s.k(&["get", "pod", "bound", "-o", "jsonpath={.status.phase}"]) == "Running"));

    // A node whose heartbeat stops: its Lease goes stale and the lifecycle controller
    // marks it Unknown (after kubelet's 40 s grace), taints it unreachable, and its pods
    // are evicted once their toleration of that runs out (2 s here; 300 s by default).
    let brief = "apiVersion: v1\nkind: Pod\nmetadata: {name: brief}\nspec:\n  nodeName: sim-1\n  tolerations:\n  - {key: nanokube.io/simulated, operator: Exists}\n  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}\n  containers: [{name: app, image: x}]\n";
    std::fs::write(&manifest, brief).unwrap();
    s.k(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(eventually(Duration::from_secs(10), || s.k(&["get", "pod", "brief", "-o", "jsonpath={.status.phase}"]) == "Running"));
    s.k(&["annotate", "node", "sim-1", "nanokube.io/simulated-heartbeat=stopped"]);
    assert!(
        eventually(Duration::from_secs(90), || s.k(&["get", "node", "sim-1", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]) == "Unknown")
    );
    assert_eq!(s.k(&["get", "node", "sim-0", "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"]), "True");
    let taints = || s.k(&["get", "node", "sim-1", "-o", "jsonpath={range .spec.taints[*]}{.key}:{.effect},{end}"]);
    assert!(
        eventually(Duration::from_secs(10), || taints().contains("node.kubernetes.io/unreachable:NoSchedule,")
            && taints().contains("node.kubernetes.io/unreachable:NoExecute,")),
        "{}",
        taints()
    );
    let gone = || {
        let out = s.kubectl(&["get", "pod", "brief", "-o", "jsonpath={.metadata.deletionTimestamp}"]);
        !out.status.success() || !out.stdout.is_empty()
    };
    assert!(eventually(Duration::from_secs(30), gone), "the pod outlived its toleration");
}
