//! Jobs with the real kubectl: pods that really run to completion (counted through the
//! tracking finalizer), Indexed Jobs, `backoffLimit` and its replacement back-off,
//! `backoffLimitPerIndex` and `maxFailedIndexes`, a pod failure policy, a deadline, suspend and resume, expiry after finishing, immutable
//! fields; and, where no node runs pods, a Job driven by pod statuses written by the
//! test as upstream's controller tests do.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, Server};
use serde_json::Value;

fn job(s: &Server, name: &str) -> Value {
    serde_json::from_str(&s.k(&["get", "job", name, "-o", "json"])).unwrap()
}

fn job_pods(s: &Server, name: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(&s.k(&["get", "pods", "-l", &format!("batch.kubernetes.io/job-name={name}"), "-o", "json"])).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn conditions(j: &Value) -> String {
    j["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{}={}:{}", c["type"].as_str().unwrap(), c["status"].as_str().unwrap(), c["reason"].as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(";")
}

fn wait_for(s: &Server, what: &str, condition: &str) {
    let out = s.kubectl(&["wait", &format!("--for=condition={condition}"), what, "--timeout=90s"]);
    assert!(out.status.success(), "{what} never {condition}: {}{}", String::from_utf8_lossy(&out.stderr), s.k(&["get", what, "-o", "yaml"]));
}

fn apply(s: &Server, yaml: &str) {
    let out = s.k_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn events(s: &Server, name: &str) -> String {
    s.k(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={name},involvedObject.kind=Job"),
        "-o",
        "jsonpath={range .items[*]}{.reason}: {.message}\n{end}",
    ])
}

/// How long after `failed` ended its `replacement` was made.
fn replaced_after(failed: &Value, replacement: &Value) -> time::Duration {
    let time = |v: &Value| time::OffsetDateTime::parse(v.as_str().unwrap(), &time::format_description::well_known::Rfc3339).unwrap();
    time(&replacement["metadata"]["creationTimestamp"]) - time(&failed["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"])
}

#[test]
fn jobs_run_pods_to_completion_indexed_or_not() {
    let s = server_with_image();
    apply(
        &s,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: count}
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "testbox:1.0", command: [sh, -c, "echo counted"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: indexed}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "testbox:1.0", command: [sh, -c, "echo index=$JOB_COMPLETION_INDEX host=$(hostname)"]}]
"#,
    );
    s.k(&["create", "job", "once", "--image=testbox:1.0", "--", "sh", "-c", "echo once"]);
    for name in ["count", "indexed", "once"] {
        wait_for(&s, &format!("job/{name}"), "complete");
    }

    let j = job(&s, "count");
    assert_eq!(j["status"]["succeeded"], 3, "{}", j["status"]);
    assert_eq!(conditions(&j), "SuccessCriteriaMet=True:CompletionsReached;Complete=True:CompletionsReached");
    assert!(j["status"]["completionTime"].is_string() && j["status"]["startTime"].is_string());
    assert_eq!(j["status"]["uncountedTerminatedPods"], serde_json::json!({}));
    assert_eq!(j["status"]["ready"], 0);
    assert!(j["status"].get("active").is_none(), "no active count once done: {}", j["status"]);
    let pods = job_pods(&s, "count");
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert!(p["metadata"].get("finalizers").is_none(), "the tracking finalizer is gone once counted: {}", p["metadata"]);
        assert!(p["metadata"]["name"].as_str().unwrap().starts_with("count-"));
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!((owner["kind"].as_str(), owner["controller"].as_bool()), (Some("Job"), Some(true)));
    }
    assert!(s.k(&["logs", "job/count"]).contains("counted"));
    let ev = events(&s, "count");
    assert_eq!(ev.matches("SuccessfulCreate: Created pod: count-").count(), 3, "{ev}");
    assert!(ev.contains("Completed: Job completed"), "{ev}");

    let j = job(&s, "indexed");
    assert_eq!(j["status"]["completedIndexes"], "0-2");
    assert_eq!(j["status"]["succeeded"], 3);
    let mut seen: Vec<String> = job_pods(&s, "indexed")
        .iter()
        .map(|p| {
            let ix = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap().to_string();
            assert_eq!(p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"], ix.as_str());
            assert!(p["metadata"]["name"].as_str().unwrap().starts_with(&format!("indexed-{ix}-")));
            assert_eq!(p["spec"]["hostname"], format!("indexed-{ix}"));
            let log = s.k(&["logs", p["metadata"]["name"].as_str().unwrap()]);
            assert_eq!(log.trim(), format!("index={ix} host=indexed-{ix}"));
            ix
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);

    // `kubectl create job` made a single completion; the table shows it.
    let table = s.k(&["get", "job", "once"]);
    assert!(table.contains("Complete") && table.contains("1/1"), "{table}");

    // The template of a Job is fixed, and so is its selector.
    let out = s.kubectl(&["patch", "job", "count", "--type=merge", "-p", r#"{"spec":{"template":{"spec":{"activeDeadlineSeconds":5}}}}"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("spec.template") && err.contains("field is immutable"), "{err}");
    let out = s.kubectl(&["patch", "job", "count", "--type=merge", "-p", r#"{"spec":{"selector":{"matchLabels":{"a":"b"}}}}"#]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.selector"), "{}", String::from_utf8_lossy(&out.stderr));

    // Deleting a Job takes its pods with it (none kept by a finalizer).
    s.k(&["delete", "job", "count"]);
    assert!(eventually(Duration::from_secs(30), || job_pods(&s, "count").is_empty()), "the Job's pods stayed");
}

#[test]
fn failing_jobs_stop_at_their_backoff_limit_failure_policy_or_deadline() {
    let s = server_with_image();
    apply(
        &s,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: retry}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "testbox:1.0", command: [sh, -c, "exit 3"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: policy}
spec:
  backoffLimit: 6
  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes: {containerName: main, operator: In, values: [42]}
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "testbox:1.0", command: [sh, -c, "exit 42"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: slow}
spec:
  activeDeadlineSeconds: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "testbox:1.0", command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 1; done"]}]
"#,
    );
    // The pod failure policy fails the Job at the first pod, without retries.
    wait_for(&s, "job/policy", "failed");
    let j = job(&s, "policy");
    assert_eq!(conditions(&j), "FailureTarget=True:PodFailurePolicy;Failed=True:PodFailurePolicy");
    let message = j["status"]["conditions"][1]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Container main for pod default/policy-") && message.ends_with("failed with exit code 42 matching FailJob rule at index 0"),
        "{message}"
    );
    assert_eq!(j["status"]["failed"], 1);
    assert_eq!(job_pods(&s, "policy").len(), 1);

    // The deadline ends a pod that would run for ever.
    wait_for(&s, "job/slow", "failed");
    let j = job(&s, "slow");
    assert_eq!(conditions(&j), "FailureTarget=True:DeadlineExceeded;Failed=True:DeadlineExceeded");
    assert!(events(&s, "slow").contains("DeadlineExceeded: Job was active longer than specified deadline"));
    assert!(eventually(Duration::from_secs(30), || job_pods(&s, "slow")
        .iter()
        .all(|p| p["metadata"].get("deletionTimestamp").is_none() && p["status"]["phase"] != "Running")));

    // Two failures exceed a backoffLimit of 1; the replacement waited its back-off.
    wait_for(&s, "job/retry", "failed");
    let j = job(&s, "retry");
    assert_eq!(conditions(&j), "FailureTarget=True:BackoffLimitExceeded;Failed=True:BackoffLimitExceeded");
    assert_eq!(j["status"]["failed"], 2);
    let mut pods = job_pods(&s, "retry");
    pods.sort_by_key(|p| p["metadata"]["creationTimestamp"].as_str().unwrap().to_string());
    assert_eq!(pods.len(), 2);
    let waited = replaced_after(&pods[0], &pods[1]);
    assert!(waited >= time::Duration::seconds(9), "replaced after {waited} only");
    assert!(events(&s, "retry").contains("BackoffLimitExceeded: Job has reached the specified backoff limit"));
}

/// `backoffLimitPerIndex`: each index retries alone, carries its failure count to its
/// replacement, and fails alone; the Job fails once every index has ended, or at once
/// past `maxFailedIndexes`.
#[test]
fn indexes_fail_on_their_own_under_a_backoff_limit_per_index() {
    let s = server_with_image();
    apply(
        &s,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: perindex}
spec:
  completionMode: Indexed
  completions: 4
  parallelism: 4
  backoffLimitPerIndex: 1
  maxFailedIndexes: 2
  podFailurePolicy:
    rules:
    - action: FailIndex
      onExitCodes: {containerName: main, operator: In, values: [42]}
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "testbox:1.0", command: [sh, -c, "case $JOB_COMPLETION_INDEX in 1) exit 3;; 3) exit 42;; esac"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: strict}
spec:
  completionMode: Indexed
  completions: 4
  parallelism: 1
  backoffLimitPerIndex: 0
  maxFailedIndexes: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "testbox:1.0", command: [sh, -c, "exit 1"]}]
"#,
    );
    // Defaults as upstream's: no global limit to reach first; a failure policy's pods
    // are replaced only once failed.
    let j = job(&s, "perindex");
    assert_eq!((j["spec"]["backoffLimit"].as_i64(), j["spec"]["podReplacementPolicy"].as_str()), (Some(2147483647), Some("Failed")));

    // One failed index is one too many for maxFailedIndexes 0.
    wait_for(&s, "job/strict", "failed");
    let j = job(&s, "strict");
    assert_eq!(conditions(&j), "FailureTarget=True:MaxFailedIndexesExceeded;Failed=True:MaxFailedIndexesExceeded");
    assert_eq!((j["status"]["failedIndexes"].as_str(), j["status"]["failed"].as_i64()), (Some("0"), Some(1)));
    assert_eq!(job_pods(&s, "strict").len(), 1);

    // Index 3 fails at once by the FailIndex rule; index 1 fails twice (backoffLimitPerIndex
    // 1); 0 and 2 succeed. With every index ended, the Job fails for its failed indexes.
    wait_for(&s, "job/perindex", "failed");
    let j = job(&s, "perindex");
    assert_eq!(conditions(&j), "FailureTarget=True:FailedIndexes;Failed=True:FailedIndexes");
    assert_eq!(j["status"]["conditions"][1]["message"], "Job has failed indexes");
    let st = &j["status"];
    assert_eq!(
        (st["failedIndexes"].as_str(), st["completedIndexes"].as_str(), st["succeeded"].as_i64(), st["failed"].as_i64()),
        (Some("1,3"), Some("0,2"), Some(2), Some(3)),
        "{st}"
    );
    assert!(events(&s, "perindex").contains("FailedIndexes: Job has failed indexes"));
    let of_index = |ix: &str| {
        let mut v: Vec<Value> =
            job_pods(&s, "perindex").into_iter().filter(|p| p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == ix).collect();
        v.sort_by_key(|p| p["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string());
        v
    };
    let count = |p: &Value| p["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"].as_str().unwrap_or("").to_string();
    let retried = of_index("1");
    assert_eq!(retried.iter().map(count).collect::<Vec<_>>(), ["0", "1"], "index 1 ran twice, the second knowing of the first failure");
    // The retry of index 1 waited the index's own back-off.
    let waited = replaced_after(&retried[0], &retried[1]);
    assert!(waited >= time::Duration::seconds(9), "replaced after {waited} only");
    assert_eq!(of_index("3").len(), 1, "a FailIndex failure is not retried");
    assert!(["0", "2"].iter().all(|ix| of_index(ix).len() == 1));
    // No pod is left holding the tracking finalizer.
    assert!(job_pods(&s, "perindex").iter().all(|p| p["metadata"].get("finalizers").is_none()));

    // Bad input: the per-index fields need Indexed mode; FailIndex needs the per-index limit.
    for (spec, want) in [
        ("  backoffLimitPerIndex: 1\n", "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode"),
        (
            "  completionMode: Indexed\n  completions: 2\n  maxFailedIndexes: 3\n",
            "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
        ),
        (
            "  completionMode: Indexed\n  completions: 2\n  backoffLimitPerIndex: 1\n  maxFailedIndexes: 3\n",
            "spec.maxFailedIndexes: Invalid value: 3: must be less than or equal to completions",
        ),
        (
            "  podFailurePolicy:\n    rules: [{action: FailIndex, onExitCodes: {operator: In, values: [1]}}]\n",
            "spec.podFailurePolicy.rules[0].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex to be set",
        ),
    ] {
        let yaml = format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: bad}}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      containers: [{{name: main, image: \"testbox:1.0\"}}]\n"
        );
        let out = s.k_stdin(&["create", "-f", "-"], &yaml);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("is invalid") && err.contains(want), "{spec}: {err}");
    }
    assert!(!s.kubectl(&["get", "job", "bad"]).status.success());
}

#[test]
fn suspended_jobs_wait_and_finished_jobs_expire() {
    let s = server_with_image();
    apply(
        &s,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: later}
spec:
  suspend: true
  ttlSecondsAfterFinished: 4
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "testbox:1.0", command: [sh, -c, "echo ran"]}]
"#,
    );
    wait_for(&s, "job/later", "suspended");
    let j = job(&s, "later");
    assert!(j["status"].get("startTime").is_none(), "a suspended Job has not started: {}", j["status"]);
    assert!(job_pods(&s, "later").is_empty());
    s.k(&["patch", "job", "later", "--type=merge", "-p", r#"{"spec":{"suspend":false}}"#]);
    assert!(eventually(Duration::from_secs(60), || {
        let j = job(&s, "later");
        j["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Complete"))
    }));
    let ev = events(&s, "later");
    assert!(ev.contains("Suspended: Job suspended") && ev.contains("Resumed: Job resumed"), "{ev}");
    // Four seconds after it finished (time enough for the poll above to see Complete
    // even on a loaded machine; with one second it once missed it), the Job and its
    // pods are gone.
    assert!(eventually(Duration::from_secs(30), || !s.kubectl(&["get", "job", "later"]).status.success()), "the Job did not expire");
    assert!(eventually(Duration::from_secs(30), || job_pods(&s, "later").is_empty()));
}

