//! ResourceQuotas and LimitRanges with the real kubectl: defaults filled in and noted,
//! limits refused, quotas counting and refusing with upstream's messages, usage given
//! back when pods go, object counts, and a Deployment whose pods the quota refuses
//! saying so in its conditions.

mod common;

use std::time::Duration;

use common::{eventually, Server};

fn pod_yaml(name: &str, resources: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: q}}\nspec:\n  containers:\n  - name: main\n    image: nothing:1\n    resources: {resources}\n")
}

fn create(s: &Server, yaml: &str) -> (bool, String) {
    let out = s.k_stdin(&["create", "-f", "-"], yaml);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn used(s: &Server, quota: &str) -> String {
    s.k(&["get", "quota", quota, "-n", "q", "-o", "jsonpath={.status.used}"])
}

#[test]
fn quotas_count_and_refuse_and_limit_ranges_default_and_limit() {
    let s = Server::start_with(&["--node=false"]);
    s.k(&["create", "namespace", "q"]);
    s.k(&["create", "quota", "compute", "-n", "q", "--hard=pods=3,requests.cpu=1,requests.memory=1Gi"]);
    assert!(
        eventually(Duration::from_secs(10), || used(&s, "compute") == r#"{"pods":"0","requests.cpu":"0","requests.memory":"0"}"#),
        "{}",
        used(&s, "compute")
    );

    // A pod that does not say what it requests cannot be counted.
    let (ok, err) = create(&s, &pod_yaml("bare", "{}"));
    assert!(!ok && err.contains(r#"pods "bare" is forbidden: failed quota: compute: must specify requests.cpu,requests.memory"#), "{err}");

    // A LimitRange fills the requests in (and says so), and caps the limits.
    let lr = "apiVersion: v1\nkind: LimitRange\nmetadata: {name: defaults, namespace: q}\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m, memory: 128Mi}\n    defaultRequest: {cpu: 250m, memory: 64Mi}\n    max: {cpu: \"1\"}\n";
    assert!(create(&s, lr).0);
    let (ok, err) = create(&s, &pod_yaml("small", "{}"));
    assert!(ok, "{err}");
    let resources = s.k(&["get", "pod", "small", "-n", "q", "-o", "jsonpath={.spec.containers[0].resources}"]);
    assert_eq!(resources, r#"{"limits":{"cpu":"500m","memory":"128Mi"},"requests":{"cpu":"250m","memory":"64Mi"}}"#);
    let note = s.k(&["get", "pod", "small", "-n", "q", "-o", "jsonpath={.metadata.annotations.kubernetes\\.io/limit-ranger}"]);
    assert_eq!(note, "LimitRanger plugin set: cpu, memory request for container main; cpu, memory limit for container main");
    assert_eq!(used(&s, "compute"), r#"{"pods":"1","requests.cpu":"250m","requests.memory":"64Mi"}"#);
    let (ok, err) = create(&s, &pod_yaml("greedy", "{limits: {cpu: \"2\"}, requests: {cpu: \"2\"}}"));
    assert!(!ok && err.contains(r#"pods "greedy" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#), "{err}");

    // Over the quota: refused with what was asked, used and allowed.
    let (ok, err) = create(&s, &pod_yaml("big", "{limits: {cpu: 800m}, requests: {cpu: 800m}}"));
    assert!(
        !ok && err
            .contains(r#"pods "big" is forbidden: exceeded quota: compute, requested: requests.cpu=800m, used: requests.cpu=250m, limited: requests.cpu=1"#),
        "{err}"
    );
    assert!(create(&s, &pod_yaml("second", "{}")).0);
    assert!(create(&s, &pod_yaml("third", "{}")).0);
    let (ok, err) = create(&s, &pod_yaml("fourth", "{}"));
    assert!(!ok && err.contains("exceeded quota: compute, requested: pods=1, used: pods=3, limited: pods=3"), "{err}");
    assert!(!s.kubectl(&["get", "pod", "fourth", "-n", "q"]).status.success(), "a refused pod was stored");
    let table = s.k(&["describe", "quota", "compute", "-n", "q"]);
    let row = |name: &str| table.lines().find(|l| l.starts_with(name)).map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
    assert_eq!(row("requests.cpu").as_deref(), Some("requests.cpu 750m 1"), "{table}");
    assert_eq!(row("requests.memory").as_deref(), Some("requests.memory 192Mi 1Gi"), "{table}");

    // Pods that go give their usage back.
    s.k(&["delete", "pod", "second", "third", "-n", "q", "--grace-period=0", "--force"]);
    assert!(
        eventually(Duration::from_secs(10), || used(&s, "compute") == r#"{"pods":"1","requests.cpu":"250m","requests.memory":"64Mi"}"#),
        "{}",
        used(&s, "compute")
    );

    // Object counts (the namespace's kube-root-ca.crt is one config map already).
    s.k(&["create", "quota", "objects", "-n", "q", "--hard=count/configmaps=2,secrets=1"]);
    assert!(eventually(Duration::from_secs(10), || used(&s, "objects").contains(r#""count/configmaps":"1""#)), "{}", used(&s, "objects"));
    s.k(&["create", "configmap", "one", "-n", "q"]);
    let out = s.kubectl(&["create", "configmap", "two", "-n", "q"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded quota: objects, requested: count/configmaps=1, used: count/configmaps=2, limited: count/configmaps=2"), "{err}");

    // A Deployment whose pods the quota refuses says why.
    s.k(&["create", "deployment", "web", "-n", "q", "--image=nothing:1", "--replicas=5"]);
    let mut conditions = String::new();
    assert!(eventually(Duration::from_secs(30), || {
        conditions = s.k(&["get", "deployment", "web", "-n", "q", "-o", "jsonpath={range .status.conditions[*]}{.type}:{.reason}:{.message};{end}"]);
        conditions.contains("ReplicaFailure")
    }));
    assert!(conditions.contains("ReplicaFailure:FailedCreate:pods \"web-") && conditions.contains("exceeded quota: compute"), "{conditions}");
    assert_eq!(s.k(&["get", "pods", "-n", "q", "-l", "app=web", "-o", "name"]).lines().count(), 2, "only what the quota allows");
}

/// Quotas limited by scope: `scopeSelector` on the pods' PriorityClass counts and refuses
/// only those pods (upstream's per-class quotas); invalid scopes are refused as upstream.
#[test]
fn scoped_quotas_count_only_the_pods_they_select() {
    let s = Server::start_with(&["--node=false"]);
    s.k(&["create", "namespace", "q"]);
    s.k(&["create", "priorityclass", "high", "--value=1000"]);
    let quota = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: high, namespace: q}\nspec:\n  hard: {pods: \"1\"}\n  scopeSelector:\n    matchExpressions:\n    - {scopeName: PriorityClass, operator: In, values: [high]}\n";
    let (ok, err) = create(&s, quota);
    assert!(ok, "{err}");
    let (ok, err) =
        create(&s, "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: plain, namespace: q}\nspec:\n  hard: {pods: \"10\"}\n  scopes: [NotTerminating]\n");
    assert!(ok, "{err}");
    assert!(eventually(Duration::from_secs(10), || used(&s, "high") == r#"{"pods":"0"}"#), "{}", used(&s, "high"));
    let pod = |name: &str, class: &str, deadline: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: q}}\nspec:\n{}{}  containers:\n  - {{name: main, image: nothing:1}}\n",
            if class.is_empty() { String::new() } else { format!("  priorityClassName: {class}\n") },
            if deadline { "  activeDeadlineSeconds: 60\n" } else { "" }
        )
    };
    let (ok, err) = create(&s, &pod("first", "high", false));
    assert!(ok, "{err}");
    let (ok, err) = create(&s, &pod("second", "high", false));
    assert!(!ok && err.contains("exceeded quota: high, requested: pods=1, used: pods=1, limited: pods=1"), "{err}");
    // Pods of no class, or terminating ones, are not this quota's (nor NotTerminating's).
    let (ok, err) = create(&s, &pod("classless", "", false));
    assert!(ok, "{err}");
    let (ok, err) = create(&s, &pod("deadline", "", true));
    assert!(ok, "{err}");
    assert!(eventually(Duration::from_secs(10), || used(&s, "high") == r#"{"pods":"1"}"#), "{}", used(&s, "high"));
    assert!(eventually(Duration::from_secs(10), || used(&s, "plain") == r#"{"pods":"2"}"#), "{}", used(&s, "plain"));

    // Invalid scopes, as upstream words them.
    for (spec, want) in [
        (
            "  hard: {pods: \"1\"}\n  scopes: [BestEffort, NotBestEffort]\n",
            "spec.scopes: Invalid value: []core.ResourceQuotaScope{\"BestEffort\", \"NotBestEffort\"}: conflicting scopes",
        ),
        ("  hard: {requests.cpu: \"1\"}\n  scopes: [BestEffort]\n", "unsupported scope applied to resource"),
        ("  hard: {pods: \"1\"}\n  scopes: [Sometimes]\n", "unsupported scope"),
        (
            "  hard: {pods: \"1\"}\n  scopeSelector:\n    matchExpressions:\n    - {scopeName: Terminating, operator: In, values: [x]}\n",
            "spec.scopeSelector.matchExpressions.operator: Invalid value: \"In\": must be 'Exist' when scope is any of",
        ),
        (
            "  hard: {pods: \"1\"}\n  scopeSelector:\n    matchExpressions:\n    - {scopeName: PriorityClass, operator: In}\n",
            "spec.scopeSelector.matchExpressions.values: Required value: must be at least one value when `operator` is 'In' or 'NotIn' for scope selector",
        ),
    ] {
        let (ok, err) = create(&s, &format!("apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: bad, namespace: q}}\nspec:\n{spec}"));
        assert!(!ok && err.contains("is invalid") && err.contains(want), "{spec}: {err}");
    }
}

/// Updates that change what an object uses are charged their increase, as upstream's
/// quota evaluators (a Service turned NodePort); LimitRanger validates every update of a
/// claim.
#[test]
fn updates_are_charged_and_claims_limited_on_update() {
    let s = Server::start_with(&["--node=false"]);
    s.k(&["create", "namespace", "q"]);
    s.k(&["create", "quota", "compute", "-n", "q", "--hard=services.nodeports=1"]);
    assert!(eventually(Duration::from_secs(10), || used(&s, "compute").contains(r#""services.nodeports":"0""#)), "{}", used(&s, "compute"));
    // A ClusterIP Service with two ports is free of node ports; turned NodePort it is not,
    // and a NodePort Service with one port fits.
    s.k(&["create", "service", "clusterip", "web", "-n", "q", "--tcp=80:80,443:443"]);
    let out = s.kubectl(&["patch", "service", "web", "-n", "q", "-p", r#"{"spec":{"type":"NodePort"}}"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("exceeded quota: compute, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"),
        "{err}"
    );
    assert_eq!(s.k(&["get", "service", "web", "-n", "q", "-o", "jsonpath={.spec.type}"]), "ClusterIP");
    s.k(&["create", "service", "clusterip", "one", "-n", "q", "--tcp=80:80"]);
    let out = s.kubectl(&["patch", "service", "one", "-n", "q", "-p", r#"{"spec":{"type":"NodePort"}}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(10), || used(&s, "compute").contains(r#""services.nodeports":"1""#)), "{}", used(&s, "compute"));

    // A claim made before its LimitRange is held to it on its next update.
    let claim = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data, namespace: q}\nspec:\n  accessModes: [ReadWriteOnce]\n  storageClassName: none\n  resources: {requests: {storage: 5Gi}}\n";
    assert!(create(&s, claim).0);
    let lr = "apiVersion: v1\nkind: LimitRange\nmetadata: {name: claims, namespace: q}\nspec:\n  limits:\n  - type: PersistentVolumeClaim\n    max: {storage: 2Gi}\n";
    assert!(create(&s, lr).0);
    let out = s.kubectl(&["label", "pvc", "data", "-n", "q", "tier=gold"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(r#"persistentvolumeclaims "data" is forbidden: maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"#),
        "{err}"
    );
    // Being deleted, it is not held to it: its protection finalizer comes off.
    s.k(&["delete", "pvc", "data", "-n", "q", "--wait=false"]);
    assert!(eventually(Duration::from_secs(10), || !s.kubectl(&["get", "pvc", "data", "-n", "q"]).status.success()), "the claim stays");
}
