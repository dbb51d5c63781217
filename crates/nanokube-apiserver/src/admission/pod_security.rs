//! PodSecurity admission (Pod Security Standards), enabled by default in kube-apiserver
//! 1.33: a namespace's `pod-security.kubernetes.io/{enforce,warn}` labels choose a level
//! (`privileged`, the default, checks nothing; `baseline`; `restricted`). Pods created in
//! an enforcing namespace that violate its level are refused (403, `violates PodSecurity
//! "<level>:<version>": ...`); `warn` answers with a Warning, and so do workloads whose
//! pod template would violate either level (`would violate PodSecurity ...`), as upstream.
//! Pod updates are checked when they could change the verdict (an image, the number of
//! containers, an ephemeral container added or changed; the `ephemeralcontainers` and
//! `resize` subresources included), as upstream's `isSignificantPodUpdate`. Raising a
//! namespace's enforce level warns about the existing pods that violate it
//! (`existing pods in namespace "x" violate the new PodSecurity enforce level ...`).
//!
//! The checks are upstream's, named and ordered by their IDs, with their messages:
//! AppArmor profiles, capabilities, host namespaces, hostPath volumes, host ports,
//! privileged, /proc mount, SELinux options, seccomp, sysctls, Windows host processes
//! (baseline); restricted volume types, privilege escalation, runAsNonRoot, runAsUser,
//! seccomp, capabilities (restricted). Every pod write evaluated adds the audit annotation
//! `pod-security.kubernetes.io/enforce-policy`, and one violating the `audit` level
//! `pod-security.kubernetes.io/audit-violations`. `warn`, unless labelled itself, is at
//! least `enforce` (upstream's `PolicyToEvaluate`); workloads get the warn level only.
//!
//! [`PodSecurityConfig`] is the plugin's `PodSecurityConfiguration` (from
//! `--admission-control-config-file`): the levels of unlabelled modes, and the exempt
//! namespaces, users and RuntimeClasses, whose writes pass unchecked with the audit
//! annotation `pod-security.kubernetes.io/exempt: namespace|user|runtimeClass`.

use nanokube_api::ApiError;
use serde_json::Value;

use super::{Attributes, Operation};
use crate::registry::Registry;

const LEVEL_LABEL: &str = "pod-security.kubernetes.io/";

/// Upstream's words for a level or version that is not one (labels and configuration).
const MUST_BE_LEVEL: &str = "must be one of privileged, baseline, restricted";
const MUST_BE_VERSION: &str = r#"must be "latest" or "v1.x""#;

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

/// The plugin's configuration: upstream's `PodSecurityConfiguration`
/// (`pod-security.admission.config.k8s.io/v1`).
#[derive(Debug, Clone)]
pub struct PodSecurityConfig {
    defaults: Policy,
    exempt_usernames: Vec<String>,
    exempt_namespaces: Vec<String>,
    exempt_runtime_classes: Vec<String>,
}

impl Default for PodSecurityConfig {
    /// Upstream's defaults: every mode `privileged:latest`, nothing exempt.
    fn default() -> Self {
        let privileged = LevelVersion(Level::Privileged, "latest".into());
        PodSecurityConfig {
            defaults: Policy { enforce: privileged.clone(), audit: privileged.clone(), warn: privileged },
            exempt_usernames: Vec::new(),
            exempt_namespaces: Vec::new(),
            exempt_runtime_classes: Vec::new(),
        }
    }
}

