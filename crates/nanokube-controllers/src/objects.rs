//! What the workload controllers do alike to the objects they own: find an object's
//! controller, adopt an orphan, write a status.

use nanokube_api::resources::ResourceDef;
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{Registry, WriteOptions};
use serde_json::{json, Value};

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
    Some(updated.value().clone())
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
