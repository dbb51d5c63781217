//! `nanokube proxy` beside `kubectl proxy` (the seed's recipe, verbatim), the in-cluster
//! sidecar pattern with RBAC deciding, and `nanokube config` against `kubectl config`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::{eventually, kubectl_path, Server};
use serde_json::Value;

#[test]
fn seed_proxy_recipe_verbatim() {
    let s = Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/scripts/seed-proxy.sh");
    let home = s.dir.path().join("home-proxy");
    std::fs::create_dir_all(&home).unwrap();
    let kubectl_dir = kubectl_path("kubectl").parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg(script)
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", &home)
        .env("NANOKUBE", env!("CARGO_BIN_EXE_nanokube"))
        .env("PATH", format!("{}:{}", kubectl_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<Value> = stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 2, "{stdout}");
    assert_eq!(answers[0], answers[1], "kubectl proxy and nanokube proxy answer the same");
    assert_eq!(answers[0]["kind"], "APIVersions");
    assert!(stdout.contains("kubectl proxy exec: 403") && stdout.contains("nanokube proxy exec: 403"), "{stdout}");
}

/// A proxy process that is ended (by its PID) when the test ends, failing or not.
struct Proxy(std::process::Child);

impl std::ops::Deref for Proxy {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Proxy {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `nanokube proxy` with the given environment; returns the process and its port.
fn start_proxy(args: &[&str], envs: &[(&str, String)]) -> (Proxy, u16) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nanokube"));
    c.arg("proxy").args(args).env_remove("KUBECONFIG").stdout(Stdio::piped()).stderr(Stdio::inherit());
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = Proxy(c.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("proxy said {line:?}"));
    (child, port)
}

fn get(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-o", "-", "-w", "\n%{http_code}"]).arg(format!("http://localhost:{port}{path}")).output().unwrap();
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    let (b, c) = t.rsplit_once('\n').unwrap();
    (c.parse().unwrap(), b.to_string())
}

#[test]
fn in_cluster_proxy_uses_the_service_account_and_rbac_decides() {
    let s = Server::start();
    s.k(&["create", "sa", "sidecar"]);
    // The files the kubelet would mount at /var/run/secrets/kubernetes.io/serviceaccount.
    let secret_name = {
        let mut n = String::new();
        assert!(eventually(Duration::from_secs(10), || {
            n = s.k(&["get", "secrets", "-o", "name"]).lines().find(|l| l.contains("sidecar-token-")).unwrap_or("").trim_start_matches("secret/").to_string();
            !n.is_empty() && s.get_json(&format!("/api/v1/namespaces/default/secrets/{n}")).1["data"]["token"].is_string()
        }));
        n
    };
    let secret = s.get_json(&format!("/api/v1/namespaces/default/secrets/{secret_name}")).1;
    let sa_dir = s.dir.path().join("serviceaccount");
    std::fs::create_dir_all(&sa_dir).unwrap();
    for k in ["token", "ca.crt", "namespace"] {
        std::fs::write(sa_dir.join(k), base64::engine::general_purpose::STANDARD.decode(secret["data"][k].as_str().unwrap()).unwrap()).unwrap();
    }
    let home = s.dir.path().join("home-pod");
    std::fs::create_dir_all(&home).unwrap();
    let (mut proxy, port) = start_proxy(
        &["--port", "0", "--service-account-dir", sa_dir.to_str().unwrap()],
        &[("KUBERNETES_SERVICE_HOST", "127.0.0.1".into()), ("KUBERNETES_SERVICE_PORT", s.port.to_string()), ("HOME", home.display().to_string())],
    );
    let (code, body) = get(port, "/api/v1/namespaces/default/pods");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("system:serviceaccount:default:sidecar"), "{body}");
    s.k(&["create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods"]);
    s.k(&["create", "rolebinding", "sidecar-reads", "--role=pod-reader", "--serviceaccount=default:sidecar"]);
    assert!(eventually(Duration::from_secs(5), || get(port, "/api/v1/namespaces/default/pods").0 == 200));
    assert_eq!(get(port, "/api/v1/namespaces/default/secrets").0, 403, "still only what RBAC grants");
    let _ = proxy.kill();
    let _ = proxy.wait();

    // A named service-account directory wins over the admin's kubeconfig in the
    // environment and in HOME (it used to be ignored, and the admin was used).
    let admin_home = s.dir.path().join("home-admin");
    std::fs::create_dir_all(admin_home.join(".kube")).unwrap();
    std::fs::copy(s.kubeconfig(), admin_home.join(".kube/config")).unwrap();
    let (mut proxy, port) = start_proxy(
        &["--port", "0", "--service-account-dir", sa_dir.to_str().unwrap()],
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".into()),
            ("KUBERNETES_SERVICE_PORT", s.port.to_string()),
            ("HOME", admin_home.display().to_string()),
            ("KUBECONFIG", s.kubeconfig().display().to_string()),
        ],
    );
    let (code, body) = get(port, "/api/v1/namespaces/default/secrets");
    assert_eq!(code, 403, "the service account, not the admin: {body}");
    let _ = proxy.kill();
    let _ = proxy.wait();

    // Without the in-cluster environment, the proxy says why it cannot start.
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube"))
        .args(["proxy", "--port", "0"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KUBERNETES_SERVICE_HOST"));
}

#[test]
fn proxy_flags_prefix_filters_www_and_unix_socket() {
    let s = Server::start();
    let www = s.dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hi from www").unwrap();
    let kc = s.kubeconfig().display().to_string();
    let (mut p, port) =
        start_proxy(&["--port", "0", "--kubeconfig", &kc, "--api-prefix", "/k8s/", "--www", www.to_str().unwrap(), "--reject-methods", "^DELETE$"], &[]);
    assert_eq!(get(port, "/k8s/api/").0, 200);
    assert_eq!(get(port, "/api/").0, 404, "outside the prefix");
    assert_eq!(get(port, "/static/hello.txt"), (200, "hi from www".to_string()));
    let del = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "DELETE"])
        .arg(format!("http://localhost:{port}/k8s/api/v1/namespaces/default/configmaps/x"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&del.stdout), "403");
    let _ = p.kill();
    let _ = p.wait();

    let sock = s.dir.path().join("proxy.sock");
    let (mut p, _) = {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nanokube"));
        let mut child = c.args(["proxy", "--kubeconfig", &kc, "-u"]).arg(&sock).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.contains("unix:"), "{line}");
        (child, 0)
    };
    let out = Command::new("curl").args(["-s", "--unix-socket"]).arg(&sock).arg("http://localhost:8001/api/").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("APIVersions"));
    let _ = p.kill();
    let _ = p.wait();
}

