//! `kubectl get -w` sees ADDED, MODIFIED and DELETED events made by another client, and
//! a watch of a label selector sees objects enter and leave it; watches and continue
//! tokens older than the history answer 410 Expired.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{kubectl_path, Server};
use serde_json::Value;

fn spawn_watch(s: &Server, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let home = s.dir.path().join("home-watch");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = Command::new(kubectl_path("kubectl"))
        .args(args)
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", &home)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, pred: impl Fn(&str) -> bool, what: &str, seen: &mut Vec<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let hit = pred(&l);
            seen.push(l);
            if hit {
                return;
            }
        }
    }
    panic!("no watch line for {what}; saw:\n{}", seen.join("\n"));
}

#[test]
fn get_watch_sees_changes_from_another_client() {
    let s = Server::start();
    let (mut child, rx) = spawn_watch(&s, &["get", "configmaps", "--watch", "--output-watch-events"]);
    let mut seen = Vec::new();
    // The initial list arrives first (kube-root-ca.crt).
    wait_line(&rx, |l| l.contains("kube-root-ca.crt"), "initial list", &mut seen);
    s.k(&["create", "configmap", "watched", "--from-literal=a=1"]);
    wait_line(&rx, |l| l.starts_with("ADDED") && l.contains("watched"), "ADDED", &mut seen);
    s.k(&["label", "configmap", "watched", "x=y"]);
    wait_line(&rx, |l| l.starts_with("MODIFIED") && l.contains("watched"), "MODIFIED", &mut seen);
    s.k(&["delete", "configmap", "watched"]);
    wait_line(&rx, |l| l.starts_with("DELETED") && l.contains("watched"), "DELETED", &mut seen);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn label_selector_watch_sees_objects_enter_and_leave() {
    let s = Server::start();
    s.k(&["create", "configmap", "m"]);
    let (mut child, rx) = spawn_watch(&s, &["get", "configmaps", "-l", "sel=yes", "--watch-only", "--output-watch-events"]);
    let mut seen = Vec::new();
    std::thread::sleep(Duration::from_millis(500));
    s.k(&["label", "configmap", "m", "sel=yes"]);
    wait_line(&rx, |l| l.split_whitespace().take(2).eq(["ADDED", "m"]), "entering the selector", &mut seen);
    s.k(&["label", "configmap", "m", "sel=no", "--overwrite"]);
    wait_line(&rx, |l| l.split_whitespace().take(2).eq(["DELETED", "m"]), "leaving the selector", &mut seen);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn watch_from_resource_version_replays_and_a_future_one_is_504() {
    let s = Server::start();
    let (_, list) = s.get_json("/api/v1/namespaces/default/configmaps");
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    s.k(&["create", "configmap", "a1"]);
    s.k(&["create", "configmap", "a2"]);
    // A finite watch (timeoutSeconds) from the list's revision replays exactly the two creates.
    let (code, body) = s.curl("GET", &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=1"), None, None);
    assert_eq!(code, 200);
    let events: Vec<serde_json::Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<(&str, &str)> = events.iter().map(|e| (e["type"].as_str().unwrap(), e["object"]["metadata"]["name"].as_str().unwrap())).collect();
    assert_eq!(names, [("ADDED", "a1"), ("ADDED", "a2")]);
    // sendInitialEvents: the state, then a bookmark marking its end (kind and apiVersion set).
    let (_, body) = s.curl(
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1",
        None,
        None,
    );
    let events: Vec<serde_json::Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "BOOKMARK");
    assert_eq!(last["object"]["kind"], "ConfigMap");
    assert_eq!(last["object"]["apiVersion"], "v1");
    assert_eq!(last["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
    assert_eq!(events.iter().filter(|e| e["type"] == "ADDED").count(), 3);
    // A revision newer than the store's is refused with 504 and a Retry-After.
    let (code, body) = s.curl("GET", "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=999999", None, None);
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("Too large resource version"));
}

#[test]
fn a_watch_or_a_continue_older_than_the_history_is_410_expired() {
    let s = Server::start_with(&["--watch-history", "20"]);
    let cms = "/api/v1/namespaces/default/configmaps";
    let create = |name: &str| {
        let body = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#);
        let (code, out) = s.curl("POST", cms, Some("application/json"), Some(body.as_bytes()));
        assert_eq!(code, 201, "{out}");
    };
    create("first");
    let (_, page) = s.get_json(&format!("{cms}?limit=1"));
    let rv = page["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    for i in 0..30 {
        create(&format!("churn-{i}"));
    }

    // A watch from a revision the history no longer holds: 200, then one ERROR event
    // carrying 410 Expired, and the stream ends (as kube-apiserver's watch cache does).
    let (code, body) = s.curl("GET", &format!("{cms}?watch=true&resourceVersion={rv}"), None, None);
    assert_eq!(code, 200, "{body}");
    let events: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    assert!(events[0]["object"]["message"].as_str().unwrap().starts_with(&format!("too old resource version: {rv} (")), "{body}");

    // The first page's continue token pins that revision too: 410, with a token that
    // goes on at the newest revision.
    let (code, body) = s.curl("GET", &format!("{cms}?limit=1&continue={token}"), None, None);
    assert_eq!(code, 410, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["reason"], "Expired");
    assert!(!st["metadata"]["continue"].as_str().unwrap().is_empty(), "{body}");

    // A watch from the current revision works as ever.
    let now = s.get_json(cms).1["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let (code, body) = s.curl("GET", &format!("{cms}?watch=true&resourceVersion={now}&timeoutSeconds=1"), None, None);
    assert_eq!((code, body.as_str()), (200, ""));
}
