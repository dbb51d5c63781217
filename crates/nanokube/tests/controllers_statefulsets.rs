//! StatefulSets and DaemonSets with the real kubectl and running pods: ordinals made in
//! order (each after its predecessor is Ready) with stable hostnames and their own
//! claims, removed from the top, partition-updated then rolled out, history and undo;
//! Parallel; a DaemonSet on every node that should run it (a real node and simulated
//! ones), following node selectors and taints, and rolled out (with a surge); claims
//! kept or deleted as the retention policy says.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{eventually, server_with_image, server_with_image_and, Server};
use serde_json::Value;

const SCRIPT: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

fn apply(s: &Server, yaml: &str) {
    let out = s.k_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn pods(s: &Server, selector: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(&s.k(&["get", "pods", "-l", selector, "-o", "json"])).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn names(s: &Server, selector: &str) -> BTreeSet<String> {
    pods(s, selector).iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect()
}

fn rollout(s: &Server, what: &str) {
    let out = s.kubectl(&["rollout", "status", what, "--timeout=120s"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Upstream's `HashControllerRevision` of `data` with collision count `probe`, written in
/// Python, apart from the server's own: FNV-1 (32 bits) of the JSON as Go's `json.Marshal`
/// writes a map (sorted keys, `<`, `>`, `&`, U+2028, U+2029 escaped) followed by the count
/// in decimal; the sum written in decimal, each digit's character code taken modulo 27
/// into `rand.SafeEncodeString`'s alphabet (so only `4`–`9`, `b`, `c`, `d`, `f` occur).
fn upstream_revision_hash(data: &Value, probe: i64) -> String {
    const PY: &str = r#"
import json, sys
data = json.dumps(json.load(sys.stdin), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
    data = data.replace(raw, esc)
h = 0x811C9DC5
for b in (data + sys.argv[1]).encode():
    h = ((h * 0x01000193) & 0xFFFFFFFF) ^ b
print("".join("bcdfghjklmnpqrstvwxz2456789"[ord(d) % 27] for d in str(h)))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", PY, &probe.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(data.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn time(v: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap()
}

#[test]
fn a_statefulset_makes_ordered_pods_with_claims_and_updates_by_partition() {
    let s = server_with_image();
    apply(
        &s,
        &format!(
            r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{clusterIP: None, selector: {{app: web}}, ports: [{{port: 80}}]}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web}}
spec:
  serviceName: web
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: main
        image: testbox:1.0
        command: [sh, -c, "{SCRIPT}"]
        env: [{{name: EXPR, value: "a<b && c>d"}}]
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Mi}}}}}}
"#
        ),
    );
    rollout(&s, "statefulset/web");
    let mut ps = pods(&s, "app=web");
    ps.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap().to_string());
    assert_eq!(ps.iter().map(|p| p["metadata"]["name"].as_str().unwrap()).collect::<Vec<_>>(), ["web-0", "web-1", "web-2"]);
    // OrderedReady: each made only after the one before it was Ready.
    for pair in ps.windows(2) {
        let ready = pair[0]["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert!(
            time(&pair[1]["metadata"]["creationTimestamp"]) >= time(&ready["lastTransitionTime"]),
            "{} made before {} was Ready",
            pair[1]["metadata"]["name"],
            pair[0]["metadata"]["name"]
        );
    }
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"], format!("web-{i}"));
        assert_eq!(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"], i.to_string());
        assert_eq!(p["spec"]["subdomain"], "web");
        assert_eq!(p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"], format!("data-web-{i}"));
    }
    assert_eq!(s.k(&["exec", "web-1", "--", "hostname"]).trim(), "web-1");
    // Each pod writes to its own claim, which outlives the pod.
    s.k(&["exec", "web-1", "--", "sh", "-c", "echo mine > /data/who"]);
    let claims = s.k(&["get", "pvc", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.phase};{end}"]);
    assert_eq!(claims, "data-web-0=Bound;data-web-1=Bound;data-web-2=Bound;");
    // Not waited for by kubectl: its wait can miss a deletion when the controller
    // recreates the pod under the same name at once (see common::KUBECTL_DEADLINE).
    s.k(&["delete", "pod", "web-1", "--wait=false"]);
    assert!(
        eventually(Duration::from_secs(60), || s.kubectl(&["exec", "web-1", "--", "cat", "/data/who"]).stdout == b"mine\n"),
        "web-1 came back without its data"
    );

    // Scaled down: the highest ordinal goes first, one at a time.
    s.k(&["scale", "statefulset/web", "--replicas=1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let now = names(&s, "app=web");
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen.iter().all(|set| !set.contains("web-2") || set.contains("web-1")), "web-1 went before web-2: {seen:?}");
    assert_eq!(names(&s, "app=web"), BTreeSet::from(["web-0".to_string()]));
    assert!(s.kubectl(&["get", "pvc", "data-web-2"]).status.success(), "claims stay by default");

    // A partitioned update: only ordinals at or above the partition take it.
    s.k(&["scale", "statefulset/web", "--replicas=3"]);
    rollout(&s, "statefulset/web");
    s.k(&["patch", "statefulset", "web", "-p", r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}}}}"#]);
    s.k(&["set", "env", "statefulset/web", "COLOR=blue"]);
    let st = |f: &str| s.k(&["get", "statefulset", "web", "-o", &format!("jsonpath={{.status.{f}}}")]);
    assert!(
        eventually(Duration::from_secs(60), || st("updatedReplicas") == "1" && st("readyReplicas") == "3"),
        "{}",
        s.k(&["get", "sts", "web", "-o", "yaml"])
    );
    let update = st("updateRevision");
    let current = st("currentRevision");
    assert_ne!(update, current);
    let revision = |p: &str| s.k(&["get", "pod", p, "-o", "jsonpath={.metadata.labels.controller-revision-hash}"]);
    assert_eq!((revision("web-0"), revision("web-1"), revision("web-2")), (current.clone(), current.clone(), update.clone()));
    s.k(&["patch", "statefulset", "web", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#]);
    rollout(&s, "statefulset/web");
    assert!(eventually(Duration::from_secs(10), || st("currentRevision") == update));
    assert_eq!(revision("web-0"), update);
    let revs = s.k(&["get", "controllerrevisions", "-o", "jsonpath={range .items[*]}{.metadata.name}={.revision};{end}"]);
    assert!(revs.contains(&format!("{current}=1;")) && revs.contains(&format!("{update}=2;")), "{revs}");
    // Each revision is named as upstream's HashControllerRevision names it, computed here
    // apart (in Python) from the data as served: the FNV-1 of its JSON as Go writes it,
    // then the collision count; labelled with the template's labels and the hash, and
    // annotated with the StatefulSet's annotations.
    for name in [&current, &update] {
        let rev: Value = serde_json::from_str(&s.k(&["get", "controllerrevision", name, "-o", "json"])).unwrap();
        let hash = upstream_revision_hash(&rev["data"], 0);
        assert_eq!(*name, format!("web-{hash}"), "{}", rev["data"]);
        assert_eq!(rev["metadata"]["labels"], serde_json::json!({"app": "web", "controller.kubernetes.io/hash": hash}));
        assert!(rev["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"].is_string(), "{}", rev["metadata"]);
    }
    let history = s.k(&["rollout", "history", "statefulset/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    // Undo: the first template again, as revision 3.
    s.k(&["rollout", "undo", "statefulset/web"]);
    rollout(&s, "statefulset/web");
    assert!(eventually(Duration::from_secs(60), || st("currentRevision") == current));
    assert_eq!(s.k(&["get", "controllerrevision", &current, "-o", "jsonpath={.revision}"]), "3");
    assert!(!s.k(&["get", "pod", "web-0", "-o", "jsonpath={.spec.containers[0].env}"]).contains("COLOR"));
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=web,involvedObject.kind=StatefulSet", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains("create Pod web-0 in StatefulSet web successful"), "{events}");
    assert!(events.contains("create Claim data-web-0 Pod web-0 in StatefulSet web success"), "{events}");
    assert!(events.contains("delete Pod web-2 in StatefulSet web successful"), "{events}");
}

#[test]
fn parallel_statefulsets_and_daemonsets_on_every_node() {
    let s = server_with_image_and(&["--simulated-nodes", "2", "--simulated-start-delay", "100ms"]);
    // Parallel: every pod at once, none waiting for another (these can run nowhere, so
    // OrderedReady would have stopped at the first).
    apply(
        &s,
        &format!(
            r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: par}}
spec:
  podManagementPolicy: Parallel
  replicas: 3
  selector: {{matchLabels: {{app: par}}}}
  template:
    metadata: {{labels: {{app: par}}}}
    spec:
      nodeSelector: {{nowhere: "true"}}
      containers: [{{name: main, image: testbox:1.0, command: [sh, -c, "{SCRIPT}"]}}]
"#
        ),
    );
    assert!(eventually(Duration::from_secs(20), || names(&s, "app=par").len() == 3));
    assert!(pods(&s, "app=par").iter().all(|p| p["status"]["phase"] == "Pending"));
    s.k(&["delete", "statefulset", "par"]);

    let real = nanokube_node_name(&s);
    apply(
        &s,
        &format!(
            r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      tolerations: [{{key: nanokube.io/simulated, operator: Exists}}]
      containers: [{{name: main, image: testbox:1.0, command: [sh, -c, "{SCRIPT}"]}}]
"#
        ),
    );
    rollout(&s, "daemonset/agent");
    let on_nodes = |s: &Server| -> BTreeSet<String> {
        pods(s, "app=agent")
            .iter()
            .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
            .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let nodes: BTreeSet<String> = s.k(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"]).split_whitespace().map(String::from).collect();
    assert_eq!(nodes.len(), 3);
    assert_eq!(on_nodes(&s), nodes, "one pod per node");
    let ds = |f: &str| s.k(&["get", "ds", "agent", "-o", &format!("jsonpath={{.status.{f}}}")]);
    assert_eq!((ds("desiredNumberScheduled"), ds("currentNumberScheduled"), ds("numberReady")), ("3".into(), "3".into(), "3".into()));
    let p = &pods(&s, "app=agent")[0];
    let tolerations = p["spec"]["tolerations"].to_string();
    assert!(tolerations.contains("node.kubernetes.io/unschedulable") && tolerations.contains("node.kubernetes.io/not-ready"), "{tolerations}");
    assert_eq!(
        p["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchFields"][0]["key"],
        "metadata.name"
    );
    // The real node runs its pod.
    let mine = pods(&s, "app=agent").into_iter().find(|p| p["spec"]["nodeName"] == real.as_str()).unwrap();
    assert!(s.k(&["exec", mine["metadata"]["name"].as_str().unwrap(), "--", "echo", "hi"]).contains("hi"));

    // A taint the pods do not tolerate takes the node out; removing it brings it back.
    let sim = nodes.iter().find(|n| **n != real).unwrap().clone();
    s.k(&["taint", "node", &sim, "dedicated=db:NoSchedule"]);
    assert!(eventually(Duration::from_secs(30), || !on_nodes(&s).contains(&sim)), "the tainted node kept its daemon pod");
    assert!(eventually(Duration::from_secs(10), || ds("desiredNumberScheduled") == "2"));
    s.k(&["taint", "node", &sim, "dedicated=db:NoSchedule-"]);
    assert!(eventually(Duration::from_secs(30), || on_nodes(&s) == nodes));

    // A rolling update replaces every pod, one node at a time.
    s.k(&["set", "env", "daemonset/agent", "COLOR=blue"]);
    rollout(&s, "daemonset/agent");
    assert!(eventually(Duration::from_secs(30), || ds("updatedNumberScheduled") == "3"));
    for p in pods(&s, "app=agent").iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()) {
        assert!(p["spec"]["containers"][0]["env"].to_string().contains("COLOR"), "{p}");
    }
    // A node selector narrows it to the real node.
    s.k(&["patch", "daemonset", "agent", "-p", &format!(r#"{{"spec":{{"template":{{"spec":{{"nodeSelector":{{"kubernetes.io/hostname":"{real}"}}}}}}}}}}"#)]);
    assert!(eventually(Duration::from_secs(60), || on_nodes(&s) == BTreeSet::from([real.clone()])), "{:?}", on_nodes(&s));
    assert!(eventually(Duration::from_secs(10), || ds("desiredNumberScheduled") == "1"));
}

fn nanokube_node_name(s: &Server) -> String {
    s.k(&["get", "nodes", "-l", "!nanokube.io/simulated", "-o", "jsonpath={.items[0].metadata.name}"])
}

/// `persistentVolumeClaimRetentionPolicy`: with `Delete` the claims of pods removed by a
/// scale-down go with their pods, and the rest with the set; with the default `Retain`
/// every claim stays. Pods stay Pending here (no node): claims are made for them anyway.
#[test]
fn claims_follow_the_retention_policy() {
    let s = Server::start_with(&["--node=false"]);
    let set = |name: &str, policy: &str| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}}}\nspec:\n  serviceName: {name}\n  podManagementPolicy: Parallel\n  replicas: 3\n{policy}  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: main, image: \"web:1\"}}]}}\n  volumeClaimTemplates:\n  - metadata: {{name: data}}\n    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Mi}}}}}}\n"
        )
    };
    apply(&s, &set("gone", "  persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete, whenScaled: Delete}\n"));
    apply(&s, &set("kept", ""));
    let claims = || s.k(&["get", "pvc", "-o", "jsonpath={.items[*].metadata.name}"]);
    let all = "data-gone-0 data-gone-1 data-gone-2 data-kept-0 data-kept-1 data-kept-2";
    assert!(eventually(Duration::from_secs(20), || claims() == all), "{}", claims());
    for name in ["gone", "kept"] {
        s.k(&["scale", "statefulset", name, "--replicas=1"]);
    }
    let scaled = "data-gone-0 data-kept-0 data-kept-1 data-kept-2";
    assert!(eventually(Duration::from_secs(30), || claims() == scaled), "{}", claims());
    for name in ["gone", "kept"] {
        s.k(&["delete", "statefulset", name]);
    }
    let left = "data-kept-0 data-kept-1 data-kept-2";
    assert!(eventually(Duration::from_secs(30), || claims() == left), "{}", claims());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(claims(), left, "Retain keeps them");
}

/// A DaemonSet's rolling update with `maxSurge: 1, maxUnavailable: 0` starts each node's
/// new pod before its old one goes: at some moment a node holds both, and no node is
/// ever without a ready pod.
#[test]
fn a_daemonset_surges_during_its_rolling_update() {
    let s = Server::start_with(&["--node=false", "--simulated-nodes", "2", "--simulated-start-delay", "300ms"]);
    let ds = |color: &str| {
        format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: surge}}\nspec:\n  selector: {{matchLabels: {{app: surge}}}}\n  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}\n  template:\n    metadata: {{labels: {{app: surge}}}}\n    spec:\n      tolerations: [{{key: nanokube.io/simulated, operator: Exists}}]\n      containers: [{{name: main, image: \"web:1\", env: [{{name: COLOR, value: {color}}}]}}]\n"
        )
    };
    apply(&s, &ds("red"));
    rollout(&s, "daemonset/surge");
    apply(&s, &ds("blue"));
    let (mut most_on_a_node, mut fewest_ready_nodes) = (0, usize::MAX);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: Vec<Value> = pods(&s, "app=surge").into_iter().filter(|p| p["metadata"].get("deletionTimestamp").is_none()).collect();
        let mut per_node: std::collections::BTreeMap<String, (usize, bool)> = Default::default();
        for p in &live {
            let e = per_node.entry(p["spec"]["nodeName"].as_str().unwrap_or("").to_string()).or_default();
            e.0 += 1;
            let ready = p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
            e.1 |= ready;
        }
        most_on_a_node = most_on_a_node.max(per_node.values().map(|v| v.0).max().unwrap_or(0));
        fewest_ready_nodes = fewest_ready_nodes.min(per_node.values().filter(|v| v.1).count());
        let updated = live.iter().filter(|p| p["spec"]["containers"][0]["env"][0]["value"] == "blue").count();
        if updated == 2 && live.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the update did not finish: {live:?}");
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(most_on_a_node, 2, "a node held its old and new pod at once");
    assert_eq!(fewest_ready_nodes, 2, "no node was ever without a ready pod");
    rollout(&s, "daemonset/surge");
}

