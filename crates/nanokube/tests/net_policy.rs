//! NetworkPolicy between real pods: an ingress policy on a web server lets one client pod
//! in (by pod IP and through the Service, on the named port) and keeps another out; an
//! egress policy then cuts the other client off from a server that has no policy.

mod common;

use std::time::Duration;

use common::{eventually, server_with_image, Server};

fn fetch(s: &Server, from: &str, url: &str) -> bool {
    // (busybox 1.35's wget crashes with -T: timeout(1) bounds it instead.)
    let out = s.kubectl(&["exec", from, "--", "timeout", "5", "wget", "-q", "-O", "-", url]);
    out.status.success()
}

#[test]
fn policies_let_one_client_in_and_keep_another_out() {
    let s = server_with_image();
    let server = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  containers:\n  - name: web\n    image: testbox:1.0\n    command: [sh, -c, 'mkdir /www; echo {name} > /www/index.html; exec httpd -f -p 8080 -h /www']\n    ports: [{{name: http, containerPort: 8080}}]\n---\n"
        )
    };
    let client = |name: &str, role: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{role: {role}}}\nspec:\n  containers:\n  - {{name: c, image: testbox:1.0, command: [sleep, '3600']}}\n---\n")
    };
    let manifests = format!(
        "{}{}{}{}apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: http}}]\n",
        server("web"),
        server("open"),
        client("friend", "friend"),
        client("stranger", "stranger")
    );
    let out = s.k_stdin(&["apply", "-f", "-"], &manifests);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for pod in ["web", "open", "friend", "stranger"] {
        let ok = s.kubectl(&["wait", "--for=condition=Ready", &format!("pod/{pod}"), "--timeout=60s"]);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    }
    let web = format!("http://{}:8080/", s.k(&["get", "pod", "web", "-o", "jsonpath={.status.podIP}"]));
    let open = format!("http://{}:8080/", s.k(&["get", "pod", "open", "-o", "jsonpath={.status.podIP}"]));
    let svc = format!("http://{}/", s.k(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]));
    assert!(eventually(Duration::from_secs(20), || fetch(&s, "stranger", &svc)), "before any policy everyone gets in");
    assert!(fetch(&s, "stranger", &web));

    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\nspec:\n  podSelector:\n    matchLabels: {app: web}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels: {role: friend}\n    ports:\n    - port: http\n";
    let out = s.k_stdin(&["apply", "-f", "-"], policy);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(10), || !fetch(&s, "stranger", &web)), "the stranger still reaches web's IP");
    assert!(!fetch(&s, "stranger", &svc), "the stranger still reaches web's Service");
    assert!(fetch(&s, "friend", &web) && fetch(&s, "friend", &svc), "the friend is kept out");
    assert!(fetch(&s, "stranger", &open), "a pod no policy selects takes everyone");

    // Egress: the stranger may send nothing at all.
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: quiet\nspec:\n  podSelector:\n    matchLabels: {role: stranger}\n  policyTypes: [Egress]\n";
    let out = s.k_stdin(&["apply", "-f", "-"], deny);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(10), || !fetch(&s, "stranger", &open)), "egress is not held");
    assert!(fetch(&s, "friend", &open));
    // Policies gone: traffic flows again.
    s.k(&["delete", "networkpolicy", "web", "quiet"]);
    assert!(eventually(Duration::from_secs(10), || fetch(&s, "stranger", &web) && fetch(&s, "stranger", &open)));
}
