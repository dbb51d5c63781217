//! Deployments with the real kubectl and pods that really run: rolled out and
//! `Available`, updated (`set env`, `set image`) within maxSurge/maxUnavailable at every
//! observed step, rolled back with `rollout undo`, restarted, paused and resumed, scaled,
//! with upstream's revision annotations, history, conditions and events.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, Server};

const SCRIPT: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

fn replica_sets(s: &Server) -> Vec<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_str(&s.k(&["get", "rs", "-l", "app=web", "-o", "json"])).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn rollout(s: &Server) {
    let out = s.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deployment \"web\" successfully rolled out"));
}

/// Follow a rollout to its end, checking each snapshot of the ReplicaSets: never more
/// than `max_total` pods wanted at once.
fn rollout_within(s: &Server, max_total: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let total: i64 = replica_sets(s).iter().map(|r| r["spec"]["replicas"].as_i64().unwrap_or(0)).sum();
        assert!(total <= max_total, "{total} pods wanted at once, more than {max_total}");
        let d: serde_json::Value = serde_json::from_str(&s.k(&["get", "deployment", "web", "-o", "json"])).unwrap();
        let st = &d["status"];
        let want = d["spec"]["replicas"].as_i64().unwrap();
        if st["observedGeneration"] == d["metadata"]["generation"]
            && st["updatedReplicas"].as_i64() == Some(want)
            && st["availableReplicas"].as_i64() == Some(want)
            && st["replicas"].as_i64() == Some(want)
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the rollout did not finish: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_deployment_rolls_out_updates_rolls_back_and_pauses() {
    let s = server_with_image();
    s.k(&["create", "deployment", "web", "--image=testbox:1.0", "--replicas=3", "--", "sh", "-c", SCRIPT]);
    rollout(&s);
    let ok = s.kubectl(&["wait", "--for=condition=Available", "deployment/web", "--timeout=30s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let rss = replica_sets(&s);
    assert_eq!(rss.len(), 1);
    let first = rss[0]["metadata"]["name"].as_str().unwrap().to_string();
    let hash = rss[0]["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_string();
    assert_eq!(first, format!("web-{hash}"));
    assert_eq!(rss[0]["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    assert_eq!(rss[0]["spec"]["selector"]["matchLabels"]["pod-template-hash"], hash.as_str());
    assert_eq!(s.k(&["get", "pods", "-l", &format!("pod-template-hash={hash}"), "-o", "name"]).lines().count(), 3);
    let conditions = s.k(&["get", "deployment", "web", "-o", "jsonpath={range .status.conditions[*]}{.type}={.status}:{.reason};{end}"]);
    assert_eq!(conditions, "Available=True:MinimumReplicasAvailable;Progressing=True:NewReplicaSetAvailable;");
    assert_eq!(s.k(&["get", "deployment", "web", "-o", "jsonpath={.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]), "1");

    // An update: a second ReplicaSet, 25% surge (1 pod) and 25% unavailable (0) at most.
    s.k(&["set", "env", "deployment/web", "COLOR=blue"]);
    rollout_within(&s, 4);
    rollout(&s);
    let rss = replica_sets(&s);
    assert_eq!(rss.len(), 2);
    let old = rss.iter().find(|r| r["metadata"]["name"] == first.as_str()).unwrap();
    assert_eq!(old["spec"]["replicas"], 0, "the old ReplicaSet scaled to zero");
    let history = s.k(&["rollout", "history", "deployment/web"]);
    assert!(history.contains("1 ") && history.contains("2 "), "{history}");
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=web,reason=ScalingReplicaSet", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains(&format!("Scaled up replica set {first} from 0 to 3")), "{events}");
    assert!(events.contains(&format!("Scaled down replica set {first} from 3 to")), "{events}");

    // Back to revision 1: its ReplicaSet again, as revision 3.
    s.k(&["rollout", "undo", "deployment/web"]);
    rollout_within(&s, 4);
    rollout(&s);
    let rss = replica_sets(&s);
    let back = rss.iter().find(|r| r["metadata"]["name"] == first.as_str()).unwrap();
    assert_eq!(back["spec"]["replicas"], 3);
    assert_eq!(back["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    assert!(s.k(&["get", "deployment", "web", "-o", "jsonpath={.spec.template.spec.containers[0].env}"]).is_empty());

    // Scaled, then restarted (a new template annotation: a new ReplicaSet).
    s.k(&["scale", "deployment/web", "--replicas=2"]);
    rollout(&s);
    assert_eq!(s.k(&["get", "deployment", "web", "-o", "jsonpath={.status.readyReplicas}"]), "2");
    s.k(&["rollout", "restart", "deployment/web"]);
    rollout(&s);
    assert_eq!(replica_sets(&s).len(), 3);

    // Paused: a change makes no ReplicaSet until resumed.
    s.k(&["rollout", "pause", "deployment/web"]);
    s.k(&["set", "env", "deployment/web", "COLOR=green"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(replica_sets(&s).len(), 3);
    assert!(eventually(Duration::from_secs(10), || s.k(&[
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}"
    ]) == "DeploymentPaused"));
    s.k(&["rollout", "resume", "deployment/web"]);
    rollout(&s);
    assert_eq!(replica_sets(&s).len(), 4);

    // Deleting the Deployment takes its ReplicaSets and pods.
    s.k(&["delete", "deployment", "web"]);
    assert!(eventually(Duration::from_secs(30), || replica_sets(&s).is_empty()));
}

#[test]
fn a_recreate_deployment_stops_the_old_pods_first() {
    let s = server_with_image();
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  strategy: {{type: Recreate}}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: main\n        image: testbox:1.0\n        command: [\"sh\", \"-c\", {SCRIPT:?}]\n"
    );
    let out = s.k_stdin(&["apply", "-f", "-"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    rollout(&s);
    s.k(&["set", "env", "deployment/web", "COLOR=blue"]);
    // At no moment do old and new ReplicaSets both want pods.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let wanting = replica_sets(&s).iter().filter(|r| r["spec"]["replicas"].as_i64().unwrap_or(0) > 0).count();
        assert!(wanting <= 1, "old and new at once");
        let st = s.k(&["get", "deployment", "web", "-o", "jsonpath={.status.updatedReplicas}/{.status.availableReplicas}/{.status.replicas}"]);
        if st == "2/2/2" && replica_sets(&s).len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    rollout(&s);
}

/// A Deployment resized mid-rollout: the active ReplicaSets grow and shrink in
/// proportion, as upstream's proportional scaling (no pods run here, so the rollout
/// stays where the surge left it).
#[test]
fn a_deployment_resized_mid_rollout_scales_its_replica_sets_in_proportion() {
    let s = Server::start_with(&["--node=false"]);
    let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 10\n  selector: {matchLabels: {app: web}}\n  strategy: {rollingUpdate: {maxSurge: 3, maxUnavailable: 2}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: main, image: \"old:1\"}]}\n";
    let out = s.k_stdin(&["create", "-f", "-"], yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // image=replicas (desired/max) of each ReplicaSet, oldest image first.
    let sizes = || {
        let mut v: Vec<String> = replica_sets(&s)
            .iter()
            .map(|r| {
                let a = &r["metadata"]["annotations"];
                format!(
                    "{}={} ({}/{})",
                    r["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap_or(""),
                    r["spec"]["replicas"],
                    a["deployment.kubernetes.io/desired-replicas"].as_str().unwrap_or(""),
                    a["deployment.kubernetes.io/max-replicas"].as_str().unwrap_or("")
                )
            })
            .collect();
        v.sort_by(|a, b| b.cmp(a));
        v
    };
    assert!(eventually(Duration::from_secs(10), || sizes() == ["old:1=10 (10/13)"]), "{:?}", sizes());
    s.k(&["set", "image", "deployment/web", "main=new:2"]);
    // No node runs the pods, so none is ever available: the surge (3) and the unhealthy
    // old pods the unavailability budget lets go (13 - 8 - 3 = 2) leave old 8, new 5.
    assert!(eventually(Duration::from_secs(10), || sizes() == ["old:1=8 (10/13)", "new:2=5 (10/13)"]), "{:?}", sizes());
    // 15 with maxSurge 3 allows 18: 5 more, shared by size (8*18/13 = 11, 5*18/13 = 7).
    s.k(&["scale", "deployment/web", "--replicas=15"]);
    assert!(eventually(Duration::from_secs(10), || sizes() == ["old:1=11 (15/18)", "new:2=7 (15/18)"]), "{:?}", sizes());
    // 5 allows 8: 11*8/18 = 5 and 7*8/18 = 3; then the rollout goes on (2 unhealthy old
    // pods go, the new set grows to 5) and stops where the budget is spent.
    s.k(&["scale", "deployment/web", "--replicas=5"]);
    assert!(eventually(Duration::from_secs(10), || sizes() == ["old:1=3 (5/8)", "new:2=5 (5/8)"]), "{:?}", sizes());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sizes(), ["old:1=3 (5/8)", "new:2=5 (5/8)"], "the sizes moved after the scale settled");
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=web", "-o", "jsonpath={range .items[*]}{.message}\n{end}"]);
    assert!(events.contains("Scaled up replica set") && events.contains("from 8 to 11") && events.contains("from 11 to 5"), "{events}");
}

/// A ReplicaSet name already taken by something else is a hash collision: the
/// Deployment counts it in `status.collisionCount` and names its ReplicaSet anew.
#[test]
fn a_taken_replica_set_name_bumps_the_collision_count() {
    let s = Server::start_with(&["--node=false"]);
    let deployment = |ns: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: main, image: \"web:1\"}}]}}\n"
        )
    };
    let rs_names = |ns: &str| s.k(&["get", "rs", "-n", ns, "-o", "jsonpath={.items[*].metadata.name}"]);
    for ns in ["first", "second"] {
        s.k(&["create", "namespace", ns]);
    }
    // The name this template's ReplicaSet gets, learnt in one namespace...
    let out = s.k_stdin(&["create", "-f", "-"], &deployment("first"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut taken = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        taken = rs_names("first");
        !taken.is_empty()
    }));
    // ...is taken in the other by a ReplicaSet of other pods.
    let squatter = format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {{name: {taken}, namespace: second}}\nspec:\n  replicas: 0\n  selector: {{matchLabels: {{app: other}}}}\n  template:\n    metadata: {{labels: {{app: other}}}}\n    spec: {{containers: [{{name: main, image: \"other:1\"}}]}}\n"
    );
    let out = s.k_stdin(&["create", "-f", "-"], &squatter);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.k_stdin(&["create", "-f", "-"], &deployment("second"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let collisions = || s.k(&["get", "deployment", "web", "-n", "second", "-o", "jsonpath={.status.collisionCount}"]);
    assert!(eventually(Duration::from_secs(10), || collisions() == "1"), "collisionCount {:?}", collisions());
    let mut names = String::new();
    assert!(eventually(Duration::from_secs(10), || {
        names = rs_names("second");
        names.split(' ').count() == 2
    }));
    let own = names.split(' ').find(|n| *n != taken).unwrap_or_default().to_string();
    // The names Go's ComputeHash gives this template, without and with the count 1.
    assert_eq!((taken.as_str(), own.as_str()), ("web-758796f87f", "web-7686dc768b"), "{names}");
    let image = s.k(&["get", "rs", &own, "-n", "second", "-o", "jsonpath={.spec.template.spec.containers[0].image}"]);
    assert_eq!(image, "web:1");
    // The squatter is left as it was, and the count stays once the name is free of clashes.
    let squatter_image = s.k(&["get", "rs", &taken, "-n", "second", "-o", "jsonpath={.spec.template.spec.containers[0].image}{.metadata.ownerReferences}"]);
    assert_eq!(squatter_image, "other:1");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(collisions(), "1");
}

/// `minReadySeconds`: a ready pod counts as available only that long after it became
/// ready; `progressDeadlineSeconds`: a rollout that makes no progress for that long is
/// `Progressing=False ProgressDeadlineExceeded`, which `kubectl rollout status` reports.
#[test]
fn min_ready_seconds_and_the_progress_deadline() {
    let s = Server::start_with(&["--node=false", "--simulated-nodes", "1", "--simulated-start-delay", "0s"]);
    let slow = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: slow}\nspec:\n  replicas: 1\n  minReadySeconds: 3\n  selector: {matchLabels: {app: slow}}\n  template:\n    metadata: {labels: {app: slow}}\n    spec:\n      tolerations: [{key: nanokube.io/simulated, operator: Exists}]\n      containers: [{name: main, image: \"web:1\"}]\n";
    let out = s.k_stdin(&["apply", "-f", "-"], slow);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let field = |f: &str| s.k(&["get", "deployment", "slow", "-o", &format!("jsonpath={{.status.{f}}}")]);
    assert!(eventually(Duration::from_secs(20), || field("readyReplicas") == "1"));
    let ready_at = s.k(&["get", "pods", "-l", "app=slow", "-o", "jsonpath={.items[0].status.conditions[?(@.type==\"Ready\")].lastTransitionTime}"]);
    let ready_at = time::OffsetDateTime::parse(&ready_at, &time::format_description::well_known::Rfc3339).unwrap();
    let seen_available = |s: &Server| s.k(&["get", "deployment", "slow", "-o", "jsonpath={.status.availableReplicas}"]) == "1";
    if time::OffsetDateTime::now_utc() - ready_at < time::Duration::seconds(2) {
        assert!(!seen_available(&s), "available before minReadySeconds passed");
    }
    assert!(eventually(Duration::from_secs(20), || seen_available(&s)));
    let available_at = time::OffsetDateTime::now_utc();
    assert!(available_at - ready_at >= time::Duration::seconds(3), "available {} after ready", available_at - ready_at);
    assert_eq!(s.k(&["get", "deployment", "slow", "-o", "jsonpath={.status.conditions[?(@.type==\"Available\")].status}"]), "True");

    // Pods that can run nowhere: no progress, so the deadline passes.
    let stuck = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: stuck}\nspec:\n  replicas: 1\n  progressDeadlineSeconds: 2\n  selector: {matchLabels: {app: stuck}}\n  template:\n    metadata: {labels: {app: stuck}}\n    spec:\n      nodeSelector: {nowhere: \"true\"}\n      containers: [{name: main, image: \"web:1\"}]\n";
    let out = s.k_stdin(&["apply", "-f", "-"], stuck);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let progressing = || {
        s.k(&["get", "deployment", "stuck", "-o", "jsonpath={.status.conditions[?(@.type==\"Progressing\")].status}/{.status.conditions[?(@.type==\"Progressing\")].reason}/{.status.conditions[?(@.type==\"Progressing\")].message}"])
    };
    let rs = || s.k(&["get", "rs", "-l", "app=stuck", "-o", "jsonpath={.items[0].metadata.name}"]);
    assert!(eventually(Duration::from_secs(20), || progressing().starts_with("False/ProgressDeadlineExceeded/")), "{}", progressing());
    assert_eq!(progressing(), format!("False/ProgressDeadlineExceeded/ReplicaSet \"{}\" has timed out progressing.", rs()));
    let out = s.kubectl(&["rollout", "status", "deployment/stuck", "--timeout=10s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"deployment "stuck" exceeded its progress deadline"#), "{err}");
}
