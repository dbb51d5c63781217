//! Acknowledged writes survive a crash (SIGKILL) of the server, and a restart keeps
//! everything: objects, resourceVersions, certificates and the kubeconfig.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;

/// POST a ConfigMap with curl; true only when the server answered 201.
fn create(data: &std::path::Path, url: &str, name: &str) -> bool {
    common::post_configmap(data, url, name, 5) == 201
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut s = Server::start();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (acked, stop, data, url) = (acked.clone(), stop.clone(), s.data.clone(), s.url.clone());
        writers.push(std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("w{w}-{i}");
                if create(&data, &url, &name) {
                    acked.lock().unwrap().push(name);
                } else if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }));
    }
    // Crash the server in the middle of the burst.
    assert!(common::eventually(Duration::from_secs(60), || acked.lock().unwrap().len() >= 150));
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 150);

    s.restart();
    let (code, list) = s.get_json("/api/v1/namespaces/default/configmaps");
    assert_eq!(code, 200);
    let stored: std::collections::HashSet<String> =
        list["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()).collect();
    let missing: Vec<&String> = acked.iter().filter(|n| !stored.contains(*n)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged writes lost after SIGKILL: {:?}", missing.len(), acked.len(), &missing[..missing.len().min(10)]);
    // Every stored object is intact.
    for item in list["items"].as_array().unwrap() {
        let name = item["metadata"]["name"].as_str().unwrap();
        if name.starts_with('w') {
            assert_eq!(item["data"]["k"], name);
        }
    }
}

#[test]
fn restart_keeps_objects_versions_certificates_and_kubeconfig() {
    let mut s = Server::start();
    s.k(&["create", "namespace", "keep"]);
    s.k(&["create", "configmap", "c", "--from-literal=a=1", "-n", "keep"]);
    s.k(&["create", "service", "nodeport", "np", "--tcp=80:80", "-n", "keep"]);
    let before_cm = s.get_json("/api/v1/namespaces/keep/configmaps/c").1;
    let before_svc = s.get_json("/api/v1/namespaces/keep/services/np").1;
    let files = ["ca.crt", "ca.key", "apiserver.crt", "client.crt", "client.key", "sa.key", "kubeconfig"];
    let read = |s: &Server| files.iter().map(|f| std::fs::read(s.data.join(f)).unwrap()).collect::<Vec<_>>();
    let before_files = read(&s);
    let list_rv = s.get_json("/api/v1/namespaces/keep/configmaps").1["metadata"]["resourceVersion"].clone();

    s.stop();
    s.restart();
    assert_eq!(read(&s), before_files, "certificates and kubeconfig are reused, not rewritten");
    let after_cm = s.get_json("/api/v1/namespaces/keep/configmaps/c").1;
    assert_eq!(after_cm, before_cm, "object and its resourceVersion unchanged");
    let after_svc = s.get_json("/api/v1/namespaces/keep/services/np").1;
    assert_eq!(after_svc["spec"], before_svc["spec"], "ClusterIP and NodePort kept");
    let rv_after = s.get_json("/api/v1/namespaces/keep/configmaps").1["metadata"]["resourceVersion"].clone();
    assert!(rv_after.as_str().unwrap().parse::<i64>().unwrap() >= list_rv.as_str().unwrap().parse::<i64>().unwrap());
    // Writes continue the revision sequence, and a new node port never collides.
    s.k(&["create", "configmap", "d", "-n", "keep"]);
    let d = s.get_json("/api/v1/namespaces/keep/configmaps/d").1;
    assert!(
        d["metadata"]["resourceVersion"].as_str().unwrap().parse::<i64>().unwrap()
            > before_cm["metadata"]["resourceVersion"].as_str().unwrap().parse::<i64>().unwrap()
    );
    let port = before_svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    let dup =
        format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"dup"}},"spec":{{"type":"NodePort","ports":[{{"port":80,"nodePort":{port}}}]}}}}"#);
    assert_eq!(s.curl("POST", "/api/v1/namespaces/keep/services", Some("application/json"), Some(dup.as_bytes())).0, 422);
    // kubectl still works with the same kubeconfig.
    assert!(s.k(&["get", "cm", "-n", "keep"]).contains("c "));
}

#[test]
fn database_file_is_a_readable_sqlite_log() {
    let mut s = Server::start();
    s.k(&["create", "configmap", "inspect-me"]);
    s.k(&["delete", "configmap", "inspect-me"]);
    s.stop();
    // Users can open state.db with any SQLite tool: one row per change, kine-style.
    let db = rusqlite::Connection::open(s.data.join("state.db")).unwrap();
    let rows: Vec<(i64, i64)> = db
        .prepare("SELECT revision, deleted FROM log WHERE key = '/registry/configmaps/default/inspect-me' ORDER BY revision")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 2, "a create row and a delete row");
    assert!(rows[0].0 < rows[1].0);
    assert_eq!((rows[0].1, rows[1].1), (0, 1));
}

/// After a crash the latest writes may live only in `state.db-wal`: a database whose log
/// went missing is refused (it would serve an older state as the present one), until the
/// operator deletes the in-use marker to accept what the database file holds.
#[test]
fn a_crashed_store_without_its_write_ahead_log_is_refused() {
    let mut s = Server::start();
    s.k(&["create", "configmap", "after-checkpoint", "--from-literal=a=b"]);
    s.kill9();
    assert!(s.data.join("state.db-in-use").exists(), "the marker stays after a crash");
    std::fs::remove_file(s.data.join("state.db-wal")).unwrap();
    let _ = std::fs::remove_file(s.data.join("state.db-shm"));
    let err = common::server_refuses(&s.data, "without its log");
    assert!(err.contains("state.db-wal is missing") && err.contains("was not closed cleanly") && err.contains("state.db-in-use"), "{err}");
    // Accepting the loss is the operator's call: without the marker it starts.
    std::fs::remove_file(s.data.join("state.db-in-use")).unwrap();
    s.restart();
    assert_eq!(s.get_json("/api/v1/namespaces").0, 200);
    // A crash with the log in place restarts as always.
    s.kill9();
    s.restart();
    assert_eq!(s.get_json("/api/v1/namespaces").0, 200);
    // A clean stop checkpoints the log into the file and takes the marker away, so
    // another SQLite tool may open the file (and delete the log) in between.
    s.stop();
    assert!(!s.data.join("state.db-in-use").exists(), "a clean stop leaves no marker");
    rusqlite::Connection::open(s.data.join("state.db")).unwrap().close().unwrap();
    assert!(!s.data.join("state.db-wal").exists());
    s.restart();
    assert_eq!(s.get_json("/api/v1/namespaces").0, 200);
}
