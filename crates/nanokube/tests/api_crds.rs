//! CustomResourceDefinitions through the real kubectl: a CRD becomes Established and
//! appears in discovery and OpenAPI; its custom objects are pruned, defaulted and
//! validated by the schema; printer columns, status and scale subresources, both
//! client- and server-side apply, every patch type (strategic answered 415), explain,
//! edit, diff, dry-run, a deprecated second version; deleting the CRD deletes its objects.
//! Also: cluster scope, invalid CRDs, name conflicts, a restart after SIGKILL, and the
//! garbage collector and namespace deletion reaching custom objects.

mod common;

use std::time::Duration;

use common::{eventually, Server};
use serde_json::{json, Value};

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names:
    plural: crontabs
    singular: crontab
    kind: CronTab
    shortNames: [ct]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    selectableFields:
    - jsonPath: .spec.image
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
        labelSelectorPath: .status.labelSelector
    additionalPrinterColumns:
    - name: Spec
      type: string
      jsonPath: .spec.cronSpec
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
    schema:
      openAPIV3Schema:
        type: object
        description: CronTab runs a command on a schedule.
        properties:
          spec:
            type: object
            description: The desired schedule.
            required: [cronSpec]
            properties:
              cronSpec:
                type: string
                description: When to run, in cron syntax.
                pattern: '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'
              image:
                type: string
              replicas:
                type: integer
                minimum: 1
                maximum: 10
                default: 1
          status:
            type: object
            properties:
              replicas: {type: integer}
              labelSelector: {type: string}
  - name: v1beta1
    served: true
    storage: false
    deprecated: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

const CT: &str = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: my-cron\nspec:\n  cronSpec: \"* * * * */5\"\n  image: my-cron-image\n";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn install_crd(s: &Server) {
    let out = s.k_stdin(&["apply", "-f", "-"], CRD);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "customresourcedefinition.apiextensions.k8s.io/crontabs.stable.example.com created");
    let waited = s.k(&["wait", "--for", "condition=established", "crd/crontabs.stable.example.com", "--timeout=5s"]);
    assert!(waited.contains("condition met"), "{waited}");
}

