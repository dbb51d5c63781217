//! API Priority and Fairness: kube-apiserver's request filter (`WithPriorityAndFairness`).
//!
//! Every request that is not long-running is classified, after authentication and
//! impersonation and before authorization, by the FlowSchemas (lowest
//! `matchingPrecedence` first, then name) into a priority level. Exempt levels run
//! everything at once. A limited level runs at most its share of the server's
//! concurrency (`ceil(serverCL × shares / Σ shares)`, where serverCL is
//! `--max-requests-inflight` + `--max-mutating-requests-inflight`); past that it refuses
//! (`limitResponse: Reject`) or queues: each flow (the FlowSchema and its distinguisher:
//! user name or namespace) is dealt a hand of queues by shuffle sharding and waits in the
//! shortest, queues are served by fair queuing, and a request is refused with 429 when
//! its queue is full or it has waited 15 s (a quarter of the request timeout). Responses
//! carry the UIDs of the FlowSchema and priority level that classified them.
//!
//! The configuration follows the two kinds in the store, as upstream's config
//! controller; the mandatory `exempt` and `catch-all` objects are supplied while absent.
//!
//! Differences from upstream, each visible only under load: every request takes one
//! seat (upstream estimates more for large lists and for writes with many watchers), the
//! fair queuing is self-clocked (start tags from the last dispatched request) rather than
//! upstream's virtual time R(t), and levels keep their nominal limit (upstream lends and
//! borrows seats between levels every 10 s).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::Value;

use crate::authn::UserInfo;
use crate::http::Body;
use crate::request::RequestInfo;

/// kube-apiserver's default server concurrency: `--max-requests-inflight` (400) plus
/// `--max-mutating-requests-inflight` (200).
pub const DEFAULT_SERVER_CONCURRENCY: u32 = 600;

/// How long a request may wait in a queue: a quarter of the 60 s request timeout, as
/// upstream's `getRequestWaitContext`.
pub const QUEUE_WAIT: Duration = Duration::from_secs(15);

/// Upstream's cap on `Retry-After` (seconds).
const MAX_RETRY_AFTER: i64 = 32;

/// The response headers naming what classified a request (UIDs, not names, as upstream).
pub const FLOW_SCHEMA_UID_HEADER: &str = "x-kubernetes-pf-flowschema-uid";
/// See [`FLOW_SCHEMA_UID_HEADER`].
pub const PRIORITY_LEVEL_UID_HEADER: &str = "x-kubernetes-pf-prioritylevel-uid";

/// What classified a request.
#[derive(Debug, Clone, Default)]
pub struct Classification {
    /// The matching FlowSchema's UID.
    pub flow_schema_uid: String,
    /// Its priority level's UID.
    pub priority_level_uid: String,
}

impl Classification {
    /// Put the two `X-Kubernetes-PF-*` headers on a response.
    pub fn set_headers(&self, headers: &mut http::HeaderMap) {
        for (name, value) in [(PRIORITY_LEVEL_UID_HEADER, &self.priority_level_uid), (FLOW_SCHEMA_UID_HEADER, &self.flow_schema_uid)] {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        }
    }
}

/// The filter's answer for one request.
pub enum Admission {
    /// Run it; the seat (none for exempt levels) is held until dropped.
    Run(Classification, Option<Seat>),
    /// Refused: answer [`too_many_requests`] with this `Retry-After`.
    Rejected(Classification, i64),
}

/// Requests the filter lets through untracked, as upstream's long-running check
/// (`BasicLongRunningRequestCheck`): proxies, and the exec/attach/port-forward/log
/// subresources. Watches are not among them: they hold a seat until they start.
pub fn is_long_running(info: &RequestInfo) -> bool {
    info.verb == "proxy" || (info.is_resource && matches!(info.subresource.as_str(), "attach" | "exec" | "proxy" | "log" | "portforward"))
}

/// The refusal, exactly as upstream's `tooManyRequests`: plain text, not a Status.
pub fn too_many_requests(retry_after: i64) -> Response<Body> {
    let mut r = Response::new(crate::http::full(Bytes::from_static(b"Too many requests, please try again later.\n")));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        h.insert(http::header::RETRY_AFTER, v);
    }
    r
}

