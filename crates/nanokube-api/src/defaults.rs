//! Defaults that kube-apiserver fills in and clients read back (`kubectl get -o yaml`
//! shows them; controllers and kubectl commands depend on some of them).

use serde_json::{json, Map, Value};

use crate::resources::ResourceDef;

fn obj_entry<'a>(m: &'a mut Map<String, Value>, k: &str) -> &'a mut Map<String, Value> {
    let e = m.entry(k).or_insert_with(|| json!({}));
    if !e.is_object() {
        *e = json!({});
    }
    e.as_object_mut().expect("object")
}

fn set_default(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.to_string(), v);
    }
}

fn default_container(c: &mut Value) {
    let Some(c) = c.as_object_mut() else { return };
    let image = c.get("image").and_then(Value::as_str).unwrap_or("").to_string();
    let untagged_or_latest = {
        let last = image.rsplit('/').next().unwrap_or("");
        !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"))
    };
    set_default(c, "imagePullPolicy", json!(if untagged_or_latest { "Always" } else { "IfNotPresent" }));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if let Some(p) = p.as_object_mut() {
                set_default(p, "protocol", json!("TCP"));
            }
        }
    }
}

/// Defaults of a `PodSpec`.
pub fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(default_container);
        }
    }
}

fn default_template(spec: &mut Map<String, Value>) {
    let template = obj_entry(spec, "template");
    let pod_spec = obj_entry(template, "spec");
    default_pod_spec(pod_spec);
}

/// Apply the defaults of a kind to an object about to be created or updated.
pub fn apply_defaults(def: &ResourceDef, obj: &mut Value) {
    if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
        crate::crd::default_crd(obj);
        // And the status the server writes before any controller does.
        crate::crd::record_storage_version(obj);
        return;
    }
    let Some(root) = obj.as_object_mut() else { return };
    match (def.group, def.plural) {
        ("", "pods") => {
            let spec = obj_entry(root, "spec");
            default_pod_spec(spec);
        }
        ("", "services") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            let ty = spec.get("type").and_then(Value::as_str).unwrap_or("").to_string();
            if ty != "ExternalName" {
                set_default(spec, "sessionAffinity", json!("None"));
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if ty == "NodePort" || ty == "LoadBalancer" {
                set_default(spec, "externalTrafficPolicy", json!("Cluster"));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    if let Some(p) = p.as_object_mut() {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
            let status = obj_entry(root, "status");
            set_default(status, "loadBalancer", json!({}));
        }
        ("", "namespaces") => {
            let name = root.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("").to_string();
            let meta = obj_entry(root, "metadata");
            let labels = obj_entry(meta, "labels");
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            let spec = obj_entry(root, "spec");
            set_default(spec, "finalizers", json!(["kubernetes"]));
            let status = obj_entry(root, "status");
            set_default(status, "phase", json!("Active"));
        }
        ("", "secrets") => {
            set_default(root, "type", json!("Opaque"));
            // stringData is write-only: upstream merges it into data (base64) and drops it.
            if let Some(Value::Object(sd)) = root.remove("stringData") {
                use base64::Engine;
                let data = obj_entry(root, "data");
                for (k, v) in sd {
                    let text = v.as_str().unwrap_or("").to_string();
                    data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(text)));
                }
            }
        }
        ("scheduling.k8s.io", "priorityclasses") => set_default(root, "preemptionPolicy", json!("PreemptLowerPriority")),
        ("", "replicationcontrollers") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "replicas", json!(1));
            default_template(spec);
        }
        ("", "persistentvolumeclaims") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "volumeMode", json!("Filesystem"));
            let status = obj_entry(root, "status");
            set_default(status, "phase", json!("Pending"));
        }
        ("", "persistentvolumes") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            set_default(spec, "volumeMode", json!("Filesystem"));
            let status = obj_entry(root, "status");
            set_default(status, "phase", json!("Pending"));
        }
        ("apps", "deployments") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = obj_entry(spec, "strategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = obj_entry(strategy, "rollingUpdate");
                set_default(ru, "maxUnavailable", json!("25%"));
                set_default(ru, "maxSurge", json!("25%"));
            }
            default_template(spec);
        }
        ("apps", "replicasets") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "replicas", json!(1));
            default_template(spec);
        }
        ("apps", "statefulsets") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            let strategy = obj_entry(spec, "updateStrategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                set_default(obj_entry(strategy, "rollingUpdate"), "partition", json!(0));
            }
            set_default(spec, "persistentVolumeClaimRetentionPolicy", json!({"whenDeleted": "Retain", "whenScaled": "Retain"}));
            default_template(spec);
        }
        ("apps", "daemonsets") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            let strategy = obj_entry(spec, "updateStrategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                let ru = obj_entry(strategy, "rollingUpdate");
                set_default(ru, "maxUnavailable", json!(1));
                set_default(ru, "maxSurge", json!(0));
            }
            default_template(spec);
        }
        ("batch", "jobs") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "completions", json!(1));
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            default_template(spec);
        }
        ("batch", "cronjobs") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            let jt = obj_entry(spec, "jobTemplate");
            let jspec = obj_entry(jt, "spec");
            default_template(jspec);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn deployment_defaults_clients_read_back() {
        let def = find("apps", "v1", "deployments").unwrap();
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        apply_defaults(def, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
        let mut empty = json!({"spec": {"strategy": {}, "template": {"spec": {"containers": []}}}});
        apply_defaults(def, &mut empty);
        assert_eq!(empty["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always");
    }

    #[test]
    fn service_defaults() {
        let def = find("", "v1", "services").unwrap();
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply_defaults(def, &mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let def = find("", "v1", "secrets").unwrap();
        let mut s = json!({"data": {"x": "eA=="}, "stringData": {"a": "b"}});
        apply_defaults(def, &mut s);
        assert_eq!(s, json!({"type": "Opaque", "data": {"x": "eA==", "a": "Yg=="}}));
    }

    #[test]
    fn tagged_images_pull_if_not_present() {
        let mut c = json!({"image": "nginx:1.27"});
        default_container(&mut c);
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    }
}
