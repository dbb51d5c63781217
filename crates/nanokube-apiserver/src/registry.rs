//! The registry: what happens to an object on create, update, patch, delete, get, list
//! and watch, for every built-in resource, over the revisioned store. Handlers (HTTP) and
//! in-process controllers both go through it, so every write gets the same defaults,
//! validation, allocation and conflict checks.
//!
//! Per-resource behaviour runs as strategy hooks in a fixed order, as upstream's
//! `registry/rest` does: decode → prepare (create: uid, timestamps, generation, status
//! reset; update: carry immutable metadata, status/spec split, generation) → defaults →
//! admission (service-account defaulting, Service IP and NodePort allocation) →
//! validation → store.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use nanokube_api::crd;
use nanokube_api::error::Cause;
use nanokube_api::resources::{self, ResourceDef, ResourceTable};
use nanokube_api::selector::{FieldSelector, LabelSelector};
use nanokube_api::{defaults, go_omitempty, go_order, meta, validation, ApiError};
use nanokube_store::{Backend, EventKind, KeyValue, Revision, StoreError, WatchStream};
use serde_json::{json, Map, Value};

use crate::admission::{self, Attributes, Operation, Requester};
use crate::alloc::ServiceAllocator;

/// Put `condition` into `obj.status.conditions`, replacing the one of its type.
pub fn set_condition(obj: &mut Value, condition: Value) {
    let ty = condition.get("type").cloned().unwrap_or(Value::Null);
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    let list = obj["status"].as_object_mut().map(|s| s.entry("conditions").or_insert_with(|| json!([])));
    if let Some(Value::Array(list)) = list {
        match list.iter_mut().find(|c| c.get("type") == Some(&ty)) {
            Some(c) => *c = condition,
            None => list.push(condition),
        }
    }
}

/// Makes `into` hold at `path` (object keys) what `from` holds there: the same value, or
/// nothing when `from` has none. Objects on the way are made where a value goes.
fn carry(from: &Value, into: &mut Value, path: &[&str]) {
    put_at(path.iter().try_fold(from, |v, k| v.get(*k)).cloned(), into, path);
}

/// [`carry`], moving the value out of `from` (left `null` there) instead of copying it.
fn carry_out(from: &mut Value, into: &mut Value, path: &[&str]) {
    put_at(path.iter().try_fold(from, |v, k| v.get_mut(*k)).map(Value::take), into, path);
}

/// Set `path` of `into` to `value`, or remove it for `None`.
fn put_at(value: Option<Value>, into: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut cur = into;
    for k in parents {
        let Some(m) = cur.as_object_mut() else { return };
        if value.is_none() && !m.get(*k).is_some_and(Value::is_object) {
            return;
        }
        let next = m.entry(k.to_string()).or_insert_with(|| json!({}));
        if !next.is_object() {
            *next = json!({});
        }
        cur = next;
    }
    let Some(m) = cur.as_object_mut() else { return };
    match value {
        Some(v) => {
            m.insert(last.to_string(), v);
        }
        None => {
            m.remove(*last);
        }
    }
}

/// The parts of `obj` a subresource write carries (`paths`) and its metadata, moved out
/// into an object of their own with `obj`'s apiVersion and kind. What a subresource write
/// leaves alone was checked and normalized when it was stored, so the whole-object walks
/// (Go's zero values, JSON types) need only see these; [`put_parts_back`] returns them.
fn take_parts(obj: &mut Value, paths: &[&[&str]]) -> Value {
    let mut parts = json!({});
    for k in ["apiVersion", "kind"] {
        if let Some(v) = obj.get(k) {
            parts[k] = v.clone();
        }
    }
    for path in paths.iter().copied().chain([&["metadata"][..]]) {
        carry_out(obj, &mut parts, path);
    }
    parts
}

/// Undo [`take_parts`]: each part goes back where it was, or, where a check dropped it,
/// is removed from `obj`.
fn put_parts_back(mut parts: Value, obj: &mut Value, paths: &[&[&str]]) {
    for path in paths.iter().copied().chain([&["metadata"][..]]) {
        carry_out(&mut parts, obj, path);
    }
}

/// Run `check` over what a write must have checked: with `carried` paths, only those
/// parts and the metadata ([`take_parts`]); otherwise the whole object.
fn over_written<T>(obj: &mut Value, carried: Option<&[&[&str]]>, check: impl FnOnce(&mut Value) -> T) -> T {
    match carried {
        Some(paths) => {
            let mut parts = take_parts(obj, paths);
            let out = check(&mut parts);
            put_parts_back(parts, obj, paths);
            out
        }
        None => check(obj),
    }
}

/// Where the ServiceAccount admission mounts a pod's token, CA and namespace.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The `kube-api-access-xxxxx` projected volume and its mount in every container (and
/// init container) that does not mount something there already.
fn mount_service_account_token(spec: &mut serde_json::Map<String, Value>) {
    let mounted_already = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|m| m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_MOUNT)))
    };
    let volumes = spec.get("volumes").and_then(Value::as_array);
    if volumes.is_some_and(|vs| vs.iter().any(|v| v.get("name").and_then(Value::as_str).is_some_and(|n| n.starts_with("kube-api-access-")))) {
        return;
    }
    let name = meta::generate_name("kube-api-access-");
    let volume = json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}}
    ]}});
    let mut mounted = false;
    for list in ["initContainers", "containers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            if mounted_already(c) {
                continue;
            }
            let Some(c) = c.as_object_mut() else { continue };
            let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
            if let Some(m) = mounts.as_array_mut() {
                m.push(json!({"name": name, "readOnly": true, "mountPath": SERVICE_ACCOUNT_MOUNT}));
                mounted = true;
            }
        }
    }
    if mounted {
        let vs = spec.entry("volumes").or_insert_with(|| json!([]));
        if let Some(vs) = vs.as_array_mut() {
            vs.push(volume);
        }
    }
}

/// Namespaces that cannot be deleted (upstream's NamespaceLifecycle admission).
pub const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// An object as served at one revision. Its JSON encoding (with `resourceVersion`) is
/// what lists, gets and watches send without decoding it. For a revision of the store it
/// is the stored bytes with the revision spliced in as they are written out, so memory
/// holds each revision's bytes once (the served form is never kept beside them). The
/// decoded `Value` is made on first use (selectors, Tables, writes) and lives only as
/// long as this handle, so memory holds bytes, not trees (a decoded pod is ~13 KB against
/// ~1 KB of JSON).
#[derive(Debug)]
pub struct Stored {
    value: std::sync::OnceLock<Value>,
    json: std::sync::OnceLock<Json>,
}

/// A served JSON encoding.
#[derive(Debug)]
enum Json {
    /// All of it.
    Whole(Bytes),
    /// Stored bytes, served with `"resourceVersion":"<rev>"` spliced in at `slot`.
    Spliced { stored: Bytes, slot: RvSlot, rev: Revision },
}

impl Json {
    fn len(&self) -> usize {
        match self {
            Json::Whole(b) => b.len(),
            Json::Spliced { stored, slot, rev } => stored.len() + slot.added_len(*rev),
        }
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Json::Whole(b) => out.extend_from_slice(b),
            Json::Spliced { stored, slot, rev } => slot.write_spliced(out, stored, *rev),
        }
    }

    fn to_bytes(&self) -> Bytes {
        match self {
            Json::Whole(b) => b.clone(),
            Json::Spliced { .. } => {
                let mut out = Vec::with_capacity(self.len());
                self.write_to(&mut out);
                Bytes::from(out)
            }
        }
    }
}

impl Stored {
    /// Wrap a value (e.g. a dry-run result that was never stored).
    pub fn new(value: Value) -> Self {
        Stored { value: std::sync::OnceLock::from(value), json: std::sync::OnceLock::new() }
    }

    /// Wrap a JSON encoding; it is decoded when first looked into.
    pub fn from_json(json: Bytes) -> Self {
        Stored { value: std::sync::OnceLock::new(), json: std::sync::OnceLock::from(Json::Whole(json)) }
    }

    /// A stored revision as served: `kv`'s bytes in the form its cache entry says.
    fn of_revision(kv: &KeyValue, encoded: &Encoded) -> Self {
        let json = match encoded {
            Encoded::At(slot) => Json::Spliced { stored: kv.value.clone(), slot: *slot, rev: kv.mod_revision },
            Encoded::Whole(b) => Json::Whole(b.clone()),
        };
        Stored { value: std::sync::OnceLock::new(), json: std::sync::OnceLock::from(json) }
    }

    fn encoding(&self) -> &Json {
        self.json.get_or_init(|| Json::Whole(Bytes::from(go_order::to_vec(self.value()))))
    }

    /// The JSON encoding (made for the call when the revision is spliced in).
    pub fn json(&self) -> Bytes {
        self.encoding().to_bytes()
    }

    /// Append the JSON encoding to `out` (no copy in between).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.encoding().write_to(out)
    }

    /// The JSON encoding's first bytes: all of them, or those before the revision is
    /// spliced in (inside `metadata`, so `kind` and `apiVersion` are among them).
    pub fn json_head(&self) -> &[u8] {
        match self.encoding() {
            Json::Whole(b) => b,
            Json::Spliced { stored, slot, .. } => stored.get(..slot.at).unwrap_or(stored),
        }
    }

    /// Whether the JSON encoding holds `needle`, looked for in place. The needle must be
    /// whole tokens of the object (a key with its quotes, say): the revision is spliced in
    /// as a whole field between tokens, so such a needle is never split by it.
    pub fn json_contains(&self, needle: &[u8]) -> bool {
        let bytes = match self.encoding() {
            Json::Whole(b) => b,
            Json::Spliced { stored, .. } => stored,
        };
        memchr::memmem::find(bytes, needle).is_some()
    }

    /// The length of the JSON encoding.
    pub fn json_len(&self) -> usize {
        self.encoding().len()
    }

    /// `f` of the value: the one this handle decoded already, or one decoded for the
    /// call and let go after it (for passes over many objects that should not keep
    /// every decoded tree alive until the pass ends).
    pub fn with_value<R>(&self, f: impl FnOnce(&Value) -> R) -> R {
        match self.value.get() {
            Some(v) => f(v),
            None => f(&self.parse()),
        }
    }

    /// An owned copy of the value: the decoded one cloned, or else decoded for the caller
    /// (not kept, and not decoded then cloned).
    pub fn to_value(&self) -> Value {
        match self.value.get() {
            Some(v) => v.clone(),
            None => self.parse(),
        }
    }

    /// The value, decoded on first use (once per handle).
    pub fn value(&self) -> &Value {
        self.value.get_or_init(|| self.parse())
    }

    /// The JSON decoded. It was made by serde_json from a value that decoded (stored bytes
    /// are checked when they are read, writes are bounded in depth), so it parses; if it
    /// ever did not, the handle reads as `null` and says so in the log, rather than
    /// taking the server down.
    fn parse(&self) -> Value {
        let parsed = match self.json.get() {
            None => return Value::Null,
            Some(Json::Whole(b)) => serde_json::from_slice(b),
            // The stored bytes, then the revision set where the splice would put it (the
            // object's maps are sorted, so where it goes does not matter), rather than a
            // spliced copy made to be parsed.
            Some(Json::Spliced { stored, rev, .. }) => serde_json::from_slice::<Value>(stored).map(|mut v| {
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("resourceVersion".into(), Value::String(rev.to_string()));
                }
                v
            }),
        };
        parsed.unwrap_or_else(|e| {
            tracing::error!("a cached object does not decode ({e}); serving it as null");
            Value::Null
        })
    }
}

impl std::ops::Deref for Stored {
    type Target = Value;
    fn deref(&self) -> &Value {
        self.value()
    }
}

impl PartialEq<Value> for Stored {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

/// The per-revision cache entry: how the revision's stored bytes are served.
enum Encoded {
    /// With the revision spliced in at this place (the stored bytes are what
    /// [`encode`] writes for the object, as they are for every write of this server).
    At(RvSlot),
    /// As these bytes (stored bytes of another writer's layout).
    Whole(Bytes),
}

/// A decoded object, shared between the store's cache and responses.
pub type Obj = Arc<Stored>;

/// Options of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `dryRun=All`: run everything, store nothing.
    pub dry_run: bool,
    /// Subresource written (`status`), if any.
    pub subresource: Option<String>,
    /// Who asks (for admission webhooks and policies, and their warnings); `None` for
    /// the server's own controllers.
    pub requester: Option<Arc<Requester>>,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size (0: all).
    pub limit: usize,
    /// Continue token from a previous page.
    pub continue_token: Option<String>,
    /// `resourceVersionMatch=Exact`: list the objects as they were at this revision.
    pub exact_revision: Option<Revision>,
}

/// A list result.
#[derive(Debug, Clone)]
pub struct ListOutput {
    /// Matching objects in key order.
    pub items: Vec<Obj>,
    /// The revision the list was read at.
    pub revision: Revision,
    /// Token for the next page.
    pub continue_token: Option<String>,
    /// Items left after this page (only when no selector filters).
    pub remaining: Option<usize>,
}

