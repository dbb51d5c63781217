//! Go's `omitempty` on built-in objects: the zero values kube-apiserver does not keep.
//!
//! kube-apiserver decodes every request into its Go struct and writes that struct, so a
//! field that is not a pointer and is tagged `omitempty` disappears when it holds its
//! zero value: a client's `"stdin": false`, `"hostPort": 0`, `"args": []`, and the zero
//! scalars protobuf always carries (kubectl's typed creates send `hostPID: false`,
//! `generation: 0` in templates). A pointer (`replicas *int32`, `storageClassName
//! *string`) keeps a zero that was sent. Which fields are which comes from
//! `go_omitempty.tsv`, generated from k8s.io/api's Go types by
//! `scripts/gen-go-omitempty.py`; the protobuf schema table cannot tell.
//!
//! Custom resources keep what the client sent, as upstream's unstructured objects do.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::protobuf::{self, Cardinality, FieldType};

const TABLE_TSV: &str = include_str!("go_omitempty.tsv");

/// What makes a field's value go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Omit {
    /// A scalar at `0`, `false` or `""`.
    Zero,
    /// A slice or map with no element.
    Empty,
}

fn table() -> &'static crate::FastMap<(&'static str, &'static str), Omit> {
    static TABLE: OnceLock<crate::FastMap<(&'static str, &'static str), Omit>> = OnceLock::new();
    TABLE.get_or_init(|| {
        TABLE_TSV
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let mut cols = line.split('\t');
                let (msg, field, how) = (cols.next()?, cols.next()?, cols.next()?);
                let how = match how {
                    "zero" => Omit::Zero,
                    "empty" => Omit::Empty,
                    _ => return None,
                };
                Some(((msg, field), how))
            })
            .collect()
    })
}

/// Whether the generator read `msg`'s Go struct (k8s.io/api and meta/v1; not the
/// apiextensions and aggregator groups): a request's `""` in its fields is kept for
/// [`drop_empty_in`] to judge.
pub fn knows(msg: &str) -> bool {
    msg.starts_with("api.") || msg.starts_with("apimachinery.pkg.apis.meta.v1.")
}

fn is_empty(how: Omit, v: &Value) -> bool {
    match (how, v) {
        (_, Value::Null) => true,
        (Omit::Zero, Value::Bool(b)) => !b,
        (Omit::Zero, Value::Number(n)) => n.as_f64() == Some(0.0),
        (_, Value::String(s)) => s.is_empty(),
        (Omit::Empty, Value::Array(a)) => a.is_empty(),
        (Omit::Empty, Value::Object(o)) => o.is_empty(),
        _ => false,
    }
}

/// Remove from a built-in object (found by its `apiVersion` and `kind`) every field Go
/// would leave out; anything else is left as it is.
pub fn drop_empty(obj: &mut Value) {
    if let Some(msg) = crate::go_order::message_of(obj) {
        if let Value::Object(map) = obj {
            drop_empty_in(msg, map);
        }
    }
}

/// Whether [`drop_empty`] would remove anything from `obj` (walks without copying:
/// most stored objects are already as Go writes them).
pub fn has_empty(obj: &Value) -> bool {
    match (crate::go_order::message_of(obj), obj) {
        (Some(msg), Value::Object(map)) => has_empty_in(msg, map),
        _ => false,
    }
}

fn has_empty_in(msg: &str, map: &Map<String, Value>) -> bool {
    let table = table();
    map.iter().any(|(key, value)| {
        let Some((path, _, field)) = protobuf::field_place(msg, key) else { return false };
        let owner = path.last().map_or(msg, |(_, m)| m);
        if table.get(&(owner, key.as_str())).is_some_and(|how| is_empty(*how, value)) {
            return true;
        }
        let FieldType::Message(inner) = field.ty else { return false };
        if protobuf::is_opaque(inner) {
            return false;
        }
        match (field.cardinality, value) {
            (Cardinality::One, Value::Object(m)) => has_empty_in(inner, m),
            (Cardinality::List, Value::Array(items)) => items.iter().any(|i| i.as_object().is_some_and(|m| has_empty_in(inner, m))),
            (Cardinality::Map, Value::Object(entries)) => entries.values().any(|i| i.as_object().is_some_and(|m| has_empty_in(inner, m))),
            _ => false,
        }
    })
}

/// [`drop_empty`] for a value of message `msg`.
pub fn drop_empty_in(msg: &str, map: &mut Map<String, Value>) {
    let table = table();
    map.retain(|key, value| {
        let Some((path, _, field)) = protobuf::field_place(msg, key) else { return true };
        let owner = path.last().map_or(msg, |(_, m)| m);
        if let Some(how) = table.get(&(owner, key.as_str())) {
            if is_empty(*how, value) {
                return false;
            }
        }
        let FieldType::Message(inner) = field.ty else { return true };
        if protobuf::is_opaque(inner) {
            return true;
        }
        match (field.cardinality, value) {
            (Cardinality::One, Value::Object(m)) => drop_empty_in(inner, m),
            (Cardinality::List, Value::Array(items)) => {
                for item in items {
                    if let Value::Object(m) = item {
                        drop_empty_in(inner, m);
                    }
                }
            }
            (Cardinality::Map, Value::Object(entries)) => {
                for item in entries.values_mut() {
                    if let Value::Object(m) = item {
                        drop_empty_in(inner, m);
                    }
                }
            }
            _ => {}
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_pointer_zeros_go_and_pointers_stay() {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "generation": 0, "labels": {}},
            "spec": {
                "hostPID": false,
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": "i", "stdin": false, "tty": true, "args": [],
                                "ports": [{"containerPort": 0, "hostPort": 0}]}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            }
        });
        assert!(has_empty(&pod));
        drop_empty(&mut pod);
        assert!(!has_empty(&pod), "nothing left to drop");
        assert_eq!(
            pod,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p"},
                "spec": {
                    // A pointer: a zero that was sent is kept.
                    "terminationGracePeriodSeconds": 0,
                    // containerPort has no omitempty.
                    "containers": [{"name": "c", "image": "i", "tty": true, "ports": [{"containerPort": 0}]}],
                    "volumes": [{"name": "v", "emptyDir": {}}]
                }
            })
        );
    }

    #[test]
    fn pointer_strings_and_custom_resources_are_kept() {
        let mut pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"},
                             "spec": {"storageClassName": "", "volumeName": ""}});
        drop_empty(&mut pvc);
        assert_eq!(pvc["spec"], json!({"storageClassName": ""}));
        let mut widget = json!({"apiVersion": "example.com/v1", "kind": "Widget", "spec": {"on": false}});
        let before = widget.clone();
        drop_empty(&mut widget);
        assert_eq!(widget, before);
    }
}
