//! kube-controller-manager's Deployment controller: a ReplicaSet per pod template,
//! rolled from old to new as the strategy allows, with upstream's annotations, status,
//! conditions and events, so that `kubectl rollout status|history|undo|restart|pause|
//! resume`, `kubectl scale`, `set image` and `wait --for=condition=Available` behave as on
//! a real cluster.
//!
//! - The new ReplicaSet is the one whose template equals the Deployment's (the
//!   `pod-template-hash` label aside); when there is none it is made, named
//!   `<deployment>-<hash>`, with the hash label on its selector, template and labels, and
//!   revision `max(old) + 1` (`deployment.kubernetes.io/revision`, copied to the
//!   Deployment). The hash is upstream's `ComputeHash` ([`crate::pod_template_hash`]), so
//!   the same Deployment gets the same ReplicaSet names as on kube-controller-manager.
//! - `RollingUpdate`: the new ReplicaSet is scaled up while all pods stay within
//!   `replicas + maxSurge` (rounded up), old ones down while `replicas - maxUnavailable`
//!   (rounded down; at least one may be unavailable when both are 0) stay available,
//!   unhealthy old pods first, oldest ReplicaSets first. `Recreate`: old ones to 0, and
//!   the new one up once no old pod is left.
//! - `paused`: only scaling; `revisionHistoryLimit`: old ReplicaSets at 0 beyond it are
//!   deleted, oldest first; `progressDeadlineSeconds`: `Progressing=False
//!   ProgressDeadlineExceeded` when no progress is made for that long.
//! - Status: `replicas`, `updatedReplicas`, `readyReplicas`, `availableReplicas`,
//!   `unavailableReplicas`, `observedGeneration`, `Available` and `Progressing` with
//!   upstream's reasons and messages; `ScalingReplicaSet` events.
//!
//! - A Deployment resized mid-rollout (an active ReplicaSet last scaled for another
//!   size) is only scaled, the active ReplicaSets in proportion, as upstream's
//!   proportional scaling; a paused one likewise.
//!
//! - `collisionCount`: a ReplicaSet name already taken by another template bumps it, and
//!   the next pass hashes the template with it (upstream's `ComputeHash`).

use std::sync::Arc;
use std::time::Duration;

use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::objects::{controller_key, controller_ref, def, int, key_of};
use crate::workqueue::Observed;
use crate::workqueue::WorkQueue;

const COMPONENT: &str = "deployment-controller";
const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
const HASH_LABEL: &str = "pod-template-hash";

fn deployments() -> &'static resources::ResourceDef {
    def("apps", "deployments")
}

fn replica_sets() -> &'static resources::ResourceDef {
    def("apps", "replicasets")
}

/// Upstream's `rand.SafeEncodeString` of the decimal FNV-32a of `bytes`.
pub fn template_hash(bytes: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    safe_encode(h)
}

/// Upstream's `rand.SafeEncodeString(fmt.Sprint(hash))`: each decimal digit's character
/// code taken modulo 27 into an alphabet without vowels.
pub(crate) fn safe_encode(hash: u32) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string().bytes().map(|d| ALPHANUMS[usize::from(d) % ALPHANUMS.len()] as char).collect()
}

/// A value with Go's zero values left out (`false`, `0`, `""`, `null`, empty lists and
/// objects), so that an omitted field and its zero value compare equal, as they do
/// between Go structs.
fn semantic(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Bool(false) => None,
        Value::Number(n) if n.as_f64() == Some(0.0) => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(a) => {
            let items: Vec<Value> = a.iter().map(|x| semantic(x).unwrap_or(Value::Null)).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(m) => {
            let kept: Map<String, Value> = m.iter().filter_map(|(k, x)| semantic(x).map(|x| (k.clone(), x))).collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        other => Some(other.clone()),
    }
}

/// A pod template with Go's zero values left out, for comparing templates.
pub(crate) fn semantic_template(template: &Value) -> Value {
    semantic(template).unwrap_or(Value::Null)
}

/// A template without the hash label and zero values, for comparing templates
/// (upstream's `EqualIgnoreHash`).
fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(HASH_LABEL);
    }
    semantic(&t).unwrap_or(Value::Null)
}