/// Options of a delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `Background`, `Foreground` or `Orphan`.
    pub propagation: Option<String>,
    /// Precondition on the object's uid.
    pub precondition_uid: Option<String>,
    /// Precondition on the object's resourceVersion.
    pub precondition_rv: Option<String>,
    /// `gracePeriodSeconds`.
    pub grace_period: Option<i64>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// Who asks (see [`WriteOptions::requester`]).
    pub requester: Option<Arc<Requester>>,
}

/// The result of a delete.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// The object is gone; its last state.
    Gone(Obj),
    /// The object remains until its finalizers are removed; its current state.
    Pending(Obj),
}

/// A watch event type as the wire names it.
pub type EventType = &'static str;

/// Registry configuration.
pub struct RegistryConfig {
    /// Service CIDR, e.g. `127.96.0.0/16`.
    pub service_cidr: String,
    /// NodePort range.
    pub node_ports: (u16, u16),
    /// The PodSecurity admission plugin's configuration.
    pub pod_security: crate::admission::pod_security::PodSecurityConfig,
}

/// The registry.
pub struct Registry {
    store: Arc<dyn Backend>,
    services: Mutex<ServiceAllocator>,
    resources: Arc<ResourceTable>,
    pod_security: crate::admission::pod_security::PodSecurityConfig,
}

fn store_err(e: StoreError, def: &ResourceDef, name: &str) -> ApiError {
    match e {
        StoreError::AlreadyExists => ApiError::already_exists(def.plural, def.group, name),
        StoreError::NotFound => ApiError::not_found(def.plural, def.group, name),
        StoreError::Conflict { .. } => ApiError::conflict(def.plural, def.group, name),
        StoreError::Compacted { requested, oldest } => ApiError::expired(format!("too old resource version: {requested} ({oldest})")),
        StoreError::FutureRevision { requested, current } => ApiError::too_large_resource_version(requested, current),
        StoreError::Unsupported(what) => ApiError::new(405, "MethodNotAllowed", format!("unsupported by the storage backend: {what}")),
        StoreError::Io(msg) => ApiError::internal(msg),
    }
}

/// A 403 of a pod admission plugin, naming the pod when it has a name yet (upstream's
/// `admission.NewForbidden`).
fn pod_forbidden(name: &str, why: &str) -> ApiError {
    ApiError::forbidden(if name.is_empty() { format!("pods is forbidden: {why}") } else { format!("pods \"{name}\" is forbidden: {why}") })
}

/// Decode a stored value once per revision, with `resourceVersion` set from the revision.
pub fn decode(kv: &KeyValue) -> Result<Obj, ApiError> {
    let rev = kv.mod_revision;
    let encoded = kv.decoded(|bytes| served_form(bytes, rev))?;
    Ok(Arc::new(Stored::of_revision(kv, &encoded)))
}

/// How stored bytes are served: the object with its revision as resourceVersion. Bytes
/// laid out as [`encode`] lays them out (every write of this server) are served by
/// splicing the revision in; others (another writer's) are re-encoded once and kept
/// without spare capacity, as they live as long as their revision is retained.
fn served_form(stored: &[u8], rev: Revision) -> Result<Encoded, ApiError> {
    let mut v: Value = serde_json::from_slice(stored).map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
    let ours = encode(&v);
    if let Some(slot) = ours.rv_slot.filter(|_| ours.bytes[..] == *stored) {
        return Ok(Encoded::At(slot));
    }
    meta::metadata_mut(&mut v).insert("resourceVersion".into(), Value::String(rev.to_string()));
    Ok(Encoded::Whole(Bytes::from(go_order::to_vec(&v).into_boxed_slice())))
}

/// What every reader must be able to decode of a written object: nesting no deeper than
/// [`nanokube_api::json::MAX_DEPTH`] (422), and for built-in kinds (and every object's
/// `metadata`) each value of the JSON type its Go field has (400, in the words of
/// upstream's decoder), so typed clients and `kubectl describe` can read what was stored.
fn check_decodable(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    use nanokube_api::json::{depth_upto, MAX_DEPTH};
    if depth_upto(obj, MAX_DEPTH) > MAX_DEPTH {
        return Err(ApiError::invalid(
            def.kind,
            def.group,
            meta::name(obj),
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!("Invalid value: \"<nested>\": the object is nested deeper than {MAX_DEPTH} levels"),
                field: "<root>".into(),
            }],
        ));
    }
    let error = if def.custom {
        let metadata = nanokube_api::protobuf::intern("apimachinery.pkg.apis.meta.v1.ObjectMeta");
        metadata.zip(obj.get("metadata")).and_then(|(msg, m)| nanokube_api::protobuf::type_error_in(msg, m, "metadata"))
    } else {
        nanokube_api::protobuf::type_error(&def.api_version(), def.kind, obj)
    };
    match error {
        Some(e) => Err(ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {e}", def.kind, def.version, def.kind))),
        None => Ok(()),
    }
}

/// Quantities written as kube-apiserver writes them back after decoding (`0.5` cpu is
/// stored and served as `"500m"`); one Go would not decode is refused as upstream's
/// decoder refuses it (400). Built-in kinds only: custom resources keep their JSON.
fn store_quantities(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    if def.custom {
        return Ok(());
    }
    nanokube_api::protobuf::store_quantities(&def.api_version(), def.kind, obj)
        .map_err(|e| ApiError::bad_request(format!("{} in version \"{}\" cannot be handled as a {}: {e}", def.kind, def.version, def.kind)))
}

/// Whether a resource is stored in another version's shape (events.k8s.io/v1 Events are
/// stored as core/v1 Events).
fn converts(def: &ResourceDef) -> bool {
    nanokube_api::convert::converts(def)
}

/// A stored object as `def` shows it. Custom resources convert between versions with
/// the `None` strategy: only `apiVersion` changes.
pub fn view(def: &ResourceDef, obj: Obj) -> Obj {
    // Checked before anything is decoded: most objects are served as their stored bytes.
    if converts(def) {
        match obj.with_value(|stored| nanokube_api::convert::from_storage(def, stored)) {
            Some(v) => Arc::new(Stored::new(v)),
            None => obj,
        }
    } else if def.custom && !json_api_version_is(obj.json_head(), def) {
        let mut v = obj.to_value();
        v["apiVersion"] = json!(def.api_version());
        Arc::new(Stored::new(v))
    } else {
        obj
    }
}

/// Whether serialized JSON starts with `{"apiVersion":"<def's group/version>"`, checked
/// in place (this runs once per custom object on every read).
fn json_api_version_is(json: &[u8], def: &ResourceDef) -> bool {
    let Some(rest) = json.strip_prefix(b"{\"apiVersion\":\"".as_slice()) else { return false };
    let rest = match def.group {
        "" => rest,
        group => match rest.strip_prefix(group.as_bytes()).and_then(|r| r.strip_prefix(b"/".as_slice())) {
            Some(r) => r,
            None => return false,
        },
    };
    rest.strip_prefix(def.version.as_bytes()).is_some_and(|r| r.first() == Some(&b'"'))
}

/// The served form of an object just written at `kv`: the stored bytes with the
/// revision spliced in where [`encode`] left room for it, so a write serializes its
/// object once. It fills the per-revision cache, so watchers and later readers share it.
/// Equal to what [`decode_as`] makes of the bytes.
fn served(def: &ResourceDef, kv: &KeyValue, written: Encoding) -> Result<Obj, ApiError> {
    let encoded = kv.decoded(move |stored| -> Result<Encoded, ApiError> {
        match written.rv_slot {
            Some(slot) if stored == &written.bytes[..] => Ok(Encoded::At(slot)),
            _ => served_form(stored, kv.mod_revision),
        }
    })?;
    // Kinds stored in another form (core Events, custom resources of another version)
    // are then shown as `def` shows them, as `decode_as` does.
    Ok(view(def, Arc::new(Stored::of_revision(kv, &encoded))))
}

/// The per-revision cache entry of bytes this server encoded (the revision's place in
/// them), handed to the store with the write so that the key-value watchers receive has
/// it already: without it, a watcher woken before the writer returns would decode and
/// re-encode the object to find what the writer knew. `None` if it has no place.
fn written_form(written: &Encoding) -> Option<nanokube_store::Decoded> {
    written.rv_slot.map(|slot| Arc::new(Encoded::At(slot)) as nanokube_store::Decoded)
}

/// [`decode_as`], logging the key of a row that does not decode.
fn decode_logged(def: &ResourceDef, kv: &KeyValue) -> Result<Obj, ApiError> {
    decode_as(def, kv).inspect_err(|e| tracing::error!(key = %kv.key, revision = kv.mod_revision, "stored object does not decode: {}", e.message))
}

/// Decode a stored value as `def` shows it.
fn decode_as(def: &ResourceDef, kv: &KeyValue) -> Result<Obj, ApiError> {
    decode(kv).map(|o| view(def, o))
}

/// The bytes to store for an object of `def`.
fn encode_as(def: &ResourceDef, obj: &Value) -> Encoding {
    if let Some(stored) = nanokube_api::convert::to_storage(def, obj) {
        encode(&stored)
    } else if def.custom && def.version != def.storage_version {
        let mut v = obj.clone();
        v["apiVersion"] = json!(format!("{}/{}", def.group, def.storage_version));
        encode(&v)
    } else {
        encode(obj)
    }
}

/// An object's stored bytes, and where its served form's `resourceVersion` goes.
struct Encoding {
    bytes: Bytes,
    rv_slot: Option<RvSlot>,
}

/// Where `"resourceVersion":"N"` is spliced into stored bytes: at byte `at`, inside
/// `metadata`, after an entry (`after_entry`: a comma before it) or before one
/// (`before_entry`: a comma after it). Its place is the one the object's field order
/// gives it (Go order, or sorted), so the splice is byte for byte what serializing the
/// object with the revision would give.
#[derive(Debug, Clone, Copy)]
struct RvSlot {
    at: usize,
    after_entry: bool,
    before_entry: bool,
}

impl RvSlot {
    /// What the splice adds: the field, and a comma when another entry is beside it.
    fn added_len(self, rev: Revision) -> usize {
        let digits = rev.unsigned_abs().checked_ilog10().map_or(1, |d| d as usize + 1) + usize::from(rev < 0);
        r#""resourceVersion":"""#.len() + digits + usize::from(self.after_entry || self.before_entry)
    }

    /// Append `stored` with the revision spliced in. A slot is only ever paired with the
    /// bytes it was found in; should it not fit them, the bytes are written as they are.
    fn write_spliced(self, out: &mut Vec<u8>, stored: &[u8], rev: Revision) {
        let Some((before, after)) = stored.split_at_checked(self.at) else {
            out.extend_from_slice(stored);
            return;
        };
        out.reserve(stored.len() + self.added_len(rev));
        out.extend_from_slice(before);
        if self.after_entry {
            out.push(b',');
        }
        out.extend_from_slice(b"\"resourceVersion\":\"");
        let _ = std::io::Write::write_fmt(out, format_args!("{rev}")); // into a Vec: cannot fail
        out.push(b'"');
        if !self.after_entry && self.before_entry {
            out.push(b',');
        }
        out.extend_from_slice(after);
    }

    #[cfg(test)]
    fn splice(self, stored: &[u8], rev: Revision) -> Bytes {
        let mut out = Vec::new();
        self.write_spliced(&mut out, stored, rev);
        assert_eq!(out.len(), stored.len() + self.added_len(rev));
        Bytes::from(out)
    }
}

/// Serialize an object for the store: compact JSON, a built-in kind's fields in the
/// order of its Go struct as upstream writes them (a custom resource's sorted, as
/// upstream writes unstructured objects; see [`nanokube_api::go_order`]), without
/// `resourceVersion` (the revision is the resourceVersion: never stored inside the
/// value) or `selfLink`, noting where the served form's `resourceVersion` goes.
fn encode(obj: &Value) -> Encoding {
    let Some(map) = obj.as_object() else {
        return Encoding { bytes: Bytes::from(go_order::to_vec(obj)), rv_slot: None };
    };
    let mut out = Vec::with_capacity(1024);
    let mut rv_slot = None;
    let mut metadata = |out: &mut Vec<u8>, msg: Option<&'static str>, v: &Value| match v {
        Value::Object(m) => rv_slot = Some(encode_metadata(out, msg, m)),
        v => go_order::write_plain(out, v),
    };
    match go_order::message_of(obj) {
        Some(msg) => go_order::write_object(&mut out, msg, map, &mut metadata),
        None => {
            out.push(b'{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut out, k); // a string into a Vec: cannot fail
                out.push(b':');
                match k.as_str() {
                    "metadata" => metadata(&mut out, None, v),
                    _ => go_order::write_plain(&mut out, v),
                }
            }
            out.push(b'}');
        }
    }
    // Stored bytes live as long as their revision is retained: keep no spare capacity.
    Encoding { bytes: Bytes::from(out.into_boxed_slice()), rv_slot }
}

