//! Persistent storage as k3s gives it: the default `local-path` StorageClass, claims
//! provisioned as directories in the data directory once a pod needs them
//! (`WaitForFirstConsumer`), bound by the persistent volume controller, mounted into
//! containers, kept across pods, protected while in use, deleted with their claim; a
//! volume made by hand bound to a claim without a class; the scheduler's words for a
//! claim that does not exist. Real kubectl, real containers.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, Server};
use serde_json::Value;

fn apply(s: &Server, yaml: &str) {
    let out = s.k_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn get(s: &Server, path: &str) -> Value {
    s.get_json(path).1
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    assert!(eventually(Duration::from_secs(30), &mut f), "waited for {what}");
}

fn claim(s: &Server, name: &str) -> Value {
    get(s, &format!("/api/v1/namespaces/default/persistentvolumeclaims/{name}"))
}

fn reasons(s: &Server, name: &str) -> Vec<(String, String)> {
    let list = get(s, &format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"));
    list["items"].as_array().unwrap().iter().map(|e| (e["reason"].as_str().unwrap().to_string(), e["message"].as_str().unwrap().to_string())).collect()
}

fn writer_pod(name: &str, claim: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}]
  containers:
  - name: c
    image: testbox:1.0
    command: [sh, -c, "{script}"]
    volumeMounts: [{{name: data, mountPath: /data}}]
"#
    )
}

#[test]
fn local_path_claims_are_provisioned_for_their_first_pod_kept_and_deleted() {
    let s = server_with_image();
    // k3s's default class.
    let classes = s.k(&["get", "storageclass"]);
    assert!(classes.contains("local-path (default)") && classes.contains("rancher.io/local-path") && classes.contains("WaitForFirstConsumer"), "{classes}");

    apply(
        &s,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    let c = claim(&s, "data");
    assert_eq!(c["spec"]["storageClassName"], "local-path", "DefaultStorageClass admission");
    assert_eq!(c["metadata"]["finalizers"], serde_json::json!(["kubernetes.io/pvc-protection"]));
    wait("the claim waits for a consumer", || {
        claim(&s, "data")["status"]["phase"] == "Pending"
            && reasons(&s, "data").contains(&("WaitForFirstConsumer".into(), "waiting for first consumer to be created before binding".into()))
    });

    apply(&s, &writer_pod("writer", "data", "echo kept > /data/file; ls -ld /data | cut -c1-10"));
    wait("the writer done", || get(&s, "/api/v1/namespaces/default/pods/writer")["status"]["phase"] == "Succeeded");
    assert_eq!(s.k(&["logs", "writer"]), "drwxrwxrwx\n");
    let c = claim(&s, "data");
    let uid = c["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(c["status"]["phase"], "Bound", "{c}");
    assert_eq!(c["spec"]["volumeName"], format!("pvc-{uid}"));
    assert_eq!(c["status"]["capacity"]["storage"], "1Gi");
    assert_eq!(c["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"], "yes");
    assert_eq!(c["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"], "rancher.io/local-path");
    let node = get(&s, "/api/v1/nodes")["items"][0]["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], node.as_str());
    let pv = get(&s, &format!("/api/v1/persistentvolumes/pvc-{uid}"));
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["claimRef"]["name"], "data");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0], node.as_str());
    let dir = std::path::PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().unwrap());
    assert_eq!(dir, s.data.join("storage").join(format!("pvc-{uid}_default_data")));
    assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "kept\n");
    let ev: Vec<String> = reasons(&s, "data").into_iter().map(|(r, _)| r).collect();
    for r in ["ExternalProvisioning", "Provisioning", "ProvisioningSucceeded"] {
        assert!(ev.contains(&r.to_string()), "{ev:?}");
    }
    let table = s.k(&["get", "pvc", "data"]);
    assert!(table.contains("Bound") && table.contains(&format!("pvc-{uid}")) && table.contains("RWO") && table.contains("local-path"), "{table}");

    // A second pod sees the data; while it runs, deleting the claim leaves it
    // Terminating (pvc-protection) until the pod is gone.
    apply(&s, &writer_pod("reader", "data", "cat /data/file; sleep 600"));
    wait("the reader running", || get(&s, "/api/v1/namespaces/default/pods/reader")["status"]["phase"] == "Running");
    wait("the reader's output", || s.k(&["logs", "reader"]) == "kept\n");
    s.k(&["delete", "pod", "writer"]);
    s.k(&["delete", "pvc", "data", "--wait=false"]);
    std::thread::sleep(Duration::from_millis(500));
    let c = claim(&s, "data");
    assert!(c["metadata"]["deletionTimestamp"].is_string() && c["metadata"]["finalizers"][0] == "kubernetes.io/pvc-protection", "{c}");
    s.k(&["delete", "pod", "reader", "--wait=true"]);
    // The claim goes, the volume is released, its directory and the volume are deleted.
    wait("claim, volume and directory gone", || {
        claim(&s, "data")["code"] == 404 && get(&s, &format!("/api/v1/persistentvolumes/pvc-{uid}"))["code"] == 404 && !dir.exists()
    });
}

