//! ValidatingAdmissionPolicies and their bindings are enforced as kube-apiserver 1.33
//! enforces them: CEL validations over the object, deny messages worded as upstream's,
//! the binding's namespace selector, parameters from a ConfigMap (and what happens when
//! they are missing), Warn actions as warnings, reasons, message expressions, variables.

mod common;

use common::Server;
use serde_json::Value;

fn apply(s: &Server, manifest: &str) {
    let out = s.k_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

const POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: demo-policy.example.com
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["apps"]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["deployments"]
  validations:
  - expression: "object.spec.replicas <= 5"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: demo-binding-test.example.com
spec:
  policyName: demo-policy.example.com
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels:
        environment: test
"#;

#[test]
fn a_policy_denies_through_its_binding_in_the_selected_namespaces() {
    let s = Server::start();
    apply(&s, POLICY);
    s.k(&["create", "namespace", "test-ns"]);
    s.k(&["label", "namespace", "test-ns", "environment=test"]);
    s.k(&["create", "namespace", "other"]);

    let out = s.kubectl(&["create", "deploy", "nginx", "--image=nginx", "--replicas=6", "-n", "test-ns"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"deployments.apps "nginx" is forbidden: ValidatingAdmissionPolicy 'demo-policy.example.com' with binding 'demo-binding-test.example.com' denied request: failed expression: object.spec.replicas <= 5"#),
        "{err}"
    );
    // The Status: 422 Invalid with the message as a cause, as upstream's dispatcher makes it.
    let body = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"raw"},"spec":{"replicas":9,"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"nginx"}]}}}}"#;
    let (code, text) = s.curl("POST", "/apis/apps/v1/namespaces/test-ns/deployments", Some("application/json"), Some(body.as_bytes()));
    assert_eq!(code, 422, "{text}");
    let st: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(st["reason"], "Invalid");
    assert_eq!(st["details"]["kind"], "deployments");
    assert_eq!(st["details"]["causes"][0]["message"], "ValidatingAdmissionPolicy 'demo-policy.example.com' with binding 'demo-binding-test.example.com' denied request: failed expression: object.spec.replicas <= 5");

    // Within bounds, or outside the binding's namespaces, it passes; updates are checked too.
    s.k(&["create", "deploy", "small", "--image=nginx", "--replicas=2", "-n", "test-ns"]);
    s.k(&["create", "deploy", "big", "--image=nginx", "--replicas=6", "-n", "other"]);
    let out = s.kubectl(&["patch", "deploy", "small", "-n", "test-ns", "-p", r#"{"spec":{"replicas":7}}"#]);
    assert!(!out.status.success(), "updates are checked: {}", String::from_utf8_lossy(&out.stdout));
    // The scale subresource is not in the policy's rules (`deployments` names no
    // subresource), so scaling passes, as upstream.
    s.k(&["scale", "deploy", "small", "--replicas=7", "-n", "test-ns"]);
}

#[test]
fn params_warnings_reasons_message_expressions_and_variables() {
    let s = Server::start();
    s.k(&["create", "namespace", "p"]);
    apply(
        &s,
        r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: max-replicas
spec:
  paramKind: {apiVersion: v1, kind: ConfigMap}
  matchConstraints:
    resourceRules:
    - {apiGroups: ["apps"], apiVersions: ["v1"], operations: ["CREATE", "UPDATE"], resources: ["deployments"]}
  variables:
  - name: limit
    expression: "int(params.data.maxReplicas)"
  validations:
  - expression: "object.spec.replicas <= variables.limit"
    messageExpression: "'replicas must be at most ' + string(variables.limit) + ', not ' + string(object.spec.replicas)"
    reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: max-replicas-binding
spec:
  policyName: max-replicas
  validationActions: [Deny]
  paramRef:
    name: limits
    parameterNotFoundAction: Deny
"#,
    );
    // No parameter object yet: the binding denies, as its parameterNotFoundAction says.
    let out = s.kubectl(&["create", "deploy", "d", "--image=nginx", "--replicas=1", "-n", "p"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    s.k(&["create", "configmap", "limits", "-n", "p", "--from-literal=maxReplicas=3"]);
    s.k(&["create", "deploy", "d", "--image=nginx", "--replicas=3", "-n", "p"]);
    let body = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"e"},"spec":{"replicas":4,"selector":{"matchLabels":{"a":"b"}},"template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"nginx"}]}}}}"#;
    let (code, text) = s.curl("POST", "/apis/apps/v1/namespaces/p/deployments", Some("application/json"), Some(body.as_bytes()));
    assert_eq!(code, 403, "reason Forbidden: {text}");
    let st: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(st["message"], "deployments.apps \"e\" is forbidden: ValidatingAdmissionPolicy 'max-replicas' with binding 'max-replicas-binding' denied request: replicas must be at most 3, not 4");

    // Warn instead of Deny: the write goes through with a warning.
    apply(
        &s,
        r#"{"apiVersion":"admissionregistration.k8s.io/v1","kind":"ValidatingAdmissionPolicyBinding","metadata":{"name":"max-replicas-binding"},
            "spec":{"policyName":"max-replicas","validationActions":["Warn"],"paramRef":{"name":"limits","parameterNotFoundAction":"Deny"}}}"#,
    );
    let out = s.kubectl(&["create", "deploy", "w", "--image=nginx", "--replicas=5", "-n", "p"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "Warning: Validation failed for ValidatingAdmissionPolicy 'max-replicas' with binding 'max-replicas-binding': replicas must be at most 3, not 5"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
