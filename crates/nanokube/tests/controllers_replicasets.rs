//! ReplicaSets and ReplicationControllers with the real kubectl: pods made from the
//! template and owned, scaled up and down (the unready ones removed first), replaced
//! when deleted, orphans adopted and pods that stop matching released, status counts as
//! upstream writes them, upstream's events; and with no node, pods that stay Pending.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, Server};

fn replica_set(name: &str, replicas: u32, script: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}, tier: web}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: main\n        image: testbox:1.0\n        command: [\"sh\", \"-c\", {script:?}]\n"
    )
}

/// The pods with `selector` that are not being deleted.
fn pods_of(s: &Server, selector: &str) -> Vec<String> {
    let out = s.k(&["get", "pods", "-l", selector, "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn status(s: &Server, what: &str) -> String {
    s.k(&["get", what, "-o", "jsonpath={.status.replicas}/{.status.readyReplicas}/{.status.availableReplicas}/{.status.observedGeneration}"])
}

#[test]
fn a_replica_set_keeps_its_pods() {
    let s = server_with_image();
    let out = s.k_stdin(&["apply", "-f", "-"], &replica_set("web", 3, "exec sleep 3600"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(30), || status(&s, "rs/web") == "3/3/3/1"), "{}", status(&s, "rs/web"));
    let pods = pods_of(&s, "app=web");
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert!(p.starts_with("web-") && p.len() == "web-".len() + 5, "{p}");
        let owner = s.k(&["get", "pod", p, "-o", "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}/{.metadata.ownerReferences[0].blockOwnerDeletion}"]);
        assert_eq!(owner, "ReplicaSet/web/true/true");
        assert_eq!(s.k(&["get", "pod", p, "-o", "jsonpath={.metadata.labels.tier}"]), "web");
    }
    let events = s.k(&["get", "events", "--field-selector", "involvedObject.name=web,reason=SuccessfulCreate", "-o", "jsonpath={.items[*].message}"]);
    assert!(events.contains(&format!("Created pod: {}", pods[0])), "{events}");

    // A deleted pod is replaced.
    s.k(&["delete", "pod", &pods[0], "--wait=false"]);
    assert!(eventually(Duration::from_secs(30), || {
        let now = pods_of(&s, "app=web");
        now.len() == 3 && !now.contains(&pods[0])
    }));
    assert!(eventually(Duration::from_secs(30), || status(&s, "rs/web") == "3/3/3/1"));

    // Scaled down: two go, with upstream's event.
    s.k(&["scale", "rs/web", "--replicas=1"]);
    assert!(eventually(Duration::from_secs(30), || pods_of(&s, "app=web").len() == 1));
    assert!(eventually(Duration::from_secs(30), || status(&s, "rs/web") == "1/1/1/2"), "{}", status(&s, "rs/web"));
    let deleted = s.k(&["get", "events", "--field-selector", "involvedObject.name=web,reason=SuccessfulDelete", "-o", "jsonpath={.items[*].message}"]);
    assert_eq!(deleted.matches("Deleted pod: web-").count(), 2, "{deleted}");

    // An orphan that matches is adopted: one too many then, and the unready one (it has
    // not started) is the one removed, by name in upstream's event.
    s.k(&["run", "stray", "--image=testbox:1.0", "--labels=app=web", "--", "sleep", "3600"]);
    assert!(eventually(Duration::from_secs(30), || {
        s.k(&["get", "events", "--field-selector", "involvedObject.name=web,reason=SuccessfulDelete", "-o", "jsonpath={.items[*].message}"])
            .contains("Deleted pod: stray")
    }));
    assert!(eventually(Duration::from_secs(30), || pods_of(&s, "app=web").len() == 1));
    s.k(&["scale", "rs/web", "--replicas=2"]);
    assert!(eventually(Duration::from_secs(30), || status(&s, "rs/web") == "2/2/2/3"), "{}", status(&s, "rs/web"));
    let kept = pods_of(&s, "app=web");
    assert_eq!(kept.len(), 2);

    // A pod relabelled out of the selector is released (no owner any more) and replaced.
    s.k(&["label", "pod", &kept[0], "app=elsewhere", "--overwrite"]);
    assert!(eventually(Duration::from_secs(30), || s.k(&["get", "pod", &kept[0], "-o", "jsonpath={.metadata.ownerReferences}"]).is_empty()));
    assert!(eventually(Duration::from_secs(30), || pods_of(&s, "app=web").len() == 2 && status(&s, "rs/web").starts_with("2/2/2")));

    // Deleting the ReplicaSet takes its pods (the garbage collector), not the released one.
    s.k(&["delete", "rs", "web"]);
    assert!(eventually(Duration::from_secs(30), || pods_of(&s, "app=web").is_empty()));
    assert_eq!(pods_of(&s, "app=elsewhere").len(), 1);
}

#[test]
fn a_replication_controller_and_pods_with_no_node() {
    // No node: pods are made and stay Pending, as under envtest with kube-controller-manager.
    let s = Server::start_with(&["--node=false"]);
    let rc = "apiVersion: v1\nkind: ReplicationController\nmetadata:\n  name: old\nspec:\n  replicas: 2\n  template:\n    metadata:\n      labels: {app: old}\n    spec:\n      containers:\n      - {name: main, image: testbox:1.0}\n";
    let out = s.k_stdin(&["apply", "-f", "-"], rc);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The selector defaults to the template's labels; pods are made and counted, none ready.
    assert!(
        eventually(Duration::from_secs(20), || status(&s, "rc/old") == "2///1"),
        "{} {}",
        status(&s, "rc/old"),
        s.k(&["get", "events", "-o", "custom-columns=R:.reason,M:.message"])
    );
    let pods = pods_of(&s, "app=old");
    assert_eq!(pods.len(), 2);
    assert_eq!(s.k(&["get", "pod", &pods[0], "-o", "jsonpath={.status.phase}"]), "Pending");
    // Marked ready by hand through the status subresource (as upstream's controller tests do).
    for p in &pods {
        let now = "2026-01-01T00:00:00Z";
        let body = format!(r#"{{"status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"True","lastTransitionTime":"{now}"}}]}}}}"#);
        let (code, text) = s.curl("PATCH", &format!("/api/v1/namespaces/default/pods/{p}/status"), Some("application/merge-patch+json"), Some(body.as_bytes()));
        assert_eq!(code, 200, "{text}");
    }
    assert!(eventually(Duration::from_secs(20), || status(&s, "rc/old") == "2/2/2/1"), "{}", status(&s, "rc/old"));
    s.k(&["scale", "rc/old", "--replicas=0"]);
    assert!(eventually(Duration::from_secs(20), || pods_of(&s, "app=old").is_empty() && status(&s, "rc/old") == "0///2"), "{}", status(&s, "rc/old"));
}
