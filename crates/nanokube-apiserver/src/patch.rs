//! The patch types a PATCH request may carry: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902, via the `json-patch` crate) and strategic merge patch (ours: Kubernetes'
//! own format, driven by the `patchStrategy`/`patchMergeKey` markers of the built-in
//! types in the generated schema).
//!
//! Every patch is bounded before it can grow the object: a JSON patch has at most
//! [`MAX_JSON_PATCH_OPERATIONS`] operations, copies at most [`MAX_JSON_PATCH_COPY_BYTES`]
//! in all, and may not nest the object deeper than [`nanokube_api::json::MAX_DEPTH`]
//! (checked per operation, before the operation runs); a strategic merge patch costs
//! time linear in the lengths of the lists it merges.

use std::collections::{HashMap, HashSet};

use json_patch::PatchOperation;
use nanokube_api::json::{depth_upto, encoded_len_upto, MAX_DEPTH};
use nanokube_api::protobuf::{Cardinality, FieldType};
use nanokube_api::ApiError;
use serde_json::{Map, Value};

/// Most operations in one JSON patch (upstream's `maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Most bytes all `copy` operations of one JSON patch may copy together (upstream's
/// `JSONPatchMaxCopyBytes`, its `jsonpatch.AccumulatedCopySizeLimit`: 3 MiB).
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

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

fn decode_error(e: serde_json::Error) -> ApiError {
    ApiError::bad_request(format!("error decoding patch: {e}"))
}

fn rejected(msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {msg}"))
}

/// Apply a patch to the current object. `msg` is the generated schema's message of a
/// built-in kind (e.g. `api.apps.v1.Deployment`): strategic merge patches read their
/// list strategies from it; without one, every list is replaced.
pub fn apply(ty: PatchType, current: &Value, body: &[u8], msg: Option<&'static str>) -> Result<Value, ApiError> {
    match ty {
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(body).map_err(decode_error)?;
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(decode_error)?;
            apply_json_patch(current, &patch.0)
        }
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body).map_err(decode_error)?;
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request("strategic merge patch must be a JSON object"));
            };
            let mut doc = current.clone();
            match doc.as_object_mut() {
                Some(m) => merge_map(m, &p, msg)?,
                None => return Err(ApiError::bad_request("cannot patch a non-object")),
            }
            Ok(doc)
        }
        // Server-side apply needs field ownership: the handler gives it to fieldmanager.
        PatchType::Apply => Err(ApiError::internal("apply patches are merged by the field manager")),
    }
}

/// Apply JSON patch operations one at a time, refusing before it runs any operation that
/// would copy past the budget or nest the document past [`MAX_DEPTH`].
///
/// Depth is tracked as an upper bound, in constant time per operation: a value placed at
/// a path of `n` tokens ends at most `n + depth(value)` deep, and a value moved or copied
/// from a path of `m` tokens is at most `bound - m` deep.
fn apply_json_patch(current: &Value, ops: &[PatchOperation]) -> Result<Value, ApiError> {
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::too_large(format!("The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}", ops.len())));
    }
    let mut doc = current.clone();
    let mut bound = depth_upto(&doc, MAX_DEPTH);
    let mut copied = 0usize;
    let tokens = |p: &jsonptr::Pointer| p.count();
    for (i, op) in ops.iter().enumerate() {
        let next = match op {
            PatchOperation::Add(o) => tokens(&o.path) + depth_upto(&o.value, MAX_DEPTH),
            PatchOperation::Replace(o) => tokens(&o.path) + depth_upto(&o.value, MAX_DEPTH),
            PatchOperation::Move(o) => tokens(&o.path) + bound.saturating_sub(tokens(&o.from)),
            PatchOperation::Copy(o) => {
                let budget = MAX_JSON_PATCH_COPY_BYTES - copied;
                let size = o.from.resolve(&doc).map(|v| encoded_len_upto(v, budget)).unwrap_or(0);
                if size > budget {
                    return Err(rejected(format!(
                        "json patch copy operation {i} would copy more than the {MAX_JSON_PATCH_COPY_BYTES} bytes a patch may copy in all"
                    )));
                }
                copied += size;
                tokens(&o.path) + bound.saturating_sub(tokens(&o.from))
            }
            PatchOperation::Remove(_) | PatchOperation::Test(_) => 0,
        };
        if next > MAX_DEPTH {
            return Err(rejected(format!("json patch operation {i} would nest the object deeper than {MAX_DEPTH} levels")));
        }
        bound = bound.max(next);
        // On error the partly patched copy is dropped: no undo needed.
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op)).map_err(rejected)?;
    }
    Ok(doc)
}

