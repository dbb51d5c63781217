//! `kubectl exec` into real containers over WebSocket (`v5.channel.k8s.io`, what kubectl
//! 1.30 and newer speak): stdout and stderr apart, stdin (a 4 MiB checksum), the exit
//! code, a terminal with its size, a command that does not exist; authorization decided
//! before any upgrade, over WebSocket and SPDY alike; a stopped container refused with an
//! answer, never an open connection. (Every kubectl from 1.27, SPDY included, is driven
//! through exec, port-forward and cp in `kubectl_versions.rs`.)

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually, server_with_image, Server};

fn server_with_running_pod() -> Server {
    let s = server_with_image();
    s.k(&["run", "box", "--image=testbox:1.0", "--env=GREETING=hello", "--", "sh", "-c", "while true; do sleep 1; done"]);
    let ok = s.kubectl(&["wait", "--for=condition=Ready", "pod/box", "--timeout=30s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    s
}

fn kubectl_with_stdin(s: &Server, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(common::kubectl_path("kubectl"))
        .args(args)
        .env("KUBECONFIG", s.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn exec_streams_stdin_exit_codes_and_a_terminal() {
    let s = server_with_running_pod();
    // stdout and stderr apart; the container's environment; the exit code.
    let out = s.kubectl(&["exec", "box", "--", "sh", "-c", "echo out $GREETING; echo err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out hello\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("err\n") && err.contains("command terminated with exit code 3"), "{err}");

    // 4 MiB through stdin, checksummed inside.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let expected = {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let o = Command::new("sha256sum").arg(f.path()).output().unwrap();
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
    };
    let out = kubectl_with_stdin(&s, &["exec", "-i", "box", "--", "sh", "-c", "sha256sum | cut -d' ' -f1"], &data);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);

    // A terminal of the size kubectl's own has, under a pseudo-terminal (`script`). The size
    // comes on the resize channel once the process runs (so with containerd too): read it
    // after a moment.
    let script = format!("stty cols 91 rows 33; KUBECONFIG={} kubectl exec -it box -- sh -c 'tty; sleep 0.5; stty size; exit 5'", s.kubeconfig().display());
    let out = Command::new("script").args(["-qec", &script, "/dev/null"]).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(text.contains("/dev/pts/0\n33 91\n"), "{text}");
    assert_eq!(out.status.code(), Some(5), "{text}");

    // A command the image does not have: the runtime's words, as an error.
    let out = s.kubectl(&["exec", "box", "--", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error executing command in container") && err.contains("executable file not found in $PATH"), "{err}");

    // Every kubectl that speaks WebSocket.
    for v in ["1.30", "1.31", "1.32", "1.33"] {
        let out = s.kubectl_bin(&format!("kubectl.{v}"), &["exec", "box", "--", "echo", v]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{v}\n"), "kubectl {v}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn exec_is_authorized_before_the_upgrade_and_refused_cleanly() {
    let s = server_with_running_pod();
    // Reading pods and even `get pods/exec` is not enough: `create` is needed too.
    s.k(&["create", "serviceaccount", "reader"]);
    s.k(&["create", "role", "reader", "--verb=get,list", "--resource=pods,pods/exec"]);
    s.k(&["create", "rolebinding", "reader", "--role=reader", "--serviceaccount=default:reader"]);
    let token = s.k(&["create", "token", "reader"]);
    // A kubeconfig with the token only (a client certificate would be used first).
    let kc = s.dir.path().join("reader.kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority: {}}}}}]\nusers: [{{name: r, user: {{token: {}}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: r}}}}]\ncurrent-context: c\n",
            s.url,
            s.data.join("ca.crt").display(),
            token.trim()
        ),
    )
    .unwrap();
    let out = Command::new(common::kubectl_path("kubectl")).args(["exec", "box", "--", "echo", "in"]).env("KUBECONFIG", &kc).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"pods "box" is forbidden: User "system:serviceaccount:default:reader" cannot create resource "pods/exec" in API group "" in the namespace "default""#),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("in"));

    // Straight with curl: the 403 is the answer to the upgrade itself. `headers` ask for
    // the upgrade; the caller is the reader (with its token) or the admin.
    let upgrade_with = |token: Option<&str>, method: &str, path: &str, headers: &[String]| -> String {
        let mut c = s.admin_curl();
        if let Some(t) = token {
            c = Command::new("curl");
            c.args(["-sk", "-H", &format!("Authorization: Bearer {t}")]);
        }
        c.args(["-s", "-i", "--http1.1", "-m", "10", "-X", method, "-H", "Connection: Upgrade"]);
        for h in headers {
            c.args(["-H", h]);
        }
        let out = c.arg(format!("{}{path}", s.url)).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let upgrade = |token: Option<&str>, path: &str| -> String {
        let headers =
            ["Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol: v5.channel.k8s.io"];
        upgrade_with(token, "GET", path, &headers.map(String::from))
    };
    let answer = upgrade(Some(token.trim()), "/api/v1/namespaces/default/pods/box/exec?command=id&stdout=true");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // The same over SPDY/3.1 (a POST, as kubectl 1.27-1.29 send it), and for portforward.
    let spdy = |token: Option<&str>, path: &str, protocol: &str| -> String {
        upgrade_with(token, "POST", path, &["Upgrade: SPDY/3.1".to_string(), format!("X-Stream-Protocol-Version: {protocol}")])
    };
    let answer = spdy(Some(token.trim()), "/api/v1/namespaces/default/pods/box/exec?command=id&stdout=true", "v4.channel.k8s.io");
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains(r#"cannot create resource \"pods/exec\""#), "{answer}");
    let answer = spdy(Some(token.trim()), "/api/v1/namespaces/default/pods/box/portforward", "portforward.k8s.io");
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains(r#"cannot create resource \"pods/portforward\""#), "{answer}");
    // A protocol neither side shares: refused, not upgraded.
    let answer = spdy(None, "/api/v1/namespaces/default/pods/box/exec?command=id&stdout=true", "v9.channel.k8s.io");
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("unable to negotiate protocol"), "{answer}");
    // The admin is upgraded, with the protocol chosen.
    let answer = spdy(None, "/api/v1/namespaces/default/pods/box/exec?command=true&stdout=true", "v4.channel.k8s.io");
    assert!(answer.starts_with("HTTP/1.1 101") && answer.to_ascii_lowercase().contains("x-stream-protocol-version: v4.channel.k8s.io"), "{answer}");

    // A container that has stopped: an answer (not an upgrade), and the connection ends.
    s.k(&["run", "done", "--image=testbox:1.0", "--restart=Never", "--", "sh", "-c", "exit 0"]);
    let finished = eventually(Duration::from_secs(30), || s.k(&["get", "pod", "done", "-o", "jsonpath={.status.phase}"]) == "Succeeded");
    assert!(finished, "{}\n{}", s.k(&["get", "pod", "done", "-o", "yaml"]), s.k(&["get", "events"]));
    let started = std::time::Instant::now();
    let answer = upgrade(None, "/api/v1/namespaces/default/pods/done/exec?command=id&stdout=true");
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(answer.contains(r#"container not found (\"done\")"#), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(8), "the refused connection was left open");
    // The upgrade is checked for a working one too: 101 and the protocol chosen.
    let answer = upgrade(None, "/api/v1/namespaces/default/pods/box/exec?command=true&stdout=true");
    assert!(answer.starts_with("HTTP/1.1 101") && answer.to_ascii_lowercase().contains("sec-websocket-protocol: v5.channel.k8s.io"), "{answer}");
}