/// `maxSurge` or `maxUnavailable` as a count of `replicas` (percentages rounded up or
/// down).
fn resolve(v: Option<&Value>, replicas: i64, default_percent: i64, round_up: bool) -> i64 {
    match v {
        Some(v @ (Value::Number(_) | Value::String(_))) => crate::objects::int_or_percent(v, replicas, round_up).unwrap_or(0),
        _ => crate::objects::percent_of(default_percent, replicas, round_up),
    }
}

/// (maxSurge, maxUnavailable) of a rolling Deployment, as upstream's `ResolveFenceposts`.
fn fenceposts(d: &Value) -> (i64, i64) {
    let replicas = int(d, "/spec/replicas", 1);
    if d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate") {
        return (0, 0);
    }
    let surge = resolve(d.pointer("/spec/strategy/rollingUpdate/maxSurge"), replicas, 25, true);
    let mut unavailable = resolve(d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"), replicas, 25, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

fn spec_replicas(rs: &Value) -> i64 {
    int(rs, "/spec/replicas", 1)
}

fn available(rs: &Value) -> i64 {
    int(rs, "/status/availableReplicas", 0)
}

fn revision(rs: &Value) -> i64 {
    rs.pointer(&format!("/metadata/annotations/{}", REVISION.replace('/', "~1"))).and_then(Value::as_str).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn annotation_int(rs: &Value, key: &str) -> Option<i64> {
    rs.pointer(&format!("/metadata/annotations/{}", key.replace('/', "~1"))).and_then(Value::as_str).and_then(|v| v.parse().ok())
}

fn created_at(rs: &Value) -> (&str, &str) {
    (rs.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or(""), meta::name(rs))
}

/// Upstream's proportional scaling (`DeploymentController.scale` with several active
/// ReplicaSets in a rolling Deployment): the sizes the active ReplicaSets get when the
/// Deployment's size changed mid-rollout. What may be added (or removed) is
/// `replicas + maxSurge` less what they hold; each gets its share by the size it had
/// against the `max-replicas` it was last scaled for, the largest first (newer first
/// among equals when growing, older first when shrinking), the rounding's leftover going
/// to the first.
fn proportional_sizes(d: &Value, active: &[&Value]) -> Vec<(String, i64)> {
    let want = int(d, "/spec/replicas", 1);
    let (surge, _) = fenceposts(d);
    let allowed = if want > 0 { want + surge } else { 0 };
    let to_add = allowed - active.iter().map(|r| spec_replicas(r)).sum::<i64>();
    let mut order = active.to_vec();
    order.sort_by(|a, b| {
        let by_age = if to_add > 0 { created_at(b).cmp(&created_at(a)) } else { created_at(a).cmp(&created_at(b)) };
        spec_replicas(b).cmp(&spec_replicas(a)).then(by_age)
    });
    let mut added = 0;
    let mut sizes: Vec<(String, i64)> = Vec::new();
    for rs in order {
        let current = spec_replicas(rs);
        let share = if to_add == 0 || current == 0 || to_add == added {
            0
        } else {
            let fraction = if want == 0 {
                -current
            } else {
                let annotated = annotation_int(rs, MAX_REPLICAS).unwrap_or_else(|| int(d, "/status/replicas", 0));
                if annotated == 0 {
                    0
                } else {
                    // Go's RoundToInt32: halves away from zero, as f64::round.
                    ((current * (want + surge)) as f64 / annotated as f64).round() as i64 - current
                }
            };
            let left = to_add - added;
            if to_add > 0 {
                fraction.min(left)
            } else {
                fraction.max(left)
            }
        };
        added += share;
        sizes.push((meta::name(rs).to_string(), current + share));
    }
    if let Some(first) = sizes.first_mut().filter(|_| to_add != 0) {
        first.1 = (first.1 + to_add - added).max(0);
    }
    sizes
}

fn condition<'a>(d: &'a Value, ty: &str) -> Option<&'a Value> {
    d.pointer("/status/conditions").and_then(Value::as_array)?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

/// The Deployment controller.
pub struct DeploymentController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
}

