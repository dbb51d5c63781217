//! The patch types a PATCH request may carry: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902, via the `json-patch` crate) and strategic merge patch (ours: Kubernetes'
//! own format, driven by the list merge keys of the built-in types).

use nanokube_api::ApiError;
use serde_json::{Map, Value};

/// The kind of patch, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// From a Content-Type header value.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Apply a patch to the current object.
pub fn apply(ty: PatchType, current: &Value, body: &[u8]) -> Result<Value, ApiError> {
    match ty {
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &patch)
                .map_err(|e| ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}")))?;
            Ok(doc)
        }
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request("strategic merge patch must be a JSON object"));
            };
            let mut doc = current.clone();
            match doc.as_object_mut() {
                Some(m) => merge_map(m, &p)?,
                None => return Err(ApiError::bad_request("cannot patch a non-object")),
            }
            Ok(doc)
        }
        // Server-side apply needs field ownership: the handler gives it to fieldmanager.
        PatchType::Apply => Err(ApiError::internal("apply patches are merged by the field manager")),
    }
}

/// The merge key of a list field of built-in types, or `None` for lists that replace.
fn merge_key(field: &str, sample: &[&Value]) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets" | "resourceClaims" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "hostAliases" => Some("ip"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" => {
            if sample.iter().any(|v| v.get("containerPort").is_some()) {
                Some("containerPort")
            } else {
                Some("port")
            }
        }
        _ => None,
    }
}

/// Primitive lists whose patch strategy is merge (union) rather than replace.
fn merges_primitives(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn merge_map(orig: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(d) = patch.get("$patch").and_then(Value::as_str) {
        match d {
            "replace" => {
                *orig = patch.iter().filter(|(k, _)| k.as_str() != "$patch").map(|(k, v)| (k.clone(), v.clone())).collect();
                return Ok(());
            }
            "delete" => {
                orig.clear();
                return Ok(());
            }
            "merge" => {}
            other => return Err(ApiError::bad_request(format!("unknown patch type: {other:?}"))),
        }
    }
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (orig.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                orig.remove(k);
            }
            Value::Object(pm) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    orig.remove(k);
                    continue;
                }
                match orig.get_mut(k) {
                    Some(Value::Object(om)) => merge_map(om, pm)?,
                    _ => {
                        let mut fresh = Map::new();
                        merge_map(&mut fresh, pm)?;
                        orig.insert(k.clone(), Value::Object(fresh));
                    }
                }
            }
            Value::Array(pl) => {
                let merged = merge_list(k, orig.get(k), pl)?;
                orig.insert(k.clone(), merged);
            }
            other => {
                orig.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(keys) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, order) in patch.iter().filter_map(|(k, v)| k.strip_prefix("$setElementOrder/").map(|f| (f, v))) {
        if let (Some(Value::Array(list)), Some(order)) = (orig.get_mut(k), order.as_array()) {
            let sample: Vec<&Value> = order.iter().collect();
            let key = merge_key(k, &sample);
            let pos = |item: &Value| -> usize {
                order
                    .iter()
                    .position(|o| match key {
                        Some(key) => o.get(key).is_some() && o.get(key) == item.get(key),
                        None => o == item,
                    })
                    .unwrap_or(usize::MAX)
            };
            list.sort_by_key(|item| pos(item));
        }
    }
    Ok(())
}

fn merge_list(field: &str, orig: Option<&Value>, patch: &[Value]) -> Result<Value, ApiError> {
    let orig_list: Vec<Value> = orig.and_then(Value::as_array).cloned().unwrap_or_default();
    // A list patch `[{"$patch": "replace"}, ...]` replaces the whole list.
    if patch.iter().any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(Value::Array(patch.iter().filter(|v| v.get("$patch").is_none()).cloned().collect()));
    }
    let sample: Vec<&Value> = orig_list.iter().chain(patch.iter()).collect();
    let all_maps = !patch.is_empty() && patch.iter().all(Value::is_object);
    match merge_key(field, &sample) {
        Some(key) if all_maps => {
            let mut out = orig_list;
            for item in patch {
                let id = item.get(key);
                let existing = out.iter().position(|o| id.is_some() && o.get(key) == id);
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (existing, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        if let (Some(om), Some(pm)) = (out[i].as_object_mut(), item.as_object()) {
                            merge_map(om, pm)?;
                        }
                    }
                    (None, false) => {
                        let mut fresh = Map::new();
                        if let Some(pm) = item.as_object() {
                            merge_map(&mut fresh, pm)?;
                        }
                        out.push(Value::Object(fresh));
                    }
                }
            }
            Ok(Value::Array(out))
        }
        _ if merges_primitives(field) => {
            let mut out = orig_list;
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(Value::Array(out))
        }
        _ => Ok(Value::Array(patch.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(orig: Value, patch: Value) -> Value {
        apply(PatchType::Strategic, &orig, patch.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn containers_merge_by_name() {
        let orig = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let out = smp(orig, json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]));
    }

    #[test]
    fn directives() {
        let orig =
            json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}], "args": ["1"]}, "metadata": {"finalizers": ["f1"]}});
        let out = smp(
            orig,
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}], "$setElementOrder/containers": [{"name": "b"}]},
                   "metadata": {"finalizers": ["f2"], "$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "b", "image": "y"}]));
        assert_eq!(out["spec"]["args"], json!(["1"]));
        assert_eq!(out["metadata"]["finalizers"], json!(["f2"]));
        let out = smp(json!({"a": {"x": 1, "y": 2}}), json!({"a": {"$patch": "replace", "z": 3}}));
        assert_eq!(out["a"], json!({"z": 3}));
        let out = smp(json!({"s": {"type": "A", "a": 1}}), json!({"s": {"$retainKeys": ["type"], "type": "B"}}));
        assert_eq!(out["s"], json!({"type": "B"}));
    }

    #[test]
    fn merge_and_json_patch() {
        let out = apply(PatchType::Merge, &json!({"a": 1, "b": {"c": 2}}), br#"{"b": {"c": null}, "d": 3}"#).unwrap();
        assert_eq!(out, json!({"a": 1, "b": {}, "d": 3}));
        let out = apply(PatchType::Json, &json!({"a": [1]}), br#"[{"op":"add","path":"/a/-","value":2}]"#).unwrap();
        assert_eq!(out, json!({"a": [1, 2]}));
        let e = apply(PatchType::Json, &json!({"a": 1}), br#"[{"op":"test","path":"/a","value":2}]"#).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(apply(PatchType::Json, &json!({}), b"{bad").unwrap_err().code, 400);
    }
}
