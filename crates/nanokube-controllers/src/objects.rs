//! What the workload controllers do alike to the objects they own: find an object's
//! controller, adopt an orphan, write a status.

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{ListOptions, Obj, Registry, WriteOptions};
use serde_json::{json, Value};

/// A built-in resource of `group`'s v1.
pub(crate) fn def(group: &str, plural: &str) -> &'static ResourceDef {
    resources::find(group, "v1", plural).expect("built-in resource")
}

/// Core v1 pods.
pub(crate) fn pods() -> &'static ResourceDef {
    def("", "pods")
}

/// The integer at `ptr`, or `default`.
pub(crate) fn int(v: &Value, ptr: &str, default: i64) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(default)
}

/// An `IntOrString` against `total` (upstream's `GetScaledValueFromIntOrPercent`): an
/// integer as it is, a percentage of `total` rounded up or down; `None` if it is neither.
pub(crate) fn int_or_percent(v: &Value, total: i64, round_up: bool) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    let pct: i64 = v.as_str()?.strip_suffix('%')?.parse().ok()?;
    Some(percent_of(pct, total, round_up))
}

/// `pct` % of `total`, rounded up or down.
pub(crate) fn percent_of(pct: i64, total: i64, round_up: bool) -> i64 {
    if round_up {
        (pct * total + 99) / 100
    } else {
        pct * total / 100
    }
}

/// An owner reference naming `owner` (of `kind` in `api_version`) as the controller.
pub(crate) fn controller_reference(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": meta::name(owner), "uid": meta::uid(owner), "controller": true, "blockOwnerDeletion": true})
}

/// Tells, from a listed object's JSON without decoding it, whether it may concern one
/// owner: it names the owner's uid, or it has no controller at all (an orphan to adopt).
/// Objects another controller owns are skipped unread: a sync lists every object of its
/// namespace, and decoding them all on every sync would make N owners cost N².
pub(crate) struct Concern {
    named: Option<memchr::memmem::Finder<'static>>,
}

impl Concern {
    /// For the owner with `uid` (the search is built once per sync, not per object).
    pub(crate) fn of(uid: &str) -> Concern {
        let named = (!uid.is_empty()).then(|| memchr::memmem::Finder::new(format!("\"uid\":\"{uid}\"").as_bytes()).into_owned());
        Concern { named }
    }

    /// Whether `obj` may concern the owner.
    pub(crate) fn may(&self, obj: &Obj) -> bool {
        let json = obj.json();
        self.named.as_ref().is_some_and(|f| f.find(&json).is_some()) || memchr::memmem::find(&json, br#""controller":true"#).is_none()
    }
}

/// The pods `owner` controls, after upstream's `ClaimPods`: of the pods in its namespace
/// that are `candidate`s, its own that still match `selector` (all of them while it is
/// being deleted), orphans that match adopted with `reference`, and its own that no
/// longer match released.
pub(crate) async fn claim_pods(
    registry: &Registry,
    owner: &Value,
    reference: &Value,
    selector: &LabelSelector,
    candidate: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>, ApiError> {
    let uid = meta::uid(owner);
    let deleting = meta::is_deleting(owner);
    let mut owned = Vec::new();
    let concern = Concern::of(uid);
    for p in &registry.list(pods(), Some(meta::namespace(owner)), &ListOptions::default())?.items {
        if !concern.may(p) {
            continue;
        }
        let pod = p.value();
        if !candidate(pod) {
            continue;
        }
        let matches = selector.matches(meta::labels(pod));
        match controller_ref(pod) {
            Some(r) if r.get("uid").and_then(Value::as_str) == Some(uid) => {
                if matches || deleting {
                    owned.push(pod.clone());
                } else {
                    release(registry, pods(), pod, uid).await;
                }
            }
            // An empty selector adopts nothing (upstream refuses to select everything).
            None if matches && !deleting && !selector.requirements.is_empty() => {
                if let Some(p) = adopt(registry, pods(), pod, reference).await {
                    owned.push(p);
                }
            }
            _ => {}
        }
    }
    Ok(owned)
}

/// The work-queue key of an object: `namespace/name`.
pub(crate) fn key_of(obj: &Value) -> String {
    format!("{}/{}", meta::namespace(obj), meta::name(obj))
}

/// The work-queue key of `obj`'s controller, if that is a `kind`.
pub(crate) fn controller_key(obj: &Value, kind: &str) -> Option<String> {
    let r = controller_ref(obj).filter(|r| r.get("kind").and_then(Value::as_str) == Some(kind))?;
    Some(format!("{}/{}", meta::namespace(obj), r.get("name").and_then(Value::as_str).unwrap_or("")))
}

/// The owner reference marked `controller: true`, if any.
pub(crate) fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.pointer("/metadata/ownerReferences").and_then(Value::as_array)?.iter().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// Make `reference` the controller of `obj` (kind `def`), unless another controller took
/// it or it was replaced meanwhile (upstream's `ClaimObject`); the adopted object.
pub(crate) async fn adopt(registry: &Registry, def: &ResourceDef, obj: &Value, reference: &Value) -> Option<Value> {
    let updated = registry
        .update_with(def, meta::namespace(obj), meta::name(obj), &WriteOptions::default(), |cur| {
            if controller_ref(cur).is_some() || meta::uid(cur) != meta::uid(obj) {
                return Err(ApiError::conflict(def.plural, def.group, meta::name(cur)));
            }
            let mut next = cur.clone();
            let refs = meta::metadata_mut(&mut next).entry("ownerReferences").or_insert_with(|| json!([]));
            if let Some(a) = refs.as_array_mut() {
                a.push(reference.clone());
            }
            Ok(next)
        })
        .await
        .ok()?;
    Some(updated.to_value())
}

/// Write `status` as `obj`'s (kind `def`) through the status subresource, unless it is
/// already that; an object gone meanwhile needs none.
pub(crate) async fn write_status(registry: &Registry, def: &ResourceDef, obj: &Value, status: Value) -> Result<(), ApiError> {
    if obj.get("status") == Some(&status) {
        return Ok(());
    }
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    let written = registry
        .update_with(def, meta::namespace(obj), meta::name(obj), &opts, |cur| {
            let mut next = cur.clone();
            next["status"] = status.clone();
            Ok(next)
        })
        .await;
    match written {
        Err(e) if e.code != 404 => Err(e),
        _ => Ok(()),
    }
}

/// Take `uid`'s owner reference off `obj` (kind `def`): it no longer matches its
/// controller's selector (upstream's `ReleasePod`).
pub(crate) async fn release(registry: &Registry, def: &ResourceDef, obj: &Value, uid: &str) {
    let _ = registry
        .update_with(def, meta::namespace(obj), meta::name(obj), &WriteOptions::default(), |cur| {
            let mut next = cur.clone();
            let m = meta::metadata_mut(&mut next);
            if let Some(a) = m.get_mut("ownerReferences").and_then(Value::as_array_mut) {
                a.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
            }
            // An empty list is no list, as upstream's patch leaves it.
            if m.get("ownerReferences").and_then(Value::as_array).is_some_and(Vec::is_empty) {
                m.remove("ownerReferences");
            }
            Ok(next)
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_or_percent_scales_as_upstream() {
        assert_eq!(int_or_percent(&json!(2), 10, true), Some(2));
        assert_eq!(int_or_percent(&json!("50%"), 3, true), Some(2));
        assert_eq!(int_or_percent(&json!("50%"), 3, false), Some(1));
        assert_eq!(int_or_percent(&json!("10%"), 10, true), Some(1));
        assert_eq!(int_or_percent(&json!("x"), 10, true), None);
    }
}