/// Plays the kubelet: writes a pod's phase through the status subresource.
fn write_phase(s: &Server, pod: &str, phase: &str) {
    let body = serde_json::json!({"status": {"phase": phase}}).to_string();
    let (code, out) = s.curl("PATCH", &format!("/api/v1/namespaces/default/pods/{pod}/status"), Some("application/merge-patch+json"), Some(body.as_bytes()));
    assert_eq!(code, 200, "{out}");
}

/// Without a node, the test plays the kubelet: it writes pod phases through the status
/// subresource and the Job follows.
#[test]
fn a_job_follows_pod_statuses_written_by_hand() {
    let s = Server::start_with(&["--node=false"]);
    apply(
        &s,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: hand}
spec:
  completions: 2
  parallelism: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "nothing:1"}]
"#,
    );
    let finish = |phase: &str| {
        let mut name = String::new();
        assert!(eventually(Duration::from_secs(20), || {
            let pods: Vec<Value> = job_pods(&s, "hand").into_iter().filter(|p| p["status"]["phase"] == "Pending").collect();
            name = pods.first().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).unwrap_or_default();
            pods.len() == 1
        }));
        write_phase(&s, &name, phase);
    };
    assert!(eventually(Duration::from_secs(20), || job(&s, "hand")["status"]["active"] == 1));
    finish("Failed");
    assert!(eventually(Duration::from_secs(20), || job(&s, "hand")["status"]["failed"] == 1));
    // The replacement comes after the 10 s back-off.
    finish("Succeeded");
    finish("Succeeded");
    wait_for(&s, "job/hand", "complete");
    let j = job(&s, "hand");
    assert_eq!((j["status"]["succeeded"].as_i64(), j["status"]["failed"].as_i64()), (Some(2), Some(1)));
}

