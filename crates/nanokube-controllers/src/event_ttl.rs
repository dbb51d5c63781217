//! Events expire an hour after they were last written (kube-apiserver's `--event-ttl`,
//! which upstream keeps as an etcd lease on each Event): a sweep every minute deletes
//! the older ones, so `kubectl get events` shows the last hour as on a real cluster.

use std::sync::Arc;
use std::time::Duration;

use nanokube_api::meta;
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry};
use serde_json::Value;
use tokio::sync::watch;

use crate::objects::def;

/// How long an Event lives after its last write.
pub const TTL: Duration = Duration::from_secs(3600);
const PERIOD: Duration = Duration::from_secs(60);

/// When an Event was last written: its `lastTimestamp`, `eventTime`, `series`' last
/// observation, or its creation.
fn last_written(ev: &Value) -> Option<time::OffsetDateTime> {
    ["/series/lastObservedTime", "/lastTimestamp", "/eventTime", "/metadata/creationTimestamp"]
        .iter()
        .filter_map(|p| ev.pointer(p).and_then(Value::as_str).and_then(meta::parse_time))
        .max()
}

/// Sweep until `shutdown`.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => sweep(&registry, time::OffsetDateTime::now_utc()).await,
        }
    }
}

/// Delete every Event last written more than [`TTL`] before `now`.
pub async fn sweep(registry: &Registry, now: time::OffsetDateTime) {
    let Ok(list) = registry.list(def("", "events"), None, &ListOptions::default()) else { return };
    let ttl = time::Duration::seconds(TTL.as_secs() as i64);
    for obj in &list.items {
        // Decoded for the check and let go (not kept for the whole pass).
        let expired =
            obj.with_value(|ev| last_written(ev).is_some_and(|t| now - t > ttl).then(|| (meta::namespace(ev).to_string(), meta::name(ev).to_string())));
        if let Some((ns, name)) = expired {
            let _ = registry.delete(def("", "events"), &ns, &name, &DeleteOptions::default()).await;
        }
    }
}
