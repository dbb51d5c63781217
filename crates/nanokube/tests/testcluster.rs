//! `TestCluster`: in-process clusters for kube-rs tests; many at once; clean shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use nanokube::testing::TestCluster;

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

async fn eventually<F: std::future::Future<Output = bool>>(timeout: Duration, mut f: impl FnMut() -> F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clusters_in_parallel_and_nothing_left_behind() {
    let before = threads();
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..20 {
        starts.spawn(async move {
            let c = TestCluster::start().await.unwrap();
            let cms: Api<ConfigMap> = Api::default_namespaced(c.client());
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(format!("cm-{i}"));
            cms.create(&PostParams::default(), &cm).await.unwrap();
            let names: Vec<String> = cms.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect();
            assert!(names.contains(&format!("cm-{i}")), "each cluster has its own store");
            assert!(!names.iter().any(|n| n.starts_with("cm-") && *n != format!("cm-{i}")));
            c
        });
    }
    let mut clusters = Vec::new();
    while let Some(c) = starts.join_next().await {
        clusters.push(c.unwrap());
    }
    assert_eq!(clusters.len(), 20);
    let dirs: Vec<std::path::PathBuf> = clusters.iter().map(|c| c.kubeconfig_path().parent().unwrap().parent().unwrap().to_path_buf()).collect();
    let ports: Vec<u16> = clusters.iter().map(|c| c.server_url().rsplit(':').next().unwrap().parse().unwrap()).collect();
    let mut unique = ports.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20);
    assert!(dirs.iter().all(|d| d.exists()));
    for c in clusters {
        c.shutdown().await;
    }
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    for p in &ports {
        assert!(std::net::TcpStream::connect(("127.0.0.1", *p)).is_err(), "port {p} still open");
    }
    assert!(eventually(Duration::from_secs(10), || async { threads() <= before }).await, "threads: {} before, {} after", before, threads());
}

#[derive(Clone)]
struct Ctx {
    client: kube::Client,
}

#[derive(Debug)]
struct ReconcileError(kube::Error);
impl std::fmt::Display for ReconcileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl std::error::Error for ReconcileError {}

/// Marks every ConfigMap labelled `demo=yes` as reconciled, copying its data size.
async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = cm.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let size = cm.data.as_ref().map_or(0, |d| d.len());
    let patch = serde_json::json!({"metadata": {"annotations": {"demo/reconciled": "true", "demo/keys": size.to_string()}}});
    api.patch(cm.metadata.name.as_deref().unwrap(), &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(ReconcileError)?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<ConfigMap>, _: &ReconcileError, _: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test]
async fn kube_rs_controller_reconciles_against_a_test_cluster() {
    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let ctx = Arc::new(Ctx { client: client.clone() });
    let controller =
        tokio::spawn(Controller::new(cms.clone(), watcher::Config::default().labels("demo=yes")).run(reconcile, error_policy, ctx).for_each(|_| async {}));
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("watched".into());
    cm.metadata.labels = Some([("demo".to_string(), "yes".to_string())].into());
    cm.data = Some([("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into());
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let mut ignored = ConfigMap::default();
    ignored.metadata.name = Some("ignored".into());
    cms.create(&PostParams::default(), &ignored).await.unwrap();

    let done = eventually(Duration::from_secs(10), || async {
        cms.get("watched").await.ok().and_then(|c| c.metadata.annotations).is_some_and(|a| a.get("demo/keys").map(String::as_str) == Some("2"))
    })
    .await;
    assert!(done, "the controller reconciled the labelled ConfigMap");
    // A change is seen through the watch and reconciled again.
    cms.patch("watched", &PatchParams::default(), &Patch::Merge(serde_json::json!({"data": {"c": "3"}}))).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || async { cms.get("watched").await.unwrap().metadata.annotations.unwrap()["demo/keys"] == "3" }).await);
    assert!(cms.get("ignored").await.unwrap().metadata.annotations.is_none(), "the selector kept it out");
    controller.abort();
    cluster.shutdown().await;
}

#[tokio::test]
async fn kube_rs_discovery_legacy_and_aggregated() {
    let cluster = TestCluster::start().await.unwrap();
    let d = kube::Discovery::new(cluster.client()).run().await.unwrap();
    let apps = d.get("apps").expect("apps group");
    assert!(apps.recommended_resources().iter().any(|(r, _)| r.plural == "deployments"));
    let d = kube::Discovery::new(cluster.client()).run_aggregated().await.unwrap();
    assert!(d.get("rbac.authorization.k8s.io").is_some());
    let (ar, caps) = kube::discovery::pinned_kind(&cluster.client(), &kube::api::GroupVersionKind::gvk("", "v1", "Pod")).await.unwrap();
    assert_eq!(ar.plural, "pods");
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    cluster.shutdown().await;
}

/// Reconciles `Greeting` custom objects: writes `status.message` from `spec.name` and
/// `status.observedGeneration`, through the status subresource.
async fn reconcile_greeting(obj: Arc<kube::api::DynamicObject>, ctx: Arc<(kube::Client, kube::api::ApiResource)>) -> Result<Action, ReconcileError> {
    let (client, ar) = &*ctx;
    let ns = obj.metadata.namespace.clone().unwrap_or_default();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, ar);
    let name = obj.data["spec"]["name"].as_str().unwrap_or("nobody");
    let status = serde_json::json!({"status": {"message": format!("Hello, {name}!"), "observedGeneration": obj.metadata.generation}});
    api.patch_status(obj.metadata.name.as_deref().unwrap(), &PatchParams::default(), &Patch::Merge(&status)).await.map_err(ReconcileError)?;
    Ok(Action::await_change())
}