// ---- configuration, parsed from the API objects ----

enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

impl Subject {
    fn parse(v: &Value) -> Option<Subject> {
        let name = |k: &str| v.get(k)?.get("name")?.as_str().map(str::to_string);
        match v.get("kind")?.as_str()? {
            "User" => Some(Subject::User(name("user")?)),
            "Group" => Some(Subject::Group(name("group")?)),
            "ServiceAccount" => {
                Some(Subject::ServiceAccount { namespace: v["serviceAccount"]["namespace"].as_str()?.to_string(), name: name("serviceAccount")? })
            }
            _ => None,
        }
    }

    fn matches(&self, user: &UserInfo) -> bool {
        match self {
            Subject::User(n) => n == "*" || *n == user.name,
            Subject::Group(g) => g == "*" || user.groups.iter().any(|x| x == g),
            Subject::ServiceAccount { namespace, name } => {
                let Some(rest) = user.name.strip_prefix("system:serviceaccount:").and_then(|r| r.strip_prefix(namespace.as_str())) else {
                    return false;
                };
                match rest.strip_prefix(':') {
                    Some(sa) => name == "*" || sa == name,
                    None => false,
                }
            }
        }
    }
}

/// `x` is listed, or the list is exactly the wildcard (upstream's `containsString`).
fn contains(list: &[String], x: &str, wildcard: &str) -> bool {
    (list.len() == 1 && list[0] == wildcard) || list.iter().any(|y| y == x)
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key).and_then(Value::as_array).map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

struct ResourceRule {
    verbs: Vec<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    cluster_scope: bool,
    namespaces: Vec<String>,
}

struct NonResourceRule {
    verbs: Vec<String>,
    urls: Vec<String>,
}

impl NonResourceRule {
    fn matches(&self, info: &RequestInfo) -> bool {
        contains(&self.verbs, &info.verb, "*")
            && self.urls.iter().any(|rule| {
                if rule == "*" || *rule == info.path {
                    return true;
                }
                // "/healthz" and "/healthz/*" both cover what is under "/healthz/".
                let mut prefix = rule.trim_end_matches('*').to_string();
                if !prefix.ends_with('/') {
                    prefix.push('/');
                }
                info.path.starts_with(&prefix)
            })
    }
}

impl ResourceRule {
    fn matches(&self, info: &RequestInfo) -> bool {
        let resource = if info.subresource.is_empty() { info.resource.clone() } else { format!("{}/{}", info.resource, info.subresource) };
        contains(&self.verbs, &info.verb, "*")
            && contains(&self.resources, &resource, "*")
            && contains(&self.groups, &info.group, "*")
            && if info.namespace.is_empty() { self.cluster_scope } else { contains(&self.namespaces, &info.namespace, "*") }
    }
}

struct PolicyRules {
    subjects: Vec<Subject>,
    resource_rules: Vec<ResourceRule>,
    non_resource_rules: Vec<NonResourceRule>,
}