/// Under `podReplacementPolicy: Failed` an index whose pod is still terminating is not
/// pending (upstream's `firstPendingIndexes`): raising parallelism then starts the next
/// free indexes, never a second pod for the terminating one.
#[test]
fn a_terminating_index_is_not_started_again_when_only_failed_pods_are_replaced() {
    let s = Server::start_with(&["--node=false"]);
    apply(
        &s,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: slots}
spec:
  completions: 4
  parallelism: 2
  completionMode: Indexed
  podReplacementPolicy: Failed
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "nothing:1"}]
"#,
    );
    let index = |p: &Value| p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap_or("").to_string();
    let indexes = || {
        let mut ix: Vec<String> = job_pods(&s, "slots").iter().map(index).collect();
        ix.sort();
        ix
    };
    assert!(eventually(Duration::from_secs(20), || indexes() == ["0", "1"]), "{:?}", indexes());
    // Index 0's pod is deleted but held by a finalizer: it terminates and stays.
    let zero = job_pods(&s, "slots").into_iter().find(|p| index(p) == "0").unwrap();
    let zero = zero["metadata"]["name"].as_str().unwrap().to_string();
    let hold = r#"[{"op":"add","path":"/metadata/finalizers/-","value":"test.nanokube.io/hold"}]"#;
    s.k(&["patch", "pod", &zero, "--type=json", "-p", hold]);
    s.k(&["delete", "pod", &zero, "--wait=false"]);
    assert!(eventually(Duration::from_secs(20), || job(&s, "slots")["status"]["terminating"] == 1), "{}", job(&s, "slots")["status"]);
    s.k(&["patch", "job", "slots", "--type=merge", "-p", r#"{"spec":{"parallelism":4}}"#]);
    assert!(eventually(Duration::from_secs(20), || indexes() == ["0", "1", "2", "3"]), "{:?}", indexes());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(indexes(), ["0", "1", "2", "3"], "index 0 was started again while its pod terminated");
    assert_eq!(job(&s, "slots")["status"]["active"], 3);
    // Once the pod has failed and gone, index 0 gets its replacement.
    let failed = serde_json::json!({"status": {"phase": "Failed"}}).to_string();
    let (code, out) = s.curl("PATCH", &format!("/api/v1/namespaces/default/pods/{zero}/status"), Some("application/merge-patch+json"), Some(failed.as_bytes()));
    assert_eq!(code, 200, "{out}");
    // Our finalizer is removed by value: the Job controller removes its own meanwhile.
    let released = || {
        let pod: Value = serde_json::from_str(&s.k(&["get", "pod", &zero, "-o", "json"])).unwrap();
        let Some(at) = pod["metadata"]["finalizers"].as_array().and_then(|f| f.iter().position(|f| f == "test.nanokube.io/hold")) else { return true };
        let patch = serde_json::json!([
            {"op": "test", "path": format!("/metadata/finalizers/{at}"), "value": "test.nanokube.io/hold"},
            {"op": "remove", "path": format!("/metadata/finalizers/{at}")},
        ]);
        s.kubectl(&["patch", "pod", &zero, "--type=json", "-p", &patch.to_string()]).status.success()
    };
    assert!(eventually(Duration::from_secs(20), released));
    assert!(
        eventually(Duration::from_secs(30), || {
            let pods = job_pods(&s, "slots");
            pods.len() == 4 && pods.iter().all(|p| p["metadata"]["name"] != zero.as_str()) && indexes() == ["0", "1", "2", "3"]
        }),
        "{:?} {}",
        indexes(),
        job(&s, "slots")["status"]
    );
}

/// `successPolicy`: an Indexed Job whose rule names index 0 succeeds when that index
/// does (`SuccessCriteriaMet`, then `Complete`, both `SuccessPolicy`), and its other
/// pods are stopped. Pod statuses are written by hand, as upstream's controller tests do.
#[test]
fn a_success_policy_ends_an_indexed_job_early() {
    let s = Server::start_with(&["--node=false"]);
    apply(
        &s,
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: leader}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 3
  successPolicy:
    rules: [{succeededIndexes: "0"}]
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "nothing:1"}]
"#,
    );
    assert!(eventually(Duration::from_secs(20), || job_pods(&s, "leader").len() == 3));
    let zero = job_pods(&s, "leader")
        .into_iter()
        .find(|p| p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "0")
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .unwrap();
    write_phase(&s, &zero, "Succeeded");
    wait_for(&s, "job/leader", "complete");
    let j = job(&s, "leader");
    assert_eq!(conditions(&j), "SuccessCriteriaMet=True:SuccessPolicy;Complete=True:SuccessPolicy");
    let met = j["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "SuccessCriteriaMet").cloned().unwrap();
    assert_eq!(met["message"], "Matched rules at index 0");
    assert_eq!(j["status"]["completedIndexes"], "0");
    assert_eq!(j["status"]["succeeded"], 1);
    // The other indexes' pods were stopped, not left running.
    assert!(
        eventually(Duration::from_secs(20), || job_pods(&s, "leader")
            .iter()
            .all(|p| p["metadata"]["name"] == zero.as_str() || p["metadata"].get("deletionTimestamp").is_some())),
        "{:?}",
        job_pods(&s, "leader").iter().map(|p| p["metadata"]["name"].clone()).collect::<Vec<_>>()
    );
}
