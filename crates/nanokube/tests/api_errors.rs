//! Bad input gets a Kubernetes Status with the right code and reason, and changes nothing.

mod common;

use common::Server;
use serde_json::Value;

fn status(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not a Status ({e}): {body}"));
    assert_eq!(v["kind"], "Status", "{body}");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["status"], "Failure");
    v
}

fn count_cms(s: &Server) -> usize {
    s.get_json("/api/v1/namespaces/default/configmaps").1["items"].as_array().unwrap().len()
}

#[test]
fn bad_requests_are_statuses_and_store_nothing() {
    let s = Server::start();
    let before = count_cms(&s);
    let post = |path: &str, ct: &str, body: &[u8]| s.curl("POST", path, Some(ct), Some(body));
    let cms = "/api/v1/namespaces/default/configmaps";

    let (code, body) = post(cms, "application/json", b"{not json");
    assert_eq!(code, 400);
    assert_eq!(status(&body)["reason"], "BadRequest");

    let (code, body) = post(cms, "application/json", br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#);
    assert_eq!(code, 400);
    assert_eq!(status(&body)["reason"], "BadRequest");

    let (code, body) = post(cms, "application/json", br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#);
    assert_eq!(code, 422);
    let st = status(&body);
    assert_eq!(st["reason"], "Invalid");
    assert_eq!(st["details"]["kind"], "ConfigMap");
    assert_eq!(st["details"]["causes"][0]["field"], "metadata.name");
    assert!(st["message"].as_str().unwrap().starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\""));

    let (code, body) = post("/api/v1/namespaces/nope/configmaps", "application/json", br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#);
    assert_eq!(code, 404);
    let st = status(&body);
    assert_eq!(st["reason"], "NotFound");
    assert_eq!(st["message"], "namespaces \"nope\" not found");

    let (code, body) = s.curl("GET", "/api/v1/namespaces/default/widgets", None, None);
    assert_eq!(code, 404);
    assert_eq!(status(&body)["reason"], "NotFound");

    let huge = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"huge"}},"data":{{"a":"{}"}}}}"#, "x".repeat(4 * 1024 * 1024));
    let (code, body) = post(cms, "application/json", huge.as_bytes());
    assert_eq!(code, 413);
    assert_eq!(status(&body)["reason"], "RequestEntityTooLarge");

    let (code, body) = post(cms, "text/plain", b"hello");
    assert_eq!(code, 415);
    assert_eq!(status(&body)["reason"], "UnsupportedMediaType");

    let (code, body) = s.curl("GET", "/api/v1/pods?labelSelector=a%20b", None, None);
    assert_eq!(code, 400, "{body}");
    let (code, body) = s.curl("GET", "/api/v1/pods?fieldSelector=spec.foo%3Dbar", None, None);
    assert_eq!(code, 400);
    assert_eq!(status(&body)["message"], "field label not supported: spec.foo");

    let pod = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{}}"#;
    let (code, body) = post("/api/v1/namespaces/default/pods", "application/json", pod);
    assert_eq!(code, 422);
    assert_eq!(status(&body)["details"]["causes"][0]["field"], "spec.containers");

    assert_eq!(count_cms(&s), before, "no bad request stored anything");
}