/// What the schema knows of the value being merged.
#[derive(Clone, Copy)]
enum Node {
    /// A message of the generated schema.
    Message(&'static str),
    /// A map whose values are this message (or scalars, with `None`).
    MapOf(Option<&'static str>),
    /// Nothing: lists are replaced, objects merged key by key.
    Unknown,
}

/// How a list field of a message merges.
enum ListStrategy {
    /// Items are maps merged by this key; items are of this message.
    ByKey(&'static str, Option<&'static str>),
    /// Primitive items, union.
    Union,
    /// The patch's list replaces the current one.
    Replace,
}

/// The schema of field `key` under `node`: the node of its value and, for lists, how
/// they merge.
fn child(node: Node, key: &str) -> (Node, ListStrategy) {
    let msg = match node {
        Node::Message(m) => m,
        Node::MapOf(Some(m)) => return (Node::Message(m), ListStrategy::Replace),
        _ => return (Node::Unknown, ListStrategy::Replace),
    };
    let Some((info, _, markers)) = crate::fieldmanager::field(msg, key) else {
        return (Node::Unknown, ListStrategy::Replace);
    };
    let inner = match info.ty {
        FieldType::Message(m) if !nanokube_api::protobuf::is_opaque(m) => Some(m),
        _ => None,
    };
    let marker = |name: &str| markers.split(';').filter_map(|m| m.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v);
    let merges = marker("patchStrategy").is_some_and(|s| s.split(',').any(|s| s == "merge"));
    match info.cardinality {
        Cardinality::Map => (Node::MapOf(inner), ListStrategy::Replace),
        Cardinality::List => {
            let strategy = match (merges, marker("patchMergeKey")) {
                (true, Some(key)) => ListStrategy::ByKey(key, inner),
                (true, None) => ListStrategy::Union,
                _ => ListStrategy::Replace,
            };
            (inner.map_or(Node::Unknown, Node::Message), strategy)
        }
        _ => (inner.map_or(Node::Unknown, Node::Message), ListStrategy::Replace),
    }
}

/// A value as a hashable identity (its compact JSON): list merges look items up by it.
fn identity(v: &Value) -> String {
    v.to_string()
}

fn merge_map(orig: &mut Map<String, Value>, patch: &Map<String, Value>, msg: Option<&'static str>) -> Result<(), ApiError> {
    merge_node(orig, patch, msg.map_or(Node::Unknown, Node::Message))
}

fn merge_node(orig: &mut Map<String, Value>, patch: &Map<String, Value>, node: Node) -> Result<(), ApiError> {
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
                let del: HashSet<String> = del.iter().map(identity).collect();
                list.retain(|x| !del.contains(&identity(x)));
            }
            continue;
        }
        let (child_node, strategy) = child(node, k);
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
                    Some(Value::Object(om)) => merge_node(om, pm, child_node)?,
                    _ => {
                        let mut fresh = Map::new();
                        merge_node(&mut fresh, pm, child_node)?;
                        orig.insert(k.clone(), Value::Object(fresh));
                    }
                }
            }
            Value::Array(pl) => {
                let merged = merge_list(orig.remove(k), pl, strategy)?;
                orig.insert(k.clone(), merged);
            }
            other => {
                orig.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(keys) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: HashSet<&str> = keys.iter().filter_map(Value::as_str).collect();
        orig.retain(|k, _| keep.contains(k.as_str()));
    }
    for (k, order) in patch.iter().filter_map(|(k, v)| k.strip_prefix("$setElementOrder/").map(|f| (f, v))) {
        if let (Some(Value::Array(list)), Some(order)) = (orig.get_mut(k), order.as_array()) {
            let key = match child(node, k).1 {
                ListStrategy::ByKey(key, _) => Some(key),
                _ => None,
            };
            let id = |item: &Value| match key {
                Some(key) => item.get(key).map(identity),
                None => Some(identity(item)),
            };
            let mut position: HashMap<String, usize> = HashMap::with_capacity(order.len());
            for (i, o) in order.iter().enumerate() {
                if let Some(id) = id(o) {
                    position.entry(id).or_insert(i);
                }
            }
            list.sort_by_cached_key(|item| id(item).and_then(|id| position.get(&id).copied()).unwrap_or(usize::MAX));
        }
    }
    Ok(())
}

