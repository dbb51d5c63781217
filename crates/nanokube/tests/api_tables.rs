//! Objects, Tables and PartialObjectMetadata as kube-apiserver writes them: built-in
//! kinds' fields in their Go structs' order (custom resources sorted, as upstream writes
//! unstructured objects), a Table row's object carrying the whole metadata (managed fields
//! too), cells counted from the object, Table watches with a CRD's printer columns.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{table, Server};
use serde_json::Value;

const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";

fn get_as(s: &Server, accept: &str, path: &str) -> String {
    let out = s.admin_curl().args(["-sS", "-H", &format!("Accept: {accept}")]).arg(format!("{}{}", s.url, path)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The entries of a JSON object in the order the text has them, each value as its text
/// (serde_json's maps are sorted, so the order is read off the text).
fn entries(text: &str) -> Vec<(String, String)> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                let v: Box<serde_json::value::RawValue> = map.next_value()?;
                out.push((k, v.get().to_string()));
            }
            Ok(out)
        }
    }
    use serde::Deserializer as _;
    serde_json::Deserializer::from_str(text.trim_end()).deserialize_map(Entries).unwrap()
}

fn key_order(text: &str) -> Vec<String> {
    entries(text).into_iter().map(|(k, _)| k).collect()
}

/// The text of the value at `path` (object keys) inside `text`.
fn at(text: &str, path: &[&str]) -> String {
    path.iter().fold(text.to_string(), |t, k| entries(&t).into_iter().find(|(key, _)| key == k).unwrap_or_else(|| panic!("no {k} in {t}")).1)
}

