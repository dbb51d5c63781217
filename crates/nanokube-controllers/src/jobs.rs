//! kube-controller-manager's Job controller (batch/v1), and the TTL-after-finished
//! controller that removes finished Jobs.
//!
//! - Pods are made from the template with the `batch.kubernetes.io/job-tracking`
//!   finalizer; a finished pod is first written to `status.uncountedTerminatedPods`, then
//!   its finalizer is removed, then it is counted in `succeeded`/`failed` (upstream's
//!   tracking with finalizers: no pod is counted twice or lost, even if the controller
//!   stops between the steps).
//! - `parallelism`, `completions` (or none: done when any pod succeeds), `Indexed`
//!   completion mode (the index as the `batch.kubernetes.io/job-completion-index`
//!   annotation and label, `JOB_COMPLETION_INDEX` in every container, hostname
//!   `<job>-<index>`, `completedIndexes`), `backoffLimit` (failed pods, or restarts under
//!   `OnFailure`) with upstream's replacement back-off (10 s doubling to 6 min after each
//!   failure since the last success), `podFailurePolicy` (FailJob, Ignore, Count, on exit
//!   codes or pod conditions), `successPolicy`, `activeDeadlineSeconds`, `suspend`,
//!   `podReplacementPolicy`, `spec.managedBy`.
//! - Status and conditions as 1.33 writes them: `SuccessCriteriaMet` or `FailureTarget`
//!   first, then `Complete` or `Failed` once no pod is left terminating; `Suspended`;
//!   `active`, `ready`, `terminating`, `startTime`, `completionTime`. Events
//!   `SuccessfulCreate`, `SuccessfulDelete`, `Completed`, `Suspended`, `Resumed`, and the
//!   failure's reason.
//! - `ttlSecondsAfterFinished`: the Job is deleted (foreground) that long after it
//!   finished.
//!
//! - `backoffLimitPerIndex` and `maxFailedIndexes`: each index keeps its failure count
//!   in its pods' `job-index-failure-count` annotation (a failed pod keeps its finalizer
//!   until its replacement has taken the count over), backs off on its own, and fails
//!   alone (`FailIndex`, or its count reaching the limit) into `status.failedIndexes`;
//!   the Job fails with `MaxFailedIndexesExceeded` or, once every index ended,
//!   `FailedIndexes`.
//!
//! Reads come from the store itself, not a cache, so a sync always sees the controller's
//! own earlier writes and needs no expectations.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nanokube_api::selector::LabelSelector;
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::objects::{controller_key, controller_ref, def, key_of, pods};
use crate::workqueue::Observed;
use crate::workqueue::WorkQueue;

/// The finalizer that keeps a Job's pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The annotation (and label) carrying an Indexed Job pod's index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const COMPONENT: &str = "job-controller";
/// Upstream's `DefaultJobPodFailureBackOff` and `MaxJobPodFailureBackOff`.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// The annotations that carry an index's failures (and ignored failures) to the pod
/// that replaces the failed one, under `backoffLimitPerIndex`.
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// See [`INDEX_FAILURE_COUNT`].
pub const INDEX_IGNORED_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-ignored-failure-count";
/// Most pods made or removed in one pass (upstream's `MaxPodCreateDeletePerSync`).
const BURST: usize = 500;

fn jobs() -> &'static resources::ResourceDef {
    def("batch", "jobs")
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("")
}

fn is_terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn has_finalizer(pod: &Value) -> bool {
    meta::finalizers(pod).iter().any(|f| f == TRACKING_FINALIZER)
}

fn is_ready(pod: &Value) -> bool {
    crate::replicasets::ready_since(pod).is_some()
}

fn spec_i64(job: &Value, field: &str) -> Option<i64> {
    job.pointer(&format!("/spec/{field}")).and_then(Value::as_i64)
}

fn is_indexed(job: &Value) -> bool {
    job.pointer("/spec/completionMode").and_then(Value::as_str) == Some("Indexed")
}

fn is_suspended(job: &Value) -> bool {
    job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true)
}

/// Only failed pods are replaced (not terminating ones): `podReplacementPolicy: Failed`,
/// the default under a `podFailurePolicy`.
fn only_replace_failed(job: &Value) -> bool {
    match job.pointer("/spec/podReplacementPolicy").and_then(Value::as_str) {
        Some(p) => p == "Failed",
        None => job.pointer("/spec/podFailurePolicy").is_some_and(|p| !p.is_null()),
    }
}

/// Upstream's `isPodFailed`: Failed, or (unless only failed pods count) deleted before
/// it succeeded.
fn is_failed(pod: &Value, job: &Value) -> bool {
    if phase(pod) == "Failed" {
        return true;
    }
    !only_replace_failed(job) && meta::is_deleting(pod) && phase(pod) != "Succeeded"
}

fn condition<'a>(job: &'a Value, ty: &str) -> Option<&'a Value> {
    job.pointer("/status/conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

fn condition_true(job: &Value, ty: &str) -> bool {
    condition(job, ty).is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

/// Whether the Job has finished (`Complete` or `Failed`).
pub fn is_finished(job: &Value) -> bool {
    condition_true(job, "Complete") || condition_true(job, "Failed")
}

/// A pod's completion index, if it has a valid one.
fn completion_index(pod: &Value) -> Option<usize> {
    pod.pointer("/metadata/annotations")?.get(COMPLETION_INDEX)?.as_str()?.parse().ok()
}

/// A set of indexes as upstream writes it: `1,3-5,7`.
pub fn format_indexes(set: &BTreeSet<usize>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last += 1;
            iter.next();
        }
        out.push(if first == last { first.to_string() } else { format!("{first}-{last}") });
    }
    out.join(",")
}

/// Parse `1,3-5,7`, keeping indexes below `completions` (malformed parts are ignored, as
/// upstream's parser does).
pub fn parse_indexes(s: &str, completions: usize) -> BTreeSet<usize> {
    let mut set = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
            set.extend((a..=b.min(completions.saturating_sub(1))).take(completions));
        }
    }
    set
}

fn new_condition(ty: &str, status: &str, reason: &str, message: &str, now: OffsetDateTime) -> Value {
    let t = meta::format_time(now);
    json!({"type": ty, "status": status, "lastProbeTime": t, "lastTransitionTime": t, "reason": reason, "message": message})
}

/// Upstream's `ensureJobConditionStatus`: set `ty` to `status` (a new False condition is
/// never added); whether anything changed.
fn ensure_condition(conditions: &mut Vec<Value>, ty: &str, status: &str, reason: &str, message: &str, now: OffsetDateTime) -> bool {
    if let Some(c) = conditions.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some(ty)) {
        let same = c.get("status").and_then(Value::as_str) == Some(status)
            && c.get("reason").and_then(Value::as_str).unwrap_or("") == reason
            && c.get("message").and_then(Value::as_str).unwrap_or("") == message;
        if !same {
            *c = new_condition(ty, status, reason, message, now);
        }
        return !same;
    }
    if status != "False" {
        conditions.push(new_condition(ty, status, reason, message, now));
        return true;
    }
    false
}

