//! Discovery documents, legacy (`APIVersions`, `APIGroupList`, `APIResourceList`) and
//! aggregated (`APIGroupDiscoveryList`, v2 and v2beta1), built from the cluster's resource
//! table, so custom resources appear as soon as the CRD controller adds them.

use nanokube_api::resources::{ResourceDef, ResourceTable};
use serde_json::{json, Value};

/// The Kubernetes version nanokube answers as (`/version`, nodes' kubelet version).
pub const KUBE_MAJOR: &str = "1";
/// Minor version.
pub const KUBE_MINOR: &str = "33";
/// `gitVersion`, with a build suffix as k3s does (`v1.33.1+k3s1`).
pub const GIT_VERSION: &str = "v1.33.0+nanokube";

/// A discovery document as JSON with each object's fields in the order of upstream's Go
/// structs (`APIVersions`, `APIGroupList`, `APIGroup`, `GroupVersionForDiscovery`,
/// `APIResourceList`, `APIResource`, and the aggregated `APIGroupDiscoveryList`,
/// `APIVersionDiscovery`, `APIResourceDiscovery`, `APISubresourceDiscovery`), which the
/// documents' shapes tell apart; fields a struct does not list come last, sorted.
pub fn to_bytes(doc: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    write_ordered(&mut out, doc);
    out
}

fn field_order(m: &serde_json::Map<String, Value>) -> &'static [&'static str] {
    if m.contains_key("namespaced") {
        &["name", "singularName", "namespaced", "group", "version", "kind", "verbs", "shortNames", "categories", "storageVersionHash"]
    } else if m.contains_key("resource") && m.contains_key("responseKind") {
        &["resource", "responseKind", "scope", "singularResource", "verbs", "shortNames", "categories", "subresources"]
    } else if m.contains_key("subresource") {
        &["subresource", "responseKind", "acceptedTypes", "verbs"]
    } else if m.contains_key("freshness") {
        &["version", "resources", "freshness"]
    } else if m.contains_key("clientCIDR") {
        &["clientCIDR", "serverAddress"]
    } else if m.contains_key("group") && m.contains_key("version") && m.contains_key("kind") {
        &["group", "version", "kind"]
    } else if m.contains_key("groupVersion") && !m.contains_key("resources") {
        &["groupVersion", "version"]
    } else {
        &[
            "kind",
            "apiVersion",
            "metadata",
            "name",
            "groupVersion",
            "versions",
            "preferredVersion",
            "serverAddressByClientCIDRs",
            "groups",
            "resources",
            "items",
            "creationTimestamp",
        ]
    }
}

fn write_ordered(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Object(m) => {
            let order = field_order(m);
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by_key(|k| (order.iter().position(|o| o == k).unwrap_or(usize::MAX), k.as_str()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                nanokube_api::go_order::write_plain(out, k);
                out.push(b':');
                write_ordered(out, &m[k]);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_ordered(out, item);
            }
            out.push(b']');
        }
        other => nanokube_api::go_order::write_plain(out, other),
    }
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "emulationMajor": KUBE_MAJOR,
        "emulationMinor": KUBE_MINOR,
        "minCompatibilityMajor": KUBE_MAJOR,
        "minCompatibilityMinor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-11-29T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": format!("linux/{}", if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" }),
    })
}

/// `/api` (legacy).
pub fn api_versions(server_address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]})
}

fn group_entry(table: &ResourceTable, group: &str) -> Value {
    let versions: Vec<Value> = table.versions(group).into_iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

/// `/apis` (legacy).
pub fn api_group_list(table: &ResourceTable) -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": table.groups().into_iter().map(|g| group_entry(table, g)).collect::<Vec<_>>()})
}

