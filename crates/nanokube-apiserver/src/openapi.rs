//! OpenAPI v3: the root index and one document per group-version, with a PATCH
//! operation per kind that declares the `fieldValidation` parameter. That is what
//! kubectl's `apply`/`create -f`/`replace`/`edit` look for before they trust the server
//! to validate fields (K8S-API-NOTES §2), and complete schemas for every kind and every
//! type it uses, with upstream's names (`io.k8s.api.core.v1.Pod`), descriptions (the
//! Go doc comments) and extensions (`x-kubernetes-group-version-kind`,
//! `x-kubernetes-patch-merge-key`/`-strategy`, `x-kubernetes-list-type`/`-map-keys`,
//! `x-kubernetes-int-or-string`), generated from the protobuf schema table, so
//! `kubectl explain` works. The strategic-merge-patch content type is not advertised:
//! client-side apply then uses kubectl's compiled-in types for built-in kinds, exactly.
//!
//! Document URLs carry a content hash, so kubectl's HTTP cache never serves a stale one.

use nanokube_api::protobuf::{docs_of, message_fields, Cardinality, FieldType};
use nanokube_api::resources::{self, ResourceDef, ResourceTable};
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

/// The component name of a message: `api.core.v1.Pod` → `io.k8s.api.core.v1.Pod`.
fn component(msg: &str) -> String {
    format!("io.k8s.{msg}")
}

fn schema_name(r: &ResourceDef) -> String {
    component(&nanokube_api::protobuf::message_for(&r.api_version(), r.kind))
}

fn gvk(r: &ResourceDef) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

/// Messages whose JSON form is not an object of their fields.
fn special_schema(msg: &str) -> Option<Value> {
    Some(match msg {
        "apimachinery.pkg.apis.meta.v1.Time" => json!({"type": "string", "format": "date-time"}),
        "apimachinery.pkg.apis.meta.v1.MicroTime" => json!({"type": "string", "format": "date-time"}),
        "apimachinery.pkg.api.resource.Quantity" => json!({"type": "string"}),
        "apimachinery.pkg.util.intstr.IntOrString" => json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}),
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" | "apiextensions_apiserver.pkg.apis.apiextensions.v1.Json" => {
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
        }
        "apimachinery.pkg.apis.meta.v1.Duration" => json!({"type": "string"}),
        _ => return None,
    })
}

fn scalar_schema(ty: FieldType, refs: &mut Vec<&'static str>) -> Value {
    match ty {
        FieldType::String => json!({"type": "string", "default": ""}),
        FieldType::Bytes => json!({"type": "string", "format": "byte"}),
        FieldType::Int32 => json!({"type": "integer", "format": "int32"}),
        FieldType::Int64 => json!({"type": "integer", "format": "int64"}),
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::Double => json!({"type": "number", "format": "double"}),
        FieldType::Message(m) => {
            refs.push(m);
            json!({"$ref": format!("#/components/schemas/{}", component(m))})
        }
    }
}

/// Add a message's properties (and those of its embedded structs) to `props`.
fn add_properties(msg: &'static str, props: &mut Map<String, Value>, refs: &mut Vec<&'static str>) {
    for f in message_fields(msg).unwrap_or_default() {
        if f.cardinality == Cardinality::Inline {
            if let FieldType::Message(inner) = f.ty {
                add_properties(inner, props, refs);
            }
            continue;
        }
        let (desc, markers) = docs_of(msg, f.json).unwrap_or_default();
        let item = scalar_schema(f.ty, refs);
        let mut p = match f.cardinality {
            Cardinality::List => json!({"type": "array", "items": item}),
            Cardinality::Map => json!({"type": "object", "additionalProperties": item}),
            _ if item.get("$ref").is_some() => json!({"allOf": [item]}),
            _ => item,
        };
        if !desc.is_empty() {
            p["description"] = json!(desc);
        }
        for marker in markers.split(';').filter(|m| !m.is_empty()) {
            let (k, v) = marker.split_once('=').unwrap_or((marker, ""));
            match k {
                "patchMergeKey" => p["x-kubernetes-patch-merge-key"] = json!(v),
                "patchStrategy" => p["x-kubernetes-patch-strategy"] = json!(v),
                "listType" => p["x-kubernetes-list-type"] = json!(v),
                "listMapKey" => {
                    let keys = p.get("x-kubernetes-list-map-keys").and_then(Value::as_array).cloned().unwrap_or_default();
                    let mut keys = keys;
                    keys.push(json!(v));
                    p["x-kubernetes-list-map-keys"] = json!(keys);
                }
                "mapType" => p["x-kubernetes-map-type"] = json!(v),
                _ => {}
            }
        }
        props.insert(f.json.to_string(), p);
    }
}

