//! Server-side Tables (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), what plain
//! `kubectl get` asks for, and `PartialObjectMetadata`, written straight into bytes.
//!
//! A row needs only the cells and the object's `metadata`; decoding each whole object
//! into a `serde_json::Value` to get them was most of a Table's cost (allocating and
//! freeing every managed-field entry and every ConfigMap value). Instead each object's
//! JSON is split at its top-level fields, borrowed from the stored bytes: `metadata` is
//! copied into the row as it is, and only what the cells can read is decoded (not
//! `metadata.managedFields`, not the values of a ConfigMap's or Secret's data maps). A
//! custom resource's printer columns may read any field, so its objects are decoded
//! whole but for their managed fields.
//!
//! Fields are written in the order of upstream's Go structs (`Table`, `TableRow`,
//! `PartialObjectMetadata`), as kube-apiserver writes them.

use nanokube_api::crd::CrdVersion;
use nanokube_api::go_order::write_plain as write_json;
use nanokube_api::resources::ResourceDef;
use nanokube_api::table;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::registry::Obj;

/// Which object a Table row embeds (`includeObject`).
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Include {
    /// No object.
    None,
    /// The object's metadata as `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

/// What one Table is made of, besides its rows.
pub(crate) struct TableSpec<'a> {
    /// The resource listed.
    pub def: &'a ResourceDef,
    /// The CRD version whose printer columns a custom resource's Table shows.
    pub custom: Option<&'a CrdVersion>,
    /// What each row embeds.
    pub include: Include,
    /// `meta.k8s.io` version asked for (`v1`, `v1beta1`).
    pub meta_version: &'a str,
    /// The time ages are counted to.
    pub now: OffsetDateTime,
}

/// A whole Table of `objs` with `list_meta` as its metadata; `columns` false writes
/// `"columnDefinitions":null` (the watch events after the first, as upstream).
pub(crate) fn write_table(spec: &TableSpec<'_>, objs: &[Obj], list_meta: &Value, columns: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 + objs.len() * 512);
    out.extend_from_slice(b"{\"kind\":\"Table\",\"apiVersion\":\"meta.k8s.io/");
    out.extend_from_slice(spec.meta_version.as_bytes());
    out.extend_from_slice(b"\",\"metadata\":");
    write_json(&mut out, list_meta);
    out.extend_from_slice(b",\"columnDefinitions\":");
    if columns {
        match spec.custom {
            Some(v) => write_json(&mut out, &table::custom_column_definitions(&v.columns)),
            None => write_json(&mut out, &table::column_definitions(spec.def.group, spec.def.plural)),
        }
    } else {
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"rows\":[");
    let mut rows: Vec<&Obj> = objs.iter().collect();
    if spec.custom.is_none() && spec.def.group == "flowcontrol.apiserver.k8s.io" && spec.def.plural == "flowschemas" {
        // Upstream's printer lists FlowSchemas in the order they are matched.
        rows.sort_by_cached_key(|o| {
            o.with_value(|v| (v.pointer("/spec/matchingPrecedence").and_then(Value::as_i64).unwrap_or(0), nanokube_api::meta::name(v).to_string()))
        });
    }
    for (i, obj) in rows.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_row(&mut out, spec, obj);
    }
    out.extend_from_slice(b"]}");
    out
}