impl PodSecurityConfig {
    /// Read a `PodSecurityConfiguration` (v1, v1beta1 or v1alpha1), validated as
    /// upstream's `ValidatePodSecurityConfiguration`: every error named with its field.
    pub fn from_json(v: &Value) -> Result<PodSecurityConfig, String> {
        let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let known = ["v1", "v1beta1", "v1alpha1"].map(|ver| format!("pod-security.admission.config.k8s.io/{ver}"));
        if !known.iter().any(|k| k == api_version) || v.get("kind").and_then(Value::as_str) != Some("PodSecurityConfiguration") {
            return Err(format!(
                "expected kind PodSecurityConfiguration of apiVersion pod-security.admission.config.k8s.io/v1, got {:?} {api_version:?}",
                v.get("kind").and_then(Value::as_str).unwrap_or("")
            ));
        }
        let mut errors = Vec::new();
        let defaults = v.get("defaults").cloned().unwrap_or(Value::Null);
        let mut mode = |m: &str| {
            let level = match defaults.get(m).and_then(Value::as_str).unwrap_or("privileged") {
                "" => Level::Privileged,
                l => Level::parse(l).unwrap_or_else(|| {
                    errors.push(format!("defaults.{m}: Invalid value: {l:?}: {MUST_BE_LEVEL}"));
                    Level::Privileged
                }),
            };
            let version = match defaults.get(format!("{m}-version")).and_then(Value::as_str).unwrap_or("latest") {
                "" => "latest".to_string(),
                ver if valid_version(ver) => ver.to_string(),
                ver => {
                    errors.push(format!("defaults.{m}-version: Invalid value: {ver:?}: {MUST_BE_VERSION}"));
                    "latest".to_string()
                }
            };
            LevelVersion(level, version)
        };
        let defaults = Policy { enforce: mode("enforce"), audit: mode("audit"), warn: mode("warn") };
        let list = |key: &str, errors: &mut Vec<String>| -> Vec<String> {
            let items: Vec<String> = v["exemptions"]
                .get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    errors.push(format!("exemptions.{key}[{i}]: Duplicate value: {item:?}"));
                } else if item.is_empty() {
                    errors.push(format!("exemptions.{key}[{i}]: Invalid value: \"\": must be non-empty"));
                }
            }
            items
        };
        let config = PodSecurityConfig {
            defaults,
            exempt_usernames: list("usernames", &mut errors),
            exempt_namespaces: list("namespaces", &mut errors),
            exempt_runtime_classes: list("runtimeClasses", &mut errors),
        };
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors.join(", "))
        }
    }

    fn namespace_exempt(&self, namespace: &str) -> bool {
        self.exempt_namespaces.iter().any(|n| n == namespace)
    }

    /// Upstream's warning for labels set on an exempt namespace (`exemptNamespaceWarning`).
    fn exempt_namespace_warning(&self, ns: &Value) -> Option<String> {
        let name = ns.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        if !self.namespace_exempt(name) {
            return None;
        }
        let policy = Policy::of(ns, &self.defaults);
        if policy.fully_privileged() || policy.equivalent(&self.defaults) {
            return None;
        }
        let has = |key: &str| ns.pointer("/metadata/labels").and_then(|l| l.get(format!("{LEVEL_LABEL}{key}"))).is_some();
        let parts: Vec<String> = [("enforce", &policy.enforce), ("audit", &policy.audit), ("warn", &policy.warn)]
            .into_iter()
            .filter(|(m, lv)| lv.0 != Level::Privileged && (has(m) || has(&format!("{m}-version"))))
            .map(|(m, lv)| format!("{m}={}", lv.text()))
            .collect();
        Some(format!("namespace {name:?} is exempt from Pod Security, and the policy ({}) will be ignored", parts.join(", ")))
    }
}

