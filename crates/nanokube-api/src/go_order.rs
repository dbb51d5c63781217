//! Built-in objects' JSON in the order kube-apiserver writes it: `kind`, `apiVersion`,
//! then each field in the order of its Go struct (`metadata`, `spec`, `status`, and
//! within them likewise), map keys sorted, as `encoding/json` writes typed objects.
//!
//! Objects stay `serde_json::Value` (sorted maps) everywhere else; only their bytes are
//! ordered, from the schema table's field order
//! ([`crate::protobuf::fields_in_go_order`]). Custom resources are written with every
//! map sorted, as upstream writes unstructured objects, and so is anything the table
//! does not know (a field not in the schema comes after the known ones, sorted).

use serde_json::{Map, Value};

use crate::protobuf::{self, Cardinality, FieldInfo, FieldType};

/// The schema message of a built-in object, from its own `apiVersion` and `kind`; `None`
/// for custom resources and anything else.
pub fn message_of(obj: &Value) -> Option<&'static str> {
    let api_version = obj.get("apiVersion")?.as_str()?;
    let kind = obj.get("kind")?.as_str()?;
    if api_version.starts_with('/') {
        // The core group spelt with its empty name: not worth a table entry.
        return message_of_uncached(api_version, kind);
    }
    messages().get(kind)?.iter().find(|(v, _)| v == api_version).map(|(_, msg)| *msg)
}

/// What [`message_of_uncached`] gives for every kind and apiVersion it gives one for,
/// by kind (this runs for every object written or encoded).
fn messages() -> &'static crate::FastMap<&'static str, Vec<(String, &'static str)>> {
    static MESSAGES: std::sync::OnceLock<crate::FastMap<&'static str, Vec<(String, &'static str)>>> = std::sync::OnceLock::new();
    MESSAGES.get_or_init(|| {
        let mut map: crate::FastMap<&'static str, Vec<(String, &'static str)>> = Default::default();
        let builtin = crate::resources::BUILTIN;
        // A message needs a served version of the kind's group: every pair of a served
        // group/version and a kind of that group is a candidate.
        for served in builtin {
            for def in builtin.iter().filter(|d| d.group == served.group) {
                let api_version = served.api_version();
                let Some(msg) = message_of_uncached(&api_version, def.kind) else { continue };
                let entry = map.entry(def.kind).or_default();
                if !entry.iter().any(|(v, _)| *v == api_version) {
                    entry.push((api_version, msg));
                }
            }
        }
        map
    })
}

/// The protobuf message of a built-in kind at an apiVersion, when the version is served
/// for it.
fn message_of_uncached(api_version: &str, kind: &str) -> Option<&'static str> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let def = crate::resources::find_kind(group, kind)?;
    crate::resources::find(group, version, def.plural)?;
    protobuf::intern(&protobuf::message_for(api_version, kind))
}

/// `obj` as JSON, in Go order when it is a built-in object (see the module docs).
pub fn to_vec(obj: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    write(&mut out, obj);
    out
}

/// Append `obj` as JSON to `out`, in Go order when it is a built-in object.
pub fn write(out: &mut Vec<u8>, obj: &Value) {
    match (message_of(obj), obj) {
        (Some(msg), Value::Object(map)) => write_object(out, msg, map, &mut |out, meta, v| write_message(out, meta, v)),
        _ => write_plain(out, obj),
    }
}

/// Writes an object's `metadata`: given the output, the metadata's message and its value.
pub type MetadataWriter<'a> = dyn FnMut(&mut Vec<u8>, Option<&'static str>, &Value) + 'a;

/// A top-level object of message `msg`: `kind`, `apiVersion`, then its fields in Go
/// order. `metadata` is written by `write_metadata` (given `out`, the metadata message
/// and the value), so a caller can note where things are inside it.
pub fn write_object(out: &mut Vec<u8>, msg: &'static str, map: &Map<String, Value>, write_metadata: &mut MetadataWriter<'_>) {
    out.push(b'{');
    let mut first = true;
    for key in ["kind", "apiVersion"] {
        if let Some(v) = map.get(key) {
            entry(out, &mut first, key);
            write_plain(out, v);
        }
    }
    for (key, field, value) in ordered(msg, map) {
        if key == "kind" || key == "apiVersion" {
            continue;
        }
        entry(out, &mut first, key);
        match field {
            Some(f) if key == "metadata" => write_metadata(out, message_type(f), value),
            Some(f) => write_field(out, f, value),
            None => write_plain(out, value),
        }
    }
    out.push(b'}');
}

