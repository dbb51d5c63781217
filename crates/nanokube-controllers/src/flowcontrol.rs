//! API Priority and Fairness configuration as kube-apiserver 1.33 keeps it: its
//! bootstrap FlowSchemas and PriorityLevelConfigurations (the config producer) and the
//! `Dangling` condition on every FlowSchema (the config consumer).
//!
//! The producer ([`ensure`], at start and whenever one of these objects changes):
//! - the two mandatory priority levels (`exempt`, `catch-all`) and FlowSchemas
//!   (`exempt`, `catch-all`) are created when missing and their spec put back whenever it
//!   differs, whatever their annotation;
//! - the suggested ones (`system`, `node-high`, `leader-election`, `workload-high`,
//!   `workload-low`, `global-default`; and eleven FlowSchemas from `probes` to
//!   `global-default`) are created when missing and kept to the bootstrap spec while
//!   `apf.kubernetes.io/autoupdate-spec` is true (or absent on an object never changed,
//!   `generation` 1); `"false"` leaves an edited one alone;
//! - objects annotated `autoupdate-spec: "true"` that are no longer part of the bootstrap
//!   set are deleted.
//!
//! The consumer ([`run`]) writes each FlowSchema's `Dangling` condition: `False`/`Found`
//! when the priority level it names exists, `True`/`NotFound` when not (the mandatory
//! levels always count as present, as upstream imagines them when they are missing).
//!
//! Requests are not queued by these objects: nanokube has no APF filter (its request
//! path bounds each client instead). The objects exist so that clients and tools that
//! read them (`kubectl get flowschemas`, dashboards, operators' tests) see upstream's.

use std::sync::{Arc, OnceLock};

use nanokube_api::resources::{self, ResourceDef};
use nanokube_api::{meta, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

/// The annotation that lets an edited suggested object keep its spec (`"false"`).
pub const AUTO_UPDATE: &str = "apf.kubernetes.io/autoupdate-spec";

fn def(plural: &str) -> &'static ResourceDef {
    resources::find("flowcontrol.apiserver.k8s.io", "v1", plural).expect("flowcontrol resource")
}

/// kube-apiserver 1.33's bootstrap configuration (`apiserver/pkg/apis/flowcontrol/bootstrap`).
pub struct Bootstrap {
    /// `exempt` and `catch-all`.
    pub mandatory_levels: Vec<Value>,
    /// The six suggested priority levels.
    pub suggested_levels: Vec<Value>,
    /// `exempt` and `catch-all`.
    pub mandatory_schemas: Vec<Value>,
    /// The eleven suggested FlowSchemas.
    pub suggested_schemas: Vec<Value>,
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, "annotations": {AUTO_UPDATE: "true"}},
        "spec": spec,
    })
}

/// A `Limited` level; `queuing` as (queues, handSize, queueLengthLimit), or `None` to
/// reject what does not fit.
fn limited(name: &str, shares: i32, lendable: i32, queuing: Option<(i32, i32, i32)>) -> Value {
    let response = match queuing {
        Some((queues, hand, length)) => json!({"type": "Queue", "queuing": {"queues": queues, "handSize": hand, "queueLengthLimit": length}}),
        None => json!({"type": "Reject"}),
    };
    object(
        "PriorityLevelConfiguration",
        name,
        json!({"type": "Limited", "limited": {"nominalConcurrencyShares": shares, "lendablePercent": lendable, "limitResponse": response}}),
    )
}

fn group(name: &str) -> Value {
    json!({"kind": "Group", "group": {"name": name}})
}

fn user(name: &str) -> Value {
    json!({"kind": "User", "user": {"name": name}})
}

fn kube_system_sa(name: &str) -> Value {
    json!({"kind": "ServiceAccount", "serviceAccount": {"namespace": "kube-system", "name": name}})
}

