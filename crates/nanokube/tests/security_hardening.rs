//! Hostile and careless input through the real HTTP API (curl, kubectl): no request
//! crosses a namespace boundary, crashes the server, poisons a resource or is taken for
//! something it is not; a second server cannot share a data directory and a lost store is
//! not silently replaced. Each test also checks the server still serves afterwards.

mod common;

use std::process::Command;

use common::{eventually, Server};
use serde_json::{json, Value};

/// `curl` with a bearer token, or with no credentials for `None`.
fn curl_token(s: &Server, token: Option<&str>, method: &str, path: &str, content_type: Option<&str>, body: Option<&[u8]>) -> (u16, String) {
    s.curl_as(Some(token.unwrap_or("")), method, path, content_type, body)
}

fn status_reason(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(v["kind"], "Status", "{body}");
    v["reason"].as_str().unwrap_or("").to_string()
}

fn ready(s: &Server) -> bool {
    s.curl("GET", "/readyz", None, None).0 == 200
}

fn post_json(s: &Server, path: &str, obj: &Value) -> (u16, String) {
    s.curl("POST", path, Some("application/json"), Some(obj.to_string().as_bytes()))
}

fn server_with_users() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "team-admin-token,tina,1001,\n").unwrap();
    // The server reads the file at start only: the directory can go once it is up.
    Server::start_with(&["--token-auth-file", tokens.to_str().unwrap()])
}

#[test]
fn namespace_rbac_does_not_reach_cluster_scoped_kinds() {
    let s = server_with_users();
    s.k(&["create", "namespace", "team"]);
    s.k(&["create", "rolebinding", "tina-admin", "--clusterrole=admin", "--user=tina", "-n", "team"]);
    s.k(&["create", "clusterrole", "reader", "--verb=get", "--resource=pods"]);
    let tina = Some("team-admin-token");
    // Her own namespace's objects she may read.
    assert_eq!(curl_token(&s, tina, "GET", "/api/v1/namespaces/team/configmaps", None, None).0, 200);
    // A cluster-scoped kind under her namespace's path does not exist, whatever the verb.
    for (method, path) in [
        ("GET", "/api/v1/namespaces/team/namespaces"),
        ("GET", "/api/v1/namespaces/team/namespaces/kube-system"),
        ("DELETE", "/api/v1/namespaces/team/namespaces/kube-system"),
        ("GET", "/api/v1/namespaces/team/nodes"),
        ("GET", "/api/v1/namespaces/team/persistentvolumes"),
        ("GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/team/clusterroles/reader"),
        ("DELETE", "/apis/rbac.authorization.k8s.io/v1/namespaces/team/clusterroles/reader"),
        ("GET", "/apis/apiextensions.k8s.io/v1/namespaces/team/customresourcedefinitions"),
        ("PUT", "/api/v1/namespaces/team/namespaces/kube-system/finalize"),
        ("PATCH", "/api/v1/namespaces/team/namespaces/kube-system/status"),
    ] {
        // Authorization comes first, as upstream: what her role does not grant is 403;
        // what it does grant (reading namespaces) finds nothing there.
        // A body only where the verb has one (curl reports a request whose body the
        // server refused unread as failed).
        let payload: Option<&[u8]> = matches!(method, "PUT" | "PATCH").then_some(b"{}");
        let (code, body) = curl_token(&s, tina, method, path, Some("application/merge-patch+json"), payload);
        assert!(code == 403 || code == 404, "{method} {path}: {code} {body}");
        if method == "GET" && path.contains("/namespaces/team/namespaces") {
            assert_eq!(code, 404, "{method} {path}: {body}");
        }
        // The admin, whom RBAC lets through, finds nothing at any of these paths.
        let (code, body) = s.curl(method, path, Some("application/merge-patch+json"), payload);
        assert_eq!(code, 404, "admin {method} {path}: {body}");
        assert_eq!(status_reason(&body), "NotFound");
    }
    let (code, body) = curl_token(
        &s,
        tina,
        "POST",
        "/api/v1/namespaces/team/namespaces",
        Some("application/json"),
        Some(br#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"evil"}}"#),
    );
    assert!(code == 403 || code == 404, "{body}");
    // The admin sees the same routing.
    assert_eq!(s.curl("GET", "/api/v1/namespaces/default/namespaces", None, None).0, 404);
    // Nothing changed: kube-system and the ClusterRole are there, no namespace "evil".
    assert_eq!(s.curl("GET", "/api/v1/namespaces/kube-system", None, None).0, 200);
    assert_eq!(s.curl("GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles/reader", None, None).0, 200);
    assert_eq!(s.curl("GET", "/api/v1/namespaces/evil", None, None).0, 404);
    // And the namespace object itself is still reached at its own path.
    assert_eq!(s.curl("GET", "/api/v1/namespaces/team/status", None, None).0, 200);
}

#[test]
fn json_patches_cannot_blow_up_the_server() {
    let s = Server::start();
    s.k(&["create", "configmap", "victim", "--from-literal=a=b"]);
    let path = "/api/v1/namespaces/default/configmaps/victim";
    // Repeated copies double a subtree: a 2 KB body would reach gigabytes.
    let mut doubling =
        vec![json!({"op": "add", "path": "/metadata/annotations/x", "value": "x".repeat(1000)}), json!({"op": "add", "path": "/data/d", "value": ""})];
    doubling.push(json!({"op": "add", "path": "/metadata/labels", "value": {"l": []}}));
    for _ in 0..40 {
        doubling.push(json!({"op": "copy", "from": "/metadata/labels/l", "path": "/metadata/labels/l/-"}));
    }
    let (code, body) = s.curl("PATCH", path, Some("application/json-patch+json"), Some(Value::Array(doubling).to_string().as_bytes()));
    assert_eq!(code, 422, "{body}");
    assert_eq!(status_reason(&body), "Invalid");
    // A chain of moves nests one level per operation (30,000 levels overflowed the stack).
    let mut nest =
        vec![json!({"op": "add", "path": "/metadata/annotations", "value": {}}), json!({"op": "add", "path": "/metadata/annotations/n", "value": {}})];
    while nest.len() < 9_000 {
        nest.push(json!({"op": "move", "from": "/metadata/annotations/n", "path": "/metadata/annotations/m"}));
        nest.push(json!({"op": "add", "path": "/metadata/annotations/n", "value": {}}));
        nest.push(json!({"op": "move", "from": "/metadata/annotations/m", "path": "/metadata/annotations/n/n"}));
    }
    let (code, body) = s.curl("PATCH", path, Some("application/json-patch+json"), Some(Value::Array(nest).to_string().as_bytes()));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("deeper than 100 levels"), "{body}");
    // Too many operations at all.
    let many: Vec<Value> = (0..10_001).map(|_| json!({"op": "test", "path": "/data/a", "value": "b"})).collect();
    let (code, body) = s.curl("PATCH", path, Some("application/json-patch+json"), Some(Value::Array(many).to_string().as_bytes()));
    assert_eq!(code, 413, "{body}");
    // The object is unchanged and the server well.
    let (_, cm) = s.get_json(path);
    assert_eq!(cm["data"], json!({"a": "b"}));
    assert!(cm["metadata"].get("annotations").is_none(), "{cm}");
    assert!(ready(&s));
}