/// The schemas of `roots` and of every message they use, keyed by component name.
fn schemas(roots: &[(&'static str, Option<&ResourceDef>)]) -> Map<String, Value> {
    let mut out = Map::new();
    let mut queue: Vec<(&'static str, Option<&ResourceDef>)> = roots.to_vec();
    while let Some((msg, def)) = queue.pop() {
        let name = component(msg);
        if out.contains_key(&name) {
            continue;
        }
        let mut schema = special_schema(msg).unwrap_or_else(|| {
            let mut refs = Vec::new();
            let mut props = Map::new();
            if def.is_some() {
                props.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}));
                props.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}));
            }
            add_properties(msg, &mut props, &mut refs);
            queue.extend(refs.into_iter().map(|r| (r, None)));
            json!({"type": "object", "properties": props})
        });
        if let Some((desc, _)) = docs_of(msg, "") {
            if !desc.is_empty() {
                schema["description"] = json!(desc);
            }
        }
        if let Some(d) = def {
            schema["x-kubernetes-group-version-kind"] = json!([gvk(d)]);
        }
        out.insert(name, schema);
    }
    out
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

/// The get/put/patch/delete operations of each resource, referring to its schema by
/// component name.
fn operations(defs: &[&ResourceDef], name_of: impl Fn(&ResourceDef) -> String) -> Map<String, Value> {
    let mut paths = Map::new();
    for r in defs {
        let name = name_of(r);
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
    }
    paths
}

/// A custom resource's component name, as upstream builds it: the reversed group, the
/// version and the kind (`com.example.stable.v1.CronTab`).
fn custom_schema_name(r: &ResourceDef) -> String {
    let reversed: Vec<&str> = r.group.split('.').rev().collect();
    format!("{}.{}.{}", reversed.join("."), r.version, r.kind)
}

/// The document of a group-version served by CRDs: each version's `openAPIV3Schema` with
/// `apiVersion`, `kind` and `metadata` (ObjectMeta) added, as upstream publishes them.
pub fn custom_group_version_document(table: &ResourceTable, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = table.in_group_version(group, version).into_iter().filter(|d| d.custom).collect();
    if defs.is_empty() {
        return None;
    }
    let mut all = schemas(&[("apimachinery.pkg.apis.meta.v1.ObjectMeta", None), ("apimachinery.pkg.apis.meta.v1.ListMeta", None)]);
    for r in &defs {
        let Some(v) = table.custom_resource(r.group, r.plural).and_then(|cr| cr.version(r.version).cloned()) else { continue };
        let mut schema = v.schema.clone();
        if !schema.is_object() {
            schema = json!({"type": "object"});
        }
        let props = schema.as_object_mut().expect("object").entry("properties").or_insert_with(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            p.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}));
            p.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}));
            p.insert("metadata".into(), json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}], "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
        }
        schema["x-kubernetes-group-version-kind"] = json!([gvk(r)]);
        let name = custom_schema_name(r);
        all.insert(
            format!("{name}List"),
            json!({"type": "object", "required": ["items"], "description": format!("{}List is a list of {}", r.kind, r.kind),
                "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                    "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"}]}},
                "x-kubernetes-group-version-kind": [{"group": r.group, "version": r.version, "kind": format!("{}List", r.kind)}]}),
        );
        all.insert(name, schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": operations(&defs, custom_schema_name),
        "components": {"schemas": all},
    }))
}

