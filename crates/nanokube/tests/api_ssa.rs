//! Server-side apply and managedFields through real kubectl and curl.

mod common;

use common::Server;
use serde_json::Value;

fn cm_yaml(data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n{data}")
}

fn managers(s: &Server, path: &str) -> Vec<(String, String, Value)> {
    s.get_json(path).1["metadata"]["managedFields"]
        .as_array()
        .map(|a| a.iter().map(|e| (e["manager"].as_str().unwrap().to_string(), e["operation"].as_str().unwrap().to_string(), e["fieldsV1"].clone())).collect())
        .unwrap_or_default()
}

#[test]
fn apply_two_managers_conflict_force_and_removal() {
    let s = Server::start();
    let path = "/api/v1/namespaces/default/configmaps/ssa";
    let first = s.k_stdin(&["apply", "--server-side", "-f", "-"], &cm_yaml("  a: \"1\"\n  b: \"2\"\n"));
    assert_eq!(String::from_utf8_lossy(&first.stdout).trim(), "configmap/ssa serverside-applied", "{}", String::from_utf8_lossy(&first.stderr));
    let rv = s.get_json(path).1["metadata"]["resourceVersion"].clone();
    let again = s.k_stdin(&["apply", "--server-side", "-f", "-"], &cm_yaml("  a: \"1\"\n  b: \"2\"\n"));
    assert!(again.status.success());
    assert_eq!(s.get_json(path).1["metadata"]["resourceVersion"], rv, "a no-op apply writes nothing");
    assert_eq!(managers(&s, path), vec![("kubectl".into(), "Apply".into(), serde_json::json!({"f:data": {"f:a": {}, "f:b": {}}}))]);

    // A second manager changing a field the first owns: conflict.
    let other = s.k_stdin(&["apply", "--server-side", "--field-manager=other", "-f", "-"], &cm_yaml("  a: \"changed\"\n"));
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains(r#"Apply failed with 1 conflict: conflict with "kubectl" using v1: .data.a"#), "{err}");
    assert_eq!(s.get_json(path).1["data"]["a"], "1", "nothing changed");
    // The same value is shared ownership, not a conflict.
    assert!(s.k_stdin(&["apply", "--server-side", "--field-manager=sharer", "-f", "-"], &cm_yaml("  b: \"2\"\n")).status.success());
    // Forcing takes the field over.
    let forced = s.k_stdin(&["apply", "--server-side", "--field-manager=other", "--force-conflicts", "-f", "-"], &cm_yaml("  a: \"changed\"\n"));
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    let m = managers(&s, path);
    assert!(m.contains(&("kubectl".into(), "Apply".into(), serde_json::json!({"f:data": {"f:b": {}}}))), "{m:?}");
    assert!(m.contains(&("other".into(), "Apply".into(), serde_json::json!({"f:data": {"f:a": {}}}))), "{m:?}");
    // kubectl stops applying b: it stays, because "sharer" still owns it; once sharer
    // stops too, b is removed.
    assert!(s.k_stdin(&["apply", "--server-side", "-f", "-"], &cm_yaml("  c: \"3\"\n")).status.success());
    let data = s.get_json(path).1["data"].clone();
    assert_eq!(data, serde_json::json!({"a": "changed", "b": "2", "c": "3"}));
    assert!(s.k_stdin(&["apply", "--server-side", "--field-manager=sharer", "-f", "-"], &cm_yaml("  d: \"4\"\n")).status.success());
    assert!(s.get_json(path).1["data"].get("b").is_none(), "no one applies b any more");
}

#[test]
fn apply_creates_merges_lists_by_key_and_records_updates() {
    let s = Server::start();
    let deploy = |containers: &str| {
        format!("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n{containers}")
    };
    // Creation through apply answers 201.
    let body = serde_json::to_vec(&serde_norway::from_str::<Value>(&deploy("      - {name: app, image: nginx:1.26}\n")).unwrap()).unwrap();
    let (code, resp) =
        s.curl("PATCH", "/apis/apps/v1/namespaces/default/deployments/web?fieldManager=team-a", Some("application/apply-patch+yaml"), Some(&body));
    assert_eq!(code, 201, "{resp}");
    // A second manager adds its own container; the list merges by name.
    let body2 = serde_json::to_vec(&serde_norway::from_str::<Value>(&deploy("      - {name: sidecar, image: busybox}\n")).unwrap()).unwrap();
    let (code, resp) =
        s.curl("PATCH", "/apis/apps/v1/namespaces/default/deployments/web?fieldManager=team-b", Some("application/apply-patch+yaml"), Some(&body2));
    assert_eq!(code, 200, "{resp}");
    // team-a re-applies its container with a new image: team-b's container stays.
    let body3 = serde_json::to_vec(&serde_norway::from_str::<Value>(&deploy("      - {name: app, image: nginx:1.27}\n")).unwrap()).unwrap();
    assert_eq!(
        s.curl("PATCH", "/apis/apps/v1/namespaces/default/deployments/web?fieldManager=team-a", Some("application/apply-patch+yaml"), Some(&body3)).0,
        200
    );
    let d = s.get_json("/apis/apps/v1/namespaces/default/deployments/web").1;
    let cs: Vec<(String, String)> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().into(), c["image"].as_str().unwrap().into()))
        .collect();
    assert_eq!(cs, [("app".to_string(), "nginx:1.27".to_string()), ("sidecar".to_string(), "busybox".to_string())]);
    let mf = d["metadata"]["managedFields"].as_array().unwrap();
    let team_b = mf.iter().find(|e| e["manager"] == "team-b").unwrap();
    assert!(team_b["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"].get(r#"k:{"name":"sidecar"}"#).is_some(), "{team_b}");

    // Apply needs a field manager.
    let (code, resp) = s.curl("PATCH", "/apis/apps/v1/namespaces/default/deployments/web", Some("application/apply-patch+yaml"), Some(&body3));
    assert_eq!(code, 422, "{resp}");
    assert!(resp.contains("fieldManager"));
    // Updates record their manager too: kubectl scale (no fieldManager: the User-Agent's first word).
    s.k(&["create", "configmap", "made", "--from-literal=k=v"]);
    let cm = s.get_json("/api/v1/namespaces/default/configmaps/made").1;
    assert_eq!(cm["metadata"]["managedFields"][0]["manager"], "kubectl-create");
    assert_eq!(cm["metadata"]["managedFields"][0]["operation"], "Update");
    assert_eq!(cm["metadata"]["managedFields"][0]["fieldsV1"], serde_json::json!({"f:data": {"f:k": {}}}));
    // An apply to /status is recorded for the status subresource.
    let status = br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},"status":{"observedGeneration":3}}"#;
    let (code, resp) =
        s.curl("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/status?fieldManager=ctrl", Some("application/apply-patch+yaml"), Some(status));
    assert_eq!(code, 200, "{resp}");
    let d = s.get_json("/apis/apps/v1/namespaces/default/deployments/web").1;
    assert_eq!(d["status"]["observedGeneration"], 3);
    let ctrl = d["metadata"]["managedFields"].as_array().unwrap().iter().find(|e| e["manager"] == "ctrl").cloned().unwrap();
    assert_eq!(ctrl["subresource"], "status");
    assert_eq!(ctrl["fieldsV1"], serde_json::json!({"f:status": {"f:observedGeneration": {}}}));
}

