//! In-place pod resize (`pods/resize`, Kubernetes 1.33) with the real kubectl against a
//! real container: the cgroup changes in place (`runc update`) or the container restarts
//! where its resize policy asks; the status reports what was admitted and applied;
//! resizes that cannot fit are `Infeasible` or `Deferred` in kubelet's words; the API
//! refuses what upstream refuses; quota charges the increase; RBAC guards the
//! subresource; a finished resize is announced (`ResizeCompleted`); and a crash of the
//! server keeps what the node admitted.

mod common;

use std::time::Duration;

use common::{eventually, pod, server_with_image, wait_for, Server};
use serde_json::Value;

fn status_of<'a>(p: &'a Value, container: &str) -> &'a Value {
    p["status"]["containerStatuses"].as_array().and_then(|l| l.iter().find(|c| c["name"] == container)).unwrap_or(&Value::Null)
}

fn condition<'a>(p: &'a Value, ty: &str) -> Option<&'a Value> {
    p["status"]["conditions"].as_array().and_then(|l| l.iter().find(|c| c["type"] == ty))
}

/// A cgroup v1 file of a running container, read on the host.
fn cgroup(p: &Value, container: &str, controller: &str, file: &str) -> String {
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let id = status_of(p, container)["containerID"].as_str().unwrap().rsplit("://").next().unwrap().to_string();
    let path = format!("/sys/fs/cgroup/{controller}/nanokube/pod{uid}/{id}/{file}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().to_string()
}

fn resize(s: &Server, name: &str, patch: &str) -> std::process::Output {
    s.kubectl(&["patch", "pod", name, "--subresource", "resize", "-p", patch])
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: r}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: testbox:1.0
    command: [sleep, "3600"]
    resizePolicy:
    - {resourceName: cpu, restartPolicy: NotRequired}
    - {resourceName: memory, restartPolicy: RestartContainer}
    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {cpu: 200m, memory: 128Mi}
  - name: d
    image: testbox:1.0
    command: [sleep, "3600"]
    resources:
      requests: {cpu: 50m, memory: 32Mi}
      limits: {memory: 64Mi}
"#;

#[test]
fn resize_in_place_restart_pending_and_refusals() {
    let s = server_with_image();
    let out = s.k_stdin(&["apply", "-f", "-"], POD);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = wait_for(&s, "r", "both containers running", |p| {
        ["c", "d"].iter().all(|c| status_of(p, c)["state"]["running"].is_object() && status_of(p, c)["resources"].is_object())
    });
    // What kubelet 1.33 reports: the admitted requests, and the resources applied.
    let c = status_of(&p, "c");
    assert_eq!(c["allocatedResources"], serde_json::json!({"cpu": "100m", "memory": "64Mi"}), "{c}");
    assert_eq!(c["resources"], serde_json::json!({"limits": {"cpu": "200m", "memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "64Mi"}}), "{c}");
    assert_eq!(cgroup(&p, "c", "cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(cgroup(&p, "c", "memory", "memory.limit_in_bytes"), (128u64 << 20).to_string());
    let first_id = c["containerID"].clone();

    // The plain update path still refuses resource changes.
    let out = s.kubectl(&["patch", "pod", "r", "-p", r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"cpu":"300m"}}}]}}"#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pod updates may not change fields other than"), "{}", String::from_utf8_lossy(&out.stderr));

    // CPU, NotRequired: the cgroup changes in place, the container keeps running.
    let out = resize(&s, "r", r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"150m"},"limits":{"cpu":"300m"}}}]}}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("pod/r patched"), "{}", String::from_utf8_lossy(&out.stdout));
    let p = wait_for(&s, "r", "the cpu resize applied", |p| status_of(p, "c")["resources"]["limits"]["cpu"] == "300m");
    let c = status_of(&p, "c");
    assert_eq!(c["resources"]["requests"]["cpu"], "150m");
    assert_eq!(c["allocatedResources"]["cpu"], "150m");
    assert_eq!(c["restartCount"], 0);
    assert_eq!(c["containerID"], first_id);
    assert_eq!(cgroup(&p, "c", "cpu", "cpu.cfs_quota_us"), "30000");
    assert_eq!(cgroup(&p, "c", "cpu", "cpu.shares"), (150 * 1024 / 1000).to_string());
    assert!(condition(&p, "PodResizeInProgress").is_none() && condition(&p, "PodResizePending").is_none(), "{}", p["status"]["conditions"]);
    // kubelet announces the end of the resize with what every container now has.
    let completed = r#"Pod resize completed: {"containers":[{"name":"c","resources":{"limits":{"cpu":"300m","memory":"128Mi"},"requests":{"cpu":"150m","memory":"64Mi"}}},{"name":"d","resources":{"limits":{"memory":"64Mi"},"requests":{"cpu":"50m","memory":"32Mi"}}}]}"#;
    let resize_events = |s: &Server| -> Vec<(String, String, String)> {
        let (_, events) = s.get_json("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dr");
        let items = events["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .filter(|e| e["reason"] == "ResizeCompleted")
            .map(|e| {
                (e["type"].as_str().unwrap_or("").into(), e["source"]["component"].as_str().unwrap_or("").into(), e["message"].as_str().unwrap_or("").into())
            })
            .collect()
    };
    assert!(
        eventually(Duration::from_secs(10), || resize_events(&s).iter().any(|(ty, from, m)| ty == "Normal" && from == "kubelet" && m == completed)),
        "{:?}",
        resize_events(&s)
    );

    // Memory, RestartContainer: the container restarts with the new limit (kubectl 1.33
    // this time; 1.32 above is the first that knows the subresource).
    let patch = r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"memory":"96Mi"},"limits":{"memory":"192Mi"}}}]}}"#;
    let out = s.kubectl_bin("kubectl.1.33", &["patch", "pod", "r", "--subresource", "resize", "-p", patch]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = wait_for(&s, "r", "c restarted with 192Mi", |p| {
        let c = status_of(p, "c");
        c["restartCount"] == 1 && c["state"]["running"].is_object() && c["resources"]["limits"]["memory"] == "192Mi"
    });
    assert_eq!(cgroup(&p, "c", "memory", "memory.limit_in_bytes"), (192u64 << 20).to_string());
    assert_eq!(status_of(&p, "d")["restartCount"], 0);
    let (_, events) = s.get_json("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dr");
    assert!(events["items"].as_array().unwrap().iter().any(|e| e["reason"] == "Killing" && e["message"] == "Container c resize requires restart"), "{events}");
    // A resize carried out by a restart ends with the event too.
    assert!(
        eventually(Duration::from_secs(10), || resize_events(&s).iter().any(|(_, _, m)| m.contains(r#""limits":{"cpu":"300m","memory":"192Mi"}"#))),
        "{:?}",
        resize_events(&s)
    );

    // What upstream refuses, in its words, changing nothing.
    let refused = |patch: &str, want: &str| {
        let out = resize(&s, "r", patch);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains(want), "{patch}: {err}");
    };
    refused(
        r#"{"spec":{"containers":[{"name":"d","resources":{"limits":{"memory":"48Mi"}}}]}}"#,
        "spec.containers[1].resources.limits[memory]: Forbidden: memory limits cannot be decreased unless resizePolicy is RestartContainer",
    );
    refused(
        r#"{"spec":{"containers":[{"name":"d","resources":{"requests":{"ephemeral-storage":"1Gi"}}}]}}"#,
        "spec: Forbidden: only cpu and memory resources are mutable",
    );
    refused(
        r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"300m","memory":"192Mi"}}},{"name":"d","resources":{"requests":{"cpu":"50m","memory":"64Mi"},"limits":{"cpu":"50m"}}}]}}"#,
        r#"spec: Invalid value: "Burstable": Pod QOS Class may not change as a result of resizing"#,
    );
    // Anything but resources and resize policies is dropped from a resize, as upstream.
    let out = resize(&s, "r", r#"{"metadata":{"labels":{"x":"y"}},"spec":{"containers":[{"name":"c","image":"other"}]}}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = pod(&s, "r");
    assert_eq!(p["spec"]["containers"][0]["image"], "testbox:1.0", "a resize changes nothing but resources");
    assert!(p["metadata"]["labels"]["x"].is_null());
    assert_eq!(p["spec"]["containers"][1]["resources"]["limits"]["memory"], "64Mi");

    // Infeasible: more than the node has at all; then taken back.
    let node = s.get_json("/api/v1/nodes").1["items"][0].clone();
    let cores = nanokube_cores(&node);
    let out = resize(&s, "r", r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"1000"},"limits":{"cpu":"1000"}}}]}}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = wait_for(&s, "r", "PodResizePending Infeasible", |p| condition(p, "PodResizePending").is_some());
    let cond = condition(&p, "PodResizePending").unwrap();
    assert_eq!(cond["reason"], "Infeasible");
    assert_eq!(cond["status"], "True");
    assert_eq!(cond["message"], format!("Node didn't have enough capacity: cpu, requested: 1000050, capacity: {}", cores * 1000));
    assert_eq!(status_of(&p, "c")["resources"]["limits"]["cpu"], "300m", "nothing applied");
    let out = resize(&s, "r", r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"150m"},"limits":{"cpu":"300m"}}}]}}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(&s, "r", "the pending condition gone", |p| condition(p, "PodResizePending").is_none());

    // Deferred: it would fit, but another pod holds the room; admitted once it leaves.
    let hog = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: hog}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers: [{{name: h, image: testbox:1.0, command: [sleep, '3600'], resources: {{requests: {{cpu: {}m}}}}}}]\n",
        cores * 1000 - 400
    );
    let out = s.k_stdin(&["apply", "-f", "-"], &hog);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(&s, "hog", "running", |p| p["status"]["phase"] == "Running");
    let out = resize(&s, "r", r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"500m"},"limits":{"cpu":"500m"}}}]}}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = wait_for(&s, "r", "PodResizePending Deferred", |p| condition(p, "PodResizePending").is_some());
    let cond = condition(&p, "PodResizePending").unwrap();
    assert_eq!(cond["reason"], "Deferred", "{cond}");
    assert_eq!(cond["message"], format!("Node didn't have enough resource: cpu, requested: 550, used: {}, capacity: {}", cores * 1000 - 400, cores * 1000));
    s.k(&["delete", "pod", "hog", "--wait=false"]);
    let p = wait_for(&s, "r", "the deferred resize admitted", |p| {
        condition(p, "PodResizePending").is_none() && status_of(p, "c")["resources"]["limits"]["cpu"] == "500m"
    });
    assert_eq!(cgroup(&p, "c", "cpu", "cpu.cfs_quota_us"), "50000");
    let restarts = status_of(&p, "c")["restartCount"].clone();

    // A crash of the server keeps what the node admitted: nothing restarts, nothing
    // changes.
    let mut s = s;
    s.kill9();
    s.restart();
    assert!(eventually(Duration::from_secs(30), || s.get_json("/readyz").0 == 200));
    std::thread::sleep(Duration::from_secs(3));
    let p = wait_for(&s, "r", "the pod adopted", |p| status_of(p, "c")["state"]["running"].is_object() && p["status"]["phase"] == "Running");
    let c = status_of(&p, "c");
    assert_eq!(c["restartCount"], restarts);
    assert_eq!(c["allocatedResources"]["cpu"], "500m");
    assert_eq!(c["resources"]["limits"]["cpu"], "500m");
    assert_eq!(cgroup(&p, "c", "cpu", "cpu.cfs_quota_us"), "50000");
    s.k(&["delete", "pod", "r"]);
}