#[tokio::test]
async fn kube_rs_controller_reconciles_a_custom_resource() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{DynamicObject, GroupVersionKind};
    use kube::runtime::{conditions, wait::await_condition};

    let cluster = TestCluster::start().await.unwrap();
    let client = cluster.client();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "greetings.demo.example.com"},
        "spec": {"group": "demo.example.com", "scope": "Namespaced", "names": {"plural": "greetings", "kind": "Greeting"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"name": {"type": "string"}}},
                    "status": {"type": "object", "properties": {"message": {"type": "string"}, "observedGeneration": {"type": "integer"}}}}}}}]}
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = await_condition(crds.clone(), "greetings.demo.example.com", conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(5), established).await.expect("CRD established in time").unwrap();

    // kube-rs finds the kind through discovery, as an operator would.
    let (ar, caps) = kube::discovery::pinned_kind(&client, &GroupVersionKind::gvk("demo.example.com", "v1", "Greeting")).await.unwrap();
    assert_eq!(ar.plural, "greetings");
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let ctx = Arc::new((client.clone(), ar.clone()));
    let controller = tokio::spawn(
        Controller::new_with(api.clone(), watcher::Config::default(), ar.clone())
            .run(reconcile_greeting, |_, _, _| Action::requeue(Duration::from_millis(200)), ctx)
            .for_each(|_| async {}),
    );

    let obj: DynamicObject = serde_json::from_value(
        serde_json::json!({"apiVersion": "demo.example.com/v1", "kind": "Greeting", "metadata": {"name": "hi"}, "spec": {"name": "world"}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    let status_is = |want: &'static str, generation: i64| {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move { api.get("hi").await.ok().is_some_and(|o| o.data["status"]["message"] == want && o.data["status"]["observedGeneration"] == generation) }
        }
    };
    assert!(eventually(Duration::from_secs(10), status_is("Hello, world!", 1)).await, "reconciled");
    // A spec change moves the generation; the controller sees it through its watch.
    api.patch("hi", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"name": "nanokube"}}))).await.unwrap();
    assert!(eventually(Duration::from_secs(10), status_is("Hello, nanokube!", 2)).await, "reconciled again");
    controller.abort();
    cluster.shutdown().await;
}

/// A kube-rs `Controller` over Jobs that owns their pods: a pod's change (marked
/// Succeeded here, as a kubelet would) reaches the Job's reconciler through the pod's
/// owner reference, and the Job controller completes the Job meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_controller_follows_a_jobs_pods() {
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;

    struct Ctx {
        client: kube::Client,
    }
    async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
        let name = job.metadata.name.clone().unwrap_or_default();
        let pods: Api<Pod> = Api::default_namespaced(ctx.client.clone());
        let listed = pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}"))).await?;
        let done = listed.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")).count();
        let jobs: Api<Job> = Api::default_namespaced(ctx.client.clone());
        let patch = serde_json::json!({"metadata": {"annotations": {"demo/pods": listed.items.len().to_string(), "demo/succeeded": done.to_string()}}});
        jobs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<Job>, _: &kube::Error, _: Arc<Ctx>) -> Action {
        Action::requeue(Duration::from_millis(200))
    }

    let cluster = TestCluster::start_with(|cfg| cfg.node = false).await.unwrap();
    let client = cluster.client();
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let ctx = Arc::new(Ctx { client: client.clone() });
    let controller = tokio::spawn(
        Controller::new(jobs.clone(), watcher::Config::default())
            .owns(pods.clone(), watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| async {}),
    );
    let job: Job = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "work"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "nothing:1"}]}}},
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    let annotation = |key: &'static str, want: &'static str| {
        let jobs = jobs.clone();
        move || {
            let jobs = jobs.clone();
            async move { jobs.get("work").await.ok().and_then(|j| j.metadata.annotations).is_some_and(|a| a.get(key).map(String::as_str) == Some(want)) }
        }
    };
    assert!(eventually(Duration::from_secs(10), annotation("demo/pods", "1")).await, "the Job's pod reached the reconciler");
    let pod = pods.list(&ListParams::default().labels("batch.kubernetes.io/job-name=work")).await.unwrap().items[0].metadata.name.clone().unwrap();
    pods.patch_status(&pod, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": {"phase": "Succeeded"}}))).await.unwrap();
    assert!(eventually(Duration::from_secs(10), annotation("demo/succeeded", "1")).await, "the pod's change reached the reconciler");
    let complete = || async {
        jobs.get("work")
            .await
            .ok()
            .and_then(|j| j.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Complete" && c.status == "True"))
    };
    assert!(eventually(Duration::from_secs(10), complete).await, "the Job completed");
    controller.abort();
    cluster.shutdown().await;
}
