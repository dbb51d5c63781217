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
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            default_probe(p);
        }
    }
    if let Some(lc) = c.get_mut("lifecycle").and_then(Value::as_object_mut) {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = lc.get_mut(hook).and_then(Value::as_object_mut) {
                default_handler(h);
            }
        }
    }
    for e in c.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(from) = e.get_mut("valueFrom") {
            default_field_ref(from);
        }
    }
}

/// SetDefaults_ObjectFieldSelector: the `fieldRef` held by `holder` (an env var's
/// `valueFrom`, a downward API item) reads `v1` unless it says otherwise.
fn default_field_ref(holder: &mut Value) {
    if let Some(fr) = holder.get_mut("fieldRef").and_then(Value::as_object_mut) {
        set_default(fr, "apiVersion", json!("v1"));
    }
}

fn default_ports(c: &mut Map<String, Value>, host_network: bool) {
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports {
            if let Some(p) = p.as_object_mut() {
                set_default(p, "protocol", json!("TCP"));
                // SetDefaults_PodSpec: on the host network a port is its host port.
                if host_network {
                    if let Some(port) = p.get("containerPort").cloned() {
                        set_default(p, "hostPort", port);
                    }
                }
            }
        }
    }
}

/// SetDefaults_HTTPGetAction (and the handler of a probe or lifecycle hook).
fn default_handler(h: &mut Map<String, Value>) {
    if let Some(get) = h.get_mut("httpGet").and_then(Value::as_object_mut) {
        if get.get("path").and_then(Value::as_str).is_none_or(str::is_empty) {
            get.insert("path".into(), json!("/"));
        }
        if get.get("scheme").and_then(Value::as_str).is_none_or(str::is_empty) {
            get.insert("scheme".into(), json!("HTTP"));
        }
    }
    if let Some(grpc) = h.get_mut("grpc").and_then(Value::as_object_mut) {
        set_default(grpc, "service", json!(""));
    }
}

/// SetDefaults_Probe.
fn default_probe(p: &mut Map<String, Value>) {
    for (k, v) in [("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1), ("failureThreshold", 3)] {
        if p.get(k).and_then(Value::as_i64).is_none_or(|n| n == 0) {
            p.insert(k.into(), json!(v));
        }
    }
    default_handler(p);
}

/// SetDefaults_Volume and the defaults of the volume sources it reaches.
fn default_volume(v: &mut Value) {
    let Some(v) = v.as_object_mut() else { return };
    // SetDefaults_Volume: a volume that names no source is an emptyDir.
    if !v.keys().any(|k| k != "name") {
        v.insert("emptyDir".into(), json!({}));
    }
    for source in ["configMap", "secret", "downwardAPI", "projected"] {
        if let Some(src) = v.get_mut(source).and_then(Value::as_object_mut) {
            set_default(src, "defaultMode", json!(0o644));
        }
    }
    if let Some(hp) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        set_default(hp, "type", json!(""));
    }
    let field_refs = |items: &mut Value| items.as_array_mut().into_iter().flatten().for_each(default_field_ref);
    if let Some(items) = v.get_mut("downwardAPI").and_then(|d| d.get_mut("items")) {
        field_refs(items);
    }
    if let Some(sources) = v.get_mut("projected").and_then(|p| p.get_mut("sources")).and_then(Value::as_array_mut) {
        for src in sources {
            if let Some(t) = src.get_mut("serviceAccountToken").and_then(Value::as_object_mut) {
                set_default(t, "expirationSeconds", json!(3600));
            }
            if let Some(items) = src.pointer_mut("/downwardAPI/items") {
                field_refs(items);
            }
        }
    }
}

/// Defaults of a `PodSpec` (SetDefaults_PodSpec and what it reaches: containers,
/// probes, ports, volumes, field references).
pub fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool).unwrap_or(false);
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut() {
                default_container(c);
                if let Some(c) = c.as_object_mut() {
                    default_ports(c, host_network);
                }
            }
        }
    }
    if let Some(vs) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        vs.iter_mut().for_each(default_volume);
    }
}

