//! Field management: `metadata.managedFields` and server-side apply, as upstream's
//! structured-merge-diff does it for built-in types.
//!
//! A field set is a tree in FieldsV1 form: `f:<field>` for struct and map fields,
//! `k:{"name":"c"}` for items of associative lists, `v:<value>` for items of set lists,
//! `.` marking a node that is itself owned. List semantics come from the types' own
//! markers (`+listType`, `+listMapKey`, `+patchStrategy`, `+patchMergeKey`) in the
//! generated schema; other lists are atomic.
//!
//! - Update operations (create, update, patch) give their manager the fields whose
//!   values they set or changed, taking them from other managers.
//! - Apply (`application/apply-patch+yaml`) makes the manager own exactly the fields of
//!   its applied configuration: fields another manager owns with a different value are
//!   conflicts (409 `FieldManagerConflict`) unless `force=true`, which takes them over;
//!   fields it applied before and no longer applies are removed unless someone else
//!   owns them.

use std::collections::BTreeMap;

use nanokube_api::error::Cause;
use nanokube_api::protobuf::{is_opaque, markers_of, message_fields, Cardinality, FieldInfo, FieldType};
use nanokube_api::{meta, ApiError};
use serde_json::{json, Map, Value};

/// A set of fields, as a tree.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// What kind of list a field is.
#[derive(Debug, Clone, PartialEq)]
enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// The schema position of a value: a built-in message, a node of a CRD's structural
/// schema, or nothing known (treated as atomic).
#[derive(Debug, Clone, Copy)]
pub enum Schema<'a> {
    /// A message of the generated built-in schema.
    Message(&'static str),
    /// A node of a custom resource's `openAPIV3Schema`.
    Json(&'a Value),
    /// An atomic value.
    Leaf,
}

/// What the schema says of one field: how many values it holds, how lists merge, and the
/// schema of its values (items, for maps and lists).
struct Child<'a> {
    card: Cardinality,
    list: ListKind,
    item: Schema<'a>,
}

/// A field of an object at `schema` (`None`: unknown to the schema, tracked as a leaf).
fn child<'a>(schema: Schema<'a>, key: &str) -> Option<Child<'a>> {
    match schema {
        Schema::Leaf => None,
        Schema::Message(msg) => {
            let (f, _, markers) = field(msg, key)?;
            Some(Child { card: f.cardinality, list: list_kind(&f, markers), item: item_schema(f.ty) })
        }
        Schema::Json(s) => {
            let prop = s.get("properties").and_then(|p| p.get(key)).or_else(|| s.get("additionalProperties").filter(|a| a.is_object()))?;
            Some(json_child(prop))
        }
    }
}

/// A CRD schema node as a field: objects with properties are structs, objects with
/// `additionalProperties` are maps (unless `x-kubernetes-map-type: atomic`), arrays follow
/// `x-kubernetes-list-type` (atomic by default, as upstream).
fn json_child(prop: &Value) -> Child<'_> {
    let atomic_map = prop.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic");
    match prop.get("type").and_then(Value::as_str) {
        Some("array") => {
            let keys: Vec<String> = prop
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
                .unwrap_or_default();
            let list = match prop.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") if !keys.is_empty() => ListKind::Map(keys),
                Some("set") => ListKind::Set,
                _ => ListKind::Atomic,
            };
            let item = prop.get("items").filter(|i| i.is_object()).map(Schema::Json).unwrap_or(Schema::Leaf);
            Child { card: Cardinality::List, list, item }
        }
        Some("object") if atomic_map => Child { card: Cardinality::One, list: ListKind::Atomic, item: Schema::Leaf },
        Some("object") if prop.get("properties").is_none() && prop.get("additionalProperties").is_some_and(Value::is_object) => {
            Child { card: Cardinality::Map, list: ListKind::Atomic, item: Schema::Json(&prop["additionalProperties"]) }
        }
        Some("object") | None if prop.get("properties").is_some() || prop.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) => {
            Child { card: Cardinality::One, list: ListKind::Atomic, item: Schema::Json(prop) }
        }
        _ => Child { card: Cardinality::One, list: ListKind::Atomic, item: Schema::Leaf },
    }
}