/// One `TableRow`: `cells`, then `object` as `include` asks.
fn write_row(out: &mut Vec<u8>, spec: &TableSpec<'_>, obj: &Obj) {
    let json = obj.json();
    let whole = spec.custom.is_some();
    let ((cells, conditions), metadata) = match split(&json, whole, table::spec_fields(spec.def.group, spec.def.plural)) {
        Ok(parts) => (cells(spec, &parts.value), parts.metadata),
        // Not an object of plain keys (never written so, but stored bytes are not trusted):
        // the slow way, from the decoded value.
        Err(_) => (obj.with_value(|v| cells(spec, v)), None),
    };
    out.extend_from_slice(b"{\"cells\":");
    write_json(out, &cells);
    if let Some(c) = conditions {
        out.extend_from_slice(b",\"conditions\":");
        write_json(out, &c);
    }
    match spec.include {
        Include::None => {}
        Include::Object => {
            out.extend_from_slice(b",\"object\":");
            out.extend_from_slice(&json);
        }
        Include::Metadata => {
            out.extend_from_slice(b",\"object\":");
            match metadata {
                Some(m) => write_partial(out, spec.meta_version, m.get().as_bytes()),
                None => obj.with_value(|v| write_partial_value(out, spec.meta_version, v)),
            }
        }
    }
    out.push(b'}');
}

/// A row's cells, and its `conditions` where the kind has any.
fn cells(spec: &TableSpec<'_>, obj: &Value) -> (Vec<Value>, Option<Value>) {
    match spec.custom {
        Some(v) => (table::custom_cells(&v.columns, obj, spec.now), None),
        None => (table::cells(spec.def.group, spec.def.plural, obj, spec.now), table::row_conditions(spec.def.group, spec.def.plural, obj)),
    }
}

/// `PartialObjectMetadata` of an object whose metadata is the JSON `metadata`.
fn write_partial(out: &mut Vec<u8>, meta_version: &str, metadata: &[u8]) {
    out.extend_from_slice(b"{\"kind\":\"PartialObjectMetadata\",\"apiVersion\":\"meta.k8s.io/");
    out.extend_from_slice(meta_version.as_bytes());
    out.extend_from_slice(b"\",\"metadata\":");
    out.extend_from_slice(metadata);
    out.push(b'}');
}

fn write_partial_value(out: &mut Vec<u8>, meta_version: &str, obj: &Value) {
    let empty = Value::Object(Map::new());
    let mut metadata = Vec::new();
    write_json(&mut metadata, obj.get("metadata").unwrap_or(&empty));
    write_partial(out, meta_version, &metadata);
}

/// The object's `PartialObjectMetadata` as JSON (`Accept: ...;as=PartialObjectMetadata`).
pub(crate) fn partial_metadata_json(obj: &Obj, meta_version: &str) -> Vec<u8> {
    let json = obj.json();
    let mut out = Vec::with_capacity(json.len().min(4096));
    match serde_json::from_slice::<MetadataOnly<'_>>(&json) {
        Ok(top) => match top.metadata {
            Some(m) => write_partial(&mut out, meta_version, m.get().as_bytes()),
            None => write_partial(&mut out, meta_version, b"{}"),
        },
        Err(_) => obj.with_value(|v| write_partial_value(&mut out, meta_version, v)),
    }
    out
}

/// A `PartialObjectMetadataList` of `objs` with `list_meta` as its metadata.
pub(crate) fn write_partial_list(objs: &[Obj], list_meta: &Value, meta_version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024 + objs.len() * 512);
    out.extend_from_slice(b"{\"kind\":\"PartialObjectMetadataList\",\"apiVersion\":\"meta.k8s.io/");
    out.extend_from_slice(meta_version.as_bytes());
    out.extend_from_slice(b"\",\"metadata\":");
    write_json(&mut out, list_meta);
    out.extend_from_slice(b",\"items\":[");
    for (i, obj) in objs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&partial_metadata_json(obj, meta_version));
    }
    out.extend_from_slice(b"]}");
    out
}

/// An object's `metadata` as written, borrowed from its JSON.
#[derive(serde::Deserialize)]
struct MetadataOnly<'a> {
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
}

/// What a row is made from: the fields the cells can read, decoded, and the
/// `metadata` as written.
struct Split<'a> {
    value: Value,
    metadata: Option<&'a RawValue>,
}

/// The metadata fields built-in kinds' cells read (see `nanokube_api::table::cells`).
const CELL_METADATA: [&str; 6] = ["name", "namespace", "creationTimestamp", "deletionTimestamp", "labels", "annotations"];

