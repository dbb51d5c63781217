//! Defaults and admission on create are kube-apiserver 1.33's: each object of
//! `tests/upstream-1.33/defaults-on-create.json` (one minimal object of 24 kinds, as sent,
//! and what a real kube-apiserver 1.33 answered) is created with kubectl and the answer
//! compared field by field, values the server allocates (uids, ClusterIPs, NodePorts,
//! the random suffix of `kube-api-access-*`) aside.

mod common;

use common::Server;
use serde_json::Value;

/// Values that differ between any two servers, replaced by what they are.
fn normalize(v: &mut Value, uid: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match (k.as_str(), x.as_str()) {
                    ("clusterIP" | "nodePort", _) => *x = Value::String(format!("<{k}>")),
                    (_, Some(s)) if s.starts_with("kube-api-access-") => *x = Value::String("kube-api-access-<random>".into()),
                    (_, Some(s)) if !uid.is_empty() && s == uid => *x = Value::String("<uid>".into()),
                    _ => normalize(x, uid),
                }
            }
            if let Some(ips) = m.get_mut("clusterIPs").and_then(Value::as_array_mut) {
                ips.iter_mut().for_each(|ip| *ip = Value::String("<clusterIP>".into()));
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalize(x, uid)),
        _ => {}
    }
}

fn comparable(mut obj: Value) -> Value {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let m = obj.as_object_mut().unwrap();
    m.remove("_sent");
    let meta = m.get_mut("metadata").and_then(Value::as_object_mut).unwrap();
    for f in ["uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"] {
        meta.remove(f);
    }
    // The Job's controller-uid labels carry the upstream object's uid.
    let upstream_uid = obj.pointer("/metadata/labels/controller-uid").and_then(Value::as_str).map(String::from).unwrap_or(uid);
    normalize(&mut obj, &upstream_uid);
    obj
}

/// Paths where two JSON values differ.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => differences(p, q, &format!("{path}/{k}"), out),
                    (Some(p), None) => out.push(format!("{path}/{k}: only here: {p}")),
                    (None, Some(q)) => out.push(format!("{path}/{k}: only upstream: {q}")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, &format!("{path}/{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} here, {b} upstream")),
        _ => {}
    }
}

#[test]
fn creates_answer_what_kube_apiserver_1_33_answers() {
    // Upstream's answers are a bare kube-apiserver's: no node, so no default StorageClass
    // (a nanokube node brings k3s's `local-path`, which claims would be given).
    let s = Server::start_with(&["--node=false"]);
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream-1.33/defaults-on-create.json")).unwrap();
    let expected: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    // Created in the file's order, as they were upstream (the LimitRange comes after the
    // Pod, so the Pod was not limited).
    let mut in_order: Vec<(&String, &Value)> = expected.iter().collect();
    in_order.sort_by_key(|(k, _)| text.find(&format!("\"{k}\":")));
    s.k(&["create", "namespace", "defaults"]);
    assert!(common::eventually(std::time::Duration::from_secs(10), || s.kubectl(&["get", "serviceaccount", "default", "-n", "defaults"]).status.success()));
    let mut failures = Vec::new();
    let mut not_served = Vec::new();
    for (key, want) in in_order {
        let sent = want["_sent"].to_string();
        let out = s.k_stdin(&["create", "-n", "defaults", "-o", "json", "-f", "-"], &sent);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            if err.contains("no matches for kind") {
                not_served.push(key.clone());
            } else {
                failures.push(format!("{key}: create failed: {err}"));
            }
            continue;
        }
        let got = comparable(serde_json::from_slice(&out.stdout).unwrap());
        let want = comparable(want.clone());
        let mut diffs = Vec::new();
        differences(&got, &want, "", &mut diffs);
        if !diffs.is_empty() {
            failures.push(format!("{key}:\n    {}", diffs.join("\n    ")));
        }
    }
    assert!(failures.is_empty(), "{} of {} kinds differ:\n{}", failures.len(), expected.len(), failures.join("\n"));
    assert!(not_served.is_empty(), "not served: {not_served:?}");
}

