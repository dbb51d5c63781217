//! Service-account tokens (legacy Secrets, TokenRequest), the seed's direct-access
//! recipe verbatim, OIDC discovery, and tokens that must be refused.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, Server};
use serde_json::Value;

fn bearer(s: &Server, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--cacert"])
        .arg(s.data.join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.arg(format!("{}{}", s.url, path)).output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let (b, code) = t.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), b.to_string())
}

#[test]
fn seed_direct_access_recipe_verbatim() {
    let s = Server::start();
    assert!(eventually(Duration::from_secs(10), || s.k(&["get", "secret"]).lines().any(|l| l.starts_with("default-token-"))));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/scripts/seed-direct-access.sh");
    let home = s.dir.path().join("home-seed");
    std::fs::create_dir_all(&home).unwrap();
    let kubectl_dir = common::kubectl_path("kubectl").parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg(script)
        .arg(&s.data)
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", &home)
        .env("PATH", format!("{}:{}", kubectl_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("APISERVER={}", s.url)), "{stdout}");
    let api_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(api_lines.len(), 2, "{stdout}");
    for l in api_lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["kind"], "APIVersions");
        assert_eq!(v["versions"], serde_json::json!(["v1"]));
        assert_eq!(v["serverAddressByClientCIDRs"][0]["clientCIDR"], "0.0.0.0/0");
        assert_eq!(v["serverAddressByClientCIDRs"][0]["serverAddress"], format!("127.0.0.1:{}", s.port));
    }
    assert!(stdout.contains("without --cacert: refused"));
}