/// SetDefaults_Pod: a Pod's spec, `enableServiceLinks`, and requests taken from limits
/// where a container sets only the limit.
fn default_pod(root: &mut Map<String, Value>) {
    let spec = obj_entry(root, "spec");
    default_pod_spec(spec);
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) else { continue };
            let Some(limits) = res.get("limits").and_then(Value::as_object).cloned() else { continue };
            let requests = obj_entry(res, "requests");
            for (k, v) in limits {
                requests.entry(k).or_insert(v);
            }
        }
    }
}

/// An embedded `ObjectMeta` (a template's) as Go serializes it: the zero
/// `creationTimestamp` is written as `null`.
fn default_embedded_meta(holder: &mut Map<String, Value>) {
    let meta = obj_entry(holder, "metadata");
    meta.entry("creationTimestamp").or_insert(Value::Null);
}

fn default_template(spec: &mut Map<String, Value>) {
    let template = obj_entry(spec, "template");
    default_embedded_meta(template);
    let pod_spec = obj_entry(template, "spec");
    default_pod_spec(pod_spec);
}

/// SetDefaults_LimitRangeItem: for containers, the default limit falls back to the max,
/// and the default request to the default limit, then to the min.
fn default_limit_range(spec: &mut Map<String, Value>) {
    for item in spec.get_mut("limits").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(item) = item.as_object_mut() else { continue };
        if item.get("type").and_then(Value::as_str) != Some("Container") {
            continue;
        }
        let fill = |item: &mut Map<String, Value>, into: &str, from: &str| {
            let Some(src) = item.get(from).and_then(Value::as_object).cloned() else { return };
            let dst = obj_entry(item, into);
            for (k, v) in src {
                dst.entry(k).or_insert(v);
            }
            if dst.is_empty() {
                item.remove(into);
            }
        };
        fill(item, "default", "max");
        fill(item, "defaultRequest", "default");
        fill(item, "defaultRequest", "min");
    }
}