/// `metadata` (of message `msg`, or sorted when `None`) without `resourceVersion` and
/// `selfLink`, and where `resourceVersion` goes in that order.
fn encode_metadata(out: &mut Vec<u8>, msg: Option<&'static str>, metadata: &Map<String, Value>) -> RvSlot {
    let entries = match msg {
        Some(m) => go_order::ordered(m, metadata),
        None => metadata.iter().map(|(k, v)| (k.as_str(), None, v)).collect(),
    };
    let fields = msg.and_then(nanokube_api::protobuf::fields_in_go_order).unwrap_or_default();
    let rank = |key: &str| fields.iter().position(|f| f.json == key);
    let rv_rank = rank("resourceVersion");
    let after_rv = |key: &str| match (msg, rv_rank) {
        (Some(_), Some(rv)) => rank(key).is_none_or(|r| r > rv),
        _ => key > "resourceVersion",
    };
    out.push(b'{');
    let mut slot = None;
    let mut wrote = false;
    for (k, field, v) in entries {
        if k == "resourceVersion" || k == "selfLink" {
            continue;
        }
        if slot.is_none() && after_rv(k) {
            slot = Some(RvSlot { at: out.len(), after_entry: wrote, before_entry: true });
        }
        if wrote {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, k); // a string into a Vec: cannot fail
        out.push(b':');
        match field {
            Some(f) => go_order::write_field(out, f, v),
            None => go_order::write_plain(out, v),
        }
        wrote = true;
    }
    let slot = slot.unwrap_or(RvSlot { at: out.len(), after_entry: wrote, before_entry: false });
    out.push(b'}');
    slot
}

fn parse_rv(rv: &str) -> Result<Revision, ApiError> {
    rv.parse::<Revision>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    v: String,
    rv: Revision,
    start: String,
}

fn encode_continue(rv: Revision, last_key: &str) -> String {
    let t = ContinueToken { v: "meta.k8s.io/v1".into(), rv, start: last_key.to_string() };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&t).expect("serialize"))
}

/// The 410 for a continue token whose snapshot is gone: like upstream, it carries a token
/// that goes on from the same key at the newest revision, and says so.
fn continue_expired(token: &Option<String>) -> ApiError {
    let next = token.as_deref().and_then(|t| decode_continue(t).ok()).map(|t| encode_continue(-1, &t.start));
    let mut e = ApiError::expired(match next {
        Some(_) => {
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, \
             or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an \
             inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."
        }
        None => "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
    });
    e.details.continue_token = next;
    e
}

fn decode_continue(token: &str) -> Result<ContinueToken, ApiError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|e| ApiError::bad_request(format!("continue key is not valid: {e}")))?;
    let t: ContinueToken = serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("continue key is not valid: {e}")))?;
    if t.v != "meta.k8s.io/v1" {
        return Err(ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"));
    }
    Ok(t)
}

/// An object marked for deletion for the first time moves to its next generation, if it
/// counts generations (upstream's `BeforeDelete` and `markAsDeleting`): its controllers
/// must see the change.
fn bump_generation_on_deletion(metadata: &mut serde_json::Map<String, Value>) {
    if let Some(g) = metadata.get("generation").and_then(Value::as_i64).filter(|g| *g > 0) {
        metadata.insert("generation".into(), json!(g + 1));
    }
}