/// Splits `json` at its top-level fields in one pass, without building a map of them.
/// Unless `whole`, only what built-in cells read is decoded: `metadata`'s
/// [`CELL_METADATA`], the keys (not the values) of `data`/`binaryData`, of `spec` what
/// `spec_fields` names (all of it when `None`), and every other field but `kind` and
/// `apiVersion`. `whole` decodes everything but managed fields.
fn split<'a>(json: &'a [u8], whole: bool, spec_fields: Option<&'static table::SpecFields>) -> serde_json::Result<Split<'a>> {
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_slice(json);
    let split = de.deserialize_map(TopVisitor { whole, spec_fields })?;
    de.end()?;
    Ok(split)
}

struct TopVisitor {
    whole: bool,
    spec_fields: Option<&'static table::SpecFields>,
}

impl<'de> serde::de::Visitor<'de> for TopVisitor {
    type Value = Split<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Split<'de>, A::Error> {
        let mut value = Map::new();
        let mut metadata = None;
        // Keys with escapes cannot be borrowed: the error sends the row the slow way.
        while let Some(key) = map.next_key::<&'de str>()? {
            if let (false, "spec", Some(fields)) = (self.whole, key, self.spec_fields) {
                value.insert(key.to_string(), map.next_value_seed(LeanSpec(fields))?);
                continue;
            }
            match key {
                "metadata" => {
                    let raw: &'de RawValue = map.next_value()?;
                    metadata = Some(raw);
                    let fields = lean_metadata(raw.get(), self.whole).map_err(serde::de::Error::custom)?;
                    value.insert(key.to_string(), fields);
                }
                "kind" | "apiVersion" if !self.whole => {
                    map.next_value::<IgnoredAny>()?;
                }
                "data" | "binaryData" if !self.whole => {
                    let keys: KeysOnly = map.next_value()?;
                    value.insert(key.to_string(), Value::Object(keys.0));
                }
                _ => {
                    value.insert(key.to_string(), map.next_value()?);
                }
            }
        }
        Ok(Split { value: Value::Object(value), metadata })
    }
}

/// `metadata` with only what the cells read ([`CELL_METADATA`], or all but managed
/// fields when `whole`).
fn lean_metadata(json: &str, whole: bool) -> serde_json::Result<Value> {
    struct MetaVisitor {
        whole: bool,
    }
    impl<'de> serde::de::Visitor<'de> for MetaVisitor {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut m = Map::new();
            while let Some(key) = map.next_key::<&'de str>()? {
                let wanted = if self.whole { key != "managedFields" } else { CELL_METADATA.contains(&key) };
                if wanted {
                    m.insert(key.to_string(), map.next_value()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Value::Object(m))
        }
    }
    use serde::Deserializer as _;
    serde_json::Deserializer::from_str(json).deserialize_map(MetaVisitor { whole })
}

/// A `spec` with only the fields the cells read, and the lists they only count as lists
/// of `null`s of the same length (a pod's containers, the bulk of its spec, are not
/// decoded for a Table).
struct LeanSpec(&'static table::SpecFields);

impl<'de> serde::de::DeserializeSeed<'de> for LeanSpec {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for LeanSpec {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a spec")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let fields = self.0;
        let mut m = Map::new();
        while let Some(key) = map.next_key::<&'de str>()? {
            if fields.read.contains(&key) {
                m.insert(key.to_string(), map.next_value()?);
            } else if fields.counted.contains(&key) {
                let n = map.next_value::<Counted>()?.0;
                m.insert(key.to_string(), Value::Array(vec![Value::Null; n]));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(m))
    }

    // A `null` spec stays `null` (anything else not an object sends the row the slow way).
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// How many items a JSON list has (0 for anything else).
struct Counted(usize);

impl<'de> serde::Deserialize<'de> for Counted {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Counted, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Counted;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Counted, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Counted(n))
            }
            fn visit_unit<E>(self) -> Result<Counted, E> {
                Ok(Counted(0))
            }
        }
        de.deserialize_any(V)
    }
}

