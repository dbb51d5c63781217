//! The `pods/eviction` subresource (policy/v1 `Eviction`), as kube-apiserver's eviction
//! REST: a pod is deleted only if the PodDisruptionBudget that selects it allows a
//! disruption, which is then spent (`disruptionsAllowed` decremented, the pod recorded
//! in `disruptedPods` for the disruption controller) before the delete.
//!
//! - Pods that are Pending, Succeeded, Failed or already being deleted are deleted
//!   without a budget, as are unhealthy pods when the budget is met
//!   (`unhealthyPodEvictionPolicy: IfHealthyBudget`, the default) or always
//!   (`AlwaysAllow`).
//! - More than one budget for a pod is a 500; a budget not yet observed at its
//!   generation, or with no disruptions left, is a 429 with upstream's message and a
//!   `DisruptionBudget` cause; a budget whose status is too far behind is a 403.
//! - The eviction's `deleteOptions` (grace period, preconditions, dry run) apply to the
//!   delete.

use nanokube_api::error::Cause;
use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, resources, ApiError};
use serde_json::{json, Value};

use crate::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};

/// Most pods a budget may hold as disrupted-but-not-yet-deleted (upstream's
/// `MaxDisruptedPodSize`).
const MAX_DISRUPTED_PODS: usize = 2000;

fn budgets() -> &'static resources::ResourceDef {
    resources::find("policy", "v1", "poddisruptionbudgets").expect("built-in resource")
}

fn pods() -> &'static resources::ResourceDef {
    resources::find("", "v1", "pods").expect("built-in resource")
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c.get("type").and_then(Value::as_str) == Some("Ready") && c.get("status").and_then(Value::as_str) == Some("True")))
}

fn too_many_requests(message: &str, cause: Option<String>) -> ApiError {
    let mut e = ApiError::new(429, "TooManyRequests", message);
    if let Some(c) = cause {
        e.details.causes.push(Cause { reason: "DisruptionBudget".into(), message: c, field: String::new() });
    }
    e
}

/// Evict `name` in `namespace` as `eviction` asks; `opts` carries the requester and dry run.
pub async fn evict(registry: &Registry, namespace: &str, name: &str, eviction: &Value, opts: &WriteOptions) -> Result<Value, ApiError> {
    let body_name = meta::name(eviction);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!("name in URL does not match name in Eviction object: {name} != {body_name}")));
    }
    let pod = registry.get(pods(), namespace, name)?.to_value();
    let delete_options = eviction.get("deleteOptions").cloned().unwrap_or(Value::Null);
    let dry_run = opts.dry_run || delete_options.get("dryRun").and_then(Value::as_array).is_some_and(|d| d.iter().any(|x| x == "All"));
    let del = DeleteOptions {
        grace_period: delete_options.get("gracePeriodSeconds").and_then(Value::as_i64),
        precondition_uid: delete_options.pointer("/preconditions/uid").and_then(Value::as_str).map(String::from),
        precondition_rv: delete_options.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(String::from),
        dry_run,
        requester: opts.requester.clone(),
        ..Default::default()
    };
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
    if matches!(phase, "Pending" | "Succeeded" | "Failed" | "") || meta::is_deleting(&pod) {
        registry.delete(pods(), namespace, name, &del).await?;
        return Ok(success());
    }
    let labels = meta::labels(&pod);
    let matching: Vec<Value> = registry
        .list(budgets(), Some(namespace), &ListOptions::default())?
        .items
        .iter()
        .map(|b| b.to_value())
        .filter(|b| {
            LabelSelector::from_object(b.pointer("/spec/selector").unwrap_or(&Value::Null)).is_ok_and(|s| !s.requirements.is_empty() && s.matches(labels))
        })
        .collect();
    if matching.len() > 1 {
        return Err(ApiError::internal("This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."));
    }
    if let Some(pdb) = matching.first() {
        let healthy_enough = || {
            let st = |k: &str| pdb.pointer(&format!("/status/{k}")).and_then(Value::as_i64).unwrap_or(0);
            st("currentHealthy") >= st("desiredHealthy") && st("desiredHealthy") > 0
        };
        let policy = pdb.pointer("/spec/unhealthyPodEvictionPolicy").and_then(Value::as_str).unwrap_or("IfHealthyBudget");
        let unhealthy_free = !is_ready(&pod) && (policy == "AlwaysAllow" || healthy_enough());
        if !unhealthy_free {
            spend(registry, pdb, name, dry_run).await?;
        }
    }
    registry.delete(pods(), namespace, name, &del).await?;
    Ok(success())
}

/// Take one disruption from `pdb` for `pod` (upstream's `checkAndDecrement`), as a
/// compare-and-swap on the budget's version: a concurrent eviction retries on a fresh read.
async fn spend(registry: &Registry, pdb: &Value, pod: &str, dry_run: bool) -> Result<(), ApiError> {
    let (ns, name) = (meta::namespace(pdb).to_string(), meta::name(pdb).to_string());
    let check = |b: &Value| -> Result<(), ApiError> {
        let st = |k: &str| b.pointer(&format!("/status/{k}")).and_then(Value::as_i64).unwrap_or(0);
        let generation = b.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        if st("observedGeneration") < generation {
            return Err(too_many_requests(
                "Cannot evict pod as it would violate the pod's disruption budget.",
                Some(format!("The disruption budget {name} is still being processed by the server.")),
            ));
        }
        if st("disruptionsAllowed") < 0 {
            return Err(ApiError::forbidden("pdb disruptions allowed is negative"));
        }
        if b.pointer("/status/disruptedPods").and_then(Value::as_object).is_some_and(|m| m.len() > MAX_DISRUPTED_PODS) {
            return Err(ApiError::forbidden("DisruptedPods map too big - too many evictions not confirmed by PDB controller"));
        }
        if st("disruptionsAllowed") == 0 {
            return Err(too_many_requests(
                "Cannot evict pod as it would violate the pod's disruption budget.",
                Some(format!("The disruption budget {name} needs {} healthy pods and has {} currently", st("desiredHealthy"), st("currentHealthy"))),
            ));
        }
        Ok(())
    };
    if dry_run {
        return check(registry.get(budgets(), &ns, &name)?.value());
    }
    let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
    registry
        .update_with(budgets(), &ns, &name, &opts, |cur| {
            check(cur)?;
            let mut next = cur.clone();
            let allowed = cur.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0);
            next["status"]["disruptionsAllowed"] = json!(allowed - 1);
            let disrupted = next["status"].as_object_mut().map(|s| s.entry("disruptedPods").or_insert_with(|| json!({})));
            if let Some(m) = disrupted.and_then(Value::as_object_mut) {
                m.insert(pod.to_string(), json!(meta::now_rfc3339()));
            }
            Ok(next)
        })
        .await
        .map(|_| ())
}

/// What an eviction answers (201 Created).
fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}