/// What a pod failure policy says of a failed pod: a message if the Job must fail,
/// whether the failure counts toward `backoffLimit`, and the action of the rule that
/// matched (upstream's `matchPodFailurePolicy`).
fn match_failure_policy(job: &Value, pod: &Value) -> (Option<String>, bool, Option<String>) {
    let Some(rules) = job.pointer("/spec/podFailurePolicy/rules").and_then(Value::as_array) else { return (None, true, None) };
    let (ns, name) = (meta::namespace(pod), meta::name(pod));
    for (index, rule) in rules.iter().enumerate() {
        let action = rule.get("action").and_then(Value::as_str).unwrap_or("");
        let mut matched = None;
        if let Some(req) = rule.get("onExitCodes") {
            let only = req.get("containerName").and_then(Value::as_str);
            let values: Vec<i64> = req.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_i64).collect();
            let in_op = req.get("operator").and_then(Value::as_str) != Some("NotIn");
            let statuses = ["initContainerStatuses", "containerStatuses"]
                .iter()
                .flat_map(|k| pod.pointer(&format!("/status/{k}")).and_then(Value::as_array).cloned().unwrap_or_default());
            for cs in statuses {
                let cname = cs.get("name").and_then(Value::as_str).unwrap_or("");
                let Some(code) = cs.pointer("/state/terminated/exitCode").and_then(Value::as_i64) else { continue };
                if code == 0 || only.is_some_and(|o| o != cname) {
                    continue;
                }
                if values.contains(&code) == in_op {
                    matched = Some(format!("Container {cname} for pod {ns}/{name} failed with exit code {code} matching {action} rule at index {index}"));
                    break;
                }
            }
        }
        if let Some(patterns) = rule.get("onPodConditions").and_then(Value::as_array) {
            for p in patterns {
                let ty = p.get("type").and_then(Value::as_str).unwrap_or("");
                let want = p.get("status").and_then(Value::as_str).unwrap_or("True");
                let has = pod
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| c.get("type").and_then(Value::as_str) == Some(ty) && c.get("status").and_then(Value::as_str) == Some(want));
                if has {
                    matched = Some(format!("Pod {ns}/{name} has condition {ty} matching {action} rule at index {index}"));
                    break;
                }
            }
        }
        if let Some(message) = matched {
            return match action {
                "FailJob" => (Some(message), true, Some(action.into())),
                "Ignore" => (None, false, Some(action.into())),
                _ => (None, true, Some(action.into())),
            };
        }
    }
    (None, true, None)
}

/// When a pod ended: its containers' latest finish, else when its deletion began.
fn finish_time(pod: &Value) -> Option<OffsetDateTime> {
    let finished = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|k| pod.pointer(&format!("/status/{k}")).and_then(Value::as_array).cloned().unwrap_or_default())
        .filter_map(|c| c.pointer("/state/terminated/finishedAt").and_then(Value::as_str).and_then(meta::parse_time))
        .max();
    finished.or_else(|| pod.pointer("/metadata/deletionTimestamp").and_then(Value::as_str).and_then(meta::parse_time))
}

/// Failures since the last success, and when the latest happened (upstream's
/// `backoffRecord`), kept in memory per Job as upstream keeps it.
#[derive(Clone, Copy, Default)]
struct Backoff {
    failures: u32,
    last_failure: Option<OffsetDateTime>,
}

impl Backoff {
    fn remaining(&self, now: OffsetDateTime) -> Duration {
        let Some(last) = self.last_failure else { return Duration::ZERO };
        if self.failures == 0 {
            return Duration::ZERO;
        }
        remaining_after(self.failures, last, now)
    }
}

/// What is left of the back-off after `failures` failures, the latest at `last`
/// (upstream's `getRemainingTimeForFailuresCount`: 10 s doubling to 10 min).
fn remaining_after(failures: u32, last: OffsetDateTime, now: OffsetDateTime) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let backoff = BACKOFF_BASE.saturating_mul(1u32 << (failures - 1).min(20)).min(BACKOFF_MAX);
    let elapsed = (now - last).max(time::Duration::ZERO).unsigned_abs();
    backoff.saturating_sub(elapsed)
}

/// An index failure count annotation as upstream reads it: 0 when missing, malformed,
/// negative or past `i32`.
fn failure_count(pod: &Value, key: &str) -> i64 {
    let v = pod.pointer("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str);
    v.and_then(|v| v.parse::<i64>().ok()).filter(|n| (0..=i64::from(i32::MAX)).contains(n)).unwrap_or(0)
}

/// Under `backoffLimitPerIndex`, whether this pod's failure fails its index: a
/// `FailIndex` rule matched, or a counted failure reached the limit (upstream's
/// `isIndexFailed`).
fn is_index_failed(job: &Value, pod: &Value, limit: i64) -> bool {
    if !is_failed(pod, job) {
        return false;
    }
    let (_, counts, action) = match_failure_policy(job, pod);
    if action.as_deref() == Some("FailIndex") {
        return true;
    }
    counts && failure_count(pod, INDEX_FAILURE_COUNT) >= limit
}

/// The annotations for the pod replacing `replaced` in its index: its failures so far,
/// and those the failure policy ignored (upstream's `getNewIndexFailureCounts`).
fn new_failure_counts(job: &Value, replaced: Option<&Value>) -> (i64, i64) {
    let Some(p) = replaced else { return (0, 0) };
    let (mut counted, mut ignored) = (failure_count(p, INDEX_FAILURE_COUNT), failure_count(p, INDEX_IGNORED_FAILURE_COUNT));
    if match_failure_policy(job, p).1 {
        counted += 1;
    } else {
        ignored += 1;
    }
    (counted, ignored)
}

/// The controller.
pub struct JobController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
    backoff: Mutex<HashMap<String, Backoff>>,
    clock: Arc<dyn Clock>,
}

impl JobController {
    /// A controller on the wall clock.
    pub fn new(registry: Arc<Registry>) -> Arc<JobController> {
        Self::with_clock(registry, Arc::new(crate::clock::SystemClock))
    }

    /// A controller on `clock`.
    pub fn with_clock(registry: Arc<Registry>, clock: Arc<dyn Clock>) -> Arc<JobController> {
        Arc::new(JobController { registry, queue: WorkQueue::new(), backoff: Mutex::new(HashMap::new()), clock })
    }