#[test]
fn config_commands_match_kubectl() {
    let s = Server::start();
    let home = s.dir.path().join("home-config");
    std::fs::create_dir_all(&home).unwrap();
    // A merged KUBECONFIG list: ours plus a second file with another context.
    let other = s.dir.path().join("other.kubeconfig");
    std::fs::write(&other, "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster:\n    server: https://127.0.0.2:6443\n    insecure-skip-tls-verify: true\nusers:\n- name: other\n  user:\n    token: s3cret\ncontexts:\n- name: other\n  context:\n    cluster: other\n    user: other\n    namespace: team\ncurrent-context: other\n").unwrap();
    let list = format!("{}:{}", s.kubeconfig().display(), other.display());
    let run = |bin: &std::path::Path, args: &[&str]| -> String {
        let out = Command::new(bin).args(args).env("KUBECONFIG", &list).env("HOME", &home).output().unwrap();
        assert!(out.status.success(), "{bin:?} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let kubectl = kubectl_path("kubectl");
    let nanokube = std::path::PathBuf::from(env!("CARGO_BIN_EXE_nanokube"));
    for args in [
        vec!["config", "view", "--minify"],
        vec!["config", "view"],
        vec!["config", "view", "--raw"],
        vec!["config", "view", "--minify", "-o", "json"],
        vec!["config", "view", "-o", "json"],
        vec!["config", "current-context"],
        vec!["config", "get-contexts"],
    ] {
        assert_eq!(run(&nanokube, &args), run(&kubectl, &args), "nanokube {args:?} differs from kubectl");
    }
    let v = run(&nanokube, &["config", "view"]);
    assert!(v.contains("token: REDACTED") && v.contains("DATA+OMITTED") && !v.contains("s3cret"));
    // use-context writes the first file, as kubectl does.
    assert_eq!(run(&nanokube, &["config", "use-context", "other"]).trim(), "Switched to context \"other\".");
    assert_eq!(run(&kubectl, &["config", "current-context"]).trim(), "other");
    let out = Command::new(&nanokube).args(["config", "use-context", "nope"]).env("KUBECONFIG", &list).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no context exists with the name: \"nope\""));
}