#[test]
fn a_volume_made_by_hand_binds_to_a_claim_without_class_and_is_retained() {
    let s = server_with_image();
    let host_dir = s.dir.path().join("by-hand");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("hello"), "from the host\n").unwrap();
    apply(
        &s,
        &format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: manual}}\nspec:\n  capacity: {{storage: 5Gi}}\n  accessModes: [ReadWriteOnce, ReadOnlyMany]\n  persistentVolumeReclaimPolicy: Retain\n  storageClassName: \"\"\n  hostPath: {{path: {}}}\n",
            host_dir.display()
        ),
    );
    // A smaller volume of another class is not taken.
    apply(&s, "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: other}\nspec:\n  capacity: {storage: 5Gi}\n  accessModes: [ReadWriteOnce]\n  storageClassName: slow\n  hostPath: {path: /nonexistent}\n");
    wait("both volumes Available", || {
        get(&s, "/api/v1/persistentvolumes/manual")["status"]["phase"] == "Available"
            && get(&s, "/api/v1/persistentvolumes/other")["status"]["phase"] == "Available"
    });
    apply(
        &s,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: handmade}\nspec:\n  storageClassName: \"\"\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Gi}}\n",
    );
    wait("bound without waiting for a pod", || claim(&s, "handmade")["status"]["phase"] == "Bound");
    assert_eq!(claim(&s, "handmade")["spec"]["volumeName"], "manual");
    assert_eq!(claim(&s, "handmade")["status"]["capacity"]["storage"], "5Gi");
    apply(&s, &writer_pod("user", "handmade", "cat /data/hello"));
    wait("the pod done", || get(&s, "/api/v1/namespaces/default/pods/user")["status"]["phase"] == "Succeeded");
    assert_eq!(s.k(&["logs", "user"]), "from the host\n");
    s.k(&["delete", "pod", "user"]);
    s.k(&["delete", "pvc", "handmade"]);
    wait("the volume Released, kept with its data", || get(&s, "/api/v1/persistentvolumes/manual")["status"]["phase"] == "Released");
    assert!(host_dir.join("hello").exists());
    // A deleted volume that is not bound goes (pv-protection let go).
    s.k(&["delete", "pv", "manual", "other"]);
    wait("volumes gone", || get(&s, "/api/v1/persistentvolumes")["items"].as_array().unwrap().is_empty());
}

#[test]
fn pods_whose_claims_cannot_be_used_wait_with_the_schedulers_words() {
    let s = server_with_image();
    apply(&s, &writer_pod("orphan", "nope", "true"));
    wait("FailedScheduling for a missing claim", || {
        reasons(&s, "orphan").iter().any(|(r, m)| {
            r == "FailedScheduling"
                && m == "0/1 nodes are available: persistentvolumeclaim \"nope\" not found. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        })
    });
    // The claim appears: the pod is scheduled and runs.
    apply(
        &s,
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: nope}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Mi}}\n",
    );
    wait("the pod done once its claim exists", || get(&s, "/api/v1/namespaces/default/pods/orphan")["status"]["phase"] == "Succeeded");
    // An unbound claim of an Immediate class no provisioner serves.
    apply(&s, "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: manual}\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: Immediate\n");
    apply(&s, "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: unbound}\nspec:\n  storageClassName: manual\n  accessModes: [ReadWriteOnce]\n  resources: {requests: {storage: 1Mi}}\n");
    apply(&s, &writer_pod("stuck", "unbound", "true"));
    wait("FailedScheduling for an unbound immediate claim", || {
        reasons(&s, "stuck").iter().any(|(r, m)| {
            r == "FailedScheduling"
                && m == "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
        })
    });
    s.k(&["delete", "pod", "orphan", "stuck"]);
    s.k(&["delete", "pvc", "--all"]);
}
