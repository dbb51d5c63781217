//! The garbage collector with real kubectl deletes: background cascade through
//! Deployment → ReplicaSet → Pod, orphaning, foreground deletion, several owners.

mod common;

use std::time::Duration;

use common::{eventually, Server};
fn uid(s: &Server, path: &str) -> String {
    s.get_json(path).1["metadata"]["uid"].as_str().unwrap().to_string()
}

/// A Deployment `name`, a ReplicaSet it owns and two Pods the ReplicaSet owns (not as
/// their controller: the ReplicaSet controller would release pods outside its selector;
/// the garbage collector follows every owner reference alike).
fn chain(s: &Server, name: &str, block: bool) {
    s.k(&["create", "deployment", name, "--image=nginx"]);
    let d_uid = uid(s, &format!("/apis/apps/v1/namespaces/default/deployments/{name}"));
    let rs = format!(
        r#"{{"apiVersion":"apps/v1","kind":"ReplicaSet","metadata":{{"name":"{name}-rs","labels":{{"app":"{name}"}},"ownerReferences":[{{"apiVersion":"apps/v1","kind":"Deployment","name":"{name}","uid":"{d_uid}","controller":true,"blockOwnerDeletion":{block}}}]}},
            "spec":{{"selector":{{"matchLabels":{{"app":"{name}"}}}},"template":{{"metadata":{{"labels":{{"app":"{name}"}}}},"spec":{{"containers":[{{"name":"c","image":"nginx"}}]}}}}}}}}"#
    );
    let (code, body) = s.curl("POST", "/apis/apps/v1/namespaces/default/replicasets", Some("application/json"), Some(rs.as_bytes()));
    assert_eq!(code, 201, "{body}");
    let rs_uid = uid(s, &format!("/apis/apps/v1/namespaces/default/replicasets/{name}-rs"));
    for i in 0..2 {
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}-pod-{i}","ownerReferences":[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"{name}-rs","uid":"{rs_uid}","controller":false,"blockOwnerDeletion":{block}}}]}},"spec":{{"containers":[{{"name":"c","image":"nginx"}}]}}}}"#
        );
        let (code, body) = s.curl("POST", "/api/v1/namespaces/default/pods", Some("application/json"), Some(pod.as_bytes()));
        assert_eq!(code, 201, "{body}");
    }
}

fn exists(s: &Server, path: &str) -> bool {
    s.curl("GET", path, None, None).0 == 200
}

#[test]
fn background_cascade_removes_replicasets_and_pods() {
    let s = Server::start();
    chain(&s, "bg", false);
    assert_eq!(s.k(&["delete", "deployment", "bg"]).trim(), "deployment.apps \"bg\" deleted");
    assert!(eventually(Duration::from_secs(10), || !exists(&s, "/apis/apps/v1/namespaces/default/replicasets/bg-rs")));
    assert!(eventually(Duration::from_secs(10), || !exists(&s, "/api/v1/namespaces/default/pods/bg-pod-0")
        && !exists(&s, "/api/v1/namespaces/default/pods/bg-pod-1")));
}

#[test]
fn orphan_keeps_dependents_and_clears_their_owner_references() {
    let s = Server::start();
    chain(&s, "or", false);
    let out = s.kubectl(&["delete", "deployment", "or", "--cascade=orphan"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(10), || !exists(&s, "/apis/apps/v1/namespaces/default/deployments/or")));
    std::thread::sleep(Duration::from_millis(300));
    let rs = s.get_json("/apis/apps/v1/namespaces/default/replicasets/or-rs").1;
    assert_eq!(rs["kind"], "ReplicaSet", "the ReplicaSet stays");
    assert!(rs["metadata"].get("ownerReferences").is_none(), "and no longer names its owner: {rs}");
    assert!(exists(&s, "/api/v1/namespaces/default/pods/or-pod-0"), "grandchildren stay too");
}

#[test]
fn foreground_deletes_dependents_before_the_owner() {
    let s = Server::start();
    chain(&s, "fg", true);
    // kubectl waits for the Deployment itself to disappear, which foreground deletion
    // allows only after the blocking dependents are gone.
    let out = s.kubectl(&["delete", "deployment", "fg", "--cascade=foreground", "--timeout=20s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!exists(&s, "/apis/apps/v1/namespaces/default/deployments/fg"));
    assert!(!exists(&s, "/apis/apps/v1/namespaces/default/replicasets/fg-rs"), "dependents were deleted first");
    assert!(!exists(&s, "/api/v1/namespaces/default/pods/fg-pod-0"));
}

#[test]
fn a_dependent_with_another_living_owner_stays() {
    let s = Server::start();
    s.k(&["create", "configmap", "owner-a"]);
    s.k(&["create", "configmap", "owner-b"]);
    let (a, b) = (uid(&s, "/api/v1/namespaces/default/configmaps/owner-a"), uid(&s, "/api/v1/namespaces/default/configmaps/owner-b"));
    let dep = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"shared","ownerReferences":[{{"apiVersion":"v1","kind":"ConfigMap","name":"owner-a","uid":"{a}"}},{{"apiVersion":"v1","kind":"ConfigMap","name":"owner-b","uid":"{b}"}}]}}}}"#
    );
    assert_eq!(s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(dep.as_bytes())).0, 201);
    s.k(&["delete", "configmap", "owner-a"]);
    assert!(eventually(Duration::from_secs(10), || {
        let refs = s.get_json("/api/v1/namespaces/default/configmaps/shared").1["metadata"]["ownerReferences"].clone();
        refs.as_array().is_some_and(|r| r.len() == 1 && r[0]["name"] == "owner-b")
    }));
    s.k(&["delete", "configmap", "owner-b"]);
    assert!(eventually(Duration::from_secs(10), || !exists(&s, "/api/v1/namespaces/default/configmaps/shared")));
}