#[test]
fn conflicts_and_duplicates() {
    let s = Server::start();
    let cm = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":"1"}}"#;
    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(cm));
    assert_eq!(code, 201);
    let created: Value = serde_json::from_str(&body).unwrap();
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    assert!(!created["metadata"]["uid"].as_str().unwrap().is_empty());
    assert!(created["metadata"]["creationTimestamp"].as_str().unwrap().ends_with('Z'));

    let (code, body) = s.curl("POST", "/api/v1/namespaces/default/configmaps", Some("application/json"), Some(cm));
    assert_eq!(code, 409);
    let st = status(&body);
    assert_eq!(st["reason"], "AlreadyExists");
    assert_eq!(st["message"], "configmaps \"c\" already exists");

    let update = |rv: &str, val: &str| {
        let b = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"c","resourceVersion":"{rv}"}},"data":{{"a":"{val}"}}}}"#);
        s.curl("PUT", "/api/v1/namespaces/default/configmaps/c", Some("application/json"), Some(b.as_bytes()))
    };
    let (code, body) = update(&rv, "2");
    assert_eq!(code, 200, "{body}");
    let (code, body) = update(&rv, "3");
    assert_eq!(code, 409);
    let st = status(&body);
    assert_eq!(st["reason"], "Conflict");
    assert_eq!(
        st["message"],
        "Operation cannot be fulfilled on configmaps \"c\": the object has been modified; please apply your changes to the latest version and try again"
    );
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/c").1["data"]["a"], "2");

    // DeleteOptions preconditions.
    let (code, body) = s.curl("DELETE", "/api/v1/namespaces/default/configmaps/c", Some("application/json"), Some(br#"{"preconditions":{"uid":"wrong"}}"#));
    assert_eq!(code, 409, "{body}");
    let (code, _) = s.curl("GET", "/api/v1/namespaces/default/configmaps/c", None, None);
    assert_eq!(code, 200);
    // dryRun stores nothing and consumes no resourceVersion. The list's resourceVersion is
    // the store's, which the server's own controllers also move just after start: a
    // dry run that consumed one would move it every time, so one unmoved try of five is
    // the proof.
    let unmoved = (0..5).any(|_| {
        let (_, l1) = s.get_json("/api/v1/namespaces/default/configmaps");
        let (code, _) = s.curl(
            "POST",
            "/api/v1/namespaces/default/configmaps?dryRun=All",
            Some("application/json"),
            Some(br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dry"}}"#),
        );
        assert_eq!(code, 201);
        let (_, l2) = s.get_json("/api/v1/namespaces/default/configmaps");
        let same = l1["metadata"]["resourceVersion"] == l2["metadata"]["resourceVersion"];
        if !same {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        same
    });
    assert!(unmoved, "every dry run moved the resourceVersion");
    assert_eq!(s.curl("GET", "/api/v1/namespaces/default/configmaps/dry", None, None).0, 404);
}

#[test]
fn authentication_and_interim_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "admintoken,alice,1,\"system:masters\"\nusertoken,bob,2,devs\n").unwrap();
    let s = Server::start_with(&["--token-auth-file", tokens.to_str().unwrap()]);
    let curl = |auth: Option<&str>, path: &str| -> (u16, String) {
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--cacert"]).arg(s.data.join("ca.crt"));
        if let Some(a) = auth {
            c.args(["-H", &format!("Authorization: {a}")]);
        }
        let out = c.arg(format!("{}{}", s.url, path)).output().unwrap();
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        let (b, code) = t.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), b.to_string())
    };
    assert_eq!(curl(None, "/readyz").0, 200);
    assert_eq!(curl(None, "/version").0, 200);
    let (code, body) = curl(None, "/api");
    assert_eq!(code, 403);
    assert_eq!(status(&body)["message"], "forbidden: User \"system:anonymous\" cannot get path \"/api\"");
    assert_eq!(curl(Some("Bearer admintoken"), "/api/v1/namespaces").0, 200);
    assert_eq!(curl(Some("bearer admintoken"), "/api/v1/namespaces").0, 200, "scheme is case-insensitive");
    let (code, body) = curl(Some("Bearer wrong"), "/version");
    assert_eq!(code, 401);
    assert_eq!(status(&body)["reason"], "Unauthorized");
    let (code, body) = curl(Some("Bearer usertoken"), "/api/v1/namespaces/default/pods");
    assert_eq!(code, 403);
    assert_eq!(status(&body)["message"], "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"");
    // Without --cacert curl refuses the self-signed cluster CA.
    let out = std::process::Command::new("curl").args(["-sS", &format!("{}/version", s.url)]).output().unwrap();
    assert!(!out.status.success());
    drop(s);

    let s = Server::start_with(&["--anonymous-auth=false"]);
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(s.data.join("ca.crt"))
        .arg(format!("{}/version", s.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}

/// Bodies as kube-apiserver writes them: Status fields in Go's order, and every object,
/// list and Status followed by a newline (Go's JSON encoder), byte for byte.
#[test]
fn status_in_go_order_and_bodies_end_with_a_newline() {
    let s = common::Server::start();
    let (code, body) = s.curl("GET", "/api/v1/namespaces/default/configmaps/nope", None, None);
    assert_eq!(code, 404);
    assert_eq!(
        body,
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"configmaps \\\"nope\\\" not found\",\"reason\":\"NotFound\",\"details\":{\"name\":\"nope\",\"kind\":\"configmaps\"},\"code\":404}\n"
    );
    for path in ["/api/v1/namespaces/default/configmaps/kube-root-ca.crt", "/api/v1/namespaces/default/configmaps", "/api/v1", "/apis"] {
        let (code, body) = s.curl("GET", path, None, None);
        assert_eq!(code, 200, "{path}");
        assert!(body.ends_with("}\n"), "{path}: {:?}", &body[body.len().saturating_sub(20)..]);
    }
}
