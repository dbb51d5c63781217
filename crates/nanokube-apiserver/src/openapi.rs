//! OpenAPI v3: the root index and one document per group-version, with a PATCH
//! operation per kind that declares the `fieldValidation` parameter. That is what
//! kubectl's `apply`/`create -f`/`replace`/`edit` look for before they trust the server
//! to validate fields (K8S-API-NOTES §2). Schemas are skeletal for now: each kind's
//! `apiVersion`, `kind`, `metadata`, `spec`, `status`, typed loosely with
//! `x-kubernetes-preserve-unknown-fields`, so client-side apply falls back to its
//! compiled-in strategic-merge types rather than our incomplete schemas. Complete
//! schemas are the API-machinery issue's.
//!
//! Document URLs carry a content hash, so kubectl's HTTP cache never serves a stale one.

use nanokube_api::resources::{self, ResourceDef};
use serde_json::{json, Map, Value};

/// 64-bit FNV-1a, for content hashes in URLs.
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn schema_name(r: &ResourceDef) -> String {
    let pkg = match r.group {
        "" => "core".to_string(),
        g => g.split('.').next().unwrap_or(g).to_string(),
    };
    format!("io.k8s.api.{pkg}.{}.{}", r.version, r.kind)
}

fn gvk(r: &ResourceDef) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

fn kind_schema(r: &ResourceDef) -> Value {
    json!({
        "description": format!("{} is a {} object served by nanokube.", r.kind, r.api_version()),
        "type": "object",
        "properties": {
            "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of an object.", "type": "string"},
            "kind": {"description": "Kind is a string value representing the REST resource this object represents.", "type": "string"},
            "metadata": {"description": "Standard object's metadata.", "allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]},
            "spec": {"description": format!("Specification of the desired behavior of the {}.", r.kind), "type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"description": format!("Most recently observed status of the {}.", r.kind), "type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
        "x-kubernetes-group-version-kind": [gvk(r)],
    })
}

fn object_meta_schema() -> Value {
    json!({
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "Name must be unique within a namespace."},
            "generateName": {"type": "string", "description": "GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."},
            "namespace": {"type": "string", "description": "Namespace defines the space within which each name must be unique."},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Map of string keys and values that can be used to organize and categorize (scope and select) objects."},
            "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}, "description": "Annotations is an unstructured key value map stored with a resource that may be set by external tools to store and retrieve arbitrary metadata."},
            "uid": {"type": "string", "description": "UID is the unique in time and space value for this object."},
            "resourceVersion": {"type": "string", "description": "An opaque value that represents the internal version of this object."},
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": {"type": "string", "format": "date-time", "description": "CreationTimestamp is a timestamp representing the server time when this object was created."},
            "deletionTimestamp": {"type": "string", "format": "date-time", "description": "DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."},
            "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
            "finalizers": {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "set", "x-kubernetes-patch-strategy": "merge"},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "x-kubernetes-list-map-keys": ["uid"], "x-kubernetes-list-type": "map", "x-kubernetes-patch-merge-key": "uid", "x-kubernetes-patch-strategy": "merge"},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
        },
    })
}

fn operation_path(r: &ResourceDef) -> String {
    let base = if r.group.is_empty() { format!("/api/{}", r.version) } else { format!("/apis/{}/{}", r.group, r.version) };
    if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("{base}/{}/{{name}}", r.plural)
    }
}

fn field_validation_param() -> Value {
    json!({"name": "fieldValidation", "in": "query", "description": "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: Ignore, Warn, Strict.", "schema": {"type": "string", "uniqueItems": true}})
}

