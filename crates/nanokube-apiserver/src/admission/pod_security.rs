//! PodSecurity admission (Pod Security Standards), enabled by default in kube-apiserver
//! 1.33: a namespace's `pod-security.kubernetes.io/{enforce,warn}` labels choose a level
//! (`privileged`, the default, checks nothing; `baseline`; `restricted`). Pods created in
//! an enforcing namespace that violate its level are refused (403, `violates PodSecurity
//! "<level>:<version>": ...`); `warn` answers with a Warning, and so do workloads whose
//! pod template would violate either level (`would violate PodSecurity ...`), as upstream.
//!
//! The checks are upstream's, named and ordered by their IDs, with their messages: host
//! namespaces, privileged, capabilities, hostPath volumes, host ports, /proc mount,
//! seccomp, sysctls (baseline); restricted volume types, privilege escalation,
//! runAsNonRoot, runAsUser, seccomp, capabilities (restricted). Not checked: AppArmor,
//! SELinux options and Windows host processes; `audit` labels write nothing (the audit log
//! has no annotations).

use nanokube_api::ApiError;
use serde_json::Value;

use super::{Attributes, Operation};
use crate::registry::Registry;

const LEVEL_LABEL: &str = "pod-security.kubernetes.io/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// Workload kinds whose pod template is checked (warnings only), and where it is.
fn template_of<'a>(attrs: &Attributes<'_>, obj: &'a Value) -> Option<&'a Value> {
    match (attrs.def.group, attrs.def.plural) {
        ("", "pods") => Some(obj),
        ("", "replicationcontrollers") | ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") | ("batch", "jobs") => {
            obj.pointer("/spec/template")
        }
        ("batch", "cronjobs") => obj.pointer("/spec/jobTemplate/spec/template"),
        ("", "podtemplates") => obj.get("template"),
        _ => None,
    }
}

/// Check a create or update of a pod or a workload against its namespace's levels.
pub(super) fn check(registry: &Registry, attrs: &Attributes<'_>, obj: Option<&Value>) -> Result<(), ApiError> {
    if attrs.namespace.is_empty() || !attrs.subresource.is_empty() || attrs.operation == Operation::Delete {
        return Ok(());
    }
    let Some(pod) = obj.and_then(|o| template_of(attrs, o)) else { return Ok(()) };
    let Some(ns) = super::matching::namespace_object(registry, attrs.namespace) else { return Ok(()) };
    let label = |mode: &str| ns.pointer(&format!("/metadata/labels/{}", format!("{LEVEL_LABEL}{mode}").replace('/', "~1"))).and_then(Value::as_str);
    let level = |mode: &str| label(mode).and_then(Level::parse).unwrap_or(Level::Privileged);
    let version = |mode: &str| label(&format!("{mode}-version")).filter(|v| !v.is_empty()).unwrap_or("latest").to_string();
    let is_pod = attrs.def.group.is_empty() && attrs.def.plural == "pods";
    // Pod updates are checked only when they could change what is checked (upstream
    // ignores updates that change only metadata or images); here: only creates.
    if is_pod && attrs.operation == Operation::Update {
        return Ok(());
    }
    let enforce = level("enforce");
    if enforce != Level::Privileged {
        let violations = violations(pod, enforce);
        if !violations.is_empty() {
            let text = format!("PodSecurity \"{}:{}\": {}", enforce.name(), version("enforce"), violations.join(", "));
            if is_pod {
                let name = attrs.name;
                let msg =
                    if name.is_empty() { format!("pods is forbidden: violates {text}") } else { format!("pods \"{name}\" is forbidden: violates {text}") };
                let mut e = ApiError::forbidden(msg);
                e.details.name = Some(name.to_string());
                e.details.kind = Some("pods".into());
                return Err(e);
            }
            attrs.warn(format!("would violate {text}"));
        }
    }
    let warn = level("warn");
    if warn != Level::Privileged && !(warn == enforce && version("warn") == version("enforce")) {
        let violations = violations(pod, warn);
        if !violations.is_empty() {
            attrs.warn(format!("would violate PodSecurity \"{}:{}\": {}", warn.name(), version("warn"), violations.join(", ")));
        }
    }
    Ok(())
}