/// A resource rule over every namespace (and cluster-scoped objects when `cluster`).
fn resource_rule(verbs: &[&str], groups: &[&str], resources: &[&str], cluster: bool) -> Value {
    let mut rule = json!({"verbs": verbs, "apiGroups": groups, "resources": resources, "namespaces": ["*"]});
    if cluster {
        rule["clusterScope"] = json!(true);
    }
    rule
}

fn everything() -> (Vec<Value>, Vec<Value>) {
    (vec![resource_rule(&["*"], &["*"], &["*"], true)], vec![json!({"verbs": ["*"], "nonResourceURLs": ["*"]})])
}

fn schema(name: &str, level: &str, precedence: i32, distinguisher: Option<&str>, subjects: Vec<Value>, rules: (Vec<Value>, Vec<Value>)) -> Value {
    let mut with = json!({"subjects": subjects});
    if !rules.0.is_empty() {
        with["resourceRules"] = Value::Array(rules.0);
    }
    if !rules.1.is_empty() {
        with["nonResourceRules"] = Value::Array(rules.1);
    }
    let mut spec = json!({"priorityLevelConfiguration": {"name": level}, "matchingPrecedence": precedence, "rules": [with]});
    if let Some(d) = distinguisher {
        spec["distinguisherMethod"] = json!({"type": d});
    }
    object("FlowSchema", name, spec)
}

/// The bootstrap configuration (built once).
pub fn bootstrap() -> &'static Bootstrap {
    static BOOTSTRAP: OnceLock<Bootstrap> = OnceLock::new();
    BOOTSTRAP.get_or_init(|| {
        let (kcm, scheduler) = ("system:kube-controller-manager", "system:kube-scheduler");
        let all_users = || vec![group("system:unauthenticated"), group("system:authenticated")];
        let leases = |cluster| resource_rule(&["get", "create", "update"], &["coordination.k8s.io"], &["leases"], cluster);
        Bootstrap {
            mandatory_levels: vec![
                limited("catch-all", 5, 0, None),
                object("PriorityLevelConfiguration", "exempt", json!({"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}})),
            ],
            suggested_levels: vec![
                limited("system", 30, 33, Some((64, 6, 50))),
                limited("node-high", 40, 25, Some((64, 6, 50))),
                limited("leader-election", 10, 0, Some((16, 4, 50))),
                limited("workload-high", 40, 50, Some((128, 6, 50))),
                limited("workload-low", 100, 90, Some((128, 6, 50))),
                limited("global-default", 20, 50, Some((128, 6, 50))),
            ],
            mandatory_schemas: vec![
                schema("exempt", "exempt", 1, None, vec![group("system:masters")], everything()),
                schema("catch-all", "catch-all", 10000, Some("ByUser"), all_users(), everything()),
            ],
            suggested_schemas: vec![
                schema("system-nodes", "system", 500, Some("ByUser"), vec![group("system:nodes")], everything()),
                schema(
                    "system-node-high",
                    "node-high",
                    400,
                    Some("ByUser"),
                    vec![group("system:nodes")],
                    (
                        vec![
                            resource_rule(&["*"], &[""], &["nodes", "nodes/status"], true),
                            resource_rule(&["*"], &["coordination.k8s.io"], &["leases"], false),
                        ],
                        vec![],
                    ),
                ),
                schema(
                    "probes",
                    "exempt",
                    2,
                    None,
                    all_users(),
                    (vec![], vec![json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]})]),
                ),
                schema(
                    "system-leader-election",
                    "leader-election",
                    100,
                    Some("ByUser"),
                    vec![user(kcm), user(scheduler), kube_system_sa("*")],
                    (vec![leases(false)], vec![]),
                ),
                schema(
                    "workload-leader-election",
                    "leader-election",
                    200,
                    Some("ByUser"),
                    vec![kube_system_sa("*")],
                    (vec![resource_rule(&["get", "create", "update"], &[""], &["endpoints", "configmaps"], false), leases(false)], vec![]),
                ),
                schema(
                    "endpoint-controller",
                    "workload-high",
                    150,
                    Some("ByUser"),
                    vec![user(kcm), kube_system_sa("endpoint-controller"), kube_system_sa("endpointslicemirroring-controller")],
                    (vec![resource_rule(&["get", "create", "update"], &[""], &["endpoints"], false)], vec![]),
                ),
                schema("kube-controller-manager", "workload-high", 800, Some("ByNamespace"), vec![user(kcm)], everything()),
                schema("kube-scheduler", "workload-high", 800, Some("ByNamespace"), vec![user(scheduler)], everything()),
                schema("kube-system-service-accounts", "workload-high", 900, Some("ByNamespace"), vec![kube_system_sa("*")], everything()),
                schema("service-accounts", "workload-low", 9000, Some("ByUser"), vec![group("system:serviceaccounts")], everything()),
                schema("global-default", "global-default", 9900, Some("ByUser"), all_users(), everything()),
            ],
        }
    })
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn auto_update(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations").and_then(|a| a.get(AUTO_UPDATE)).and_then(Value::as_str)
}