/// Everything but `metadata` and `status`: what a generation change compares.
fn spec_part(v: &Value) -> Map<String, Value> {
    v.as_object()
        .map(|m| m.iter().filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")).map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Whether a served object passes selectors, decoding it only if there are any. The tree
/// decoded to judge it is not kept: a selector matching most of 100,000 objects would
/// otherwise keep them all decoded.
fn selects(def: &ResourceDef, obj: &Stored, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    labels.is_empty() && fields.is_empty() || obj.with_value(|v| matches(def, v, labels, fields))
}

/// Whether an object matches label and field selectors.
pub fn matches(def: &ResourceDef, obj: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    labels.matches(meta::labels(obj)) && (fields.is_empty() || fields.matches(def.group, def.plural, def.namespaced, obj))
}

impl Registry {
    /// A registry over a store. Allocators are rebuilt from the stored Services.
    pub fn new(store: Arc<dyn Backend>, config: RegistryConfig) -> Result<Self, String> {
        let mut alloc = ServiceAllocator::new(&config.service_cidr, config.node_ports)?;
        let svc = resources::find("", "v1", "services").expect("services");
        for kv in store.list(&svc.key_prefix(), None, 0).items {
            if let Ok(obj) = decode(&kv) {
                for ip in service_ips(&obj) {
                    alloc.mark_ip(&ip);
                }
                for p in node_ports(&obj) {
                    alloc.mark_port(p);
                }
            }
        }
        Ok(Registry { store, services: Mutex::new(alloc), resources: Arc::new(ResourceTable::new()), pod_security: config.pod_security })
    }

    /// The PodSecurity admission plugin's configuration.
    pub fn pod_security(&self) -> &crate::admission::pod_security::PodSecurityConfig {
        &self.pod_security
    }

    /// The resources this cluster serves (built-in, and those its CRDs define).
    pub fn resources(&self) -> &Arc<ResourceTable> {
        &self.resources
    }

    /// Custom resources: prune the fields the version's schema does not declare, apply
    /// its defaults, and validate against it, CEL rules included (`old` for transition
    /// rules on updates), in upstream's order. Other kinds: nothing.
    fn custom_strategy(&self, def: &ResourceDef, obj: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
        if !def.custom {
            return;
        }
        let Some(cr) = self.resources.custom_resource(def.group, def.plural) else { return };
        let Some(v) = cr.version(def.version) else { return };
        crd::prune(&v.schema, obj);
        crd::apply_defaults(&v.schema, obj);
        causes.extend(crd::validate_update(&v.schema, obj, old));
    }

    /// A field selector that also accepts the resource's CRD `selectableFields`.
    pub fn selectable(&self, def: &ResourceDef, fields: &FieldSelector) -> FieldSelector {
        let mut out = fields.clone();
        if def.custom && !fields.is_empty() {
            if let Some(cr) = self.resources.custom_resource(def.group, def.plural) {
                out.extra = cr.version(def.version).map(|v| v.selectable.clone()).unwrap_or_default();
            }
        }
        out
    }

    /// Creating custom objects stops while their CRD is being deleted.
    fn check_custom_create(&self, def: &ResourceDef) -> Result<(), ApiError> {
        if def.custom && self.resources.custom_resource(def.group, def.plural).is_some_and(|cr| cr.terminating) {
            return Err(ApiError::method_not_allowed("create not allowed while custom resource definition is terminating"));
        }
        Ok(())
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Backend> {
        &self.store
    }

    /// The first Service IP (for the `kubernetes` Service).
    pub fn first_service_ip(&self) -> String {
        self.services.lock().expect("alloc").first_ip().to_string()
    }

    /// The Service address range (`--service-cluster-ip-range`).
    pub fn service_cidr(&self) -> String {
        self.services.lock().expect("alloc").cidr()
    }

    /// The cluster DNS address (the service range's tenth).
    pub fn dns_service_ip(&self) -> String {
        self.services.lock().expect("alloc").dns_ip().to_string()
    }

    /// Get one object.
    pub fn get(&self, def: &ResourceDef, namespace: &str, name: &str) -> Result<Obj, ApiError> {
        match self.store.get(&def.key(namespace, name)) {
            Some(kv) => decode_as(def, &kv),
            None => Err(ApiError::not_found(def.plural, def.group, name)),
        }
    }

    /// The names of every stored object of a resource in a namespace, read from the
    /// store's keys without decoding anything (so undecodable objects are named too).
    pub fn names(&self, def: &ResourceDef, namespace: &str) -> Vec<String> {
        let prefix = def.namespace_prefix(Some(namespace));
        self.store.list(&prefix, None, 0).items.iter().filter_map(|kv| kv.key.strip_prefix(&prefix).map(String::from)).collect()
    }

    /// List objects (one namespace, or all with `None`).
    pub fn list(&self, def: &ResourceDef, namespace: Option<&str>, opts: &ListOptions) -> Result<ListOutput, ApiError> {
        let fields = self.selectable(def, &opts.fields);
        fields.check_supported(def.group, def.plural, def.namespaced)?;
        let prefix = def.namespace_prefix(namespace);
        let (after, token_rv) = match &opts.continue_token {
            Some(t) if !t.is_empty() => {
                let t = decode_continue(t)?;
                if !t.start.starts_with(&prefix) {
                    return Err(ApiError::bad_request("continue key is not valid: the token does not belong to this list"));
                }
                // rv -1: the token a 410 hands out, to go on at the newest revision.
                (Some(t.start), Some(t.rv).filter(|rv| *rv > 0))
            }
            _ => (None, None),
        };
        let filtering = !opts.labels.is_empty() || !fields.is_empty();
        // A pinned metadata.name reads one key instead of scanning.
        let current_state = token_rv.is_none() && opts.exact_revision.is_none();
        if let (Some(name), true) = (fields.pinned_name(), current_state && (namespace.is_some() || !def.namespaced)) {
            let revision = self.store.current_revision();
            let mut items = Vec::new();
            if let Some(kv) = self.store.get(&def.key(namespace.unwrap_or(""), name)) {
                let obj = decode_as(def, &kv)?;
                if selects(def, &obj, &opts.labels, &fields) {
                    items.push(obj);
                }
            }
            return Ok(ListOutput { items, revision, continue_token: None, remaining: None });
        }
        let mut items = Vec::new();
        let mut cursor = after;
        let revision;
        loop {
            let page_limit = if opts.limit > 0 { opts.limit.max(64) } else { 0 };
            // Later pages read the first page's snapshot, as etcd does; so does Exact.
            let page = match token_rv.or(opts.exact_revision) {
                Some(rv) => self.store.list_at(&prefix, cursor.as_deref(), page_limit, rv).map_err(|e| match e {
                    StoreError::Compacted { .. } if token_rv.is_some() => continue_expired(&opts.continue_token),
                    e => store_err(e, def, ""),
                })?,
                None => self.store.list(&prefix, cursor.as_deref(), page_limit),
            };
            let page_rev = page.revision;
            let n = page.items.len();
            // Index of the last row looked at (its key is cloned once, not per row).
            let mut last = None;
            let mut stopped_early = false;
            for (i, kv) in page.items.iter().enumerate() {
                last = Some(i);
                // One undecodable row costs only itself: it is left out (and logged);
                // GET of it answers 500 and DELETE removes it.
                let Ok(obj) = decode_logged(def, kv) else { continue };
                if selects(def, &obj, &opts.labels, &fields) {
                    items.push(obj);
                }
                if opts.limit > 0 && items.len() == opts.limit {
                    stopped_early = i + 1 < n || page.remaining > 0;
                    break;
                }
            }
            let last_key = last.map(|i| page.items[i].key.clone());
            if opts.limit == 0 || items.len() == opts.limit || page.remaining == 0 {
                revision = token_rv.unwrap_or(page_rev);
                let continue_token = if stopped_early { last_key.as_deref().map(|k| encode_continue(revision, k)) } else { None };
                let remaining = if continue_token.is_some() && !filtering {
                    let seen_in_page = last.map_or(0, |p| p + 1);
                    Some(n - seen_in_page + page.remaining)
                } else {
                    None
                };
                return Ok(ListOutput { items, revision, continue_token, remaining });
            }
            cursor = last_key;
        }
    }

    fn check_namespace(&self, def: &ResourceDef, namespace: &str) -> Result<(), ApiError> {
        if !def.namespaced {
            return Ok(());
        }
        let ns_def = resources::find("", "v1", "namespaces").expect("namespaces");
        match self.store.get(&ns_def.key("", namespace)) {
            None => Err(ApiError::not_found("namespaces", "", namespace)),
            // Almost every namespace is not terminating: look at the bytes before decoding.
            Some(kv)
                if memchr::memmem::find(&kv.value, b"\"deletionTimestamp\"").is_none() && memchr::memmem::find(&kv.value, b"\"Terminating\"").is_none() =>
            {
                Ok(())
            }
            Some(kv) => {
                let ns = decode(&kv)?;
                if meta::is_deleting(&ns) || ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
                    let mut e = ApiError::forbidden(format!(
                        "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                        nanokube_api::error::qualified(def.plural, def.group),
                        "",
                        namespace
                    ));
                    e.message = e.message.replace(" \"\" is forbidden", " is forbidden");
                    e.details.causes.push(Cause {
                        reason: "NamespaceTerminating".into(),
                        message: format!("namespace {namespace} is being terminated"),
                        field: "metadata.namespace".into(),
                    });
                    Err(e)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Check `kind`/`apiVersion` of a body against the resource (either may be omitted).
    pub fn check_type(def: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body of the request is not a JSON object"));
        }
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if !kind.is_empty() && kind != def.kind {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                if api_version.is_empty() { "<none>".into() } else { format!("{api_version}, Kind={kind}") },
                format_args!("{}, Kind={}", def.api_version(), def.kind)
            )));
        }
        if !api_version.is_empty() && api_version != def.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({})",
                def.api_version()
            )));
        }
        Ok(())
    }

    /// Create an object in `namespace` (ignored for cluster-scoped resources).
    pub async fn create(&self, def: &ResourceDef, namespace: &str, mut obj: Value, opts: &WriteOptions) -> Result<Obj, ApiError> {
        Self::check_type(def, &obj)?;
        obj["kind"] = json!(def.kind);
        obj["apiVersion"] = json!(def.api_version());
        let body_ns = meta::namespace(&obj).to_string();
        if def.namespaced && !body_ns.is_empty() && body_ns != namespace {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
        {
            let m = meta::metadata_mut(&mut obj);
            if def.namespaced {
                m.insert("namespace".into(), json!(namespace));
            } else {
                m.remove("namespace");
            }
            if m.get("resourceVersion").and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
                return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
            }
            let name_empty = m.get("name").and_then(Value::as_str).is_none_or(str::is_empty);
            if name_empty {
                if let Some(prefix) = m.get("generateName").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    let generated = meta::generate_name(prefix);
                    m.insert("name".into(), json!(generated));
                }
            }
            m.insert("uid".into(), json!(meta::new_uid()));
            m.insert("creationTimestamp".into(), json!(meta::now_rfc3339()));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            if def.tracks_generation {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if def.group == "certificates.k8s.io" && def.plural == "certificatesigningrequests" {
            // Who asked is recorded by the server, never taken from the body (upstream's
            // strategy); the server's own requests are the loopback user's.
            let spec = obj.as_object_mut().map(|m| m.entry("spec").or_insert_with(|| json!({})));
            if let Some(spec) = spec.and_then(Value::as_object_mut) {
                for k in ["username", "uid", "groups", "extra"] {
                    spec.remove(k);
                }
                match opts.requester.as_deref() {
                    Some(r) => {
                        spec.insert("username".into(), json!(r.user.name));
                        if !r.user.uid.is_empty() {
                            spec.insert("uid".into(), json!(r.user.uid));
                        }
                        spec.insert("groups".into(), json!(r.user.groups));
                        if !r.user.extra.is_empty() {
                            spec.insert("extra".into(), json!(r.user.extra));
                        }
                    }
                    None => {
                        spec.insert("username".into(), json!("system:apiserver"));
                        spec.insert("groups".into(), json!(["system:authenticated", "system:masters"]));
                    }
                }
            }
        }
        let name = meta::name(&obj).to_string();
        if def.has_status() && def.plural != "namespaces" && def.plural != "nodes" && def.plural != "persistentvolumes" {
            // Status is the controllers' to write; a create starts it at its zero value.
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
                if let Some(initial) = defaults::initial_status(def) {
                    m.insert("status".into(), initial);
                }
            }
        }
        if !def.namespaced || namespace.is_empty() {
            // nothing to check
        } else {
            self.check_namespace(def, namespace)?;
        }
        self.check_custom_create(def)?;
        check_decodable(def, &obj)?;
        store_quantities(def, &mut obj)?;
        defaults::apply_defaults(def, &mut obj);
        defaults::prepare_create(def, &mut obj);
        self.admit_create(def, namespace, &mut obj)?;
        let attrs = |name| Attributes {
            def,
            operation: Operation::Create,
            namespace,
            name,
            subresource: "",
            dry_run: opts.dry_run,
            requester: opts.requester.as_deref(),
        };
        if admission::mutate(self, &attrs(&name), &mut obj, None).await? {
            // What a webhook returns is decoded again, as upstream decodes the patched
            // object into its type: checked and defaulted.
            obj["kind"] = json!(def.kind);
            obj["apiVersion"] = json!(def.api_version());
            check_decodable(def, &obj)?;
            store_quantities(def, &mut obj)?;
            defaults::apply_defaults(def, &mut obj);
        }
        go_omitempty::drop_empty(&mut obj);
        let name = meta::name(&obj).to_string();
        let mut causes = Vec::new();
        self.custom_strategy(def, &mut obj, None, &mut causes);
        causes.extend(validation::validate_object(def, &obj));
        if def.group.is_empty() && def.plural == "pods" {
            causes.extend(validation::validate_pod_create(&obj));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(def.kind, def.group, &name, causes));
        }
        admission::validate(self, &attrs(&name), Some(&obj), None).await?;
        if def.plural == "services" {
            if self.store.get(&def.key(namespace, &name)).is_some() {
                return Err(ApiError::already_exists(def.plural, def.group, &name));
            }
            self.allocate_and_reserve(&mut obj, None, opts.dry_run).await?;
        }
        if opts.dry_run {
            if self.store.get(&def.key(namespace, &name)).is_some() {
                return Err(ApiError::already_exists(def.plural, def.group, &name));
            }
            return Ok(Arc::new(Stored::new(obj)));
        }
        let key = def.key(namespace, &name);
        let encoding = encode_as(def, &obj);
        match self.store.create_decoded(key, encoding.bytes.clone(), written_form(&encoding)).await {
            Ok(kv) => served(def, &kv, encoding),
            Err(e) => {
                if def.plural == "services" {
                    self.release_service(&obj, None).await;
                }
                Err(store_err(e, def, &name))
            }
        }
    }

    /// Admission on create: what upstream's default admission plugins do to new objects
    /// (ServiceAccount, DefaultTolerationSeconds, Priority, RuntimeClass, DefaultStorageClass,
    /// DefaultIngressClass, StorageObjectInUseProtection).
    fn admit_create(&self, def: &ResourceDef, namespace: &str, obj: &mut Value) -> Result<(), ApiError> {
        match (def.group, def.plural) {
            ("", "pods") => self.admit_pod(namespace, obj),
            ("", "persistentvolumeclaims") => {
                self.claim_limits(namespace, obj)?;
                self.default_storage_class(obj);
                add_finalizer(obj, "kubernetes.io/pvc-protection");
                Ok(())
            }
            ("", "persistentvolumes") => {
                add_finalizer(obj, "kubernetes.io/pv-protection");
                Ok(())
            }
            ("networking.k8s.io", "ingresses") => {
                self.default_ingress_class(obj);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// LimitRanger admission on a new pod or a resize (see
    /// [`nanokube_api::quota::apply_limit_ranges`]): the namespace's LimitRanges fill in
    /// default requests and limits (noted in the `kubernetes.io/limit-ranger` annotation),
    /// then their `Container` and `Pod` min, max and ratios are checked (403, worded as
    /// upstream).
    fn limit_ranger(&self, namespace: &str, obj: &mut Value) -> Result<(), ApiError> {
        let Some(def) = resources::find("", "v1", "limitranges") else { return Ok(()) };
        let Ok(ranges) = self.list(def, Some(namespace), &ListOptions::default()) else { return Ok(()) };
        if ranges.items.is_empty() {
            return Ok(());
        }
        let ranges: Vec<Value> = ranges.items.iter().map(|r| r.to_value()).collect();
        match nanokube_api::quota::apply_limit_ranges(obj, &ranges) {
            nanokube_api::quota::LimitOutcome::Admitted(None) => Ok(()),
            nanokube_api::quota::LimitOutcome::Admitted(Some(note)) => {
                let annotations = meta::metadata_mut(obj).entry("annotations").or_insert_with(|| json!({}));
                annotations["kubernetes.io/limit-ranger"] = json!(note);
                Ok(())
            }
            nanokube_api::quota::LimitOutcome::Refused(errors) => {
                let joined = if errors.len() == 1 { errors[0].clone() } else { format!("[{}]", errors.join(", ")) };
                Err(pod_forbidden(meta::name(obj), &joined))
            }
        }
    }

    /// LimitRanger on a claim: the namespace's `PersistentVolumeClaim` limits (403, worded
    /// as upstream, several joined in brackets).
    fn claim_limits(&self, namespace: &str, obj: &Value) -> Result<(), ApiError> {
        let Some(def) = resources::find("", "v1", "limitranges") else { return Ok(()) };
        let Ok(ranges) = self.list(def, Some(namespace), &ListOptions::default()) else { return Ok(()) };
        let ranges: Vec<Value> = ranges.items.iter().map(|r| r.to_value()).collect();
        let errors = nanokube_api::quota::check_claim_limits(obj, &ranges);
        if errors.is_empty() {
            return Ok(());
        }
        let joined = if errors.len() == 1 { errors[0].clone() } else { format!("[{}]", errors.join(", ")) };
        Err(ApiError::forbidden(format!("persistentvolumeclaims \"{}\" is forbidden: {joined}", meta::name(obj))))
    }

    fn admit_pod(&self, namespace: &str, obj: &mut Value) -> Result<(), ApiError> {
        self.limit_ranger(namespace, obj)?;
        self.runtime_class(obj)?;
        // ServiceAccount admission: every pod runs as a service account, and gets its
        // token, the cluster CA and its namespace mounted unless automount is off.
        let sa = obj
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .or_else(|| obj.pointer("/spec/serviceAccount").and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from))
            .unwrap_or_else(|| "default".into());
        let sa_automount = resources::find("", "v1", "serviceaccounts")
            .and_then(|d| self.get(d, namespace, &sa).ok())
            .and_then(|o| o.value().get("automountServiceAccountToken").and_then(Value::as_bool));
        let priority = self.pod_priority(obj)?;
        let qos = nanokube_api::pod_resize::compute_qos_class(obj);
        let Some(root) = obj.as_object_mut() else { return Ok(()) };
        let spec = root.entry("spec").or_insert_with(|| json!({}));
        let Some(spec) = spec.as_object_mut() else { return Ok(()) };
        spec.insert("serviceAccountName".into(), json!(sa));
        spec.insert("serviceAccount".into(), json!(sa));
        let automount = spec.get("automountServiceAccountToken").and_then(Value::as_bool).or(sa_automount).unwrap_or(true);
        if automount {
            mount_service_account_token(spec);
        }
        // DefaultTolerationSeconds: five minutes on a node that is not ready or unreachable.
        let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
        if let Some(list) = tolerations.as_array_mut() {
            for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
                let covered = list.iter().any(|t| {
                    let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                    let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
                    let k = t.get("key").and_then(Value::as_str).unwrap_or("");
                    (effect.is_empty() || effect == "NoExecute") && (k == key || (k.is_empty() && op == "Exists"))
                });
                if !covered {
                    list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                }
            }
        }
        // Priority admission.
        let (value, policy) = priority;
        spec.insert("priority".into(), json!(value));
        spec.entry("preemptionPolicy").or_insert(json!(policy));
        let status = root.entry("status").or_insert_with(|| json!({}));
        if let Some(st) = status.as_object_mut() {
            st.insert("phase".into(), json!("Pending"));
            st.insert("qosClass".into(), json!(qos));
        }
        Ok(())
    }

    /// RuntimeClass admission on a new pod: its class must exist; the class's
    /// `overhead.podFixed` becomes the pod's `spec.overhead` (one the pod set itself must
    /// equal it, and a pod without a class with overhead may not set one), and its
    /// `scheduling` node selector and tolerations are merged into the pod's (a
    /// conflicting selector value is refused), as upstream's plugin.
    fn runtime_class(&self, obj: &mut Value) -> Result<(), ApiError> {
        let name = meta::name(obj).to_string();
        let forbidden = |why: String| pod_forbidden(&name, &why);
        let class = match obj.pointer("/spec/runtimeClassName").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            None => None,
            Some(rc) => match resources::find("node.k8s.io", "v1", "runtimeclasses").and_then(|d| self.get(d, "", rc).ok()) {
                Some(c) => Some(c.to_value()),
                None => return Err(forbidden(format!("pod rejected: RuntimeClass {rc:?} not found"))),
            },
        };
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
        let pod_overhead = spec.get("overhead").and_then(Value::as_object).filter(|o| !o.is_empty()).cloned();
        match (class.as_ref().and_then(|c| c.pointer("/overhead/podFixed")).and_then(Value::as_object), pod_overhead) {
            (Some(fixed), Some(set)) => {
                let same = fixed.len() == set.len()
                    && fixed.iter().all(|(k, v)| {
                        let q = |v: &Value| v.as_str().and_then(nanokube_api::expressions::parse_quantity);
                        set.get(k).is_some_and(|w| q(v).is_some() && q(v) == q(w))
                    });
                if !same {
                    return Err(forbidden("pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead".into()));
                }
                spec.insert("overhead".into(), Value::Object(fixed.clone()));
            }
            (Some(fixed), None) => {
                spec.insert("overhead".into(), Value::Object(fixed.clone()));
            }
            (None, Some(_)) => return Err(forbidden("pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead".into())),
            (None, None) => {}
        }
        let Some(scheduling) = class.as_ref().and_then(|c| c.get("scheduling")) else { return Ok(()) };
        if let Some(selector) = scheduling.get("nodeSelector").and_then(Value::as_object).filter(|s| !s.is_empty()) {
            let pod_selector = spec.entry("nodeSelector").or_insert_with(|| json!({}));
            if let Some(pod_selector) = pod_selector.as_object_mut() {
                for (key, value) in selector {
                    match pod_selector.get(key) {
                        Some(pod_value) if pod_value != value => {
                            let text = |v: &Value| v.as_str().unwrap_or("").to_string();
                            return Err(forbidden(format!(
                                "conflict: runtimeClass.scheduling.nodeSelector[{key}] = {}; pod.spec.nodeSelector[{key}] = {}",
                                text(value),
                                text(pod_value)
                            )));
                        }
                        _ => {
                            pod_selector.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
        }
        if let Some(extra) = scheduling.get("tolerations").and_then(Value::as_array) {
            let list = spec.entry("tolerations").or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut() {
                for t in extra {
                    if !list.contains(t) {
                        list.push(t.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// The priority and preemption policy of a pod, from its `priorityClassName` (or the
    /// global default class, or 0), as upstream's Priority admission finds them.
    fn pod_priority(&self, obj: &Value) -> Result<(i64, String), ApiError> {
        let classes = resources::find("scheduling.k8s.io", "v1", "priorityclasses");
        let of = |pc: &Value| {
            (
                pc.get("value").and_then(Value::as_i64).unwrap_or(0),
                pc.get("preemptionPolicy").and_then(Value::as_str).unwrap_or("PreemptLowerPriority").to_string(),
            )
        };
        match obj.pointer("/spec/priorityClassName").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(name) => match classes.and_then(|d| self.get(d, "", name).ok()) {
                Some(pc) => Ok(of(pc.value())),
                None => Err(ApiError::forbidden(format!("pods \"{}\" is forbidden: no PriorityClass with name {name} was found", meta::name(obj)))),
            },
            None => {
                let listed = classes.and_then(|d| self.list(d, None, &ListOptions::default()).ok());
                let default = listed.as_ref().and_then(|l| {
                    l.items
                        .iter()
                        .map(|o| o.value())
                        .filter(|pc| pc.get("globalDefault").and_then(Value::as_bool) == Some(true))
                        .min_by_key(|pc| pc.get("value").and_then(Value::as_i64).unwrap_or(0))
                        .map(of)
                });
                Ok(default.unwrap_or((0, "PreemptLowerPriority".into())))
            }
        }
    }

    /// DefaultStorageClass admission: a claim that names no class gets the default one.
    fn default_storage_class(&self, obj: &mut Value) {
        let annotations = ["storageclass.kubernetes.io/is-default-class", "storageclass.beta.kubernetes.io/is-default-class"];
        self.default_class(obj, ("storage.k8s.io", "storageclasses"), &annotations, "storageClassName");
    }

    /// DefaultIngressClass admission: an Ingress that names no class (neither
    /// `spec.ingressClassName` nor the old `kubernetes.io/ingress.class` annotation) gets
    /// the default IngressClass.
    fn default_ingress_class(&self, obj: &mut Value) {
        if obj.pointer("/metadata/annotations/kubernetes.io~1ingress.class").is_some() {
            return;
        }
        self.default_class(obj, ("networking.k8s.io", "ingressclasses"), &["ingressclass.kubernetes.io/is-default-class"], "ingressClassName");
    }

    /// Set `spec.<field>` of `obj`, when unset, to the newest class of `classes` that one
    /// of `annotations` marks default (as upstream picks among several).
    fn default_class(&self, obj: &mut Value, classes: (&str, &str), annotations: &[&str], field: &str) {
        if obj.pointer(&format!("/spec/{field}")).is_some_and(|v| !v.is_null()) {
            return;
        }
        let Some(d) = resources::find(classes.0, "v1", classes.1) else { return };
        let Ok(list) = self.list(d, None, &ListOptions::default()) else { return };
        let is_default = |c: &Value| {
            annotations.iter().any(|a| c.pointer(&format!("/metadata/annotations/{}", a.replace('/', "~1"))).and_then(Value::as_str) == Some("true"))
        };
        fn created(v: &Value) -> &str {
            v.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("")
        }
        let chosen = list
            .items
            .iter()
            .map(|o| o.value())
            .filter(|c| is_default(c))
            .max_by(|a, b| created(a).cmp(created(b)).then_with(|| meta::name(b).cmp(meta::name(a))));
        if let (Some(c), Some(spec)) = (chosen, obj.get_mut("spec").and_then(Value::as_object_mut)) {
            spec.insert(field.into(), json!(meta::name(c)));
        }
    }

    /// Allocate ClusterIPs and NodePorts; `old` carries what an update keeps.
    /// The ranges of the ServiceCIDRs other than the default one that addresses may come
    /// from: `Ready` and not being deleted (upstream's allocators use only ready ones).
    fn other_service_cidrs(&self) -> Vec<String> {
        let Some(def) = resources::find("networking.k8s.io", "v1", "servicecidrs") else { return Vec::new() };
        let Ok(list) = self.list(def, None, &ListOptions::default()) else { return Vec::new() };
        list.items
            .iter()
            .map(|o| o.value())
            .filter(|c| meta::name(c) != "kubernetes" && !meta::is_deleting(c))
            .filter(|c| {
                c.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| cs.iter().any(|x| x["type"] == "Ready" && x["status"] == "True"))
            })
            .flat_map(|c| c.pointer("/spec/cidrs").and_then(Value::as_array).cloned().unwrap_or_default())
            .filter_map(|c| c.as_str().map(String::from))
            .collect()
    }

    fn allocate_service(&self, obj: &mut Value, old: Option<&Value>, dry_run: bool) -> Result<(Vec<String>, Vec<u16>), ApiError> {
        let ty = obj.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let others = self.other_service_cidrs();
        let mut alloc = self.services.lock().expect("alloc");
        alloc.set_extra_ranges(&others);
        let mut taken_ips: Vec<String> = Vec::new();
        let mut taken_ports: Vec<u16> = Vec::new();
        let result = (|| -> Result<(), ApiError> {
            let spec = obj.get_mut("spec").and_then(Value::as_object_mut).ok_or_else(|| ApiError::bad_request("spec is required"))?;
            if ty == "ExternalName" {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
                return Ok(());
            }
            let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).and_then(Value::as_str).map(String::from);
            let requested = spec.get("clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
            let ip = match (old_ip, requested) {
                (Some(o), Some(r)) if o != r => {
                    return Err(ApiError::invalid(
                        "Service",
                        "",
                        "",
                        vec![Cause {
                            reason: "FieldValueInvalid".into(),
                            message: format!("Invalid value: {r:?}: field is immutable"),
                            field: "spec.clusterIPs[0]".into(),
                        }],
                    ));
                }
                (Some(o), _) => o,
                (None, Some(r)) if r == "None" => r,
                (None, r) => {
                    let ip = alloc.allocate_ip(r.as_deref())?.to_string();
                    taken_ips.push(ip.clone());
                    ip
                }
            };
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
            spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
            let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
            // `allocateLoadBalancerNodePorts: false`: node ports only where asked for.
            let allocate_new = ty != "LoadBalancer" || spec.get("allocateLoadBalancerNodePorts").and_then(Value::as_bool) != Some(false);
            let old_ports: Vec<(i64, u16)> = old
                .and_then(|o| o.pointer("/spec/ports"))
                .and_then(Value::as_array)
                .map(|ps| ps.iter().filter_map(|p| Some((p.get("port")?.as_i64()?, p.get("nodePort")?.as_u64()? as u16))).collect())
                .unwrap_or_default();
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut() {
                    let Some(p) = p.as_object_mut() else { continue };
                    if !wants_node_ports {
                        p.remove("nodePort");
                        continue;
                    }
                    let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
                    let requested = p.get("nodePort").and_then(Value::as_u64).filter(|n| *n > 0).map(|n| n as u16);
                    let kept = old_ports.iter().find(|(op, np)| *op == port && requested.is_none_or(|r| r == *np)).map(|(_, np)| *np);
                    if kept.is_none() && requested.is_none() && !allocate_new {
                        p.remove("nodePort");
                        continue;
                    }
                    let np = match kept {
                        Some(np) => np,
                        None => {
                            let np = alloc.allocate_port(requested)?;
                            taken_ports.push(np);
                            np
                        }
                    };
                    p.insert("nodePort".into(), json!(np));
                }
            }
            Ok(())
        })();
        if result.is_err() || dry_run {
            for ip in &taken_ips {
                alloc.release_ip(ip);
            }
            for p in &taken_ports {
                alloc.release_port(*p);
            }
        }
        result.map(|()| (taken_ips, taken_ports))
    }

    /// Allocate as [`Registry::allocate_service`] does, then reserve what was newly taken
    /// in the store ([`crate::reservations`]), so that servers sharing the store never
    /// hand out one address or port twice. A guess another server took first stays
    /// marked here and the allocation runs again: a requested address or port then
    /// fails as already allocated, an automatic one moves on to a free one.
    async fn allocate_and_reserve(&self, obj: &mut Value, old: Option<&Value>, dry_run: bool) -> Result<(), ApiError> {
        let original = obj.clone();
        let (namespace, name) = (meta::namespace(&original).to_string(), meta::name(&original).to_string());
        for _attempt in 0..64 {
            let mut candidate = original.clone();
            let (ips, ports) = self.allocate_service(&mut candidate, old, dry_run)?;
            if dry_run {
                *obj = candidate;
                return Ok(());
            }
            match self.reserve(&namespace, &name, &ips, &ports).await {
                Ok(()) => {
                    *obj = candidate;
                    return Ok(());
                }
                Err(outcome) => {
                    // Release the other guesses here; the one taken elsewhere stays marked.
                    let mut alloc = self.services.lock().expect("alloc");
                    for ip in ips.iter().filter(|ip| outcome.taken.as_deref() != Some(ip.as_str())) {
                        alloc.release_ip(ip);
                    }
                    for p in ports.iter().filter(|p| outcome.taken.as_deref() != Some(p.to_string().as_str())) {
                        alloc.release_port(*p);
                    }
                    if let Some(e) = outcome.error {
                        return Err(e);
                    }
                }
            }
        }
        Err(ApiError::internal("could not reserve a ClusterIP or NodePort: every guess was taken by another server"))
    }

    /// Create the reservations of `ips` and `ports` for Service `namespace/name`; on
    /// failure, those made are removed again.
    async fn reserve(&self, namespace: &str, name: &str, ips: &[String], ports: &[u16]) -> Result<(), ReserveFailed> {
        use crate::reservations as r;
        let wanted = ips
            .iter()
            .map(|ip| (r::ip_key(ip), r::ip_object(ip, namespace, name), ip.clone()))
            .chain(ports.iter().map(|p| (r::port_key(*p), r::port_value(namespace, name), p.to_string())));
        let mut made = Vec::new();
        let mut failed = None;
        for (key, value, item) in wanted {
            match self.store.create(key.clone(), Bytes::from(value.to_string())).await {
                Ok(_) => made.push(key),
                Err(StoreError::AlreadyExists) => {
                    let ours = self.store.get(&key).and_then(|kv| r::owner_of(&kv.value)).is_some_and(|(ns, n)| ns == namespace && n == name);
                    if !ours {
                        failed = Some(ReserveFailed { taken: Some(item), error: None });
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(ReserveFailed { taken: None, error: Some(ApiError::internal(format!("reserving {item} for the Service: {e}"))) });
                    break;
                }
            }
        }
        match failed {
            None => Ok(()),
            Some(f) => {
                for key in made {
                    let _ = self.store.delete(key, None).await;
                }
                Err(f)
            }
        }
    }

    /// Forget here, and remove from the store, the reservations of what `obj` held that
    /// `kept` does not (only those still naming this Service).
    async fn release_service(&self, obj: &Value, kept: Option<&Value>) {
        let (released_ips, released_ports) = self.release_service_locally(obj, kept);
        let (namespace, name) = (meta::namespace(obj), meta::name(obj));
        let keys = released_ips.iter().map(|ip| crate::reservations::ip_key(ip)).chain(released_ports.iter().map(|p| crate::reservations::port_key(*p)));
        for key in keys {
            if let Some(kv) = self.store.get(&key) {
                if crate::reservations::owner_of(&kv.value).is_some_and(|(ns, n)| ns == namespace && n == name) {
                    let _ = self.store.delete(key, Some(kv.mod_revision)).await;
                }
            }
        }
    }

    /// Release here what a Service held that `kept` (its replacement) no longer holds;
    /// returns what was released.
    fn release_service_locally(&self, obj: &Value, kept: Option<&Value>) -> (Vec<String>, Vec<u16>) {
        let mut alloc = self.services.lock().expect("alloc");
        let kept_ips = kept.map(service_ips).unwrap_or_default();
        let kept_ports = kept.map(node_ports).unwrap_or_default();
        let ips: Vec<String> = service_ips(obj).into_iter().filter(|ip| !kept_ips.contains(ip)).collect();
        let ports: Vec<u16> = node_ports(obj).into_iter().filter(|p| !kept_ports.contains(p)).collect();
        for ip in &ips {
            alloc.release_ip(ip);
        }
        for p in &ports {
            alloc.release_port(*p);
        }
        (ips, ports)
    }

    /// Keep this server's allocator in step with Services other servers write, and
    /// repair reservations as upstream's repair controllers do: at start and every
    /// three minutes, create those stored Services lack, remove those orphaned twice.
    pub async fn run_service_allocations(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        let svc = resources::find("", "v1", "services").expect("services");
        let prefix = svc.key_prefix();
        let me = self.clone();
        let follower = tokio::spawn({
            let shutdown = shutdown.clone();
            let store = self.store.clone();
            let from = store.current_revision();
            async move {
                nanokube_store::follow::follow(store, &prefix, from, shutdown, |change| {
                    if let nanokube_store::follow::Change::Event(ev) = change {
                        let new = (ev.kind != nanokube_store::EventKind::Deleted).then(|| decode(&ev.kv).ok()).flatten();
                        let old = ev.prev.as_ref().and_then(|p| decode(p).ok());
                        if let Some(old) = &old {
                            me.release_service_locally(old.value(), new.as_deref().map(|n| n.value()));
                        }
                        if let Some(new) = &new {
                            let mut alloc = me.services.lock().expect("alloc");
                            service_ips(new.value()).iter().for_each(|ip| alloc.mark_ip(ip));
                            node_ports(new.value()).into_iter().for_each(|p| alloc.mark_port(p));
                        }
                    }
                    true
                })
                .await
            }
        });
        let mut orphans = crate::reservations::Orphans::default();
        let mut every = tokio::time::interval(std::time::Duration::from_secs(180));
        let mut shutdown = shutdown;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = every.tick() => self.repair_allocations(&mut orphans).await,
            }
        }
        follower.abort();
    }

    /// One repair pass (see [`Registry::run_service_allocations`]).
    pub async fn repair_allocations(&self, orphans: &mut crate::reservations::Orphans) {
        use crate::reservations as r;
        let svc = resources::find("", "v1", "services").expect("services");
        let mut held = r::Held::default();
        for kv in self.store.list(&svc.key_prefix(), None, 0).items {
            let Ok(obj) = decode(&kv) else { continue };
            let owner = (meta::namespace(&obj).to_string(), meta::name(&obj).to_string());
            for ip in service_ips(&obj) {
                held.ips.insert(ip, owner.clone());
            }
            for p in node_ports(&obj) {
                held.ports.insert(p, owner.clone());
            }
        }
        for (ip, (ns, name)) in &held.ips {
            let _ = self.store.create(r::ip_key(ip), Bytes::from(r::ip_object(ip, ns, name).to_string())).await;
        }
        for (port, (ns, name)) in &held.ports {
            let _ = self.store.create(r::port_key(*port), Bytes::from(r::port_value(ns, name).to_string())).await;
        }
        let mut orphaned = HashSet::new();
        for kv in self.store.list(r::IP_PREFIX, None, 0).items.iter().chain(self.store.list(r::PORT_PREFIX, None, 0).items.iter()) {
            let owner = r::owner_of(&kv.value);
            let item = kv.key.rsplit('/').next().unwrap_or("");
            let holder = if kv.key.starts_with(r::IP_PREFIX) { held.ips.get(item) } else { item.parse().ok().and_then(|p: u16| held.ports.get(&p)) };
            if owner.as_ref() != holder {
                orphaned.insert(kv.key.clone());
            }
        }
        for key in orphans.confirm(orphaned) {
            if let Some(kv) = self.store.get(&key) {
                let _ = self.store.delete(key, Some(kv.mod_revision)).await;
            }
        }
    }

    /// Update an object by applying `change` to its current state, retrying on conflicts
    /// (upstream's GuaranteedUpdate); an object returned with a resourceVersion other than
    /// the current one's is a conflict (the client's optimistic lock).
    pub async fn update_with<F>(&self, def: &ResourceDef, namespace: &str, name: &str, opts: &WriteOptions, mut change: F) -> Result<Obj, ApiError>
    where
        F: FnMut(&Value) -> Result<Value, ApiError>,
    {
        let key = def.key(namespace, name);
        for _attempt in 0..16 {
            let kv = self.store.get(&key).ok_or_else(|| ApiError::not_found(def.plural, def.group, name))?;
            let current = decode_as(def, &kv)?;
            let mut new = change(&current)?;
            Self::check_type(def, &new)?;
            let rv = meta::resource_version(&new).to_string();
            let pinned = !rv.is_empty();
            if pinned && parse_rv(&rv).ok() != Some(kv.mod_revision) {
                return Err(ApiError::conflict(def.plural, def.group, name));
            }
            if meta::name(&new) != name {
                if meta::name(&new).is_empty() {
                    meta::metadata_mut(&mut new).insert("name".into(), json!(name));
                } else {
                    return Err(ApiError::bad_request(format!("the name of the object ({}) does not match the name on the URL ({})", meta::name(&new), name)));
                }
            }
            if def.namespaced && !meta::namespace(&new).is_empty() && meta::namespace(&new) != namespace {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
            let mut new = self.prepare_update(def, &current, new, opts)?;
            let attrs = Attributes {
                def,
                operation: Operation::Update,
                namespace,
                name,
                subresource: opts.subresource.as_deref().unwrap_or(""),
                dry_run: opts.dry_run,
                requester: opts.requester.as_deref(),
            };
            if admission::mutate(self, &attrs, &mut new, Some(current.value())).await? {
                new = self.prepare_update(def, &current, new, opts)?;
            }
            // LimitRanger validates every update of a claim (a resize above `max` is
            // refused), as upstream's `SupportsAttributes`, except of one being deleted
            // (its finalizers must still come off).
            if def.group.is_empty() && def.plural == "persistentvolumeclaims" && attrs.subresource.is_empty() && !meta::is_deleting(current.value()) {
                self.claim_limits(namespace, &new)?;
            }
            admission::validate(self, &attrs, Some(&new), Some(current.value())).await?;
            if *current == new {
                return Ok(current);
            }
            // Removing the last finalizer of an object being deleted completes the delete.
            let finish_delete = meta::is_deleting(&new) && meta::finalizers(&new).is_empty() && namespace_finalizers_empty(def, &new);
            if def.plural == "services" && def.group.is_empty() {
                self.allocate_and_reserve(&mut new, Some(&current), opts.dry_run).await?;
            }
            if opts.dry_run {
                return Ok(Arc::new(Stored::new(new)));
            }
            let encoding = (!finish_delete).then(|| encode_as(def, &new));
            let result = match &encoding {
                None => self.store.delete(key.clone(), Some(kv.mod_revision)).await,
                Some(e) => self.store.update_decoded(key.clone(), e.bytes.clone(), Some(kv.mod_revision), written_form(e)).await,
            };
            match result {
                Ok(kv) => {
                    if def.plural == "services" && def.group.is_empty() {
                        if finish_delete {
                            self.release_service(&current, None).await;
                        } else {
                            self.release_service(&current, Some(&new)).await;
                        }
                    }
                    return match encoding {
                        Some(e) => served(def, &kv, e),
                        None => decode_as(def, &kv),
                    };
                }
                // Written meanwhile: run `change` again on the newer state. A caller that
                // pinned the version it read (a client's resourceVersion) gets its
                // conflict from the check above on the next attempt; one that built on
                // the current state (a controller) succeeds on the fresh one.
                Err(StoreError::Conflict { .. }) => {
                    if def.plural == "services" && def.group.is_empty() {
                        self.release_service(&new, Some(&current)).await;
                    }
                    continue;
                }
                Err(e) => {
                    if def.plural == "services" && def.group.is_empty() {
                        self.release_service(&new, Some(&current)).await;
                    }
                    return Err(store_err(e, def, name));
                }
            }
        }
        Err(ApiError::conflict(def.plural, def.group, name))
    }

    /// Bind a pod to a node (`pods/{name}/binding`, `bindings`), as upstream's binding
    /// storage does: the pod must not be assigned or terminating (409 otherwise); it gets
    /// `spec.nodeName` and a true `PodScheduled` condition.
    pub async fn bind(&self, namespace: &str, name: &str, node: &str, opts: &WriteOptions) -> Result<Obj, ApiError> {
        let def = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("no pods resource"))?;
        if node.is_empty() {
            return Err(ApiError::invalid(
                "Binding",
                "",
                name,
                vec![Cause { reason: "FieldValueRequired".into(), message: "Required value".into(), field: "target.name".into() }],
            ));
        }
        let opts = WriteOptions { subresource: Some("binding".into()), ..opts.clone() };
        self.update_with(def, namespace, name, &opts, |cur| {
            if meta::is_deleting(cur) {
                return Err(ApiError::conflict_msg("pods", "", name, &format!("pod {name} is being deleted, cannot be assigned to a host")));
            }
            let assigned = cur.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
            if !assigned.is_empty() {
                return Err(ApiError::conflict_msg("pods", "", name, &format!("pod {name} is already assigned to node \"{assigned}\"")));
            }
            let mut next = cur.clone();
            next["spec"]["nodeName"] = json!(node);
            set_condition(&mut next, json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": meta::now_rfc3339()}));
            Ok(next)
        })
        .await
    }

    /// Replace an object (PUT).
    pub async fn update(&self, def: &ResourceDef, namespace: &str, name: &str, obj: Value, opts: &WriteOptions) -> Result<Obj, ApiError> {
        Self::check_type(def, &obj)?;
        self.update_with(def, namespace, name, opts, |_| Ok(obj.clone())).await
    }

    fn prepare_update(&self, def: &ResourceDef, old: &Value, mut new: Value, opts: &WriteOptions) -> Result<Value, ApiError> {
        // What was stored before zero values were dropped (an older data directory)
        // compares as Go reads it, so no comparison below sees a difference in them.
        let normalized;
        let old = if go_omitempty::has_empty(old) {
            let mut o = old.clone();
            go_omitempty::drop_empty(&mut o);
            normalized = o;
            &normalized
        } else {
            old
        };
        new["kind"] = json!(def.kind);
        new["apiVersion"] = json!(def.api_version());
        let status_write = opts.subresource.as_deref() == Some("status");
        // A status write changes the status only, an approval (CertificateSigningRequests)
        // only the conditions, a binding (pods) the node and the conditions, each with the
        // field manager's record of who did it; any other write keeps the status as it was.
        let written: Option<&[&[&str]]> = match opts.subresource.as_deref() {
            Some("status") => Some(&[&["status"]]),
            Some("approval") => Some(&[&["status", "conditions"]]),
            Some("binding") => Some(&[&["status", "conditions"], &["spec", "nodeName"]]),
            Some("ephemeralcontainers") => Some(&[&["spec", "ephemeralContainers"]]),
            _ => None,
        };
        let resize = def.group.is_empty() && def.plural == "pods" && opts.subresource.as_deref() == Some("resize");
        // Set when the result is the (normalized) old object with only `written` replaced.
        let mut carried_only = None;
        if resize {
            // Only the containers' resources and resize policies come from a resize.
            let mut merged = nanokube_api::pod_resize::merge(old, &new);
            if let Some(mf) = meta::field(&new, "managedFields") {
                meta::metadata_mut(&mut merged).insert("managedFields".into(), mf.clone());
            }
            new = merged;
        } else if let Some(paths) = written {
            carried_only = Some(paths);
            let mut merged = old.clone();
            for path in paths {
                carry_out(&mut new, &mut merged, path);
            }
            if let Some(mf) = new.get_mut("metadata").and_then(|m| m.get_mut("managedFields")) {
                meta::metadata_mut(&mut merged).insert("managedFields".into(), mf.take());
            }
            new = merged;
        } else if def.has_status() {
            carry(old, &mut new, &["status"]);
        }
        // Metadata the client may not change.
        let no_meta = json!({});
        let old_meta = old.get("metadata").unwrap_or(&no_meta);
        {
            let m = meta::metadata_mut(&mut new);
            for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace"] {
                match old_meta.get(k) {
                    Some(v) => {
                        m.insert(k.into(), v.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
            m.insert("resourceVersion".into(), old_meta.get("resourceVersion").cloned().unwrap_or(json!("")));
            m.remove("selfLink");
            match old_meta.get("generateName") {
                Some(g) => {
                    m.insert("generateName".into(), g.clone());
                }
                None => {
                    m.remove("generateName");
                }
            }
        }
        if meta::is_deleting(old) {
            let old_f = meta::finalizers(old);
            let added: Vec<String> = meta::finalizers(&new).into_iter().filter(|f| !old_f.contains(f)).collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    def.kind,
                    def.group,
                    meta::name(old),
                    vec![Cause {
                        reason: "FieldValueForbidden".into(),
                        message: "Forbidden: no new finalizers can be added if the object is being deleted".into(),
                        field: "metadata.finalizers".into(),
                    }],
                ));
            }
        }
        if !status_write {
            defaults::apply_defaults(def, &mut new);
        }
        over_written(&mut new, carried_only, go_omitempty::drop_empty);
        if def.group.is_empty() && def.plural == "pods" {
            // A pod's spec is immutable but for images and a few fields; keep it simple and
            // strict as upstream is: only container images, activeDeadlineSeconds and
            // tolerations may change.
            let ephemeral = opts.subresource.as_deref() == Some("ephemeralcontainers");
            // Ephemeral containers change through their subresource only, by additions.
            if ephemeral {
                let causes = validation::validate_ephemeral_update(old, &new);
                if !causes.is_empty() {
                    return Err(ApiError::invalid("Pod", "", meta::name(old), causes));
                }
            }
            // A resize changes the containers' resources, which no other write may.
            if resize {
                let causes = nanokube_api::pod_resize::validate(old, &new);
                if !causes.is_empty() {
                    return Err(ApiError::invalid("Pod", "", meta::name(old), causes));
                }
                // LimitRanger admits `pods/resize` updates too (upstream's
                // SupportsAttributes), so a resize past a min or max is refused.
                let mut checked = new.clone();
                self.limit_ranger(meta::namespace(old), &mut checked)?;
            } else if !status_write && !pod_spec_update_allowed(old.get("spec"), new.get("spec"), ephemeral) {
                return Err(ApiError::invalid(
                    "Pod",
                    "",
                    meta::name(old),
                    vec![Cause { reason: "FieldValueForbidden".into(), message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(), field: "spec".into() }],
                ));
            }
        }
        over_written(&mut new, carried_only, |v| check_decodable(def, v).and_then(|()| store_quantities(def, v)))?;
        let mut causes = Vec::new();
        self.custom_strategy(def, &mut new, Some(old), &mut causes);
        // Generation moves on spec changes only (for custom resources without a status
        // subresource, on any change outside metadata).
        if def.tracks_generation {
            // A pod stored before pods counted generations has none: its first spec change
            // makes it 1 (upstream's `Generation++` from 0).
            let is_pod = def.group.is_empty() && def.plural == "pods";
            let g = meta::field(old, "generation").and_then(Value::as_i64).unwrap_or(if is_pod { 0 } else { 1 });
            let changed = if def.custom && !def.has_status() { old.get("status") != new.get("status") } else { false };
            // Binding sets the node without the pod strategy (upstream's BindingREST), so it
            // leaves the generation as it is.
            let counts = !(is_pod && opts.subresource.as_deref() == Some("binding"));
            let g = if counts && (changed || spec_part(old) != spec_part(&new)) { g + 1 } else { g };
            if g > 0 {
                meta::metadata_mut(&mut new).insert("generation".into(), json!(g));
            } else {
                meta::metadata_mut(&mut new).remove("generation");
            }
        } else if let Some(g) = meta::field(old, "generation") {
            meta::metadata_mut(&mut new).insert("generation".into(), g.clone());
        } else {
            meta::metadata_mut(&mut new).remove("generation");
        }
        causes.extend(validation::validate_object(def, &new));
        self.validate_immutable(def, old, &new, &mut causes);
        if !causes.is_empty() {
            return Err(ApiError::invalid(def.kind, def.group, meta::name(old), causes));
        }
        Ok(new)
    }

    fn validate_immutable(&self, def: &ResourceDef, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
        let immutable = |field: &str, ptr: &str, causes: &mut Vec<Cause>| {
            if old.pointer(ptr) != new.pointer(ptr) {
                let v = new.pointer(ptr).cloned().unwrap_or(Value::Null);
                causes.push(Cause { reason: "FieldValueInvalid".into(), message: format!("Invalid value: {}: field is immutable", v), field: field.into() });
            }
        };
        match (def.group, def.plural) {
            ("apps", "deployments") | ("apps", "replicasets") | ("apps", "daemonsets") | ("apps", "statefulsets") => {
                immutable("spec.selector", "/spec/selector", causes)
            }
            ("batch", "jobs") => {
                for (field, ptr) in [
                    ("spec.selector", "/spec/selector"),
                    ("spec.completionMode", "/spec/completionMode"),
                    ("spec.podFailurePolicy", "/spec/podFailurePolicy"),
                    ("spec.successPolicy", "/spec/successPolicy"),
                    ("spec.backoffLimitPerIndex", "/spec/backoffLimitPerIndex"),
                    ("spec.managedBy", "/spec/managedBy"),
                ] {
                    immutable(field, ptr, causes);
                }
                // An Indexed Job may change completions together with parallelism (elastic
                // Indexed Jobs); others never.
                let indexed = new.pointer("/spec/completionMode").and_then(Value::as_str) == Some("Indexed");
                if !(indexed && new.pointer("/spec/completions") == new.pointer("/spec/parallelism")) {
                    immutable("spec.completions", "/spec/completions", causes);
                }
                // The template is fixed, but for where the pods go while a Job that never
                // started is suspended (upstream's mutable scheduling directives).
                let never_started = old.pointer("/spec/suspend") == Some(&json!(true)) && old.pointer("/status/startTime").is_none_or(Value::is_null);
                let scheduling_free = |v: &Value| {
                    let mut t = v.pointer("/spec/template").cloned().unwrap_or(Value::Null);
                    if let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) {
                        for k in ["nodeSelector", "affinity", "tolerations", "schedulingGates"] {
                            spec.remove(k);
                        }
                    }
                    if let Some(m) = t.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("labels");
                        m.remove("annotations");
                    }
                    t
                };
                if never_started {
                    if scheduling_free(old) != scheduling_free(new) {
                        immutable("spec.template", "/spec/template", causes);
                    }
                } else {
                    immutable("spec.template", "/spec/template", causes);
                }
            }
            ("rbac.authorization.k8s.io", "rolebindings") | ("rbac.authorization.k8s.io", "clusterrolebindings")
                if old.get("roleRef") != new.get("roleRef") =>
            {
                causes.push(Cause { reason: "FieldValueInvalid".into(), message: "Invalid value: cannot change roleRef".into(), field: "roleRef".into() });
            }
            // The node IPAM controller may give a Node its pod CIDR once (upstream's
            // ValidateNodeUpdate).
            ("", "nodes") => {
                let cidrs = |v: &Value| {
                    let list = v.pointer("/spec/podCIDRs").and_then(Value::as_array).cloned().unwrap_or_default();
                    (list, v.pointer("/spec/podCIDR").and_then(Value::as_str).unwrap_or("").to_string())
                };
                let (before, after) = (cidrs(old), cidrs(new));
                if (!before.0.is_empty() || !before.1.is_empty()) && before != after {
                    causes.push(Cause {
                        reason: "FieldValueForbidden".into(),
                        message: "Forbidden: node updates may not change podCIDR except from \"\" to valid".into(),
                        field: "spec.podCIDRs".into(),
                    });
                }
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                for (field, ptr) in [("spec.scope", "/spec/scope"), ("spec.group", "/spec/group"), ("spec.names.plural", "/spec/names/plural")] {
                    immutable(field, ptr, causes);
                }
            }
            ("", "configmaps") | ("", "secrets") if old.get("immutable") == Some(&json!(true)) => {
                for f in ["data", "binaryData", "stringData"] {
                    if old.get(f) != new.get(f) {
                        causes.push(Cause {
                            reason: "FieldValueForbidden".into(),
                            message: "Forbidden: field is immutable when `immutable` is set".into(),
                            field: f.into(),
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// Delete an object.
    pub async fn delete(&self, def: &ResourceDef, namespace: &str, name: &str, opts: &DeleteOptions) -> Result<Deleted, ApiError> {
        // NamespaceLifecycle admission: the namespaces the system itself lives in.
        if def.group.is_empty() && def.plural == "namespaces" && IMMORTAL_NAMESPACES.contains(&name) {
            let mut e = ApiError::forbidden(format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"));
            e.details.name = Some(name.to_string());
            e.details.kind = Some("namespaces".into());
            return Err(e);
        }
        let key = def.key(namespace, name);
        for _attempt in 0..16 {
            let kv = self.store.get(&key).ok_or_else(|| ApiError::not_found(def.plural, def.group, name))?;
            let current = match decode_logged(def, &kv) {
                Ok(c) => c,
                Err(_) => return self.delete_undecodable(def, namespace, name, &kv, opts).await,
            };
            if let Some(uid) = &opts.precondition_uid {
                if meta::uid(&current) != uid {
                    return Err(ApiError::conflict_msg(
                        def.plural,
                        def.group,
                        name,
                        &format!("Precondition failed: UID in precondition: {}, UID in object meta: {}", uid, meta::uid(&current)),
                    ));
                }
            }
            if let Some(rv) = &opts.precondition_rv {
                if meta::resource_version(&current) != rv {
                    return Err(ApiError::conflict_msg(
                        def.plural,
                        def.group,
                        name,
                        &format!(
                            "Precondition failed: ResourceVersion in precondition: {}, ResourceVersion in object meta: {}",
                            rv,
                            meta::resource_version(&current)
                        ),
                    ));
                }
            }
            let mut finalizers = meta::finalizers(&current);
            // A CRD's objects go first: the CRD controller removes this finalizer once
            // they are gone, as upstream's finalizer controller does.
            if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" && !finalizers.iter().any(|f| f == crd::CLEANUP_FINALIZER) {
                finalizers.push(crd::CLEANUP_FINALIZER.into());
            }
            match opts.propagation.as_deref() {
                Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => finalizers.push("foregroundDeletion".into()),
                Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => finalizers.push("orphan".into()),
                Some("Foreground") | Some("Orphan") | Some("Background") | None => {}
                Some(other) => {
                    return Err(ApiError::invalid(
                        "DeleteOptions",
                        "",
                        "",
                        vec![Cause {
                            reason: "FieldValueNotSupported".into(),
                            message: format!("Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""),
                            field: "propagationPolicy".into(),
                        }],
                    ))
                }
            }
            let attrs =
                Attributes { def, operation: Operation::Delete, namespace, name, subresource: "", dry_run: opts.dry_run, requester: opts.requester.as_deref() };
            let mut none = Value::Null;
            admission::mutate(self, &attrs, &mut none, Some(current.value())).await?;
            admission::validate(self, &attrs, None, Some(current.value())).await?;
            let is_namespace = def.group.is_empty() && def.plural == "namespaces";
            // A pod on a node is deleted gracefully: it stays, marked, until its node has
            // stopped it and confirms with a delete of grace 0 (upstream's
            // CheckGracefulDelete and BeforeDelete).
            if let Some(period) = pod_grace_period(def, &current, opts.grace_period) {
                let m = current.value().get("metadata");
                let existing = m.and_then(|m| m.get("deletionGracePeriodSeconds")).and_then(Value::as_i64);
                if existing.is_some_and(|e| e <= period) {
                    return Ok(Deleted::Pending(current));
                }
                let mut next = (*current).clone();
                {
                    let due = time::OffsetDateTime::now_utc() + time::Duration::seconds(period);
                    let m = meta::metadata_mut(&mut next);
                    if existing.is_none() {
                        bump_generation_on_deletion(m);
                    }
                    m.insert("deletionTimestamp".into(), json!(meta::format_time(due)));
                    m.insert("deletionGracePeriodSeconds".into(), json!(period));
                    if !finalizers.is_empty() {
                        m.insert("finalizers".into(), json!(finalizers));
                    }
                }
                match self.mark_deleting(def, &key, kv.mod_revision, next, opts.dry_run, name).await {
                    Ok(Some(done)) => return Ok(done),
                    Ok(None) => continue,
                    Err(e) => return Err(e),
                }
            }
            let graceful = !finalizers.is_empty() || (is_namespace && !namespace_finalizers_empty(def, &current));
            if graceful {
                if meta::is_deleting(&current) && finalizers == meta::finalizers(&current) {
                    return Ok(Deleted::Pending(current));
                }
                let mut next = (*current).clone();
                {
                    let m = meta::metadata_mut(&mut next);
                    if !m.contains_key("deletionTimestamp") {
                        bump_generation_on_deletion(m);
                        m.insert("deletionTimestamp".into(), json!(meta::now_rfc3339()));
                        m.insert("deletionGracePeriodSeconds".into(), json!(0));
                    }
                    m.insert("finalizers".into(), json!(finalizers));
                }
                if is_namespace {
                    next["status"]["phase"] = json!("Terminating");
                }
                match self.mark_deleting(def, &key, kv.mod_revision, next, opts.dry_run, name).await {
                    Ok(Some(done)) => return Ok(done),
                    Ok(None) => continue,
                    Err(e) => return Err(e),
                }
            }
            if opts.dry_run {
                return Ok(Deleted::Gone(current));
            }
            match self.store.delete(key.clone(), Some(kv.mod_revision)).await {
                Ok(kv) => {
                    if def.group.is_empty() && def.plural == "services" {
                        self.release_service(&current, None).await;
                    }
                    return Ok(Deleted::Gone(decode_as(def, &kv)?));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_err(e, def, name)),
            }
        }
        Err(ApiError::conflict(def.plural, def.group, name))
    }

    /// Write an object marked for deletion (it stays, pending its finalizers or its
    /// node); `None` when another write came first and the delete must look again.
    async fn mark_deleting(
        &self,
        def: &ResourceDef,
        key: &str,
        revision: Revision,
        next: Value,
        dry_run: bool,
        name: &str,
    ) -> Result<Option<Deleted>, ApiError> {
        if dry_run {
            return Ok(Some(Deleted::Pending(Arc::new(Stored::new(next)))));
        }
        match self.store.update(key.to_string(), encode_as(def, &next).bytes, Some(revision)).await {
            Ok(kv) => Ok(Some(Deleted::Pending(decode_as(def, &kv)?))),
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(store_err(e, def, name)),
        }
    }

    /// Delete an object whose stored bytes do not decode: nothing about it can be judged
    /// (finalizers, preconditions), so it goes at once, else it would block its namespace
    /// for ever. What the caller gets back is its kind and name.
    async fn delete_undecodable(&self, def: &ResourceDef, namespace: &str, name: &str, kv: &KeyValue, opts: &DeleteOptions) -> Result<Deleted, ApiError> {
        let mut stub = json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": {"name": name}});
        if def.namespaced {
            stub["metadata"]["namespace"] = json!(namespace);
        }
        if !opts.dry_run {
            self.store.delete(kv.key.clone(), Some(kv.mod_revision)).await.map_err(|e| store_err(e, def, name))?;
            tracing::warn!(key = %kv.key, "deleted an object whose stored bytes do not decode");
        }
        Ok(Deleted::Gone(Arc::new(Stored::new(stub))))
    }

    /// Watch objects of a resource (one namespace or all) after `after`.
    pub fn watch(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        after: Revision,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> Result<ObjectWatch, ApiError> {
        let fields = self.selectable(def, &fields);
        fields.check_supported(def.group, def.plural, def.namespaced)?;
        let prefix = match (fields.pinned_name(), namespace) {
            (Some(name), Some(ns)) if def.namespaced => def.key(ns, name),
            (Some(name), _) if !def.namespaced => def.key("", name),
            _ => def.namespace_prefix(namespace),
        };
        let exact = fields.pinned_name().is_some() && (namespace.is_some() || !def.namespaced);
        let stream = self.store.watch(&prefix, after).map_err(|e| store_err(e, def, ""))?;
        Ok(ObjectWatch { def, stream, labels, fields, exact_key: if exact { Some(prefix) } else { None } })
    }
}

/// The grace period a pod's deletion waits, `None` when it goes at once: the one asked
/// for, else the pod's `terminationGracePeriodSeconds`; none for a pod on no node or one
/// that has finished; a negative one is 1 (upstream's podStrategy.CheckGracefulDelete).
fn pod_grace_period(def: &ResourceDef, pod: &Value, asked: Option<i64>) -> Option<i64> {
    if !(def.group.is_empty() && def.plural == "pods") {
        return None;
    }
    let mut period = asked.or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64)).unwrap_or(0);
    let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    if node.is_empty() || phase == "Succeeded" || phase == "Failed" {
        period = 0;
    }
    if period < 0 {
        period = 1;
    }
    (period > 0).then_some(period)
}

fn namespace_finalizers_empty(def: &ResourceDef, obj: &Value) -> bool {
    if def.group.is_empty() && def.plural == "namespaces" {
        obj.pointer("/spec/finalizers").and_then(Value::as_array).is_none_or(|a| a.is_empty())
    } else {
        true
    }
}

fn service_ips(obj: &Value) -> Vec<String> {
    let mut ips: Vec<String> =
        obj.pointer("/spec/clusterIPs").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default();
    if let Some(ip) = obj.pointer("/spec/clusterIP").and_then(Value::as_str) {
        if !ips.iter().any(|i| i == ip) {
            ips.push(ip.to_string());
        }
    }
    ips.retain(|i| i != "None" && !i.is_empty());
    ips
}

fn node_ports(obj: &Value) -> Vec<u16> {
    obj.pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|p| p.get("nodePort").and_then(Value::as_u64).map(|n| n as u16)).collect())
        .unwrap_or_default()
}

/// Why a reservation failed: another Service holds `taken` (an address or port), or the
/// store failed.
struct ReserveFailed {
    taken: Option<String>,
    error: Option<ApiError>,
}

/// A watch of objects with selectors applied the way upstream does: an object that
/// starts matching is ADDED, one that stops matching is DELETED.
pub struct ObjectWatch {
    def: &'static ResourceDef,
    stream: WatchStream,
    labels: LabelSelector,
    fields: FieldSelector,
    exact_key: Option<String>,
}

impl ObjectWatch {
    /// The next event, `Err` with 410 Expired if the watch fell behind the history.
    pub async fn next(&mut self) -> Option<Result<(EventType, Obj), ApiError>> {
        loop {
            let ev = match self.stream.next().await? {
                Ok(ev) => ev,
                Err(e) => return Some(Err(store_err(e, self.def, ""))),
            };
            if let Some(k) = &self.exact_key {
                if &ev.kv.key != k {
                    continue;
                }
            }
            let Ok(obj) = decode_logged(self.def, &ev.kv) else { continue };
            let now = selects(self.def, &obj, &self.labels, &self.fields);
            let out = match ev.kind {
                EventKind::Created => now.then_some("ADDED"),
                EventKind::Deleted => now.then_some("DELETED"),
                EventKind::Updated => {
                    let before = match &ev.prev {
                        Some(p) => decode_as(self.def, p).map(|p| selects(self.def, &p, &self.labels, &self.fields)).unwrap_or(true),
                        None => true,
                    };
                    match (before, now) {
                        (true, true) => Some("MODIFIED"),
                        (false, true) => Some("ADDED"),
                        (true, false) => Some("DELETED"),
                        (false, false) => None,
                    }
                }
            };
            if let Some(t) = out {
                return Some(Ok((t, obj)));
            }
        }
    }

    /// The revision of the last event seen (for bookmarks).
    pub fn last_revision(&self) -> Revision {
        self.stream.last_revision()
    }
}

/// StorageObjectInUseProtection: a claim or volume in use is not removed until its
/// controller lets it go.
fn add_finalizer(obj: &mut Value, finalizer: &str) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        if !list.iter().any(|f| f == finalizer) {
            list.push(json!(finalizer));
        }
    }
}

/// Whether a pod update changes its spec only where an update may: container images,
/// `activeDeadlineSeconds`, `tolerations` and `nodeName` (each may be set, not removed),
/// and with `ephemeral` (the subresource) the ephemeral containers. Compared in place:
/// this runs on every pod write, bindings and status writes included.
fn pod_spec_update_allowed(old: Option<&Value>, new: Option<&Value>, ephemeral: bool) -> bool {
    let (Some(Value::Object(o)), Some(Value::Object(n))) = (old, new) else { return old.unwrap_or(&Value::Null) == new.unwrap_or(&Value::Null) };
    let settable = |k: &str| matches!(k, "activeDeadlineSeconds" | "tolerations" | "nodeName");
    o.keys().chain(n.keys().filter(|k| !o.contains_key(*k))).all(|k| {
        let (a, b) = (o.get(k), n.get(k));
        match k.as_str() {
            "ephemeralContainers" if ephemeral => true,
            k if settable(k) => b.is_some() || a.is_none(),
            "containers" => match (a, b) {
                (Some(Value::Array(a)), Some(Value::Array(b))) => a.len() == b.len() && a.iter().zip(b).all(|(c, d)| same_but_image(c, d)),
                _ => a == b,
            },
            _ => a == b,
        }
    })
}

/// Two containers alike but for the image (which the new one may set, not remove).
fn same_but_image(old: &Value, new: &Value) -> bool {
    let (Value::Object(o), Value::Object(n)) = (old, new) else { return old == new };
    o.keys().chain(n.keys().filter(|k| !o.contains_key(*k))).all(|k| match k.as_str() {
        "image" => n.contains_key(k) || !o.contains_key(k),
        _ => o.get(k) == n.get(k),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_spec_updates_change_only_what_upstream_lets_change() {
        let old = json!({"containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]}], "tolerations": [{"key": "k"}],
                         "restartPolicy": "Always"});
        let allowed = |new: Value, eph: bool| pod_spec_update_allowed(Some(&old), Some(&new), eph);
        assert!(allowed(old.clone(), false));
        assert!(allowed(
            json!({"containers": [{"name": "a", "image": "x:2", "ports": [{"containerPort": 80}]}], "tolerations": [{"key": "k"}, {"key": "j"}],
                                "restartPolicy": "Always", "nodeName": "n1", "activeDeadlineSeconds": 5}),
            false
        ));
        // Not the rest of a container, not a container more, not another field.
        assert!(!allowed(
            json!({"containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 81}]}], "tolerations": [{"key": "k"}], "restartPolicy": "Always"}),
            false
        ));
        assert!(!allowed(
            json!({"containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]}, {"name": "b"}], "tolerations": [{"key": "k"}], "restartPolicy": "Always"}),
            false
        ));
        assert!(!allowed(
            json!({"containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]}], "tolerations": [{"key": "k"}], "restartPolicy": "Never"}),
            false
        ));
        // Settable fields and images are not removed.
        assert!(!allowed(json!({"containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]}], "restartPolicy": "Always"}), false));
        assert!(!allowed(
            json!({"containers": [{"name": "a", "ports": [{"containerPort": 80}]}], "tolerations": [{"key": "k"}], "restartPolicy": "Always"}),
            false
        ));
        // Ephemeral containers through their subresource only.
        let mut with_debug = old.clone();
        with_debug["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
        assert!(!allowed(with_debug.clone(), false));
        assert!(allowed(with_debug, true));
        assert!(pod_spec_update_allowed(None, Some(&Value::Null), false));
    }

    #[test]
    fn api_version_prefix_is_checked_in_place() {
        let cm = resources::find("", "v1", "configmaps").unwrap();
        let deploy = resources::find("apps", "v1", "deployments").unwrap();
        assert!(json_api_version_is(br#"{"apiVersion":"v1","kind":"ConfigMap"}"#, cm));
        assert!(!json_api_version_is(br#"{"apiVersion":"v1beta1","kind":"ConfigMap"}"#, cm));
        assert!(json_api_version_is(br#"{"apiVersion":"apps/v1","kind":"Deployment"}"#, deploy));
        assert!(!json_api_version_is(br#"{"apiVersion":"apps/v1beta2"}"#, deploy));
        assert!(!json_api_version_is(br#"{"apiVersion":"v1"}"#, deploy));
        assert!(!json_api_version_is(br#"{"kind":"Deployment","apiVersion":"apps/v1"}"#, deploy));
    }

    #[test]
    fn splicing_the_revision_into_stored_bytes_equals_serializing_with_it() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default", "uid": "u", "resourceVersion": "", "selfLink": "x"}, "data": {"k\"\u{1}é": "v\n"}}),
            json!({"kind": "X", "metadata": {}}),
            json!({"kind": "X", "metadata": {"annotations": {"a": "b"}}}),
            json!({"kind": "X", "metadata": {"uid": "u", "zz": 1}}),
            json!({"metadata": {"name": "n", "resourceVersion": "5"}, "spec": [1, 2.5, null, true]}),
            // Built-in kinds in Go order: resourceVersion after uid, before generation.
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "generation": 2, "labels": {"a": "b"}, "uid": "u"}, "spec": {"replicas": 1}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"managedFields": [{"manager": "m", "operation": "Update"}]}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n"}, "status": {}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"zz": 1, "name": "p"}}),
        ];
        for obj in objects {
            let encoding = encode(&obj);
            let mut stored = obj.clone();
            let m = stored["metadata"].as_object_mut().unwrap();
            m.remove("resourceVersion");
            m.remove("selfLink");
            assert_eq!(&encoding.bytes[..], go_order::to_vec(&stored), "{obj}");
            let mut served = stored.clone();
            served["metadata"]["resourceVersion"] = json!("42");
            let spliced = encoding.rv_slot.unwrap().splice(&encoding.bytes, 42);
            assert_eq!(std::str::from_utf8(&spliced).unwrap(), std::str::from_utf8(&go_order::to_vec(&served)).unwrap(), "{obj}");
        }
        assert!(encode(&json!({"kind": "X"})).rv_slot.is_none());
        let d = encode(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "generation": 2}}));
        let served = d.rv_slot.unwrap().splice(&d.bytes, 7);
        assert_eq!(&served[..], br#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"d","resourceVersion":"7","generation":2}}"#);
    }

    #[test]
    fn stored_revisions_are_served_with_the_revision_spliced_in_or_whole() {
        let expected = br#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"d","resourceVersion":"1234567","generation":2}}"#;
        // Written by this server: served by splicing, nothing kept but the place.
        let ours = encode(&json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "generation": 2}}));
        let kv = KeyValue::new("/registry/deployments/default/d".into(), ours.bytes.clone(), 1, 1_234_567);
        let obj = decode(&kv).unwrap();
        assert!(matches!(obj.json.get(), Some(Json::Spliced { .. })));
        assert_eq!(&obj.json()[..], expected);
        assert_eq!(obj.json_len(), expected.len());
        let mut out = b"[".to_vec();
        obj.write_json(&mut out);
        assert_eq!(&out[1..], expected);
        assert_eq!(obj.json_head(), br#"{"kind":"Deployment","apiVersion":"apps/v1","metadata":{"name":"d""#);
        assert_eq!(obj.value()["metadata"]["resourceVersion"], "1234567");
        // Another layout (another writer's): served re-encoded, the same bytes.
        let theirs = Bytes::from_static(br#"{"metadata":{"generation":2,"name":"d"},"apiVersion":"apps/v1","kind":"Deployment"}"#);
        let kv = KeyValue::new("/registry/deployments/default/d".into(), theirs, 1, 1_234_567);
        let obj = decode(&kv).unwrap();
        assert!(matches!(obj.json.get(), Some(Json::Whole(_))));
        assert_eq!(&obj.json()[..], expected);
        assert_eq!(obj.json_len(), expected.len());
        // Negative and one-digit revisions are measured right.
        let slot = ours.rv_slot.unwrap();
        for rev in [0, 7, 10, -1, i64::MAX] {
            assert_eq!(slot.splice(&ours.bytes, rev).len(), ours.bytes.len() + slot.added_len(rev));
        }
    }

    #[test]
    fn an_expired_continue_token_answers_410_with_a_token_at_the_newest_revision() {
        let old = encode_continue(7, "/registry/configmaps/default/b");
        let status = continue_expired(&Some(old)).to_status();
        assert_eq!(status["code"], 410);
        assert_eq!(status["reason"], "Expired");
        assert!(status["message"].as_str().unwrap().starts_with("The provided continue parameter is too old"));
        let next = decode_continue(status["metadata"]["continue"].as_str().unwrap()).unwrap();
        assert_eq!((next.rv, next.start.as_str()), (-1, "/registry/configmaps/default/b"));
    }
}