/// A namespace's PodSecurity labels must name a level (or a version): refused otherwise.
pub(super) fn check_namespace_labels(obj: &Value) -> Result<(), ApiError> {
    let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) else { return Ok(()) };
    for mode in ["enforce", "warn", "audit"] {
        let key = format!("{LEVEL_LABEL}{mode}");
        if let Some(v) = labels.get(&key).and_then(Value::as_str) {
            if Level::parse(v).is_none() {
                let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
                return Err(ApiError::invalid(
                    "Namespace",
                    "",
                    name,
                    vec![nanokube_api::error::Cause {
                        reason: "FieldValueInvalid".into(),
                        message: format!("Invalid value: {v:?}: must be one of privileged, baseline, restricted"),
                        field: format!("metadata.labels[{key}]"),
                    }],
                ));
            }
        }
    }
    Ok(())
}

/// The containers of a pod (spec) with the words upstream uses for them.
fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec.get(*k).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default())
        .collect()
}

fn name(c: &Value) -> &str {
    c.get("name").and_then(Value::as_str).unwrap_or("")
}

/// `container "a"` or `containers "a", "b"`.
fn which(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    if names.len() == 1 {
        format!("container {}", quoted[0])
    } else {
        format!("containers {}", quoted.join(", "))
    }
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// Baseline's default capabilities: containers may add these and no others.
const BASELINE_CAPABILITIES: &[&str] =
    &["AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"];
/// Sysctls baseline allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
/// Volume types restricted allows.
const RESTRICTED_VOLUMES: &[&str] = &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// Every violation of `level` by the pod (or pod template) `pod`, as `reason (detail)`,
/// in the order of upstream's check IDs.
fn violations(pod: &Value, level: Level) -> Vec<String> {
    let spec = pod.get("spec").cloned().unwrap_or(Value::Null);
    let cs = containers(&spec);
    let pod_sc = spec.get("securityContext").cloned().unwrap_or(Value::Null);
    let sc = |c: &Value, k: &str| c.pointer(&format!("/securityContext/{k}")).cloned();
    let mut out: Vec<(&'static str, String, String)> = Vec::new();
    let mut add = |id: &'static str, reason: &str, detail: String| out.push((id, reason.to_string(), detail));

    // Baseline.
    let hosts: Vec<String> =
        ["hostNetwork", "hostPID", "hostIPC"].iter().filter(|k| spec.get(**k) == Some(&Value::Bool(true))).map(|k| format!("{k}=true")).collect();
    if !hosts.is_empty() {
        add("hostNamespaces", "host namespaces", hosts.join(", "));
    }
    let privileged: Vec<&str> = cs.iter().filter(|c| sc(c, "privileged") == Some(Value::Bool(true))).map(|c| name(c)).collect();
    if !privileged.is_empty() {
        add("privileged", "privileged", format!("{} must not set securityContext.privileged=true", which(&privileged)));
    }
    let mut bad_caps = Vec::new();
    for c in &cs {
        let adds: Vec<&str> =
            c.pointer("/securityContext/capabilities/add").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        let extra: Vec<String> = adds.iter().filter(|a| !BASELINE_CAPABILITIES.contains(a)).map(|a| format!("{a:?}")).collect();
        if !extra.is_empty() {
            bad_caps.push(format!("{} must not include {} in securityContext.capabilities.add", which(&[name(c)]), extra.join(", ")));
        }
    }
    if !bad_caps.is_empty() {
        add("capabilities_baseline", "non-default capabilities", bad_caps.join("; "));
    }
    let volumes: Vec<&Value> = spec.get("volumes").and_then(Value::as_array).map(|v| v.iter().collect()).unwrap_or_default();
    let host_paths: Vec<String> = volumes.iter().filter(|v| v.get("hostPath").is_some()).map(|v| format!("{:?}", name(v))).collect();
    if !host_paths.is_empty() {
        add("hostPathVolumes", "hostPath volumes", format!("{} {}", plural(host_paths.len(), "volume", "volumes"), host_paths.join(", ")));
    }
    let mut port_users = Vec::new();
    let mut ports = Vec::new();
    for c in &cs {
        let hp: Vec<i64> = c
            .get("ports")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().filter_map(|p| p.get("hostPort").and_then(Value::as_i64)).filter(|p| *p != 0).collect())
            .unwrap_or_default();
        if !hp.is_empty() {
            port_users.push(name(c));
            ports.extend(hp);
        }
    }
    if !port_users.is_empty() {
        let list: Vec<String> = ports.iter().map(i64::to_string).collect();
        add(
            "hostPorts",
            "hostPort",
            format!("{} {} {} {}", which(&port_users), plural(port_users.len(), "uses", "use"), plural(ports.len(), "hostPort", "hostPorts"), list.join(", ")),
        );
    }
    let proc_mount: Vec<&str> = cs.iter().filter(|c| sc(c, "procMount").is_some_and(|p| p.as_str().is_some_and(|p| p != "Default"))).map(|c| name(c)).collect();
    if !proc_mount.is_empty() {
        add("procMount", "procMount", format!("{} must not set securityContext.procMount to \"Unmasked\"", which(&proc_mount)));
    }
    let seccomp_type = |v: &Value| v.pointer("/seccompProfile/type").and_then(Value::as_str).map(String::from);
    let pod_seccomp = seccomp_type(&pod_sc);
    let mut unconfined = Vec::new();
    if pod_seccomp.as_deref() == Some("Unconfined") {
        unconfined.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string());
    }
    let unconfined_cs: Vec<&str> =
        cs.iter().filter(|c| c.get("securityContext").and_then(seccomp_type).as_deref() == Some("Unconfined")).map(|c| name(c)).collect();
    if !unconfined_cs.is_empty() {
        unconfined.push(format!("{} must not set securityContext.seccompProfile.type to \"Unconfined\"", which(&unconfined_cs)));
    }
    if !unconfined.is_empty() {
        add("seccompProfile_baseline", "seccompProfile", unconfined.join("; "));
    }
    let sysctls: Vec<String> = pod_sc
        .get("sysctls")
        .and_then(Value::as_array)
        .map(|s| s.iter().filter_map(|x| x.get("name").and_then(Value::as_str)).filter(|n| !SAFE_SYSCTLS.contains(n)).map(|n| format!("{n:?}")).collect())
        .unwrap_or_default();
    if !sysctls.is_empty() {
        add("sysctls", "forbidden sysctls", sysctls.join(", "));
    }

    if level == Level::Restricted {
        let mut restricted: Vec<(String, String)> = Vec::new();
        for v in &volumes {
            if let Some(m) = v.as_object() {
                for k in m.keys().filter(|k| k.as_str() != "name") {
                    if !RESTRICTED_VOLUMES.contains(&k.as_str()) {
                        restricted.push((format!("{:?}", name(v)), format!("{k:?}")));
                    }
                }
            }
        }
        if !restricted.is_empty() {
            let names: Vec<String> = restricted.iter().map(|(n, _)| n.clone()).collect();
            let mut types: Vec<String> = restricted.iter().map(|(_, t)| t.clone()).collect();
            types.dedup();
            add(
                "restrictedVolumes",
                "restricted volume types",
                format!(
                    "{} {} {} {} {}",
                    plural(names.len(), "volume", "volumes"),
                    names.join(", "),
                    plural(names.len(), "uses", "use"),
                    plural(types.len(), "restricted volume type", "restricted volume types"),
                    types.join(", ")
                ),
            );
        }
        let escalating: Vec<&str> = cs.iter().filter(|c| sc(c, "allowPrivilegeEscalation") != Some(Value::Bool(false))).map(|c| name(c)).collect();
        if !escalating.is_empty() {
            add(
                "allowPrivilegeEscalation",
                "allowPrivilegeEscalation != false",
                format!("{} must set securityContext.allowPrivilegeEscalation=false", which(&escalating)),
            );
        }
        let mut caps = Vec::new();
        let no_drop: Vec<&str> = cs
            .iter()
            .filter(|c| !c.pointer("/securityContext/capabilities/drop").and_then(Value::as_array).is_some_and(|d| d.iter().any(|x| x == "ALL")))
            .map(|c| name(c))
            .collect();
        if !no_drop.is_empty() {
            caps.push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", which(&no_drop)));
        }
        for c in &cs {
            let adds: Vec<String> = c
                .pointer("/securityContext/capabilities/add")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).filter(|a| *a != "NET_BIND_SERVICE").map(|a| format!("{a:?}")).collect())
                .unwrap_or_default();
            if !adds.is_empty() {
                caps.push(format!("{} must not include {} in securityContext.capabilities.add", which(&[name(c)]), adds.join(", ")));
            }
        }
        if !caps.is_empty() {
            add("capabilities_restricted", "unrestricted capabilities", caps.join("; "));
        }
        let pod_non_root = pod_sc.get("runAsNonRoot").and_then(Value::as_bool);
        let mut non_root = Vec::new();
        if pod_non_root == Some(false) {
            non_root.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        let explicit_false: Vec<&str> = cs.iter().filter(|c| sc(c, "runAsNonRoot") == Some(Value::Bool(false))).map(|c| name(c)).collect();
        if !explicit_false.is_empty() {
            non_root.push(format!("{} must not set securityContext.runAsNonRoot=false", which(&explicit_false)));
        }
        if pod_non_root != Some(true) {
            let unset: Vec<&str> = cs.iter().filter(|c| sc(c, "runAsNonRoot").is_none()).map(|c| name(c)).collect();
            if !unset.is_empty() {
                let who = which(&unset);
                non_root.push(format!("pod or {who} must set securityContext.runAsNonRoot=true"));
            }
        }
        if !non_root.is_empty() {
            add("runAsNonRoot", "runAsNonRoot != true", non_root.join("; "));
        }
        let mut root = Vec::new();
        if pod_sc.get("runAsUser").and_then(Value::as_i64) == Some(0) {
            root.push("pod must not set runAsUser=0".to_string());
        }
        let root_cs: Vec<&str> = cs.iter().filter(|c| sc(c, "runAsUser").and_then(|v| v.as_i64()) == Some(0)).map(|c| name(c)).collect();
        if !root_cs.is_empty() {
            root.push(format!("{} must not set runAsUser=0", which(&root_cs)));
        }
        if !root.is_empty() {
            add("runAsUser", "runAsUser=0", root.join("; "));
        }
        let allowed = |t: Option<String>| matches!(t.as_deref(), Some("RuntimeDefault" | "Localhost"));
        let pod_ok = allowed(pod_seccomp.clone());
        let unset: Vec<&str> = cs
            .iter()
            .filter(|c| {
                let t = c.get("securityContext").and_then(seccomp_type);
                if t.is_some() {
                    !allowed(t)
                } else {
                    !pod_ok
                }
            })
            .map(|c| name(c))
            .collect();
        if !unset.is_empty() {
            let who = which(&unset);
            let text = if pod_seccomp.is_none() {
                format!("pod or {who} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"")
            } else {
                format!("{who} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"")
            };
            add("seccompProfile_restricted", "seccompProfile", text);
        }
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    out.into_iter().map(|(_, reason, detail)| format!("{reason} ({detail})")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plain_pod_violates_restricted_in_upstreams_words() {
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        assert!(violations(&pod, Level::Baseline).is_empty());
        assert_eq!(
            violations(&pod, Level::Restricted),
            [
                r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)"#,
                r#"unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"])"#,
                r#"runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true)"#,
                r#"seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
            ]
        );
    }

    #[test]
    fn baseline_catches_host_access() {
        let pod = json!({"spec": {"hostNetwork": true, "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"privileged": true}, "ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
        assert_eq!(
            violations(&pod, Level::Baseline),
            [
                "host namespaces (hostNetwork=true)",
                r#"hostPath volumes (volume "root")"#,
                r#"hostPort (container "c" uses hostPort 8080)"#,
                r#"privileged (container "c" must not set securityContext.privileged=true)"#,
            ]
        );
    }
}