/// `/apis/{group}` (legacy), if the group exists.
pub fn api_group(table: &ResourceTable, group: &str) -> Option<Value> {
    table.groups().contains(&group).then(|| {
        let mut g = group_entry(table, group);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

fn storage_version_hash(r: &ResourceDef) -> String {
    use base64::Engine;
    let h = crate::openapi::fnv64(format!("{}/{}/{}", r.group, r.version, r.kind).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&h.to_be_bytes()[..8])[..11].to_string()
}

/// `/api/v1` or `/apis/{group}/{version}` (legacy), if served.
pub fn api_resource_list(table: &ResourceTable, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = table.in_group_version(group, version);
    if defs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for r in defs {
        let mut e = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        if r.is_stored() {
            e["storageVersionHash"] = json!(storage_version_hash(r));
        }
        out.push(e);
        for s in r.subresources {
            let mut se = json!({"name": format!("{}/{}", r.plural, s.name), "singularName": "", "namespaced": r.namespaced, "kind": s.kind, "verbs": s.verbs});
            if s.group != r.group || s.version != r.version {
                se["group"] = json!(s.group);
                se["version"] = json!(s.version);
            }
            out.push(se);
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}))
}

fn aggregated_resource(r: &ResourceDef) -> Value {
    let mut e = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    if !r.subresources.is_empty() {
        e["subresources"] = json!(r
            .subresources
            .iter()
            .map(|s| json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs}))
            .collect::<Vec<_>>());
    }
    e
}

/// Aggregated discovery for `/api` (core) or `/apis` (named groups), as `version`
/// (`v2` or `v2beta1`).
pub fn aggregated(table: &ResourceTable, core: bool, version: &str) -> Value {
    let groups: Vec<&str> = if core { vec![""] } else { table.groups() };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|g| {
            let versions: Vec<Value> = table
                .versions(g)
                .into_iter()
                .map(|v| {
                    let res: Vec<Value> = table.in_group_version(g, v).into_iter().map(aggregated_resource).collect();
                    json!({"version": v, "resources": res, "freshness": "Current"})
                })
                .collect();
            let metadata = if g.is_empty() { json!({"creationTimestamp": null}) } else { json!({"name": g, "creationTimestamp": null}) };
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_aggregated_entry_has_a_response_kind() {
        for core in [true, false] {
            let d = aggregated(&ResourceTable::new(), core, "v2");
            for item in d["items"].as_array().unwrap() {
                for r in item["versions"][0]["resources"].as_array().unwrap() {
                    assert!(!r["responseKind"]["kind"].as_str().unwrap().is_empty());
                    for s in r["subresources"].as_array().into_iter().flatten() {
                        assert!(!s["responseKind"]["kind"].as_str().unwrap().is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn documents_are_written_in_go_field_order() {
        let t = ResourceTable::new();
        let text = String::from_utf8(to_bytes(&api_resource_list(&t, "apps", "v1").unwrap())).unwrap();
        assert!(text.starts_with(r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"apps/v1","resources":[{"name":"controllerrevisions","singularName":"controllerrevision","namespaced":true,"kind":"ControllerRevision","verbs":["#), "{text}");
        let text = String::from_utf8(to_bytes(&aggregated(&t, true, "v2"))).unwrap();
        assert!(text.starts_with(r#"{"kind":"APIGroupDiscoveryList","apiVersion":"apidiscovery.k8s.io/v2","metadata":{},"items":[{"metadata":{"creationTimestamp":null},"versions":[{"version":"v1","resources":[{"resource":"bindings","responseKind":{"group":"","version":"v1","kind":"Binding"},"scope":"Namespaced""#), "{text}");
    }

    #[test]
    fn legacy_lists() {
        let t = ResourceTable::new();
        let core = api_resource_list(&t, "", "v1").unwrap();
        let names: Vec<&str> = core["resources"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"pods") && names.contains(&"pods/status") && names.contains(&"namespaces"));
        let scale =
            api_resource_list(&t, "apps", "v1").unwrap()["resources"].as_array().unwrap().iter().find(|r| r["name"] == "deployments/scale").cloned().unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert!(api_resource_list(&t, "nope", "v1").is_none());
    }
}