#[test]
fn nothing_stored_is_deeper_or_of_another_type_than_readers_accept() {
    let mut s = Server::start();
    let cms = "/api/v1/namespaces/default/configmaps";
    s.k(&["create", "configmap", "ok", "--from-literal=a=b"]);
    // An object nested 110 levels (each level parses; the whole is past the write limit).
    let mut deep = json!("leaf");
    for _ in 0..110 {
        deep = json!({"d": deep});
    }
    let (code, body) = post_json(&s, cms, &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "deep", "annotations": {"a": deep}}}));
    assert!(code == 422 || code == 400, "{code} {body}");
    // Moved into annotations by a patch: the annotation value must be a string.
    let (code, body) = s.curl(
        "PATCH",
        &format!("{cms}/ok"),
        Some("application/merge-patch+json"),
        Some(json!({"metadata": {"annotations": {"a": {"nested": {"x": 1}}}}}).to_string().as_bytes()),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("cannot unmarshal object into Go struct field ObjectMeta.metadata.annotations of type string"), "{body}");
    let (code, body) = s.curl("PATCH", &format!("{cms}/ok"), Some("application/merge-patch+json"), Some(br#"{"metadata":{"annotations":{"a":5}}}"#));
    assert_eq!(code, 400, "{body}");
    assert_eq!(status_reason(&body), "BadRequest");
    // Scalars of built-in kinds are type-checked against the schema.
    s.k(&["create", "deployment", "web", "--image=nginx"]);
    for bad in ["\"3\"", "1.5", "1e23", "2147483648", "true"] {
        let (code, body) = s.curl(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some("application/merge-patch+json"),
            Some(format!(r#"{{"spec":{{"replicas":{bad}}}}}"#).as_bytes()),
        );
        assert_eq!(code, 400, "replicas {bad}: {body}");
        assert!(body.contains("Go struct field DeploymentSpec.spec.replicas of type int32"), "{body}");
    }
    let (code, body) = post_json(
        &s,
        "/apis/apps/v1/namespaces/default/deployments",
        &json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad"},
                "spec": {"replicas": "2", "selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with("{") && body.contains(r#"Deployment in version \"v1\" cannot be handled as a Deployment"#), "{body}");
    // Upstream's object size limit: a ConfigMap's data at most 1 MiB (the body may be 3).
    let (code, body) = post_json(&s, cms, &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"a": "x".repeat(1_100_000)}}));
    assert_eq!(code, 422, "{}", &body[..body.len().min(300)]);
    assert!(body.contains("Too long: must have at most 1048576 bytes"), "{}", &body[..body.len().min(300)]);
    // Base64 with line breaks in a Secret is accepted, as Go's decoder skips them.
    let (code, body) = post_json(
        &s,
        "/api/v1/namespaces/default/secrets",
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wrapped"}, "data": {"k": "aGVsbG8g\nd29ybGQ=\r\n"}}),
    );
    assert_eq!(code, 201, "{body}");
    // Typed readers still read everything: kubectl describe and the list.
    let described = s.k(&["describe", "deployment", "web"]);
    assert!(described.contains("Replicas:"), "{described}");
    assert_eq!(s.get_json(cms).0, 200);
    // And after a restart.
    s.stop();
    s.restart();
    assert_eq!(s.get_json(cms).0, 200);
    assert_eq!(s.get_json("/apis/apps/v1/deployments").0, 200);
}

#[test]
fn an_undecodable_row_costs_only_itself() {
    let mut s = Server::start();
    s.k(&["create", "namespace", "doomed"]);
    for n in ["a", "b", "c"] {
        s.k(&["create", "configmap", n, "-n", "doomed", "--from-literal=k=v"]);
    }
    s.stop();
    // Damage one row in the database file the way a bad disk or a careless hand might.
    let db = rusqlite::Connection::open(s.data.join("state.db")).unwrap();
    let changed = db.execute("UPDATE log SET value = CAST('{not json' AS BLOB) WHERE key = '/registry/configmaps/doomed/b'", []).unwrap();
    assert!(changed >= 1);
    drop(db);
    s.restart();
    let (code, list) = s.get_json("/api/v1/namespaces/doomed/configmaps");
    assert_eq!(code, 200, "{list}");
    let names: Vec<&str> = list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "c", "kube-root-ca.crt"]);
    let (code, body) = s.curl("GET", "/api/v1/namespaces/doomed/configmaps/b", None, None);
    assert_eq!(code, 500, "{body}");
    assert_eq!(status_reason(&body), "InternalError");
    // The namespace can still be deleted, the bad row with it.
    s.k(&["delete", "namespace", "doomed", "--timeout=20s"]);
    assert!(eventually(std::time::Duration::from_secs(20), || s.curl("GET", "/api/v1/namespaces/doomed", None, None).0 == 404));
    assert!(ready(&s));
}

#[test]
fn token_reviews_honour_audiences_and_dead_legacy_tokens_stay_dead() {
    let s = Server::start();
    let review = |token: &str, audiences: Option<Value>| -> Value {
        let mut spec = json!({"token": token});
        if let Some(a) = audiences {
            spec["audiences"] = a;
        }
        let (code, body) = post_json(
            &s,
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}),
        );
        assert_eq!(code, 201, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["status"].clone()
    };
    let api_token = s.k(&["create", "token", "default"]).trim().to_string();
    let vault_token = s.k(&["create", "token", "default", "--audience", "vault"]).trim().to_string();
    let st = review(&api_token, None);
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(st["user"]["username"], "system:serviceaccount:default:default");
    assert_eq!(review(&api_token, Some(json!(["vault"])))["authenticated"], false);
    let st = review(&vault_token, Some(json!(["vault", "other"])));
    assert_eq!(st["authenticated"], true, "{st}");
    assert_eq!(st["audiences"], json!(["vault"]));
    assert_eq!(review(&vault_token, None)["authenticated"], false);
    // A vault token does not authenticate to the API either.
    assert_eq!(curl_token(&s, Some(&vault_token), "GET", "/api", None, None).0, 401);

    // A legacy token, made for a token Secret, dies with its Secret and stays dead when an
    // Opaque Secret of the same name and annotation appears.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "legacy", "annotations": {"kubernetes.io/service-account.name": "default"}}});
    assert_eq!(post_json(&s, "/api/v1/namespaces/default/secrets", &secret).0, 201);
    let mut filled = Value::Null;
    assert!(eventually(std::time::Duration::from_secs(10), || {
        filled = s.get_json("/api/v1/namespaces/default/secrets/legacy").1;
        filled["data"]["token"].is_string()
    }));
    use base64::Engine;
    let token = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(filled["data"]["token"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(curl_token(&s, Some(&token), "GET", "/api", None, None).0, 200);
    s.k(&["delete", "secret", "legacy"]);
    assert_eq!(curl_token(&s, Some(&token), "GET", "/api", None, None).0, 401);
    let uid = filled["metadata"]["annotations"]["kubernetes.io/service-account.uid"].clone();
    let forged = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "legacy", "annotations": {"kubernetes.io/service-account.name": "default", "kubernetes.io/service-account.uid": uid}},
        "data": {"token": filled["data"]["token"]}});
    assert_eq!(post_json(&s, "/api/v1/namespaces/default/secrets", &forged).0, 201);
    assert_eq!(curl_token(&s, Some(&token), "GET", "/api", None, None).0, 401);
}