/// A JSON object's keys, each with `null` for its value.
struct KeysOnly(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for KeysOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> serde::de::Visitor<'de> for KeysVisitor {
            type Value = KeysOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<KeysOnly, A::Error> {
                let mut m = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<IgnoredAny>()?;
                    m.insert(key, Value::Null);
                }
                Ok(KeysOnly(m))
            }
            // `data: null` is an empty map to the cells.
            fn visit_unit<E>(self) -> Result<KeysOnly, E> {
                Ok(KeysOnly(Map::new()))
            }
        }
        d.deserialize_any(KeysVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_metadata_as_written_and_drops_what_cells_never_read() {
        let json = br#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"a","managedFields":[{"manager":"x"}]},"data":{"k":"a long value"}}"#;
        let s = split(json, false, None).unwrap();
        assert_eq!(s.metadata.unwrap().get(), r#"{"name":"a","managedFields":[{"manager":"x"}]}"#);
        assert_eq!(s.value["metadata"], serde_json::json!({"name": "a"}));
        assert!(s.value.get("kind").is_none());
        assert_eq!(s.value["data"], serde_json::json!({"k": null}));
        let whole = split(json, true, None).unwrap();
        assert_eq!(whole.value["data"], serde_json::json!({"k": "a long value"}));
    }

    #[test]
    fn split_refuses_what_is_not_an_object() {
        assert!(split(b"[1]", false, None).is_err());
        assert!(split(br#"{"a":"#, false, None).is_err());
    }

    /// A pod's row from its lean split (most of the spec left undecoded) is the row from
    /// the whole pod.
    #[test]
    fn a_pod_row_reads_only_what_it_needs_of_the_spec_and_is_the_same() {
        let now = OffsetDateTime::now_utc();
        let pods = [
            serde_json::json!({"kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [{"manager": "kubectl"}]},
                "spec": {"nodeName": "n1", "readinessGates": [{"conditionType": "example.com/gate"}],
                    "initContainers": [{"name": "setup", "image": "busybox"}, {"name": "proxy", "image": "envoy", "restartPolicy": "Always"}],
                    "containers": [{"name": "a", "image": "nginx", "ports": [{"containerPort": 80}], "resources": {"requests": {"cpu": "100m"}}}, {"name": "b", "image": "busybox"}],
                    "volumes": [{"name": "v", "emptyDir": {}}], "tolerations": [{"key": "k", "operator": "Exists"}]},
                "status": {"phase": "Running", "podIP": "127.244.0.5", "podIPs": [{"ip": "127.244.0.5"}],
                    "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}, {"type": "example.com/gate", "status": "True"}],
                    "initContainerStatuses": [
                        {"name": "setup", "ready": true, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                        {"name": "proxy", "ready": true, "started": true, "restartCount": 1, "state": {"running": {}},
                            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:01:00Z"}}}],
                    "containerStatuses": [{"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}}, {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}),
            serde_json::json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "done", "deletionTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"containers": [{"name": "a", "image": "x"}]},
                "status": {"phase": "Succeeded", "containerStatuses": [{"name": "a", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}),
        ];
        let def = nanokube_api::resources::find("", "v1", "pods").unwrap();
        let spec = TableSpec { def, custom: None, include: Include::None, meta_version: "v1", now };
        for pod in pods {
            let json = serde_json::to_vec(&pod).unwrap();
            let lean = split(&json, false, table::spec_fields("", "pods")).unwrap();
            assert!(lean.value["spec"].get("volumes").is_none(), "{}", lean.value["spec"]);
            assert_eq!(lean.value["spec"]["containers"].as_array().map(Vec::len), pod["spec"]["containers"].as_array().map(Vec::len));
            assert_eq!(cells(&spec, &lean.value), cells(&spec, &pod), "{pod}");
        }
    }
}