#[test]
fn built_in_objects_are_written_in_go_field_order_custom_ones_sorted() {
    let s = Server::start();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {b: \"2\", a: \"1\"}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    args: [sleep, \"1\"]\n    env: [{name: X, value: \"why\"}]\n    ports: [{containerPort: 80}]\n";
    let out = s.k_stdin(&["create", "-f", "-"], pod);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (code, text) = s.curl("GET", "/api/v1/namespaces/default/pods/web", None, None);
    assert_eq!(code, 200);
    assert_eq!(key_order(&text), ["kind", "apiVersion", "metadata", "spec", "status"]);
    // Pods count generations since 1.33.
    assert_eq!(
        key_order(&at(&text, &["metadata"])),
        ["name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "labels", "managedFields"]
    );
    assert_eq!(at(&text, &["metadata", "labels"]), r#"{"a":"1","b":"2"}"#, "map keys sorted, as encoding/json writes them");
    let spec = key_order(&at(&text, &["spec"]));
    assert_eq!(&spec[..3], ["volumes", "containers", "restartPolicy"], "{spec:?}");
    let container = entries(at(&text, &["spec", "containers"]).trim_start_matches('[').trim_end_matches(']'));
    let names: Vec<&str> = container.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(&names[..6], ["name", "image", "args", "ports", "env", "resources"], "{names:?}");
    let managed = at(&text, &["metadata", "managedFields"]);
    assert!(managed.starts_with(r#"[{"manager":"kubectl-create","operation":"Update","apiVersion":"v1","time":""#), "{managed}");

    // Lists and watch events carry the same bytes.
    let (_, list) = s.curl("GET", "/api/v1/namespaces/default/pods", None, None);
    assert_eq!(key_order(&list), ["kind", "apiVersion", "metadata", "items"]);
    assert!(list.contains(r#""items":[{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"default","uid":""#), "{list}");
    let out =
        s.admin_curl().args(["-sS", "--max-time", "2"]).arg(format!("{}/api/v1/namespaces/default/pods?watch=true&timeoutSeconds=1", s.url)).output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string();
    assert!(line.starts_with(r#"{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","#), "{line}");

    // A Deployment: generation after resourceVersion, spec before status.
    s.k(&["create", "deployment", "d", "--image=busybox"]);
    let (_, text) = s.curl("GET", "/apis/apps/v1/namespaces/default/deployments/d", None, None);
    assert_eq!(key_order(&text), ["kind", "apiVersion", "metadata", "spec", "status"]);
    let meta = key_order(&at(&text, &["metadata"]));
    assert_eq!(&meta[..6], ["name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp"], "{meta:?}");
    assert_eq!(key_order(&at(&text, &["spec"]))[..2], ["replicas", "selector"]);

    // A custom resource: sorted at every level, as upstream's unstructured encoding.
    let crd = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"things.example.com"},
      "spec":{"group":"example.com","scope":"Namespaced","names":{"plural":"things","singular":"thing","kind":"Thing"},
      "versions":[{"name":"v1","served":true,"storage":true,"schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}}"#;
    s.k_stdin(&["create", "-f", "-"], crd);
    assert!(common::eventually(std::time::Duration::from_secs(10), || s.curl("GET", "/apis/example.com/v1/namespaces/default/things", None, None).0 == 200));
    let (code, text) = s.curl(
        "POST",
        "/apis/example.com/v1/namespaces/default/things",
        Some("application/json"),
        Some(br#"{"kind":"Thing","apiVersion":"example.com/v1","metadata":{"name":"t"},"spec":{"z":1,"a":2}}"#),
    );
    assert_eq!(code, 201, "{text}");
    assert_eq!(key_order(&text), ["apiVersion", "kind", "metadata", "spec"]);
    assert_eq!(at(&text, &["spec"]), r#"{"a":2,"z":1}"#);
    assert_eq!(key_order(&at(&text, &["metadata"]))[..2], ["creationTimestamp", "generation"]);
}

#[test]
fn tables_are_written_in_go_field_order_with_whole_metadata() {
    let s = Server::start();
    s.k(&["create", "configmap", "three", "--from-literal=a=1", "--from-literal=b=2"]);
    // binaryData counts as data in the DATA column.
    let (code, body) = s.curl(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/json"),
        Some(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"bin"},"data":{"x":"y"},"binaryData":{"z":"AAE="}}"#),
    );
    assert_eq!(code, 201, "{body}");

    let text = get_as(&s, TABLE, "/api/v1/namespaces/default/configmaps");
    assert!(text.starts_with(r#"{"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":""#), "{text}");
    assert!(text.ends_with("}\n"), "a newline ends every body");
    assert_eq!(key_order(&text), ["kind", "apiVersion", "metadata", "columnDefinitions", "rows"]);
    let t: Value = serde_json::from_str(&text).unwrap();
    let first_column = serde_json::to_string(&t["columnDefinitions"][0]).unwrap();
    assert!(text.contains(r#"{"name":"Name","type":"string","format":"name","description":"Name must be unique"#), "{first_column}");
    let names: Vec<&str> = t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Name", "Data", "Age"]);

    let row = t["rows"].as_array().unwrap().iter().find(|r| r["cells"][0] == "three").unwrap();
    assert_eq!(row["cells"][1], 2);
    let bin = t["rows"].as_array().unwrap().iter().find(|r| r["cells"][0] == "bin").unwrap();
    assert_eq!(bin["cells"][1], 2, "data and binaryData keys: {bin}");
    // The embedded object: PartialObjectMetadata, kind first, with the managed fields.
    assert!(text.contains(r#"{"cells":["three",2,"#), "{text}");
    assert!(text.contains(r#"],"object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"#), "{text}");
    assert_eq!(row["object"]["metadata"]["managedFields"][0]["manager"], "kubectl-create");
    assert!(row["object"].get("data").is_none());

    // includeObject=Object embeds the whole object; None embeds nothing.
    let t: Value = serde_json::from_str(&get_as(&s, TABLE, "/api/v1/namespaces/default/configmaps/three?includeObject=Object")).unwrap();
    assert_eq!(t["rows"][0]["object"]["data"]["b"], "2");
    assert_eq!(t["rows"][0]["object"]["kind"], "ConfigMap");
    let t: Value = serde_json::from_str(&get_as(&s, TABLE, "/api/v1/namespaces/default/configmaps?includeObject=None")).unwrap();
    assert!(t["rows"].as_array().unwrap().iter().all(|r| r.get("object").is_none()));

    // PartialObjectMetadata of one object and of a list, in Go order too.
    let one = get_as(&s, "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1", "/api/v1/namespaces/default/configmaps/three");
    assert!(one.starts_with(r#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"three","#), "{one}");
    let list = get_as(&s, "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1", "/api/v1/namespaces/default/configmaps");
    assert_eq!(key_order(&list), ["kind", "apiVersion", "metadata", "items"]);

    // What kubectl prints from it.
    let (head, rows) = table(&s.k(&["get", "configmaps"]));
    assert_eq!(head, ["NAME", "DATA", "AGE"]);
    assert!(rows.iter().any(|r| r[0] == "bin" && r[1] == "2"), "{rows:?}");
}

#[test]
fn table_watches_send_columns_once_and_use_a_crds_printer_columns() {
    let s = Server::start();
    let crd = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"gadgets.example.com"},
      "spec":{"group":"example.com","scope":"Namespaced","names":{"plural":"gadgets","singular":"gadget","kind":"Gadget"},
      "versions":[{"name":"v1","served":true,"storage":true,
        "additionalPrinterColumns":[{"name":"Size","type":"integer","jsonPath":".spec.size"}],
        "schema":{"openAPIV3Schema":{"type":"object","properties":{"spec":{"type":"object","properties":{"size":{"type":"integer"}}}}}}}]}}"#;
    s.k_stdin(&["create", "-f", "-"], crd);
    assert!(common::eventually(std::time::Duration::from_secs(10), || s.curl("GET", "/apis/example.com/v1/namespaces/default/gadgets", None, None).0 == 200));
    for (name, size) in [("g1", 3), ("g2", 5)] {
        let out = s.k_stdin(
            &["create", "-f", "-"],
            &format!(r#"{{"apiVersion":"example.com/v1","kind":"Gadget","metadata":{{"name":"{name}"}},"spec":{{"size":{size}}}}}"#),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    let mut child = s
        .admin_curl()
        .args(["-sSN", "-H", &format!("Accept: {TABLE}")])
        .arg(format!("{}/apis/example.com/v1/namespaces/default/gadgets?watch=true", s.url))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(first["type"], "ADDED");
    let columns: Vec<&str> = first["object"]["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["Name", "Size"], "the CRD's printer columns (no Age when it names its own, as upstream)");
    assert_eq!(first["object"]["rows"][0]["cells"][1], 3);
    assert!(second["object"]["columnDefinitions"].is_null(), "columns come with the first event only");
    assert_eq!(second["object"]["rows"][0]["cells"], serde_json::json!(["g2", 5]));
}
