//! Encoding built-in objects as kube-apiserver writes them to etcd: `k8s\0`, then a
//! `runtime.Unknown` envelope (`typeMeta` with apiVersion and kind, `raw` the object's
//! own message, empty `contentEncoding` and `contentType`), the message laid out from
//! the same schema table [`crate::protobuf`] decodes with (field numbers and wire types
//! of upstream's `generated.proto`), with upstream's special types: `Time` and
//! `MicroTime` as seconds and nanos, `Quantity` as its string, `IntOrString` as type and
//! value, `Duration` as nanoseconds, `RawExtension`/`FieldsV1`/`JSON` as embedded JSON,
//! maps as entries of key and value.
//!
//! An object with a field the table does not know, or a value of the wrong type, is
//! refused rather than encoded without it: the caller then keeps its JSON (which
//! kube-apiserver's storage decoder also reads), so nothing is ever lost on the way.

use base64::Engine;
use prost::encoding::{encode_key, encode_varint, WireType};
use serde_json::{Map, Value};

use crate::protobuf::{field_place, intern, message_for, Cardinality, FieldInfo, FieldType};

const MAGIC: &[u8] = b"k8s\0";

/// Encode `obj` (with `apiVersion` and `kind`) in kube-apiserver's storage encoding.
pub fn encode_object(obj: &Value) -> Result<Vec<u8>, String> {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).ok_or("no apiVersion")?;
    let kind = obj.get("kind").and_then(Value::as_str).ok_or("no kind")?;
    let msg = message_for(api_version, kind);
    let msg = intern(&msg).ok_or_else(|| format!("no protobuf schema for {api_version}, Kind={kind}"))?;
    let Value::Object(fields) = obj else { return Err("not an object".into()) };
    let mut body = Map::new();
    for (k, v) in fields {
        if k != "apiVersion" && k != "kind" {
            body.insert(k.clone(), v.clone());
        }
    }
    let mut raw = Vec::new();
    encode_message(msg, &body, &mut raw, 0)?;
    let mut type_meta = Vec::new();
    put_bytes(1, api_version.as_bytes(), &mut type_meta);
    put_bytes(2, kind.as_bytes(), &mut type_meta);
    let mut out = MAGIC.to_vec();
    put_bytes(1, &type_meta, &mut out);
    put_bytes(2, &raw, &mut out);
    put_bytes(3, b"", &mut out);
    put_bytes(4, b"", &mut out);
    Ok(out)
}

