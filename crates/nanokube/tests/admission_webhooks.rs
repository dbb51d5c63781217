//! Admission webhooks are called, as kube-apiserver calls them: a real HTTPS webhook server
//! (a Python process, `tests/support/admission_webhook.py`) with its own CA, reached by URL
//! and through a Service with Endpoints; mutating patches, denials with the webhook's code,
//! warnings, the AdmissionReview sent, failure policies, timeouts, dry runs, selectors and
//! match conditions, driven through kubectl and curl.

mod common;

use std::path::PathBuf;

use base64::Engine as _;
use common::Server;
use serde_json::Value;

/// The webhook server process with its CA; killed on drop.
struct Webhook {
    _child: common::KillOnDrop,
    port: u16,
    ca_b64: String,
    record: PathBuf,
    _dir: tempfile::TempDir,
}

impl Webhook {
    fn start() -> Webhook {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = common::serving_cert(&["hook.webhooks.svc", "127.0.0.1"]);
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        let record = dir.path().join("record.jsonl");
        let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (child, port) = common::spawn_python_server("admission_webhook.py", &[crt.as_os_str(), key.as_os_str(), record.as_os_str()]);
        let ca_b64 = base64::engine::general_purpose::STANDARD.encode(ca);
        Webhook { _child: common::KillOnDrop(child), port, ca_b64, record, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn recorded(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// A webhook configuration of `kind` with one webhook `name` at `client_config`, for
/// `resources` in the core group, with `extra` fields merged into the webhook.
fn config(kind: &str, name: &str, client_config: Value, resources: &[&str], extra: Value) -> String {
    let mut hook = serde_json::json!({
        "name": name,
        "clientConfig": client_config,
        "rules": [{"operations": ["CREATE", "UPDATE", "DELETE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": resources}],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    });
    if let (Some(h), Some(e)) = (hook.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            h.insert(k.clone(), v.clone());
        }
    }
    serde_json::json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name}, "webhooks": [hook]}).to_string()
}

fn apply(s: &Server, manifest: &str) {
    let out = s.k_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn mutating_and_validating_webhooks_by_url_and_service() {
    let s = Server::start();
    let hook = Webhook::start();
    apply(
        &s,
        &config(
            "MutatingWebhookConfiguration",
            "mutate.example.com",
            serde_json::json!({"url": hook.url("/mutate"), "caBundle": hook.ca_b64}),
            &["configmaps"],
            serde_json::json!({}),
        ),
    );

    // A Service without a selector and its Endpoints: how a webhook in a pod is reached.
    s.k(&["create", "namespace", "webhooks"]);
    apply(
        &s,
        &format!(
            r#"{{"apiVersion":"v1","kind":"List","items":[
              {{"apiVersion":"v1","kind":"Service","metadata":{{"name":"hook","namespace":"webhooks"}},"spec":{{"ports":[{{"port":443,"targetPort":{port}}}]}}}},
              {{"apiVersion":"v1","kind":"Endpoints","metadata":{{"name":"hook","namespace":"webhooks"}},"subsets":[{{"addresses":[{{"ip":"127.0.0.1"}}],"ports":[{{"port":{port}}}]}}]}}]}}"#,
            port = hook.port
        ),
    );
    apply(
        &s,
        &config(
            "ValidatingWebhookConfiguration",
            "deny.example.com",
            serde_json::json!({"service": {"namespace": "webhooks", "name": "hook", "path": "/deny", "port": 443}, "caBundle": hook.ca_b64}),
            &["configmaps"],
            serde_json::json!({}),
        ),
    );

    // Mutation: the label is added and the webhook's warning reaches kubectl.
    let out = s.kubectl(&["create", "configmap", "plain", "--from-literal=a=b"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Warning: mutated by the test webhook"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/plain").1["metadata"]["labels"]["mutated-by"], "webhook");

    // Denial, with the webhook's code and message; nothing stored.
    let denied = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"nope","labels":{"deny":"true"}}}"#;
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(denied.as_bytes()));
    assert_eq!(code, 403, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["message"], "admission webhook \"deny.example.com\" denied the request: no thanks");
    assert_eq!(s.curl("GET", "/api/v1/namespaces/default/configmaps/nope", None, None).0, 404);
    let out = s.k_stdin(&["create", "-f", "-"], denied);
    assert!(String::from_utf8_lossy(&out.stderr).contains(r#"admission webhook "deny.example.com" denied the request: no thanks"#));

    // Updates and deletes are seen too: a protected object cannot be deleted.
    s.k(&["label", "configmap", "plain", "protected=true"]);
    let out = s.kubectl(&["delete", "configmap", "plain"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("denied the request: no thanks"), "{}", String::from_utf8_lossy(&out.stderr));
    s.k(&["label", "configmap", "plain", "protected-"]);
    s.k(&["delete", "configmap", "plain"]);

    // The webhook configurations themselves are never sent to webhooks.
    s.k(&["delete", "validatingwebhookconfiguration", "deny.example.com"]);
    s.k(&["delete", "mutatingwebhookconfiguration", "mutate.example.com"]);
    let (code, _) = s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(denied.as_bytes()));
    assert_eq!(code, 201, "no webhook any more");
}

#[test]
fn the_admission_review_says_who_did_what() {
    let s = Server::start();
    let hook = Webhook::start();
    apply(
        &s,
        &config(
            "ValidatingWebhookConfiguration",
            "record.example.com",
            serde_json::json!({"url": hook.url("/record"), "caBundle": hook.ca_b64}),
            &["configmaps"],
            serde_json::json!({}),
        ),
    );
    s.k(&["create", "configmap", "seen", "--from-literal=k=v"]);
    s.k(&["delete", "configmap", "seen"]);
    let reviews = hook.recorded();
    assert_eq!(reviews.len(), 2, "{reviews:?}");
    let create = &reviews[0]["request"];
    assert_eq!(reviews[0]["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(create["operation"], "CREATE");
    assert_eq!(create["kind"], serde_json::json!({"group": "", "version": "v1", "kind": "ConfigMap"}));
    assert_eq!(create["resource"], serde_json::json!({"group": "", "version": "v1", "resource": "configmaps"}));
    assert_eq!(create["namespace"], "default");
    assert_eq!(create["name"], "seen");
    assert_eq!(create["dryRun"], false);
    assert_eq!(create["object"]["data"]["k"], "v");
    assert!(create["oldObject"].is_null());
    assert_eq!(create["options"]["kind"], "CreateOptions");
    assert!(create["userInfo"]["groups"].as_array().unwrap().iter().any(|g| g == "system:masters"), "{create}");
    assert!(!create["uid"].as_str().unwrap().is_empty());
    let delete = &reviews[1]["request"];
    assert_eq!(delete["operation"], "DELETE");
    assert!(delete["object"].is_null());
    assert_eq!(delete["oldObject"]["metadata"]["name"], "seen");
}

#[test]
fn failure_policies_timeouts_and_dry_runs() {
    let s = Server::start();
    let hook = Webhook::start();
    // Nothing listens on this port: Fail refuses the write, Ignore lets it through.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("https://127.0.0.1:{}/", closed.local_addr().unwrap().port());
    drop(closed);
    let cc = serde_json::json!({"url": dead_url, "caBundle": hook.ca_b64});
    apply(&s, &config("ValidatingWebhookConfiguration", "dead.example.com", cc.clone(), &["configmaps"], serde_json::json!({"failurePolicy": "Fail"})));
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(br#"{"metadata":{"name":"a"}}"#));
    assert_eq!(code, 500, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    let msg = st["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!(
            "Internal error occurred: failed calling webhook \"dead.example.com\": failed to call webhook: Post \"{dead_url}?timeout=10s\": dial tcp"
        )),
        "{msg}"
    );
    apply(&s, &config("ValidatingWebhookConfiguration", "dead.example.com", cc, &["configmaps"], serde_json::json!({"failurePolicy": "Ignore"})));
    assert_eq!(s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(br#"{"metadata":{"name":"a"}}"#)).0, 201);
    s.k(&["delete", "validatingwebhookconfiguration", "dead.example.com"]);

    // A webhook slower than its timeout.
    let slow = config(
        "ValidatingWebhookConfiguration",
        "slow.example.com",
        serde_json::json!({"url": hook.url("/slow"), "caBundle": hook.ca_b64}),
        &["configmaps"],
        serde_json::json!({"timeoutSeconds": 1}),
    );
    apply(&s, &slow);
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(br#"{"metadata":{"name":"b"}}"#));
    assert_eq!(code, 500);
    assert!(body.contains("context deadline exceeded"), "{body}");
    s.k(&["delete", "validatingwebhookconfiguration", "slow.example.com"]);

    // An answer for another request is not an answer.
    apply(
        &s,
        &config(
            "ValidatingWebhookConfiguration",
            "baduid.example.com",
            serde_json::json!({"url": hook.url("/baduid"), "caBundle": hook.ca_b64}),
            &["configmaps"],
            serde_json::json!({}),
        ),
    );
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(br#"{"metadata":{"name":"c"}}"#));
    assert_eq!(code, 500);
    assert!(body.contains("expected response.uid="), "{body}");
    s.k(&["delete", "validatingwebhookconfiguration", "baduid.example.com"]);

    // A CA that did not sign the webhook's certificate.
    let other_ca = base64::engine::general_purpose::STANDARD.encode(std::fs::read_to_string(s.data.join("ca.crt")).unwrap());
    apply(
        &s,
        &config(
            "ValidatingWebhookConfiguration",
            "untrusted.example.com",
            serde_json::json!({"url": hook.url("/record"), "caBundle": other_ca}),
            &["configmaps"],
            serde_json::json!({}),
        ),
    );
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(br#"{"metadata":{"name":"d"}}"#));
    assert_eq!(code, 500);
    assert!(body.contains("tls:"), "{body}");
    s.k(&["delete", "validatingwebhookconfiguration", "untrusted.example.com"]);

    // Dry runs reach only webhooks without side effects.
    apply(
        &s,
        &config(
            "ValidatingWebhookConfiguration",
            "effects.example.com",
            serde_json::json!({"url": hook.url("/record"), "caBundle": hook.ca_b64}),
            &["configmaps"],
            serde_json::json!({"sideEffects": "Some"}),
        ),
    );
    let out = s.kubectl(&["create", "configmap", "dry", "--dry-run=server"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(r#"admission webhook "effects.example.com" does not support dry run"#),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    apply(
        &s,
        &config(
            "ValidatingWebhookConfiguration",
            "effects.example.com",
            serde_json::json!({"url": hook.url("/record"), "caBundle": hook.ca_b64}),
            &["configmaps"],
            serde_json::json!({"sideEffects": "NoneOnDryRun"}),
        ),
    );
    s.k(&["create", "configmap", "dry", "--dry-run=server"]);
    assert_eq!(hook.recorded().last().unwrap()["request"]["dryRun"], true);
}

#[test]
fn selectors_and_match_conditions_choose_what_a_webhook_sees() {
    let s = Server::start();
    let hook = Webhook::start();
    s.k(&["create", "namespace", "watched"]);
    s.k(&["label", "namespace", "watched", "mutate=yes"]);
    s.k(&["create", "namespace", "ignored"]);
    let cc = serde_json::json!({"url": hook.url("/mutate"), "caBundle": hook.ca_b64});
    apply(
        &s,
        &config(
            "MutatingWebhookConfiguration",
            "select.example.com",
            cc,
            &["configmaps"],
            serde_json::json!({
                "namespaceSelector": {"matchLabels": {"mutate": "yes"}},
                "objectSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
                "matchConditions": [{"name": "prefixed", "expression": "object.metadata.name.startsWith('m-')"}]
            }),
        ),
    );
    let labelled = |ns: &str, name: &str| s.get_json(&format!("/api/v1/namespaces/{ns}/configmaps/{name}")).1["metadata"]["labels"]["mutated-by"].clone();
    s.k(&["create", "configmap", "m-one", "-n", "watched"]);
    assert_eq!(labelled("watched", "m-one"), "webhook");
    s.k(&["create", "configmap", "m-two", "-n", "ignored"]);
    assert!(labelled("ignored", "m-two").is_null(), "namespace not selected");
    s.k(&["create", "configmap", "other", "-n", "watched"]);
    assert!(labelled("watched", "other").is_null(), "match condition false");
    let (code, _) =
        s.curl("POST", "/api/v1/namespaces/watched/configmaps", Some("application/json"), Some(br#"{"metadata":{"name":"m-three","labels":{"skip":"1"}}}"#));
    assert_eq!(code, 201);
    assert!(labelled("watched", "m-three").is_null(), "object not selected");
}