impl PolicyRules {
    fn matches(&self, user: &UserInfo, info: &RequestInfo) -> bool {
        self.subjects.iter().any(|s| s.matches(user))
            && if info.is_resource { self.resource_rules.iter().any(|r| r.matches(info)) } else { self.non_resource_rules.iter().any(|r| r.matches(info)) }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Distinguisher {
    None,
    ByUser,
    ByNamespace,
}

struct Schema {
    name: String,
    uid: String,
    precedence: i64,
    level: String,
    distinguisher: Distinguisher,
    rules: Vec<PolicyRules>,
}

impl Schema {
    fn parse(obj: &Value) -> Option<Schema> {
        let spec = obj.get("spec")?;
        let rules = spec
            .get("rules")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|r| PolicyRules {
                subjects: r.get("subjects").and_then(Value::as_array).map(|a| a.iter().filter_map(Subject::parse).collect()).unwrap_or_default(),
                resource_rules: r
                    .get("resourceRules")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|rr| ResourceRule {
                                verbs: strings(rr, "verbs"),
                                groups: strings(rr, "apiGroups"),
                                resources: strings(rr, "resources"),
                                cluster_scope: rr.get("clusterScope").and_then(Value::as_bool).unwrap_or(false),
                                namespaces: strings(rr, "namespaces"),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                non_resource_rules: r
                    .get("nonResourceRules")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|nr| NonResourceRule { verbs: strings(nr, "verbs"), urls: strings(nr, "nonResourceURLs") }).collect())
                    .unwrap_or_default(),
            })
            .collect();
        Some(Schema {
            name: obj["metadata"]["name"].as_str()?.to_string(),
            uid: obj["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            precedence: spec.get("matchingPrecedence").and_then(Value::as_i64).unwrap_or(1000),
            level: spec["priorityLevelConfiguration"]["name"].as_str()?.to_string(),
            distinguisher: match spec["distinguisherMethod"]["type"].as_str() {
                Some("ByUser") => Distinguisher::ByUser,
                Some("ByNamespace") => Distinguisher::ByNamespace,
                _ => Distinguisher::None,
            },
            rules,
        })
    }

    fn matches(&self, user: &UserInfo, info: &RequestInfo) -> bool {
        self.rules.iter().any(|r| r.matches(user, info))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Queuing {
    queues: usize,
    hand_size: usize,
    queue_length_limit: usize,
}

struct LevelSpec {
    uid: String,
    exempt: bool,
    shares: u32,
    queuing: Option<Queuing>,
}

impl LevelSpec {
    fn parse(obj: &Value) -> Option<(String, LevelSpec)> {
        let name = obj["metadata"]["name"].as_str()?.to_string();
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        let spec = obj.get("spec")?;
        let n = |v: &Value, default: u64| v.as_u64().unwrap_or(default);
        let level = match spec.get("type").and_then(Value::as_str)? {
            "Exempt" => LevelSpec { uid, exempt: true, shares: n(&spec["exempt"]["nominalConcurrencyShares"], 0) as u32, queuing: None },
            "Limited" => {
                let limited = &spec["limited"];
                let response = &limited["limitResponse"];
                let queuing = (response["type"].as_str() == Some("Queue")).then(|| {
                    let q = &response["queuing"];
                    Queuing {
                        queues: n(&q["queues"], 64).clamp(1, 10_000) as usize,
                        hand_size: n(&q["handSize"], 8).clamp(1, 15) as usize,
                        queue_length_limit: n(&q["queueLengthLimit"], 50).clamp(1, 10_000) as usize,
                    }
                });
                LevelSpec { uid, exempt: false, shares: n(&limited["nominalConcurrencyShares"], 30).min(u32::MAX as u64) as u32, queuing }
            }
            _ => return None,
        };
        Some((name, level))
    }
}

/// The mandatory objects upstream supplies while they are absent from the store.
fn mandatory_schemas() -> Vec<Value> {
    let all = serde_json::json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]});
    let all_urls = serde_json::json!({"verbs": ["*"], "nonResourceURLs": ["*"]});
    vec![
        serde_json::json!({"metadata": {"name": "exempt"}, "spec": {"matchingPrecedence": 1, "priorityLevelConfiguration": {"name": "exempt"},
            "rules": [{"subjects": [{"kind": "Group", "group": {"name": "system:masters"}}], "resourceRules": [all], "nonResourceRules": [all_urls]}]}}),
        serde_json::json!({"metadata": {"name": "catch-all"}, "spec": {"matchingPrecedence": 10000, "priorityLevelConfiguration": {"name": "catch-all"},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{"subjects": [{"kind": "Group", "group": {"name": "system:unauthenticated"}}, {"kind": "Group", "group": {"name": "system:authenticated"}}],
                "resourceRules": [all], "nonResourceRules": [all_urls]}]}}),
    ]
}