/// Whether a suggested object's spec is kept to the bootstrap one (upstream's
/// `shouldUpdateSpec`): the annotation says so, or, without a readable one, the object
/// was never changed.
fn should_update_spec(cur: &Value) -> bool {
    match auto_update(cur).and_then(parse_bool) {
        Some(b) => b,
        None => cur.pointer("/metadata/generation").and_then(Value::as_i64) == Some(1),
    }
}

/// `want`'s fields all present in `have` with equal values (lists element by element):
/// what the server adds by defaulting does not count as a difference.
fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, v)| h.get(k).is_some_and(|hv| covers(hv, v))),
        (Value::Array(h), Value::Array(w)) => h.len() == w.len() && h.iter().zip(w).all(|(a, b)| covers(a, b)),
        _ => have == want,
    }
}

/// What to write to `cur` so that it follows `boot`, if anything.
fn revise(cur: &Value, boot: &Value, mandatory: bool) -> Option<Value> {
    let auto = mandatory || should_update_spec(cur);
    let annotate = auto_update(cur).and_then(parse_bool) != Some(auto);
    let respec = auto && !covers(&cur["spec"], &boot["spec"]);
    if !annotate && !respec {
        return None;
    }
    let mut next = cur.clone();
    if respec {
        next["spec"] = boot["spec"].clone();
    }
    if annotate {
        let annotations = meta::metadata_mut(&mut next).entry("annotations").or_insert_with(|| json!({}));
        if !annotations.is_object() {
            *annotations = json!({});
        }
        annotations[AUTO_UPDATE] = json!(auto.to_string());
    }
    Some(next)
}

