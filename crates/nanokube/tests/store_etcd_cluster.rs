//! Three etcd members and three nanokube servers on loopback ports, under eight
//! concurrent writers spread over the servers: `kill -9` one server, then one etcd
//! member. Every write acknowledged with 201 is readable afterwards from every surviving
//! server; a watch on a surviving server sees every event once, in order; controller
//! leadership moves within its Lease. Then every etcd member stops: requests fail with a
//! 5xx Status and `/readyz` reports the etcd check failing; when etcd returns everything
//! resumes and nothing acknowledged is lost.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{eventually, Server};
use nanokube_store::local_etcd::LocalEtcd;

/// POST a ConfigMap with curl as the admin of `data`; the HTTP status (0: no answer).
fn post(data: &Path, url: &str, name: &str) -> u16 {
    common::post_configmap(data, url, name, 15)
}

fn names(s: &Server) -> BTreeSet<String> {
    s.k(&["get", "configmaps", "-o", "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}"])
        .lines()
        .filter(|l| l.starts_with("w-"))
        .map(String::from)
        .collect()
}

#[test]
fn three_servers_on_three_members_lose_nothing() {
    let mut etcd = LocalEtcd::start(3).unwrap();
    let eps = etcd.endpoints().join(",");
    let args = ["--etcd-servers", eps.as_str(), "--node=false"];
    let mut a = Server::start_with(&args);
    let holder = |s: &Server| s.k(&["get", "lease", "-n", "kube-system", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"]);
    assert!(eventually(Duration::from_secs(10), || !holder(&a).is_empty()));
    let leader = holder(&a);
    let mut joined = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        for f in ["ca.crt", "ca.key", "sa.key", "sa.pub"] {
            std::fs::copy(a.data.join(f), data.join(f)).unwrap();
        }
        joined.push((Server::start_logging_to(&data, Path::new("/dev/null"), &args), dir));
    }
    let (b, c) = (&joined[0].0, &joined[1].0);

    // The watch on C.
    let mut watch = Command::new(common::kubectl_path("kubectl"))
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["get", "configmaps", "-w", "--output-watch-events", "--request-timeout=0", "-o"])
        .arg("custom-columns=EVENT:.type,NAME:.object.metadata.name,RV:.object.metadata.resourceVersion")
        .arg("--no-headers")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen: Arc<Mutex<Vec<(String, String, i64)>>> = Arc::default();
    {
        let seen = seen.clone();
        let lines = BufReader::new(watch.stdout.take().unwrap());
        std::thread::spawn(move || {
            for l in lines.lines().map_while(Result::ok) {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() == 3 && f[1].starts_with("w-") {
                    seen.lock().unwrap().push((f[0].to_string(), f[1].to_string(), f[2].parse().unwrap_or(0)));
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));

    // Eight writers, each going round the three servers.
    let targets: Vec<(std::path::PathBuf, String)> = [&a, b, c].iter().map(|s| (s.data.clone(), s.url.clone())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (targets, stop, acked) = (targets.clone(), stop.clone(), acked.clone());
        writers.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let (data, url) = &targets[(w + i) % targets.len()];
                let name = format!("w-{w}-{i}");
                if post(data, url, &name) == 201 {
                    acked.lock().unwrap().insert(name);
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    a.kill9();
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    etcd.kill(0);
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "only {} writes acknowledged", acked.len());

    // Every acknowledged write is on both survivors.
    for s in [b, c] {
        let listed = names(s);
        let missing: Vec<_> = acked.iter().filter(|n| !listed.contains(*n)).collect();
        assert!(missing.is_empty(), "{} acknowledged writes missing: {missing:?}", missing.len());
    }
    // C's watch saw each once, in order.
    assert!(eventually(Duration::from_secs(10), || seen.lock().unwrap().len() >= acked.len()));
    {
        let seen = seen.lock().unwrap();
        let mut once = HashSet::new();
        let mut last = 0;
        for (ev, name, rv) in seen.iter() {
            assert_eq!(ev, "ADDED");
            assert!(once.insert(name.clone()), "{name} seen twice");
            assert!(*rv > last, "out of order at {name}");
            last = *rv;
        }
        for n in &acked {
            assert!(once.contains(n), "the watch missed {n}");
        }
    }
    // Leadership moved to B or C within the Lease's 15 s and a renewal.
    assert!(eventually(Duration::from_secs(30), || {
        let h = holder(b);
        !h.is_empty() && h != leader
    }));
    assert!(killed_at.elapsed() < Duration::from_secs(35));

    // Every etcd member stops: a clear 5xx, and /readyz names the etcd check.
    etcd.kill(1);
    etcd.kill(2);
    let (code, body) = b.curl("GET", "/api/v1/namespaces/default/configmaps", None, None);
    assert!((500..600).contains(&code), "{code} {body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert!(status["message"].as_str().unwrap().contains("etcd"), "{body}");
    assert!(eventually(Duration::from_secs(10), || {
        let (code, body) = c.curl("GET", "/readyz?verbose", None, None);
        code != 200 && body.contains("[-]etcd failed")
    }));
    assert_ne!(post(&b.data, &b.url, "during-outage"), 201);

    // etcd returns: writes work, nothing acknowledged was lost, the watch goes on.
    etcd.restart_all().unwrap();
    let mut attempt = 0;
    let mut after = String::new();
    assert!(eventually(Duration::from_secs(30), || {
        attempt += 1;
        after = format!("w-after-{attempt}");
        post(&b.data, &b.url, &after) == 201
    }));
    assert!(eventually(Duration::from_secs(10), || c.curl("GET", "/readyz", None, None).0 == 200));
    let listed = names(c);
    assert!(acked.iter().all(|n| listed.contains(n)));
    assert!(listed.contains(&after));
    assert!(eventually(Duration::from_secs(20), || seen.lock().unwrap().iter().any(|(_, n, _)| *n == after)), "the watch on C resumed");
    let _ = watch.kill();
    let _ = watch.wait();
}