/// The document of one group-version, or `None` if not served.
pub fn group_version_document(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = resources::in_group_version(group, version).filter(|r| r.is_stored()).collect();
    if defs.is_empty() && resources::in_group_version(group, version).next().is_none() {
        return None;
    }
    let roots: Vec<(&'static str, Option<&ResourceDef>)> = defs
        .iter()
        .filter_map(|r| {
            let msg = nanokube_api::protobuf::message_for(&r.api_version(), r.kind);
            Some((nanokube_api::protobuf::intern(&msg)?, Some(*r)))
        })
        .collect();
    let schemas = schemas(&roots);
    let paths = operations(&defs, schema_name);
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
        let mut versions: Vec<&'static str> = resources::BUILTIN.iter().filter(|r| r.group == g).map(|r| r.version).collect();
        versions.dedup();
        for v in versions {
            out.push((format!("apis/{g}/{v}"), g, v));
        }
    }
    out
}

/// The documents, built on first use (startup never pays for them), serialized once,
/// with their hashes.
#[derive(Default)]
pub struct OpenApi {
    built: std::sync::OnceLock<Built>,
}

struct Built {
    /// (`api/v1` key, hash, serialized document).
    docs: Vec<(String, String, bytes::Bytes)>,
    root: bytes::Bytes,
    v2_protobuf: bytes::Bytes,
    v2_json: bytes::Bytes,
    /// The built-in kinds' v2 definitions, as JSON and as the encoded `definitions`
    /// field, for documents that add custom resources' paths.
    v2_definitions: Map<String, Value>,
    v2_definitions_pb: Vec<u8>,
}

impl OpenApi {
    /// Documents to be built when first asked for.
    pub fn build() -> Self {
        OpenApi::default()
    }

    fn built(&self) -> &Built {
        self.built.get_or_init(|| {
            let mut docs = Vec::new();
            let mut root_paths = Map::new();
            for (key, g, v) in group_versions() {
                let Some(doc) = group_version_document(g, v) else { continue };
                let bytes = serde_json::to_vec(&doc).expect("serialize");
                let hash = format!("{:016X}{:016X}", fnv64(&bytes), fnv64(key.as_bytes()));
                root_paths.insert(key.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}));
                docs.push((key, hash, bytes::Bytes::from(bytes)));
            }
            let v2_definitions = v2::definitions();
            let v2_definitions_pb = v2::definitions_protobuf(&v2_definitions);
            Built {
                docs,
                root: bytes::Bytes::from(serde_json::to_vec(&json!({"paths": root_paths})).expect("serialize")),
                v2_protobuf: bytes::Bytes::from(v2::protobuf(&v2::builtin(), &v2_definitions_pb)),
                v2_json: bytes::Bytes::from(serde_json::to_vec(&v2::json(&v2::builtin(), &v2_definitions)).expect("serialize")),
                v2_definitions,
                v2_definitions_pb,
            }
        })
    }

    /// The custom group-versions' documents with their keys and hashes.
    fn custom_docs(table: &ResourceTable) -> Vec<(String, String, bytes::Bytes)> {
        let mut out = Vec::new();
        for g in table.groups() {
            for v in table.versions(g) {
                let Some(doc) = custom_group_version_document(table, g, v) else { continue };
                let key = format!("apis/{g}/{v}");
                let bytes = serde_json::to_vec(&doc).expect("serialize");
                let hash = format!("{:016X}{:016X}", fnv64(&bytes), fnv64(key.as_bytes()));
                out.push((key, hash, bytes::Bytes::from(bytes)));
            }
        }
        out
    }

    /// The root index, custom group-versions included.
    pub fn root(&self, table: &ResourceTable) -> bytes::Bytes {
        let custom = Self::custom_docs(table);
        if custom.is_empty() {
            return self.built().root.clone();
        }
        let mut root: Value = serde_json::from_slice(&self.built().root).expect("root is JSON");
        for (key, hash, _) in custom {
            root["paths"][&key] = json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")});
        }
        bytes::Bytes::from(serde_json::to_vec(&root).expect("serialize"))
    }

    /// A document by key (`api/v1`), with its hash.
    pub fn document(&self, table: &ResourceTable, key: &str) -> Option<(String, bytes::Bytes)> {
        if let Some((_, h, b)) = self.built().docs.iter().find(|(k, _, _)| k == key) {
            return Some((h.clone(), b.clone()));
        }
        Self::custom_docs(table).into_iter().find(|(k, _, _)| k == key).map(|(_, h, b)| (h, b))
    }

    /// OpenAPI v2 as protobuf.
    pub fn v2_protobuf(&self, table: &ResourceTable) -> bytes::Bytes {
        match custom_stored(table) {
            Some(defs) => bytes::Bytes::from(v2::protobuf(&defs, &self.built().v2_definitions_pb)),
            None => self.built().v2_protobuf.clone(),
        }
    }

    /// OpenAPI v2 as JSON.
    pub fn v2_json(&self, table: &ResourceTable) -> bytes::Bytes {
        match custom_stored(table) {
            Some(defs) => bytes::Bytes::from(serde_json::to_vec(&v2::json(&defs, &self.built().v2_definitions)).expect("serialize")),
            None => self.built().v2_json.clone(),
        }
    }
}