const IGNORED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
];

/// A field of a message (looking through embedded structs) and its markers.
fn field_uncached(msg: &'static str, key: &str) -> Option<(FieldInfo, &'static str, &'static str)> {
    for f in message_fields(msg)? {
        if f.cardinality == Cardinality::Inline {
            if let FieldType::Message(inner) = f.ty {
                if let Some(found) = field_uncached(inner, key) {
                    return Some(found);
                }
            }
        } else if f.json == key {
            let markers = markers_of(msg, key);
            return Some((f, msg, markers));
        }
    }
    None
}

/// The fields of one message by JSON name, embedded structs flattened.
type FieldIndex = std::collections::HashMap<&'static str, (FieldInfo, &'static str, &'static str)>;

/// [`field_uncached`] from a per-message index built on first use: field management runs
/// on every write, and the schema table itself is laid out for decoding, not lookup.
pub(crate) fn field(msg: &'static str, key: &str) -> Option<(FieldInfo, &'static str, &'static str)> {
    static INDEX: std::sync::OnceLock<std::sync::RwLock<std::collections::HashMap<&'static str, std::sync::Arc<FieldIndex>>>> = std::sync::OnceLock::new();
    let index = INDEX.get_or_init(Default::default);
    let cached = index.read().expect("field index").get(msg).cloned();
    let fields = match cached {
        Some(f) => f,
        None => {
            fn collect(msg: &'static str, into: &mut Vec<&'static str>) {
                for f in message_fields(msg).unwrap_or_default() {
                    match (f.cardinality, f.ty) {
                        (Cardinality::Inline, FieldType::Message(inner)) => collect(inner, into),
                        _ => into.push(f.json),
                    }
                }
            }
            let mut names = Vec::new();
            collect(msg, &mut names);
            let built: FieldIndex = names.into_iter().filter_map(|n| field_uncached(msg, n).map(|found| (n, found))).collect();
            let built = std::sync::Arc::new(built);
            index.write().expect("field index").insert(msg, built.clone());
            built
        }
    };
    fields.get(key).copied()
}