/// Create what is missing of the bootstrap configuration, put back what drifted, and
/// delete auto-updated objects that are no longer part of it (see the module docs).
pub async fn ensure(registry: &Arc<Registry>) -> Result<(), ApiError> {
    let b = bootstrap();
    let mut writes = tokio::task::JoinSet::new();
    let sets = [
        ("prioritylevelconfigurations", &b.mandatory_levels, true),
        ("prioritylevelconfigurations", &b.suggested_levels, false),
        ("flowschemas", &b.mandatory_schemas, true),
        ("flowschemas", &b.suggested_schemas, false),
    ];
    for (plural, objects, mandatory) in sets {
        let d = def(plural);
        for boot in objects.iter() {
            let name = meta::name(boot).to_string();
            let r = registry.clone();
            match registry.get(d, "", &name) {
                Err(e) if e.code == 404 => {
                    let obj = boot.clone();
                    writes.spawn(async move { r.create(d, "", obj, &WriteOptions::default()).await.map(|_| ()) });
                }
                Err(e) => return Err(e),
                Ok(cur) => {
                    if cur.with_value(|v| revise(v, boot, mandatory)).is_none() {
                        continue;
                    }
                    writes.spawn(async move {
                        r.update_with(d, "", &name, &WriteOptions::default(), |cur| {
                            let mut next = revise(cur, boot, mandatory).unwrap_or_else(|| cur.clone());
                            meta::metadata_mut(&mut next).remove("resourceVersion");
                            Ok(next)
                        })
                        .await
                        .map(|_| ())
                    });
                }
            }
        }
    }
    for plural in ["prioritylevelconfigurations", "flowschemas"] {
        let d = def(plural);
        let wanted: Vec<&str> = if plural == "flowschemas" {
            b.mandatory_schemas.iter().chain(&b.suggested_schemas).map(meta::name).collect()
        } else {
            b.mandatory_levels.iter().chain(&b.suggested_levels).map(meta::name).collect()
        };
        for obj in registry.list(d, None, &Default::default())?.items {
            let (name, unwanted) = obj.with_value(|v| {
                let name = meta::name(v).to_string();
                let auto = auto_update(v).and_then(parse_bool) == Some(true);
                (name.clone(), auto && !wanted.contains(&name.as_str()))
            });
            if unwanted {
                let r = registry.clone();
                writes.spawn(async move { r.delete(d, "", &name, &DeleteOptions::default()).await.map(|_| ()) });
            }
        }
    }
    crate::join_writes(&mut writes, &[404, 409]).await
}

/// The `Dangling` condition a FlowSchema should have, as (status, reason, message).
fn dangling(schema: &Value, levels: &[String]) -> (&'static str, &'static str, String) {
    let level = schema.pointer("/spec/priorityLevelConfiguration/name").and_then(Value::as_str).unwrap_or("");
    // The mandatory levels are imagined by upstream's consumer when they are missing.
    if levels.iter().any(|l| l == level) || level == "exempt" || level == "catch-all" {
        ("False", "Found", format!("This FlowSchema references the PriorityLevelConfiguration object named {level:?} and it exists"))
    } else {
        ("True", "NotFound", format!("This FlowSchema references the PriorityLevelConfiguration object named {level:?} but there is no such object"))
    }
}

/// Bring every FlowSchema's `Dangling` condition up to date.
pub async fn sync_status(registry: &Arc<Registry>) -> Result<(), ApiError> {
    let levels: Vec<String> = registry
        .list(def("prioritylevelconfigurations"), None, &Default::default())?
        .items
        .iter()
        .map(|o| o.with_value(|v| meta::name(v).to_string()))
        .collect();
    let schemas = def("flowschemas");
    let mut writes = tokio::task::JoinSet::new();
    for obj in registry.list(schemas, None, &Default::default())?.items {
        let (name, want, current_ok) = obj.with_value(|v| {
            let want = dangling(v, &levels);
            let cur = v.pointer("/status/conditions").and_then(Value::as_array).and_then(|cs| cs.iter().find(|c| c["type"] == "Dangling"));
            let ok = cur.is_some_and(|c| c["status"] == want.0 && c["reason"] == want.1 && c["message"] == want.2.as_str());
            (meta::name(v).to_string(), want, ok)
        });
        if current_ok {
            continue;
        }
        let r = registry.clone();
        writes.spawn(async move {
            let opts = WriteOptions { subresource: Some("status".into()), ..Default::default() };
            let condition = json!({"type": "Dangling", "status": want.0, "lastTransitionTime": meta::now_rfc3339(), "reason": want.1, "message": want.2});
            r.update_with(schemas, "", &name, &opts, |cur| {
                let mut next = cur.clone();
                let mut conditions: Vec<Value> = cur.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
                conditions.retain(|c| c["type"] != "Dangling");
                conditions.push(condition.clone());
                next["status"] = json!({"conditions": conditions});
                meta::metadata_mut(&mut next).remove("resourceVersion");
                Ok(next)
            })
            .await
            .map(|_| ())
        });
    }
    crate::join_writes(&mut writes, &[404, 409]).await
}