impl DeploymentController {
    /// A controller acting through `registry`.
    pub fn new(registry: Arc<Registry>) -> Arc<DeploymentController> {
        Arc::new(DeploymentController { registry, queue: WorkQueue::new() })
    }

    /// Run until `shutdown`: every Deployment once, then what changes.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[deployments().key_prefix(), replica_sets().key_prefix()];
        crate::workqueue::run(self.clone(), &store, &queue, COMPONENT, prefixes, shutdown, Self::enqueue_all, Self::observe, |me, key| async move {
            me.sync(&key).await
        })
        .await
    }

    fn enqueue_all(&self) {
        crate::workqueue::enqueue_each(&self.registry, &self.queue, deployments(), None);
    }

    fn observe(&self, change: &Observed) {
        let v = change.value();
        if change.is("Deployment") {
            self.queue.add(&key_of(v));
            return;
        }
        match controller_ref(v) {
            Some(_) => {
                if let Some(key) = controller_key(v, "Deployment") {
                    self.queue.add(&key);
                }
            }
            // An orphan ReplicaSet: the Deployments that select it may adopt it.
            None => crate::workqueue::enqueue_adopters(&self.registry, &self.queue, deployments(), v),
        }
    }

    fn owner_ref(d: &Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": meta::name(d), "uid": meta::uid(d), "controller": true, "blockOwnerDeletion": true})
    }

    /// The ReplicaSets this Deployment controls, adopting matching orphans.
    async fn claim(&self, d: &Value) -> Result<Vec<Value>, ApiError> {
        let sel = LabelSelector::from_object(d.pointer("/spec/selector").unwrap_or(&Value::Null))?;
        let uid = meta::uid(d);
        let list = self.registry.list(replica_sets(), Some(meta::namespace(d)), &ListOptions::default())?;
        let mut out = Vec::new();
        let concern = crate::objects::Concern::of(uid);
        for rs in &list.items {
            if !concern.may(rs) {
                continue;
            }
            let rs = rs.value();
            match controller_ref(rs) {
                Some(r) if r.get("uid").and_then(Value::as_str) == Some(uid) => out.push(rs.clone()),
                Some(_) => {}
                None if sel.matches(rs.pointer("/metadata/labels").and_then(Value::as_object)) && !meta::is_deleting(d) && !sel.requirements.is_empty() => {
                    if let Some(a) = crate::objects::adopt(&self.registry, replica_sets(), rs, &Self::owner_ref(d)).await {
                        out.push(a);
                    }
                }
                None => {}
            }
        }
        out.sort_by(|a, b| {
            let t = |x: &Value| x.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("").to_string();
            t(a).cmp(&t(b)).then(meta::name(a).cmp(meta::name(b)))
        });
        Ok(out)
    }

    /// Set a ReplicaSet's replicas (and the Deployment's annotations on it), with
    /// upstream's event; true when it changed.
    async fn scale(&self, d: &Value, rs: &Value, replicas: i64) -> Result<bool, ApiError> {
        let (surge, _) = fenceposts(d);
        let want = int(d, "/spec/replicas", 1);
        let annotations = [(DESIRED, want.to_string()), (MAX_REPLICAS, (want + surge).to_string())];
        let current = spec_replicas(rs);
        let stale =
            annotations.iter().any(|(k, v)| rs.pointer(&format!("/metadata/annotations/{}", k.replace('/', "~1"))).and_then(Value::as_str) != Some(v.as_str()));
        if current == replicas && !stale {
            return Ok(false);
        }
        self.registry
            .update_with(replica_sets(), meta::namespace(rs), meta::name(rs), &WriteOptions::default(), |cur| {
                let mut next = cur.clone();
                next["spec"]["replicas"] = json!(replicas);
                let a = meta::metadata_mut(&mut next).entry("annotations").or_insert_with(|| json!({}));
                for (k, v) in &annotations {
                    a[*k] = json!(v);
                }
                Ok(next)
            })
            .await?;
        if current != replicas {
            let op = if replicas > current { "up" } else { "down" };
            let message = format!("Scaled {op} replica set {} from {current} to {replicas}", meta::name(rs));
            crate::events::record(&self.registry, COMPONENT, d, "Normal", "ScalingReplicaSet", &message).await;
        }
        Ok(current != replicas)
    }

    /// Upstream's `scale`: one active ReplicaSet (or, with none, the newest) takes the
    /// whole count; a saturated new one leaves the old ones at 0; otherwise a rolling
    /// Deployment's active ReplicaSets are scaled in proportion ([`proportional_sizes`]).
    async fn scale_all(&self, d: &Value, new_rs: Option<&Value>, olds: &[&Value]) -> Result<(), ApiError> {
        let want = int(d, "/spec/replicas", 1);
        let active: Vec<&Value> = olds.iter().copied().chain(new_rs).filter(|r| spec_replicas(r) > 0).collect();
        let single = match active.len() {
            0 => new_rs.or_else(|| olds.iter().copied().max_by(|a, b| created_at(a).cmp(&created_at(b)))),
            1 => Some(active[0]),
            _ => None,
        };
        if let Some(rs) = single {
            self.scale(d, rs, want).await?;
            return Ok(());
        }
        if let Some(rs) = new_rs.filter(|rs| annotation_int(rs, DESIRED) == Some(want) && spec_replicas(rs) == want && available(rs) == want) {
            for old in active.iter().filter(|r| meta::name(r) != meta::name(rs)) {
                self.scale(d, old, 0).await?;
            }
            return Ok(());
        }
        if d.pointer("/spec/strategy/type").and_then(Value::as_str) != Some("Recreate") {
            for (name, size) in proportional_sizes(d, &active) {
                if let Some(rs) = active.iter().find(|r| meta::name(r) == name) {
                    self.scale(d, rs, size).await?;
                }
            }
        }
        Ok(())
    }

    /// The new ReplicaSet for the Deployment's template: found (its revision brought
    /// up to date) or, when `create`, made.
    async fn new_replica_set(&self, d: &Value, owned: &[Value], create: bool) -> Result<(Option<Value>, bool), ApiError> {
        let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let wanted = without_hash(&template);
        let max_old = owned.iter().filter(|rs| without_hash(rs.pointer("/spec/template").unwrap_or(&Value::Null)) != wanted).map(revision).max().unwrap_or(0);
        if let Some(rs) = owned.iter().find(|rs| without_hash(rs.pointer("/spec/template").unwrap_or(&Value::Null)) == wanted) {
            // A template rolled back to: its ReplicaSet becomes the newest revision.
            let mut rs = rs.clone();
            if revision(&rs) <= max_old {
                let next = (max_old + 1).to_string();
                rs = self
                    .registry
                    .update_with(replica_sets(), meta::namespace(&rs), meta::name(&rs), &WriteOptions::default(), |cur| {
                        let mut n = cur.clone();
                        let a = meta::metadata_mut(&mut n).entry("annotations").or_insert_with(|| json!({}));
                        a[REVISION] = json!(next);
                        Ok(n)
                    })
                    .await?
                    .value()
                    .clone();
            }
            return Ok((Some(rs), false));
        }
        if !create {
            return Ok((None, false));
        }
        let collisions = d.pointer("/status/collisionCount").and_then(Value::as_i64);
        let hash = crate::pod_template_hash::compute_hash(&template, collisions);
        let mut rs_template = template.clone();
        rs_template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let labels = rs_template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
        let (surge, _) = fenceposts(d);
        let want = int(d, "/spec/replicas", 1);
        let rs = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{}-{hash}", meta::name(d)),
                "namespace": meta::namespace(d),
                "labels": labels,
                "annotations": {REVISION: (max_old + 1).to_string(), DESIRED: want.to_string(), MAX_REPLICAS: (want + surge).to_string()},
                "ownerReferences": [Self::owner_ref(d)],
            },
            "spec": {"replicas": 0, "minReadySeconds": int(d, "/spec/minReadySeconds", 0), "selector": selector, "template": rs_template},
        });
        match self.registry.create(replica_sets(), meta::namespace(d), rs, &WriteOptions::default()).await {
            Ok(created) => Ok((Some(created.to_value()), true)),
            Err(e) if e.code == 409 => {
                // Made meanwhile by this controller's previous pass: take it. Anything
                // else by that name is a hash collision (upstream's getNewReplicaSet).
                let name = format!("{}-{hash}", meta::name(d));
                let existing = self.registry.get(replica_sets(), meta::namespace(d), &name)?.to_value();
                let ours = crate::objects::controller_ref(&existing).and_then(|r| r.get("uid")).and_then(Value::as_str) == Some(meta::uid(d));
                if ours && without_hash(existing.pointer("/spec/template").unwrap_or(&Value::Null)) == wanted {
                    return Ok((Some(existing), false));
                }
                let bumped = collisions.unwrap_or(0) + 1;
                let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
                self.registry
                    .update_with(deployments(), meta::namespace(d), meta::name(d), &opts, |cur| {
                        let mut next = cur.clone();
                        if let Some(m) = next.as_object_mut() {
                            if let Some(st) = m.entry("status").or_insert_with(|| json!({})).as_object_mut() {
                                st.insert("collisionCount".into(), json!(bumped));
                            }
                        }
                        Ok(next)
                    })
                    .await?;
                // Upstream returns the AlreadyExists error, so the key comes back.
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn sync(self: &Arc<Self>, key: &str) -> Result<(), ApiError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let d = match self.registry.get(deployments(), ns, name) {
            Ok(o) => o.to_value(),
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let owned = self.claim(&d).await?;
        if meta::is_deleting(&d) {
            return self.write_status(&d, None, &owned, None).await;
        }
        let paused = d.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
        let recreate = d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
        let (new_rs, created) = self.new_replica_set(&d, &owned, !paused).await?;
        let want = int(&d, "/spec/replicas", 1);
        let (surge, unavailable) = fenceposts(&d);
        let new_name = new_rs.as_ref().map(|r| meta::name(r).to_string());
        let olds: Vec<&Value> = owned.iter().filter(|r| Some(meta::name(r).to_string()) != new_name).collect();
        // A size changed since the active ReplicaSets were last scaled (or a paused
        // Deployment): scaling only, as upstream's `sync`.
        let scaling_event = owned.iter().filter(|r| spec_replicas(r) > 0).any(|r| annotation_int(r, DESIRED).is_some_and(|v| v != want));
        if paused || scaling_event {
            self.scale_all(&d, new_rs.as_ref(), &olds).await?;
        } else if recreate {
            let mut scaled = false;
            for old in &olds {
                scaled |= self.scale(&d, old, 0).await?;
            }
            let old_pods_left = olds.iter().any(|o| int(o, "/status/replicas", 0) > 0);
            if !scaled && !old_pods_left {
                if let Some(rs) = &new_rs {
                    self.scale(&d, rs, want).await?;
                }
            }
        } else if let Some(rs) = &new_rs {
            // Rolling: the new one up within the surge, then old ones down within
            // availability.
            let all_pods: i64 = owned.iter().map(spec_replicas).sum();
            let new_replicas = spec_replicas(rs);
            let target = if new_replicas >= want {
                want
            } else {
                let room = (want + surge - all_pods).max(0);
                new_replicas + room.min(want - new_replicas)
            };
            let scaled_up = target != new_replicas && self.scale(&d, rs, target).await?;
            if !scaled_up && !olds.is_empty() {
                let min_available = want - unavailable;
                let new_unavailable = (spec_replicas(rs) - available(rs)).max(0);
                let mut budget = all_pods - min_available - new_unavailable;
                // Unhealthy old pods first.
                for old in &olds {
                    if budget <= 0 {
                        break;
                    }
                    let unhealthy = (spec_replicas(old) - available(old)).max(0);
                    let down = unhealthy.min(budget);
                    if down > 0 {
                        self.scale(&d, old, spec_replicas(old) - down).await?;
                        budget -= down;
                    }
                }
                // Then what availability allows, oldest first.
                let refreshed = self.claim(&d).await?;
                let available_now: i64 = refreshed.iter().map(available).sum();
                let mut allowed = (available_now - min_available).max(0);
                for old in refreshed.iter().filter(|r| Some(meta::name(r).to_string()) != new_name) {
                    if allowed <= 0 {
                        break;
                    }
                    let down = spec_replicas(old).min(allowed);
                    if down > 0 {
                        self.scale(&d, old, spec_replicas(old) - down).await?;
                        allowed -= down;
                    }
                }
            }
        }
        let owned = self.claim(&d).await?;
        let new_rs = new_name.as_ref().and_then(|n| owned.iter().find(|r| meta::name(r) == n).cloned());
        if !paused {
            self.clean_history(&d, &owned, new_name.as_deref()).await;
        }
        self.write_status(&d, new_rs.as_ref(), &owned, Some(created)).await?;
        // The progress deadline is looked at again when it could pass.
        if let Some(deadline) = d.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_i64) {
            self.queue.add_after(key, Duration::from_secs(deadline.clamp(1, 600) as u64));
        }
        Ok(())
    }

    /// Old ReplicaSets at 0 beyond `revisionHistoryLimit` (default 10), oldest first.
    async fn clean_history(&self, d: &Value, owned: &[Value], new_name: Option<&str>) {
        let limit = int(d, "/spec/revisionHistoryLimit", 10).max(0) as usize;
        let mut idle: Vec<&Value> = owned
            .iter()
            .filter(|r| Some(meta::name(r)) != new_name && spec_replicas(r) == 0 && int(r, "/status/replicas", 0) == 0 && !meta::is_deleting(r))
            .collect();
        if idle.len() <= limit {
            return;
        }
        idle.sort_by_key(|r| revision(r));
        let excess = idle.len() - limit;
        for rs in idle.into_iter().take(excess) {
            let _ = self.registry.delete(replica_sets(), meta::namespace(rs), meta::name(rs), &DeleteOptions::default()).await;
        }
    }

    async fn write_status(&self, d: &Value, new_rs: Option<&Value>, owned: &[Value], created: Option<bool>) -> Result<(), ApiError> {
        let want = int(d, "/spec/replicas", 1);
        let (_, unavailable) = fenceposts(d);
        let sum = |p: &str| -> i64 { owned.iter().map(|r| int(r, p, 0)).sum() };
        let (replicas, ready, avail) = (sum("/status/replicas"), sum("/status/readyReplicas"), sum("/status/availableReplicas"));
        let updated = new_rs.map(|r| int(r, "/status/replicas", 0)).unwrap_or(0);
        let now = meta::now_rfc3339();
        let mut conditions: Vec<Value> = d.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut set = |ty: &str, status: &str, reason: &str, message: String, progress: bool| {
            let old = conditions.iter().position(|c| c.get("type").and_then(Value::as_str) == Some(ty));
            let same_status = old.is_some_and(|i| conditions[i].get("status").and_then(Value::as_str) == Some(status));
            let same = old.is_some_and(|i| same_status && conditions[i].get("reason").and_then(Value::as_str) == Some(reason));
            if same && !progress {
                return;
            }
            let transition = match old {
                Some(i) if same_status => conditions[i].get("lastTransitionTime").cloned().unwrap_or(json!(now)),
                _ => json!(now),
            };
            let c = json!({"type": ty, "status": status, "lastUpdateTime": now, "lastTransitionTime": transition, "reason": reason, "message": message});
            match old {
                Some(i) => conditions[i] = c,
                None => conditions.push(c),
            }
        };
        if avail >= want - unavailable {
            set("Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), false);
        } else {
            set("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.".into(), false);
        }
        let paused = d.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
        let rs_name = new_rs.map(|r| meta::name(r).to_string()).unwrap_or_default();
        let complete = new_rs.is_some()
            && updated == want
            && replicas == want
            && avail == want
            && int(new_rs.unwrap_or(&Value::Null), "/status/availableReplicas", 0) == want;
        let progressing = condition(d, "Progressing").cloned();
        let deadline = d.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_i64);
        if paused {
            set("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), false);
        } else if created == Some(true) {
            set("Progressing", "True", "NewReplicaSetCreated", format!("Created new replica set \"{rs_name}\""), true);
        } else if complete {
            set("Progressing", "True", "NewReplicaSetAvailable", format!("ReplicaSet \"{rs_name}\" has successfully progressed."), false);
        } else if new_rs.is_some() {
            let old_status = d.get("status").cloned().unwrap_or(json!({}));
            let moved = ["updatedReplicas", "readyReplicas", "availableReplicas", "replicas"]
                .iter()
                .zip([updated, ready, avail, replicas])
                .any(|(k, v)| old_status.get(*k).and_then(Value::as_i64).unwrap_or(0) != v);
            let last_update = progressing
                .as_ref()
                .and_then(|c| c.get("lastUpdateTime").and_then(Value::as_str).map(String::from))
                .and_then(|t| time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok());
            let stalled = !moved
                && deadline.is_some_and(|secs| last_update.is_some_and(|t| (time::OffsetDateTime::now_utc() - t).whole_seconds() > secs))
                && progressing.as_ref().and_then(|c| c.get("reason")).and_then(Value::as_str) != Some("NewReplicaSetAvailable");
            if stalled {
                set("Progressing", "False", "ProgressDeadlineExceeded", format!("ReplicaSet \"{rs_name}\" has timed out progressing."), false);
            } else if moved || progressing.is_none() {
                let reason = if progressing.is_none() { "FoundNewReplicaSet" } else { "ReplicaSetUpdated" };
                let message =
                    if progressing.is_none() { format!("Found new replica set \"{rs_name}\"") } else { format!("ReplicaSet \"{rs_name}\" is progressing.") };
                set("Progressing", "True", reason, message, true);
            }
        }
        // A ReplicaSet that cannot make pods (a quota, a webhook) tells through the
        // Deployment too (upstream copies its ReplicaFailure condition).
        let failure = owned.iter().find_map(|rs| {
            rs.pointer("/status/conditions")
                .and_then(Value::as_array)?
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("ReplicaFailure"))
                .cloned()
        });
        conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("ReplicaFailure"));
        if let Some(f) = failure {
            let since = f.get("lastTransitionTime").cloned().unwrap_or(json!(now));
            conditions.push(json!({"type": "ReplicaFailure", "status": f["status"], "lastUpdateTime": since, "lastTransitionTime": since, "reason": f["reason"], "message": f["message"]}));
        }
        let mut status = Map::new();
        status.insert("observedGeneration".into(), d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)));
        // Upstream omits zero counts.
        for (k, v) in [
            ("replicas", replicas),
            ("updatedReplicas", updated),
            ("readyReplicas", ready),
            ("availableReplicas", avail),
            ("unavailableReplicas", (want - avail).max(0)),
        ] {
            if v != 0 {
                status.insert(k.into(), json!(v));
            }
        }
        // Available first, as upstream orders them.
        conditions.sort_by_key(|c| c.get("type").and_then(Value::as_str) != Some("Available"));
        status.insert("conditions".into(), json!(conditions));
        if let Some(c) = d.pointer("/status/collisionCount") {
            status.insert("collisionCount".into(), c.clone());
        }
        let status = Value::Object(status);
        let revision_now = new_rs.map(revision).filter(|r| *r > 0);
        let revision_key = format!("/metadata/annotations/{}", REVISION.replace('/', "~1"));
        let revision_stale = revision_now.is_some_and(|r| d.pointer(&revision_key).and_then(Value::as_str) != Some(r.to_string().as_str()));
        if revision_stale {
            // The revision annotation is the Deployment's own metadata (not status).
            let r = revision_now.unwrap_or(0).to_string();
            self.registry
                .update_with(deployments(), meta::namespace(d), meta::name(d), &WriteOptions::default(), |cur| {
                    let mut next = cur.clone();
                    let a = meta::metadata_mut(&mut next).entry("annotations").or_insert_with(|| json!({}));
                    a[REVISION] = json!(r);
                    Ok(next)
                })
                .await?;
        }
        crate::objects::write_status(&self.registry, deployments(), d, status).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportional_scaling_is_upstreams() {
        // The documentation's example: 10 replicas, maxSurge 3, maxUnavailable 2, mid-way
        // (old at 8, new at 5), scaled to 15: 3 more to the old, 2 to the new.
        let d = |replicas: i64| json!({"spec": {"replicas": replicas, "strategy": {"rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}}}, "status": {"replicas": 13}});
        let rs = |name: &str, at: &str, replicas: i64, max: i64| json!({"metadata": {"name": name, "creationTimestamp": at, "annotations": {MAX_REPLICAS: max.to_string()}}, "spec": {"replicas": replicas}});
        let (old, new) = (rs("old", "2026-01-01T00:00:00Z", 8, 13), rs("new", "2026-01-02T00:00:00Z", 5, 13));
        assert_eq!(proportional_sizes(&d(15), &[&old, &new]), vec![("old".into(), 11), ("new".into(), 7)]);
        // Down to 5 from 14/4 scaled for 18: 8 allowed, the older first among equals.
        let (old, new) = (rs("old", "2026-01-01T00:00:00Z", 14, 18), rs("new", "2026-01-02T00:00:00Z", 4, 18));
        assert_eq!(proportional_sizes(&d(5), &[&new, &old]), vec![("old".into(), 6), ("new".into(), 2)]);
        // To zero: all go.
        assert_eq!(proportional_sizes(&d(0), &[&old, &new]), vec![("old".into(), 0), ("new".into(), 0)]);
        // Equal sizes growing: the newer gets the leftover.
        let (a, b) = (rs("a", "2026-01-01T00:00:00Z", 2, 4), rs("b", "2026-01-02T00:00:00Z", 2, 4));
        assert_eq!(proportional_sizes(&d(2), &[&a, &b]).iter().map(|(_, n)| n).sum::<i64>(), 5);
        assert_eq!(proportional_sizes(&d(2), &[&a, &b])[0].0, "b");
    }

    #[test]
    fn fenceposts_round_as_upstream() {
        let d = |replicas: i64, surge: Value, unavailable: Value| json!({"spec": {"replicas": replicas, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}});
        assert_eq!(fenceposts(&d(10, json!("25%"), json!("25%"))), (3, 2));
        assert_eq!(fenceposts(&d(1, json!("25%"), json!("25%"))), (1, 0));
        assert_eq!(fenceposts(&d(3, json!(0), json!(0))), (0, 1));
        assert_eq!(fenceposts(&json!({"spec": {"replicas": 4}})), (1, 1));
        assert_eq!(fenceposts(&json!({"spec": {"replicas": 4, "strategy": {"type": "Recreate"}}})), (0, 0));
    }

    #[test]
    fn hashes_use_upstreams_alphabet() {
        let h = template_hash(b"{}");
        assert!(!h.is_empty() && h.len() <= 10 && h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{h}");
        assert_ne!(template_hash(b"a"), template_hash(b"b"));
    }
}