/// The status a kind starts with on create, as Go writes its zero value (fields without
/// `omitempty` appear as zeros).
pub fn initial_status(def: &ResourceDef) -> Option<Value> {
    Some(match (def.group, def.plural) {
        ("apps", "deployments") | ("batch", "jobs") | ("batch", "cronjobs") | ("", "resourcequotas") => json!({}),
        ("apps", "replicasets") | ("", "replicationcontrollers") => json!({"replicas": 0}),
        ("apps", "statefulsets") => json!({"availableReplicas": 0, "replicas": 0}),
        ("apps", "daemonsets") => json!({"currentNumberScheduled": 0, "desiredNumberScheduled": 0, "numberMisscheduled": 0, "numberReady": 0}),
        ("policy", "poddisruptionbudgets") => json!({"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 0}),
        ("networking.k8s.io", "ingresses") => json!({"loadBalancer": {}}),
        ("autoscaling", "horizontalpodautoscalers") if def.version == "v1" => json!({"currentReplicas": 0, "desiredReplicas": 0}),
        ("autoscaling", "horizontalpodautoscalers") => json!({"currentMetrics": null, "desiredReplicas": 0}),
        _ => return None,
    })
}

/// What a kind's create strategy adds once the object has its uid: a Job's selector and
/// labels (`batch.kubernetes.io/controller-uid`, unless `manualSelector`), a DaemonSet's
/// template generation annotation, the storage-protection finalizers.
pub fn prepare_create(def: &ResourceDef, obj: &mut Value) {
    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let Some(root) = obj.as_object_mut() else { return };
    match (def.group, def.plural) {
        ("batch", "jobs") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "manualSelector", json!(false));
            if spec.get("manualSelector") != Some(&json!(true)) {
                let template = obj_entry(spec, "template");
                let labels = obj_entry(obj_entry(template, "metadata"), "labels");
                for (k, v) in
                    [("batch.kubernetes.io/controller-uid", &uid), ("batch.kubernetes.io/job-name", &name), ("controller-uid", &uid), ("job-name", &name)]
                {
                    labels.insert(k.into(), json!(v));
                }
                spec.insert("selector".into(), json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
            }
            // SetDefaults_Job: a Job without labels takes its template's.
            let template_labels = root.get("spec").and_then(|s| s.pointer("/template/metadata/labels")).cloned();
            let meta = obj_entry(root, "metadata");
            if meta.get("labels").and_then(Value::as_object).is_none_or(Map::is_empty) {
                if let Some(l) = template_labels {
                    meta.insert("labels".into(), l);
                }
            }
        }
        ("apps", "daemonsets") => {
            let annotations = obj_entry(obj_entry(root, "metadata"), "annotations");
            annotations.insert("deprecated.daemonset.template.generation".into(), json!("1"));
        }
        ("", "persistentvolumeclaims") | ("", "persistentvolumes") => {
            let finalizer = if def.plural == "persistentvolumes" { "kubernetes.io/pv-protection" } else { "kubernetes.io/pvc-protection" };
            let meta = obj_entry(root, "metadata");
            let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = finalizers.as_array_mut() {
                if !list.iter().any(|f| f == finalizer) {
                    list.push(json!(finalizer));
                }
            }
        }
        _ => {}
    }
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
        ("", "pods") => default_pod(root),
        ("", "limitranges") => default_limit_range(obj_entry(root, "spec")),
        ("", "endpoints") => {
            for subset in root.get_mut("subsets").and_then(Value::as_array_mut).into_iter().flatten() {
                for p in subset.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(p) = p.as_object_mut() {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
        ("networking.k8s.io", "networkpolicies") => {
            let spec = obj_entry(root, "spec");
            if spec.get("policyTypes").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                let egress = spec.get("egress").and_then(Value::as_array).is_some_and(|e| !e.is_empty());
                spec.insert("policyTypes".into(), if egress { json!(["Ingress", "Egress"]) } else { json!(["Ingress"]) });
            }
        }
        ("autoscaling", "horizontalpodautoscalers") => {
            let v2 = def.version == "v2";
            let spec = obj_entry(root, "spec");
            set_default(spec, "minReplicas", json!(1));
            // v2's SetDefaults: no metrics means 80% of the CPU requested (v1 leaves the
            // same default to the controller).
            if v2 && spec.get("metrics").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                spec.insert(
                    "metrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                );
            }
            // SetDefaults_HorizontalPodAutoscalerBehavior: a behavior given is completed
            // with the default rules (scale-down's stabilization window stays unset: the
            // controller's flag decides it).
            if let Some(behavior) = spec.get_mut("behavior").and_then(Value::as_object_mut) {
                let rules = |b: &mut Map<String, Value>, key: &str, window: Option<i64>, policies: Value| {
                    let r = b.entry(key).or_insert_with(|| json!({}));
                    if let Some(r) = r.as_object_mut() {
                        if let Some(w) = window {
                            set_default(r, "stabilizationWindowSeconds", json!(w));
                        }
                        set_default(r, "selectPolicy", json!("Max"));
                        set_default(r, "policies", policies);
                    }
                };
                rules(
                    behavior,
                    "scaleUp",
                    Some(0),
                    json!([{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]),
                );
                rules(behavior, "scaleDown", None, json!([{"type": "Percent", "value": 100, "periodSeconds": 15}]));
            }
        }
        ("storage.k8s.io", "storageclasses") => {
            set_default(root, "reclaimPolicy", json!("Delete"));
            set_default(root, "volumeBindingMode", json!("Immediate"));
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
            if ty == "LoadBalancer" {
                set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
            }
            if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
                let cfg = obj_entry(obj_entry(spec, "sessionAffinityConfig"), "clientIP");
                set_default(cfg, "timeoutSeconds", json!(10800));
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
            // SetDefaults_ReplicationController: selector and labels from the template's.
            let template_labels =
                root.get("spec").and_then(|s| s.pointer("/template/metadata/labels")).filter(|l| l.as_object().is_some_and(|m| !m.is_empty())).cloned();
            if let Some(labels) = template_labels {
                let spec = obj_entry(root, "spec");
                if spec.get("selector").and_then(Value::as_object).is_none_or(Map::is_empty) {
                    spec.insert("selector".into(), labels.clone());
                }
                let meta = obj_entry(root, "metadata");
                if meta.get("labels").and_then(Value::as_object).is_none_or(Map::is_empty) {
                    meta.insert("labels".into(), labels);
                }
            }
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
            for pvc in spec.get_mut("volumeClaimTemplates").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(pvc) = pvc.as_object_mut() {
                    default_embedded_meta(pvc);
                    set_default(obj_entry(pvc, "spec"), "volumeMode", json!("Filesystem"));
                    set_default(obj_entry(pvc, "status"), "phase", json!("Pending"));
                }
            }
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
            // Under backoffLimitPerIndex the per-index limit is what stops a Job.
            let per_index = spec.get("backoffLimitPerIndex").is_some_and(|v| !v.is_null());
            set_default(spec, "backoffLimit", json!(if per_index { i64::from(i32::MAX) } else { 6 }));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            // A pod failure policy needs to see pods fail before replacing them.
            let has_failure_policy = spec.get("podFailurePolicy").is_some_and(|v| !v.is_null());
            set_default(spec, "podReplacementPolicy", json!(if has_failure_policy { "Failed" } else { "TerminatingOrFailed" }));
            default_template(spec);
        }
        ("batch", "cronjobs") => {
            let spec = obj_entry(root, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            let jt = obj_entry(spec, "jobTemplate");
            default_embedded_meta(jt);
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
    fn limit_range_requests_fall_back_to_limits_then_min() {
        let def = find("", "v1", "limitranges").unwrap();
        let mut lr =
            json!({"spec": {"limits": [{"type": "Container", "max": {"memory": "1Gi"}, "min": {"cpu": "10m"}}, {"type": "Pod", "max": {"cpu": "2"}}]}});
        apply_defaults(def, &mut lr);
        assert_eq!(lr["spec"]["limits"][0]["default"], json!({"memory": "1Gi"}));
        assert_eq!(lr["spec"]["limits"][0]["defaultRequest"], json!({"memory": "1Gi", "cpu": "10m"}));
        assert!(lr["spec"]["limits"][1].get("default").is_none(), "only containers get defaults");
    }

    #[test]
    fn pod_volumes_probes_and_requests() {
        let def = find("", "v1", "pods").unwrap();
        let mut p = json!({"spec": {"hostNetwork": true, "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}],
            "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 8080}], "livenessProbe": {"grpc": {"port": 1}},
                            "resources": {"limits": {"cpu": "1"}}}]}});
        apply_defaults(def, &mut p);
        assert_eq!(p["spec"]["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(p["spec"]["volumes"][1]["secret"]["defaultMode"], 420);
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["hostPort"], 8080);
        assert_eq!(p["spec"]["containers"][0]["livenessProbe"]["periodSeconds"], 10);
        assert_eq!(p["spec"]["containers"][0]["livenessProbe"]["grpc"]["service"], "");
        assert_eq!(p["spec"]["containers"][0]["resources"]["requests"], json!({"cpu": "1"}));
        assert_eq!(p["spec"]["enableServiceLinks"], true);
        // Templates get neither enableServiceLinks nor requests from limits.
        let def = find("apps", "v1", "deployments").unwrap();
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": "1"}}}]}}}});
        apply_defaults(def, &mut d);
        assert!(d["spec"]["template"]["spec"].get("enableServiceLinks").is_none());
        assert!(d["spec"]["template"]["spec"]["containers"][0]["resources"].get("requests").is_none());
        assert_eq!(d["spec"]["template"]["metadata"]["creationTimestamp"], Value::Null);
    }

    #[test]
    fn generated_names_cut_long_prefixes_at_a_character() {
        let name = crate::meta::generate_name(&"é".repeat(40));
        assert!(name.len() <= 63, "{name}");
    }

    #[test]
    fn tagged_images_pull_if_not_present() {
        let mut c = json!({"image": "nginx:1.27"});
        default_container(&mut c);
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    }
}
