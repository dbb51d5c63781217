//! kube-controller-manager's `ComputeHash` of a pod template, the value behind
//! `pod-template-hash` (ReplicaSets of Deployments) and DaemonSets' revision names.
//!
//! Upstream hashes (FNV-32a) the `go-spew` dump (`%#v`, keys sorted, methods off) of the
//! Go struct `v1.PodTemplateSpec` as the controller holds it, then the collision count
//! (8 bytes, the first four its little-endian `u32`) when the owner has one, and encodes
//! the decimal sum with `SafeEncodeString`. The dump names every field of every struct
//! in Go's declaration order with its Go type, so it is written here from the layout of
//! k8s.io/api v0.33.0 (`pod_template_layout.txt`, taken from Go's reflect by
//! `tools/spew-layout`) walked beside the stored JSON:
//!
//! - an absent field is Go's zero value; an empty list or map is `nil`, as the
//!   controller's protobuf decoding leaves it;
//! - a `resource.Quantity` is what upstream's `ParseQuantity` makes of the string
//!   kube-apiserver would have stored (its canonical form, or the written one where
//!   `ParseQuantity` keeps that), including the cached string;
//! - `intstr.IntOrString` and a zero `metav1.Time` are spelled out as Go holds them.
//!
//! What the layout cannot reproduce returns `None` (a set timestamp, whose Go value
//! carries the controller's local time zone; `managedFields`; a quantity beyond `int64`
//! at nano precision, which Go keeps as an `inf.Dec`); callers then hash the JSON, so
//! such a template still gets a stable name, only not upstream's.
//!
//! The unit tests compare with hashes and dumps made by Go itself (go-spew at the
//! revision k8s.io/kubernetes 1.33 pins, on the real v0.33.0 types, after the JSON
//! round trip kube-apiserver makes; `tools/spew-layout/hash`). End to end,
//! `kubectl create deployment nginx --image=nginx` gets the ReplicaSet
//! `nginx-5869d7778c`, the name real clusters give it (`controllers_template_hash`).

use std::collections::HashMap;
use std::sync::OnceLock;

use nanokube_api::quantity::{self, Format, Held};
use serde_json::Value;

/// The layout file: one line per type, then one indented line per struct field.
const LAYOUT: &str = include_str!("pod_template_layout.txt");

/// The root type.
const ROOT: &str = "v1.PodTemplateSpec";