async fn reconcile(registry: &Arc<Registry>) {
    if let Err(e) = ensure(registry).await {
        tracing::warn!(error = %e, "ensuring the API Priority and Fairness configuration failed");
    }
    if let Err(e) = sync_status(registry).await {
        tracing::warn!(error = %e, "writing FlowSchemas' Dangling condition failed");
    }
}

/// Keep the configuration and the FlowSchemas' status current until `shutdown`: both
/// write only what differs, so their own writes end the loop.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let store = registry.store().clone();
    let (schemas, levels) = (def("flowschemas").key_prefix(), def("prioritylevelconfigurations").key_prefix());
    loop {
        let from = store.current_revision();
        reconcile(&registry).await;
        // One watch per kind: the two share no prefix but `/registry/`, and following
        // that would wake this task on every write in the cluster.
        let (Ok(mut s), Ok(mut l)) = (store.watch(&schemas, from), store.watch(&levels, from)) else { continue };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                ev = s.next() => match ev {
                    Some(Ok(_)) => reconcile(&registry).await,
                    _ => break,
                },
                ev = l.next() => match ev {
                    Some(Ok(_)) => reconcile(&registry).await,
                    _ => break,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_set_is_upstreams() {
        let b = bootstrap();
        let names = |v: &[Value]| v.iter().map(|o| meta::name(o).to_string()).collect::<Vec<_>>();
        assert_eq!(names(&b.mandatory_levels), ["catch-all", "exempt"]);
        assert_eq!(names(&b.suggested_levels), ["system", "node-high", "leader-election", "workload-high", "workload-low", "global-default"]);
        assert_eq!(b.mandatory_schemas.len() + b.suggested_schemas.len(), 13);
        // Every FlowSchema names a level of the set.
        let levels: Vec<String> = names(&b.mandatory_levels).into_iter().chain(names(&b.suggested_levels)).collect();
        for fs in b.mandatory_schemas.iter().chain(&b.suggested_schemas) {
            assert_eq!(dangling(fs, &levels).0, "False", "{fs}");
        }
    }

    #[test]
    fn suggested_objects_follow_the_annotation_and_mandatory_ones_always_return() {
        let boot = &bootstrap().suggested_levels[0];
        let mut edited = boot.clone();
        edited["spec"]["limited"]["nominalConcurrencyShares"] = json!(99);
        edited["metadata"]["generation"] = json!(2);
        // Annotated true: put back.
        assert_eq!(revise(&edited, boot, false).unwrap()["spec"], boot["spec"]);
        // Opted out: left alone.
        edited["metadata"]["annotations"][AUTO_UPDATE] = json!("false");
        assert!(revise(&edited, boot, false).is_none());
        // No annotation on an edited object: left alone, and annotated "false".
        edited["metadata"]["annotations"] = json!({});
        let next = revise(&edited, boot, false).unwrap();
        assert_eq!(
            (next["spec"]["limited"]["nominalConcurrencyShares"].clone(), next["metadata"]["annotations"][AUTO_UPDATE].clone()),
            (json!(99), json!("false"))
        );
        // A mandatory one is put back and annotated "true" whatever it says.
        let mandatory = &bootstrap().mandatory_levels[0];
        let mut opted = mandatory.clone();
        opted["spec"]["limited"]["nominalConcurrencyShares"] = json!(1);
        opted["metadata"]["annotations"][AUTO_UPDATE] = json!("false");
        let next = revise(&opted, mandatory, true).unwrap();
        assert_eq!((next["spec"].clone(), next["metadata"]["annotations"][AUTO_UPDATE].clone()), (mandatory["spec"].clone(), json!("true")));
        // Defaults the server adds are no difference.
        let mut defaulted = boot.clone();
        defaulted["spec"]["limited"]["borrowingLimitPercent"] = json!(null);
        assert!(revise(&defaulted, boot, false).is_none());
    }
}