    /// Run until `shutdown`: every Job once, then what changes.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[jobs().key_prefix(), pods().key_prefix()];
        crate::workqueue::run(self.clone(), &store, &queue, COMPONENT, prefixes, shutdown, Self::enqueue_all, Self::observe, |me, key| async move {
            me.sync(&key).await
        })
        .await
    }

    fn enqueue_all(&self) {
        crate::workqueue::enqueue_each(&self.registry, &self.queue, jobs(), None);
    }

    /// The key of the batch/v1 Job controlling `pod`, if one does.
    fn owner_key(pod: &Value) -> Option<String> {
        let batch = controller_ref(pod).and_then(|r| r.get("apiVersion")).and_then(Value::as_str).is_some_and(|v| v.starts_with("batch/"));
        controller_key(pod, "Job").filter(|_| batch)
    }

    fn observe(&self, change: &Observed) {
        if change.is("Job") {
            self.queue.add(&key_of(change.value()));
            return;
        }
        // An orphan (before and after) with no Job in its namespace to adopt it.
        if !change.may_have_owners() && !crate::workqueue::any_in(&self.registry, jobs(), &change.namespace) {
            return;
        }
        let v = change.value();
        match Self::owner_key(v) {
            Some(key) => self.queue.add(&key),
            // An orphan: the Jobs whose selectors match may adopt it.
            None if change.kind != nanokube_store::EventKind::Deleted && controller_ref(v).is_none() => {
                crate::workqueue::enqueue_adopters(&self.registry, &self.queue, jobs(), v)
            }
            None => {}
        }
        if let Some(old) = change.prev.as_ref().and_then(|p| Self::owner_key(p.value())) {
            if Self::owner_key(v).as_deref() != Some(old.as_str()) {
                self.queue.add(&old);
            }
        }
    }

    fn owner_ref(job: &Value) -> Value {
        crate::objects::controller_reference("batch/v1", "Job", job)
    }

    async fn remove_finalizers(&self, targets: &[Value]) -> Vec<bool> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, p) in targets.iter().enumerate() {
            let (registry, ns, name, uid) = (self.registry.clone(), meta::namespace(p).to_string(), meta::name(p).to_string(), meta::uid(p).to_string());
            tasks.spawn(async move {
                let r = registry
                    .update_with(pods(), &ns, &name, &WriteOptions::default(), |cur| {
                        if meta::uid(cur) != uid {
                            return Err(ApiError::not_found("pods", "", &name));
                        }
                        let mut next = cur.clone();
                        let m = meta::metadata_mut(&mut next);
                        if let Some(f) = m.get_mut("finalizers").and_then(Value::as_array_mut) {
                            f.retain(|x| x.as_str() != Some(TRACKING_FINALIZER));
                        }
                        if m.get("finalizers").and_then(Value::as_array).is_some_and(Vec::is_empty) {
                            m.remove("finalizers");
                        }
                        Ok(next)
                    })
                    .await;
                (i, r.is_ok() || matches!(&r, Err(e) if e.code == 404))
            });
        }
        let mut done = vec![false; targets.len()];
        while let Some(Ok((i, ok))) = tasks.join_next().await {
            done[i] = ok;
        }
        done
    }

    /// Pods a Job of this name once owned keep no tracking finalizer once it is gone
    /// (upstream's orphan clean-up).
    async fn release_orphans(&self, ns: &str, name: &str, live_uid: Option<&str>) -> Result<(), ApiError> {
        let list = self.registry.list(pods(), Some(ns), &ListOptions::default())?;
        let orphans: Vec<Value> = list
            .items
            .iter()
            .map(|p| p.to_value())
            .filter(has_finalizer)
            .filter(|p| {
                controller_ref(p).is_some_and(|r| {
                    r.get("kind").and_then(Value::as_str) == Some("Job")
                        && r.get("name").and_then(Value::as_str) == Some(name)
                        && Some(r.get("uid").and_then(Value::as_str).unwrap_or("")) != live_uid
                })
            })
            .collect();
        self.remove_finalizers(&orphans).await;
        Ok(())
    }

    /// Reconcile one Job.
    async fn sync(self: &Arc<Self>, key: &str) -> Result<(), ApiError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let job = match self.registry.get(jobs(), ns, name) {
            Ok(o) => o.to_value(),
            Err(e) if e.code == 404 => {
                if let Ok(mut b) = self.backoff.lock() {
                    b.remove(key);
                }
                return self.release_orphans(ns, name, None).await;
            }
            Err(e) => return Err(e),
        };
        if job.pointer("/spec/managedBy").and_then(Value::as_str).is_some_and(|m| m != "kubernetes.io/job-controller") {
            return Ok(());
        }
        if is_finished(&job) {
            if let Ok(mut b) = self.backoff.lock() {
                b.remove(key);
            }
            self.release_orphans(ns, name, None).await?;
            return self.expire_after_finished(key, &job).await;
        }
        let sel = LabelSelector::from_object(job.pointer("/spec/selector").unwrap_or(&Value::Null))?;
        let owned = crate::objects::claim_pods(&self.registry, &job, &Self::owner_ref(&job), &sel, |_| true).await?;
        self.sync_job(key, job, owned).await
    }

    async fn sync_job(self: &Arc<Self>, key: &str, mut job: Value, pods: Vec<Value>) -> Result<(), ApiError> {
        let now = self.clock.now();
        let completions = spec_i64(&job, "completions");
        let indexed = is_indexed(&job) && completions.is_some();
        let ncompletions = completions.unwrap_or(0).max(0) as usize;
        let status = job.get("status").cloned().unwrap_or(json!({}));
        let unc_succeeded: HashSet<String> = uncounted(&status, "succeeded").into_iter().collect();
        let unc_failed: HashSet<String> = uncounted(&status, "failed").into_iter().collect();
        let counted = |p: &Value| !has_finalizer(p) || unc_succeeded.contains(meta::uid(p)) || unc_failed.contains(meta::uid(p));
        let valid_index = |p: &Value| !indexed || completion_index(p).is_some_and(|i| i < ncompletions);
        let active_pods: Vec<Value> = pods.iter().filter(|p| !is_terminal(p) && !meta::is_deleting(p)).cloned().collect();
        let mut terminating = pods.iter().filter(|p| !is_terminal(p) && meta::is_deleting(p)).count() as i64;
        let mut ready = active_pods.iter().filter(|p| is_ready(p)).count() as i64;
        let new_succeeded: Vec<&Value> = pods.iter().filter(|p| !counted(p) && valid_index(p) && phase(p) == "Succeeded").collect();
        let new_failed: Vec<&Value> = pods.iter().filter(|p| !counted(p) && valid_index(p) && is_failed(p, &job)).collect();
        let status_n = |k: &str| status.get(k).and_then(Value::as_i64).unwrap_or(0);
        let mut succeeded = status_n("succeeded") + new_succeeded.len() as i64 + unc_succeeded.len() as i64;
        let failed = status_n("failed") + new_failed.iter().filter(|p| match_failure_policy(&job, p).1).count() as i64 + unc_failed.len() as i64;
        let mut st = status.as_object().cloned().unwrap_or_default();
        if st.get("startTime").is_none_or(Value::is_null) && !is_suspended(&job) {
            st.insert("startTime".into(), json!(meta::format_time(now)));
        }
        // The back-off record this sync would leave.
        let mut backoff = self.backoff.lock().ok().and_then(|b| b.get(key).copied()).unwrap_or_default();
        if !new_succeeded.is_empty() {
            backoff.failures = 0;
        }
        if !new_failed.is_empty() {
            backoff.failures += new_failed.len() as u32;
            let latest = new_failed.iter().filter_map(|p| finish_time(p)).max().unwrap_or(now);
            backoff.last_failure = Some(backoff.last_failure.map_or(latest, |l| l.max(latest)));
        }
        let backoff_limit = spec_i64(&job, "backoffLimit").unwrap_or(6);
        let mut conditions: Vec<Value> = st.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        // The terminal condition this sync reached (type, reason, message).
        let mut finished: Option<(String, String, String)> = None;
        if condition_true(&job, "SuccessCriteriaMet") {
            let c = condition(&job, "SuccessCriteriaMet").cloned().unwrap_or_default();
            finished = Some(("SuccessCriteriaMet".into(), str_of(&c, "reason"), str_of(&c, "message")));
        } else if condition_true(&job, "FailureTarget") {
            let c = condition(&job, "FailureTarget").cloned().unwrap_or_default();
            finished = Some(("FailureTarget".into(), str_of(&c, "reason"), str_of(&c, "message")));
        } else if let Some(message) = pods.iter().filter(|p| is_failed(p, &job)).find_map(|p| match_failure_policy(&job, p).0) {
            finished = Some(("FailureTarget".into(), "PodFailurePolicy".into(), message));
        }
        let start = st.get("startTime").and_then(Value::as_str).and_then(meta::parse_time);
        if finished.is_none() {
            if failed > backoff_limit || past_backoff_limit_on_failure(&job, &pods, backoff_limit) {
                finished = Some(("FailureTarget".into(), "BackoffLimitExceeded".into(), "Job has reached the specified backoff limit".into()));
            } else if let (Some(deadline), Some(start), false) = (spec_i64(&job, "activeDeadlineSeconds"), start, is_suspended(&job)) {
                let elapsed = (now - start).whole_milliseconds();
                if elapsed >= i128::from(deadline) * 1000 {
                    finished = Some(("FailureTarget".into(), "DeadlineExceeded".into(), "Job was active longer than specified deadline".into()));
                } else {
                    self.queue.add_after(key, Duration::from_millis((i128::from(deadline) * 1000 - elapsed).max(0) as u64));
                }
            }
        }
        let mut succeeded_indexes = BTreeSet::new();
        // Under backoffLimitPerIndex: the failed indexes, and per index the failed pod
        // kept (finalizer and all) until its replacement carries its failure count.
        let mut failed_indexes: Option<BTreeSet<usize>> = None;
        let mut delayed: HashMap<usize, Value> = HashMap::new();
        if indexed {
            succeeded_indexes = parse_indexes(st.get("completedIndexes").and_then(Value::as_str).unwrap_or(""), ncompletions);
            succeeded_indexes.extend(new_succeeded.iter().filter_map(|p| completion_index(p)));
            succeeded = succeeded_indexes.len() as i64;
            if let Some(limit) = spec_i64(&job, "backoffLimitPerIndex") {
                let mut failed_now = parse_indexes(st.get("failedIndexes").and_then(Value::as_str).unwrap_or(""), ncompletions);
                let newly = pods.iter().filter(|p| has_finalizer(p) && is_index_failed(&job, p, limit)).filter_map(completion_index);
                failed_now.extend(newly.filter(|i| *i < ncompletions));
                if finished.is_none() {
                    if spec_i64(&job, "maxFailedIndexes").is_some_and(|max| failed_now.len() as i64 > max) {
                        let message = "Job has exceeded the specified maximal number of failed indexes";
                        finished = Some(("FailureTarget".into(), "MaxFailedIndexesExceeded".into(), message.into()));
                    } else if !failed_now.is_empty() && failed_now.len() + succeeded_indexes.len() >= ncompletions {
                        finished = Some(("FailureTarget".into(), "FailedIndexes".into(), "Job has failed indexes".into()));
                    }
                }
                delayed = delayed_deletions(&job, &pods, &active_pods, &succeeded_indexes, &failed_now, ncompletions);
                failed_indexes = Some(failed_now);
            }
            if finished.is_none() {
                if let Some(message) = match_success_policy(&job, &succeeded_indexes, ncompletions) {
                    finished = Some(("SuccessCriteriaMet".into(), "SuccessPolicy".into(), message));
                }
            }
        }
        let mut active = active_pods.len() as i64;
        let mut manage_error = None;
        if finished.is_some() {
            let (deleted, deleted_ready, err) = self.delete_pods(&job, &active_pods, false).await;
            if deleted != active {
                finished = None;
            }
            active -= deleted;
            terminating += deleted;
            ready -= deleted_ready;
            manage_error = err;
        } else {
            let mut managed = false;
            if !meta::is_deleting(&job) {
                managed = true;
                // Upstream's firstPendingIndexes: when only failed pods are replaced, an
                // index whose pod is still terminating is not pending.
                let terminating_indexes: HashSet<usize> = if only_replace_failed(&job) {
                    pods.iter().filter(|p| !is_terminal(p) && meta::is_deleting(p)).filter_map(completion_index).collect()
                } else {
                    HashSet::new()
                };
                let ctx = Manage {
                    key,
                    succeeded,
                    active,
                    terminating,
                    terminating_indexes: &terminating_indexes,
                    backoff,
                    ncompletions,
                    succeeded_indexes: &succeeded_indexes,
                    failed_indexes: failed_indexes.as_ref(),
                    delayed: &delayed,
                    now,
                };
                match self.manage(&job, &active_pods, ctx).await {
                    Ok((a, t, r)) => {
                        active = a;
                        terminating += t;
                        ready -= r;
                    }
                    Err(e) => manage_error = Some(e),
                }
            }
            let complete = match completions {
                None => succeeded > 0 && active == 0,
                Some(c) => succeeded >= c && active == 0,
            };
            if complete {
                finished = Some(("SuccessCriteriaMet".into(), "CompletionsReached".into(), "Reached expected number of succeeded pods".into()));
            } else if managed {
                if is_suspended(&job) {
                    if ensure_condition(&mut conditions, "Suspended", "True", "JobSuspended", "Job suspended", now) {
                        crate::events::record(&self.registry, COMPONENT, &job, "Normal", "Suspended", "Job suspended").await;
                    }
                } else if ensure_condition(&mut conditions, "Suspended", "False", "JobResumed", "Job resumed", now) {
                    crate::events::record(&self.registry, COMPONENT, &job, "Normal", "Resumed", "Job resumed").await;
                    // A resumed Job's deadline counts from now.
                    st.insert("startTime".into(), json!(meta::format_time(now)));
                }
            }
        }
        set_count(&mut st, "active", active);
        st.insert("ready".into(), json!(ready.max(0)));
        st.insert("terminating".into(), json!(terminating.max(0)));
        st.insert("conditions".into(), json!(conditions));
        job["status"] = Value::Object(st);
        let delayed_uids = delayed.values().map(|p| meta::uid(p).to_string()).collect();
        let tracked = Tracking { key, finished, indexed, ncompletions, succeeded_indexes, failed_indexes, delayed_uids, terminating, backoff };
        self.track(&mut job, &pods, tracked).await?;
        match manage_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Delete `victims` (their finalizers removed first when `unfinalize`); how many went,
    /// how many of those were ready, and the first error.
    async fn delete_pods(&self, job: &Value, victims: &[Value], unfinalize: bool) -> (i64, i64, Option<ApiError>) {
        if unfinalize {
            self.remove_finalizers(victims).await;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for p in victims {
            let (registry, p) = (self.registry.clone(), p.clone());
            tasks.spawn(async move {
                let opts = DeleteOptions { precondition_uid: Some(meta::uid(&p).to_string()), ..Default::default() };
                let r = registry.delete(pods(), meta::namespace(&p), meta::name(&p), &opts).await;
                (p, r.map(|_| ()))
            });
        }
        let (mut deleted, mut deleted_ready, mut error) = (0, 0, None);
        while let Some(Ok((p, r))) = tasks.join_next().await {
            match r {
                Ok(()) => {
                    deleted += 1;
                    crate::events::record(&self.registry, COMPONENT, job, "Normal", "SuccessfulDelete", &format!("Deleted pod: {}", meta::name(&p))).await;
                }
                Err(e) if e.code == 404 => deleted += 1,
                Err(e) => {
                    crate::events::record(&self.registry, COMPONENT, job, "Warning", "FailedDelete", &format!("Error deleting: {}", e.message)).await;
                    error.get_or_insert(e);
                    continue;
                }
            }
            if is_ready(&p) {
                deleted_ready += 1;
            }
        }
        (deleted, deleted_ready, error)
    }

    /// Upstream's `manageJob`: delete what is too many, or create what is missing once
    /// the back-off allows; the active count after, pods now terminating, ready ones
    /// removed.
    async fn manage(self: &Arc<Self>, job: &Value, active_pods: &[Value], ctx: Manage<'_>) -> Result<(i64, i64, i64), ApiError> {
        let parallelism = spec_i64(job, "parallelism").unwrap_or(1).max(0);
        if is_suspended(job) {
            let (deleted, ready, err) = self.delete_pods(job, active_pods, true).await;
            return err.map_or(Ok((ctx.active - deleted, deleted, ready)), Err);
        }
        let want = match spec_i64(job, "completions") {
            None if ctx.succeeded > 0 => ctx.active,
            None => parallelism,
            Some(c) => (c - ctx.succeeded).clamp(0, parallelism),
        };
        let mut victims: Vec<Value> = Vec::new();
        let mut left: Vec<Value> = active_pods.to_vec();
        if is_indexed(job) {
            // Pods with a repeated, succeeded or invalid index go first.
            let mut seen = HashSet::new();
            left.sort_by_key(|p| std::cmp::Reverse(is_ready(p)));
            let (mut keep, mut dup) = (Vec::new(), Vec::new());
            for p in left {
                match completion_index(&p) {
                    Some(i) if i < ctx.ncompletions && !ctx.succeeded_indexes.contains(&i) && seen.insert(i) => keep.push(p),
                    _ => dup.push(p),
                }
            }
            victims = dup;
            left = keep;
        }
        let at_least = (ctx.active - want).max(0) as usize;
        if victims.len() < at_least {
            left.sort_by(|a, b| crate::replicasets::deletion_order(a, b, &|_| 0));
            victims.extend(left.into_iter().take(at_least - victims.len()));
        }
        victims.truncate(BURST);
        if !victims.is_empty() {
            let (deleted, ready, err) = self.delete_pods(job, &victims, true).await;
            return err.map_or(Ok((ctx.active - deleted, deleted, ready)), Err);
        }
        let terminating = if only_replace_failed(job) { ctx.terminating } else { 0 };
        let mut diff = (want - terminating - ctx.active).max(0) as usize;
        if diff == 0 {
            return Ok((ctx.active, 0, 0));
        }
        // With backoffLimitPerIndex each index backs off on its own, below.
        let per_index = ctx.failed_indexes.is_some();
        let remaining = if per_index { Duration::ZERO } else { ctx.backoff.remaining(ctx.now) };
        if !remaining.is_zero() {
            self.queue.add_after(ctx.key, remaining);
            return Ok((ctx.active, 0, 0));
        }
        diff = diff.min(BURST);
        let mut indexes: Vec<Option<usize>> = vec![None; diff];
        if is_indexed(job) {
            let mut busy: HashSet<usize> = active_pods.iter().filter_map(completion_index).collect();
            busy.extend(ctx.terminating_indexes);
            let failed = |i: &usize| ctx.failed_indexes.is_some_and(|f| f.contains(i));
            indexes = (0..ctx.ncompletions).filter(|i| !ctx.succeeded_indexes.contains(i) && !busy.contains(i) && !failed(i)).take(diff).map(Some).collect();
        }
        if per_index {
            let wait = |ix: &Option<usize>| ix.and_then(|i| ctx.delayed.get(&i)).map_or(Duration::ZERO, |p| index_back_off(p, ctx.now));
            let soonest = indexes.iter().map(wait).filter(|w| !w.is_zero()).min();
            indexes.retain(|ix| wait(ix).is_zero());
            if indexes.is_empty() {
                if let Some(w) = soonest {
                    self.queue.add_after(ctx.key, w);
                }
                return Ok((ctx.active, 0, 0));
            }
        }
        let mut active = ctx.active;
        let mut batch = 1;
        let mut pending = indexes.into_iter();
        loop {
            let chunk: Vec<Option<usize>> = pending.by_ref().take(batch).collect();
            if chunk.is_empty() {
                return Ok((active, 0, 0));
            }
            let mut tasks = tokio::task::JoinSet::new();
            for ix in chunk {
                let (me, job) = (self.clone(), job.clone());
                let counts = per_index.then(|| new_failure_counts(&job, ix.and_then(|i| ctx.delayed.get(&i))));
                tasks.spawn(async move { me.create_pod(&job, ix, counts).await });
            }
            let mut failed = None;
            while let Some(r) = tasks.join_next().await {
                match r {
                    Ok(Ok(())) => active += 1,
                    Ok(Err(e)) => failed = Some(e),
                    Err(e) => failed = Some(ApiError::internal(e.to_string())),
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            batch *= 2;
        }
    }

    /// Make one pod from the template; `failure_counts` (failed, ignored) go on it as
    /// annotations under `backoffLimitPerIndex`.
    async fn create_pod(&self, job: &Value, index: Option<usize>, failure_counts: Option<(i64, i64)>) -> Result<(), ApiError> {
        let mut template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let mut metadata = template.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
        for k in ["name", "namespace", "uid", "resourceVersion", "creationTimestamp", "generateName"] {
            metadata.remove(k);
        }
        let mut finalizers: Vec<Value> = metadata.get("finalizers").and_then(Value::as_array).cloned().unwrap_or_default();
        if !finalizers.iter().any(|f| f.as_str() == Some(TRACKING_FINALIZER)) {
            finalizers.push(json!(TRACKING_FINALIZER));
        }
        metadata.insert("finalizers".into(), json!(finalizers));
        metadata.insert("ownerReferences".into(), json!([Self::owner_ref(job)]));
        let mut spec = template.get_mut("spec").map(Value::take).unwrap_or(json!({}));
        let job_name = meta::name(job);
        let generate_name = match index {
            Some(ix) => {
                for k in ["annotations", "labels"] {
                    let m = metadata.entry(k).or_insert_with(|| json!({}));
                    if let Some(m) = m.as_object_mut() {
                        m.insert(COMPLETION_INDEX.into(), json!(ix.to_string()));
                    }
                }
                if let Some((counted, ignored)) = failure_counts {
                    if let Some(a) = metadata.entry("annotations").or_insert_with(|| json!({})).as_object_mut() {
                        a.insert(INDEX_FAILURE_COUNT.into(), json!(counted.to_string()));
                        if ignored > 0 {
                            a.insert(INDEX_IGNORED_FAILURE_COUNT.into(), json!(ignored.to_string()));
                        }
                    }
                }
                spec["hostname"] = json!(format!("{job_name}-{ix}"));
                add_index_env(&mut spec);
                // Upstream's podGenerateNameWithIndex: the index survives a long Job name.
                let prefix = format!("{job_name}-{ix}-");
                if prefix.len() > 58 {
                    let keep = 58usize.saturating_sub(ix.to_string().len() + 2);
                    format!("{}-{ix}-", &job_name[..keep.min(job_name.len())])
                } else {
                    prefix
                }
            }
            None => format!("{job_name}-"),
        };
        metadata.insert("generateName".into(), json!(generate_name));
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
        match self.registry.create(pods(), meta::namespace(job), pod, &WriteOptions::default()).await {
            Ok(p) => {
                crate::events::record(&self.registry, COMPONENT, job, "Normal", "SuccessfulCreate", &format!("Created pod: {}", meta::name(p.value()))).await;
                Ok(())
            }
            Err(e) => {
                crate::events::record(&self.registry, COMPONENT, job, "Warning", "FailedCreate", &format!("Error creating: {}", e.message)).await;
                Err(e)
            }
        }
    }

    /// Upstream's `trackJobStatusAndRemoveFinalizers`: finished pods go to
    /// `uncountedTerminatedPods` (written first), lose their finalizer, then move to the
    /// counters; the terminal condition comes once nothing is left to count or
    /// terminating.
    async fn track(&self, job: &mut Value, pods: &[Value], t: Tracking<'_>) -> Result<(), ApiError> {
        let now = self.clock.now();
        let old_status = job.get("status").cloned().unwrap_or(json!({}));
        let mut st = old_status.as_object().cloned().unwrap_or_default();
        let (mut unc_succeeded, mut unc_failed) = (uncounted(&old_status, "succeeded"), uncounted(&old_status, "failed"));
        let job_failing = t.finished.as_ref().is_some_and(|f| f.0 == "FailureTarget");
        let mut to_unfinalize = Vec::new();
        let mut succeeded_indexes = t.succeeded_indexes.clone();
        for p in pods.iter().filter(|p| has_finalizer(p)) {
            let considered_failed = is_failed(p, job);
            // A failed pod whose replacement is still to be made keeps its finalizer
            // (upstream's canRemoveFinalizer).
            let removable =
                meta::is_deleting(job) || t.finished.is_some() || phase(p) == "Succeeded" || (considered_failed && !t.delayed_uids.contains(meta::uid(p)));
            if !removable {
                continue;
            }
            to_unfinalize.push(p.clone());
            let uid = meta::uid(p).to_string();
            if phase(p) == "Succeeded" && !unc_failed.contains(&uid) {
                if t.indexed {
                    if let Some(ix) = completion_index(p).filter(|i| *i < t.ncompletions) {
                        succeeded_indexes.insert(ix);
                    }
                } else if !unc_succeeded.contains(&uid) {
                    unc_succeeded.push(uid);
                }
            } else if (considered_failed || job_failing)
                && !unc_failed.contains(&uid)
                && (!t.indexed || completion_index(p).is_some_and(|i| i < t.ncompletions))
                && match_failure_policy(job, p).1
            {
                unc_failed.push(uid);
            }
        }
        if t.indexed {
            st.insert("completedIndexes".into(), json!(format_indexes(&succeeded_indexes)));
            st.insert("succeeded".into(), json!(succeeded_indexes.len()));
            if let Some(failed) = &t.failed_indexes {
                st.insert("failedIndexes".into(), json!(format_indexes(failed)));
            }
        }
        let mut conditions: Vec<Value> = st.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut terminal = None;
        if let Some((ty, reason, message)) = &t.finished {
            if !conditions.iter().any(|c| c.get("type").and_then(Value::as_str) == Some(ty)) {
                conditions.push(new_condition(ty, "True", reason, message, now));
            }
            terminal = Some((if ty == "FailureTarget" { "Failed" } else { "Complete" }, reason.clone(), message.clone()));
        }
        st.insert("conditions".into(), json!(conditions));
        st.insert("uncountedTerminatedPods".into(), uncounted_json(&unc_succeeded, &unc_failed));
        clean_status(&mut st);
        // 1. What is about to be counted, before any finalizer goes.
        let first = Value::Object(st.clone());
        crate::objects::write_status(&self.registry, jobs(), job, first.clone()).await?;
        if let Ok(mut b) = self.backoff.lock() {
            b.insert(t.key.to_string(), t.backoff);
        }
        // 2. The finalizers; 3. the counters of the pods that lost theirs.
        let removed = self.remove_finalizers(&to_unfinalize).await;
        let gone: HashSet<String> = to_unfinalize.iter().zip(&removed).filter(|(_, ok)| **ok).map(|(p, _)| meta::uid(p).to_string()).collect();
        let (before_s, before_f) = (unc_succeeded.len(), unc_failed.len());
        unc_succeeded.retain(|u| !gone.contains(u));
        unc_failed.retain(|u| !gone.contains(u));
        let add = |st: &mut Map<String, Value>, k: &str, n: usize| {
            let v = st.get(k).and_then(Value::as_i64).unwrap_or(0) + n as i64;
            set_count(st, k, v);
        };
        if !t.indexed {
            add(&mut st, "succeeded", before_s - unc_succeeded.len());
        }
        add(&mut st, "failed", before_f - unc_failed.len());
        st.insert("uncountedTerminatedPods".into(), uncounted_json(&unc_succeeded, &unc_failed));
        // 4. Finished once nothing is left uncounted or terminating.
        let mut finished_now = None;
        if let Some((ty, reason, message)) = terminal {
            if unc_succeeded.is_empty() && unc_failed.is_empty() && t.terminating == 0 {
                let mut conditions: Vec<Value> = st.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
                ensure_condition(&mut conditions, ty, "True", &reason, &message, now);
                st.insert("conditions".into(), json!(conditions));
                if ty == "Complete" {
                    st.insert("completionTime".into(), json!(meta::format_time(now)));
                }
                finished_now = Some((ty, reason, message));
            }
        }
        clean_status(&mut st);
        let flushed = json!({"metadata": job["metadata"].clone(), "status": first});
        crate::objects::write_status(&self.registry, jobs(), &flushed, Value::Object(st.clone())).await?;
        job["status"] = Value::Object(st);
        if let Some((ty, reason, message)) = finished_now {
            if ty == "Complete" {
                if let Some(c) = spec_i64(job, "completions") {
                    if job.pointer("/status/succeeded").and_then(Value::as_i64).unwrap_or(0) > c {
                        crate::events::record(
                            &self.registry,
                            COMPONENT,
                            job,
                            "Warning",
                            "TooManySucceededPods",
                            "Too many succeeded pods running after completion count reached",
                        )
                        .await;
                    }
                }
                crate::events::record(&self.registry, COMPONENT, job, "Normal", "Completed", "Job completed").await;
            } else {
                crate::events::record(&self.registry, COMPONENT, job, "Warning", &reason, &message).await;
            }
            self.expire_after_finished(t.key, job).await?;
        }
        Ok(())
    }

    /// The TTL-after-finished controller's part: delete a finished Job whose
    /// `ttlSecondsAfterFinished` ran out, or look again when it will.
    async fn expire_after_finished(&self, key: &str, job: &Value) -> Result<(), ApiError> {
        let Some(ttl) = spec_i64(job, "ttlSecondsAfterFinished") else { return Ok(()) };
        if meta::is_deleting(job) {
            return Ok(());
        }
        let finished_at = ["Complete", "Failed"]
            .iter()
            .filter_map(|t| condition(job, t))
            .filter(|c| c.get("status").and_then(Value::as_str) == Some("True"))
            .filter_map(|c| c.get("lastTransitionTime").and_then(Value::as_str).and_then(meta::parse_time))
            .max();
        let Some(finished_at) = finished_at else { return Ok(()) };
        let expires = finished_at + time::Duration::seconds(ttl);
        let now = self.clock.now();
        if now < expires {
            self.queue.add_after(key, (expires - now).unsigned_abs());
            return Ok(());
        }
        let opts = DeleteOptions {
            propagation: Some("Foreground".into()),
            precondition_uid: Some(meta::uid(job).to_string()),
            precondition_rv: Some(meta::resource_version(job).to_string()),
            ..Default::default()
        };
        match self.registry.delete(jobs(), meta::namespace(job), meta::name(job), &opts).await {
            Err(e) if e.code == 404 || e.code == 409 => Ok(()),
            r => r.map(|_| ()),
        }
    }
}

/// The uids in a Job status's `uncountedTerminatedPods.<k>`.
fn uncounted(status: &Value, k: &str) -> Vec<String> {
    let uids = status.pointer(&format!("/uncountedTerminatedPods/{k}")).and_then(Value::as_array);
    uids.into_iter().flatten().filter_map(Value::as_str).map(String::from).collect()
}

fn str_of(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

fn set_count(st: &mut Map<String, Value>, k: &str, v: i64) {
    if v == 0 {
        st.remove(k);
    } else {
        st.insert(k.into(), json!(v));
    }
}

fn uncounted_json(succeeded: &[String], failed: &[String]) -> Value {
    let mut u = Map::new();
    if !succeeded.is_empty() {
        u.insert("succeeded".into(), json!(succeeded));
    }
    if !failed.is_empty() {
        u.insert("failed".into(), json!(failed));
    }
    Value::Object(u)
}

/// Upstream's omitempty: no empty condition list or index string.
fn clean_status(st: &mut Map<String, Value>) {
    if st.get("conditions").and_then(Value::as_array).is_some_and(Vec::is_empty) {
        st.remove("conditions");
    }
    if st.get("completedIndexes").and_then(Value::as_str) == Some("") {
        st.remove("completedIndexes");
    }
}

/// Per index, the failed pod whose failure count its replacement must inherit: the one
/// with the most failures, latest finished, of an index not succeeded, failed or
/// running (upstream's `getPodsWithDelayedDeletionPerIndex`).
fn delayed_deletions(
    job: &Value,
    pods: &[Value],
    active_pods: &[Value],
    succeeded: &BTreeSet<usize>,
    failed: &BTreeSet<usize>,
    completions: usize,
) -> HashMap<usize, Value> {
    let active: HashSet<usize> = active_pods.iter().filter_map(completion_index).collect();
    let absolute = |p: &Value| failure_count(p, INDEX_FAILURE_COUNT) + failure_count(p, INDEX_IGNORED_FAILURE_COUNT);
    let mut out: HashMap<usize, Value> = HashMap::new();
    for p in pods.iter().filter(|p| has_finalizer(p) && is_failed(p, job)) {
        let Some(ix) = completion_index(p).filter(|i| *i < completions) else { continue };
        if succeeded.contains(&ix) || failed.contains(&ix) || active.contains(&ix) {
            continue;
        }
        let newer = |last: &Value| absolute(last) <= absolute(p) && finish_time(p) >= finish_time(last);
        if out.get(&ix).is_none_or(newer) {
            out.insert(ix, p.clone());
        }
    }
    out
}

/// How long the index of this failed pod waits before its replacement (upstream's
/// `getRemainingTimePerIndex`): the back-off of all its failures, counted or ignored.
fn index_back_off(failed: &Value, now: OffsetDateTime) -> Duration {
    let failures = failure_count(failed, INDEX_FAILURE_COUNT) + failure_count(failed, INDEX_IGNORED_FAILURE_COUNT) + 1;
    let created = failed.pointer("/metadata/creationTimestamp").and_then(Value::as_str).and_then(meta::parse_time);
    let last = finish_time(failed).or(created).unwrap_or(now);
    remaining_after(u32::try_from(failures).unwrap_or(u32::MAX), last, now)
}

/// Under `restartPolicy: OnFailure`, whether the running pods' restarts reached
/// `backoffLimit` (upstream's `pastBackoffLimitOnFailure`).
fn past_backoff_limit_on_failure(job: &Value, pods: &[Value], limit: i64) -> bool {
    if job.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str) != Some("OnFailure") {
        return false;
    }
    let restarts: i64 = pods
        .iter()
        .filter(|p| matches!(phase(p), "Running" | "Pending"))
        .flat_map(|p| {
            ["initContainerStatuses", "containerStatuses"]
                .iter()
                .flat_map(|k| p.pointer(&format!("/status/{k}")).and_then(Value::as_array).cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
        .sum();
    if limit == 0 {
        restarts > 0
    } else {
        restarts >= limit
    }
}

/// The first rule of an Indexed Job's `successPolicy` that its succeeded indexes meet.
fn match_success_policy(job: &Value, succeeded: &BTreeSet<usize>, completions: usize) -> Option<String> {
    let rules = job.pointer("/spec/successPolicy/rules")?.as_array()?;
    for (at, rule) in rules.iter().enumerate() {
        let indexes = rule.get("succeededIndexes").and_then(Value::as_str).map(|s| parse_indexes(s, completions));
        let count = rule.get("succeededCount").and_then(Value::as_i64);
        let met = match (indexes, count) {
            (Some(want), None) => !want.is_empty() && want.is_subset(succeeded),
            (Some(want), Some(n)) => want.intersection(succeeded).count() as i64 >= n,
            (None, Some(n)) => succeeded.len() as i64 >= n,
            (None, None) => false,
        };
        if met {
            return Some(format!("Matched rules at index {at}"));
        }
    }
    None
}

/// Every container learns its index from the annotation (upstream's
/// `addCompletionIndexEnvVariables`).
fn add_index_env(spec: &mut Value) {
    for k in ["initContainers", "containers"] {
        let Some(cs) = spec.get_mut(k).and_then(Value::as_array_mut) else { continue };
        for c in cs {
            let env = c.as_object_mut().map(|m| m.entry("env").or_insert_with(|| json!([])));
            let Some(env) = env.and_then(Value::as_array_mut) else { continue };
            if env.iter().any(|e| e.get("name").and_then(Value::as_str) == Some("JOB_COMPLETION_INDEX")) {
                continue;
            }
            env.push(json!({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": format!("metadata.annotations['{COMPLETION_INDEX}']")}}}));
        }
    }
}

/// What [`JobController::manage`] is told of the sync in progress.
struct Manage<'a> {
    key: &'a str,
    succeeded: i64,
    active: i64,
    terminating: i64,
    /// The indexes of terminating pods, when only failed pods are replaced.
    terminating_indexes: &'a HashSet<usize>,
    backoff: Backoff,
    ncompletions: usize,
    succeeded_indexes: &'a BTreeSet<usize>,
    /// Set under `backoffLimitPerIndex`.
    failed_indexes: Option<&'a BTreeSet<usize>>,
    delayed: &'a HashMap<usize, Value>,
    now: OffsetDateTime,
}

/// What [`JobController::track`] is told of the sync in progress.
struct Tracking<'a> {
    key: &'a str,
    finished: Option<(String, String, String)>,
    indexed: bool,
    ncompletions: usize,
    succeeded_indexes: BTreeSet<usize>,
    failed_indexes: Option<BTreeSet<usize>>,
    /// Failed pods whose finalizer stays until their index is replaced.
    delayed_uids: HashSet<String>,
    terminating: i64,
    backoff: Backoff,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_written_and_read_as_upstream_does() {
        let set: BTreeSet<usize> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(format_indexes(&set), "0-2,4,6-7");
        assert_eq!(parse_indexes("0-2,4,6-7", 10), set);
        // Indexes past completions are dropped.
        assert_eq!(parse_indexes("3-9", 5), [3, 4].into_iter().collect());
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn replacement_back_off_doubles_from_ten_seconds_to_ten_minutes() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let b = |failures| Backoff { failures, last_failure: Some(t0) };
        assert_eq!(b(0).remaining(t0), Duration::ZERO);
        assert_eq!(b(1).remaining(t0), Duration::from_secs(10));
        assert_eq!(b(3).remaining(t0 + time::Duration::seconds(5)), Duration::from_secs(35));
        assert_eq!(b(12).remaining(t0), Duration::from_secs(600));
    }

    #[test]
    fn failure_policy_rules_match_exit_codes_and_conditions_in_order() {
        let job = json!({"spec": {"podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
        ]}}});
        let pod = |code: i64, disrupted: bool| {
            json!({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Failed",
                "conditions": if disrupted { json!([{"type": "DisruptionTarget", "status": "True"}]) } else { json!([]) },
                "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": code}}}]}})
        };
        assert_eq!(
            match_failure_policy(&job, &pod(42, false)),
            (Some("Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1".into()), true, Some("FailJob".into()))
        );
        assert_eq!(match_failure_policy(&job, &pod(42, true)), (None, false, Some("Ignore".into())));
        assert_eq!(match_failure_policy(&job, &pod(1, false)), (None, true, None));
    }

    #[test]
    fn success_policy_needs_its_indexes_or_count() {
        let job = json!({"spec": {"successPolicy": {"rules": [{"succeededIndexes": "0-1"}, {"succeededCount": 3}]}}});
        let set = |v: &[usize]| v.iter().copied().collect::<BTreeSet<_>>();
        assert_eq!(match_success_policy(&job, &set(&[0]), 5), None);
        assert_eq!(match_success_policy(&job, &set(&[0, 1]), 5).as_deref(), Some("Matched rules at index 0"));
        assert_eq!(match_success_policy(&job, &set(&[2, 3, 4]), 5).as_deref(), Some("Matched rules at index 1"));
    }
}