fn mandatory_levels() -> Vec<Value> {
    vec![
        serde_json::json!({"metadata": {"name": "exempt"}, "spec": {"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}}}),
        serde_json::json!({"metadata": {"name": "catch-all"}, "spec": {"type": "Limited",
            "limited": {"nominalConcurrencyShares": 5, "lendablePercent": 0, "limitResponse": {"type": "Reject"}}}}),
    ]
}

// ---- priority levels at run time ----

struct Waiter {
    id: u64,
    /// Fair-queuing start tag.
    start: f64,
    wake: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    /// Requests from this queue now running.
    executing: usize,
    /// The finish tag of the last request queued here.
    last_finish: f64,
}

struct LevelState {
    exempt: bool,
    limit: u32,
    queuing: Option<Queuing>,
    in_use: u32,
    /// May be longer than `queuing.queues` while queues of an older configuration drain.
    queues: Vec<Queue>,
    /// Self-clocked virtual time: the start tag of the request dispatched last.
    virtual_time: f64,
    next_id: u64,
}

impl LevelState {
    fn waiting(&self) -> bool {
        self.queues.iter().any(|q| !q.waiting.is_empty())
    }

    /// Start queued requests while seats are free, the queue whose head started
    /// earliest (in virtual time) first.
    fn dispatch(&mut self) {
        while self.in_use < self.limit {
            let next =
                self.queues.iter().enumerate().filter_map(|(i, q)| q.waiting.front().map(|w| (i, w.start))).min_by(|a, b| a.1.total_cmp(&b.1)).map(|(i, _)| i);
            let Some(i) = next else { break };
            let Some(w) = self.queues[i].waiting.pop_front() else { break };
            self.virtual_time = self.virtual_time.max(w.start);
            // A waiter whose request went away takes no seat.
            if w.wake.send(()).is_ok() {
                self.in_use += 1;
                self.queues[i].executing += 1;
            }
        }
    }

    fn release(&mut self, queue: Option<usize>) {
        self.in_use = self.in_use.saturating_sub(1);
        if let Some(q) = queue.and_then(|i| self.queues.get_mut(i)) {
            q.executing = q.executing.saturating_sub(1);
        }
        self.dispatch();
    }

    fn remove_waiter(&mut self, queue: usize, id: u64) -> bool {
        let Some(q) = self.queues.get_mut(queue) else { return false };
        match q.waiting.iter().position(|w| w.id == id) {
            Some(p) => {
                q.waiting.remove(p);
                true
            }
            None => false,
        }
    }

    /// Take a new configuration: the limit, and queues grown or (once drained) shrunk.
    fn configure(&mut self, exempt: bool, limit: u32, queuing: Option<Queuing>) {
        self.exempt = exempt;
        self.limit = limit;
        self.queuing = queuing;
        let want = queuing.map_or(0, |q| q.queues);
        if self.queues.len() < want {
            self.queues.resize_with(want, Queue::default);
        }
        while self.queues.len() > want && self.queues.last().is_some_and(|q| q.waiting.is_empty() && q.executing == 0) {
            self.queues.pop();
        }
        self.dispatch();
    }
}

/// A priority level's seats and queues. Kept across configuration changes while its
/// name stays, so the requests running and waiting in it are not lost.
pub struct Level {
    state: Mutex<LevelState>,
}

/// One seat of a limited level, or a place in one of its queues while waiting. Dropped:
/// the place is given up, or the seat freed for the next waiter.
pub struct Seat {
    level: Arc<Level>,
    queue: Option<usize>,
    /// Some while (possibly) still waiting in that queue.
    waiting_id: Option<u64>,
    /// Nothing left to give back (its place was given up on a time-out).
    settled: bool,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Ok(mut st) = self.level.state.lock() else { return };
        if let (Some(q), Some(id)) = (self.queue, self.waiting_id) {
            if st.remove_waiter(q, id) {
                return;
            }
        }
        st.release(self.queue);
    }
}

/// Upstream's dropped-requests tracker: `Retry-After` starts at 1 s, doubles (to 32)
/// while a level keeps refusing, and comes back down by one a second once it stops.
#[derive(Default)]
struct DroppedStats {
    history: Vec<(i64, i64)>,
    current_unix: i64,
    current_count: i64,
    retry_after: i64,
    retry_after_updated: i64,
}

impl DroppedStats {
    fn record(&mut self, now: i64) {
        if self.retry_after == 0 {
            self.retry_after = 1;
        }
        if self.current_unix == now {
            self.current_count += 1;
            return;
        }
        self.history.push((self.current_unix, self.current_count));
        let keep = (2 * self.retry_after).min(MAX_RETRY_AFTER);
        self.history.retain(|(t, _)| now - t <= keep);
        self.current_unix = now;
        self.current_count = 1;
        let dropped: i64 = self.history.iter().filter(|(t, _)| now - t <= self.retry_after && *t < now).map(|(_, n)| n).sum();
        if now - self.retry_after_updated >= self.retry_after && dropped >= 3 * self.retry_after {
            self.retry_after = (self.retry_after * 2).min(MAX_RETRY_AFTER);
            self.retry_after_updated = now;
        } else if dropped < self.retry_after && self.retry_after > 1 {
            self.retry_after -= 1;
        }
    }
}

struct Config {
    schemas: Vec<Schema>,
    levels: HashMap<String, (String, Arc<Level>)>,
}

/// The filter: the configuration in force and every priority level's state.
pub struct FlowControl {
    server_concurrency: u32,
    config: RwLock<Arc<Config>>,
    /// The objects last read, by name: FlowSchemas, then priority levels.
    objects: Mutex<(HashMap<String, Value>, HashMap<String, Value>)>,
    dropped: Mutex<HashMap<String, DroppedStats>>,
}

const FLOW_SCHEMAS: &str = "flowschemas";
const PRIORITY_LEVELS: &str = "prioritylevelconfigurations";

impl FlowControl {
    /// A filter with only the mandatory objects (until [`FlowControl::start`] reads the
    /// store's).
    pub fn new(server_concurrency: u32) -> Self {
        let fc = FlowControl {
            server_concurrency,
            config: RwLock::new(Arc::new(Config { schemas: Vec::new(), levels: HashMap::new() })),
            objects: Mutex::new((HashMap::new(), HashMap::new())),
            dropped: Mutex::new(HashMap::new()),
        };
        fc.rebuild();
        fc
    }

    /// A filter following the FlowSchemas and PriorityLevelConfigurations in the store
    /// until shutdown.
    pub fn start(server_concurrency: u32, store: Arc<dyn nanokube_store::Backend>, shutdown: tokio::sync::watch::Receiver<bool>) -> Arc<FlowControl> {
        let fc = Arc::new(FlowControl::new(server_concurrency));
        for plural in [FLOW_SCHEMAS, PRIORITY_LEVELS] {
            let Some(def) = nanokube_api::resources::find("flowcontrol.apiserver.k8s.io", "v1", plural) else { continue };
            let prefix = def.key_prefix();
            let from = fc.resync(&*store, plural, &prefix);
            crate::store_follow::follow(
                &fc,
                store.clone(),
                prefix,
                from,
                shutdown.clone(),
                move |fc, ev| {
                    let obj = if ev.kind == nanokube_store::EventKind::Deleted { None } else { crate::registry::decode(&ev.kv).ok() };
                    fc.apply(plural, &ev.kv.key, obj.map(|o| o.to_value()));
                    fc.rebuild();
                },
                move |fc, store, prefix| fc.resync(store, plural, prefix),
            );
        }
        fc
    }

    fn resync(&self, store: &dyn nanokube_store::Backend, plural: &str, prefix: &str) -> nanokube_store::Revision {
        let listed = store.list(prefix, None, 0);
        {
            let Ok(mut objects) = self.objects.lock() else { return listed.revision };
            let map = if plural == FLOW_SCHEMAS { &mut objects.0 } else { &mut objects.1 };
            map.clear();
            for kv in &listed.items {
                if let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) {
                    if let Some(name) = obj["metadata"]["name"].as_str() {
                        map.insert(name.to_string(), obj);
                    }
                }
            }
        }
        self.rebuild();
        listed.revision
    }

    fn apply(&self, plural: &str, key: &str, obj: Option<Value>) {
        let name = key.trim_end_matches('/').rsplit('/').next().unwrap_or("").to_string();
        let Ok(mut objects) = self.objects.lock() else { return };
        let map = if plural == FLOW_SCHEMAS { &mut objects.0 } else { &mut objects.1 };
        match obj {
            Some(o) => map.insert(name, o),
            None => map.remove(&name),
        };
    }

    /// Make the configuration in force from the objects last read (upstream's
    /// `digestConfigObjects`).
    fn rebuild(&self) {
        let (schema_objs, level_objs) = match self.objects.lock() {
            Ok(o) => (o.0.values().cloned().collect::<Vec<_>>(), o.1.values().cloned().collect::<Vec<_>>()),
            Err(_) => return,
        };
        let mut specs: HashMap<String, LevelSpec> = level_objs.iter().filter_map(LevelSpec::parse).collect();
        for m in mandatory_levels() {
            if let Some((name, spec)) = LevelSpec::parse(&m) {
                specs.entry(name).or_insert(spec);
            }
        }
        let share_sum: f64 = specs.values().map(|s| s.shares as f64).sum();
        let Ok(mut current) = self.config.write() else { return };
        let mut levels = HashMap::new();
        for (name, spec) in specs {
            let limit = if share_sum > 0.0 { (self.server_concurrency as f64 * spec.shares as f64 / share_sum).ceil() as u32 } else { 0 };
            let level = match current.levels.get(&name) {
                Some((_, l)) => l.clone(),
                None => Arc::new(Level {
                    state: Mutex::new(LevelState { exempt: spec.exempt, limit, queuing: None, in_use: 0, queues: Vec::new(), virtual_time: 0.0, next_id: 0 }),
                }),
            };
            if let Ok(mut st) = level.state.lock() {
                st.configure(spec.exempt, limit, spec.queuing);
            }
            levels.insert(name, (spec.uid, level));
        }
        // A FlowSchema naming a missing level is dangling and skipped.
        let mut schemas: Vec<Schema> = schema_objs.iter().filter_map(Schema::parse).filter(|s| levels.contains_key(&s.level)).collect();
        for m in mandatory_schemas() {
            if let Some(s) = Schema::parse(&m) {
                if !schemas.iter().any(|x| x.name == s.name) {
                    schemas.push(s);
                }
            }
        }
        schemas.sort_by(|a, b| a.precedence.cmp(&b.precedence).then_with(|| a.name.cmp(&b.name)));
        *current = Arc::new(Config { schemas, levels });
    }

    /// Classify a request and take a seat for it, waiting in its queue if it must.
    pub async fn admit(&self, user: &UserInfo, info: &RequestInfo) -> Admission {
        let config = match self.config.read() {
            Ok(c) => c.clone(),
            Err(_) => return Admission::Run(Classification::default(), None),
        };
        // The mandatory catch-all matches every authenticated or anonymous user; one with
        // neither group falls to it too, as upstream.
        let Some(schema) = config.schemas.iter().find(|s| s.matches(user, info)).or_else(|| config.schemas.iter().find(|s| s.name == "catch-all")) else {
            return Admission::Run(Classification::default(), None);
        };
        let Some((level_uid, level)) = config.levels.get(&schema.level) else {
            return Admission::Run(Classification::default(), None);
        };
        let classification = Classification { flow_schema_uid: schema.uid.clone(), priority_level_uid: level_uid.clone() };
        let (waiting, rx) = {
            let Ok(mut st) = level.state.lock() else { return Admission::Run(classification, None) };
            if st.exempt {
                return Admission::Run(classification, None);
            }
            let Some(queuing) = st.queuing else {
                if st.in_use < st.limit && !st.waiting() {
                    st.in_use += 1;
                    return Admission::Run(classification, Some(Seat { level: level.clone(), queue: None, waiting_id: None, settled: false }));
                }
                drop(st);
                return Admission::Rejected(classification, self.record_dropped(&schema.level));
            };
            let distinguisher = match schema.distinguisher {
                Distinguisher::ByUser => user.name.as_str(),
                Distinguisher::ByNamespace => info.namespace.as_str(),
                Distinguisher::None => "",
            };
            let hash = if queuing.queues > 1 { flow_hash(&schema.name, distinguisher) } else { 0 };
            let queue = deal(hash, queuing.queues, queuing.hand_size.min(queuing.queues))
                .into_iter()
                .min_by_key(|&i| st.queues.get(i).map_or(usize::MAX, |q| q.waiting.len() + q.executing))
                .unwrap_or(0);
            if st.queues.get(queue).is_none_or(|q| q.waiting.len() >= queuing.queue_length_limit) {
                drop(st);
                return Admission::Rejected(classification, self.record_dropped(&schema.level));
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let id = st.next_id;
            st.next_id += 1;
            let start = st.virtual_time.max(st.queues[queue].last_finish);
            st.queues[queue].last_finish = start + 1.0;
            st.queues[queue].waiting.push_back(Waiter { id, start, wake: tx });
            st.dispatch();
            (Seat { level: level.clone(), queue: Some(queue), waiting_id: Some(id), settled: false }, rx)
        };
        // Dropped while waiting (the client went away), the seat gives up its place.
        let mut seat = waiting;
        if let Ok(Ok(())) = tokio::time::timeout(QUEUE_WAIT, rx).await {
            seat.waiting_id = None;
            return Admission::Run(classification, Some(seat));
        }
        // Timed out; unless it was started in the meantime, leave the queue.
        let removed = match level.state.lock() {
            Ok(mut st) => seat.queue.zip(seat.waiting_id).is_some_and(|(q, id)| st.remove_waiter(q, id)),
            Err(_) => false,
        };
        if removed {
            seat.settled = true;
            return Admission::Rejected(classification, self.record_dropped(&schema.level));
        }
        seat.waiting_id = None;
        Admission::Run(classification, Some(seat))
    }

    fn record_dropped(&self, level: &str) -> i64 {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Ok(mut dropped) = self.dropped.lock() else { return 1 };
        let stats = dropped.entry(level.to_string()).or_default();
        stats.record(now);
        stats.retry_after.max(1)
    }
}

/// Upstream's `hashFlowID`: the first 8 bytes (little-endian) of SHA-256 over the
/// FlowSchema's name, a zero byte, and the distinguisher.
fn flow_hash(schema: &str, distinguisher: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(schema.as_bytes());
    ctx.update(&[0]);
    ctx.update(distinguisher.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_le_bytes(first)
}

/// Shuffle sharding: `hand` distinct queues of `deck`, chosen by the hash (upstream's
/// `shufflesharding.Dealer`: mixed-radix digits of the hash, each one a pick among the
/// cards not yet dealt).
fn deal(mut hash: u64, deck: usize, hand: usize) -> Vec<usize> {
    let mut picks: Vec<usize> = Vec::with_capacity(hand);
    for i in 0..hand {
        let remaining = (deck - i) as u64;
        let mut card = (hash % remaining) as usize;
        hash /= remaining;
        // The card-th of the cards not dealt yet.
        let mut dealt = picks.clone();
        dealt.sort_unstable();
        for d in dealt {
            if card >= d {
                card += 1;
            }
        }
        picks.push(card);
    }
    picks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deals_distinct_cards_in_range() {
        for hash in [0u64, 1, 7, 12345, u64::MAX, 0xdead_beef_cafe] {
            let hand = deal(hash, 128, 6);
            let mut sorted = hand.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 6, "{hand:?}");
            assert!(hand.iter().all(|&c| c < 128));
        }
        assert_eq!(deal(5, 1, 1), vec![0]);
    }

    #[test]
    fn retry_after_grows_while_refusing_and_falls_after() {
        let mut s = DroppedStats::default();
        for t in 100..104 {
            for _ in 0..10 {
                s.record(t);
            }
        }
        assert!(s.retry_after >= 2, "{}", s.retry_after);
        let high = s.retry_after;
        s.record(200);
        s.record(201);
        assert!(s.retry_after < high);
    }

    #[test]
    fn non_resource_rules_cover_what_is_under_a_path() {
        let info = |path: &str| RequestInfo { path: path.into(), verb: "get".into(), ..Default::default() };
        let rule = NonResourceRule { verbs: vec!["get".into()], urls: vec!["/healthz".into(), "/apis/*".into()] };
        assert!(rule.matches(&info("/healthz")));
        assert!(rule.matches(&info("/healthz/etcd")));
        assert!(rule.matches(&info("/apis/apps")));
        assert!(!rule.matches(&info("/healthzz")));
        assert!(!rule.matches(&info("/api")));
    }
}
