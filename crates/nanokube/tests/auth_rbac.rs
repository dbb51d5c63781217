//! RBAC as upstream enforces it: a matrix of subjects × verbs × resources checked through
//! real requests and `kubectl auth can-i`; users made by `nanokube user add`;
//! impersonation; escalation prevention; and the audit log.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::{eventually, kubectl_path, Server};
use serde_json::Value;

/// A subject that can call the API: a kubeconfig, or a bearer token.
enum Who {
    Kubeconfig(PathBuf),
    Token(String),
    Anonymous,
}

fn user_add(s: &Server, name: &str, groups: &[&str]) -> PathBuf {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nanokube"));
    c.args(["user", "add", name, "--data-dir"]).arg(&s.data);
    for g in groups {
        c.args(["--group", g]);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn cert_files(kubeconfig: &Path) -> (PathBuf, PathBuf) {
    let v: Value = serde_json::to_value(serde_norway::from_str::<serde_norway::Value>(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap()).unwrap();
    let dec = |k: &str| base64::engine::general_purpose::STANDARD.decode(v["users"][0]["user"][k].as_str().unwrap()).unwrap();
    let crt = kubeconfig.with_extension("crt");
    let key = kubeconfig.with_extension("key");
    std::fs::write(&crt, dec("client-certificate-data")).unwrap();
    std::fs::write(&key, dec("client-key-data")).unwrap();
    (crt, key)
}

/// curl as `who`; returns what `-w write_out` prints.
fn curl_as(s: &Server, who: &Who, method: &str, path: &str, body: Option<&str>, write_out: &str) -> String {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-w", write_out, "-X", method, "--cacert"]).arg(s.data.join("ca.crt"));
    match who {
        Who::Kubeconfig(k) => {
            let (crt, key) = cert_files(k);
            c.arg("--cert").arg(crt).arg("--key").arg(key);
        }
        Who::Token(t) => {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        Who::Anonymous => {}
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.arg(format!("{}{}", s.url, path)).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn call(s: &Server, who: &Who, method: &str, path: &str, body: Option<&str>) -> u16 {
    curl_as(s, who, method, path, body, "%{http_code}").parse().unwrap()
}

/// A GET as `who`; returns the `Audit-Id` the server gave the request.
fn call_with_audit_id(s: &Server, who: &Who, path: &str) -> String {
    let id = curl_as(s, who, "GET", path, None, "%header{audit-id}");
    assert!(!id.is_empty(), "no Audit-Id for {path}");
    id
}

fn can_i(s: &Server, kubeconfig: &Path, args: &[&str]) -> bool {
    let home = s.dir.path().join("home-cani");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(kubectl_path("kubectl")).args(["auth", "can-i"]).args(args).env("KUBECONFIG", kubeconfig).env("HOME", &home).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(said == "yes" || said.starts_with("no"), "can-i said {said:?}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.success(), said == "yes");
    said == "yes"
}

const POLICY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: team}
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: jane-reads-pods, namespace: team}
subjects: [{kind: User, name: jane, apiGroup: rbac.authorization.k8s.io}]
roleRef: {kind: Role, name: pod-reader, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: one-configmap}
rules:
- apiGroups: [""]
  resources: ["configmaps"]
  resourceNames: ["public-cm"]
  verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: devs-read-public-cm, namespace: team}
subjects: [{kind: Group, name: devs, apiGroup: rbac.authorization.k8s.io}]
roleRef: {kind: ClusterRole, name: one-configmap, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ops-view}
subjects: [{kind: Group, name: ops, apiGroup: rbac.authorization.k8s.io}]
roleRef: {kind: ClusterRole, name: view, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: ci, namespace: team}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: ci-edit, namespace: team}
subjects: [{kind: ServiceAccount, name: ci}]
roleRef: {kind: ClusterRole, name: edit, apiGroup: rbac.authorization.k8s.io}
"#;

#[test]
fn rbac_matrix_through_requests_and_can_i() {
    let s = Server::start();
    let out = s.k_stdin(&["apply", "-f", "-"], POLICY);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.k(&["create", "configmap", "public-cm", "-n", "team"]);
    s.k(&["create", "configmap", "private-cm", "-n", "team"]);
    s.k(&["create", "configmap", "public-cm", "-n", "other"]);
    let jane = user_add(&s, "jane", &["devs"]);
    let bob = user_add(&s, "bob", &["ops"]);
    let ci_token = s.k(&["create", "token", "ci", "-n", "team"]).trim().to_string();
    let default_token = s.k(&["create", "token", "default", "-n", "team"]).trim().to_string();
    // The authorizer's index follows the store by watch; wait until it has the policy.
    assert!(eventually(Duration::from_secs(5), || call(&s, &Who::Kubeconfig(jane.clone()), "GET", "/api/v1/namespaces/team/pods", None) == 200));

    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"new"}}"#;
    // (who, method, path, body, allowed, can-i args for kubeconfig subjects)
    type Cell<'a> = (&'a str, &'a str, String, Option<&'a str>, bool, Vec<&'a str>);
    let cells: Vec<Cell> = vec![
        ("jane", "GET", "/api/v1/namespaces/team/pods".into(), None, true, vec!["list", "pods", "-n", "team"]),
        ("jane", "GET", "/api/v1/namespaces/other/pods".into(), None, false, vec!["list", "pods", "-n", "other"]),
        ("jane", "DELETE", "/api/v1/namespaces/team/pods/x".into(), None, false, vec!["delete", "pods", "-n", "team"]),
        ("jane", "GET", "/api/v1/namespaces/team/pods/x/log".into(), None, true, vec!["get", "pods", "--subresource=log", "-n", "team"]),
        ("jane", "GET", "/api/v1/namespaces/team/pods/x/exec".into(), None, false, vec!["get", "pods", "--subresource=exec", "-n", "team"]),
        ("jane", "GET", "/api/v1/namespaces/team/configmaps/public-cm".into(), None, true, vec!["get", "configmaps/public-cm", "-n", "team"]),
        ("jane", "GET", "/api/v1/namespaces/team/configmaps/private-cm".into(), None, false, vec!["get", "configmaps/private-cm", "-n", "team"]),
        ("jane", "GET", "/api/v1/namespaces/team/configmaps".into(), None, false, vec!["list", "configmaps", "-n", "team"]),
        ("jane", "GET", "/api/v1/namespaces/other/configmaps/public-cm".into(), None, false, vec!["get", "configmaps/public-cm", "-n", "other"]),
        ("jane", "GET", "/api".into(), None, true, vec!["get", "/api"]),
        ("jane", "GET", "/metrics".into(), None, false, vec!["get", "/metrics"]),
        ("bob", "GET", "/api/v1/namespaces/other/pods".into(), None, true, vec!["list", "pods", "-n", "other"]),
        ("bob", "GET", "/api/v1/pods".into(), None, true, vec!["list", "pods", "--all-namespaces"]),
        ("bob", "GET", "/api/v1/namespaces/team/secrets".into(), None, false, vec!["list", "secrets", "-n", "team"]),
        ("bob", "GET", "/apis/apps/v1/namespaces/team/deployments".into(), None, true, vec!["list", "deployments.apps", "-n", "team"]),
        ("bob", "POST", "/api/v1/namespaces/team/configmaps".into(), Some(cm), false, vec!["create", "configmaps", "-n", "team"]),
        ("bob", "GET", "/api/v1/nodes".into(), None, false, vec!["list", "nodes"]),
        ("ci", "POST", "/api/v1/namespaces/team/configmaps".into(), Some(cm), true, vec![]),
        ("ci", "GET", "/api/v1/namespaces/team/secrets".into(), None, true, vec![]),
        ("ci", "GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings".into(), None, false, vec![]),
        ("ci", "POST", "/api/v1/namespaces/other/configmaps".into(), Some(cm), false, vec![]),
        ("default", "GET", "/apis".into(), None, true, vec![]),
        (
            "default",
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews".into(),
            Some(
                r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{"resourceAttributes":{"verb":"list","resource":"pods","namespace":"team"}}}"#,
            ),
            true,
            vec![],
        ),
        ("default", "GET", "/api/v1/namespaces/team/pods".into(), None, false, vec![]),
        ("default", "GET", "/api/v1/namespaces/team/configmaps".into(), None, false, vec![]),
        ("anonymous", "GET", "/api".into(), None, false, vec![]),
        ("anonymous", "GET", "/healthz".into(), None, true, vec![]),
        ("anonymous", "GET", "/version".into(), None, true, vec![]),
    ];
    let mut failures = Vec::new();
    for (who, method, path, body, allowed, can_i_args) in &cells {
        let subject = match *who {
            "jane" => Who::Kubeconfig(jane.clone()),
            "bob" => Who::Kubeconfig(bob.clone()),
            "ci" => Who::Token(ci_token.clone()),
            "default" => Who::Token(default_token.clone()),
            _ => Who::Anonymous,
        };
        let code = call(&s, &subject, method, path, *body);
        if (code != 403) != *allowed || code == 401 {
            failures.push(format!("{who} {method} {path}: HTTP {code}, expected {}", if *allowed { "allowed" } else { "403" }));
        }
        if let (Who::Kubeconfig(k), false) = (&subject, can_i_args.is_empty()) {
            if can_i(&s, k, can_i_args) != *allowed {
                failures.push(format!("{who} can-i {can_i_args:?}: expected {allowed}"));
            }
        }
    }
    assert!(failures.is_empty(), "RBAC matrix mismatches:\n{}", failures.join("\n"));

    // whoami shows the certificate's CN and O.
    let home = s.dir.path().join("home-jane");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(kubectl_path("kubectl")).args(["auth", "whoami"]).env("KUBECONFIG", &jane).env("HOME", &home).output().unwrap();
    let who = String::from_utf8_lossy(&out.stdout);
    assert!(who.contains("Username    jane") && who.contains("[devs system:authenticated]"), "{who}");
    // can-i --list shows the rules that apply in the namespace.
    let out =
        Command::new(kubectl_path("kubectl")).args(["auth", "can-i", "--list", "-n", "team"]).env("KUBECONFIG", &jane).env("HOME", &home).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.lines().any(|l| l.starts_with("pods ") && l.contains("[get list watch]")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("configmaps ") && l.contains("[public-cm]")), "{list}");
}

