//! Names made from a pod template's hash, as kube-controller-manager 1.33 makes them
//! (`ComputeHash`: go-spew's dump of the Go struct), checked through the real kubectl:
//!
//! - `kubectl create deployment nginx --image=nginx` gets the ReplicaSet
//!   `nginx-5869d7778c`, the name published transcripts show real clusters (kind,
//!   minikube, AKS, microk8s) giving it;
//! - the others were computed by Go from the templates as the server stores them
//!   (upstream's `ComputeHash` on the v0.33.0 types, with go-spew at the revision
//!   Kubernetes pins), so they also check the server's defaults and the quantities'
//!   canonical forms end to end;
//! - a name collision hashes the collision count in, as upstream does (checked by name
//!   in `controllers_deployments`).

mod common;

use std::time::Duration;

use common::{eventually, Server};

fn names(s: &Server, what: &str, ns: &str) -> String {
    s.k(&["get", what, "-n", ns, "-o", "jsonpath={.items[*].metadata.name}"])
}

#[test]
fn replica_sets_and_daemonset_revisions_are_named_as_upstream_names_them() {
    let s = Server::start_with(&["--node=false"]);
    s.k(&["create", "deployment", "nginx", "--image=nginx"]);
    assert!(eventually(Duration::from_secs(10), || names(&s, "rs", "default") == "nginx-5869d7778c"), "{}", names(&s, "rs", "default"));
    assert_eq!(s.k(&["get", "rs", "nginx-5869d7778c", "-o", "jsonpath={.metadata.labels.pod-template-hash}"]), "5869d7778c");

    // Quantities written as no kube-apiserver stores them ("0.5", 1, 1.5Gi), a named
    // probe port, escaped characters and an empty volume source.
    let sized = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: sized}
spec:
  replicas: 1
  selector: {matchLabels: {app: sized}}
  template:
    metadata: {labels: {app: sized}, annotations: {team: "a&b <c>"}}
    spec:
      containers:
      - name: main
        image: "web:1"
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: "0.5", memory: 1.5Gi}, limits: {cpu: 1, memory: 2Gi}}
        readinessProbe: {httpGet: {path: /, port: http}}
        env: [{name: A, value: "1"}]
      volumes: [{name: scratch, emptyDir: {}}]
"#;
    let daemon = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      tolerations: [{key: nanokube.io/simulated, operator: Exists}]
      containers: [{name: main, image: "busybox:1.36", command: [sh, -c, "sleep 3600"]}]
"#;
    for yaml in [sized, daemon] {
        let out = s.k_stdin(&["apply", "-f", "-"], yaml);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(eventually(Duration::from_secs(10), || names(&s, "rs", "default").contains("sized-56b8f9bc9b")), "{}", names(&s, "rs", "default"));
    assert!(
        eventually(Duration::from_secs(10), || names(&s, "controllerrevisions", "default") == "agent-76c996fc86"),
        "{}",
        names(&s, "controllerrevisions", "default")
    );
    assert_eq!(s.k(&["get", "controllerrevision", "agent-76c996fc86", "-o", "jsonpath={.metadata.labels.controller-revision-hash}"]), "76c996fc86");
}
