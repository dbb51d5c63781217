//! Quantities are stored and served as kube-apiserver writes them after decoding: every
//! `resource.Quantity` field of every built-in kind (a Deployment's template, a
//! LimitRange, a claim, a quota; in maps, lists and nested messages; from YAML numbers
//! as from strings), in upstream's canonical form or as written where Go keeps the
//! written string; one Go would not decode is refused (400) in its decoder's words and
//! nothing is stored.

mod common;

use common::Server;

#[test]
fn quantities_are_stored_in_upstreams_canonical_form() {
    let s = Server::start_with(&["--node=false"]);
    let yaml = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec:
      containers: [{name: c, image: x, resources: {requests: {cpu: 0.5, memory: 1.5Gi}, limits: {cpu: 1, memory: "+1Gi"}}}]
      volumes: [{name: v, emptyDir: {sizeLimit: 1048576000}}]
---
apiVersion: v1
kind: LimitRange
metadata: {name: lr}
spec: {limits: [{type: Container, max: {cpu: 2.5}, default: {memory: 0.5Gi}}]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: c}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 2048Mi}}}
---
apiVersion: v1
kind: ResourceQuota
metadata: {name: q}
spec: {hard: {requests.cpu: 1.5, limits.memory: "1e3", pods: "10"}}
"#;
    let out = s.k_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let get = |what: &str, path: &str| s.k(&["get", what, "-o", &format!("jsonpath={path}")]);
    assert_eq!(
        get("deployment/d", "{.spec.template.spec.containers[0].resources}"),
        r#"{"limits":{"cpu":"1","memory":"+1Gi"},"requests":{"cpu":"500m","memory":"1536Mi"}}"#
    );
    assert_eq!(get("deployment/d", "{.spec.template.spec.volumes[0].emptyDir.sizeLimit}"), "1048576k");
    assert_eq!(
        get("limitrange/lr", "{.spec.limits[0]}"),
        r#"{"default":{"cpu":"2500m","memory":"512Mi"},"defaultRequest":{"cpu":"2500m","memory":"512Mi"},"max":{"cpu":"2500m"},"type":"Container"}"#
    );
    assert_eq!(get("pvc/c", "{.spec.resources.requests.storage}"), "2Gi");
    assert_eq!(get("resourcequota/q", "{.spec.hard}"), r#"{"limits.memory":"1e3","pods":"10","requests.cpu":"1500m"}"#);

    // Refused as Go's decoder refuses it, and nothing stored.
    let bad =
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"bad"},"spec":{"containers":[{"name":"c","image":"x","resources":{"requests":{"cpu":"12x"}}}]}}"#;
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/pods", Some("application/json"), Some(bad.as_bytes()));
    assert_eq!(code, 400, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "BadRequest");
    assert_eq!(
        status["message"],
        r#"Pod in version "v1" cannot be handled as a Pod: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"#
    );
    let bad_suffix = bad.replace("12x", "1Mi-");
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/pods", Some("application/json"), Some(bad_suffix.as_bytes()));
    assert!(code == 400 && body.contains("unable to parse quantity's suffix"), "{code} {body}");
    assert!(!s.kubectl(&["get", "pod", "bad"]).status.success());

    // A status write's quantities too (the written part only is decoded): a Node made
    // by hand, whose status nothing else writes.
    let out = s.k_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Node\nmetadata: {name: manual}\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, body) = s.curl(
        "PATCH",
        "/api/v1/nodes/manual/status",
        Some("application/merge-patch+json"),
        Some(br#"{"status":{"capacity":{"cpu":2.0,"memory":"1.5Gi","pods":"110"}}}"#),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(get("node/manual", "{.status.capacity}"), r#"{"cpu":"2","memory":"1536Mi","pods":"110"}"#);
}
