//! kube-controller-manager's CronJob controller (v2): each CronJob makes a Job at its
//! scheduled times.
//!
//! - The most recent missed time since `status.lastScheduleTime` (or creation) is run,
//!   unless it is older than `startingDeadlineSeconds` (`MissSchedule`); more than 100
//!   missed times are reported (`TooManyMissedTimes`).
//! - Jobs are named `<cronjob>-<scheduled Unix minutes>` (so a time is never run twice),
//!   carry the template's labels and annotations plus
//!   `batch.kubernetes.io/cronjob-scheduled-timestamp` in the CronJob's zone, and are
//!   owned by the CronJob.
//! - `concurrencyPolicy`: `Allow`, `Forbid` (skip while one runs, `JobAlreadyActive`),
//!   `Replace` (delete the running ones first); `suspend`; `timeZone`.
//! - Status: `active` references, `lastScheduleTime`, `lastSuccessfulTime`; finished
//!   Jobs beyond `successfulJobsHistoryLimit`/`failedJobsHistoryLimit` are deleted oldest
//!   first. Events as upstream's (`SuccessfulCreate`, `SawCompletedJob`,
//!   `SuccessfulDelete`, `MissingJob`, `UnexpectedJob`, `UnparseableSchedule`,
//!   `UnknownTimeZone`).
//!
//! Schedules without `timeZone` are read in UTC (upstream: the controller manager's
//! local zone, UTC in its usual container). Time comes from a [`Clock`].

use std::sync::Arc;
use std::time::Duration;

use nanokube_api::schedule::{Schedule, ScheduleError};
use nanokube_api::{meta, resources, ApiError};
use nanokube_apiserver::registry::{DeleteOptions, ListOptions, Registry, WriteOptions};
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::objects::{controller_key, controller_ref, key_of};
use crate::workqueue::Observed;
use crate::workqueue::WorkQueue;

const COMPONENT: &str = "cronjob-controller";
/// The annotation with the time a Job was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

fn def(plural: &str) -> &'static resources::ResourceDef {
    resources::find("batch", "v1", plural).expect("built-in resource")
}

fn time_at(v: Option<&Value>) -> Option<OffsetDateTime> {
    v.and_then(Value::as_str).and_then(meta::parse_time)
}

/// The finished condition of a Job, if any (`Complete` or `Failed`).
fn finished_condition(job: &Value) -> Option<&str> {
    job.pointer("/status/conditions")?.as_array()?.iter().find_map(|c| {
        let ty = c.get("type").and_then(Value::as_str)?;
        (matches!(ty, "Complete" | "Failed") && c.get("status").and_then(Value::as_str) == Some("True")).then_some(ty)
    })
}

/// Which time to run now: the most recent scheduled time after `earliest` and not
/// after `now`, and how many were missed (upstream's `mostRecentScheduleTime`).
pub fn most_recent_schedule_time(schedule: &Schedule, earliest: OffsetDateTime, now: OffsetDateTime) -> (Option<OffsetDateTime>, usize) {
    let mut latest = None;
    let mut missed = 0;
    let mut t = earliest;
    while let Some(next) = schedule.next_after(t) {
        if next > now {
            break;
        }
        latest = Some(next);
        missed += 1;
        t = next;
        if missed > 100 {
            // Too many to walk: jump by the period between the last two.
            if let Some(after) = schedule.next_after(next) {
                let period = (after - next).whole_seconds().max(1);
                let skip = (now - next).whole_seconds() / period;
                let jumped = next + time::Duration::seconds(skip * period);
                // Land on a real schedule time at or before now.
                let mut probe = jumped - time::Duration::seconds(period);
                while let Some(n) = schedule.next_after(probe) {
                    if n > now {
                        break;
                    }
                    latest = Some(n);
                    probe = n;
                }
                missed += skip.max(0) as usize;
            }
            break;
        }
    }
    (latest, missed)
}

/// The controller.
pub struct CronJobController {
    registry: Arc<Registry>,
    queue: Arc<WorkQueue>,
    clock: Arc<dyn Clock>,
}

