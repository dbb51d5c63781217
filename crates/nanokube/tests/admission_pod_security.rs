//! PodSecurity admission, on by default as in kube-apiserver 1.33: namespaces without
//! labels are `privileged`; `enforce` refuses violating pods with upstream's message,
//! `warn` and workloads' templates get warnings, bad label values are refused.

mod common;

use common::Server;

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
}