/// Warn when an exempt namespace is created with a policy that will not apply.
pub(super) fn check_exempt_namespace_create(registry: &Registry, attrs: &Attributes<'_>, obj: Option<&Value>) {
    let (Some(ns), "", Operation::Create) = (obj, attrs.subresource, attrs.operation) else { return };
    if let Some(w) = registry.pod_security().exempt_namespace_warning(ns) {
        attrs.warn(w);
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

/// Pod subresources whose writes cannot change what is checked (upstream's
/// `ignoredPodSubresources`); every other one (`ephemeralcontainers`, `resize`) is.
const IGNORED_POD_SUBRESOURCES: &[&str] = &["exec", "attach", "binding", "eviction", "log", "portforward", "proxy", "status"];

/// Whether a pod update could change the verdict (upstream's `isSignificantPodUpdate`):
/// a container added or removed, an image changed, an ephemeral container added or its
/// image changed.
fn is_significant_pod_update(pod: &Value, old: &Value) -> bool {
    let list = |p: &Value, k: &str| p.pointer(&format!("/spec/{k}")).and_then(Value::as_array).cloned().unwrap_or_default();
    for k in ["containers", "initContainers"] {
        let (new, before) = (list(pod, k), list(old, k));
        if new.len() != before.len() || new.iter().zip(&before).any(|(a, b)| a.get("image") != b.get("image")) {
            return true;
        }
    }
    let before = list(old, "ephemeralContainers");
    list(pod, "ephemeralContainers").iter().any(|c| match before.iter().find(|o| o.get("name") == c.get("name")) {
        None => true,
        Some(o) => o.get("image") != c.get("image"),
    })
}

/// Check a create or update of a pod or a workload against its namespace's levels.
pub(super) fn check(registry: &Registry, attrs: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) -> Result<(), ApiError> {
    if attrs.namespace.is_empty() || attrs.operation == Operation::Delete {
        return Ok(());
    }
    let is_pod = attrs.def.group.is_empty() && attrs.def.plural == "pods";
    // Of subresources only a pod's that can change its spec.
    let checked_subresource = is_pod && !IGNORED_POD_SUBRESOURCES.contains(&attrs.subresource);
    if !attrs.subresource.is_empty() && !checked_subresource {
        return Ok(());
    }
    let Some(pod) = obj.and_then(|o| template_of(attrs, o)) else { return Ok(()) };
    let config = registry.pod_security();
    let exempt_key = format!("{LEVEL_LABEL}exempt");
    // Exempt namespaces and users first, then RuntimeClasses, as upstream.
    if config.namespace_exempt(attrs.namespace) {
        attrs.annotate(exempt_key, "namespace".into());
        return Ok(());
    }
    if attrs.requester.is_some_and(|r| config.exempt_usernames.contains(&r.user.name)) {
        attrs.annotate(exempt_key, "user".into());
        return Ok(());
    }
    if is_pod && attrs.operation == Operation::Update && old.is_some_and(|old| !is_significant_pod_update(pod, old)) {
        return Ok(());
    }
    let Some(ns) = super::matching::namespace_object(registry, attrs.namespace) else { return Ok(()) };
    let p = Policy::of(&ns, &config.defaults);
    let audit_key = |k: &str| format!("{LEVEL_LABEL}{k}");
    if !is_pod && p.warn.0 == Level::Privileged && p.audit.0 == Level::Privileged {
        return Ok(());
    }
    if pod["spec"]["runtimeClassName"].as_str().is_some_and(|rc| config.exempt_runtime_classes.iter().any(|x| x == rc)) {
        attrs.annotate(exempt_key, "runtimeClass".into());
        return Ok(());
    }
    // Each distinct level:version is evaluated once (warn often is enforce), as upstream
    // caches its results.
    let mut results: Vec<(LevelVersion, Vec<String>)> = Vec::new();
    let mut evaluate = |lv: &LevelVersion| -> Vec<String> {
        if let Some((_, found)) = results.iter().find(|(k, _)| k == lv) {
            return found.clone();
        }
        let found = violations(pod, lv.0, &lv.1);
        results.push((lv.clone(), found.clone()));
        found
    };
    // Enforced on pods only; a workload's template gets the audit and warn levels.
    let mut denied = None;
    if is_pod {
        attrs.annotate(audit_key("enforce-policy"), p.enforce.text());
        let violations = evaluate(&p.enforce);
        if !violations.is_empty() {
            let text = format!("PodSecurity \"{}\": {}", p.enforce.text(), violations.join(", "));
            let name = attrs.name;
            let msg = if name.is_empty() { format!("pods is forbidden: violates {text}") } else { format!("pods \"{name}\" is forbidden: violates {text}") };
            let mut e = ApiError::forbidden(msg);
            e.details.name = Some(name.to_string());
            e.details.kind = Some("pods".into());
            denied = Some(e);
        }
    }
    let audit = evaluate(&p.audit);
    if !audit.is_empty() {
        attrs.annotate(audit_key("audit-violations"), format!("would violate PodSecurity \"{}\": {}", p.audit.text(), audit.join(", ")));
    }
    if let Some(e) = denied {
        return Err(e);
    }
    let warn = evaluate(&p.warn);
    if !warn.is_empty() {
        attrs.warn(format!("would violate PodSecurity \"{}\": {}", p.warn.text(), warn.join(", ")));
    }
    Ok(())
}

/// A level and the version it is checked at (`latest` or `v1.N`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct LevelVersion(Level, String);

impl LevelVersion {
    /// `restricted:latest`.
    fn text(&self) -> String {
        format!("{}:{}", self.0.name(), self.1)
    }
}

/// What a namespace's labels ask of each mode (upstream's `PolicyToEvaluate`): unset is
/// the configured default (`privileged:latest` unless configured), and `warn`, unless
/// labelled itself, is at least `enforce`.
#[derive(Debug, Clone)]
struct Policy {
    enforce: LevelVersion,
    audit: LevelVersion,
    warn: LevelVersion,
}

impl Policy {
    fn of(ns: &Value, defaults: &Policy) -> Policy {
        let label = |key: &str| ns.pointer("/metadata/labels").and_then(|l| l.get(format!("{LEVEL_LABEL}{key}"))).and_then(Value::as_str);
        let mode = |m: &str, default: &LevelVersion| {
            let level = match label(m) {
                Some(l) => Level::parse(l).unwrap_or(Level::Privileged),
                None => default.0,
            };
            let version = match label(&format!("{m}-version")) {
                Some(v) if !v.is_empty() => v.to_string(),
                Some(_) => "latest".to_string(),
                None => default.1.clone(),
            };
            LevelVersion(level, version)
        };
        let (enforce, audit, mut warn) = (mode("enforce", &defaults.enforce), mode("audit", &defaults.audit), mode("warn", &defaults.warn));
        let enforce_set = label("enforce").and_then(Level::parse).is_some();
        if label("warn").is_none() && enforce_set && enforce.0 > warn.0 {
            warn.0 = enforce.0;
            if label("warn-version").is_none() {
                warn.1 = enforce.1.clone();
            }
        }
        Policy { enforce, audit, warn }
    }

    fn fully_privileged(&self) -> bool {
        [&self.enforce, &self.audit, &self.warn].iter().all(|lv| lv.0 == Level::Privileged)
    }

    /// Upstream's `Policy.Equivalent`: the same levels, and versions that matter equal.
    fn equivalent(&self, other: &Policy) -> bool {
        let same = |a: &LevelVersion, b: &LevelVersion| a.0 == b.0 && (a.0 == Level::Privileged || a.1 == b.1);
        same(&self.enforce, &other.enforce) && same(&self.audit, &other.audit) && same(&self.warn, &other.warn)
    }
}

/// Pods a namespace's existing pods are checked against at most, as upstream's default.
const NAMESPACE_MAX_PODS_TO_CHECK: usize = 3000;

/// A namespace update that raises its enforce level: warn about the existing pods that
/// violate the new one, grouped by reasons (upstream's `EvaluatePodsInNamespace`).
pub(super) fn check_namespace_update(registry: &Registry, attrs: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) {
    let (Some(ns), Some(old), Operation::Update, "") = (obj, old, attrs.operation, attrs.subresource) else { return };
    let config = registry.pod_security();
    let LevelVersion(new_level, new_version) = Policy::of(ns, &config.defaults).enforce;
    let LevelVersion(old_level, old_version) = Policy::of(old, &config.defaults).enforce;
    if (new_level, &new_version) == (old_level, &old_version) || new_level == Level::Privileged || (new_version == old_version && new_level <= old_level) {
        return;
    }
    // An exempt namespace's pods are not checked; the new policy will not apply.
    if let Some(w) = config.exempt_namespace_warning(ns) {
        attrs.warn(w);
        return;
    }
    if config.namespace_exempt(ns.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")) {
        return;
    }
    let Some(pods) = nanokube_api::resources::find("", "v1", "pods") else { return };
    let name = ns.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let Ok(list) = registry.list(pods, Some(name), &Default::default()) else {
        attrs.warn("failed to list pods while checking new PodSecurity enforce level".into());
        return;
    };
    // One pod per controller first, then the other replicas (upstream's prioritizePods).
    let mut first = Vec::new();
    let mut replicas = Vec::new();
    let mut controllers = std::collections::HashSet::new();
    for p in &list.items {
        let pod = p.value();
        let controller = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|o| o.iter().find(|r| r["controller"] == true))
            .map(|r| r["uid"].clone());
        match controller {
            Some(uid) if !controllers.insert(uid.to_string()) => replicas.push(pod),
            _ => first.push(pod),
        }
    }
    first.extend(replicas);
    let total = first.len();
    first.truncate(NAMESPACE_MAX_PODS_TO_CHECK);
    let checked = first.len();
    // reasons → (first pod name, pods)
    let mut order: Vec<String> = Vec::new();
    let mut counts: std::collections::HashMap<String, (String, usize)> = std::collections::HashMap::new();
    for pod in first {
        let reasons: Vec<String> = findings(pod, new_level, &new_version).into_iter().map(|(reason, _)| reason).collect();
        if reasons.is_empty() {
            continue;
        }
        let key = reasons.join(", ");
        let pod_name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        match counts.get_mut(&key) {
            Some((first_name, n)) => {
                if pod_name < *first_name {
                    *first_name = pod_name;
                }
                *n += 1;
            }
            None => {
                order.push(key.clone());
                counts.insert(key, (pod_name, 1));
            }
        }
    }
    if checked < total {
        attrs.warn(format!("new PodSecurity enforce level only checked against the first {checked} of {total} existing pods"));
    }
    if order.is_empty() {
        return;
    }
    attrs.warn(format!("existing pods in namespace {name:?} violate the new PodSecurity enforce level \"{}:{}\"", new_level.name(), new_version));
    let mut lines: Vec<String> = order
        .into_iter()
        .map(|reasons| {
            let (pod, n) = &counts[&reasons];
            match n {
                1 => format!("{pod}: {reasons}"),
                2 => format!("{pod} (and 1 other pod): {reasons}"),
                n => format!("{pod} (and {} other pods): {reasons}", n - 1),
            }
        })
        .collect();
    lines.sort();
    for l in lines {
        attrs.warn(l);
    }
}

/// What is wrong with a namespace's PodSecurity labels, in upstream's order (each
/// mode's level, then its version).
fn label_errors(obj: &Value) -> Vec<nanokube_api::error::Cause> {
    let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) else { return Vec::new() };
    let mut causes = Vec::new();
    for mode in ["enforce", "audit", "warn"] {
        for (key, version) in [(format!("{LEVEL_LABEL}{mode}"), false), (format!("{LEVEL_LABEL}{mode}-version"), true)] {
            let Some(v) = labels.get(&key).and_then(Value::as_str) else { continue };
            let ok = if version { valid_version(v) } else { Level::parse(v).is_some() };
            if !ok {
                let must = if version { MUST_BE_VERSION } else { MUST_BE_LEVEL };
                causes.push(nanokube_api::error::Cause {
                    reason: "FieldValueInvalid".into(),
                    message: format!("Invalid value: {v:?}: {must}"),
                    field: format!("metadata.labels[{key}]"),
                });
            }
        }
    }
    causes
}