impl CronJobController {
    /// A controller on the wall clock.
    pub fn new(registry: Arc<Registry>) -> Arc<CronJobController> {
        Self::with_clock(registry, Arc::new(crate::clock::SystemClock))
    }

    /// A controller on `clock`.
    pub fn with_clock(registry: Arc<Registry>, clock: Arc<dyn Clock>) -> Arc<CronJobController> {
        Arc::new(CronJobController { registry, queue: WorkQueue::new(), clock })
    }

    /// Run until `shutdown`: every CronJob once, then what changes and what comes due.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let (store, queue) = (self.registry.store().clone(), self.queue.clone());
        let prefixes = &[def("cronjobs").key_prefix(), def("jobs").key_prefix()];
        crate::workqueue::run(self.clone(), &store, &queue, COMPONENT, prefixes, shutdown, Self::enqueue_all, Self::observe, |me, key| async move {
            me.sync(&key).await
        })
        .await
    }

    fn enqueue_all(&self) {
        crate::workqueue::enqueue_each(&self.registry, &self.queue, def("cronjobs"), None);
    }

    fn observe(&self, change: &Observed) {
        let key = if change.is("CronJob") { Some(key_of(change.value())) } else { controller_key(change.value(), "CronJob") };
        if let Some(key) = key {
            self.queue.add(&key);
        }
    }

    async fn event(&self, cj: &Value, ty: &str, reason: &str, message: &str) {
        crate::events::record(&self.registry, COMPONENT, cj, ty, reason, message).await;
    }

    /// Reconcile one CronJob.
    pub async fn sync(self: &Arc<Self>, key: &str) -> Result<(), ApiError> {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let cj = match self.registry.get(def("cronjobs"), ns, name) {
            Ok(o) => o.to_value(),
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let uid = meta::uid(&cj).to_string();
        let listed = self.registry.list(def("jobs"), Some(ns), &ListOptions::default())?;
        let children: Vec<Value> = listed
            .items
            .iter()
            .map(|j| j.to_value())
            .filter(|j| controller_ref(j).and_then(|r| r.get("uid")).and_then(Value::as_str) == Some(uid.as_str()))
            .collect();
        let mut status = cj.get("status").and_then(Value::as_object).cloned().unwrap_or_default();
        let mut active: Vec<Value> = status.get("active").and_then(Value::as_array).cloned().unwrap_or_default();
        let in_active = |active: &[Value], uid: &str| active.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid));
        for j in &children {
            let juid = meta::uid(j);
            let finished = finished_condition(j);
            match (in_active(&active, juid), finished) {
                (false, None) => {
                    self.event(&cj, "Warning", "UnexpectedJob", &format!("Saw a job that the controller did not create or forgot: {}", meta::name(j))).await;
                }
                (true, Some(condition)) => {
                    active.retain(|r| r.get("uid").and_then(Value::as_str) != Some(juid));
                    self.event(&cj, "Normal", "SawCompletedJob", &format!("Saw completed job: {}, condition: {condition}", meta::name(j))).await;
                }
                _ => {}
            }
            if finished == Some("Complete") {
                if let Some(done) = time_at(j.pointer("/status/completionTime")) {
                    if time_at(status.get("lastSuccessfulTime")).is_none_or(|last| done > last) {
                        status.insert("lastSuccessfulTime".into(), json!(meta::format_time(done)));
                    }
                }
            }
        }
        // Active references to Jobs that are gone.
        let mut kept = Vec::new();
        for r in active {
            let exists = children.iter().any(|j| Some(meta::uid(j)) == r.get("uid").and_then(Value::as_str));
            if exists {
                kept.push(r);
            } else {
                let missing = r.get("name").and_then(Value::as_str).unwrap_or("");
                self.event(&cj, "Normal", "MissingJob", &format!("Active job went missing: {missing}")).await;
            }
        }
        let mut active = kept;
        let result = self.schedule(&cj, &children, &mut active, &mut status).await;
        if active.is_empty() {
            status.remove("active");
        } else {
            status.insert("active".into(), json!(active));
        }
        crate::objects::write_status(&self.registry, def("cronjobs"), &cj, Value::Object(status)).await?;
        self.clean_history(&cj, &children).await;
        result
    }

    /// Make the Job due now, if any, and queue the next look.
    async fn schedule(
        self: &Arc<Self>,
        cj: &Value,
        children: &[Value],
        active: &mut Vec<Value>,
        status: &mut serde_json::Map<String, Value>,
    ) -> Result<(), ApiError> {
        if meta::is_deleting(cj) {
            return Ok(());
        }
        let key = key_of(cj);
        let spec = |f: &str| cj.pointer(&format!("/spec/{f}"));
        let schedule_text = spec("schedule").and_then(Value::as_str).unwrap_or("");
        let schedule = match Schedule::parse(schedule_text, spec("timeZone").and_then(Value::as_str)) {
            Ok(s) => s,
            Err(ScheduleError::TimeZone(_)) => {
                let zone = spec("timeZone").and_then(Value::as_str).unwrap_or("");
                self.event(cj, "Warning", "UnknownTimeZone", &format!("invalid timeZone: {zone:?}: unknown time zone {zone}")).await;
                return Ok(());
            }
            Err(ScheduleError::Schedule(m)) => {
                self.event(cj, "Warning", "UnparseableSchedule", &format!("unparseable schedule: {schedule_text:?} : {m}")).await;
                return Ok(());
            }
        };
        if spec("suspend").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let now = self.clock.now();
        let created = time_at(cj.pointer("/metadata/creationTimestamp")).unwrap_or(now);
        let mut earliest = time_at(status.get("lastScheduleTime")).unwrap_or(created);
        let deadline = spec("startingDeadlineSeconds").and_then(Value::as_i64);
        if let Some(d) = deadline {
            earliest = earliest.max(now - time::Duration::seconds(d));
        }
        let requeue = |me: &Arc<Self>| {
            if let Some(next) = schedule.next_after(now) {
                // A little after the time, so that the clock has surely passed it.
                me.queue.add_after(&key, (next - now).unsigned_abs() + Duration::from_millis(100));
            }
        };
        let (scheduled, missed) = most_recent_schedule_time(&schedule, earliest, now);
        let Some(scheduled) = scheduled else {
            requeue(self);
            return Ok(());
        };
        if missed > 100 {
            self.event(cj, "Warning", "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew")
                .await;
        }
        if deadline.is_some_and(|d| scheduled + time::Duration::seconds(d) < now) {
            let when = scheduled.format(&time::format_description::well_known::Rfc2822).unwrap_or_default();
            self.event(cj, "Warning", "MissSchedule", &format!("Missed scheduled time to start a job: {when}")).await;
            requeue(self);
            return Ok(());
        }
        let job_name = format!("{}-{}", meta::name(cj), scheduled.unix_timestamp() / 60);
        let already = active.iter().any(|r| r.get("name").and_then(Value::as_str) == Some(job_name.as_str()))
            || time_at(status.get("lastScheduleTime")) == Some(scheduled);
        if already {
            requeue(self);
            return Ok(());
        }
        match spec("concurrencyPolicy").and_then(Value::as_str).unwrap_or("Allow") {
            "Forbid" if !active.is_empty() => {
                self.event(cj, "Normal", "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid").await;
                requeue(self);
                return Ok(());
            }
            "Replace" => {
                for r in std::mem::take(active) {
                    let Some(j) = children.iter().find(|j| Some(meta::uid(j)) == r.get("uid").and_then(Value::as_str)) else { continue };
                    let opts = DeleteOptions { propagation: Some("Background".into()), ..Default::default() };
                    match self.registry.delete(def("jobs"), meta::namespace(j), meta::name(j), &opts).await {
                        Ok(_) | Err(ApiError { code: 404, .. }) => {
                            self.event(cj, "Normal", "SuccessfulDelete", &format!("Deleted job {}", meta::name(j))).await;
                        }
                        Err(e) => {
                            active.push(r);
                            return Err(e);
                        }
                    }
                }
            }
            _ => {}
        }
        let template = spec("jobTemplate").cloned().unwrap_or(json!({}));
        let mut annotations = template.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default();
        annotations.insert(SCHEDULED_TIMESTAMP.into(), json!(schedule.format_in_zone(scheduled)));
        let mut metadata = json!({
            "name": job_name,
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": meta::name(cj), "uid": meta::uid(cj), "controller": true, "blockOwnerDeletion": true}],
        });
        if let Some(labels) = template.pointer("/metadata/labels") {
            metadata["labels"] = labels.clone();
        }
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": template.get("spec").cloned().unwrap_or(json!({}))});
        let made = match self.registry.create(def("jobs"), meta::namespace(cj), job, &WriteOptions::default()).await {
            Ok(j) => j.to_value(),
            Err(e) if e.code == 409 => {
                // Made before (the status write was lost): it is the one for this time.
                match self.registry.get(def("jobs"), meta::namespace(cj), &job_name) {
                    Ok(j) if controller_ref(j.value()).and_then(|r| r.get("uid")).and_then(Value::as_str) == Some(meta::uid(cj)) => j.to_value(),
                    _ => {
                        requeue(self);
                        return Ok(());
                    }
                }
            }
            Err(e) => {
                self.event(cj, "Warning", "FailedCreate", &format!("Error creating job: {}", e.message)).await;
                return Err(e);
            }
        };
        self.event(cj, "Normal", "SuccessfulCreate", &format!("Created job {job_name}")).await;
        active.push(json!({
            "kind": "Job", "namespace": meta::namespace(&made), "name": meta::name(&made), "uid": meta::uid(&made),
            "apiVersion": "batch/v1", "resourceVersion": meta::resource_version(&made),
        }));
        status.insert("lastScheduleTime".into(), json!(meta::format_time(scheduled)));
        requeue(self);
        Ok(())
    }

    /// Delete the oldest finished Jobs beyond the history limits.
    async fn clean_history(&self, cj: &Value, children: &[Value]) {
        for (condition, field, default) in [("Complete", "successfulJobsHistoryLimit", 3), ("Failed", "failedJobsHistoryLimit", 1)] {
            let limit = cj.pointer(&format!("/spec/{field}")).and_then(Value::as_i64).unwrap_or(default).max(0) as usize;
            let mut done: Vec<&Value> = children.iter().filter(|j| finished_condition(j) == Some(condition) && !meta::is_deleting(j)).collect();
            if done.len() <= limit {
                continue;
            }
            done.sort_by_key(|j| time_at(j.pointer("/status/startTime")).unwrap_or(OffsetDateTime::UNIX_EPOCH));
            let extra = done.len() - limit;
            for j in done.into_iter().take(extra) {
                let opts = DeleteOptions { propagation: Some("Background".into()), ..Default::default() };
                if self.registry.delete(def("jobs"), meta::namespace(j), meta::name(j), &opts).await.is_ok() {
                    self.event(cj, "Normal", "SuccessfulDelete", &format!("Deleted job {}", meta::name(j))).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_most_recent_missed_time_is_the_one_run() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        let t0 = datetime!(2026-12-03 12:01:00 UTC);
        assert_eq!(most_recent_schedule_time(&s, t0, datetime!(2026-12-03 12:04:59 UTC)), (None, 0));
        assert_eq!(most_recent_schedule_time(&s, t0, datetime!(2026-12-03 12:05:00 UTC)), (Some(datetime!(2026-12-03 12:05:00 UTC)), 1));
        assert_eq!(most_recent_schedule_time(&s, t0, datetime!(2026-12-03 12:17:00 UTC)), (Some(datetime!(2026-12-03 12:15:00 UTC)), 3));
        // Days of missed runs: counted, and still the latest is the one.
        let (latest, missed) = most_recent_schedule_time(&s, t0, datetime!(2026-12-05 00:02:00 UTC));
        assert_eq!(latest, Some(datetime!(2026-12-05 00:00:00 UTC)));
        assert!(missed > 100);
    }
}