#[test]
fn small_things_are_clear_errors_not_panics() {
    let s = Server::start();
    let cms = "/api/v1/namespaces/default/configmaps";
    // A non-ASCII field selector (byte slicing inside a character panicked).
    let (code, body) = s.curl("GET", &format!("{cms}?fieldSelector=%C3%A9%3Dx"), None, None);
    assert_eq!(code, 400, "{body}");
    assert_eq!(status_reason(&body), "BadRequest");
    // A non-UTF-8 Authorization header is a bad credential, not none.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(s.data.join("ca.crt"))
        .arg("-H")
        .arg(std::ffi::OsStr::new(&String::from_utf8_lossy(b"Authorization: Bearer x").to_string()))
        .arg("-H")
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"Authorization: Bearer \xff\xfe"))
        .arg(format!("{}/api", s.url))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    // The watch prefix alone (found by the fuzzer: it panicked the request).
    let (code, body) = s.curl("GET", "/api/v1/watch", None, None);
    assert_eq!(code, 404, "{body}");
    // Query parameters out of range.
    for q in ["limit=-1", "resourceVersion=-5", "limit=abc", "timeoutSeconds=abc"] {
        let (code, body) = s.curl("GET", &format!("{cms}?{q}"), None, None);
        assert_eq!(code, 400, "{q}: {body}");
    }
    assert_eq!(s.curl("GET", &format!("{cms}?watch=1&resourceVersion=-5"), None, None).0, 400);
    // TokenRequest with a non-integer expiration.
    let (code, body) = post_json(
        &s,
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": "abc"}}),
    );
    assert_eq!(code, 400, "{body}");
    // Boolean parameters as upstream reads them: `watch=True` watches.
    let (_, text) = s.curl("GET", "/api/v1/namespaces?watch=True&timeoutSeconds=1", None, None);
    let first: Value = serde_json::from_str(text.lines().next().unwrap_or("")).unwrap_or(Value::Null);
    assert_eq!(first["type"], "ADDED", "{text}");
    // A YAML body of nested flow collections is refused before any parser reads it
    // (a YAML parser reads the whole document into events first: seconds per MiB).
    let (code, body) = s.curl("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", Some("application/yaml"), Some("[".repeat(2_000_000).as_bytes()));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("nests deeper than 100 levels"), "{body}");
    // `/metrics` does not grow with made-up paths.
    let before = s.curl("GET", "/metrics", None, None).1.len();
    for i in 0..60 {
        let _ = curl_token(&s, None, "GET", &format!("/apis/made{i}.example/v{i}/things{i}"), None, None);
        let _ = s.curl("GET", &format!("/api/v1/namespaces/default/pods/x/sub{i}"), None, None);
    }
    let metrics = s.curl("GET", "/metrics", None, None).1;
    assert!(!metrics.contains("made1.example") && !metrics.contains("sub1\""), "made-up labels in /metrics");
    assert!(metrics.len() < before + 40_000, "/metrics grew from {before} to {} bytes", metrics.len());
    assert!(ready(&s));
}

