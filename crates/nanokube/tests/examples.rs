//! The client-library examples in `examples/` run against a fresh nanokube and do what
//! they say: Python (`kubernetes`), Rust (kube-rs), and curl with `--cacert`.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{kubectl_path, Server};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(s: &Server, mut c: Command) -> String {
    let home = s.dir.path().join("home-examples");
    std::fs::create_dir_all(&home).unwrap();
    let kubectl_dir = kubectl_path("kubectl").parent().unwrap().to_path_buf();
    let out = c
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", &home)
        .env("PATH", format!("{}:{}", kubectl_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn python_example() {
    let s = Server::start();
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "run ./scripts/test.sh (it creates .venv with the kubernetes package)");
    let mut c = Command::new(python);
    c.arg(repo().join("examples/python/list_create_watch.py"));
    let out = run(&s, c);
    assert!(out.contains("namespaces: default, kube-node-lease, kube-public, kube-system"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn rust_example() {
    let s = Server::start();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_nanokube")).parent().unwrap().join("examples/kube_client");
    assert!(bin.exists(), "build it with `cargo build --workspace --all-targets` ({})", bin.display());
    let out = run(&s, Command::new(bin));
    assert!(out.contains("watch: applied example-rust (hello=world)") && out.contains("watch: deleted example-rust"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn curl_example() {
    let s = Server::start();
    let mut c = Command::new("bash");
    c.arg(repo().join("examples/curl/list_create_watch.sh"));
    let out = run(&s, c);
    assert!(out.contains("default kube-node-lease kube-public kube-system"), "{out}");
    let events: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("== watch")).skip(1).collect();
    assert_eq!(events, ["MODIFIED example-curl", "DELETED example-curl"], "{out}");
}
