//! CronJobs: schedules computed against a test clock (missed times, `Forbid` and
//! `Replace`, a starting deadline, history limits, a time zone), `kubectl create job
//! --from=cronjob/…`, refused schedules and zones; and one on the wall clock whose Job
//! really runs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, kubectl_path, server_with_image};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nanokube::testing::TestCluster;
use nanokube_controllers::clock::ManualClock;
use serde_json::{json, Value};
use time::OffsetDateTime;

const MINUTE: i64 = 60;

fn kubectl(tc: &TestCluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new(kubectl_path("kubectl")).arg("--kubeconfig").arg(tc.kubeconfig_path()).args(args).output().unwrap()
}

fn cron_job(name: &str, schedule: &str, extra: Value) -> CronJob {
    let mut v = json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": schedule, "jobTemplate": {"metadata": {"labels": {"from": name}}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "main", "image": "nothing:1"}]}}}}},
    });
    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::from_value(v).unwrap()
}

/// Move the clock, then touch the CronJob so its controller looks again now (the
/// controller's own timer runs on real time).
async fn advance(clock: &ManualClock, to: OffsetDateTime, cjs: &Api<CronJob>, name: &str) {
    clock.set(to);
    let patch = json!({"metadata": {"annotations": {"test/now": to.unix_timestamp().to_string()}}});
    cjs.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

async fn jobs_of(jobs: &Api<Job>, name: &str) -> Vec<Job> {
    let mut list = jobs.list(&ListParams::default().labels(&format!("from={name}"))).await.unwrap().items;
    list.sort_by_key(|j| j.metadata.name.clone());
    list
}

async fn wait_jobs(jobs: &Api<Job>, name: &str, n: usize) -> Vec<Job> {
    for _ in 0..200 {
        let list = jobs_of(jobs, name).await;
        if list.len() == n {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected {n} jobs of {name}, have {:?}", jobs_of(jobs, name).await.iter().map(|j| j.metadata.name.clone()).collect::<Vec<_>>());
}

fn events(tc: &TestCluster, name: &str) -> String {
    let out = kubectl(
        tc,
        &["get", "events", "--field-selector", &format!("involvedObject.name={name}"), "-o", "jsonpath={range .items[*]}{.reason}: {.message}\n{end}"],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The minute boundary at or after `t` that `*/5` matches.
fn next_five(t: OffsetDateTime) -> OffsetDateTime {
    let s = t.unix_timestamp();
    let step = 5 * MINUTE;
    OffsetDateTime::from_unix_timestamp((s / step + 1) * step).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cronjobs_follow_their_schedule_on_a_test_clock() {
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let c = clock.clone();
    let tc = TestCluster::start_with(move |cfg| {
        cfg.node = false;
        cfg.controller_clock = c;
    })
    .await
    .unwrap();
    let cjs: Api<CronJob> = Api::default_namespaced(tc.client());
    let jobs: Api<Job> = Api::default_namespaced(tc.client());

    let created = cjs.create(&PostParams::default(), &cron_job("tick", "*/5 * * * *", json!({"concurrencyPolicy": "Forbid"}))).await.unwrap();
    let born =
        OffsetDateTime::parse(&created.metadata.creation_timestamp.as_ref().unwrap().0.to_string(), &time::format_description::well_known::Rfc3339).unwrap();
    // Before the first time: nothing. (The creation timestamp has whole seconds: a
    // CronJob made in the last second before a boundary has its first time at born + 1 s.)
    let before_first = (born + time::Duration::seconds(1)).min(next_five(born) - time::Duration::seconds(1)).max(born);
    advance(&clock, before_first, &cjs, "tick").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(jobs_of(&jobs, "tick").await.is_empty());

    // Three times passed: only the latest runs, named after its minute.
    let first = next_five(born);
    let latest = first + time::Duration::minutes(10);
    advance(&clock, latest + time::Duration::seconds(30), &cjs, "tick").await;
    let list = wait_jobs(&jobs, "tick", 1).await;
    let job = &list[0];
    assert_eq!(job.metadata.name.as_deref(), Some(format!("tick-{}", latest.unix_timestamp() / MINUTE).as_str()));
    let scheduled = latest.format(&time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(job.metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/cronjob-scheduled-timestamp"], scheduled);
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("CronJob", Some(true)));
    let mut status = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            let out = kubectl(&tc, &["get", "cronjob", "tick", "-o", "jsonpath={.status}"]);
            status = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            status["active"].as_array().is_some_and(|a| a.len() == 1)
        }),
        "{status}"
    );
    assert_eq!(status["lastScheduleTime"], scheduled.as_str());
    assert_eq!(status["active"][0]["name"], job.metadata.name.clone().unwrap().as_str());

    // Forbid: the next time is skipped while the Job runs.
    advance(&clock, latest + time::Duration::minutes(5) + time::Duration::seconds(1), &cjs, "tick").await;
    assert!(eventually(Duration::from_secs(10), || events(&tc, "tick").contains("JobAlreadyActive")), "{}", events(&tc, "tick"));
    assert_eq!(jobs_of(&jobs, "tick").await.len(), 1);

    // Replace: the running Job goes, the new one comes.
    let patch = json!({"spec": {"concurrencyPolicy": "Replace", "successfulJobsHistoryLimit": 1}});
    cjs.patch("tick", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let replaced_at = latest + time::Duration::minutes(10);
    advance(&clock, replaced_at + time::Duration::seconds(1), &cjs, "tick").await;
    let name = format!("tick-{}", replaced_at.unix_timestamp() / MINUTE);
    assert!(
        eventually(Duration::from_secs(20), || {
            let out = kubectl(&tc, &["get", "jobs", "-l", "from=tick", "-o", "jsonpath={.items[*].metadata.name}"]);
            String::from_utf8_lossy(&out.stdout) == name
        }),
        "{}",
        events(&tc, "tick")
    );
    let ev = events(&tc, "tick");
    assert!(ev.contains(&format!("SuccessfulDelete: Deleted job tick-{}", latest.unix_timestamp() / MINUTE)), "{ev}");
    assert!(ev.contains(&format!("SuccessfulCreate: Created job {name}")), "{ev}");

    // The Job finishes (its pod marked Succeeded, as a kubelet would): the CronJob sees
    // it, records the success, and keeps one finished Job.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::default_namespaced(tc.client());
    let mut pod_name = String::new();
    for _ in 0..200 {
        if let Some(p) = pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}"))).await.unwrap().items.first() {
            pod_name = p.metadata.name.clone().unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pods.patch_status(&pod_name, &PatchParams::default(), &Patch::Merge(&json!({"status": {"phase": "Succeeded"}}))).await.unwrap();
    assert!(eventually(Duration::from_secs(20), || events(&tc, "tick").contains(&format!("SawCompletedJob: Saw completed job: {name}, condition: Complete"))));
    let cj = cjs.get("tick").await.unwrap();
    assert!(cj.status.as_ref().unwrap().last_successful_time.is_some());
    assert!(cj.status.as_ref().unwrap().active.as_ref().is_none_or(Vec::is_empty));

    // A starting deadline: a time found too late is missed, not run.
    let patch = json!({"spec": {"startingDeadlineSeconds": 30, "concurrencyPolicy": "Allow"}});
    cjs.patch("tick", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    advance(&clock, replaced_at + time::Duration::minutes(7), &cjs, "tick").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jobs_of(&jobs, "tick").await.len(), 1, "no Job for a time more than 30 s gone");

    // By hand: `kubectl create job --from=cronjob/tick`.
    let out = kubectl(&tc, &["create", "job", "manual", "--from=cronjob/tick"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manual = jobs.get("manual").await.unwrap();
    assert_eq!(manual.metadata.annotations.as_ref().unwrap()["cronjob.kubernetes.io/instantiate"], "manual");
    assert_eq!(manual.metadata.owner_references.as_ref().unwrap()[0].name, "tick");

    // A time zone: 09:00 in Seoul, annotated in Seoul's offset. The clock comes back to
    // the wall clock first: the CronJob's creation time is the wall clock's, and a clock
    // already past a 09:00 in Seoul (00:00 UTC) would have a missed run to start.
    let now = OffsetDateTime::now_utc();
    clock.set(now);
    let day = OffsetDateTime::from_unix_timestamp((now.unix_timestamp() / 86400 + 2) * 86400).unwrap();
    cjs.create(&PostParams::default(), &cron_job("seoul", "0 9 * * *", json!({"timeZone": "Asia/Seoul"}))).await.unwrap();
    advance(&clock, day + time::Duration::minutes(1), &cjs, "seoul").await;
    let list = wait_jobs(&jobs, "seoul", 1).await;
    let stamp = &list[0].metadata.annotations.as_ref().unwrap()["batch.kubernetes.io/cronjob-scheduled-timestamp"];
    assert!(stamp.ends_with("T09:00:00+09:00"), "{stamp}");
    assert_eq!(list[0].metadata.name.as_deref(), Some(format!("seoul-{}", day.unix_timestamp() / MINUTE).as_str()));

    // Refused: a schedule that is not one, a zone that does not exist.
    for (schedule, extra, field) in [("61 * * * *", json!({}), "spec.schedule"), ("0 * * * *", json!({"timeZone": "Mars/Olympus"}), "spec.timeZone")] {
        let err = cjs.create(&PostParams::default(), &cron_job("bad", schedule, extra)).await.unwrap_err();
        let kube::Error::Api(status) = err else { panic!("{err}") };
        assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
        assert!(status.message.contains(field), "{}", status.message);
    }
    tc.shutdown().await;
}

#[test]
fn a_cronjob_on_the_wall_clock_runs_a_real_pod() {
    let s = server_with_image();
    s.k(&["create", "cronjob", "hello", "--image=testbox:1.0", "--schedule=@every 1s", "--", "sh", "-c", "echo hello from cron"]);
    let mut job = String::new();
    assert!(eventually(Duration::from_secs(30), || {
        job = s.k(&["get", "jobs", "-o", "name"]).lines().next().unwrap_or("").trim_start_matches("job.batch/").to_string();
        !job.is_empty()
    }));
    let out = s.kubectl(&["wait", "--for=condition=complete", &format!("job/{job}"), "--timeout=60s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.k(&["logs", &format!("job/{job}")]).contains("hello from cron"));
    assert!(eventually(Duration::from_secs(10), || !s.k(&["get", "cronjob", "hello", "-o", "jsonpath={.status.lastSuccessfulTime}"]).is_empty()));
}
