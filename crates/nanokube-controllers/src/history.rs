//! ControllerRevisions as StatefulSets and DaemonSets keep them (upstream's
//! `controller/history`): one per pod template, named `<owner>-<hash>`, its data the
//! template as a replacing patch, its labels the template's and its annotations the
//! owner's, numbered in order; a template rolled back to takes the next number again;
//! unused ones beyond the owner's `revisionHistoryLimit` go.
//!
//! Names: a StatefulSet's revision is named as upstream's `HashControllerRevision` names
//! it, the FNV-1 of the data's JSON (Go's encoding: keys sorted, `<`, `>`, `&` escaped)
//! followed by the collision count, so the same StatefulSet gets the same revision names
//! as on kube-controller-manager. A DaemonSet's is upstream's `ComputeHash` of its pod
//! template ([`crate::pod_template_hash`]), with the collision count only once the
//! DaemonSet has one, as upstream passes `status.collisionCount`.

use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};

use crate::objects::controller_ref;

/// Whose revisions these are: the two controllers name and label them differently.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Owner {
    /// Labelled `controller.kubernetes.io/hash`, named by the data's FNV-1.
    StatefulSet,
    /// Labelled `controller-revision-hash`, named by the template's hash.
    DaemonSet,
}

impl Owner {
    fn hash_label(self) -> &'static str {
        match self {
            Owner::StatefulSet => "controller.kubernetes.io/hash",
            Owner::DaemonSet => "controller-revision-hash",
        }
    }

    /// The revision's hash; `collisions` is the owner's collision count, `None` while it
    /// has none (a StatefulSet hashes that as 0, a DaemonSet adds nothing).
    fn hash(self, data: &Value, template: &Value, collisions: Option<i64>) -> String {
        match self {
            Owner::StatefulSet => {
                let mut bytes = go_json(data);
                bytes.extend_from_slice(collisions.unwrap_or(0).to_string().as_bytes());
                crate::deployments::safe_encode(fnv1_32(&bytes))
            }
            Owner::DaemonSet => crate::pod_template_hash::compute_hash(template, collisions),
        }
    }
}

/// The label carrying a revision's hash.
pub(crate) fn hash_of(owner: Owner, revision: &Value) -> Option<&str> {
    revision.get("metadata")?.get("labels")?.get(owner.hash_label())?.as_str()
}

/// FNV-1, 32 bits (Go's `fnv.New32`).
fn fnv1_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| h.wrapping_mul(0x0100_0193) ^ u32::from(*b))
}

/// A value as Go's `json.Marshal` writes a `map[string]interface{}`: keys sorted (as
/// `serde_json`'s maps are), and `<`, `>`, `&`, U+2028 and U+2029 escaped (they can only
/// occur inside strings, so the serialized bytes are rewritten).
fn go_json(v: &Value) -> Vec<u8> {
    let plain = serde_json::to_vec(v).unwrap_or_default();
    let mut out = Vec::with_capacity(plain.len());
    let mut i = 0;
    while i < plain.len() {
        match plain[i] {
            b'<' => out.extend_from_slice(br"\u003c"),
            b'>' => out.extend_from_slice(br"\u003e"),
            b'&' => out.extend_from_slice(br"\u0026"),
            0xE2 if plain.get(i + 1) == Some(&0x80) && matches!(plain.get(i + 2), Some(0xA8 | 0xA9)) => {
                out.extend_from_slice(if plain[i + 2] == 0xA8 { br"\u2028" } else { br"\u2029" });
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

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

/// Most names tried when revisions of other data hold them (upstream tries until one is
/// free; each try bumps the collision count).
const MAX_COLLISIONS: i64 = 16;

/// The owner's revisions, oldest first, the one for its current template (made now, or
/// renumbered when rolled back to), and the collision count its name needed (the owner's
/// `status.collisionCount`, raised when a name was held by a revision of other data).
pub(crate) async fn ensure(registry: &Registry, kind: Owner, owner: &Value, owner_ref: &Value) -> Result<(Vec<Value>, Value, i64), ApiError> {
    let ns = meta::namespace(owner);
    let uid = meta::uid(owner);
    let mut collisions = owner.pointer("/status/collisionCount").and_then(Value::as_i64);
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
            return Ok((owned, found, collisions.unwrap_or(0)));
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
        return Ok((owned, updated, collisions.unwrap_or(0)));
    }
    let mut data_template = template.clone();
    data_template["$patch"] = json!("replace");
    let data = json!({"spec": {"template": data_template}});
    // Labelled with the hash of the first name tried, as upstream's NewControllerRevision.
    let hash = kind.hash(&data, &template, collisions);
    let mut labels = template.pointer("/metadata/labels").cloned().filter(Value::is_object).unwrap_or(json!({}));
    labels[kind.hash_label()] = json!(hash);
    let mut metadata = json!({"namespace": ns, "labels": labels, "ownerReferences": [owner_ref]});
    if let Some(a) = owner.pointer("/metadata/annotations").filter(|a| a.as_object().is_some_and(|m| !m.is_empty())) {
        metadata["annotations"] = a.clone();
    }
    let mut hash = hash;
    loop {
        let name = format!("{}-{hash}", meta::name(owner));
        metadata["name"] = json!(name);
        let revision = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": metadata, "data": data, "revision": latest + 1});
        let made = match registry.create(revisions(), ns, revision, &WriteOptions::default()).await {
            Ok(r) => r.to_value(),
            Err(e) if e.code == 409 => {
                let held = registry.get(revisions(), ns, &name)?.to_value();
                // The same data (made by an earlier sync): it is this revision.
                if held.get("data") != Some(&data) && collisions.unwrap_or(0) < MAX_COLLISIONS {
                    collisions = Some(collisions.unwrap_or(0) + 1);
                    hash = kind.hash(&data, &template, collisions);
                    continue;
                }
                held
            }
            Err(e) => return Err(e),
        };
        owned.push(made.clone());
        return Ok((owned, made, collisions.unwrap_or(0)));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1_matches_the_reference_vectors() {
        assert_eq!(fnv1_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1_32(b"a"), 0x050c_5d7e);
        assert_eq!(fnv1_32(b"foobar"), 0x31f0_b262);
    }

    #[test]
    fn go_json_sorts_keys_and_escapes_as_go_does() {
        let v = json!({"b": "x > y && z < w", "a": {"d": [1, 2.5, true, null], "c": "line\u{2028}para\u{2029}"}});
        assert_eq!(
            String::from_utf8(go_json(&v)).unwrap(),
            r#"{"a":{"c":"line\u2028para\u2029","d":[1,2.5,true,null]},"b":"x \u003e y \u0026\u0026 z \u003c w"}"#
        );
    }

    #[test]
    fn a_statefulset_revision_is_named_by_its_data_and_the_collision_count() {
        let data = json!({"spec": {"template": {"$patch": "replace", "metadata": {"labels": {"app": "web"}}}}});
        let zero = Owner::StatefulSet.hash(&data, &Value::Null, Some(0));
        let mut bytes = br#"{"spec":{"template":{"$patch":"replace","metadata":{"labels":{"app":"web"}}}}}"#.to_vec();
        bytes.push(b'0');
        assert_eq!(zero, crate::deployments::safe_encode(fnv1_32(&bytes)));
        assert_eq!(zero, Owner::StatefulSet.hash(&data, &Value::Null, None));
        assert_ne!(zero, Owner::StatefulSet.hash(&data, &Value::Null, Some(1)));
        assert!(zero.bytes().all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }
}