/// The node's allocatable cores.
fn nanokube_cores(node: &Value) -> u64 {
    let cpu = node["status"]["allocatable"]["cpu"].as_str().unwrap();
    cpu.parse().unwrap_or_else(|_| panic!("allocatable cpu {cpu:?} is not whole cores"))
}

#[test]
fn resize_is_its_own_permission_and_charged_to_quota() {
    let s = Server::start();
    s.k(&["create", "namespace", "q"]);
    // A pod no node takes: a resize needs no running container to be admitted by the API.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"q"},"spec":{"nodeSelector":{"none":"x"},"containers":[{"name":"c","image":"testbox:1.0","resources":{"requests":{"cpu":"100m"},"limits":{"cpu":"200m"}}}]}}"#;
    let out = s.k_stdin(&["create", "-f", "-"], pod);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.k(&["create", "quota", "cpu", "-n", "q", "--hard=requests.cpu=300m"]);
    assert!(eventually(Duration::from_secs(10), || { s.get_json("/api/v1/namespaces/q/resourcequotas/cpu").1["status"]["used"]["requests.cpu"] == "100m" }));

    // Discovery names the subresource with upstream's verbs.
    let (_, v1) = s.get_json("/api/v1");
    let sub = v1["resources"].as_array().unwrap().iter().find(|r| r["name"] == "pods/resize").cloned().unwrap_or_default();
    assert_eq!(sub["kind"], "Pod");
    assert_eq!(sub["verbs"], serde_json::json!(["get", "patch", "update"]));

    // Patching pods is not patching pods/resize.
    s.k(&["create", "role", "pods", "-n", "q", "--verb=get,patch,update", "--resource=pods"]);
    s.k(&["create", "rolebinding", "pods", "-n", "q", "--role=pods", "--user=alice"]);
    let patch = r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"200m"}}}]}}"#;
    let out = s.kubectl(&["--as=alice", "patch", "pod", "p", "-n", "q", "--subresource", "resize", "-p", patch]);
    let err = String::from_utf8_lossy(&out.stderr);
    // kubectl reads the subresource before it patches it.
    assert!(err.contains(r#"pods "p" is forbidden: User "alice" cannot get resource "pods/resize" in API group "" in the namespace "q""#), "{err}");
    let out = s
        .admin_curl()
        .args(["-sS", "-X", "PATCH", "-H", "Impersonate-User: alice", "-H", "Content-Type: application/strategic-merge-patch+json", "--data", patch])
        .arg(format!("{}/api/v1/namespaces/q/pods/p/resize", s.url))
        .output()
        .unwrap();
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["code"], 403, "{body}");
    assert_eq!(body["message"], r#"pods "p" is forbidden: User "alice" cannot patch resource "pods/resize" in API group "" in the namespace "q""#);
    s.k(&["create", "role", "resize", "-n", "q", "--verb=get,patch", "--resource=pods/resize"]);
    s.k(&["create", "rolebinding", "resize", "-n", "q", "--role=resize", "--user=alice"]);
    let out = s.kubectl(&["--as=alice", "patch", "pod", "p", "-n", "q", "--subresource", "resize", "-p", patch]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = s.get_json("/api/v1/namespaces/q/pods/p").1;
    assert_eq!(p["spec"]["containers"][0]["resources"]["requests"]["cpu"], "200m");
    let mf = p["metadata"]["managedFields"].as_array().unwrap();
    assert!(mf.iter().any(|m| m["subresource"] == "resize" && m["operation"] == "Update"), "{mf:?}");

    let resize_in_q = |patch: &str| s.kubectl(&["patch", "pod", "p", "-n", "q", "--subresource", "resize", "-p", patch]);
    // The quota is charged the increase, and refuses one past its limit.
    assert!(eventually(Duration::from_secs(10), || { s.get_json("/api/v1/namespaces/q/resourcequotas/cpu").1["status"]["used"]["requests.cpu"] == "200m" }));
    let out = resize_in_q(r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"400m"},"limits":{"cpu":"400m"}}}]}}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded quota: cpu, requested: requests.cpu=200m, used: requests.cpu=200m, limited: requests.cpu=300m"), "{err}");
    assert_eq!(s.get_json("/api/v1/namespaces/q/pods/p").1["spec"]["containers"][0]["resources"]["requests"]["cpu"], "200m");

    // LimitRanger admits resizes too: past a LimitRange's max, refused in its words
    // (403), nothing changed; within it, admitted.
    let range = r#"{"apiVersion":"v1","kind":"LimitRange","metadata":{"name":"lr","namespace":"q"},"spec":{"limits":[{"type":"Container","max":{"cpu":"250m"},"min":{"cpu":"50m"}}]}}"#;
    let out = s.k_stdin(&["create", "-f", "-"], range);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = resize_in_q(r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"cpu":"300m"}}}]}}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(r#"pods "p" is forbidden: maximum cpu usage per Container is 250m, but limit is 300m"#), "{err}");
    let out = resize_in_q(r#"{"spec":{"containers":[{"name":"c","resources":{"requests":{"cpu":"40m"}}}]}}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("minimum cpu usage per Container is 50m, but request is 40m"), "{err}");
    let resources = || s.get_json("/api/v1/namespaces/q/pods/p").1["spec"]["containers"][0]["resources"].clone();
    assert_eq!(resources(), serde_json::json!({"requests": {"cpu": "200m"}, "limits": {"cpu": "200m"}}));
    let out = resize_in_q(r#"{"spec":{"containers":[{"name":"c","resources":{"limits":{"cpu":"250m"}}}]}}"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(resources()["limits"]["cpu"], "250m");
    s.k(&["delete", "limitrange", "lr", "-n", "q"]);

    // A resize policy that restarts is refused on a pod that never restarts.
    let never = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"n","namespace":"q"},"spec":{"restartPolicy":"Never","containers":[{"name":"c","image":"testbox:1.0","resizePolicy":[{"resourceName":"memory","restartPolicy":"RestartContainer"}],"resources":{"requests":{"cpu":"10m"}}}]}}"#;
    let out = s.k_stdin(&["create", "-f", "-"], never);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"spec.containers[0].resizePolicy: Invalid value: "RestartContainer": must be 'NotRequired' when `restartPolicy` is 'Never'"#),
        "{err}"
    );
}