#[test]
fn one_data_directory_one_server_and_a_lost_store_is_not_replaced() {
    let mut s = Server::start();
    s.k(&["create", "configmap", "keep", "--from-literal=a=b"]);
    // A second server on the same directory exits at once, naming the first.
    let err = common::server_refuses(&s.data, "second server");
    assert!(err.contains("in use by another nanokube server") && err.contains(&format!("pid {}", s.child.id())), "{err}");
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/keep").0, 200);
    // After a crash the lock goes with the process.
    s.kill9();
    s.restart();
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/keep").0, 200);
    s.stop();
    // A truncated (0-byte) or missing state.db beside the cluster's certificates: refused.
    let db = s.data.join("state.db");
    let files = ["state.db", "state.db-wal", "state.db-shm"];
    let saved: Vec<Option<Vec<u8>>> = files.iter().map(|f| std::fs::read(s.data.join(f)).ok()).collect();
    for damage in ["truncate", "remove"] {
        let _ = std::fs::remove_file(s.data.join("state.db-wal"));
        let _ = std::fs::remove_file(s.data.join("state.db-shm"));
        if damage == "truncate" {
            std::fs::write(&db, b"").unwrap();
        } else {
            std::fs::remove_file(&db).unwrap();
        }
        let err = common::server_refuses(&s.data, damage);
        assert!(err.contains("state was lost"), "{damage}: {err}");
    }
    // Restored, it starts with its objects.
    for (f, bytes) in files.iter().zip(saved) {
        if let Some(b) = bytes {
            std::fs::write(s.data.join(f), b).unwrap();
        }
    }
    s.restart();
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/keep").0, 200);
}