/// `latest` or `v1.N` (no leading zero), as upstream's `ParseVersion`.
fn valid_version(v: &str) -> bool {
    v == "latest" || v.strip_prefix("v1.").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0')))
}

/// A namespace's PodSecurity labels must name a level and a version: refused otherwise
/// (on an update only when the errors are not the ones it already had).
pub(super) fn check_namespace_labels(obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let causes = label_errors(obj);
    if causes.is_empty() || old.is_some_and(|o| label_errors(o) == causes) {
        return Ok(());
    }
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    Err(ApiError::invalid("Namespace", "", name, causes))
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

/// Every violation of `level` (at `version`: `latest` or `v1.N`) by the pod (or pod
/// template) `pod`, as `reason (detail)`, in the order of upstream's check IDs.
fn violations(pod: &Value, level: Level, version: &str) -> Vec<String> {
    findings(pod, level, version).into_iter().map(|(reason, detail)| format!("{reason} ({detail})")).collect()
}

/// Whether `version` (`latest` or `v1.N`) is at least 1.`minor`.
fn at_least(version: &str, minor: u32) -> bool {
    version == "latest" || version.strip_prefix("v1.").and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m >= minor)
}

/// `"a", "b"`, as upstream's `joinQuote` (which escapes nothing).
fn join_quote(items: &[String]) -> String {
    if items.is_empty() {
        return String::new();
    }
    format!("\"{}\"", items.join("\", \""))
}