#[test]
fn legacy_token_secrets_follow_their_service_account() {
    let s = Server::start();
    s.k(&["create", "sa", "robot"]);
    let name = {
        let mut n = String::new();
        assert!(eventually(Duration::from_secs(10), || {
            n = s
                .k(&["get", "secrets", "-o", "name"])
                .lines()
                .find(|l| l.starts_with("secret/robot-token-"))
                .unwrap_or("")
                .trim_start_matches("secret/")
                .to_string();
            !n.is_empty()
        }));
        n
    };
    let secret = s.get_json(&format!("/api/v1/namespaces/default/secrets/{name}")).1;
    assert_eq!(secret["type"], "kubernetes.io/service-account-token");
    for k in ["token", "ca.crt", "namespace"] {
        assert!(secret["data"][k].as_str().is_some_and(|v| !v.is_empty()), "{k} missing: {secret}");
    }
    use base64::Engine;
    let token = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(secret["data"]["token"].as_str().unwrap()).unwrap()).unwrap();
    let (code, body) = bearer(
        &s,
        &token,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#),
    );
    assert_eq!(code, 201, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"]["userInfo"]["username"], "system:serviceaccount:default:robot");
    let (_, rows) = common::table(&s.k(&["get", "sa", "robot"]));
    assert_eq!(rows[0][1], "1", "SECRETS column lists the token");

    // A user-created token Secret is filled in too.
    s.k_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Secret\nmetadata:\n  name: mine\n  annotations:\n    kubernetes.io/service-account.name: robot\ntype: kubernetes.io/service-account-token\n");
    assert!(eventually(Duration::from_secs(10), || s.get_json("/api/v1/namespaces/default/secrets/mine").1["data"]["token"].is_string()));

    // Deleting the ServiceAccount deletes its token Secrets; their tokens stop working.
    s.k(&["delete", "sa", "robot"]);
    assert!(eventually(Duration::from_secs(10), || s.curl("GET", &format!("/api/v1/namespaces/default/secrets/{name}"), None, None).0 == 404));
    assert!(eventually(Duration::from_secs(10), || s.curl("GET", "/api/v1/namespaces/default/secrets/mine", None, None).0 == 404));
    assert_eq!(bearer(&s, &token, "GET", "/api", None).0, 401);

    // The flag turns automatic Secrets off.
    let s2 = Server::start_with(&["--legacy-service-account-token-secrets=false"]);
    s2.k(&["create", "sa", "quiet"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!s2.k(&["get", "secrets", "-o", "name"]).contains("quiet-token-"));
}

#[test]
fn token_request_and_refused_tokens() {
    let s = Server::start();
    s.k(&["create", "sa", "app"]);
    let token = s.k(&["create", "token", "app"]).trim().to_string();
    let (code, body) = bearer(&s, &token, "GET", "/api", None);
    assert_eq!(code, 200, "{body}");
    // Authenticated but not authorized for pods.
    let (code, body) = bearer(&s, &token, "GET", "/api/v1/namespaces/default/pods", None);
    assert_eq!(code, 403);
    assert!(body.contains(r#"User \"system:serviceaccount:default:app\" cannot list resource \"pods\""#), "{body}");

    // Wrong audience.
    let other = s.k(&["create", "token", "app", "--audience", "https://somewhere.else"]).trim().to_string();
    assert_eq!(bearer(&s, &other, "GET", "/api", None).0, 401);
    // Tampered: flip a character of the payload.
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let mid = parts[1].len() / 2;
    let c = if &parts[1][mid..mid + 1] == "A" { "B" } else { "A" };
    parts[1].replace_range(mid..mid + 1, c);
    assert_eq!(bearer(&s, &parts.join("."), "GET", "/api", None).0, 401);
    // Too short a lifetime is refused by TokenRequest validation.
    let out = s.kubectl(&["create", "token", "app", "--duration", "1m"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not specify a duration less than 10 minutes"));

    // Bound to a pod: valid while the pod exists.
    s.k_stdin(
        &["create", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: holder\nspec:\n  serviceAccountName: app\n  containers:\n  - name: c\n    image: busybox\n",
    );
    let bound = s.k(&["create", "token", "app", "--bound-object-kind", "Pod", "--bound-object-name", "holder"]).trim().to_string();
    let (code, body) = bearer(
        &s,
        &bound,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#),
    );
    assert_eq!(code, 201);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"][0], "holder");
    s.k(&["delete", "pod", "holder"]);
    assert_eq!(bearer(&s, &bound, "GET", "/api", None).0, 401, "bound to a deleted pod");

    // Bound to a Secret: valid while that Secret exists.
    s.k(&["create", "secret", "generic", "anchor", "--from-literal=x=y"]);
    let to_secret = s.k(&["create", "token", "app", "--bound-object-kind", "Secret", "--bound-object-name", "anchor"]).trim().to_string();
    assert_eq!(bearer(&s, &to_secret, "GET", "/api", None).0, 200);
    s.k(&["delete", "secret", "anchor"]);
    assert_eq!(bearer(&s, &to_secret, "GET", "/api", None).0, 401, "bound to a deleted secret");

    // Expired: a TokenReview of an expired token (made with the server's key) is refused.
    // Tokens of a deleted and recreated ServiceAccount (new uid) are refused too.
    s.k(&["delete", "sa", "app"]);
    s.k(&["create", "sa", "app"]);
    assert_eq!(bearer(&s, &token, "GET", "/api", None).0, 401, "token of a recreated ServiceAccount");

    // TokenReview says the same as the authenticator.
    let fresh = s.k(&["create", "token", "app"]).trim().to_string();
    let review = format!(r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"{fresh}"}}}}"#);
    let (code, body) = s.curl("POST", "/apis/authentication.k8s.io/v1/tokenreviews", Some("application/json"), Some(review.as_bytes()));
    assert_eq!(code, 201);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"]["authenticated"], true);
    assert_eq!(v["status"]["user"]["username"], "system:serviceaccount:default:app");

    // OIDC discovery for service accounts (bound to system:serviceaccounts).
    let (code, body) = bearer(&s, &fresh, "GET", "/.well-known/openid-configuration", None);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["issuer"], "https://kubernetes.default.svc.cluster.local");
    let (code, body) = bearer(&s, &fresh, "GET", "/openid/v1/jwks", None);
    assert_eq!(code, 200);
    let jwks: Value = serde_json::from_str(&body).unwrap();
    let header: Value = {
        use base64::Engine;
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(fresh.split('.').next().unwrap()).unwrap()).unwrap()
    };
    assert_eq!(jwks["keys"][0]["kid"], header["kid"], "tokens name the published key");
}

#[test]
fn expired_tokens_are_refused() {
    // Sign an already-expired token with the cluster's own key, as a clock skew would
    // produce, and check the server refuses it while an unexpired twin is accepted.
    let s = Server::start();
    s.k(&["create", "sa", "late"]);
    let sa = s.get_json("/api/v1/namespaces/default/serviceaccounts/late").1;
    let uid = sa["metadata"]["uid"].as_str().unwrap();
    let key = std::fs::read_to_string(s.data.join("sa.key")).unwrap();
    let public = std::fs::read_to_string(s.data.join("sa.pub")).unwrap();
    let issuer = nanokube_apiserver::satoken::TokenIssuer::new(&key, &public, "https://kubernetes.default.svc.cluster.local").unwrap();
    let (live, _) = issuer.bound_token("default", "late", uid, &[], 600, None);
    assert_eq!(bearer(&s, &live, "GET", "/api", None).0, 200);
    let (expired, _) = issuer.bound_token("default", "late", uid, &[], -5, None);
    assert_eq!(bearer(&s, &expired, "GET", "/api", None).0, 401);
}
