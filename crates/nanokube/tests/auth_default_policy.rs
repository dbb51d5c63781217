//! The default RBAC policy is kube-apiserver 1.33's: every ClusterRole, ClusterRoleBinding,
//! Role and RoleBinding it bootstraps, with the same rules, role references and subjects
//! (expected values read from a real kube-apiserver 1.33, in `tests/upstream-1.33/`), seen
//! alike by every kubectl 1.27–1.33; `admin`, `edit` and `view` aggregated from the roles
//! their selectors match, users' roles included; deleted defaults come back.

mod common;

use std::collections::BTreeMap;

use common::{eventually, Server};
use serde_json::{json, Value};

fn expected(file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream-1.33").join(file)).unwrap();
    let mut lines: Vec<String> = text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|l| !l.is_empty()).collect();
    lines.sort();
    lines
}

fn sorted_lines(out: &str, f: impl Fn(&str) -> String) -> Vec<String> {
    let mut lines: Vec<String> = out.lines().filter(|l| !l.trim().is_empty()).map(f).collect();
    lines.sort();
    lines
}

#[test]
fn every_kubectl_lists_upstreams_default_policy() {
    let s = Server::start();
    for bin in ["kubectl", "kubectl.1.27", "kubectl.1.28", "kubectl.1.29", "kubectl.1.30", "kubectl.1.31", "kubectl.1.32", "kubectl.1.33"] {
        let run = |args: &[&str]| {
            let out = s.kubectl_bin(bin, args);
            assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        let name_only = |l: &str| l.rsplit('/').next().unwrap().trim().to_string();
        assert_eq!(sorted_lines(&run(&["get", "clusterroles", "-o", "name"]), name_only), expected("clusterroles.txt"), "{bin}");
        assert_eq!(sorted_lines(&run(&["get", "clusterrolebindings", "-o", "name"]), name_only), expected("clusterrolebindings.txt"), "{bin}");
        let ns_and_name = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        assert_eq!(run(&["get", "roles,rolebindings", "-A", "--no-headers", "-o", "name"]).lines().count(), 14, "{bin}");
        let with_ns = run(&["get", "roles,rolebindings", "-A", "--no-headers", "-o", "custom-columns=NS:.metadata.namespace,KIND:.kind,NAME:.metadata.name"]);
        let ours = sorted_lines(&with_ns, |l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}.rbac.authorization.k8s.io/{}", f[0], f[1].to_lowercase(), f[2])
        });
        assert_eq!(ours, expected("namespaced-rbac.txt").iter().map(|l| ns_and_name(l)).collect::<Vec<_>>(), "{bin}");
    }
}

#[test]
fn default_objects_have_upstreams_rules_subjects_and_role_references() {
    let s = Server::start();
    let data: Value = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../nanokube-controllers/data/rbac-bootstrap-1.33.json")).unwrap(),
    )
    .unwrap();
    let mut checked = BTreeMap::new();
    for want in data["items"].as_array().unwrap() {
        let kind = want["kind"].as_str().unwrap();
        let name = want["metadata"]["name"].as_str().unwrap();
        let plural = format!("{}s", kind.to_lowercase());
        let path = match want["metadata"]["namespace"].as_str() {
            Some(ns) => format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}/{}", name.replace(':', "%3A")),
            None => format!("/apis/rbac.authorization.k8s.io/v1/{plural}/{}", name.replace(':', "%3A")),
        };
        let (code, got) = s.get_json(&path);
        assert_eq!(code, 200, "{kind} {name}");
        assert_eq!(got["metadata"]["labels"], want["metadata"]["labels"], "{kind} {name}");
        assert_eq!(got["metadata"]["annotations"], want["metadata"]["annotations"], "{kind} {name}");
        for field in ["roleRef", "subjects", "aggregationRule"] {
            assert_eq!(got.get(field), want.get(field), "{kind} {name} {field}");
        }
        if want.get("aggregationRule").is_none() {
            assert_eq!(got["rules"], want["rules"], "{kind} {name}");
        }
        *checked.entry(kind.to_string()).or_insert(0) += 1;
    }
    assert_eq!(checked, BTreeMap::from([("ClusterRole".into(), 67), ("ClusterRoleBinding".into(), 48), ("Role".into(), 7), ("RoleBinding".into(), 7)]));
}