#[test]
fn proxy_adds_x_forwarded_for_which_the_audit_log_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let s = Server::start_with(&["--audit-log-path", log.to_str().unwrap()]);
    let kc = s.kubeconfig().display().to_string();
    let (mut p, port) = start_proxy(&["--port", "0", "--kubeconfig", &kc], &[]);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Forwarded-For: 127.0.0.9"])
        .arg(format!("http://localhost:{port}/api/v1/namespaces/default/configmaps?marker=xff"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let _ = p.kill();
    let _ = p.wait();
    assert!(eventually(Duration::from_secs(5), || std::fs::read_to_string(&log).unwrap_or_default().contains("marker=xff")));
    let line = std::fs::read_to_string(&log).unwrap().lines().find(|l| l.contains("marker=xff")).unwrap().to_string();
    let ev: Value = serde_json::from_str(&line).unwrap();
    // The client's own hop, then the proxy's client (curl, on loopback).
    assert_eq!(ev["sourceIPs"], serde_json::json!(["127.0.0.9", "127.0.0.1"]), "{ev}");
    assert_eq!(ev["userAgent"].as_str().unwrap().split('/').next(), Some("curl"), "the client's own User-Agent is kept");
}

/// nanokube serves no upgrade yet (exec, attach and port-forward need the node agent), so
/// this upstream is a TLS server of the test's own, with a certificate from nanokube's
/// PKI code, that switches protocols and echoes; `nanokube proxy` in front of it is the
/// real binary, with its default filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_passes_upgrades_through_and_filters_exec() {
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let paths = nanokube_apiserver::pki::Paths::new(dir.path().join("pki"));
    let pki = nanokube_apiserver::pki::ensure(&paths, &["127.0.0.1".parse().unwrap()], &[]).unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(nanokube_apiserver::server::tls_config(&pki).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
    let seen_by_server = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (tls, seen) = (tls.clone(), seen_by_server.clone());
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let xff = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        seen.lock().unwrap().push((req.uri().path().to_string(), xff));
                        let mut resp = hyper::Response::new(Full::new(bytes::Bytes::new()));
                        if req.headers().contains_key(http::header::UPGRADE) {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = on.await {
                                    let mut io = TokioIo::new(up);
                                    let mut buf = [0u8; 64];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("Upgrade"));
                            resp.headers_mut().insert(http::header::UPGRADE, http::HeaderValue::from_static("SPDY/3.1"));
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
            });
        }
    });
    let kubeconfig = dir.path().join("kubeconfig");
    let cfg = nanokube_apiserver::kubeconfig::single("upstream", &upstream, &pki.ca_pem, &pki.client_pem, &pki.client_key_pem);
    nanokube_apiserver::kubeconfig::write(&kubeconfig, &cfg).unwrap();
    let (mut proxy, port) = tokio::task::spawn_blocking(move || start_proxy(&["--port=0", "--kubeconfig", kubeconfig.to_str().unwrap()], &[])).await.unwrap();

    // port-forward is allowed by kubectl's default filters: the upgrade reaches the
    // upstream and bytes flow both ways through the proxy.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"POST /api/v1/namespaces/default/pods/web/portforward HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tcp.read(&mut byte).await.unwrap(), 1, "proxy closed: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: spdy/3.1"), "{head}");
    for msg in [&b"hello"[..], b"through the proxy"] {
        tcp.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tcp.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
    drop(tcp);
    // exec is refused by the proxy itself (403), never reaching the upstream.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"POST /api/v1/namespaces/default/pods/web/exec?command=sh HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    let mut reply = vec![0u8; 12];
    tcp.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"HTTP/1.1 403");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![("/api/v1/namespaces/default/pods/web/portforward".to_string(), "127.0.0.1".to_string())]);
    let _ = proxy.kill();
    let _ = proxy.wait();
}