/// The document of one group-version, or `None` if not served.
pub fn group_version_document(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = resources::in_group_version(group, version).filter(|r| r.is_stored()).collect();
    if defs.is_empty() && resources::in_group_version(group, version).next().is_none() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(), object_meta_schema());
    for r in &defs {
        let name = schema_name(r);
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        let ok = json!({"description": "OK", "content": {"application/json": {"schema": reference}}});
        paths.insert(
            operation_path(r),
            json!({
                "get": {"operationId": format!("read{}", r.kind), "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk(r), "responses": {"200": ok}},
                "put": {"operationId": format!("replace{}", r.kind), "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk(r),
                        "parameters": [field_validation_param()],
                        "requestBody": {"content": {"*/*": {"schema": reference}}, "required": true}, "responses": {"200": ok}},
                "patch": {"operationId": format!("patch{}", r.kind), "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk(r),
                          "parameters": [field_validation_param(), {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}, {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}],
                          "requestBody": {"content": {
                              "application/json-patch+json": {"schema": {"type": "object"}},
                              "application/merge-patch+json": {"schema": {"type": "object"}},
                              "application/apply-patch+yaml": {"schema": {"type": "object"}}}, "required": true},
                          "responses": {"200": ok}},
                "delete": {"operationId": format!("delete{}", r.kind), "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk(r), "responses": {"200": {"description": "OK"}}},
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}}],
            }),
        );
        schemas.insert(name, kind_schema(r));
    }
    let title = if group.is_empty() { "Kubernetes".to_string() } else { format!("Kubernetes {group}") };
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": title, "version": crate::discovery::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// Every served group-version: (`api/v1` style key, group, version).
pub fn group_versions() -> Vec<(String, &'static str, &'static str)> {
    let mut out = vec![("api/v1".to_string(), "", "v1")];
    for g in resources::groups() {
        out.push((format!("apis/{g}/v1"), g, "v1"));
    }
    out
}

/// The documents, serialized once, with their hashes.
pub struct OpenApi {
    /// (`api/v1` key, hash, serialized document).
    docs: Vec<(String, String, bytes::Bytes)>,
    root: bytes::Bytes,
    v2_protobuf: bytes::Bytes,
    v2_json: bytes::Bytes,
}