fn merge_list(orig: Option<Value>, patch: &[Value], strategy: ListStrategy) -> Result<Value, ApiError> {
    let orig_list = match orig {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    // A list patch `[{"$patch": "replace"}, ...]` replaces the whole list.
    if patch.iter().any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace")) {
        return Ok(Value::Array(patch.iter().filter(|v| v.get("$patch").is_none()).cloned().collect()));
    }
    match strategy {
        ListStrategy::ByKey(key, item_msg) if patch.iter().all(Value::is_object) => {
            let item_node = item_msg.map_or(Node::Unknown, Node::Message);
            // Slots keep positions stable while items are deleted; the index finds an
            // item by its key in constant time.
            let mut slots: Vec<Option<Value>> = orig_list.into_iter().map(Some).collect();
            let mut index: HashMap<String, usize> = HashMap::with_capacity(slots.len() + patch.len());
            for (i, item) in slots.iter().enumerate() {
                if let Some(id) = item.as_ref().and_then(|v| v.get(key)) {
                    index.entry(identity(id)).or_insert(i);
                }
            }
            for item in patch {
                let id = item.get(key).map(identity);
                let existing = id.as_ref().and_then(|id| index.get(id).copied());
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (existing, delete) {
                    (Some(i), true) => {
                        slots[i] = None;
                        if let Some(id) = &id {
                            index.remove(id);
                        }
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        if let (Some(Value::Object(om)), Some(pm)) = (slots[i].as_mut(), item.as_object()) {
                            merge_node(om, pm, item_node)?;
                        }
                    }
                    (None, false) => {
                        let mut fresh = Map::new();
                        if let Some(pm) = item.as_object() {
                            merge_node(&mut fresh, pm, item_node)?;
                        }
                        if let Some(id) = id {
                            index.insert(id, slots.len());
                        }
                        slots.push(Some(Value::Object(fresh)));
                    }
                }
            }
            Ok(Value::Array(slots.into_iter().flatten().collect()))
        }
        ListStrategy::Union => {
            let mut seen: HashSet<String> = orig_list.iter().map(identity).collect();
            let mut out = orig_list;
            for item in patch {
                if seen.insert(identity(item)) {
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

    const POD: Option<&str> = Some("api.core.v1.Pod");

    fn smp(orig: Value, patch: Value) -> Value {
        apply(PatchType::Strategic, &orig, patch.to_string().as_bytes(), POD).unwrap()
    }

    #[test]
    fn containers_merge_by_name() {
        let orig = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}});
        let out = smp(orig, json!({"spec": {"containers": [{"name": "b", "image": "z"}]}}));
        assert_eq!(out["spec"]["containers"], json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]));
        // Ports of a container merge by containerPort; env by name, one level down.
        let orig = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}]}});
        let out = smp(orig, json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 81}], "env": [{"name": "B", "value": "2"}]}]}}));
        assert_eq!(out["spec"]["containers"][0]["ports"], json!([{"containerPort": 80}, {"containerPort": 81}]));
        assert_eq!(out["spec"]["containers"][0]["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]));
    }

    #[test]
    fn lists_the_kind_does_not_merge_are_replaced() {
        // `args` has no patch strategy; a field the kind does not have merges nothing,
        // even when it carries a name that merges elsewhere.
        let orig = json!({"spec": {"containers": [{"name": "a", "args": ["1", "2"]}]}, "extra": {"conditions": [{"type": "A"}]}});
        let out = smp(orig, json!({"spec": {"containers": [{"name": "a", "args": ["3"]}]}, "extra": {"conditions": [{"type": "B"}]}}));
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["3"]));
        assert_eq!(out["extra"]["conditions"], json!([{"type": "B"}]));
        // Without a schema (no message), lists are replaced.
        let out = apply(PatchType::Strategic, &json!({"spec": {"containers": [{"name": "a"}]}}), br#"{"spec":{"containers":[{"name":"b"}]}}"#, None).unwrap();
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
    }

    #[test]
    fn directives() {
        let orig = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}], "nodeSelector": {"k": "v"}}, "metadata": {"finalizers": ["f1"]}});
        let out = smp(
            orig,
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}], "$setElementOrder/containers": [{"name": "b"}]},
                   "metadata": {"finalizers": ["f2"], "$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "b", "image": "y"}]));
        assert_eq!(out["spec"]["nodeSelector"], json!({"k": "v"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["f2"]));
        let out = smp(json!({"a": {"x": 1, "y": 2}}), json!({"a": {"$patch": "replace", "z": 3}}));
        assert_eq!(out["a"], json!({"z": 3}));
        let out = smp(json!({"s": {"type": "A", "a": 1}}), json!({"s": {"$retainKeys": ["type"], "type": "B"}}));
        assert_eq!(out["s"], json!({"type": "B"}));
        let out = smp(
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}}),
            json!({"$setElementOrder/spec": [], "spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "c"}, {"name": "a"}, {"name": "b"}]));
    }

    #[test]
    fn long_lists_merge_in_linear_time() {
        // 20,000 finalizers deleted from 20,000 (half of them there), then the same 20,000
        // merged in (as upstream, deletions apply first): quadratic code took seconds here.
        let orig: Vec<String> = (0..20_000).map(|i| format!("example.com/f{i}")).collect();
        let add: Vec<String> = (10_000..30_000).map(|i| format!("example.com/f{i}")).collect();
        let out = smp(json!({"metadata": {"finalizers": orig}}), json!({"metadata": {"finalizers": add.clone(), "$deleteFromPrimitiveList/finalizers": add}}));
        let merged = out["metadata"]["finalizers"].as_array().unwrap();
        assert_eq!(merged.len(), 30_000);
        assert_eq!((merged[9_999].as_str(), merged[10_000].as_str()), (Some("example.com/f9999"), Some("example.com/f10000")));
    }

    #[test]
    fn merge_and_json_patch() {
        let out = apply(PatchType::Merge, &json!({"a": 1, "b": {"c": 2}}), br#"{"b": {"c": null}, "d": 3}"#, None).unwrap();
        assert_eq!(out, json!({"a": 1, "b": {}, "d": 3}));
        let out = apply(PatchType::Json, &json!({"a": [1]}), br#"[{"op":"add","path":"/a/-","value":2}]"#, None).unwrap();
        assert_eq!(out, json!({"a": [1, 2]}));
        let e = apply(PatchType::Json, &json!({"a": 1}), br#"[{"op":"test","path":"/a","value":2}]"#, None).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(apply(PatchType::Json, &json!({}), b"{bad", None).unwrap_err().code, 400);
    }

    #[test]
    fn json_patches_cannot_grow_without_bound() {
        // Each copy doubles the object: the budget stops it long before memory runs out.
        let mut ops = vec![json!({"op": "add", "path": "/a", "value": "x".repeat(1000)}), json!({"op": "add", "path": "/b", "value": {}})];
        for i in 0..40 {
            ops.push(json!({"op": "copy", "from": "/b", "path": format!("/b/{i}")}));
            ops.push(json!({"op": "copy", "from": "/a", "path": format!("/b/x{i}")}));
        }
        let mut doubling = vec![json!({"op": "add", "path": "/a", "value": ["x".repeat(1000)]})];
        for _ in 0..40 {
            doubling.push(json!({"op": "copy", "from": "/a", "path": "/a/-"}));
        }
        let e = apply(PatchType::Json, &json!({}), Value::Array(doubling).to_string().as_bytes(), None).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"), "{}", e.message);
        // A chain of moves nests the object one level per operation.
        let mut nest = vec![json!({"op": "add", "path": "/a", "value": {}})];
        for _ in 0..30_000 {
            nest.push(json!({"op": "move", "from": "/a", "path": "/b"}));
            nest.push(json!({"op": "add", "path": "/a", "value": {}}));
            nest.push(json!({"op": "move", "from": "/b", "path": "/a/a"}));
        }
        nest.truncate(MAX_JSON_PATCH_OPERATIONS);
        let e = apply(PatchType::Json, &json!({}), Value::Array(nest).to_string().as_bytes(), None).unwrap_err();
        assert!(e.message.contains("deeper than 100 levels"), "{}", e.message);
        let many: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS).map(|_| json!({"op": "test", "path": "", "value": {}})).collect();
        assert_eq!(apply(PatchType::Json, &json!({}), Value::Array(many).to_string().as_bytes(), None).unwrap_err().code, 413);
    }
}