#[test]
fn crd_and_custom_objects_through_kubectl() {
    let s = Server::start();
    install_crd(&s);
    let crd = s.get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/crontabs.stable.example.com").1;
    let conditions: Vec<(String, String)> =
        crd["status"]["conditions"].as_array().unwrap().iter().map(|c| (c["type"].as_str().unwrap().into(), c["status"].as_str().unwrap().into())).collect();
    assert!(conditions.contains(&("Established".into(), "True".into())) && conditions.contains(&("NamesAccepted".into(), "True".into())));
    assert_eq!(crd["status"]["acceptedNames"]["listKind"], "CronTabList");
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    assert!(s.k(&["get", "crd"]).starts_with("NAME                          CREATED AT\ncrontabs.stable.example.com   20"));

    // Discovery (legacy and aggregated, which kubectl uses) and OpenAPI.
    let resources = s.k(&["api-resources", "--api-group=stable.example.com"]);
    assert!(resources.contains("crontabs") && resources.contains("ct") && resources.contains("CronTab"), "{resources}");
    let group = s.get_json("/apis/stable.example.com").1;
    assert_eq!(group["preferredVersion"]["version"], "v1");
    assert_eq!(group["versions"].as_array().unwrap().len(), 2);
    let list = s.get_json("/apis/stable.example.com/v1").1;
    let names: Vec<&str> = list["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["crontabs", "crontabs/status", "crontabs/scale"]);
    let root = s.get_json("/openapi/v3").1;
    assert!(root["paths"]["apis/stable.example.com/v1"]["serverRelativeURL"].as_str().unwrap().contains("hash="));
    let doc = s.get_json("/openapi/v3/apis/stable.example.com/v1").1;
    assert_eq!(doc["components"]["schemas"]["com.example.stable.v1.CronTab"]["x-kubernetes-group-version-kind"][0]["kind"], "CronTab");

    // apply twice: created, then unchanged. Defaults from the schema are applied.
    assert_eq!(String::from_utf8_lossy(&s.k_stdin(&["apply", "-f", "-"], CT).stdout).trim(), "crontab.stable.example.com/my-cron created");
    assert_eq!(String::from_utf8_lossy(&s.k_stdin(&["apply", "-f", "-"], CT).stdout).trim(), "crontab.stable.example.com/my-cron unchanged");
    let obj = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron").1;
    assert_eq!(obj["spec"]["replicas"], 1);
    assert_eq!(obj["metadata"]["generation"], 1);

    // get prints the printer columns (and the short name works).
    let table = s.k(&["get", "ct"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), vec!["NAME", "SPEC", "REPLICAS", "AGE"]);
    assert!(lines[1].starts_with("my-cron   * * * * */5   1          "), "{table}");
    assert!(s.k(&["get", "all"]).contains("crontab.stable.example.com/my-cron"), "category all");

    // Unknown fields: kubectl's strict validation gets upstream's 400; without it they
    // are pruned.
    let unknown = CT.replace("  image: my-cron-image\n", "  image: my-cron-image\n  extra: 1\n").replace("my-cron", "other");
    let out = s.k_stdin(&["apply", "-f", "-"], &unknown);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("strict decoding error: unknown field \"spec.extra\""), "{}", stderr(&out));
    assert!(s.k_stdin(&["apply", "--validate=false", "-f", "-"], &unknown).status.success());
    let other = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/other").1;
    assert!(other["spec"].get("extra").is_none(), "pruned: {other}");
    assert_eq!(other["spec"]["image"], "other-image");

    // A custom object violating its schema: 422 naming each field, nothing stored.
    let bad = "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: bad\nspec:\n  cronSpec: nope\n  replicas: 50\n";
    let out = s.k_stdin(&["create", "-f", "-"], bad);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("The CronTab \"bad\" is invalid"), "{err}");
    assert!(err.contains("spec.cronSpec: Invalid value: \"nope\": spec.cronSpec in body should match"), "{err}");
    assert!(err.contains("spec.replicas: Invalid value: 50: spec.replicas in body should be less than or equal to 10"), "{err}");
    assert_eq!(s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/bad").0, 404);
    let (code, st) = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/bad");
    assert_eq!((code, st["reason"].as_str()), (404, Some("NotFound")));

    // Patches: strategic (kubectl's default) is 415 for custom resources; merge and JSON work.
    let out = s.kubectl(&["patch", "ct", "my-cron", "-p", r#"{"spec":{"image":"x"}}"#]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"));
    assert_eq!(s.k(&["patch", "ct", "my-cron", "--type=merge", "-p", r#"{"spec":{"image":"merged"}}"#]).trim(), "crontab.stable.example.com/my-cron patched");
    assert_eq!(
        s.k(&["patch", "ct", "my-cron", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/replicas","value":2}]"#]).trim(),
        "crontab.stable.example.com/my-cron patched"
    );
    let out = s.kubectl(&["patch", "ct", "my-cron", "--type=merge", "-p", r#"{"spec":{"replicas":"two"}}"#]);
    assert!(stderr(&out).contains("spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\""), "{}", stderr(&out));
    let obj = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron").1;
    assert_eq!((obj["spec"]["image"].as_str(), obj["spec"]["replicas"].as_i64(), obj["metadata"]["generation"].as_i64()), (Some("merged"), Some(2), Some(3)));

    // scale reads and writes through /scale at the CRD's paths.
    assert_eq!(s.k(&["scale", "ct/my-cron", "--replicas=4"]).trim(), "crontab.stable.example.com/my-cron scaled");
    let scale = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron/scale").1;
    assert_eq!((scale["kind"].as_str(), scale["spec"]["replicas"].as_i64()), (Some("Scale"), Some(4)));

    // status: the subresource writes status only; the main resource ignores status;
    // generation moves on spec changes only.
    s.k(&[
        "patch",
        "ct",
        "my-cron",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":4,"labelSelector":"app=cron"},"spec":{"image":"ignored"}}"#,
    ]);
    s.k(&["patch", "ct", "my-cron", "--type=merge", "-p", r#"{"status":{"replicas":99}}"#]);
    let obj = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron").1;
    assert_eq!(obj["status"], json!({"replicas": 4, "labelSelector": "app=cron"}));
    assert_eq!((obj["spec"]["image"].as_str(), obj["metadata"]["generation"].as_i64()), (Some("merged"), Some(4)));
    let scale = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron/scale").1;
    assert_eq!((scale["status"]["replicas"].as_i64(), scale["status"]["selector"].as_str()), (Some(4), Some("app=cron")));

    // Server-side apply: two managers, a conflict, --force-conflicts.
    let ssa =
        |image: &str| format!("apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: ssa\nspec:\n  cronSpec: \"1 2 3 4 5\"\n  image: {image}\n");
    assert!(s.k_stdin(&["apply", "--server-side", "--field-manager=alice", "-f", "-"], &ssa("a")).status.success());
    let out = s.k_stdin(&["apply", "--server-side", "--field-manager=bob", "-f", "-"], &ssa("b"));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("conflict with \"alice\""), "{}", stderr(&out));
    assert!(stderr(&out).contains(".spec.image"));
    assert!(s.k_stdin(&["apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-"], &ssa("b")).status.success());
    let obj = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/ssa").1;
    assert_eq!(obj["spec"]["image"], "b");
    let managers: Vec<&str> = obj["metadata"]["managedFields"].as_array().unwrap().iter().map(|m| m["manager"].as_str().unwrap()).collect();
    assert_eq!(managers, vec!["alice", "bob"]);

    // explain reads the CRD's schema from OpenAPI v3.
    let explained = s.k(&["explain", "crontab.spec"]);
    assert!(explained.contains("KIND:       CronTab") && explained.contains("The desired schedule."), "{explained}");
    assert!(explained.contains("cronSpec\t<string> -required-") && explained.contains("When to run, in cron syntax."), "{explained}");

    // apply of a changed manifest (client-side: a merge patch for custom resources), and
    // replace with a stale resourceVersion (409) and a fresh one.
    let changed = CT.replace("my-cron-image", "changed-image");
    assert_eq!(String::from_utf8_lossy(&s.k_stdin(&["apply", "-f", "-"], &changed).stdout).trim(), "crontab.stable.example.com/my-cron configured");
    let obj = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron").1;
    assert_eq!((obj["spec"]["image"].as_str(), obj["status"]["replicas"].as_i64()), (Some("changed-image"), Some(4)), "status kept");
    let mut stale = obj.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let out = s.k_stdin(&["replace", "-f", "-"], &stale.to_string());
    assert!(stderr(&out).contains("the object has been modified"), "{}", stderr(&out));
    let mut fresh = obj.clone();
    fresh["spec"]["image"] = json!("merged");
    assert_eq!(String::from_utf8_lossy(&s.k_stdin(&["replace", "-f", "-"], &fresh.to_string()).stdout).trim(), "crontab.stable.example.com/my-cron replaced");

    // create --dry-run=server: the would-be object, nothing stored.
    let dry = CT.replace("my-cron", "dry");
    assert_eq!(
        String::from_utf8_lossy(&s.k_stdin(&["create", "--dry-run=server", "-f", "-"], &dry).stdout).trim(),
        "crontab.stable.example.com/dry created (server dry run)"
    );
    assert_eq!(s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/dry").0, 404);

    // diff and edit.
    let changed = s.k_stdin(&["diff", "-f", "-"], &CT.replace("my-cron-image", "new-image"));
    assert_eq!(changed.status.code(), Some(1), "{}", stderr(&changed));
    assert!(String::from_utf8_lossy(&changed.stdout).contains("+  image: new-image"));
    let out = s.kubectl_edit(&["ct", "my-cron"], "s/image: merged/image: edited/");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs/my-cron").1["spec"]["image"], "edited");

    // selectableFields: field selectors on a custom field, in lists and watches.
    let selected = s.k(&["get", "ct", "--field-selector", "spec.image=edited", "-o", "name"]);
    assert_eq!(selected.trim(), "crontab.stable.example.com/my-cron");
    assert_eq!(
        s.k(&["get", "ct", "--field-selector", "spec.image!=edited", "-o", "name"]).trim(),
        "crontab.stable.example.com/other\ncrontab.stable.example.com/ssa"
    );
    let (code, st) = s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs?fieldSelector=spec.cronSpec%3Dx");
    assert_eq!((code, st["message"].as_str()), (400, Some("field label not supported: spec.cronSpec")));
    let watched = s.k(&["get", "ct", "--field-selector", "spec.image=edited", "--watch", "--request-timeout=2s", "-o", "name"]);
    assert_eq!(watched.trim(), "crontab.stable.example.com/my-cron");

    // The deprecated v1beta1 serves the same objects, converted, with a warning.
    let out = s.kubectl(&["get", "crontabs.v1beta1.stable.example.com", "my-cron", "-o", "jsonpath={.apiVersion} {.spec.image}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "stable.example.com/v1beta1 edited");
    assert!(stderr(&out).contains("Warning: stable.example.com/v1beta1 CronTab is deprecated"), "{}", stderr(&out));

    // Deleting the CRD deletes its objects, then the CRD, and the resource goes away.
    assert!(s.k(&["delete", "crd", "crontabs.stable.example.com"]).contains("deleted"));
    assert!(eventually(Duration::from_secs(5), || s.get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/crontabs.stable.example.com").0 == 404));
    assert_eq!(s.get_json("/apis/stable.example.com/v1").0, 404);
    let (_, all) = s.get_json("/apis");
    assert!(!all.to_string().contains("stable.example.com"));
    // Recreated, it starts empty: the objects were deleted, not hidden.
    install_crd(&s);
    assert_eq!(s.get_json("/apis/stable.example.com/v1/namespaces/default/crontabs").1["items"], json!([]));
}

const CLUSTER_CRD: &str = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"backends.infra.example.org"},
"spec":{"group":"infra.example.org","scope":"Cluster","names":{"plural":"backends","kind":"Backend"},
"versions":[{"name":"v1alpha1","served":true,"storage":true,"schema":{"openAPIV3Schema":{"type":"object","properties":{
"spec":{"type":"object","x-kubernetes-validations":[{"rule":"!has(self.tags) || self.tags.size() <= 3","message":"at most three tags"}],
"properties":{"port":{"x-kubernetes-int-or-string":true,"x-kubernetes-validations":[{"rule":"self == oldSelf","message":"port is immutable"}]},"tags":{"type":"array","items":{"type":"string"},"x-kubernetes-list-type":"set"},
"template":{"type":"object","x-kubernetes-embedded-resource":true,"x-kubernetes-preserve-unknown-fields":true}}}}}}}]}}"#;

#[test]
fn cluster_scope_invalid_crds_conflicts_and_restart() {
    let mut s = Server::start();
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

    // Invalid CRDs: 422 with upstream's field paths; nothing stored.
    let mut bad: Value = serde_json::from_str(CLUSTER_CRD).unwrap();
    bad["metadata"]["name"] = json!("wrong.name");
    bad["spec"]["versions"][0]["storage"] = json!(false);
    bad["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["untyped"] = json!({});
    let (code, body) = s.curl("POST", crds, Some("application/json"), Some(bad.to_string().as_bytes()));
    assert_eq!(code, 422, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    let fields: Vec<&str> = st["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"metadata.name") && fields.contains(&"spec.versions"), "{fields:?}");
    assert!(fields.contains(&"spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[untyped].type"), "{fields:?}");
    assert_eq!(s.get_json(crds).1["items"], json!([]));

    // A cluster-scoped CRD.
    let (code, body) = s.curl("POST", crds, Some("application/json"), Some(CLUSTER_CRD.as_bytes()));
    assert_eq!(code, 201, "{body}");
    // The create's answer already carries a status (as upstream's strategy writes it),
    // before the controller accepts the names: clients that read status right away
    // (the Python client's model requires acceptedNames) find one.
    let created: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(created["status"]["acceptedNames"], json!({"plural": "", "kind": ""}), "{body}");
    assert_eq!(created["status"]["storedVersions"], json!(["v1alpha1"]), "{body}");
    s.k(&["wait", "--for", "condition=established", "crd/backends.infra.example.org", "--timeout=5s"]);
    let be = json!({"apiVersion": "infra.example.org/v1alpha1", "kind": "Backend", "metadata": {"name": "db"},
        "spec": {"port": "postgres", "tags": ["a", "b"], "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"any": 1}}}});
    let (code, body) = s.curl("POST", "/apis/infra.example.org/v1alpha1/backends", Some("application/json"), Some(be.to_string().as_bytes()));
    assert_eq!(code, 201, "{body}");
    assert_eq!(s.get_json("/apis/infra.example.org/v1alpha1/namespaces/default/backends/db").0, 404, "cluster-scoped: no namespaced path");
    let mut dup = be.clone();
    dup["metadata"]["name"] = json!("dup");
    dup["spec"]["tags"] = json!(["a", "a"]);
    dup["spec"]["port"] = json!(1.5);
    dup["spec"]["template"] = json!({"metadata": {}});
    let (code, body) = s.curl("POST", "/apis/infra.example.org/v1alpha1/backends", Some("application/json"), Some(dup.to_string().as_bytes()));
    assert_eq!(code, 422, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    let mut fields: Vec<&str> = st["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    fields.sort();
    assert_eq!(fields, vec!["spec.port", "spec.tags[1]", "spec.template.apiVersion", "spec.template.kind"]);
    // CEL rules: a plain rule on create, a transition rule on update.
    let mut many = be.clone();
    many["metadata"]["name"] = json!("many");
    many["spec"]["tags"] = json!(["a", "b", "c", "d"]);
    let (code, body) = s.curl("POST", "/apis/infra.example.org/v1alpha1/backends", Some("application/json"), Some(many.to_string().as_bytes()));
    assert_eq!(code, 422, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["message"], "Backend.infra.example.org \"many\" is invalid: spec: Invalid value: \"object\": at most three tags");
    let (code, body) =
        s.curl("PATCH", "/apis/infra.example.org/v1alpha1/backends/db", Some("application/merge-patch+json"), Some(br#"{"spec":{"port":5432}}"#));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.port: Invalid value: \\\"integer\\\": port is immutable"), "{body}");
    let (code, body) =
        s.curl("PATCH", "/apis/infra.example.org/v1alpha1/backends/db", Some("application/merge-patch+json"), Some(br#"{"spec":{"tags":["a"]}}"#));
    assert_eq!(code, 200, "other fields still change: {body}");
    let got = s.k(&["get", "backends"]);
    assert!(got.starts_with("NAME   AGE\ndb     "), "{got}");

    // A second CRD claiming a taken name in the same group is not established.
    let mut clash: Value = serde_json::from_str(CLUSTER_CRD).unwrap();
    clash["metadata"]["name"] = json!("servers.infra.example.org");
    clash["spec"]["names"] = json!({"plural": "servers", "kind": "Backend"});
    let (code, _) = s.curl("POST", crds, Some("application/json"), Some(clash.to_string().as_bytes()));
    assert_eq!(code, 201);
    assert!(eventually(Duration::from_secs(5), || {
        let c = s.get_json(&format!("{crds}/servers.infra.example.org")).1;
        c["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "NamesAccepted" && c["status"] == "False"))
    }));
    assert_eq!(s.get_json("/apis/infra.example.org/v1alpha1/servers").0, 404);

    // After a crash the custom resources are served from the first request.
    s.kill9();
    s.restart();
    let (code, obj) = s.get_json("/apis/infra.example.org/v1alpha1/backends/db");
    assert_eq!(code, 200);
    assert_eq!(obj["spec"]["tags"], json!(["a"]));
    s.stop();
}

#[test]
fn garbage_collection_and_namespace_deletion_reach_custom_objects() {
    let s = Server::start();
    install_crd(&s);
    s.k(&["create", "namespace", "team"]);
    let cron = json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "owner"}, "spec": {"cronSpec": "* * * * *"}});
    let (code, body) = s.curl("POST", "/apis/stable.example.com/v1/namespaces/team/crontabs", Some("application/json"), Some(cron.to_string().as_bytes()));
    assert_eq!(code, 201, "{body}");
    let owner: Value = serde_json::from_str(&body).unwrap();
    // A ConfigMap owned by the custom object, and a custom object owned by a ConfigMap.
    let cm = json!({"metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "stable.example.com/v1", "kind": "CronTab", "name": "owner", "uid": owner["metadata"]["uid"]}]}});
    assert_eq!(s.curl("POST", "/api/v1/namespaces/team/configmaps", Some("application/json"), Some(cm.to_string().as_bytes())).0, 201);
    let (_, body) = s.curl("POST", "/api/v1/namespaces/team/configmaps", Some("application/json"), Some(br#"{"metadata":{"name":"parent"}}"#));
    let parent: Value = serde_json::from_str(&body).unwrap();
    let child = json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "child",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": parent["metadata"]["uid"]}]}, "spec": {"cronSpec": "* * * * *"}});
    assert_eq!(s.curl("POST", "/apis/stable.example.com/v1/namespaces/team/crontabs", Some("application/json"), Some(child.to_string().as_bytes())).0, 201);

    s.k(&["delete", "crontab", "owner", "-n", "team"]);
    assert!(eventually(Duration::from_secs(5), || s.get_json("/api/v1/namespaces/team/configmaps/owned").0 == 404), "dependent of a custom owner collected");
    s.k(&["delete", "configmap", "parent", "-n", "team"]);
    assert!(
        eventually(Duration::from_secs(5), || s.get_json("/apis/stable.example.com/v1/namespaces/team/crontabs/child").0 == 404),
        "custom dependent collected"
    );

    // kubectl delete --cascade=foreground / orphan on a custom owner, and wait --for=delete.
    let owned_cm = |name: &str, owner: &Value| {
        json!({"metadata": {"name": name, "ownerReferences": [{"apiVersion": "stable.example.com/v1", "kind": "CronTab", "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "blockOwnerDeletion": true}]}})
    };
    for (owner, cascade) in [("fg", "foreground"), ("or", "orphan")] {
        let cron = json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": owner}, "spec": {"cronSpec": "* * * * *"}});
        let (_, body) = s.curl("POST", "/apis/stable.example.com/v1/namespaces/team/crontabs", Some("application/json"), Some(cron.to_string().as_bytes()));
        let o: Value = serde_json::from_str(&body).unwrap();
        let dep = owned_cm(&format!("{owner}-dep"), &o);
        assert_eq!(s.curl("POST", "/api/v1/namespaces/team/configmaps", Some("application/json"), Some(dep.to_string().as_bytes())).0, 201);
        let out = s.kubectl(&["delete", "crontab", owner, "-n", "team", &format!("--cascade={cascade}"), "--timeout=20s"]);
        assert!(out.status.success(), "{}", stderr(&out));
        s.k(&["wait", "--for=delete", &format!("crontab/{owner}"), "-n", "team", "--timeout=10s"]);
        let (code, cm) = s.get_json(&format!("/api/v1/namespaces/team/configmaps/{owner}-dep"));
        if cascade == "foreground" {
            assert_eq!(code, 404, "foreground deleted the dependent first");
        } else {
            assert_eq!(code, 200, "orphan kept the dependent");
            assert!(cm["metadata"].get("ownerReferences").is_none(), "and cleared its ownerReferences: {cm}");
        }
    }

    let left = json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "left"}, "spec": {"cronSpec": "* * * * *"}});
    assert_eq!(s.curl("POST", "/apis/stable.example.com/v1/namespaces/team/crontabs", Some("application/json"), Some(left.to_string().as_bytes())).0, 201);
    s.k(&["delete", "namespace", "team", "--wait=true", "--timeout=10s"]);
    assert_eq!(s.get_json("/api/v1/namespaces/team").0, 404);
    assert_eq!(s.get_json("/apis/stable.example.com/v1/crontabs").1["items"], json!([]));
}
