//! The built-in ingress controller: an Ingress routing two hosts to two Services (real
//! pods, real curl), HTTPS with a certificate from a TLS Secret chosen by SNI, paths,
//! the default IngressClass set by admission, the status address, and an Ingress of
//! another class left alone.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, server_with_image_and, serving_cert};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"]).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn an_ingress_routes_two_hosts_to_two_services_over_http_and_https() {
    let (http, https) = (free_port(), free_port());
    let n = std::process::id() % 200 + 20;
    let s = server_with_image_and(&[
        "--service-proxy=true",
        &format!("--service-cluster-ip-range=127.95.{n}.0/24"),
        &format!("--load-balancer-cidr=127.243.{n}.0/24"),
        &format!("--ingress-http-port={http}"),
        &format!("--ingress-https-port={https}"),
    ]);
    let mut manifests = String::new();
    for app in ["one", "two"] {
        manifests.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {app}\n  labels: {{app: {app}}}\nspec:\n  containers:\n  - name: web\n    image: testbox:1.0\n    command: [sh, -c, 'mkdir -p /www/api; echo {app} > /www/index.html; echo {app}-api > /www/api/index.html; exec httpd -f -p 8080 -h /www']\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: {app}\nspec:\n  selector: {{app: {app}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n"
        ));
    }
    let out = s.k_stdin(&["apply", "-f", "-"], &manifests);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (ca, cert, key) = serving_cert(&["two.example"]);
    let dir = s.dir.path();
    std::fs::write(dir.join("ca.pem"), &ca).unwrap();
    std::fs::write(dir.join("tls.crt"), &cert).unwrap();
    std::fs::write(dir.join("tls.key"), &key).unwrap();
    let out = s.kubectl(&[
        "create",
        "secret",
        "tls",
        "two-tls",
        &format!("--cert={}", dir.join("tls.crt").display()),
        &format!("--key={}", dir.join("tls.key").display()),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // No class named: the default class (admission's DefaultIngressClass) is nanokube.
    let ingress = r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
spec:
  tls:
  - hosts: [two.example]
    secretName: two-tls
  rules:
  - host: one.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: one, port: {number: 80}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: two, port: {name: http}}}}
  - host: two.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: two, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: elsewhere
spec:
  ingressClassName: other
  rules:
  - host: three.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: one, port: {number: 80}}}}
"#;
    let out = s.k_stdin(&["apply", "-f", "-"], ingress);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.k(&["get", "ingressclass", "nanokube", "-o", "jsonpath={.spec.controller}"]), "nanokube.io/ingress");
    assert_eq!(s.k(&["get", "ingress", "web", "-o", "jsonpath={.spec.ingressClassName}"]), "nanokube");
    for pod in ["one", "two"] {
        let ok = s.kubectl(&["wait", "--for=condition=Ready", &format!("pod/{pod}"), "--timeout=60s"]);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    }
    let url = format!("http://127.0.0.1:{http}/");
    assert!(
        eventually(Duration::from_secs(20), || curl(&["-H", "Host: one.example", &url]) == ("200".into(), "one\n".into())),
        "{:?}",
        curl(&["-H", "Host: one.example", &url])
    );
    assert_eq!(curl(&["-H", "Host: two.example", &url]), ("200".into(), "two\n".into()));
    assert_eq!(curl(&["-H", "Host: one.example", &format!("http://127.0.0.1:{http}/api/")]), ("200".into(), "two-api\n".into()), "the longer path wins");
    assert_eq!(curl(&["-H", "Host: nobody.example", &url]).0, "404");
    assert_eq!(curl(&["-H", "Host: three.example", &url]).0, "404", "another class's Ingress is not served");
    // HTTPS with the Secret's certificate, verified against its CA by name.
    let resolve = format!("two.example:{https}:127.0.0.1");
    let ca_path = dir.join("ca.pem").display().to_string();
    assert_eq!(curl(&["--resolve", &resolve, "--cacert", &ca_path, &format!("https://two.example:{https}/")]), ("200".into(), "two\n".into()));
    // The status names the address served; kubectl shows it.
    assert!(eventually(Duration::from_secs(10), || s.k(&["get", "ingress", "web", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"]) == "127.0.0.1"));
    assert_eq!(s.k(&["get", "ingress", "elsewhere", "-o", "jsonpath={.status.loadBalancer.ingress}"]), "");
    let table = s.k(&["get", "ingress", "web"]);
    assert!(table.contains("nanokube") && table.contains("127.0.0.1") && table.contains("one.example,two.example"), "{table}");
}