/// A Go type as spew prints it.
enum GoType {
    Struct(Vec<Field>),
    Ptr(&'static str),
    Slice(&'static str),
    Map(&'static str),
    String,
    Bool,
    Int,
    /// Types whose JSON is not their Go fields (`resource.Quantity`, `intstr.IntOrString`,
    /// `v1.Time`, `v1.FieldsV1`).
    Special,
}

/// A struct field: its Go name, where its value is in the JSON, and its type.
struct Field {
    go: &'static str,
    /// The JSON key; `None` for an embedded struct inlined into the same object.
    json: Option<&'static str>,
    ty: &'static str,
}

fn layout() -> &'static HashMap<&'static str, GoType> {
    static LAYOUT_MAP: OnceLock<HashMap<&'static str, GoType>> = OnceLock::new();
    LAYOUT_MAP.get_or_init(|| parse_layout(LAYOUT))
}

fn parse_layout(text: &'static str) -> HashMap<&'static str, GoType> {
    let mut types = HashMap::new();
    let mut current: Option<(&'static str, Vec<Field>)> = None;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let words: Vec<&'static str> = line.split_whitespace().collect();
        if line.starts_with(' ') {
            if let (Some((_, fields)), [go, json, ty]) = (current.as_mut(), words.as_slice()) {
                let json = (*json != "-inline").then_some(*json);
                fields.push(Field { go, json, ty });
            }
            continue;
        }
        if let Some((name, fields)) = current.take() {
            types.insert(name, GoType::Struct(fields));
        }
        match words.as_slice() {
            [name, "struct"] => current = Some((name, Vec::new())),
            [name, "ptr", elem] => drop(types.insert(*name, GoType::Ptr(elem))),
            [name, "slice", elem] => drop(types.insert(*name, GoType::Slice(elem))),
            [name, "map", _key, elem] => drop(types.insert(*name, GoType::Map(elem))),
            [name, "string"] => drop(types.insert(*name, GoType::String)),
            [name, "bool"] => drop(types.insert(*name, GoType::Bool)),
            [name, "int32" | "int64"] => drop(types.insert(*name, GoType::Int)),
            [name, "special"] => drop(types.insert(*name, GoType::Special)),
            _ => {}
        }
    }
    if let Some((name, fields)) = current {
        types.insert(name, GoType::Struct(fields));
    }
    types
}

/// Upstream's `ComputeHash(template, collisionCount)`; a template the layout cannot
/// reproduce is hashed from its JSON instead (see the module docs).
pub fn compute_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut bytes = go_dump(template).unwrap_or_else(|| crate::deployments::semantic_template(template).to_string().into_bytes());
    if let Some(count) = collision_count {
        bytes.extend_from_slice(&(count as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
    }
    crate::deployments::template_hash(&bytes)
}

/// The spew dump of the template as kube-controller-manager holds it, or `None` where
/// the layout cannot reproduce it.
pub fn go_dump(template: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(4096);
    write_value(&mut out, ROOT, Some(template), false)?;
    Some(out)
}

/// Writes `value` as spew's `%#v` writes a Go value of type `ty`; `bare` leaves the
/// type out, as spew does for slice elements and map entries.
fn write_value(out: &mut Vec<u8>, ty: &'static str, value: Option<&Value>, bare: bool) -> Option<()> {
    let value = value.filter(|v| !v.is_null());
    let go = layout().get(ty)?;
    if let GoType::Ptr(elem) = go {
        match (value, bare) {
            (None, true) => out.extend_from_slice(b"<nil>"),
            (None, false) => typed(out, ty, b"<nil>"),
            (Some(_), true) => out.extend_from_slice(b"<*>"),
            (Some(_), false) => typed(out, ty, b""),
        }
        return match value {
            Some(v) => write_value(out, elem, Some(v), true),
            None => Some(()),
        };
    }
    if !bare {
        typed(out, ty, b"");
    }
    match go {
        GoType::Ptr(_) => None,
        GoType::Struct(fields) => {
            let object = match value {
                Some(Value::Object(map)) => Some(map),
                None => None,
                Some(_) => return None,
            };
            out.push(b'{');
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(field.go.as_bytes());
                out.push(b':');
                let inner = match field.json {
                    Some(key) => object.and_then(|m| m.get(key)),
                    None => value,
                };
                write_value(out, field.ty, inner, false)?;
            }
            out.push(b'}');
            Some(())
        }
        GoType::Slice(elem) => {
            let items = match value {
                Some(Value::Array(items)) => items.as_slice(),
                None => &[],
                Some(_) => return None,
            };
            if items.is_empty() {
                out.extend_from_slice(b"<nil>");
                return Some(());
            }
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                write_value(out, elem, Some(item), true)?;
            }
            out.push(b']');
            Some(())
        }
        GoType::Map(elem) => {
            let map = match value {
                Some(Value::Object(map)) => Some(map),
                None => None,
                Some(_) => return None,
            };
            let Some(map) = map.filter(|m| !m.is_empty()) else {
                out.extend_from_slice(b"<nil>");
                return Some(());
            };
            // Keys are strings in every map of a pod template; spew sorts them bytewise.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.extend_from_slice(b"map[");
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(key.as_bytes());
                out.push(b':');
                write_value(out, elem, map.get(key), true)?;
            }
            out.push(b']');
            Some(())
        }
        GoType::String => {
            match value {
                Some(Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                None => {}
                Some(_) => return None,
            }
            Some(())
        }
        GoType::Bool => {
            let b = match value {
                Some(Value::Bool(b)) => *b,
                None => false,
                Some(_) => return None,
            };
            out.extend_from_slice(if b { b"true" } else { b"false" });
            Some(())
        }
        GoType::Int => {
            let n = match value {
                Some(v) => v.as_i64()?,
                None => 0,
            };
            out.extend_from_slice(n.to_string().as_bytes());
            Some(())
        }
        GoType::Special => write_special(out, ty, value),
    }
}

/// `(type)` then `rest`.
fn typed(out: &mut Vec<u8>, ty: &str, rest: &[u8]) {
    out.push(b'(');
    out.extend_from_slice(ty.as_bytes());
    out.push(b')');
    out.extend_from_slice(rest);
}

/// What the controller holds for a quantity written as `text`: kube-apiserver's stored
/// form of it, decoded again.
fn as_stored(text: &str) -> Option<Held> {
    quantity::held(&quantity::stored_form(text).ok()??)
}

fn write_special(out: &mut Vec<u8>, ty: &str, value: Option<&Value>) -> Option<()> {
    match ty {
        "resource.Quantity" => {
            let q = match value {
                None => Held::default(),
                Some(Value::String(s)) => as_stored(s)?,
                Some(Value::Number(n)) => as_stored(&n.to_string())?,
                Some(_) => return None,
            };
            let format = match q.format {
                Format::DecimalSI => "DecimalSI",
                Format::BinarySI => "BinarySI",
                Format::DecimalExponent => "DecimalExponent",
                Format::Unset => "",
            };
            // An inf.Dec's big.Int holds its magnitude in 64-bit words, lowest first.
            let dec = match q.dec {
                None => "<nil>".to_string(),
                Some((negative, unscaled)) => {
                    let (low, high) = (unscaled as u64, (unscaled >> 64) as u64);
                    let words = match (low, high) {
                        (0, 0) => "<nil>".to_string(),
                        (low, 0) => format!("[{low}]"),
                        (low, high) => format!("[{low} {high}]"),
                    };
                    format!("{{unscaled:(big.Int){{neg:(bool){negative} abs:(big.nat){words}}} scale:(inf.Scale)9}}")
                }
            };
            let text = format!(
                "{{i:(resource.int64Amount){{value:(int64){} scale:(resource.Scale){}}} d:(resource.infDecAmount){{Dec:(*inf.Dec){dec}}} s:(string){} Format:(resource.Format){format}}}",
                q.value,
                q.scale,
                q.cached.as_deref().unwrap_or("")
            );
            out.extend_from_slice(text.as_bytes());
        }
        "intstr.IntOrString" => {
            let (kind, int, string) = match value {
                None => (0, 0, ""),
                Some(Value::String(s)) => (1, 0, s.as_str()),
                Some(v) => (0, i32::try_from(v.as_i64()?).ok()?, ""),
            };
            out.extend_from_slice(format!("{{Type:(intstr.Type){kind} IntVal:(int32){int} StrVal:(string){string}}}").as_bytes());
        }
        // Only the zero time: a set one holds the controller's *time.Location.
        "v1.Time" if value.is_none() => out.extend_from_slice(b"{Time:(time.Time){wall:(uint64)0 ext:(int64)0 loc:(*time.Location)<nil>}}"),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Templates with the hashes Go gave them: `ComputeHash(t, nil)` and
    /// `ComputeHash(t, 3)` (see the module docs for how they were made).
    const VECTORS: &str = include_str!("pod_template_hash_vectors.jsonl");

    #[test]
    fn the_layout_covers_every_type_it_names() {
        let types = layout();
        assert!(types.len() > 250, "{} types", types.len());
        for go in types.values() {
            let named: Vec<&str> = match go {
                GoType::Struct(fields) => fields.iter().map(|f| f.ty).collect(),
                GoType::Ptr(e) | GoType::Slice(e) | GoType::Map(e) => vec![e],
                _ => vec![],
            };
            for ty in named {
                assert!(types.contains_key(ty), "{ty} is named but not laid out");
            }
        }
    }

    #[test]
    fn hashes_match_what_go_computes() {
        let mut checked = 0;
        for line in VECTORS.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            let template = &v["template"];
            let dump = go_dump(template).unwrap_or_else(|| panic!("not reproducible: {template}"));
            assert_eq!(String::from_utf8_lossy(&dump), v["dump"].as_str().unwrap(), "{template}");
            assert_eq!(compute_hash(template, None), v["hash"], "{template}");
            assert_eq!(compute_hash(template, Some(3)), v["hash3"], "{template}");
            checked += 1;
        }
        assert!(checked >= 10, "{checked} vectors");
    }

    /// Odd quantities (overflowing exponents, huge digit strings; the parser's own fuzz is
    /// in `nanokube_api::quantity`) and wrong JSON types get a hash or the fallback,
    /// never a panic.
    #[test]
    fn odd_templates_never_panic() {
        for q in ["1e-2147483648", "9223372036854775807Ei", "99999999999999999999999999999999999999999", "12x"] {
            let t = json!({"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": q}}}], "volumes": [{"emptyDir": {"sizeLimit": q}}]}});
            let _ = compute_hash(&t, Some(-1));
        }
        for wrong in
            [json!(1), json!([]), json!({"spec": {"containers": "x"}}), json!({"spec": {"priority": 1e300}}), json!({"metadata": {"labels": {"a": 1}}})]
        {
            let _ = compute_hash(&wrong, None);
        }
    }

    #[test]
    fn what_cannot_be_reproduced_still_hashes_stably() {
        let t = serde_json::json!({"metadata": {"creationTimestamp": "2025-01-01T00:00:00Z"}, "spec": {"containers": [{"name": "a", "image": "b"}]}});
        assert!(go_dump(&t).is_none());
        assert_eq!(compute_hash(&t, None), compute_hash(&t.clone(), None));
        assert_ne!(compute_hash(&t, None), compute_hash(&t, Some(1)));
    }
}