/// kubectl's own path from client-side to server-side apply: the first `apply
/// --server-side` after `apply` migrates the client-side manager's fields to `kubectl`
/// with a JSON patch of `managedFields` guarded by `resourceVersion`; afterwards a changed
/// manifest applies without conflicts, and server-added defaults (a defaulted `strategy`,
/// defaulted container fields) are nobody's conflict.
#[test]
fn client_side_to_server_side_apply_migration() {
    let s = Server::start();
    let dep = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: dep\n  labels: {app: dep}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: dep}\n  strategy: {}\n  template:\n    metadata:\n      labels: {app: dep}\n    spec:\n      containers:\n      - name: nginx\n        image: nginx\n";
    assert!(s.k_stdin(&["apply", "-f", "-"], dep).status.success());
    let out = s.k_stdin(&["apply", "--server-side", "-f", "-"], dep);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("migration"), "the migration patch was accepted: {}", String::from_utf8_lossy(&out.stderr));
    let path = "/apis/apps/v1/namespaces/default/deployments/dep";
    let names: Vec<(String, String)> = managers(&s, path).into_iter().map(|(m, o, _)| (m, o)).collect();
    assert_eq!(names, vec![("kubectl".to_string(), "Apply".to_string()), ("kubectl-last-applied".to_string(), "Apply".to_string())]);
    let out = s.k_stdin(&["apply", "--server-side", "-f", "-"], &dep.replace("image: nginx", "image: httpd"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.get_json(path).1["spec"]["template"]["spec"]["containers"][0]["image"], "httpd");

    // A JSON patch that replaces resourceVersion is a precondition: a stale one conflicts.
    let (code, body) =
        s.curl("PATCH", path, Some("application/json-patch+json"), Some(br#"[{"op":"replace","path":"/metadata/resourceVersion","value":"1"}]"#));
    assert_eq!(code, 409, "{body}");
    let rv = s.get_json(path).1["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let guarded = format!(r#"[{{"op":"test","path":"/metadata/resourceVersion","value":"{rv}"}},{{"op":"add","path":"/metadata/labels/x","value":"y"}}]"#);
    let (code, body) = s.curl("PATCH", path, Some("application/json-patch+json"), Some(guarded.as_bytes()));
    assert_eq!(code, 200, "{body}");
}