#[test]
fn a_connection_that_never_says_hello_is_closed() {
    use std::io::Read;
    let s = Server::start();
    let started = std::time::Instant::now();
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    idle.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    // Others are served meanwhile.
    assert!(ready(&s));
    let mut buf = [0u8; 16];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the server sent bytes to a client that never started TLS");
    let waited = started.elapsed();
    assert!(waited >= std::time::Duration::from_secs(9) && waited < std::time::Duration::from_secs(25), "closed after {waited:?}");
    assert!(ready(&s));
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "nanokube-test"]).arg(dir.path()).status().unwrap();
        assert!(ok.success(), "mount a tmpfs (the tests run as root)");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// The disk under the store and the log fills up: writes fail with a 500 while it is
/// full (the log cannot even say so: stderr is /dev/full), and once space is freed the
/// same server writes again and stays ready. Before, the failed log write panicked the
/// store writer, and every later write answered "store writer stopped".
#[test]
fn a_full_disk_under_the_store_and_the_log_does_not_stop_the_writer() {
    let disk = Tmpfs::mount("24m");
    let data = disk.0.path().join("data");
    let s = Server::start_logging_to(&data, std::path::Path::new("/dev/full"), &[]);
    let cm = |name: &str, size: usize| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "x".repeat(size)}});
    assert_eq!(post_json(&s, "/api/v1/namespaces/default/configmaps", &cm("before", 10)).0, 201);
    // Fill what is left of the disk.
    let filler = disk.0.path().join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=1M", "status=none"]).arg(format!("of={}", filler.display())).status().unwrap();
    let mut failed = 0;
    for i in 0..40 {
        let (code, body) = post_json(&s, "/api/v1/namespaces/default/configmaps", &cm(&format!("full-{i}"), 200_000));
        match code {
            201 => {}
            500 => failed += 1,
            other => panic!("{other}: {body}"),
        }
    }
    assert!(failed > 0, "no write failed on a full disk");
    std::fs::remove_file(&filler).unwrap();
    assert!(eventually(std::time::Duration::from_secs(10), || post_json(&s, "/api/v1/namespaces/default/configmaps", &cm("after", 10)).0 == 201));
    assert!(ready(&s));
    assert_eq!(s.curl("GET", "/livez", None, None).0, 200);
    assert_eq!(s.get_json("/api/v1/namespaces/default/configmaps/before").0, 200);
    drop(s);
}

/// At the file-descriptor limit the accept loop backs off and logs the failure at most
/// once a second (it used to spin and write ~700k lines in 5 s); once descriptors are
/// free again it serves as before.
#[test]
fn at_the_descriptor_limit_accept_backs_off_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    std::fs::write(&log, b"").unwrap();
    let s = Server::start_logging_to(&dir.path().join("data"), &log, &[]);
    let limited = Command::new("prlimit").arg(format!("--pid={}", s.child.id())).arg("--nofile=64:64").status().unwrap();
    assert!(limited.success());
    // Far more connections than descriptors: the kernel queues them, accept fails.
    let held: Vec<std::net::TcpStream> = (0..150).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", s.port)).ok()).collect();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let lines = std::fs::read_to_string(&log).unwrap();
    let failures = lines.lines().filter(|l| l.contains("accept failed")).count();
    assert!(failures >= 1, "the limit was never hit:\n{lines}");
    assert!(failures <= 5, "{failures} accept failures logged in 3 s");
    drop(held);
    // Descriptors free again (the held connections' server sides close on the handshake
    // timeout at the latest): the server answers.
    assert!(eventually(std::time::Duration::from_secs(30), || ready(&s)));
}
