//! ControllerRevisions as StatefulSets and DaemonSets keep them (upstream's
//! `controller/history`): one per pod template, named `<owner>-<hash>`, its data the
//! template as a replacing patch, numbered in order; a template rolled back to takes
//! the next number again; unused ones beyond the owner's `revisionHistoryLimit` go.

use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};

use crate::objects::controller_ref;

/// The label carrying a revision's hash.
const HASH_LABEL: &str = "controller.kubernetes.io/hash";

fn revisions() -> &'static resources::ResourceDef {
    resources::find("apps", "v1", "controllerrevisions").expect("built-in resource")
}

/// A revision's number.
pub(crate) fn number(revision: &Value) -> i64 {
    revision.get("revision").and_then(Value::as_i64).unwrap_or(0)
}

/// The pod template a revision holds.
pub(crate) fn template_of(revision: &Value) -> Value {
    let mut t = revision.pointer("/data/spec/template").cloned().unwrap_or(json!({}));
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    t
}

/// The owner's revisions, oldest first, and the one for its current template (made now,
/// or renumbered when rolled back to). `labels` are the new revision's labels (its hash
/// is added) and `owner_ref` its controller reference.
pub(crate) async fn ensure(registry: &Registry, owner: &Value, owner_ref: &Value, labels: Value) -> Result<(Vec<Value>, Value), ApiError> {
    let ns = meta::namespace(owner);
    let uid = meta::uid(owner);
    let mut owned: Vec<Value> = registry
        .list(revisions(), Some(ns), &ListOptions::default())?
        .items
        .iter()
        .map(|r| r.to_value())
        .filter(|r| controller_ref(r).and_then(|c| c.get("uid")).and_then(Value::as_str) == Some(uid))
        .collect();
    owned.sort_by_key(number);
    let template = owner.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let wanted = crate::deployments::semantic_template(&template);
    let latest = owned.last().map(number).unwrap_or(0);
    if let Some(found) = owned.iter().find(|r| crate::deployments::semantic_template(&template_of(r)) == wanted).cloned() {
        if number(&found) == latest {
            return Ok((owned, found));
        }
        let updated = registry
            .update_with(revisions(), ns, meta::name(&found), &WriteOptions::default(), |cur| {
                let mut n = cur.clone();
                n["revision"] = json!(latest + 1);
                Ok(n)
            })
            .await?
            .value()
            .clone();
        let owned = owned.into_iter().map(|r| if meta::uid(&r) == meta::uid(&updated) { updated.clone() } else { r }).collect();
        return Ok((owned, updated));
    }
    let collisions = owner.pointer("/status/collisionCount").and_then(Value::as_i64).unwrap_or(0);
    let hash = crate::deployments::template_hash(format!("{wanted}{collisions}").as_bytes());
    let mut labels = labels;
    labels[HASH_LABEL] = json!(hash);
    let mut data_template = template;
    data_template["$patch"] = json!("replace");
    let name = format!("{}-{hash}", meta::name(owner));
    let revision = json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner_ref]},
        "data": {"spec": {"template": data_template}}, "revision": latest + 1,
    });
    let made = match registry.create(revisions(), ns, revision, &WriteOptions::default()).await {
        Ok(r) => r.to_value(),
        Err(e) if e.code == 409 => registry.get(revisions(), ns, &name)?.to_value(),
        Err(e) => return Err(e),
    };
    owned.push(made.clone());
    Ok((owned, made))
}

/// Delete the oldest of `all` that are not `in_use`, beyond `limit`.
pub(crate) async fn clean(registry: &Registry, all: &[Value], limit: i64, in_use: impl Fn(&str) -> bool) {
    let unused: Vec<&Value> = all.iter().filter(|r| !in_use(meta::name(r))).collect();
    let limit = limit.max(0) as usize;
    if unused.len() <= limit {
        return;
    }
    for r in unused.iter().take(unused.len() - limit) {
        let _ = registry.delete(revisions(), meta::namespace(r), meta::name(r), &DeleteOptions::default()).await;
    }
}