/// `updateStrategy: OnDelete`: a new template replaces no pod by itself; a pod the user
/// deletes comes back at the update revision, the others stay at the current one.
#[test]
fn an_on_delete_statefulset_waits_for_its_pods_to_be_deleted() {
    let s = Server::start_with(&["--node=false", "--simulated-nodes", "1", "--simulated-start-delay", "0s"]);
    let set = |color: &str| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: od}}\nspec:\n  serviceName: od\n  replicas: 2\n  updateStrategy: {{type: OnDelete}}\n  selector: {{matchLabels: {{app: od}}}}\n  template:\n    metadata: {{labels: {{app: od}}}}\n    spec:\n      tolerations: [{{key: nanokube.io/simulated, operator: Exists}}]\n      containers: [{{name: main, image: \"web:1\", env: [{{name: COLOR, value: {color}}}]}}]\n"
        )
    };
    apply(&s, &set("red"));
    let field = |f: &str| s.k(&["get", "statefulset", "od", "-o", &format!("jsonpath={{.status.{f}}}")]);
    assert!(eventually(Duration::from_secs(30), || field("readyReplicas") == "2"));
    let first = field("currentRevision");
    apply(&s, &set("blue"));
    assert!(eventually(Duration::from_secs(10), || !field("updateRevision").is_empty() && field("updateRevision") != first));
    let update = field("updateRevision");
    // Empty while the pod is gone (between its deletion and its replacement).
    let revision_of = |p: &str| {
        let out = s.kubectl(&["get", "pod", p, "-o", "jsonpath={.metadata.labels.controller-revision-hash}"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!((revision_of("od-0"), revision_of("od-1")), (first.clone(), first.clone()), "OnDelete replaced a pod by itself");
    assert_eq!(field("updatedReplicas"), "", "none updated (0 is left out, as Go's omitempty does)");
    s.k(&["delete", "pod", "od-1", "--wait=false"]);
    assert!(eventually(Duration::from_secs(30), || revision_of("od-1") == update), "od-1 came back at {}", revision_of("od-1"));
    assert_eq!(s.k(&["get", "pod", "od-1", "-o", "jsonpath={.spec.containers[0].env[0].value}"]), "blue");
    assert_eq!(revision_of("od-0"), first);
    assert!(eventually(Duration::from_secs(10), || field("updatedReplicas") == "1" && field("currentRevision") == first));
}