#[test]
fn impersonation_and_escalation_prevention() {
    let s = Server::start();
    s.k(&["create", "namespace", "team"]);
    s.k(&["create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", "team"]);
    s.k(&[
        "create",
        "role",
        "rbac-editor",
        "--verb=create,get,list",
        "--resource=roles.rbac.authorization.k8s.io,rolebindings.rbac.authorization.k8s.io",
        "-n",
        "team",
    ]);
    s.k(&["create", "rolebinding", "jane-pods", "--role=pod-reader", "--user=jane", "-n", "team"]);
    s.k(&["create", "rolebinding", "jane-rbac", "--role=rbac-editor", "--user=jane", "-n", "team"]);
    let jane = user_add(&s, "jane", &[]);
    let kj = |args: &[&str]| -> std::process::Output {
        let home = s.dir.path().join("home-j");
        std::fs::create_dir_all(&home).unwrap();
        Command::new(kubectl_path("kubectl")).args(args).env("KUBECONFIG", &jane).env("HOME", &home).output().unwrap()
    };
    assert!(eventually(Duration::from_secs(5), || kj(&["get", "pods", "-n", "team"]).status.success()));

    // Admins may impersonate; --as shows the impersonated identity.
    let who = s.k(&["auth", "whoami", "--as=jane", "--as-group=devs"]);
    assert!(who.contains("Username    jane") && who.contains("devs"), "{who}");
    assert_eq!(s.k(&["auth", "can-i", "list", "pods", "-n", "team", "--as=jane"]).trim(), "yes");
    // Others may not.
    let out = kj(&["get", "pods", "-n", "team", "--as=bob"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"users "bob" is forbidden: User "jane" cannot impersonate resource "users" in API group "" at the cluster scope"#), "{err}");

    // A role within what she holds is fine; more is refused.
    let ok = kj(&["create", "role", "subset", "--verb=get", "--resource=pods", "-n", "team"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = kj(&["create", "role", "superset", "--verb=get,delete", "--resource=pods", "-n", "team"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("is attempting to grant RBAC permissions not currently held") && err.contains("delete"), "{err}");
    // Binding a ClusterRole she does not hold is refused; one she holds is fine.
    let bad = kj(&["create", "rolebinding", "make-me-admin", "--clusterrole=admin", "--user=jane", "-n", "team"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains(r#"rolebindings.rbac.authorization.k8s.io "make-me-admin" is forbidden: user "jane""#)
            && err.contains("attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    let ok = kj(&["create", "rolebinding", "share", "--role=pod-reader", "--user=max", "-n", "team"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // With the `bind` verb on that ClusterRole, the binding is allowed.
    s.k(&["create", "role", "bind-admin", "--verb=bind", "--resource=clusterroles.rbac.authorization.k8s.io", "--resource-name=admin", "-n", "team"]);
    s.k(&["create", "rolebinding", "jane-bind", "--role=bind-admin", "--user=jane", "-n", "team"]);
    assert!(eventually(Duration::from_secs(5), || kj(&["create", "rolebinding", "make-me-admin", "--clusterrole=admin", "--user=jane", "-n", "team"])
        .status
        .success()));
}

#[test]
fn audit_log_has_one_line_per_request_and_no_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let s = Server::start_with(&["--audit-log-path", log.to_str().unwrap()]);
    let token = s.k(&["create", "token", "default"]).trim().to_string();
    // Each request's own audit ID (the `Audit-Id` response header) finds its line: the log
    // is written by a thread of its own, so counting lines races with earlier requests.
    let mut ids = Vec::new();
    for path in ["/api", "/api/v1/namespaces/default/pods", "/version"] {
        ids.push((path, call_with_audit_id(&s, &Who::Token(token.clone()), path)));
    }
    ids.push(("/api", call_with_audit_id(&s, &Who::Anonymous, "/api")));
    let read = || -> Vec<Value> { std::fs::read_to_string(&log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect() };
    let count = |events: &[Value], id: &str| events.iter().filter(|e| e["auditID"] == id).count();
    assert!(
        eventually(Duration::from_secs(5), || {
            let events = read();
            ids.iter().all(|(_, id)| count(&events, id) > 0)
        }),
        "every request is logged"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&token), "the audit log must not contain tokens");
    let events = read();
    for (path, id) in &ids {
        assert_eq!(count(&events, id), 1, "exactly one line for {path} ({id})");
        let e = events.iter().find(|e| e["auditID"] == id.as_str()).unwrap();
        assert_eq!(e["requestURI"], *path);
    }
    for e in &events {
        assert_eq!(e["kind"], "Event");
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(e["level"], "Metadata");
        for f in ["auditID", "stage", "requestURI", "verb", "user", "sourceIPs", "userAgent", "responseStatus", "requestReceivedTimestamp", "stageTimestamp"] {
            assert!(e.get(f).is_some(), "{f} missing in {e}");
        }
    }
    let by_id = |i: usize| events.iter().find(|e| e["auditID"] == ids[i].1.as_str()).unwrap();
    let pods = by_id(1);
    assert_eq!(pods["user"]["username"], "system:serviceaccount:default:default");
    assert_eq!(pods["responseStatus"]["code"], 403);
    assert_eq!(pods["objectRef"]["resource"], "pods");
    assert_eq!(pods["objectRef"]["namespace"], "default");
    assert_eq!(pods["annotations"]["authorization.k8s.io/decision"], "forbid");
    assert_eq!(pods["annotations"]["authorization.k8s.io/reason"], "", "RBAC gives no reason for a refusal");
    // An allowed request names the binding that allowed it, as upstream's RBAC.
    let api = by_id(0);
    assert_eq!(api["annotations"]["authorization.k8s.io/decision"], "allow");
    assert_eq!(
        api["annotations"]["authorization.k8s.io/reason"],
        "RBAC: allowed by ClusterRoleBinding \"system:discovery\" of ClusterRole \"system:discovery\" to Group \"system:authenticated\""
    );
    let anon = by_id(3);
    assert_eq!(anon["user"]["username"], "system:anonymous");
    // A RoleBinding to the service account: named as upstream names it (binding/namespace,
    // account/namespace).
    s.k(&["create", "rolebinding", "pod-reader", "--clusterrole=view", "--serviceaccount=default:default"]);
    let mut id = String::new();
    assert!(eventually(Duration::from_secs(5), || {
        id = call_with_audit_id(&s, &Who::Token(token.clone()), "/api/v1/namespaces/default/pods");
        eventually(Duration::from_secs(2), || read().iter().any(|e| e["auditID"] == id.as_str()))
            && read().iter().any(|e| e["auditID"] == id.as_str() && e["annotations"]["authorization.k8s.io/decision"] == "allow")
    }));
    let e = read().into_iter().find(|e| e["auditID"] == id.as_str()).unwrap();
    assert_eq!(
        e["annotations"]["authorization.k8s.io/reason"],
        "RBAC: allowed by RoleBinding \"pod-reader/default\" of ClusterRole \"view\" to ServiceAccount \"default/default\""
    );
}

#[test]
fn new_user_is_denied_until_bound_and_reviews_answer_for_others() {
    let s = Server::start();
    let jane = user_add(&s, "jane", &["devs"]);
    let home = s.dir.path().join("home-new");
    std::fs::create_dir_all(&home).unwrap();
    let kj = |args: &[&str]| Command::new(kubectl_path("kubectl")).args(args).env("KUBECONFIG", &jane).env("HOME", &home).output().unwrap();
    let who = String::from_utf8_lossy(&kj(&["auth", "whoami"]).stdout).to_string();
    assert!(who.contains("Username    jane") && who.contains("[devs system:authenticated]"), "{who}");
    let denied = kj(&["get", "pods"]);
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr)
        .contains(r#"pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "default""#));
    s.k(&["create", "rolebinding", "jane-view", "--clusterrole=view", "--user=jane"]);
    assert!(eventually(Duration::from_secs(5), || kj(&["get", "pods"]).status.success()));

    // SubjectAccessReview (cluster-wide) and LocalSubjectAccessReview (one namespace),
    // asked by the admin about jane.
    let sar = |path: &str, body: &str| -> Value {
        let (code, b) = s.curl("POST", path, Some("application/json"), Some(body.as_bytes()));
        assert_eq!(code, 201, "{b}");
        serde_json::from_str::<Value>(&b).unwrap()["status"].clone()
    };
    let ask = |verb: &str, ns: &str| {
        format!(
            r#"{{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview","spec":{{"user":"jane","groups":["devs"],"resourceAttributes":{{"verb":"{verb}","resource":"pods","namespace":"{ns}"}}}}}}"#
        )
    };
    assert_eq!(sar("/apis/authorization.k8s.io/v1/subjectaccessreviews", &ask("list", "default"))["allowed"], true);
    assert_eq!(sar("/apis/authorization.k8s.io/v1/subjectaccessreviews", &ask("delete", "default"))["allowed"], false);
    assert_eq!(sar("/apis/authorization.k8s.io/v1/subjectaccessreviews", &ask("list", "kube-system"))["allowed"], false);
    let local = |ns: &str| {
        format!(
            r#"{{"apiVersion":"authorization.k8s.io/v1","kind":"LocalSubjectAccessReview","metadata":{{"namespace":"{ns}"}},"spec":{{"user":"jane","resourceAttributes":{{"verb":"get","resource":"pods","namespace":"{ns}"}}}}}}"#
        )
    };
    assert_eq!(sar("/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews", &local("default"))["allowed"], true);
    assert_eq!(sar("/apis/authorization.k8s.io/v1/namespaces/kube-system/localsubjectaccessreviews", &local("kube-system"))["allowed"], false);
    // A local review may only ask about its own namespace.
    let mismatched = local("kube-system").replacen(r#""namespace":"kube-system""#, r#""namespace":"default""#, 1);
    let (code, body) =
        s.curl("POST", "/apis/authorization.k8s.io/v1/namespaces/default/localsubjectaccessreviews", Some("application/json"), Some(mismatched.as_bytes()));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.resourceAttributes.namespace"), "{body}");
    // Only those allowed to create SubjectAccessReviews may ask about others.
    let jane_ask = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &ask("list", "default"),
            "--cacert",
        ])
        .arg(s.data.join("ca.crt"))
        .args(["--cert"])
        .arg(cert_files(&jane).0)
        .arg("--key")
        .arg(cert_files(&jane).1)
        .arg(format!("{}/apis/authorization.k8s.io/v1/subjectaccessreviews", s.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&jane_ask.stdout), "403");
}

#[test]
fn impersonating_uid_and_extra_needs_their_own_grants() {
    let s = Server::start();
    let ssr = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    // POST a SelfSubjectReview with impersonation headers, as `kubeconfig`'s user.
    let review = |kubeconfig: Option<&Path>, headers: &[&str]| -> (u16, Value) {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", ssr, "--cacert"])
            .arg(s.data.join("ca.crt"));
        let (crt, key) = match kubeconfig {
            Some(k) => cert_files(k),
            None => (s.data.join("client.crt"), s.data.join("client.key")),
        };
        c.arg("--cert").arg(crt).arg("--key").arg(key);
        for h in headers {
            c.args(["-H", h]);
        }
        let out = c.arg(format!("{}/apis/authentication.k8s.io/v1/selfsubjectreviews", s.url)).output().unwrap();
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        let (b, code) = t.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), serde_json::from_str(b).unwrap_or(Value::Null))
    };
    let all = ["Impersonate-User: jane", "Impersonate-Uid: 1234", "Impersonate-Extra-Team: blue"];
    // Admins may impersonate everything, including a uid and extra attributes.
    let (code, v) = review(None, &all);
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["status"]["userInfo"]["username"], "jane");
    assert_eq!(v["status"]["userInfo"]["uid"], "1234");
    assert_eq!(v["status"]["userInfo"]["extra"]["team"][0], "blue");
    // kubectl's --as-uid sends the same header.
    let out = s.kubectl(&["auth", "whoami", "--as=jane", "--as-uid=1234", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["status"]["userInfo"]["uid"], "1234");
    // A user allowed to impersonate users only may not add a uid or extras.
    s.k(&["create", "clusterrole", "impersonate-users", "--verb=impersonate", "--resource=users"]);
    s.k(&["create", "clusterrolebinding", "bob-impersonates", "--clusterrole=impersonate-users", "--user=bob"]);
    let bob = user_add(&s, "bob", &[]);
    assert!(eventually(Duration::from_secs(5), || review(Some(&bob), &["Impersonate-User: jane"]).0 == 201));
    let (code, v) = review(Some(&bob), &["Impersonate-User: jane", "Impersonate-Uid: 1234"]);
    assert_eq!(code, 403);
    assert_eq!(
        v["message"],
        r#"uids.authentication.k8s.io "1234" is forbidden: User "bob" cannot impersonate resource "uids" in API group "authentication.k8s.io" at the cluster scope"#
    );
    let (code, v) = review(Some(&bob), &["Impersonate-User: jane", "Impersonate-Extra-Team: blue"]);
    assert_eq!(code, 403);
    assert!(v["message"].as_str().unwrap().contains(r#"cannot impersonate resource "userextras/team""#), "{v}");
}

#[test]
fn default_policy_is_reconciled_unless_opted_out() {
    let s = Server::start();
    let rules = |name: &str| s.get_json(&format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}")).1["rules"].as_array().map(Vec::len).unwrap_or(0);
    let full = rules("view");
    assert!(full > 1);
    // Remove every rule but one: the missing rules come back.
    let (code, _) = s.curl(
        "PATCH",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/view",
        Some("application/json-patch+json"),
        Some(br#"[{"op":"replace","path":"/rules","value":[]}]"#),
    );
    assert_eq!(code, 200);
    assert!(eventually(Duration::from_secs(5), || rules("view") == full));
    // Deleted: recreated.
    s.k(&["delete", "clusterrolebinding", "system:discovery"]);
    assert!(
        eventually(Duration::from_secs(5), || s.curl("GET", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/system:discovery", None, None).0 == 200)
    );
    // Opted out with autoupdate=false: left as edited. (Not an aggregated role: their
    // rules belong to the aggregation, whatever the annotation says, as upstream.)
    s.k(&["annotate", "clusterrole", "system:basic-user", "rbac.authorization.kubernetes.io/autoupdate=false", "--overwrite"]);
    let (code, _) = s.curl(
        "PATCH",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:basic-user",
        Some("application/json-patch+json"),
        Some(br#"[{"op":"replace","path":"/rules","value":[]}]"#),
    );
    assert_eq!(code, 200);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(rules("system:basic-user"), 0);
}
