//! kubectl's machinery commands against nanokube: diff, edit, patch (all three types),
//! replace, wait --for=delete, create --dry-run=server, and a patch that breaks
//! validation (refused, nothing stored).

mod common;

use std::process::Command;

use common::{kubectl_path, Server};
use serde_json::Value;

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: m\ndata:\n  a: \"1\"\n";

#[test]
fn diff_edit_patch_replace_wait_dry_run() {
    let s = Server::start();
    assert!(s.k_stdin(&["apply", "-f", "-"], CM).status.success());

    // diff: exit 1 and a unified diff when the manifest differs; exit 0 when it does not.
    let same = s.k_stdin(&["diff", "-f", "-"], CM);
    assert_eq!(same.status.code(), Some(0), "{}", String::from_utf8_lossy(&same.stderr));
    let changed = s.k_stdin(&["diff", "-f", "-"], &CM.replace("a: \"1\"", "a: \"2\""));
    assert_eq!(changed.status.code(), Some(1), "{}", String::from_utf8_lossy(&changed.stderr));
    let out = String::from_utf8_lossy(&changed.stdout);
    assert!(out.contains("-  a: \"1\"") && out.contains("+  a: \"2\""), "{out}");
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/m").1["data"]["a"], "1", "diff changes nothing");

    // edit with an EDITOR script.
    let out = s.kubectl_edit(&["configmap", "m"], r#"s/a: "1"/a: "edited"/"#);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "configmap/m edited");
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/m").1["data"]["a"], "edited");

    // patch, each type.
    assert_eq!(s.k(&["patch", "configmap", "m", "-p", r#"{"data":{"b":"2"}}"#]).trim(), "configmap/m patched");
    assert_eq!(s.k(&["patch", "configmap", "m", "--type=merge", "-p", r#"{"data":{"b":null,"c":"3"}}"#]).trim(), "configmap/m patched");
    assert_eq!(s.k(&["patch", "configmap", "m", "--type=json", "-p", r#"[{"op":"replace","path":"/data/c","value":"three"}]"#]).trim(), "configmap/m patched");
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/m").1["data"], serde_json::json!({"a": "edited", "c": "three"}));
    let nothing = s.kubectl(&["patch", "configmap", "m", "--type=json", "-p", r#"[{"op":"test","path":"/data/c","value":"x"}]"#]);
    assert!(!nothing.status.success());

    // A patch that breaks validation is refused and stores nothing.
    s.k(&["create", "deployment", "d", "--image=nginx"]);
    // (The Deployment controller writes its status meanwhile: the spec and generation
    // tell whether the patch stored anything.)
    let spec_of = || {
        let d = s.get_json("/apis/apps/v1/namespaces/default/deployments/d").1;
        (d["spec"].clone(), d["metadata"]["generation"].clone())
    };
    let before = spec_of();
    let bad = s.kubectl(&["patch", "deployment", "d", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/replicas","value":-3}]"#]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("spec.replicas: Invalid value: -3: must be greater than or equal to 0"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(spec_of(), before);

    // replace (and a stale resourceVersion conflicts).
    let live: Value = serde_json::from_str(&s.k(&["get", "configmap", "m", "-o", "json"])).unwrap();
    let mut replaced = live.clone();
    replaced["data"] = serde_json::json!({"only": "this"});
    let out = s.k_stdin(&["replace", "-f", "-"], &replaced.to_string());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "configmap/m replaced", "{}", String::from_utf8_lossy(&out.stderr));
    let stale = s.k_stdin(&["replace", "-f", "-"], &live.to_string());
    assert!(!stale.status.success());
    assert!(String::from_utf8_lossy(&stale.stderr).contains("the object has been modified; please apply your changes to the latest version and try again"));

    // create --dry-run=server answers but stores nothing.
    let out = s.k(&["create", "configmap", "dry", "--from-literal=x=y", "--dry-run=server", "-o", "name"]);
    assert_eq!(out.trim(), "configmap/dry");
    assert_eq!(s.curl("GET", "/api/v1/namespaces/default/configmaps/dry", None, None).0, 404);
    let out = s.kubectl(&["delete", "configmap", "m", "--dry-run=server"]);
    assert!(out.status.success());
    assert_eq!(s.curl("GET", "/api/v1/namespaces/default/configmaps/m", None, None).0, 200, "a dry-run delete deletes nothing");

    // wait --for=delete returns once the object is gone.
    let waiter = {
        let home = s.dir.path().join("home-wait");
        std::fs::create_dir_all(&home).unwrap();
        Command::new(kubectl_path("kubectl"))
            .args(["wait", "--for=delete", "configmap/m", "--timeout=20s"])
            .env("KUBECONFIG", s.kubeconfig())
            .env("HOME", &home)
            .spawn()
            .unwrap()
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    s.k(&["delete", "configmap", "m", "--wait=false"]);
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "wait --for=delete returned an error");
}