fn can_i(s: &Server, user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", user];
    all.extend_from_slice(args);
    let out = s.kubectl(&all);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn admin_edit_and_view_are_aggregated_and_follow_labelled_roles() {
    let s = Server::start();
    let rules = |role: &str| s.get_json(&format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}")).1["rules"].as_array().cloned().unwrap_or_default();
    let (view, edit, admin) = (rules("view"), rules("edit"), rules("admin"));
    assert!(!view.is_empty());
    // Each takes in the one below it.
    assert!(view.iter().all(|r| edit.contains(r)), "edit lacks some of view's rules");
    assert!(edit.iter().all(|r| admin.contains(r)), "admin lacks some of edit's rules");
    assert!(admin.len() > edit.len() && edit.len() > view.len());

    s.k(&["create", "namespace", "team"]);
    s.k(&["create", "rolebinding", "viewers", "--clusterrole=view", "--user=vera", "-n", "team"]);
    s.k(&["create", "rolebinding", "editors", "--clusterrole=edit", "--user=ed", "-n", "team"]);
    assert!(can_i(&s, "vera", &["list", "configmaps", "-n", "team"]));
    assert!(!can_i(&s, "vera", &["create", "configmaps", "-n", "team"]));
    assert!(!can_i(&s, "vera", &["get", "secrets", "-n", "team"]), "view does not read secrets");
    assert!(can_i(&s, "ed", &["create", "deployments.apps", "-n", "team"]));
    assert!(!can_i(&s, "ed", &["create", "rolebindings.rbac.authorization.k8s.io", "-n", "team"]), "edit does not grant RBAC");

    // A CRD author's role labelled to join view: view gains its rule, and loses it with
    // the label.
    let widgets = json!({"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}}, "rules": [widgets]});
    let (code, body) = s.curl("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", Some("application/json"), Some(role.to_string().as_bytes()));
    assert_eq!(code, 201, "{body}");
    for r in ["view", "edit", "admin"] {
        assert!(eventually(std::time::Duration::from_secs(10), || rules(r).contains(&widgets)), "{r} did not take the labelled role in");
    }
    s.k(&["label", "clusterrole", "widgets-view", "rbac.authorization.k8s.io/aggregate-to-view-"]);
    for r in ["view", "edit", "admin"] {
        assert!(eventually(std::time::Duration::from_secs(10), || !rules(r).contains(&widgets)), "{r} kept the unlabelled role's rule");
    }
    assert_eq!(rules("view"), view);
}

#[test]
fn deleted_defaults_come_back_and_removed_rules_are_added_back() {
    let s = Server::start();
    for (what, path) in [
        ("clusterrole", "/apis/rbac.authorization.k8s.io/v1/clusterroles/system%3Anode"),
        ("clusterrolebinding", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system%3Akube-scheduler"),
        ("role", "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-system/roles/extension-apiserver-authentication-reader"),
        ("rolebinding", "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-public/rolebindings/system%3Acontroller%3Abootstrap-signer"),
    ] {
        let (_, before) = s.get_json(path);
        let (code, body) = s.curl("DELETE", path, None, None);
        assert_eq!(code, 200, "{what}: {body}");
        assert!(
            eventually(std::time::Duration::from_secs(10), || {
                let (code, now) = s.get_json(path);
                code == 200 && now["metadata"]["uid"] != before["metadata"]["uid"]
            }),
            "{what} not recreated"
        );
    }
    // The selectors of an aggregated role are reconciled too.
    let path = "/apis/rbac.authorization.k8s.io/v1/clusterroles/view";
    let (code, body) = s.curl("PATCH", path, Some("application/merge-patch+json"), Some(br#"{"aggregationRule":{"clusterRoleSelectors":[]}}"#));
    assert_eq!(code, 200, "{body}");
    assert!(eventually(std::time::Duration::from_secs(10), || s.get_json(path).1["aggregationRule"]["clusterRoleSelectors"]
        .as_array()
        .is_some_and(|a| !a.is_empty())));
}