/// Every stored resource when the table has custom ones (else the cached documents serve).
fn custom_stored(table: &ResourceTable) -> Option<Vec<&'static ResourceDef>> {
    let all = table.all();
    all.iter().any(|d| d.custom).then(|| all.into_iter().filter(|d| d.is_stored()).collect())
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
        // Complete schemas: every reference resolves inside the document.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let text = doc.to_string();
        for r in text.split("#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-list-type"], "map");
        assert!(containers["description"].as_str().unwrap().starts_with("List of containers"));
        assert_eq!(schemas["io.k8s.api.core.v1.Pod"]["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert!(schemas["io.k8s.api.core.v1.ConfigMapKeySelector"]["properties"].get("name").is_some(), "embedded structs are flattened");
        let o = OpenApi::build();
        let t = ResourceTable::new();
        assert!(o.document(&t, "apis/apps/v1").is_some());
        let root: Value = serde_json::from_slice(&o.root(&t)).unwrap();
        assert!(root["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap().contains("?hash="));
    }
}

/// OpenAPI v2, which kubectl 1.27 and 1.28 read (as the gnostic `openapi.v2.Document`
/// protobuf) to learn that the server validates fields: they look for each kind's PATCH
/// operation, its `x-kubernetes-group-version-kind` extension and a `fieldValidation`
/// query parameter; and the `definitions` of every built-in kind and the types it uses,
/// the v3 schemas in v2's dialect, which `kubectl explain --output=plaintext-openapiv2`
/// and other v2 consumers read. Custom resources have their paths here and their schemas
/// in v3.
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

    /// The built-in stored resources.
    pub fn builtin() -> Vec<&'static ResourceDef> {
        resources::BUILTIN.iter().filter(|r| r.is_stored()).collect()
    }

    /// The v2 definitions of every built-in kind and of the types they use.
    pub fn definitions() -> Map<String, Value> {
        let roots: Vec<(&'static str, Option<&ResourceDef>)> = builtin()
            .into_iter()
            .filter_map(|r| Some((nanokube_api::protobuf::intern(&nanokube_api::protobuf::message_for(&r.api_version(), r.kind))?, Some(r))))
            .collect();
        super::schemas(&roots).into_iter().map(|(k, v)| (k, to_v2(&v))).collect()
    }

    /// A v3 schema in v2's dialect: references under `#/definitions/`, a reference with
    /// a description directly rather than wrapped in `allOf`, int-or-string as a string
    /// format, no `default`s.
    fn to_v2(v3: &Value) -> Value {
        let Some(m) = v3.as_object() else { return v3.clone() };
        if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            let mut out = json!({"type": "string", "format": "int-or-string"});
            if let Some(d) = m.get("description") {
                out["description"] = d.clone();
            }
            return out;
        }
        let mut out = Map::new();
        for (k, v) in m {
            match k.as_str() {
                "default" | "anyOf" => {}
                "$ref" => {
                    let name = v.as_str().unwrap_or("").trim_start_matches("#/components/schemas/");
                    out.insert("$ref".into(), json!(format!("#/definitions/{name}")));
                }
                "allOf" if v.as_array().is_some_and(|a| a.len() == 1) => {
                    if let Some(Value::Object(inner)) = v.get(0).map(to_v2) {
                        out.extend(inner);
                    }
                }
                "properties" => {
                    let props: Map<String, Value> = v.as_object().into_iter().flatten().map(|(n, p)| (n.clone(), to_v2(p))).collect();
                    out.insert(k.clone(), Value::Object(props));
                }
                "items" | "additionalProperties" if v.is_object() => {
                    out.insert(k.clone(), to_v2(v));
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        Value::Object(out)
    }

    /// One `openapi.v2.Schema` message.
    fn schema_protobuf(schema: &Value, out: &mut Vec<u8>) {
        let Some(m) = schema.as_object() else { return };
        let text = |tag: u32, key: &str, out: &mut Vec<u8>| {
            if let Some(v) = m.get(key).and_then(Value::as_str) {
                bytes_field(tag, v.as_bytes(), out);
            }
        };
        text(1, "$ref", out);
        text(2, "format", out);
        text(3, "title", out);
        text(4, "description", out);
        for r in m.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            bytes_field(19, r.as_bytes(), out);
        }
        match m.get("additionalProperties") {
            Some(Value::Bool(b)) => message(
                21,
                |ap| {
                    encode_key(2, WireType::Varint, ap);
                    encode_varint(*b as u64, ap);
                },
                out,
            ),
            Some(s @ Value::Object(_)) => message(21, |ap| message(1, |inner| schema_protobuf(s, inner), ap), out),
            _ => {}
        }
        if let Some(t) = m.get("type").and_then(Value::as_str) {
            message(22, |ti| bytes_field(1, t.as_bytes(), ti), out);
        }
        if let Some(items) = m.get("items").filter(|i| i.is_object()) {
            message(23, |ii| message(1, |inner| schema_protobuf(items, inner), ii), out);
        }
        if let Some(props) = m.get("properties").and_then(Value::as_object) {
            named_schemas(25, props, out);
        }
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
            // NamedAny { name, value: Any { yaml } }: JSON is YAML.
            message(
                31,
                |na| {
                    bytes_field(1, k.as_bytes(), na);
                    message(2, |any| bytes_field(2, v.to_string().as_bytes(), any), na);
                },
                out,
            );
        }
    }

    /// A message at `tag` holding `schemas` as repeated `NamedSchema { name, value }`
    /// (Properties, Definitions).
    fn named_schemas(tag: u32, schemas: &Map<String, Value>, out: &mut Vec<u8>) {
        message(
            tag,
            |list| {
                for (name, s) in schemas {
                    message(
                        1,
                        |named| {
                            bytes_field(1, name.as_bytes(), named);
                            message(2, |inner| schema_protobuf(s, inner), named);
                        },
                        list,
                    );
                }
            },
            out,
        );
    }

    /// The `definitions` field (9) of a Document, encoded.
    pub fn definitions_protobuf(defs: &Map<String, Value>) -> Vec<u8> {
        let mut out = Vec::new();
        named_schemas(9, defs, &mut out);
        out
    }

    /// The document as `openapi.v2.Document` protobuf, for `served` resources, with the
    /// encoded definitions appended.
    pub fn protobuf(served: &[&ResourceDef], definitions: &[u8]) -> Vec<u8> {
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
                for r in served {
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
        doc.extend_from_slice(definitions);
        doc
    }

    /// The same document as JSON (Swagger 2.0).
    pub fn json(served: &[&ResourceDef], definitions: &Map<String, Value>) -> Value {
        let mut paths = Map::new();
        for r in served {
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
        json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": crate::discovery::GIT_VERSION}, "paths": paths, "definitions": definitions})
    }
}
