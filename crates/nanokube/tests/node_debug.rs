//! `kubectl debug`: ephemeral containers added through the `pods/ephemeralcontainers`
//! subresource (only additions, with upstream's validation), started once by the node in
//! the target container's process namespace, attached to with a terminal, reported in
//! `ephemeralContainerStatuses`; and `kubectl debug node/...`, a pod in the host's
//! namespaces with the host's root at `/host`. (Every kubectl from 1.27 runs `debug -it`
//! in `kubectl_versions.rs`.)

mod common;

use std::time::Duration;

use common::{eventually, server_with_image};

fn ephemeral_state(s: &common::Server, pod: &str, name: &str) -> String {
    s.k(&["get", "pod", pod, "-o", &format!("jsonpath={{.status.ephemeralContainerStatuses[?(@.name==\"{name}\")].state}}")])
}

#[test]
fn kubectl_debug_adds_a_container_that_sees_its_targets_processes() {
    let s = server_with_image();
    s.k(&["run", "app", "--image=testbox:1.0", "--", "sh", "-c", "exec sleep 3600"]);
    let ok = s.kubectl(&["wait", "--for=condition=Ready", "pod/app", "--timeout=30s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    // Interactive, with a terminal, in the target's process namespace.
    let (screen, _) = s.kubectl_on_terminal("kubectl", "debug -it app --image=testbox:1.0 --target=app -c shell -- sh", "try pressing enter", "ps; exit 7\n");
    assert!(screen.contains("sleep 3600"), "the target's process is visible: {screen}");
    assert!(eventually(Duration::from_secs(20), || ephemeral_state(&s, "app", "shell").contains("\"exitCode\":7")), "{}", ephemeral_state(&s, "app", "shell"));
    // The pod itself goes on, still Ready: ephemeral containers do not count.
    assert_eq!(s.k(&["get", "pod", "app", "-o", "jsonpath={.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}"]), "Running True");

    // Without a terminal: the container runs once and its output is in its log.
    s.k(&["debug", "app", "--image=testbox:1.0", "--target=app", "-c", "lister", "--", "sh", "-c", "ps -o pid,args"]);
    assert!(eventually(Duration::from_secs(20), || ephemeral_state(&s, "app", "lister").contains("\"exitCode\":0")));
    let log = s.k(&["logs", "app", "-c", "lister"]);
    assert!(log.contains("sleep 3600"), "{log}");
    let restarts = s.k(&["get", "pod", "app", "-o", "jsonpath={.status.ephemeralContainerStatuses[?(@.name==\"lister\")].restartCount}"]);
    assert_eq!(restarts, "0", "an ephemeral container is never restarted");

    // Upstream's rules: existing ones are never changed or removed, new ones may not have
    // ports or probes, targets must exist, and pods are not created with them.
    let patch = |body: &str| {
        s.curl("PATCH", "/api/v1/namespaces/default/pods/app/ephemeralcontainers", Some("application/strategic-merge-patch+json"), Some(body.as_bytes()))
    };
    let (code, body) = patch(r#"{"spec":{"ephemeralContainers":[{"name":"lister","image":"testbox:2.0"}]}}"#);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("existing ephemeral containers \\\"lister\\\" may not be changed"), "{body}");
    let (code, body) = patch(r#"{"spec":{"ephemeralContainers":[{"name":"web","image":"testbox:1.0","ports":[{"containerPort":80}]}]}}"#);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.ephemeralContainers[2].ports") && body.contains("cannot be set for an Ephemeral Container"), "{body}");
    let (code, body) = patch(r#"{"spec":{"ephemeralContainers":[{"name":"lost","image":"testbox:1.0","targetContainerName":"nope"}]}}"#);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("targetContainerName"), "{body}");
    let (code, body) = patch(r#"{"spec":{"ephemeralContainers":[{"name":"app","image":"testbox:1.0"}]}}"#);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("Duplicate value"), "{body}");
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"eph"},"spec":{"containers":[{"name":"a","image":"testbox:1.0"}],"ephemeralContainers":[{"name":"e","image":"testbox:1.0"}]}}"#;
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/pods", Some("application/json"), Some(pod.as_bytes()));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("cannot be set on create"), "{body}");
    // The pod's own update may not touch them either.
    let mut current: serde_json::Value = serde_json::from_str(&s.k(&["get", "pod", "app", "-o", "json"])).unwrap();
    current["spec"]["ephemeralContainers"].as_array_mut().unwrap().pop();
    let (code, body) = s.curl("PUT", "/api/v1/namespaces/default/pods/app", Some("application/json"), Some(current.to_string().as_bytes()));
    assert_eq!(code, 422, "{body}");
    let names = s.k(&["get", "pod", "app", "-o", "jsonpath={.spec.ephemeralContainers[*].name}"]);
    assert_eq!(names, "shell lister", "nothing was changed by the refused writes");
}

#[test]
fn kubectl_debug_node_runs_in_the_hosts_namespaces() {
    let s = server_with_image();
    let node = s.k(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let server_pid = s.child.id();
    let (screen, _) = s.kubectl_on_terminal(
        "kubectl",
        &format!("debug node/{node} -it --image=testbox:1.0 -- sh"),
        "try pressing enter",
        &format!("hostname; ls -d /host/proc/{server_pid}/ns && echo HOSTPID; cat /proc/{server_pid}/comm; exit\n"),
    );
    assert!(screen.contains(&format!("Creating debugging pod node-debugger-{node}-")), "{screen}");
    assert!(screen.contains(host_name.trim()), "the host's UTS namespace: {screen}");
    assert!(screen.contains("HOSTPID") && screen.lines().any(|l| l.trim() == "nanokube"), "the host's processes: {screen}");
    // kubectl leaves the pod for the user to remove, as upstream.
    let pods = s.k(&["get", "pods", "-o", "name"]);
    let debugger = pods.lines().find(|p| p.starts_with("pod/node-debugger-")).expect("the debugging pod").to_string();
    s.k(&["delete", &debugger, "--wait=true"]);
}
