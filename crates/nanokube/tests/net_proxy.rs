//! The API server's proxy subresources: `services/proxy` (by port name and number,
//! `https:` to the API server's own `kubernetes` Service), `pods/proxy`, `kubectl proxy`
//! reaching a Service that way (how the seed opens a dashboard), `kubectl port-forward
//! svc/…`; a caller allowed `get pods` but not `pods/proxy` is refused before anything
//! reaches the backend, and an upgrade the backend does not take closes the connection.

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, server_with_image, Server};

fn admin_get(s: &Server, path: &str, extra: &[&str]) -> (u16, String) {
    let out = s
        .admin_curl()
        .args(["-sS", "--max-time", "5", "-o", "/dev/stdout", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("{}{path}", s.url))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn services_and_pods_through_the_api_server_proxy() {
    let s = server_with_image();
    // The listener's nc keeps its stdin open for an hour: an nc whose stdin has ended can
    // close a connection before reading (and logging) the request on it.
    let manifests = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: web\n    image: testbox:1.0\n    command: [sh, -c, 'mkdir -p /www/sub; echo hello > /www/index.html; echo deep > /www/sub/page; exec httpd -f -p 8080 -h /www']\n    ports: [{name: http, containerPort: 8080}]\n---\n\
        apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata:\n  name: listener\nspec:\n  containers:\n  - name: nc\n    image: testbox:1.0\n    command: [sh, -c, 'while true; do sleep 3600 | nc -l -p 9000; done']\n";
    let out = s.k_stdin(&["apply", "-f", "-"], manifests);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for pod in ["web", "listener"] {
        let ok = s.kubectl(&["wait", "--for=condition=Ready", &format!("pod/{pod}"), "--timeout=60s"]);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    }
    assert!(
        eventually(Duration::from_secs(20), || admin_get(&s, "/api/v1/namespaces/default/services/web:http/proxy/", &[]).0 == 200),
        "{:?}",
        admin_get(&s, "/api/v1/namespaces/default/services/web:http/proxy/", &[])
    );

    // services/proxy by port name, by number, with a path and query; pods/proxy by port
    // and by the pod's first container port.
    for path in [
        "/api/v1/namespaces/default/services/web:http/proxy/",
        "/api/v1/namespaces/default/services/web:80/proxy/index.html?x=1",
        "/api/v1/namespaces/default/pods/web:8080/proxy/",
        "/api/v1/namespaces/default/pods/web/proxy/",
    ] {
        assert_eq!(admin_get(&s, path, &[]), (200, "hello\n".to_string()), "{path}");
    }
    assert_eq!(admin_get(&s, "/api/v1/namespaces/default/services/web:http/proxy/sub/page", &[]), (200, "deep\n".to_string()));
    // No port named: the unnamed port, which this Service has not (upstream's rule).
    let (code, body) = admin_get(&s, "/api/v1/namespaces/default/services/web/proxy/", &[]);
    assert!(code == 503 && body.contains("no endpoints available for service \\\"web\\\""), "{code} {body}");
    // `.../proxy` without the slash is redirected, as upstream's handler does.
    let out = s
        .admin_curl()
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"])
        .arg(format!("{}/api/v1/namespaces/default/services/web:http/proxy", s.url))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("301 ") && String::from_utf8_lossy(&out.stdout).ends_with("/services/web:http/proxy/"), "{out:?}");
    // `https:` to the API server's own Service (its endpoint is this server).
    let (code, body) = admin_get(&s, "/api/v1/namespaces/default/services/https:kubernetes:443/proxy/version", &[]);
    assert!(code == 200 && body.contains("gitVersion"), "{code} {body}");
    // Errors in upstream's words.
    let (code, body) = admin_get(&s, "/api/v1/namespaces/default/services/web:81/proxy/", &[]);
    assert!(code == 503 && body.contains("no service port 81 found for service \\\"web\\\""), "{code} {body}");
    // An ExternalName Service has no Endpoints: the Endpoints' own 404.
    s.k_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  type: ExternalName\n  externalName: example.invalid\n");
    let (code, body) = admin_get(&s, "/api/v1/namespaces/default/services/ext/proxy/", &[]);
    assert!(code == 404 && body.contains("endpoints \\\"ext\\\" not found"), "{code} {body}");
    s.k_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata:\n  name: none\nspec:\n  selector: {app: none}\n  ports: [{port: 80}]\n");
    // (Once the endpoints controller has written its Endpoints: until then, 404.)
    let mut answer = (0, String::new());
    eventually(Duration::from_secs(10), || {
        answer = admin_get(&s, "/api/v1/namespaces/default/services/none/proxy/", &[]);
        answer.0 != 404
    });
    let (code, body) = answer;
    assert!(code == 503 && body.contains("no endpoints available for service \\\"none\\\""), "{code} {body}");

    // kubectl proxy, then the Service through it.
    let mut proxy = Command::new(common::kubectl_path("kubectl"))
        .args(["--kubeconfig"])
        .arg(s.kubeconfig())
        .args(["proxy", "--port=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(proxy.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_string();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/api/v1/namespaces/default/services/web:80/proxy/"))
        .output()
        .unwrap();
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{line}");

    // kubectl port-forward svc/web: to the pod behind it.
    let mut pf = Command::new(common::kubectl_path("kubectl"))
        .args(["--kubeconfig"])
        .arg(s.kubeconfig())
        .args(["port-forward", "svc/web", ":80"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(pf.stdout.take().unwrap());
    reader.read_line(&mut line).unwrap();
    // kubectl writes a line per connection: keep reading so it never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let local = line.split("127.0.0.1:").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("").to_string();
    let out = Command::new("curl").args(["-sS", "--max-time", "5"]).arg(format!("http://127.0.0.1:{local}/")).output().unwrap();
    let _ = pf.kill();
    let _ = pf.wait();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n", "{line} {}", String::from_utf8_lossy(&out.stderr));

    // alice may get pods, not proxy to them: refused, and nothing reached the listener.
    s.k_stdin(
        &["apply", "-f", "-"],
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader}\nrules:\n- {apiGroups: [''], resources: [pods, services], verbs: [get, list]}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: alice}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}\nsubjects:\n- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}\n",
    );
    assert!(s.kubectl(&["--as=alice", "get", "pod", "listener"]).status.success());
    for (path, upgrade) in [("/api/v1/namespaces/default/pods/listener:9000/proxy/", false), ("/api/v1/namespaces/default/pods/listener:9000/proxy/ws", true)] {
        let mut args = vec!["-H", "Impersonate-User: alice"];
        if upgrade {
            args.extend(["-H", "Connection: Upgrade", "-H", "Upgrade: websocket"]);
        }
        let (code, body) = admin_get(&s, path, &args);
        assert!(code == 403 && body.contains("cannot get resource \\\"pods/proxy\\\""), "{code} {body}");
    }
    let (code, body) = admin_get(&s, "/api/v1/namespaces/default/services/web:http/proxy/", &["-H", "Impersonate-User: alice"]);
    assert!(code == 403 && body.contains("services/proxy"), "{code} {body}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.k(&["logs", "listener"]), "", "a refused request reached the backend");
    // The same request from the admin does reach it (so the check above could fail).
    let reached = admin_get(&s, "/api/v1/namespaces/default/pods/listener:9000/proxy/", &["--max-time", "2"]);
    assert!(eventually(Duration::from_secs(5), || s.k(&["logs", "listener"]).contains("GET / HTTP/1.1")), "{} {reached:?}", s.k(&["logs", "listener"]));

    // An upgrade the backend does not take, and one whose backend is down: answered and
    // the connection closed.
    for path in ["/api/v1/namespaces/default/services/web:http/proxy/", "/api/v1/namespaces/default/pods/web:9999/proxy/"] {
        let out = s
            .admin_curl()
            .args(["-sS", "-i", "--max-time", "5", "--http1.1", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
            .arg(format!("{}{path}", s.url))
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(!head.starts_with("http/1.1 101") && head.contains("connection: close"), "{path}: {head}");
    }
}