fn list_kind(f: &FieldInfo, markers: &str) -> ListKind {
    let get = |k: &str| markers.split(';').filter_map(|m| m.split_once('=')).filter(|(mk, _)| *mk == k).map(|(_, v)| v.to_string()).collect::<Vec<_>>();
    let list_type = get("listType");
    let keys = get("listMapKey");
    let merge_key = get("patchMergeKey");
    let strategy = get("patchStrategy");
    match list_type.first().map(String::as_str) {
        Some("map") if !keys.is_empty() => ListKind::Map(keys),
        Some("set") => ListKind::Set,
        Some("atomic") => ListKind::Atomic,
        _ if strategy.iter().any(|s| s.contains("merge")) && !merge_key.is_empty() && matches!(f.ty, FieldType::Message(_)) => ListKind::Map(merge_key),
        _ if strategy.iter().any(|s| s.contains("merge")) && !matches!(f.ty, FieldType::Message(_)) => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

fn item_schema(ty: FieldType) -> Schema<'static> {
    match ty {
        FieldType::Message(m) if !is_opaque(m) => Schema::Message(m),
        _ => Schema::Leaf,
    }
}

fn item_key(item: &Value, keys: &[String]) -> Option<String> {
    let mut m = Map::new();
    for k in keys {
        m.insert(k.clone(), item.get(k)?.clone());
    }
    Some(format!("k:{}", Value::Object(m)))
}

fn leaf() -> FieldSet {
    FieldSet { member: true, children: BTreeMap::new() }
}

/// The fields present in `v` at schema position `schema`, where `old` (the value before,
/// at the same position) is given only to keep the fields whose values changed.
fn walk(old: Option<&Value>, new: &Value, schema: Schema<'_>, only_changed: bool) -> Option<FieldSet> {
    if matches!(schema, Schema::Leaf) {
        return (!only_changed || old != Some(new)).then(leaf);
    }
    let Value::Object(obj) = new else {
        return (!only_changed || old != Some(new)).then(leaf);
    };
    if obj.is_empty() {
        return (!only_changed || old != Some(new)).then(leaf);
    }
    let mut set = FieldSet::default();
    for (k, v) in obj {
        let Some(f) = child(schema, k) else {
            // Unknown to the schema: track it as a leaf.
            if !only_changed || old.and_then(|o| o.get(k)) != Some(v) {
                set.children.insert(format!("f:{k}"), leaf());
            }
            continue;
        };
        let old_v = old.and_then(|o| o.get(k));
        let found = match (f.card, v) {
            (Cardinality::Map, Value::Object(entries)) => {
                let mut m = FieldSet::default();
                for (ek, ev) in entries {
                    let old_e = old_v.and_then(|o| o.get(ek));
                    if let Some(c) = walk(old_e, ev, f.item, only_changed) {
                        m.children.insert(format!("f:{ek}"), c);
                    }
                }
                (!m.children.is_empty()).then_some(m)
            }
            (Cardinality::List, Value::Array(items)) => match &f.list {
                ListKind::Map(keys) => {
                    let mut l = FieldSet::default();
                    for item in items {
                        let Some(key) = item_key(item, keys) else { continue };
                        let old_item = old_v.and_then(Value::as_array).and_then(|a| a.iter().find(|o| item_key(o, keys).as_deref() == Some(&key)));
                        if let Some(mut c) = walk(old_item, item, f.item, only_changed) {
                            c.member = true;
                            l.children.insert(key, c);
                        } else if old_item.is_none() {
                            l.children.insert(key, leaf());
                        }
                    }
                    (!l.children.is_empty()).then_some(l)
                }
                ListKind::Set => {
                    let mut l = FieldSet::default();
                    let old_items = old_v.and_then(Value::as_array);
                    for item in items {
                        if !only_changed || !old_items.is_some_and(|o| o.contains(item)) {
                            l.children.insert(format!("v:{item}"), leaf());
                        }
                    }
                    (!l.children.is_empty()).then_some(l)
                }
                ListKind::Atomic => (!only_changed || old_v != Some(v)).then(leaf),
            },
            (Cardinality::One, _) => walk(old_v, v, f.item, only_changed),
            _ => (!only_changed || old_v != Some(v)).then(leaf),
        };
        if let Some(c) = found {
            set.children.insert(format!("f:{k}"), c);
        }
    }
    (!set.children.is_empty()).then_some(set)
}

/// The managed fields of a whole object (metadata bookkeeping and type fields excluded).
fn object_fields(old: Option<&Value>, new: &Value, schema: Schema<'_>, only_changed: bool, skip_status: bool) -> FieldSet {
    let mut trimmed = new.clone();
    let mut old_trimmed = old.cloned();
    for v in std::iter::once(&mut trimmed).chain(old_trimmed.iter_mut()) {
        if let Some(m) = v.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
            if skip_status {
                m.remove("status");
            }
            if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                for k in IGNORED_META {
                    md.remove(*k);
                }
            }
            // Bookkeeping alone is nobody's field.
            if m.get("metadata").and_then(Value::as_object).is_some_and(Map::is_empty) {
                m.remove("metadata");
            }
        }
    }
    walk(old_trimmed.as_ref(), &trimmed, schema, only_changed).unwrap_or_default()
}