fn put_bytes(tag: u32, data: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

fn put_varint(tag: u32, v: u64, out: &mut Vec<u8>) {
    encode_key(tag, WireType::Varint, out);
    encode_varint(v, out);
}

/// An inline field: its tag and the message it embeds.
type InlineField = (u32, &'static str);

fn encode_message(msg: &'static str, obj: &Map<String, Value>, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if depth > crate::json::MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    // Fields grouped by the inline message holding them (the empty path: this one).
    let mut direct: Vec<(u32, FieldInfo, &Value)> = Vec::new();
    let mut inlined: Vec<(InlineField, Map<String, Value>)> = Vec::new();
    for (name, value) in obj {
        let (path, tag, f) = field_place(msg, name).ok_or_else(|| format!("{msg} has no field {name:?}"))?;
        match path.first() {
            None => direct.push((*tag, *f, value)),
            Some(first) => {
                // Re-nest under the first inline field; deeper levels are found again.
                match inlined.iter_mut().find(|(p, _)| p == first) {
                    Some((_, m)) => {
                        m.insert(name.clone(), value.clone());
                    }
                    None => {
                        let mut m = Map::new();
                        m.insert(name.clone(), value.clone());
                        inlined.push((*first, m));
                    }
                }
            }
        }
    }
    // In field-number order, as Go's marshaler writes.
    direct.sort_by_key(|(t, _, _)| *t);
    let mut all: Vec<(u32, Vec<u8>)> = Vec::new();
    for (tag, f, value) in direct {
        let mut buf = Vec::new();
        encode_field(tag, &f, value, &mut buf, depth)?;
        all.push((tag, buf));
    }
    for ((tag, inner), fields) in inlined {
        let mut sub = Vec::new();
        encode_message(inner, &fields, &mut sub, depth + 1)?;
        let mut buf = Vec::new();
        put_bytes(tag, &sub, &mut buf);
        all.push((tag, buf));
    }
    all.sort_by_key(|(t, _)| *t);
    for (_, b) in all {
        out.extend(b);
    }
    Ok(())
}

fn encode_field(tag: u32, f: &FieldInfo, value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    if value.is_null() {
        // A null time is a zero Go `Time` that is not a pointer: Go's marshaler writes
        // it as an empty message (and reading it back gives null again).
        if f.cardinality == Cardinality::One && crate::protobuf::is_time(f.ty) {
            put_bytes(tag, b"", out);
        }
        return Ok(());
    }
    match f.cardinality {
        Cardinality::One | Cardinality::Inline => encode_value(tag, f.ty, value, out, depth, f.json),
        Cardinality::List => {
            let items = value.as_array().ok_or_else(|| format!("{} must be a list", f.json))?;
            for item in items {
                encode_value(tag, f.ty, item, out, depth, f.json)?;
            }
            Ok(())
        }
        Cardinality::Map => {
            let entries = value.as_object().ok_or_else(|| format!("{} must be a map", f.json))?;
            for (k, v) in entries {
                let mut entry = Vec::new();
                put_bytes(1, k.as_bytes(), &mut entry);
                if !v.is_null() {
                    encode_value(2, f.ty, v, &mut entry, depth, f.json)?;
                }
                put_bytes(tag, &entry, out);
            }
            Ok(())
        }
    }
}

fn encode_value(tag: u32, ty: FieldType, value: &Value, out: &mut Vec<u8>, depth: usize, name: &str) -> Result<(), String> {
    let wrong = || format!("{name}: a {ty:?} cannot be {value}");
    match ty {
        FieldType::String => put_bytes(tag, value.as_str().ok_or_else(wrong)?.as_bytes(), out),
        FieldType::Bytes => {
            let b = base64::engine::general_purpose::STANDARD.decode(value.as_str().ok_or_else(wrong)?).map_err(|_| wrong())?;
            put_bytes(tag, &b, out);
        }
        FieldType::Int32 | FieldType::Int64 => {
            let n = value.as_i64().ok_or_else(wrong)?;
            put_varint(tag, n as u64, out);
        }
        FieldType::Bool => put_varint(tag, u64::from(value.as_bool().ok_or_else(wrong)?), out),
        FieldType::Double => {
            let v = value.as_f64().ok_or_else(wrong)?;
            encode_key(tag, WireType::SixtyFourBit, out);
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        FieldType::Message(m) => {
            let mut sub = Vec::new();
            encode_special_or_message(m, value, &mut sub, depth + 1).map_err(|e| format!("{name}: {e}"))?;
            put_bytes(tag, &sub, out);
        }
    }
    Ok(())
}

fn encode_special_or_message(msg: &'static str, value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    match msg {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" | "apimachinery.pkg.apis.meta.v1.Timestamp" => {
            let s = value.as_str().ok_or("a time must be a string")?;
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| format!("time {s:?}: {e}"))?;
            put_varint(1, t.unix_timestamp() as u64, out);
            if t.nanosecond() != 0 {
                put_varint(2, u64::from(t.nanosecond()), out);
            }
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            let s = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err("a quantity must be a string or number".into()),
            };
            put_bytes(1, s.as_bytes(), out);
        }
        "apimachinery.pkg.util.intstr.IntOrString" => match value {
            Value::Number(n) => {
                put_varint(1, 0, out);
                put_varint(2, n.as_i64().ok_or("int-or-string out of range")? as u64, out);
            }
            Value::String(s) => {
                put_varint(1, 1, out);
                put_bytes(3, s.as_bytes(), out);
            }
            _ => return Err("an int-or-string must be a number or string".into()),
        },
        "apimachinery.pkg.apis.meta.v1.Duration" => {
            let s = value.as_str().ok_or("a duration must be a string")?;
            let d = crate::schedule::parse_go_duration(s)?;
            put_varint(1, d.as_nanos() as u64, out);
        }
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" | "apiextensions_apiserver.pkg.apis.apiextensions.v1.Json" => {
            put_bytes(1, &serde_json::to_vec(value).map_err(|e| e.to_string())?, out);
        }
        m => {
            let obj = value.as_object().ok_or_else(|| format!("{m} must be an object"))?;
            if obj.is_empty() {
                // An empty struct: an empty message, whether the table has it or not.
                return Ok(());
            }
            if intern(m).is_none() {
                return Err(format!("no protobuf schema for message {m}"));
            }
            encode_message(m, obj, out, depth)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_come_back_as_they_went() {
        for obj in [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "d", "uid": "u", "creationTimestamp": "2026-01-02T03:04:05Z", "labels": {"a": "b"}}, "data": {"k": "v", "e": ""}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}, {"port": 81, "targetPort": 8081}], "clusterIP": "127.96.0.5", "clusterIPs": ["127.96.0.5"], "type": "ClusterIP"}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "generation": 3, "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1", "time": "2026-01-02T03:04:05Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
                   "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "d"}}, "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "500m"}}}]}},
                            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}},
                   "status": {"replicas": 2, "conditions": [{"type": "Available", "status": "True", "lastUpdateTime": "2026-01-02T03:04:05Z", "lastTransitionTime": "2026-01-02T03:04:05Z", "reason": "R", "message": "m"}]}}),
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "h", "leaseDurationSeconds": 15, "renewTime": "2026-01-02T03:04:05.123456Z"}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "aGVsbG8="}}),
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": {"nodeInfo": {"kubeProxyVersion": "", "kubeletVersion": "v1.33.0"}}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "w.example.com"}, "spec": {"group": "example.com", "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}}),
        ] {
            let bytes = encode_object(&obj).unwrap();
            assert!(bytes.starts_with(b"k8s\0"));
            let back = crate::protobuf::decode_stored(&bytes).unwrap();
            assert_eq!(back, obj, "{}", obj["kind"]);
        }
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        assert!(encode_object(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "bogus": 1})).is_err());
        assert!(encode_object(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": 5}})).is_err());
        assert!(encode_object(&json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})).is_err());
    }
}