impl OpenApi {
    /// Build every document.
    pub fn build() -> Self {
        let mut docs = Vec::new();
        let mut root_paths = Map::new();
        for (key, g, v) in group_versions() {
            let Some(doc) = group_version_document(g, v) else { continue };
            let bytes = serde_json::to_vec(&doc).expect("serialize");
            let hash = format!("{:016X}{:016X}", fnv64(&bytes), fnv64(key.as_bytes()));
            root_paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}));
            docs.push((key, hash, bytes::Bytes::from(bytes)));
        }
        let root = bytes::Bytes::from(serde_json::to_vec(&json!({"paths": root_paths})).expect("serialize"));
        OpenApi {
            docs,
            root,
            v2_protobuf: bytes::Bytes::from(v2::protobuf()),
            v2_json: bytes::Bytes::from(serde_json::to_vec(&v2::json()).expect("serialize")),
        }
    }

    /// OpenAPI v2 as protobuf.
    pub fn v2_protobuf(&self) -> bytes::Bytes {
        self.v2_protobuf.clone()
    }

    /// OpenAPI v2 as JSON.
    pub fn v2_json(&self) -> bytes::Bytes {
        self.v2_json.clone()
    }

    /// The root index.
    pub fn root(&self) -> bytes::Bytes {
        self.root.clone()
    }

    /// A document by key (`api/v1`), with its hash.
    pub fn document(&self, key: &str) -> Option<(&str, bytes::Bytes)> {
        self.docs.iter().find(|(k, _, _)| k == key).map(|(_, h, b)| (h.as_str(), b.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_patch_with_field_validation() {
        let doc = group_version_document("", "v1").unwrap();
        let p = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "ConfigMap");
        assert!(p["parameters"].as_array().unwrap().iter().any(|x| x["name"] == "fieldValidation"));
        assert!(doc["paths"]["/api/v1/namespaces/{name}"].is_object());
        let o = OpenApi::build();
        assert!(o.document("apis/apps/v1").is_some());
        let root: Value = serde_json::from_slice(&o.root()).unwrap();
        assert!(root["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap().contains("?hash="));
    }
}

/// OpenAPI v2, which kubectl 1.27 and 1.28 read (as the gnostic `openapi.v2.Document`
/// protobuf) to learn that the server validates fields: they look for each kind's PATCH
/// operation, its `x-kubernetes-group-version-kind` extension and a `fieldValidation`
/// query parameter. The document carries exactly that, for every kind; no definitions,
/// so client-side apply uses kubectl's compiled-in types for strategic merge patches.
pub mod v2 {
    use nanokube_api::resources::{self, ResourceDef};
    use prost::encoding::{encode_key, encode_varint, WireType};
    use serde_json::{json, Map, Value};

    fn bytes_field(tag: u32, data: &[u8], out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn message(tag: u32, build: impl FnOnce(&mut Vec<u8>), out: &mut Vec<u8>) {
        let mut inner = Vec::new();
        build(&mut inner);
        bytes_field(tag, &inner, out);
    }

    fn gvk_yaml(r: &ResourceDef) -> String {
        format!("group: \"{}\"\nkind: {}\nversion: {}\n", r.group, r.kind, r.version)
    }

    fn served() -> impl Iterator<Item = &'static ResourceDef> {
        resources::BUILTIN.iter().filter(|r| r.is_stored())
    }

    /// The document as `openapi.v2.Document` protobuf.
    pub fn protobuf() -> Vec<u8> {
        let mut doc = Vec::new();
        bytes_field(1, b"2.0", &mut doc);
        message(
            2,
            |info| {
                bytes_field(1, b"Kubernetes", info);
                bytes_field(2, crate::discovery::GIT_VERSION.as_bytes(), info);
            },
            &mut doc,
        );
        message(
            8,
            |paths| {
                for r in served() {
                    // Paths.path (2): NamedPathItem { name, value: PathItem { patch (8): Operation } }
                    message(
                        2,
                        |named| {
                            bytes_field(1, super::operation_path(r).as_bytes(), named);
                            message(
                                2,
                                |item| {
                                    message(
                                        8,
                                        |op| {
                                            bytes_field(5, format!("patch{}", r.kind).as_bytes(), op);
                                            for p in ["fieldValidation", "fieldManager", "dryRun", "force"] {
                                                // ParametersItem.parameter (1) → Parameter.non_body_parameter (2)
                                                // → NonBodyParameter.query_parameter_sub_schema (3)
                                                message(
                                                    8,
                                                    |pi| {
                                                        message(
                                                            1,
                                                            |param| {
                                                                message(
                                                                    2,
                                                                    |nb| {
                                                                        message(
                                                                            3,
                                                                            |q| {
                                                                                bytes_field(2, b"query", q);
                                                                                bytes_field(4, p.as_bytes(), q);
                                                                                bytes_field(6, if p == "force" { b"boolean" as &[u8] } else { b"string" }, q);
                                                                            },
                                                                            nb,
                                                                        )
                                                                    },
                                                                    param,
                                                                )
                                                            },
                                                            pi,
                                                        )
                                                    },
                                                    op,
                                                );
                                            }
                                            // vendor_extension (13): NamedAny { name, value: Any { yaml (2) } }
                                            message(
                                                13,
                                                |na| {
                                                    bytes_field(1, b"x-kubernetes-group-version-kind", na);
                                                    message(2, |any| bytes_field(2, gvk_yaml(r).as_bytes(), any), na);
                                                },
                                                op,
                                            );
                                        },
                                        item,
                                    );
                                },
                                named,
                            );
                        },
                        paths,
                    );
                }
            },
            &mut doc,
        );
        doc
    }

    /// The same document as JSON (Swagger 2.0).
    pub fn json() -> Value {
        let mut paths = Map::new();
        for r in served() {
            let params: Vec<Value> = ["fieldValidation", "fieldManager", "dryRun", "force"]
                .iter()
                .map(|p| json!({"name": p, "in": "query", "type": if *p == "force" { "boolean" } else { "string" }, "uniqueItems": true}))
                .collect();
            paths.insert(
                super::operation_path(r),
                json!({"patch": {"operationId": format!("patch{}", r.kind), "parameters": params,
                    "x-kubernetes-group-version-kind": {"group": r.group, "kind": r.kind, "version": r.version}}}),
            );
        }
        json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": crate::discovery::GIT_VERSION}, "paths": paths})
    }
}