impl FieldSet {
    /// As FieldsV1 JSON.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_json());
        }
        Value::Object(m)
    }

    /// From FieldsV1 JSON.
    pub fn from_json(v: &Value) -> FieldSet {
        let Some(m) = v.as_object() else { return FieldSet::default() };
        if m.is_empty() {
            return leaf();
        }
        let mut s = FieldSet { member: m.contains_key("."), children: BTreeMap::new() };
        for (k, c) in m {
            if k != "." {
                s.children.insert(k.clone(), FieldSet::from_json(c));
            }
        }
        s
    }

    fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// Leaf paths (each a list of encoded elements).
    fn paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        fn rec(s: &FieldSet, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            if s.member && !prefix.is_empty() {
                out.push(prefix.clone());
            }
            for (k, c) in &s.children {
                prefix.push(k.clone());
                rec(c, prefix, out);
                prefix.pop();
            }
        }
        rec(self, &mut Vec::new(), &mut out);
        out
    }

    fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((h, rest)) => self.children.get(h).is_some_and(|c| c.contains(rest)),
        }
    }

    /// Whether the node at `path` has fields of its own in this set (an associative-list
    /// item or a struct someone owns as a whole besides its fields).
    fn has_children(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => !self.children.is_empty(),
            Some((h, rest)) => self.children.get(h).is_some_and(|c| c.has_children(rest)),
        }
    }

    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((h, rest)) => self.children.entry(h.clone()).or_default().insert(rest),
        }
    }

    fn remove(&mut self, path: &[String]) {
        if let Some((h, rest)) = path.split_first() {
            if rest.is_empty() {
                if let Some(c) = self.children.get_mut(h) {
                    c.member = false;
                    if c.children.is_empty() {
                        self.children.remove(h);
                    }
                }
            } else if let Some(c) = self.children.get_mut(h) {
                c.remove(rest);
                if c.is_empty() {
                    self.children.remove(h);
                }
            }
        }
    }

    fn union(&mut self, other: &FieldSet) {
        for p in other.paths() {
            self.insert(&p);
        }
    }

    fn minus(&mut self, other: &FieldSet) {
        for p in other.paths() {
            self.remove(&p);
        }
    }
}

/// The value at an encoded path, if present.
fn value_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let Some((h, rest)) = path.split_first() else { return Some(v) };
    let next = if let Some(f) = h.strip_prefix("f:") {
        v.get(f)?
    } else if let Some(k) = h.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        v.as_array()?.iter().find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))?
    } else if let Some(x) = h.strip_prefix("v:") {
        let want: Value = serde_json::from_str(x).ok()?;
        v.as_array()?.iter().find(|item| **item == want)?
    } else {
        return None;
    };
    value_at(next, rest)
}

/// Remove the value at an encoded path.
fn remove_at(v: &mut Value, path: &[String]) {
    let Some((h, rest)) = path.split_first() else { return };
    if rest.is_empty() {
        if let Some(f) = h.strip_prefix("f:") {
            if let Some(m) = v.as_object_mut() {
                m.remove(f);
            }
        } else if let Some(k) = h.strip_prefix("k:") {
            if let (Ok(key), Some(a)) = (serde_json::from_str::<Map<String, Value>>(k), v.as_array_mut()) {
                a.retain(|item| !key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
            }
        } else if let Some(x) = h.strip_prefix("v:") {
            if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(x), v.as_array_mut()) {
                a.retain(|item| *item != want);
            }
        }
        return;
    }
    let next = if let Some(f) = h.strip_prefix("f:") {
        v.get_mut(f)
    } else if let Some(k) = h.strip_prefix("k:") {
        let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else { return };
        v.as_array_mut().and_then(|a| a.iter_mut().find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv))))
    } else {
        None
    };
    if let Some(n) = next {
        remove_at(n, rest);
    }
}