/// The admission plugins behind those answers, in the cases the file does not show.
#[test]
fn pod_and_claim_admission_as_upstream() {
    let s = Server::start();
    let pod = |name: &str, extra: &str| {
        format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{{extra}"containers":[{{"name":"c","image":"busybox"}}]}}}}"#)
    };
    let create = |body: String| {
        let out = s.k_stdin(&["create", "-o", "json", "-f", "-"], &body);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    // Priority: the built-in classes exist; an unknown class is refused.
    let (ok, out, err) = create(pod("critical", r#""priorityClassName":"system-node-critical","#));
    assert!(ok, "{err}");
    let p: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["spec"]["priority"], 2_000_001_000);
    let (ok, _, err) = create(pod("unknown", r#""priorityClassName":"nope","#));
    assert!(!ok);
    assert!(err.contains("Forbidden") && err.contains("no PriorityClass with name nope was found"), "{err}");
    // A global default class applies to pods that name none.
    s.k(&["create", "priorityclass", "everyone", "--value=7", "--global-default"]);
    let (ok, out, err) = create(pod("defaulted", ""));
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["spec"]["priority"], 7);
    // ServiceAccount: no token volume when automount is off, nor a second one.
    let (ok, out, err) = create(pod("no-token", r#""automountServiceAccountToken":false,"#));
    assert!(ok, "{err}");
    let p: Value = serde_json::from_str(&out).unwrap();
    assert!(p["spec"].get("volumes").is_none(), "{p}");
    // Tolerations already given are not doubled.
    let (ok, out, err) = create(pod("tolerant", r#""tolerations":[{"operator":"Exists"}],"#));
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["spec"]["tolerations"].as_array().unwrap().len(), 1);
    // DefaultStorageClass: a claim without a class gets the default one.
    let sc = r#"{"apiVersion":"storage.k8s.io/v1","kind":"StorageClass","metadata":{"name":"fast","annotations":{"storageclass.kubernetes.io/is-default-class":"true"}},"provisioner":"example.com/x"}"#;
    assert!(s.k_stdin(&["create", "-f", "-"], sc).status.success());
    let claim = r#"{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"data"},"spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}}}}"#;
    let (ok, out, err) = create(claim.to_string());
    assert!(ok, "{err}");
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["spec"]["storageClassName"], "fast");
    assert_eq!(c["metadata"]["finalizers"], serde_json::json!(["kubernetes.io/pvc-protection"]));
}

/// RuntimeClass admission, on by default in kube-apiserver: the class must exist, its
/// overhead becomes the pod's, and its scheduling is merged into the pod's.
#[test]
fn runtime_class_admission_as_upstream() {
    let s = Server::start_with(&["--node=false"]);
    let class = r#"{"apiVersion":"node.k8s.io/v1","kind":"RuntimeClass","metadata":{"name":"sandboxed"},"handler":"runc",
        "overhead":{"podFixed":{"cpu":"250m","memory":"64Mi"}},
        "scheduling":{"nodeSelector":{"sandbox":"yes"},"tolerations":[{"key":"sandbox","operator":"Exists","effect":"NoSchedule"}]}}"#;
    assert!(s.k_stdin(&["create", "-f", "-"], class).status.success());
    let pod = |name: &str, extra: &str| {
        format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{{extra}"containers":[{{"name":"c","image":"busybox"}}]}}}}"#)
    };
    let create = |body: String| {
        let out = s.k_stdin(&["create", "-o", "json", "-f", "-"], &body);
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, out, err) = create(pod("boxed", r#""runtimeClassName":"sandboxed","nodeSelector":{"disk":"ssd"},"#));
    assert!(ok, "{err}");
    let p: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(p["spec"]["overhead"], serde_json::json!({"cpu": "250m", "memory": "64Mi"}));
    assert_eq!(p["spec"]["nodeSelector"], serde_json::json!({"disk": "ssd", "sandbox": "yes"}));
    assert!(p["spec"]["tolerations"].as_array().unwrap().iter().any(|t| t["key"] == "sandbox"), "{p}");
    // The same overhead written differently is the same overhead.
    let (ok, out, err) = create(pod("same", r#""runtimeClassName":"sandboxed","overhead":{"cpu":"0.25","memory":"64Mi"},"#));
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["spec"]["overhead"]["cpu"], "250m", "the class's, as upstream");
    for (name, extra, why) in [
        ("missing", r#""runtimeClassName":"nope","#, r#"pods "missing" is forbidden: pod rejected: RuntimeClass "nope" not found"#),
        (
            "other",
            r#""runtimeClassName":"sandboxed","overhead":{"cpu":"1"},"#,
            r#"pods "other" is forbidden: pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead"#,
        ),
        (
            "classless",
            r#""overhead":{"cpu":"1"},"#,
            r#"pods "classless" is forbidden: pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead"#,
        ),
        (
            "clash",
            r#""runtimeClassName":"sandboxed","nodeSelector":{"sandbox":"no"},"#,
            r#"pods "clash" is forbidden: conflict: runtimeClass.scheduling.nodeSelector[sandbox] = yes; pod.spec.nodeSelector[sandbox] = no"#,
        ),
    ] {
        let (ok, _, err) = create(pod(name, extra));
        assert!(!ok && err.contains(why), "{name}: {err}");
        assert!(!s.kubectl(&["get", "pod", name]).status.success(), "{name} was not created");
    }
}

#[test]
fn limit_ranges_default_and_bound_container_resources() {
    let s = Server::start();
    s.k(&["create", "namespace", "lr"]);
    let lr = r#"{"apiVersion":"v1","kind":"LimitRange","metadata":{"name":"limits","namespace":"lr"},
      "spec":{"limits":[{"type":"Container","default":{"cpu":"500m","memory":"128Mi"},"defaultRequest":{"cpu":"100m"},"max":{"cpu":"1"}}]}}"#;
    let out = s.k_stdin(&["create", "-f", "-"], lr);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Defaulted as upstream's SetDefaults_LimitRangeItem: the memory request from the limit.
    let stored = s.get_json("/api/v1/namespaces/lr/limitranges/limits").1;
    assert_eq!(stored["spec"]["limits"][0]["defaultRequest"], serde_json::json!({"cpu": "100m", "memory": "128Mi"}));

    s.k(&["run", "web", "-n", "lr", "--image=nginx"]);
    let pod = s.get_json("/api/v1/namespaces/lr/pods/web").1;
    assert_eq!(
        pod["spec"]["containers"][0]["resources"],
        serde_json::json!({"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}})
    );
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu, memory request for container web; cpu, memory limit for container web"
    );
    assert_eq!(pod["status"]["qosClass"], "Burstable", "QoS from the defaulted resources");

    // What a container sets is kept; above the max is refused.
    let out = s.kubectl(&[
        "run",
        "big",
        "-n",
        "lr",
        "--image=nginx",
        "--overrides",
        r#"{"spec":{"containers":[{"name":"big","image":"nginx","resources":{"limits":{"cpu":"2"}}}]}}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Objects are stored as Go writes its structs: a field that is not a pointer and is
/// `omitempty` is gone at its zero value, whether the client sent it in JSON or
/// protobuf carried it (kubectl's typed creates send `stdin: false`, `hostPID: false`
/// and `generation: 0` in templates); a pointer keeps a zero that was sent.
#[test]
fn zero_values_are_kept_only_where_go_keeps_them() {
    let s = Server::start_with(&["--node=false"]);
    // Protobuf: `kubectl create deployment` is a typed create.
    s.k(&["create", "deployment", "web", "--image=nginx", "--replicas=0"]);
    let d = s.get_json("/apis/apps/v1/namespaces/default/deployments/web").1;
    assert_eq!(d["spec"]["replicas"], 0, "a pointer's zero stays: {d}");
    let template = &d["spec"]["template"];
    assert_eq!(template["metadata"], serde_json::json!({"creationTimestamp": null, "labels": {"app": "web"}}));
    let spec = template["spec"].as_object().unwrap();
    for gone in ["hostPID", "hostIPC", "hostNetwork"] {
        assert!(!spec.contains_key(gone), "{gone} in {template}");
    }
    let container = template["spec"]["containers"][0].as_object().unwrap();
    for gone in ["stdin", "stdinOnce", "tty"] {
        assert!(!container.contains_key(gone), "{gone} in {template}");
    }
    // JSON with explicit zeros: the same.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{}},
      "spec":{"hostPID":false,"terminationGracePeriodSeconds":0,"containers":[{"name":"c","image":"nginx",
      "stdin":false,"args":[],"ports":[{"containerPort":80,"hostPort":0}]}]}}"#;
    let out = s.k_stdin(&["create", "-f", "-"], pod);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = s.get_json("/api/v1/namespaces/default/pods/p").1;
    assert!(p["metadata"].get("labels").is_none(), "{p}");
    assert!(p["spec"].get("hostPID").is_none(), "{p}");
    assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 0, "a pointer: {p}");
    let c = &p["spec"]["containers"][0];
    assert!(c.get("stdin").is_none() && c.get("args").is_none(), "{c}");
    assert_eq!(c["ports"], serde_json::json!([{"containerPort": 80, "protocol": "TCP"}]), "containerPort has no omitempty");
    // A pointer string's "" is meaningful (no storage class) and stays.
    let pvc = r#"{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":"c"},
      "spec":{"storageClassName":"","volumeName":"","accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"1Gi"}}}}"#;
    let out = s.k_stdin(&["create", "-f", "-"], pvc);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = s.get_json("/api/v1/namespaces/default/persistentvolumeclaims/c").1;
    assert_eq!(c["spec"]["storageClassName"], "", "{c}");
    assert!(c["spec"].get("volumeName").is_none(), "{c}");
    // An update that sends the zeros again changes nothing, and a merge patch setting
    // one is stored as Go would.
    let before = s.get_json("/apis/apps/v1/namespaces/default/deployments/web").1;
    let out = s.kubectl(&["patch", "deployment", "web", "--type=merge", "-p", r#"{"spec":{"template":{"spec":{"hostNetwork":false}}}}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = s.get_json("/apis/apps/v1/namespaces/default/deployments/web").1;
    assert_eq!(after["metadata"]["generation"], before["metadata"]["generation"], "no change to the spec");
    assert!(after["spec"]["template"]["spec"].get("hostNetwork").is_none(), "{after}");
}

/// LimitRanger holds claims to a LimitRange's `PersistentVolumeClaim` min and max, with
/// upstream's 403.
#[test]
fn limit_ranges_bound_claims() {
    let s = Server::start_with(&["--node=false"]);
    s.k(&["create", "namespace", "claims"]);
    let lr = r#"{"apiVersion":"v1","kind":"LimitRange","metadata":{"name":"storage","namespace":"claims"},
      "spec":{"limits":[{"type":"PersistentVolumeClaim","min":{"storage":"1Gi"},"max":{"storage":"2Gi"}}]}}"#;
    assert!(s.k_stdin(&["create", "-f", "-"], lr).status.success());
    let claim = |name: &str, size: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{{"name":"{name}","namespace":"claims"}},
              "spec":{{"accessModes":["ReadWriteOnce"],"resources":{{"requests":{{"storage":"{size}"}}}}}}}}"#
        )
    };
    let out = s.k_stdin(&["create", "-f", "-"], &claim("big", "5Gi"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("persistentvolumeclaims \"big\" is forbidden: maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 5Gi"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.k_stdin(&["create", "-f", "-"], &claim("small", "500Mi"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"));
    let out = s.k_stdin(&["create", "-f", "-"], &claim("fits", "1536Mi"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.get_json("/api/v1/namespaces/claims/persistentvolumeclaims/big").0, 404, "nothing stored");
}
