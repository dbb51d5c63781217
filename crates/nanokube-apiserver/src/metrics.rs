//! `/metrics` in the Prometheus text format, with upstream's metric names where upstream
//! has them: `apiserver_request_total`, `apiserver_request_duration_seconds`,
//! `apiserver_current_inflight_requests`, `apiserver_registered_watchers`,
//! `apiserver_storage_objects`; plus `nanokube_store_*` for commits and their latency
//! (one fsync each).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use nanokube_store::Backend;

/// Request-duration buckets (seconds), upstream's plus finer ones at the low end, where
/// nanokube's requests are.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 10.0, 30.0, 60.0];

/// Labels of a request: verb, group, version, resource, subresource, scope.
type RequestKey = (String, String, String, String, String, &'static str);

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// The server's metrics.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(RequestKey, u16), u64>>,
    durations: Mutex<BTreeMap<RequestKey, Histogram>>,
    watchers: Mutex<BTreeMap<(String, String, String), i64>>,
    inflight_read: AtomicI64,
    inflight_mutating: AtomicI64,
}

/// Guards an in-flight request; decrements on drop.
pub struct Inflight<'a> {
    gauge: &'a AtomicI64,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Guards a registered watcher; unregisters on drop.
pub struct WatchGuard {
    metrics: std::sync::Arc<Metrics>,
    key: (String, String, String),
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Some(n) = self.metrics.watchers.lock().expect("metrics").get_mut(&self.key) {
            *n -= 1;
        }
    }
}

/// Upstream's verb label: upper-case, LIST and WATCH distinguished.
fn verb_label(verb: &str) -> String {
    match verb {
        "get" => "GET",
        "list" => "LIST",
        "watch" => "WATCH",
        "create" => "POST",
        "update" => "PUT",
        "patch" => "PATCH",
        "delete" => "DELETE",
        "deletecollection" => "DELETE",
        "connect" => "CONNECT",
        "post" => "POST",
        "put" => "PUT",
        "head" => "HEAD",
        "options" => "OPTIONS",
        // Any other method a client makes up is one label, not one per spelling.
        _ => "other",
    }
    .to_string()
}

/// Subresources that exist; anything else a path names is counted as `other`.
const SUBRESOURCES: &[&str] = &[
    "",
    "status",
    "scale",
    "finalize",
    "token",
    "log",
    "exec",
    "attach",
    "portforward",
    "proxy",
    "binding",
    "eviction",
    "ephemeralcontainers",
    "approval",
    "resize",
];