/// Merge an applied configuration into a live value, following the schema: structs and
/// maps merge by field, associative lists by key, sets by value; the rest is replaced.
fn merge(live: &mut Value, applied: &Value, schema: Schema<'_>) {
    let (false, Value::Object(a), true) = (matches!(schema, Schema::Leaf), applied, live.is_object()) else {
        *live = applied.clone();
        return;
    };
    let l = live.as_object_mut().expect("object");
    for (k, av) in a {
        let Some(f) = child(schema, k) else {
            l.insert(k.clone(), av.clone());
            continue;
        };
        match (f.card, l.get_mut(k)) {
            (Cardinality::Map, Some(lv @ Value::Object(_))) => {
                if let (Some(lm), Some(am)) = (lv.as_object_mut(), av.as_object()) {
                    for (ek, ev) in am {
                        match lm.get_mut(ek) {
                            Some(existing) => merge(existing, ev, f.item),
                            None => {
                                lm.insert(ek.clone(), ev.clone());
                            }
                        }
                    }
                }
            }
            (Cardinality::List, Some(Value::Array(litems))) => match (&f.list, av.as_array()) {
                (ListKind::Map(keys), Some(aitems)) => {
                    for ai in aitems {
                        let key = item_key(ai, keys);
                        match litems.iter_mut().find(|li| key.is_some() && item_key(li, keys) == key) {
                            Some(li) => merge(li, ai, f.item),
                            None => litems.push(ai.clone()),
                        }
                    }
                }
                (ListKind::Set, Some(aitems)) => {
                    for ai in aitems {
                        if !litems.contains(ai) {
                            litems.push(ai.clone());
                        }
                    }
                }
                _ => {
                    l.insert(k.clone(), av.clone());
                }
            },
            (Cardinality::One, Some(lv)) => merge(lv, av, f.item),
            _ => {
                l.insert(k.clone(), av.clone());
            }
        }
    }
}

/// The name a write is recorded under: `fieldManager`, else the User-Agent up to its
/// first `/`, as upstream.
pub fn manager_name(field_manager: Option<&str>, user_agent: &str) -> String {
    match field_manager.filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => user_agent.split('/').next().unwrap_or("unknown").to_string(),
    }
}

/// Entries of `metadata.managedFields`: manager, operation, subresource, apiVersion,
/// fields, and the time of the entry's last change (`None`: now).
type Managers = Vec<(String, String, String, String, FieldSet, Option<Value>)>;

fn read_managers(obj: &Value) -> Managers {
    meta::field(obj, "managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    (
                        s("manager"),
                        s("operation"),
                        s("subresource"),
                        s("apiVersion"),
                        FieldSet::from_json(e.get("fieldsV1").unwrap_or(&Value::Null)),
                        e.get("time").cloned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_managers(obj: &mut Value, managers: &Managers) {
    let now = meta::now_rfc3339();
    let entries: Vec<Value> = managers
        .iter()
        .filter(|m| !m.4.is_empty())
        .map(|(manager, op, sub, api_version, set, time)| {
            let time = time.clone().unwrap_or_else(|| json!(now));
            let mut e =
                json!({"manager": manager, "operation": op, "apiVersion": api_version, "time": time, "fieldsType": "FieldsV1", "fieldsV1": set.to_json()});
            if !sub.is_empty() {
                e["subresource"] = json!(sub);
            }
            e
        })
        .collect();
    let m = meta::metadata_mut(obj);
    if entries.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(entries));
    }
}

