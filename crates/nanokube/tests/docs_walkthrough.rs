//! `docs/walkthrough.md`, as a new user runs it: a `nanokube server` with its defaults
//! (data in `~/.nanokube`, a context merged into `~/.kube/config`, in a fresh HOME), then
//! every shell block of the document after "Start a cluster", in order, in one bash
//! session. The only changes: the binary's path, free ports instead of 6443/8080/8081/8001
//! (tests run side by side), and a wait for each background proxy to listen before the
//! next command uses it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, kubectl_path, KillOnDrop};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The shell blocks of the walkthrough after the first (the server start).
fn shell_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(current.take().unwrap_or_default()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks.into_iter().skip(1).collect()
}

/// Deletes every pod of the cluster the kubeconfig names, when dropped.
struct DeletePodsOnDrop(std::path::PathBuf);

impl Drop for DeletePodsOnDrop {
    fn drop(&mut self) {
        let _ = Command::new(kubectl_path("kubectl"))
            .args(["--kubeconfig"])
            .arg(&self.0)
            .args(["delete", "pods", "--all", "-A", "--grace-period=1", "--timeout=30s"])
            .output();
    }
}

#[test]
fn the_walkthrough_runs_as_written() {
    let home = tempfile::tempdir().unwrap();
    let server_port = free_port();
    // Docker Hub is out of reach here: `busybox` comes from a real registry on a loopback
    // port holding an image built from Debian's busybox-static, mirrored for docker.io.
    let registry = common::start_registry();
    let (archive, _) = common::build_image(home.path(), "busybox:latest");
    common::skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("docker-archive:{}", archive.display()),
        &format!("docker://127.0.0.1:{}/library/busybox:latest", registry.port),
    ]);
    let mirror = format!("--registry-mirror=docker.io=127.0.0.1:{}", registry.port);
    let bin = env!("CARGO_BIN_EXE_nanokube");
    let kubectl_dir = kubectl_path("kubectl").parent().unwrap().to_path_buf();
    let path = format!("{}:{}", kubectl_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new(bin)
        .args(["server", "--secure-port", &server_port.to_string(), &mirror])
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read every line, so the server never writes into a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("nanokube is ready at") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("the server did not start");
    // Whatever happens below, the walkthrough's pods go before the server does (dropped
    // first): containers outlive a killed server by design.
    let _pods = DeletePodsOnDrop(home.path().join(".kube/config"));

    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/walkthrough.md")).unwrap();
    let (p8080, p8081, p8001) = (free_port(), free_port(), free_port());
    let mut script = String::from("cd \"$HOME\"\n");
    for block in shell_blocks(&doc) {
        for line in block.lines() {
            let line = line
                .replace("./target/release/nanokube", bin)
                .replace("8080", &p8080.to_string())
                .replace("8081", &p8081.to_string())
                .replace("8001", &p8001.to_string())
                .replace("KUBERNETES_SERVICE_PORT=6443", &format!("KUBERNETES_SERVICE_PORT={server_port}"));
            script.push_str(&line);
            script.push('\n');
            if line.trim_end().ends_with('&') && !line.trim_end().ends_with("&&") {
                let port = [p8080, p8081, p8001].into_iter().find(|p| line.contains(&format!("--port={p}"))).expect("a background proxy with a port");
                script.push_str(&format!("for i in $(seq 100); do curl -s -o /dev/null http://localhost:{port}/ && break; sleep 0.1; done\n"));
            }
        }
    }
    script.push_str("kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; true\n");
    // `mktemp -d` in the document makes its directories under the test's own HOME.
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("HOME", home.path())
        .env("TMPDIR", home.path())
        .env_remove("KUBECONFIG")
        .env("PATH", &path)
        .output()
        .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // §2: kubectl against the merged context.
    assert!(text.contains(&format!("server: https://127.0.0.1:{server_port}")), "{text}");
    assert!(text.contains("deployment.apps/web created"), "{text}");
    // §3a: both proxies answer APIVersions; exec is filtered.
    assert!(text.matches(r#""kind": "APIVersions""#).count() + text.matches(r#""kind":"APIVersions""#).count() >= 4, "{text}");
    assert!(text.contains("403 Forbidden") || text.contains("HTTP/1.1 403"), "{text}");
    // §3b: the legacy token is the default ServiceAccount's, which may not list pods; a
    // short-lived token reviews itself.
    assert!(text.contains(r#"User \"system:serviceaccount:default:default\" cannot list resource \"pods\""#), "{text}");
    assert!(text.contains(r#""kind": "SelfSubjectReview""#) || text.contains(r#""kind":"SelfSubjectReview""#), "{text}");
    // §3c: no --insecure: an unknown CA is refused; a client certificate works; jane is
    // forbidden, then allowed through a RoleBinding.
    assert!(text.contains("curl: (60)"), "curl refuses the unknown CA: {text}");
    assert!(text.contains("jane") && text.contains("devs"), "{text}");
    assert!(text.contains(r#"User "jane" cannot list resource "pods""#), "{text}");
    assert!(text.contains("rolebinding.rbac.authorization.k8s.io/jane-view created"), "{text}");
    // §5: the sidecar proxy with a service account's files: RBAC has granted it nothing.
    assert!(text.contains(r#"User \"system:serviceaccount:default:sidecar\" cannot list resource \"pods\""#), "{text}");
    // And a real pod (pulled through the registry) read its own service-account files.
    assert!(text.contains("pod/demo created"), "{text}");
    assert!(text.contains("pod/demo condition met"), "{text}");
    assert!(text.contains("default\nca.crt\nnamespace\ntoken\n"), "{text}");
    let kubeconfig = home.path().join(".kube/config");
    let out = Command::new(kubectl_path("kubectl"))
        .args(["--kubeconfig"])
        .arg(&kubeconfig)
        .args(["get", "events", "--field-selector", "involvedObject.name=demo"])
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains("Successfully pulled image \"busybox\""), "{events}");
    // §6 (S15): exec into a running pod: output, stdin, the exit code, cp.
    assert!(text.contains("pod/shell condition met"), "{text}");
    assert!(text.contains("hello from shell\n"), "{text}");
    assert!(text.contains("typed in\n"), "{text}");
    assert!(text.contains("command terminated with exit code 3") && text.contains("exit code 3\n"), "{text}");
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert!(text.contains(&hostname), "{text}");
    // §5 (S12): the sidecar in a pod lists pods with the service account's view.
    assert!(text.contains("{\"kind\":\"PodList\""), "{text}");
    // §6: a debug container saw the target's process; run -i --rm echoed and cleaned up.
    assert!(text.contains("sleep 3600") && text.contains("pod \"once\" deleted"), "{text}");
    // §7: the dashboard's address, the page through kubectl proxy, and the access map
    // naming the default service account that §3b's curl used.
    assert!(text.contains(&format!("The dashboard: https://127.0.0.1:{server_port}/dashboard/")), "{text}");
    assert!(text.contains("<title>nanokube dashboard</title>"), "{text}");
    assert!(text.contains("\nsystem:serviceaccount:default:default\n"), "{text}");
    // Nothing of the pods is left once they are deleted (§2's Deployment with them).
    let out =
        Command::new(kubectl_path("kubectl")).args(["--kubeconfig"]).arg(&kubeconfig).args(["delete", "deployment", "web", "--wait=true"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(kubectl_path("kubectl"))
        .args(["--kubeconfig"])
        .arg(&kubeconfig)
        .args(["delete", "pod", "demo", "shell", "with-proxy", "--grace-period=1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(eventually(Duration::from_secs(10), || std::fs::read_dir(home.path().join(".nanokube/pods")).map(|d| d.count() == 0).unwrap_or(true)));
}