/// The entries of `map` in the order of `msg`'s fields, each with its field (`None` for
/// keys the message does not have, which come last, sorted).
pub fn ordered<'a>(msg: &str, map: &'a Map<String, Value>) -> Vec<(&'a str, Option<FieldInfo>, &'a Value)> {
    let fields = protobuf::fields_in_go_order(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(map.len());
    for f in fields {
        if let Some((k, v)) = map.get_key_value(f.json) {
            out.push((k.as_str(), Some(*f), v));
        }
    }
    if out.len() < map.len() {
        for (k, v) in map {
            if !fields.iter().any(|f| f.json == k) {
                out.push((k.as_str(), None, v));
            }
        }
    }
    out
}

/// A message's fields in Go order (known fields), or sorted (anything else).
pub fn write_message(out: &mut Vec<u8>, msg: Option<&'static str>, value: &Value) {
    let (Some(msg), Value::Object(map)) = (msg, value) else {
        write_plain(out, value);
        return;
    };
    out.push(b'{');
    let mut first = true;
    for (key, field, v) in ordered(msg, map) {
        entry(out, &mut first, key);
        match field {
            Some(f) => write_field(out, f, v),
            None => write_plain(out, v),
        }
    }
    out.push(b'}');
}

/// One field's value, by its cardinality: a message, a list of them, a map of them.
pub fn write_field(out: &mut Vec<u8>, field: FieldInfo, value: &Value) {
    let msg = message_type(field);
    if msg.is_none() {
        write_plain(out, value);
        return;
    }
    match (field.cardinality, value) {
        (Cardinality::List, Value::Array(items)) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_message(out, msg, item);
            }
            out.push(b']');
        }
        (Cardinality::Map, Value::Object(entries)) => {
            out.push(b'{');
            let mut first = true;
            for (k, v) in entries {
                entry(out, &mut first, k);
                write_message(out, msg, v);
            }
            out.push(b'}');
        }
        (Cardinality::One | Cardinality::Inline, v) => write_message(out, msg, v),
        (_, v) => write_plain(out, v),
    }
}

/// The message a field holds, unless its JSON is not an object of fields (a scalar, a
/// time, a quantity, free-form JSON).
fn message_type(field: FieldInfo) -> Option<&'static str> {
    match field.ty {
        FieldType::Message(m) if !protobuf::is_opaque(m) => Some(m),
        _ => None,
    }
}

fn entry(out: &mut Vec<u8>, first: &mut bool, key: &str) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    // A string into a Vec: cannot fail.
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
}

/// `value` as serde_json writes it (maps sorted).
pub fn write_plain<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing a Value or a plain struct into a Vec cannot fail: no I/O, string keys.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_message_table_gives_what_the_lookup_gives() {
        let builtin = crate::resources::BUILTIN;
        let mut versions: Vec<String> = builtin.iter().map(|d| d.api_version()).collect();
        versions.extend(["/v1", "v2", "apps/v9", "x/v1", "", "apps/", "example.com/v1"].map(String::from));
        let mut kinds: Vec<&str> = builtin.iter().map(|d| d.kind).collect();
        kinds.extend(["Nope", "", "pod"]);
        let mut found = 0;
        for v in &versions {
            for k in &kinds {
                let expected = message_of_uncached(v, k);
                found += usize::from(expected.is_some());
                assert_eq!(message_of(&json!({"apiVersion": v, "kind": k})), expected, "{v} {k}");
            }
        }
        assert!(found > builtin.len() / 2, "{found}");
        assert_eq!(message_of(&json!({"apiVersion": "/v1", "kind": "Pod"})), Some("api.core.v1.Pod"));
    }

    #[test]
    fn a_pod_is_written_in_go_order() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "status": {"phase": "Pending"},
            "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "busybox", "resources": {}, "args": ["a"]}]},
            "metadata": {"uid": "u", "namespace": "default", "name": "p", "labels": {"b": "2", "a": "1"}, "creationTimestamp": "2026-01-01T00:00:00Z"},
        });
        let text = String::from_utf8(to_vec(&pod)).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"default","uid":"u","creationTimestamp":"2026-01-01T00:00:00Z","labels":{"a":"1","b":"2"}},"spec":{"containers":[{"name":"c","image":"busybox","args":["a"],"resources":{}}],"restartPolicy":"Always"},"status":{"phase":"Pending"}}"#
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, pod);
    }

    #[test]
    fn custom_resources_and_unknown_fields_stay_sorted() {
        let cr = json!({"kind": "Gadget", "apiVersion": "example.com/v1", "spec": {"b": 1, "a": 2}, "metadata": {"name": "g"}});
        assert_eq!(String::from_utf8(to_vec(&cr)).unwrap(), serde_json::to_string(&cr).unwrap());
        let cm = json!({"kind": "ConfigMap", "apiVersion": "v1", "zzz": 1, "data": {"k": "v"}, "metadata": {"name": "c"}});
        assert_eq!(String::from_utf8(to_vec(&cm)).unwrap(), r#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"c"},"data":{"k":"v"},"zzz":1}"#);
    }
}
