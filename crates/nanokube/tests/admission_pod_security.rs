//! PodSecurity admission, on by default as in kube-apiserver 1.33: namespaces without
//! labels are `privileged`; `enforce` refuses violating pods with upstream's message,
//! `warn` and workloads' templates get warnings, `audit` annotates the audit log, bad
//! label values are refused.

mod common;

use std::time::Duration;

use common::{eventually, Server};
use serde_json::Value;

const COMPLIANT: &str = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"good"},"spec":{
  "securityContext":{"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}},
  "containers":[{"name":"c","image":"nginx","securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}"#;

#[test]
fn enforce_warn_and_workload_templates() {
    let s = Server::start();
    // No labels: privileged, anything goes.
    let out = s.kubectl(&["run", "host", "--image=nginx", "--overrides", r#"{"spec":{"hostNetwork":true}}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    s.k(&["create", "namespace", "strict"]);
    s.k(&["label", "namespace", "strict", "pod-security.kubernetes.io/enforce=restricted"]);
    let out = s.kubectl(&["run", "plain", "-n", "strict", "--image=nginx"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"pods "plain" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "plain" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "plain" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "plain" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "plain" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#),
        "{err}"
    );
    let out = s.k_stdin(&["create", "-n", "strict", "-f", "-"], COMPLIANT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A Deployment is not refused for its template, only warned about.
    let out = s.kubectl(&["create", "deployment", "d", "-n", "strict", "--image=nginx"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // warn with a version: a warning, and the pod is created.
    s.k(&["create", "namespace", "loose"]);
    s.k(&["label", "namespace", "loose", "pod-security.kubernetes.io/warn=baseline", "pod-security.kubernetes.io/warn-version=v1.33"]);
    let out = s.kubectl(&["run", "hostnet", "-n", "loose", "--image=nginx", "--overrides", r#"{"spec":{"hostNetwork":true}}"#]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"Warning: would violate PodSecurity "baseline:v1.33": host namespaces (hostNetwork=true)"#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A level that does not exist is refused.
    let out = s.kubectl(&["label", "namespace", "loose", "pod-security.kubernetes.io/enforce=strictest"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be one of privileged, baseline, restricted"), "{}", String::from_utf8_lossy(&out.stderr));
    // So is a version that is not one, with every bad label named.
    let out =
        s.kubectl(&["label", "--overwrite", "namespace", "loose", "pod-security.kubernetes.io/warn=odd", "pod-security.kubernetes.io/audit-version=v1.07"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(concat!(
            "The Namespace \"loose\" is invalid: \n",
            "* metadata.labels[pod-security.kubernetes.io/audit-version]: Invalid value: \"v1.07\": must be \"latest\" or \"v1.x\"\n",
            "* metadata.labels[pod-security.kubernetes.io/warn]: Invalid value: \"odd\": must be one of privileged, baseline, restricted"
        )),
        "{err}"
    );
    let out = s.kubectl(&["label", "namespace", "loose", "pod-security.kubernetes.io/enforce-version=v1.30"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Raising a namespace's enforce level warns about the pods already there (grouped by
/// reasons, one pod named per group); pod updates that could change the verdict (an
/// image, an ephemeral container from `kubectl debug`) are checked, others are not; and
/// baseline's AppArmor, SELinux and Windows host-process checks, in upstream's words.
#[test]
fn existing_pods_updates_and_the_rest_of_baseline() {
    let s = Server::start_with(&["--node=false"]);
    s.k(&["create", "namespace", "later"]);
    for name in ["web-1", "web-2", "web-3"] {
        s.k(&["run", name, "-n", "later", "--image=nginx"]);
    }
    let host = s.kubectl(&["run", "host", "-n", "later", "--image=nginx", "--overrides", r#"{"spec":{"hostPID":true}}"#]);
    assert!(host.status.success(), "{}", String::from_utf8_lossy(&host.stderr));
    let out = s.kubectl(&["label", "namespace", "later", "pod-security.kubernetes.io/enforce=restricted"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let warnings = String::from_utf8_lossy(&out.stderr);
    let expected = [
        r#"Warning: existing pods in namespace "later" violate the new PodSecurity enforce level "restricted:latest""#,
        r#"Warning: host: host namespaces, allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"#,
        r#"Warning: web-1 (and 2 other pods): allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile"#,
    ];
    let lines: Vec<&str> = warnings.lines().collect();
    assert_eq!(lines, expected, "{warnings}");
    // Lowering it again warns about nothing.
    let out = s.kubectl(&["label", "--overwrite", "namespace", "later", "pod-security.kubernetes.io/enforce=baseline"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));

    // Under baseline, web-1 may have its labels changed but not an image swapped in for
    // a privileged debug container.
    let out = s.kubectl(&["label", "pod", "web-1", "-n", "later", "tier=front"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.kubectl(&["debug", "web-1", "-n", "later", "--image=busybox", "--profile=sysadmin", "-c", "dbg"]);
    assert!(!out.status.success(), "a privileged debug container was added");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            r#"pods "web-1" is forbidden: violates PodSecurity "baseline:latest": privileged (container "dbg" must not set securityContext.privileged=true)"#
        ),
        "{err}"
    );
    let out = s.kubectl(&["debug", "web-1", "-n", "later", "--image=busybox", "--profile=baseline", "-c", "dbg2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The pod with hostPID stays (it was there before), but its image cannot change.
    let out = s.kubectl(&["set", "image", "pod/host", "-n", "later", "host=nginx:2"]);
    assert!(!out.status.success(), "a violating pod's image changed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"violates PodSecurity "baseline:latest": host namespaces (hostPID=true)"#), "{err}");

    // The rest of baseline.
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"odd","annotations":{"container.apparmor.security.beta.kubernetes.io/c":"unconfined"}},
      "spec":{"securityContext":{"seLinuxOptions":{"type":"spc_t"}},
      "containers":[{"name":"c","image":"nginx","securityContext":{"appArmorProfile":{"type":"Unconfined"},"seLinuxOptions":{"user":"root"},"windowsOptions":{"hostProcess":true}}}]}}"#;
    let out = s.k_stdin(&["create", "-n", "later", "-f", "-"], pod);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(concat!(
            r#"pods "odd" is forbidden: violates PodSecurity "baseline:latest": "#,
            r#"forbidden AppArmor profiles (container "c" and annotation must not set AppArmor profile type to "Unconfined", "container.apparmor.security.beta.kubernetes.io/c="unconfined""), "#,
            r#"seLinuxOptions (pod and container "c" set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set), "#,
            r#"hostProcess (container "c" must not set securityContext.windowsOptions.hostProcess=true)"#
        )),
        "{err}"
    );
}

/// The `audit` mode and the audit log: every pod write evaluated carries
/// `pod-security.kubernetes.io/enforce-policy`, and one that violates the namespace's
/// audit level `pod-security.kubernetes.io/audit-violations`; a `warn` label set lower
/// than `enforce` is what workloads are warned with.
#[test]
fn audit_annotations_and_an_explicit_warn_level() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let s = Server::start_with(&["--node=false", "--audit-log-path", log.to_str().unwrap()]);
    s.k(&["create", "namespace", "watched"]);
    s.k(&["label", "namespace", "watched", "pod-security.kubernetes.io/audit=restricted", "pod-security.kubernetes.io/audit-version=v1.33"]);
    let out = s.kubectl(&["run", "plain", "-n", "watched", "--image=nginx"]);
    assert!(out.status.success() && out.stderr.is_empty(), "audit alone neither refuses nor warns: {}", String::from_utf8_lossy(&out.stderr));
    let out = s.k_stdin(&["create", "-n", "watched", "-f", "-"], COMPLIANT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let creates = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "pods" && e["objectRef"]["namespace"] == "watched")
            .collect()
    };
    assert!(eventually(Duration::from_secs(5), || creates().len() == 2), "{:?}", creates());
    let events = creates();
    let plain = &events[0]["annotations"];
    assert_eq!(plain["pod-security.kubernetes.io/enforce-policy"], "privileged:latest");
    assert_eq!(plain["authorization.k8s.io/decision"], "allow");
    assert_eq!(
        plain["pod-security.kubernetes.io/audit-violations"],
        r#"would violate PodSecurity "restricted:v1.33": allowPrivilegeEscalation != false (container "plain" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "plain" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "plain" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "plain" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
    );
    let good = &events[1]["annotations"];
    assert_eq!(good["pod-security.kubernetes.io/enforce-policy"], "privileged:latest");
    assert!(good.get("pod-security.kubernetes.io/audit-violations").is_none(), "{good}");

    // enforce=restricted with warn=baseline: a workload that only breaks restricted is
    // created without a warning (upstream warns workloads at the warn level only).
    s.k(&["create", "namespace", "split"]);
    s.k(&["label", "namespace", "split", "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=baseline"]);
    let out = s.kubectl(&["create", "deployment", "web", "-n", "split", "--image=nginx"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.kubectl(&["create", "deployment", "host", "-n", "split", "--image=nginx", "--dry-run=client", "-o", "json"]);
    let mut deployment: Value = serde_json::from_slice(&out.stdout).unwrap();
    deployment["spec"]["template"]["spec"]["hostNetwork"] = Value::Bool(true);
    let out = s.k_stdin(&["create", "-n", "split", "-f", "-"], &deployment.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"Warning: would violate PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#), "{err}");
    assert!(!err.contains("restricted"), "{err}");
}

/// `--admission-control-config-file` with a PodSecurityConfiguration, as kube-apiserver:
/// its defaults apply to unlabelled namespaces, and exempt namespaces, users and
/// RuntimeClasses pass unchecked with the `exempt` audit annotation; labelling an exempt
/// namespace warns that its policy will be ignored; a bad configuration stops the server
/// with the field named.
#[test]
fn configured_defaults_and_exemptions() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let config = dir.path().join("admission.yaml");
    std::fs::write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  path: pod-security.yaml
",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pod-security.yaml"),
        "apiVersion: pod-security.admission.config.k8s.io/v1
kind: PodSecurityConfiguration
defaults:
  enforce: baseline
  enforce-version: latest
  warn: restricted
exemptions:
  usernames: [ci-bot]
  namespaces: [legacy]
  runtimeClasses: [trusted]
",
    )
    .unwrap();
    let s = Server::start_with(&["--node=false", "--audit-log-path", log.to_str().unwrap(), "--admission-control-config-file", config.to_str().unwrap()]);
    let privileged = r#"{"spec":{"containers":[{"name":"c","image":"nginx","securityContext":{"privileged":true}}]}}"#;
    // An unlabelled namespace enforces the configured baseline and warns at restricted.
    let out = s.kubectl(&["run", "root", "--image=nginx", "--overrides", privileged]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            r#"pods "root" is forbidden: violates PodSecurity "baseline:latest": privileged (container "c" must not set securityContext.privileged=true)"#
        ),
        "{err}"
    );
    let out = s.kubectl(&["run", "plain", "--image=nginx"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"Warning: would violate PodSecurity "restricted:latest""#), "{out:?}");
    // A label still overrides the default.
    s.k(&["create", "namespace", "open"]);
    s.k(&["label", "namespace", "open", "pod-security.kubernetes.io/enforce=privileged"]);
    assert!(s.kubectl(&["run", "root", "-n", "open", "--image=nginx", "--overrides", privileged]).status.success());

    // Exempt: a namespace, a user, a RuntimeClass.
    s.k(&["create", "namespace", "legacy"]);
    let out = s.kubectl(&["run", "root", "-n", "legacy", "--image=nginx", "--overrides", privileged]);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    let out = s.kubectl(&["run", "root-by-bot", "--as=ci-bot", "--as-group=system:masters", "--image=nginx", "--overrides", privileged]);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    let out = s.k_stdin(&["create", "-f", "-"], r#"{"apiVersion":"node.k8s.io/v1","kind":"RuntimeClass","metadata":{"name":"trusted"},"handler":"runc"}"#);
    assert!(out.status.success(), "{out:?}");
    let trusted = r#"{"spec":{"runtimeClassName":"trusted","containers":[{"name":"c","image":"nginx","securityContext":{"privileged":true}}]}}"#;
    let out = s.kubectl(&["run", "root-trusted", "--image=nginx", "--overrides", trusted]);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    // The audit log says why each went unchecked (the log is written by a thread of its
    // own, so it is read until all three are there).
    let reasons = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "pods")
            .filter_map(|e| e["annotations"]["pod-security.kubernetes.io/exempt"].as_str().map(str::to_string))
            .collect()
    };
    assert!(eventually(Duration::from_secs(5), || reasons().len() == 3), "{:?}", reasons());
    assert_eq!(reasons(), ["namespace", "user", "runtimeClass"]);
    // Labelling an exempt namespace: its policy is ignored, and kubectl is told so.
    let out = s.kubectl(&["label", "namespace", "legacy", "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/audit=baseline"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            r#"Warning: namespace "legacy" is exempt from Pod Security, and the policy (enforce=restricted:latest, audit=baseline:latest) will be ignored"#
        ),
        "{out:?}"
    );
    assert!(s.kubectl(&["run", "root-2", "-n", "legacy", "--image=nginx", "--overrides", privileged]).status.success());
    drop(s);

    // A bad configuration: the server does not start, and says which field.
    std::fs::write(
        dir.path().join("pod-security.yaml"),
        "apiVersion: pod-security.admission.config.k8s.io/v1
kind: PodSecurityConfiguration
defaults: {enforce: strict, warn-version: v2}
exemptions: {namespaces: [a, a]}
",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nanokube"))
        .args(["server", "--secure-port", "0", "--merge-kubeconfig=false", "--node=false", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--admission-control-config-file")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        r#"couldn't init admission plugin "PodSecurity""#,
        r#"defaults.enforce: Invalid value: "strict": must be one of privileged, baseline, restricted"#,
        r#"defaults.warn-version: Invalid value: "v2": must be "latest" or "v1.x""#,
        r#"exemptions.namespaces[1]: Duplicate value: "a""#,
    ] {
        assert!(err.contains(want), "{want} not in {err}");
    }
}
