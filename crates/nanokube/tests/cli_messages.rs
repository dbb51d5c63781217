//! What a new user runs into says what is wrong and what to do: no HOME, a data directory
//! that cannot be made, a kubeconfig that does not parse, a proxy with no cluster, a
//! server that is down; Ctrl-C says it stops. The proxy's `--keepalive` and
//! `--append-server-path` are kubectl's.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::Server;

fn nanokube(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nanokube"));
    c.args(args);
    c
}

fn fails_saying(mut c: Command, words: &[&str]) {
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
}

#[test]
fn server_problems_name_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = nanokube(&["server", "--secure-port", "0"]);
    c.env_remove("HOME").env_remove("KUBECONFIG");
    fails_saying(c, &["HOME is not set", "--data-dir"]);
    fails_saying(
        nanokube(&["server", "--secure-port", "0", "--merge-kubeconfig=false", "--data-dir", "/proc/nanokube-test"]),
        &["cannot create the data directory /proc/nanokube-test", "--data-dir"],
    );
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    fails_saying(nanokube(&["server", "--secure-port", "0", "--merge-kubeconfig=false", "--data-dir", file.to_str().unwrap()]), &["is not a directory"]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".kube")).unwrap();
    std::fs::write(home.join(".kube/config"), "garbage: [\n").unwrap();
    let mut c = nanokube(&["server", "--secure-port", "0", "--data-dir", dir.path().join("data").to_str().unwrap()]);
    c.env("HOME", &home).env_remove("KUBECONFIG");
    fails_saying(c, &[&home.join(".kube/config").display().to_string(), "--merge-kubeconfig=false"]);
}

#[test]
fn proxy_problems_name_the_file_or_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = nanokube(&["proxy", "--port", "0"]);
    c.env("HOME", dir.path()).env_remove("KUBECONFIG").env_remove("KUBERNETES_SERVICE_HOST");
    fails_saying(c, &["no kubeconfig found", "not in a pod", "nanokube server"]);
    let garbage = dir.path().join("garbage.kubeconfig");
    std::fs::write(&garbage, "garbage: 1\n").unwrap();
    fails_saying(nanokube(&["proxy", "--port", "0", "--kubeconfig", garbage.to_str().unwrap()]), &[&garbage.display().to_string(), "no current-context"]);
    fails_saying(nanokube(&["proxy", "--port", "0", "--keepalive", "3x"]), &["--keepalive", "3x"]);
}

fn start_proxy(args: &[&str]) -> (std::process::Child, u16) {
    let mut child = nanokube(&["proxy", "--port", "0"]).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
    (child, port)
}

fn get(port: u16, path: &str) -> (String, String) {
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_code}"]).arg(format!("http://127.0.0.1:{port}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

#[test]
fn proxy_keepalive_append_server_path_and_a_server_that_is_down() {
    let mut s = Server::start();
    // The kubeconfig's server URL with a path: kubectl proxy drops it unless asked.
    let kc = std::fs::read_to_string(s.kubeconfig()).unwrap().replace(&s.url, &format!("{}/prefix", s.url));
    let with_path = s.dir.path().join("with-path.kubeconfig");
    std::fs::write(&with_path, kc).unwrap();
    let (mut plain, port) = start_proxy(&["--kubeconfig", with_path.to_str().unwrap(), "--keepalive", "30s"]);
    assert_eq!(get(port, "/api/v1/namespaces").0, "200");
    let (mut appended, port2) = start_proxy(&["--kubeconfig", with_path.to_str().unwrap(), "--append-server-path"]);
    assert_eq!(get(port2, "/api/v1/namespaces").0, "404", "/prefix/api/v1/namespaces is not the API");
    let _ = appended.kill();
    let _ = appended.wait();
    // The server goes away: the proxy says which server it could not reach.
    s.kill9();
    let (code, body) = get(port, "/api/v1/namespaces");
    assert_eq!(code, "502");
    assert!(body.contains(&format!("error trying to reach the API server at {}/prefix", s.url)) && body.contains("onnect"), "{body}");
    let _ = plain.kill();
    let _ = plain.wait();
}

#[test]
fn ctrl_c_says_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = nanokube(&["server", "--secure-port", "0", "--merge-kubeconfig=false", "--data-dir", dir.path().join("data").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().starts_with("nanokube is ready at")));
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupt: stopping") && err.contains("nanokube: stopped"), "{err}");
    assert!(!dir.path().join("data/state.db-in-use").exists(), "stopped cleanly");
}

#[test]
fn the_server_outlives_a_closed_stdout() {
    // `nanokube server | head -1`: whoever reads the ready line may be gone before the
    // server writes the next one. Here its stdout is a pipe nobody reads from at all.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child =
        nanokube(&["server", "--secure-port", &port.to_string(), "--merge-kubeconfig=false", "--data-dir", dir.path().join("data").to_str().unwrap()])
            .stdout(writer)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let ready = common::eventually(std::time::Duration::from_secs(15), || {
        Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &format!("https://127.0.0.1:{port}/readyz")])
            .output()
            .is_ok_and(|o| o.stdout == b"200")
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alive = child.try_wait().unwrap().is_none();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(ready && alive, "the server died when its stdout was closed ({status})");
    assert!(status.success(), "{status}");
}