impl Metrics {
    /// Count a request as in flight until the guard drops.
    pub fn inflight(&self, mutating: bool) -> Inflight<'_> {
        let gauge = if mutating { &self.inflight_mutating } else { &self.inflight_read };
        gauge.fetch_add(1, Ordering::AcqRel);
        Inflight { gauge }
    }

    /// Register a watcher of a kind until the guard drops.
    pub fn watcher(self: &std::sync::Arc<Self>, group: &str, version: &str, kind: &str) -> WatchGuard {
        let key = (group.to_string(), version.to_string(), kind.to_string());
        *self.watchers.lock().expect("metrics").entry(key.clone()).or_insert(0) += 1;
        WatchGuard { metrics: self.clone(), key }
    }

    /// Record a finished request. `known` says whether the request named a resource the
    /// server serves: the labels of every other request are collapsed (resource, group
    /// and version empty, subresource `other`), so clients cannot grow the metrics
    /// without bound by making up paths, as upstream's labels are bounded too.
    pub fn record(&self, info: &crate::request::RequestInfo, known: bool, code: u16, seconds: f64) {
        let scope = if !info.is_resource {
            ""
        } else if !info.name.is_empty() {
            "resource"
        } else if !info.namespace.is_empty() {
            "namespace"
        } else {
            "cluster"
        };
        let verb = verb_label(&info.verb);
        let subresource = if SUBRESOURCES.contains(&info.subresource.as_str()) { info.subresource.clone() } else { "other".into() };
        let key: RequestKey = match (info.is_resource, known) {
            (true, true) => (verb, info.group.clone(), info.version.clone(), info.resource.clone(), subresource, scope),
            (true, false) => (verb, String::new(), String::new(), String::new(), "other".into(), scope),
            (false, _) => (verb, String::new(), String::new(), String::new(), String::new(), scope),
        };
        *self.requests.lock().expect("metrics").entry((key.clone(), code)).or_insert(0) += 1;
        let mut d = self.durations.lock().expect("metrics");
        let h = d.entry(key).or_insert_with(|| Histogram { counts: vec![0; BUCKETS.len()], ..Default::default() });
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The text exposition.
    pub fn render(&self, store: &dyn Backend, table: &nanokube_api::resources::ResourceTable) -> String {
        let mut out = String::new();
        let labels = |k: &RequestKey| {
            format!(
                "component=\"apiserver\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"",
                k.1, k.3, k.5, k.4, k.0, k.2
            )
        };
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.\n# TYPE apiserver_request_total counter\n");
        for ((k, code), n) in self.requests.lock().expect("metrics").iter() {
            let _ = writeln!(out, "apiserver_request_total{{code=\"{code}\",{}}} {n}", labels(k));
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for (k, h) in self.durations.lock().expect("metrics").iter() {
            let l = labels(k);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "apiserver_request_duration_seconds_sum{{{l}}} {}", h.sum);
            let _ = writeln!(out, "apiserver_request_duration_seconds_count{{{l}}} {}", h.count);
        }
        out.push_str("# HELP apiserver_current_inflight_requests Maximal number of currently used inflight request limit of this apiserver per request kind in last second.\n# TYPE apiserver_current_inflight_requests gauge\n");
        let _ = writeln!(out, "apiserver_current_inflight_requests{{request_kind=\"mutating\"}} {}", self.inflight_mutating.load(Ordering::Relaxed));
        let _ = writeln!(out, "apiserver_current_inflight_requests{{request_kind=\"readOnly\"}} {}", self.inflight_read.load(Ordering::Relaxed));
        out.push_str(
            "# HELP apiserver_registered_watchers Number of currently registered watchers for a given resources\n# TYPE apiserver_registered_watchers gauge\n",
        );
        for ((g, v, kind), n) in self.watchers.lock().expect("metrics").iter() {
            let _ = writeln!(out, "apiserver_registered_watchers{{group=\"{g}\",kind=\"{kind}\",version=\"{v}\"}} {n}");
        }
        out.push_str(
            "# HELP apiserver_storage_objects Number of stored objects at the time of last check split by kind.\n# TYPE apiserver_storage_objects gauge\n",
        );
        for d in table.stored() {
            let name = if d.group.is_empty() { d.plural.to_string() } else { format!("{}.{}", d.plural, d.group) };
            let _ = writeln!(out, "apiserver_storage_objects{{resource=\"{name}\"}} {}", store.count(&d.key_prefix()));
        }
        let st = store.stats();
        out.push_str("# HELP nanokube_store_commits_total Transactions committed (each one fsync).\n# TYPE nanokube_store_commits_total counter\n");
        let _ = writeln!(out, "nanokube_store_commits_total {}", st.commits);
        out.push_str("# HELP nanokube_store_writes_total Writes acknowledged; more than commits when group commit batches them.\n# TYPE nanokube_store_writes_total counter\n");
        let _ = writeln!(out, "nanokube_store_writes_total {}", st.writes);
        out.push_str(
            "# HELP nanokube_store_commit_duration_seconds Time to write and fsync one commit.\n# TYPE nanokube_store_commit_duration_seconds histogram\n",
        );
        for (b, c) in st.commit_buckets.iter().zip(&st.commit_counts) {
            let _ = writeln!(out, "nanokube_store_commit_duration_seconds_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "nanokube_store_commit_duration_seconds_bucket{{le=\"+Inf\"}} {}", st.commits);
        let _ = writeln!(out, "nanokube_store_commit_duration_seconds_sum {}", st.commit_seconds_sum);
        let _ = writeln!(out, "nanokube_store_commit_duration_seconds_count {}", st.commits);
        let _ = writeln!(
            out,
            "# HELP nanokube_store_revision The store's current revision.\n# TYPE nanokube_store_revision gauge\nnanokube_store_revision {}",
            store.current_revision()
        );
        out
    }
}
