//! kube-controller-manager's resource quota controller: every ResourceQuota's
//! `status.hard` (its spec's) and `status.used`, counted from what is stored in its
//! namespace (pods that have not finished, with the quota's scopes; services, node ports
//! and load balancers; claims and their storage, per class too; config maps, secrets;
//! `count/<resource>[.<group>]` of any resource). Admission charges `used` as objects
//! are created; this recount gives back what deletes and finished pods took (at once)
//! and what creates that failed after admission took (at the 5-minute resync).

use std::sync::Arc;
use std::time::Duration;

use nanokube_api::quota::{self, Usage};
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{ListOptions, Registry};
use nanokube_store::EventKind;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::objects::def;
use crate::workqueue::Observed;
use crate::workqueue::WorkQueue;

const COMPONENT: &str = "resourcequota-controller";
/// The kinds whose objects quotas count by more than their number.
const COUNTED: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("", "persistentvolumeclaims"),
    ("", "configmaps"),
    ("", "secrets"),
    ("", "replicationcontrollers"),
    ("", "resourcequotas"),
];
/// A full recount of every namespace this often (upstream's `--resource-quota-sync-period`).
const RESYNC: Duration = Duration::from_secs(300);

fn quotas() -> &'static resources::ResourceDef {
    def("", "resourcequotas")
}

/// The controller.
pub struct QuotaController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
}

impl QuotaController {
    /// A controller acting through `registry`.
    pub fn new(registry: Arc<Registry>) -> Arc<QuotaController> {
        Arc::new(QuotaController { registry, queue: WorkQueue::new() })
    }

    /// Run until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes: Vec<String> = COUNTED.iter().map(|(g, p)| def(g, p).key_prefix()).collect();
        let me = self.clone();
        let mut sd = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sd.changed() => return,
                    _ = tokio::time::sleep(RESYNC) => me.enqueue_all(),
                }
            }
        });
        crate::workqueue::run(self.clone(), &store, &queue, COMPONENT, &prefixes, shutdown, Self::enqueue_all, Self::observe, |me, key| async move {
            me.sync(&key).await
        })
        .await
    }

    /// Every namespace with a quota.
    fn enqueue_all(&self) {
        if let Ok(list) = self.registry.list(quotas(), None, &ListOptions::default()) {
            for q in &list.items {
                self.queue.add(meta::namespace(q.value()));
            }
        }
    }

    /// Recount on what gives usage back or changes it (upstream's replenishment): a new
    /// quota or new limits, a delete, an update that changes an object's usage (a pod
    /// that finished). Not on creates, which admission charges, nor on the charge itself
    /// (a quota's `used`): a recount then could read the store before the admitted
    /// object is in it and undo its charge.
    fn observe(&self, change: &Observed) {
        // Only namespaces that have quotas are counted: elsewhere a change of anything but
        // a quota is not looked into.
        if !change.is("ResourceQuota") && (change.kind == EventKind::Created || !crate::workqueue::any_in(&self.registry, quotas(), &change.namespace)) {
            return;
        }
        let v = change.value();
        let ns = meta::namespace(v);
        let quota_changed = change.is("ResourceQuota")
            && (change.kind == EventKind::Created
                || change.prev.as_ref().is_none_or(|p| p.value().pointer("/spec/hard") != v.pointer("/spec/hard"))
                || v.pointer("/status/hard") != v.pointer("/spec/hard"));
        let relevant = quota_changed
            || !change.is("ResourceQuota")
                && match change.kind {
                    EventKind::Created => false,
                    EventKind::Deleted => true,
                    EventKind::Updated => {
                        let plural = resources::find_kind("", v.get("kind").and_then(Value::as_str).unwrap_or("")).map(|d| d.plural).unwrap_or("");
                        change.prev.as_ref().is_none_or(|p| quota::usage_of("", plural, p.value()) != quota::usage_of("", plural, v))
                    }
                };
        // Only namespaces that have quotas are counted.
        if relevant
            && (quota_changed || self.registry.list(quotas(), Some(ns), &ListOptions { limit: 1, ..Default::default() }).is_ok_and(|l| !l.items.is_empty()))
        {
            self.queue.add(ns);
        }
    }

    async fn sync(&self, ns: &str) -> Result<(), ApiError> {
        let list = self.registry.list(quotas(), Some(ns), &ListOptions::default())?;
        if list.items.is_empty() {
            return Ok(());
        }
        let objects: Vec<(&str, &str, Vec<Value>)> = COUNTED
            .iter()
            .map(|(g, p)| {
                let items = self
                    .registry
                    .list(def(g, p), Some(ns), &ListOptions::default())
                    .map(|l| l.items.iter().map(|o| o.to_value()).collect())
                    .unwrap_or_default();
                (*g, *p, items)
            })
            .collect();
        for q in &list.items {
            let q = q.value();
            let hard = quota::from_json(q.pointer("/spec/hard"));
            let scopes = quota::scopes_of(q);
            let mut used: Usage = hard.keys().map(|k| (k.clone(), 0.0)).collect();
            for (g, p, items) in &objects {
                for o in items {
                    if !quota::quota_counts(&scopes, g, p, o) {
                        continue;
                    }
                    for (k, v) in quota::usage_of(g, p, o) {
                        if let Some(u) = used.get_mut(&k) {
                            *u += v;
                        }
                    }
                }
            }
            // `count/<resource>[.<group>]` of kinds counted by number only.
            for key in hard.keys().filter_map(|k| k.strip_prefix("count/")) {
                let (plural, group) = key.split_once('.').unwrap_or((key, ""));
                if COUNTED.contains(&(group, plural)) {
                    continue;
                }
                // Built-in resources (every built-in group has one version served here).
                let Some(d) = resources::BUILTIN.iter().find(|r| r.group == group && r.plural == plural) else { continue };
                let n = self.registry.list(d, Some(ns), &ListOptions::default()).map(|l| l.items.len()).unwrap_or(0);
                used.insert(format!("count/{key}"), n as f64);
            }
            let status = json!({"hard": q.pointer("/spec/hard").cloned().unwrap_or(json!({})), "used": quota::to_json(&used)});
            crate::objects::write_status(&self.registry, quotas(), q, status).await?;
        }
        Ok(())
    }
}