/// Record an Update-operation write: `manager` now owns the fields it set or changed.
pub fn record_update(schema: Schema<'_>, old: Option<&Value>, new: &mut Value, manager: &str, api_version: &str, subresource: &str, has_status: bool) {
    let skip_status = has_status && subresource != "status";
    let changed = object_fields(old, new, schema, old.is_some(), skip_status);
    // managedFields the client wrote itself (as kubectl's client-side → server-side apply
    // migration does) are the base, as upstream takes them; an empty list means "leave
    // them", and `[{}]` means "clear them".
    let live_mf = old.and_then(|o| meta::field(o, "managedFields"));
    let supplied = meta::field(new, "managedFields").filter(|mf| mf.as_array().is_some_and(|a| !a.is_empty()) && Some(*mf) != live_mf).cloned();
    let cleared = supplied.as_ref().is_some_and(|mf| mf == &json!([{}]));
    if let (Some(old), true) = (old, changed.is_empty()) {
        if supplied.is_some() && !cleared {
            return; // the client's managedFields stand as written
        }
        if cleared {
            meta::metadata_mut(new).remove("managedFields");
            return;
        }
        // Nothing changed: ownership and times stay as they were (and a no-op write
        // stays a no-op).
        match meta::field(old, "managedFields") {
            Some(mf) => {
                meta::metadata_mut(new).insert("managedFields".into(), mf.clone());
            }
            None => {
                meta::metadata_mut(new).remove("managedFields");
            }
        }
        return;
    }
    // On create without a status split, what is present is exactly what changed.
    let present = if old.is_none() && !skip_status { changed.clone() } else { object_fields(None, new, schema, false, false) };
    let mut managers = match (&supplied, cleared) {
        (_, true) => Managers::default(),
        (Some(_), false) => read_managers(new),
        (None, _) => old.map(read_managers).unwrap_or_default(),
    };
    for m in managers.iter_mut() {
        m.4.minus(&changed);
        // Fields that no longer exist belong to no one.
        let gone: Vec<Vec<String>> = m.4.paths().into_iter().filter(|p| !present.contains(p)).collect();
        for p in gone {
            m.4.remove(&p);
        }
    }
    match managers.iter_mut().find(|m| m.0 == manager && m.1 == "Update" && m.2 == subresource) {
        Some(m) => {
            m.4.union(&changed);
            m.3 = api_version.to_string();
            m.5 = None;
        }
        None => managers.push((manager.to_string(), "Update".into(), subresource.to_string(), api_version.to_string(), changed, None)),
    }
    write_managers(new, &managers);
}

fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            s.push('[');
            s.push_str(&k.trim_start_matches('{').trim_end_matches('}').replace("\":\"", "=\"").replace('"', ""));
            s.push(']');
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        }
    }
    s
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create). Returns the
/// object to store, with its managedFields.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    schema: Schema<'_>,
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    subresource: &str,
    has_status: bool,
) -> Result<Value, ApiError> {
    let skip_status = has_status && subresource != "status";
    let wanted = object_fields(None, applied, schema, false, skip_status);
    let mut managers = live.map(read_managers).unwrap_or_default();
    let current = live.cloned().unwrap_or_else(|| json!({}));

    let mut body = applied.clone();
    if skip_status {
        if let Some(m) = body.as_object_mut() {
            m.remove("status");
        }
    }
    // Conflicts: another manager owns a field we apply and this apply would change it,
    // judged as structured-merge-diff does, on the merged result (so `strategy: {}` over a
    // defaulted strategy, or a list item the server defaulted, change nothing), leaf by
    // leaf (a list item is compared through its own fields).
    let mut merged = current.clone();
    merge(&mut merged, &body, schema);
    let mut conflicts: Vec<(String, String, Vec<String>)> = Vec::new();
    for m in managers.iter() {
        if m.0 == manager && m.1 == "Apply" && m.2 == subresource {
            continue;
        }
        for p in m.4.paths() {
            if wanted.contains(&p) && !wanted.has_children(&p) && value_at(&current, &p) != value_at(&merged, &p) {
                conflicts.push((m.0.clone(), m.3.clone(), p));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let n = conflicts.len();
        let lines: Vec<String> = conflicts.iter().map(|(mgr, av, p)| format!("conflict with \"{mgr}\" using {av}: {}", path_string(p))).collect();
        let message =
            if n == 1 { format!("Apply failed with 1 conflict: {}", lines[0]) } else { format!("Apply failed with {n} conflicts: {}", lines.join("\n")) };
        let mut e = ApiError::new(409, "Conflict", message);
        e.details.causes = conflicts
            .iter()
            .map(|(mgr, av, p)| Cause { reason: "FieldManagerConflict".into(), message: format!("conflict with \"{mgr}\" using {av}"), field: path_string(p) })
            .collect();
        return Err(e);
    }
    for (mgr, _, p) in &conflicts {
        if let Some(m) = managers.iter_mut().find(|m| &m.0 == mgr) {
            m.4.remove(p);
        }
    }
    // Fields this manager applied before and no longer applies go, unless others own them.
    let mut next = current.clone();
    if let Some(prev) = managers.iter().find(|m| m.0 == manager && m.1 == "Apply" && m.2 == subresource).map(|m| m.4.clone()) {
        for p in prev.paths() {
            let owned_elsewhere = managers.iter().any(|m| !(m.0 == manager && m.1 == "Apply" && m.2 == subresource) && m.4.contains(&p));
            if !wanted.contains(&p) && !owned_elsewhere {
                remove_at(&mut next, &p);
            }
        }
    }
    merge(&mut next, &body, schema);
    match managers.iter_mut().find(|m| m.0 == manager && m.1 == "Apply" && m.2 == subresource) {
        Some(m) => {
            if m.4 != wanted || m.3 != api_version {
                m.5 = None;
            }
            m.4 = wanted;
            m.3 = api_version.to_string();
        }
        None => managers.push((manager.to_string(), "Apply".into(), subresource.to_string(), api_version.to_string(), wanted, None)),
    }
    write_managers(&mut next, &managers);
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOY: &str = "api.apps.v1.Deployment";

    #[test]
    fn fields_v1_of_a_deployment() {
        let d = json!({"metadata": {"name": "d", "labels": {"app": "x"}}, "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let s = object_fields(None, &d, Schema::Message(DEPLOY), false, false).to_json();
        assert_eq!(s["f:metadata"]["f:labels"]["f:app"], json!({}));
        assert_eq!(s["f:spec"]["f:replicas"], json!({}));
        assert_eq!(s["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"], json!({".": {}, "f:image": {}, "f:name": {}}));
        assert!(s["f:metadata"].get("f:name").is_none());
        assert_eq!(FieldSet::from_json(&s).to_json(), s);
    }

    #[test]
    fn apply_conflicts_force_and_removal() {
        let first = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 2, "paused": false}});
        let live = apply(Schema::Message(DEPLOY), None, &first, "a", false, "apps/v1", "", true).unwrap();
        // Another manager changing a field "a" owns conflicts; forcing takes it over.
        let other = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 5}});
        let e = apply(Schema::Message(DEPLOY), Some(&live), &other, "b", false, "apps/v1", "", true).unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(e.message, "Apply failed with 1 conflict: conflict with \"a\" using apps/v1: .spec.replicas");
        assert_eq!(e.details.causes[0].reason, "FieldManagerConflict");
        let forced = apply(Schema::Message(DEPLOY), Some(&live), &other, "b", true, "apps/v1", "", true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        // The same value is shared, not a conflict.
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"paused": false}});
        assert!(apply(Schema::Message(DEPLOY), Some(&forced), &same, "c", false, "apps/v1", "", true).is_ok());
        // "a" stops applying paused: it is removed (nobody else owns it).
        let less = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}});
        let out = apply(Schema::Message(DEPLOY), Some(&forced), &less, "a", false, "apps/v1", "", true).unwrap();
        assert!(out["spec"].get("paused").is_none(), "{out}");
        assert_eq!(out["spec"]["replicas"], 5);
    }

    #[test]
    fn custom_resources_follow_their_structural_schema() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "image": {"type": "string"},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"], "items": {"type": "object", "properties": {"name": {"type": "string"}, "port": {"type": "integer"}}}},
            "args": {"type": "array", "items": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}}}});
        let s = Schema::Json(&schema);
        let a = json!({"apiVersion": "x.io/v1", "kind": "T", "metadata": {"name": "t"}, "spec": {"image": "i", "ports": [{"name": "http", "port": 80}], "args": ["a"], "labels": {"x": "1"}}});
        let live = apply(s, None, &a, "a", false, "x.io/v1", "", false).unwrap();
        let fields = &live["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"];
        assert_eq!(fields["f:ports"]["k:{\"name\":\"http\"}"], json!({".": {}, "f:name": {}, "f:port": {}}));
        assert_eq!(fields["f:args"], json!({}), "lists are atomic unless the schema says otherwise");
        assert_eq!(fields["f:labels"]["f:x"], json!({}));
        // Another manager adds a port (keyed list: merged) and conflicts on the image.
        let b = json!({"apiVersion": "x.io/v1", "kind": "T", "metadata": {"name": "t"}, "spec": {"image": "j", "ports": [{"name": "https", "port": 443}]}});
        let e = apply(s, Some(&live), &b, "b", false, "x.io/v1", "", false).unwrap_err();
        assert_eq!(e.message, "Apply failed with 1 conflict: conflict with \"a\" using x.io/v1: .spec.image");
        let merged = apply(s, Some(&live), &b, "b", true, "x.io/v1", "", false).unwrap();
        assert_eq!(merged["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(merged["spec"]["image"], "j");
    }

    #[test]
    fn an_item_with_server_defaults_is_no_conflict() {
        let d = |extra: bool| {
            let mut c = json!({"name": "c", "image": "i"});
            if extra {
                c["imagePullPolicy"] = json!("IfNotPresent");
            }
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [c]}}}})
        };
        // Written by an update (client-side apply), defaulted by the server.
        let mut live = d(true);
        record_update(Schema::Message(DEPLOY), None, &mut live, "kubectl-client-side-apply", "apps/v1", "", true);
        // The same manifest, server-side applied by someone else: shared, not a conflict.
        let applied = apply(Schema::Message(DEPLOY), Some(&live), &d(false), "x", false, "apps/v1", "", true).unwrap();
        assert_eq!(applied["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        // An empty struct over a defaulted one changes nothing either.
        let mut with_strategy = d(false);
        with_strategy["spec"]["strategy"] = json!({});
        let mut live2 = d(true);
        live2["spec"]["strategy"] = json!({});
        record_update(Schema::Message(DEPLOY), None, &mut live2, "kubectl-client-side-apply", "apps/v1", "", true);
        live2["spec"]["strategy"] = json!({"type": "RollingUpdate"});
        assert!(apply(Schema::Message(DEPLOY), Some(&live2), &with_strategy, "x", false, "apps/v1", "", true).is_ok());
        // A real difference in a leaf still is.
        let mut other = d(false);
        other["spec"]["template"]["spec"]["containers"][0]["image"] = json!("j");
        assert_eq!(apply(Schema::Message(DEPLOY), Some(&live), &other, "y", false, "apps/v1", "", true).unwrap_err().code, 409);
    }

    #[test]
    fn updates_take_ownership_of_what_they_change() {
        let old = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let mut first = old.clone();
        record_update(Schema::Message("api.core.v1.ConfigMap"), None, &mut first, "creator", "v1", "", false);
        let mut next = first.clone();
        next["data"]["a"] = json!("changed");
        record_update(Schema::Message("api.core.v1.ConfigMap"), Some(&first), &mut next, "editor", "v1", "", false);
        let mf = next["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf[0]["manager"], "creator");
        assert_eq!(mf[0]["fieldsV1"], json!({"f:data": {"f:b": {}}}));
        assert_eq!(mf[1]["manager"], "editor");
        assert_eq!(mf[1]["fieldsV1"], json!({"f:data": {"f:a": {}}}));
    }
}
