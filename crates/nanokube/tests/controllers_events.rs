//! Events as the controllers and the node write them: a repeat raises the one Event's
//! `count` (`kubectl describe` and `kubectl events` show `x3`), and Events expire an
//! hour after their last write.

use nanokube::testing::TestCluster;
use nanokube_apiserver::events::Recorder;
use nanokube_apiserver::registry::WriteOptions;
use serde_json::json;

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeats_are_counted_and_events_expire() {
    let tc = TestCluster::start_with(|cfg| cfg.node = false).await.unwrap();
    let registry = tc.registry();
    let cms = nanokube_api::resources::find("", "v1", "configmaps").unwrap();
    let cm = registry.create(cms, "default", json!({"metadata": {"name": "watched"}}), &WriteOptions::default()).await.unwrap();
    let recorder = Recorder::new("test-controller", None);
    for _ in 0..3 {
        recorder.record(&*registry, cm.value(), None, "Warning", "Trouble", "the same trouble").await;
    }
    recorder.record(&*registry, cm.value(), None, "Normal", "Fine", "all fine").await;
    let kubectl = |args: &[&str]| {
        let out = std::process::Command::new(common::kubectl_path("kubectl")).arg("--kubeconfig").arg(tc.kubeconfig_path()).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let counts = kubectl(&["get", "events", "--field-selector", "involvedObject.name=watched", "-o", "jsonpath={range .items[*]}{.reason}={.count};{end}"]);
    let mut counts: Vec<&str> = counts.split(';').filter(|s| !s.is_empty()).collect();
    counts.sort();
    assert_eq!(counts, ["Fine=1", "Trouble=3"]);
    let describe = kubectl(&["describe", "configmap", "watched"]);
    assert!(describe.contains("Trouble") && describe.contains("(x3 over"), "{describe}");
    assert!(describe.contains("test-controller"), "{describe}");
    // `kubectl events` (its own command since 1.26) shows the same history.
    let events = kubectl(&["events", "--for", "configmap/watched"]);
    let trouble = events.lines().find(|l| l.contains("Trouble")).unwrap_or_default();
    assert!(
        trouble.contains("(x3 over") && trouble.contains("Warning") && trouble.contains("ConfigMap/watched") && trouble.contains("the same trouble"),
        "{events}"
    );
    assert!(events.lines().any(|l| l.contains("Fine") && l.contains("Normal") && l.contains("all fine")), "{events}");

    // An hour and a bit later, the sweep has removed them.
    nanokube_controllers::event_ttl::sweep(&registry, time::OffsetDateTime::now_utc() + time::Duration::minutes(59)).await;
    assert!(!kubectl(&["get", "events", "--field-selector", "involvedObject.name=watched", "-o", "name"]).is_empty(), "expired early");
    nanokube_controllers::event_ttl::sweep(&registry, time::OffsetDateTime::now_utc() + time::Duration::minutes(61)).await;
    assert_eq!(kubectl(&["get", "events", "--field-selector", "involvedObject.name=watched", "-o", "name"]), "");
    tc.shutdown().await;
}