/// The violations of [`violations`] as (reason, detail).
fn findings(pod: &Value, level: Level, version: &str) -> Vec<(String, String)> {
    if level == Level::Privileged {
        return Vec::new();
    }
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

    // AppArmor: profile types RuntimeDefault or Localhost, and the beta annotations'
    // runtime/default or localhost/*.
    let allowed_type = |t: &Value| matches!(t.as_str(), Some("RuntimeDefault" | "Localhost"));
    let mut setters = Vec::new();
    let mut bad_values = std::collections::BTreeSet::new();
    if let Some(t) = pod_sc.pointer("/appArmorProfile/type").filter(|t| !allowed_type(t)) {
        setters.push("pod".to_string());
        bad_values.insert(t.as_str().unwrap_or("").to_string());
    }
    let bad_cs: Vec<String> = cs
        .iter()
        .filter_map(|c| {
            let t = c.pointer("/securityContext/appArmorProfile/type").filter(|t| !allowed_type(t))?;
            bad_values.insert(t.as_str().unwrap_or("").to_string());
            Some(name(c).to_string())
        })
        .collect();
    if !bad_cs.is_empty() {
        setters.push(format!("{} {}", plural(bad_cs.len(), "container", "containers"), join_quote(&bad_cs)));
    }
    let mut bad_values: Vec<String> = bad_values.into_iter().collect();
    let mut annotations: Vec<String> = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter(|(k, _)| k.starts_with("container.apparmor.security.beta.kubernetes.io/"))
                .filter_map(|(k, v)| {
                    let v = v.as_str().unwrap_or("");
                    (!(v.is_empty() || v == "runtime/default" || v.starts_with("localhost/"))).then(|| format!("{k}={v:?}"))
                })
                .collect()
        })
        .unwrap_or_default();
    if !annotations.is_empty() {
        annotations.sort();
        setters.push(plural(annotations.len(), "annotation", "annotations").to_string());
        bad_values.extend(annotations);
    }
    if !setters.is_empty() {
        add(
            "appArmorProfile",
            plural(bad_values.len(), "forbidden AppArmor profile", "forbidden AppArmor profiles"),
            format!("{} must not set AppArmor profile type to {}", setters.join(" and "), join_quote(&bad_values)),
        );
    }
    // SELinux: the container types only (container_engine_t from 1.31), no user or role.
    let mut selinux_types: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t"];
    if at_least(version, 31) {
        selinux_types = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];
    }
    let (mut bad_types, mut set_user, mut set_role) = (std::collections::BTreeSet::new(), false, false);
    let mut bad_selinux = |opts: &Value| -> bool {
        let field = |k: &str| opts.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let mut bad = false;
        if !selinux_types.contains(&field("type").as_str()) {
            bad_types.insert(field("type"));
            bad = true;
        }
        if !field("user").is_empty() {
            set_user = true;
            bad = true;
        }
        if !field("role").is_empty() {
            set_role = true;
            bad = true;
        }
        bad
    };
    let mut setters = Vec::new();
    if pod_sc.get("seLinuxOptions").filter(|o| o.is_object()).is_some_and(&mut bad_selinux) {
        setters.push("pod".to_string());
    }
    let bad_cs: Vec<String> = cs
        .iter()
        .filter(|c| c.pointer("/securityContext/seLinuxOptions").filter(|o| o.is_object()).is_some_and(&mut bad_selinux))
        .map(|c| name(c).to_string())
        .collect();
    if !bad_cs.is_empty() {
        setters.push(format!("{} {}", plural(bad_cs.len(), "container", "containers"), join_quote(&bad_cs)));
    }
    if !setters.is_empty() {
        let mut data = Vec::new();
        if !bad_types.is_empty() {
            let types: Vec<String> = bad_types.into_iter().collect();
            data.push(format!("{} {}", plural(types.len(), "type", "types"), join_quote(&types)));
        }
        if set_user {
            data.push("user may not be set".to_string());
        }
        if set_role {
            data.push("role may not be set".to_string());
        }
        add("seLinuxOptions", "seLinuxOptions", format!("{} set forbidden securityContext.seLinuxOptions: {}", setters.join(" and "), data.join("; ")));
    }
    // Windows host processes.
    let host_process = |sc: Option<&Value>| sc.and_then(|s| s.pointer("/windowsOptions/hostProcess")) == Some(&Value::Bool(true));
    let mut setters = Vec::new();
    if host_process(Some(&pod_sc)) {
        setters.push("pod".to_string());
    }
    let bad_cs: Vec<String> = cs.iter().filter(|c| host_process(c.get("securityContext"))).map(|c| name(c).to_string()).collect();
    if !bad_cs.is_empty() {
        setters.push(format!("{} {}", plural(bad_cs.len(), "container", "containers"), join_quote(&bad_cs)));
    }
    if !setters.is_empty() {
        add("windowsHostProcess", "hostProcess", format!("{} must not set securityContext.windowsOptions.hostProcess=true", setters.join(" and ")));
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
    // Restricted's own checks replace three of baseline's; baseline's checks come first,
    // each level's in the order of their IDs (upstream's registry).
    const RESTRICTED_IDS: &[&str] =
        &["allowPrivilegeEscalation", "capabilities_restricted", "restrictedVolumes", "runAsNonRoot", "runAsUser", "seccompProfile_restricted"];
    if level == Level::Restricted {
        out.retain(|(id, _, _)| !matches!(*id, "capabilities_baseline" | "hostPathVolumes" | "seccompProfile_baseline"));
    }
    out.sort_by_key(|(id, _, _)| (RESTRICTED_IDS.contains(id), *id));
    out.into_iter().map(|(_, reason, detail)| (reason, detail)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_plain_pod_violates_restricted_in_upstreams_words() {
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        assert!(violations(&pod, Level::Baseline, "latest").is_empty());
        assert_eq!(
            violations(&pod, Level::Restricted, "latest"),
            [
                r#"allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)"#,
                r#"unrestricted capabilities (container "c" must set securityContext.capabilities.drop=["ALL"])"#,
                r#"runAsNonRoot != true (pod or container "c" must set securityContext.runAsNonRoot=true)"#,
                r#"seccompProfile (pod or container "c" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
            ]
        );
    }

    /// Upstream's own cases (pod-security-admission's `check_*_test.go`).
    #[test]
    fn apparmor_selinux_and_host_process_in_upstreams_words() {
        let detail = |pod: Value, reason: &str| -> String {
            let found = findings(&pod, Level::Baseline, "latest");
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].0, reason);
            found[0].1.clone()
        };
        let pod = json!({"spec": {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}, "containers": [{"name": "ok", "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}}]}});
        assert_eq!(detail(pod, "forbidden AppArmor profile"), r#"pod must not set AppArmor profile type to "Unconfined""#);
        let pod = json!({"spec": {"initContainers": [{"name": "bar", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}], "containers": [{"name": "foo"}]}});
        assert_eq!(detail(pod, "forbidden AppArmor profile"), r#"container "bar" must not set AppArmor profile type to "Unconfined""#);
        let key = "container.apparmor.security.beta.kubernetes.io/";
        let pod = json!({"metadata": {"annotations": {
            key: "bogus", format!("{key}a"): "", format!("{key}b"): "runtime/default", format!("{key}c"): "localhost/",
            format!("{key}d"): "localhost/foo", format!("{key}e"): "unconfined", format!("{key}f"): "unknown",
        }}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(
            detail(pod, "forbidden AppArmor profiles"),
            format!(r#"annotations must not set AppArmor profile type to "{key}="bogus"", "{key}e="unconfined"", "{key}f="unknown"""#)
        );
        let se = |t: &str, u: &str, r: &str| json!({"seLinuxOptions": {"type": t, "user": u, "role": r}});
        let pod = json!({"spec": {"securityContext": se("foo", "bar", "baz"), "containers": [
            {"name": "a", "securityContext": se("container_t", "", "")}, {"name": "b", "securityContext": se("container_init_t", "", "")},
            {"name": "c", "securityContext": se("container_kvm_t", "", "")}, {"name": "d", "securityContext": se("container_engine_t", "", "")},
            {"name": "e", "securityContext": se("bar", "", "")}, {"name": "f", "securityContext": se("", "bar", "")},
            {"name": "g", "securityContext": se("", "", "baz")},
        ]}});
        assert_eq!(
            detail(pod.clone(), "seLinuxOptions"),
            r#"pod and containers "e", "f", "g" set forbidden securityContext.seLinuxOptions: types "bar", "foo"; user may not be set; role may not be set"#
        );
        // Before 1.31, container_engine_t was not allowed.
        let old = findings(&pod, Level::Baseline, "v1.30");
        assert!(old[0].1.starts_with(r#"pod and containers "d", "e", "f", "g" set"#), "{old:?}");
        let pod = json!({"spec": {"securityContext": {"windowsOptions": {"hostProcess": true}}, "containers": [
            {"name": "a", "securityContext": {"windowsOptions": {"hostProcess": true}}}, {"name": "b", "securityContext": {"windowsOptions": {"hostProcess": false}}},
        ]}});
        assert_eq!(detail(pod, "hostProcess"), r#"pod and container "a" must not set securityContext.windowsOptions.hostProcess=true"#);
    }

    #[test]
    fn only_updates_that_can_change_the_verdict_are_checked() {
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "x:1"}], "ephemeralContainers": [{"name": "d", "image": "busybox"}]}});
        let mut labels = pod.clone();
        labels["metadata"] = json!({"labels": {"a": "b"}});
        labels["spec"]["activeDeadlineSeconds"] = json!(5);
        assert!(!is_significant_pod_update(&labels, &pod));
        let mut image = pod.clone();
        image["spec"]["containers"][0]["image"] = json!("x:2");
        assert!(is_significant_pod_update(&image, &pod));
        let mut debug = pod.clone();
        debug["spec"]["ephemeralContainers"].as_array_mut().unwrap().push(json!({"name": "debugger", "image": "busybox"}));
        assert!(is_significant_pod_update(&debug, &pod));
    }

    #[test]
    fn baseline_catches_host_access() {
        let pod = json!({"spec": {"hostNetwork": true, "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"privileged": true}, "ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
        assert_eq!(
            violations(&pod, Level::Baseline, "latest"),
            [
                "host namespaces (hostNetwork=true)",
                r#"hostPath volumes (volume "root")"#,
                r#"hostPort (container "c" uses hostPort 8080)"#,
                r#"privileged (container "c" must not set securityContext.privileged=true)"#,
            ]
        );
    }
}
