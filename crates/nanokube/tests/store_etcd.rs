//! `nanokube server --etcd-servers`: the cluster stored in real etcd members on loopback
//! ports, reached through the real kubectl. Keys are kube-apiserver's; writes survive a
//! `kill -9` of the server; two servers on one etcd serve one cluster (a write on one is
//! read and watched on the other at once, tokens of one are accepted by the other, and
//! controller leadership moves when the leader dies); objects an older nanokube wrote
//! under its own key layout are moved to upstream's on start.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, Server};
use nanokube_store::local_etcd::LocalEtcd;

/// kubectl's output without its final newline.
fn kt(s: &Server, args: &[&str]) -> String {
    s.k(args).trim_end().to_string()
}

/// Keys under `prefix` in etcd, read with etcd's own client.
fn etcd_keys(etcd: &LocalEtcd, prefix: &str) -> Vec<(String, i64, i64)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
        let got = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
        got.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.mod_revision(), kv.lease())).collect()
    })
}

/// One raw value in etcd.
fn etcd_value(etcd: &LocalEtcd, key: &str) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
        c.get(key, None).await.unwrap().kvs().first().map(|kv| kv.value().to_vec()).unwrap_or_default()
    })
}

#[test]
fn a_server_on_etcd_keeps_kube_apiservers_layout_and_survives_kill9() {
    let etcd = LocalEtcd::start(1).unwrap();
    let eps = etcd.endpoints().join(",");
    let mut s = Server::start_with(&["--etcd-servers", &eps, "--node=false"]);
    kt(&s, &["create", "deployment", "web", "--image=registry.example/web:1"]);
    kt(&s, &["create", "configmap", "settings", "--from-literal=a=b"]);
    kt(&s, &["create", "service", "clusterip", "api", "--tcp=80:8080"]);
    let rv = kt(&s, &["get", "configmap", "settings", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let keys = etcd_keys(&etcd, "/registry/");
    let has = |k: &str| keys.iter().find(|(key, _, _)| key == k).cloned();
    assert!(has("/registry/deployments/default/web").is_some(), "{keys:?}");
    assert!(has("/registry/services/specs/default/api").is_some());
    assert!(has("/registry/services/specs/default/kubernetes").is_some());
    assert!(has("/registry/namespaces/kube-system").is_some());
    assert!(has("/registry/clusterroles/cluster-admin").is_some());
    let (_, mod_rev, _) = has("/registry/configmaps/default/settings").unwrap();
    // Values in kube-apiserver's encoding: protobuf with the `k8s\0` envelope.
    assert!(etcd_value(&etcd, "/registry/configmaps/default/settings").starts_with(b"k8s\0\n\x0f\n\x02v1\x12\tConfigMap"));
    assert!(etcd_value(&etcd, "/registry/deployments/default/web").starts_with(b"k8s\0"));
    assert_eq!(rv, mod_rev.to_string(), "resourceVersion is etcd's revision");
    // The Deployment controller's ReplicaSet and its Event, with the Event on a lease.
    assert!(eventually(Duration::from_secs(20), || etcd_keys(&etcd, "/registry/events/default/").iter().any(|(_, _, lease)| *lease != 0)));
    assert!(etcd_keys(&etcd, "/registry/events/").iter().all(|(_, _, lease)| *lease != 0), "every Event has a lease");
    assert!(etcd_keys(&etcd, "/registry/configmaps/").iter().all(|(_, _, lease)| *lease == 0));

    s.kill9();
    s.restart();
    assert_eq!(kt(&s, &["get", "configmap", "settings", "-o", "jsonpath={.metadata.resourceVersion}"]), rv);
    assert_eq!(kt(&s, &["get", "deployment", "web", "-o", "name"]), "deployment.apps/web");
    // Lists and watches go on from the same revisions.
    let list_rv = kt(&s, &["get", "--raw", "/api/v1/namespaces/default/configmaps"]);
    let list: serde_json::Value = serde_json::from_str(&list_rv).unwrap();
    assert!(list["metadata"]["resourceVersion"].as_str().unwrap().parse::<i64>().unwrap() >= mod_rev);
}

/// A second server's data directory: the first's CA and service-account keys copied in,
/// as kubeadm's "copy the certificates" step.
fn join_dir(first: &Server) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["ca.crt", "ca.key", "sa.key", "sa.pub"] {
        std::fs::copy(first.data.join(f), data.join(f)).unwrap();
    }
    dir
}

#[test]
fn two_servers_on_one_etcd_serve_one_cluster() {
    let etcd = LocalEtcd::start(1).unwrap();
    let eps = etcd.endpoints().join(",");
    let mut a = Server::start_with(&["--etcd-servers", &eps, "--node=false"]);
    // A leads the controllers before B exists.
    let holder = |srv: &Server| kt(srv, &["get", "lease", "-n", "kube-system", "kube-controller-manager", "-o", "jsonpath={.spec.holderIdentity}"]);
    assert!(eventually(Duration::from_secs(10), || !holder(&a).is_empty()));
    let leader = holder(&a);
    let b_dir = join_dir(&a);
    let b = Server::start_logging_to(&b_dir.path().join("data"), std::path::Path::new("/dev/null"), &["--etcd-servers", &eps, "--node=false"]);

    // A watch on B; writes on A reach it in order, each once.
    let mut watch = Command::new(common::kubectl_path("kubectl"))
        .arg("--kubeconfig")
        .arg(b.kubeconfig())
        .args(["get", "configmaps", "-w", "--output-watch-events", "-o", "custom-columns=EVENT:.type,NAME:.object.metadata.name", "--no-headers"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = BufReader::new(watch.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // kube-root-ca.crt exists already: wait for the initial ADDED, then write.
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("kube-root-ca.crt"), "{first}");
    for i in 0..5 {
        kt(&a, &["create", "configmap", &format!("from-a-{i}")]);
        // Read on B right after A answered: a consistent read sees it.
        assert_eq!(kt(&b, &["get", "configmap", &format!("from-a-{i}"), "-o", "name"]), format!("configmap/from-a-{i}"));
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 5 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen, (0..5).map(|i| format!("ADDED from-a-{i}")).collect::<Vec<_>>());

    // B's update of what A wrote, and a stale update through A, conflict as on one server.
    let rv = kt(&a, &["get", "configmap", "from-a-0", "-o", "jsonpath={.metadata.resourceVersion}"]);
    kt(&b, &["label", "configmap", "from-a-0", "by=b"]);
    let stale = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"from-a-0","resourceVersion":"{rv}"}}}}"#);
    let out = a.k_stdin(&["replace", "-f", "-"], &stale);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("the object has been modified"), "{out:?}");

    // A token A issued is accepted by B (the same service-account key).
    kt(&a, &["create", "serviceaccount", "robot"]);
    kt(&a, &["create", "clusterrolebinding", "robot-view", "--clusterrole=view", "--serviceaccount=default:robot"]);
    let token = kt(&a, &["create", "token", "robot"]);
    let (code, body) = b.curl_as(Some(&token), "GET", "/api/v1/namespaces/default/configmaps/from-a-1", None, None);
    assert_eq!(code, 200, "{body}");

    // A leads the controllers; when it dies B takes over within the Lease's 15 s (and a
    // renewal period), and B's controllers act.
    assert_eq!(holder(&b), leader, "B waits while A renews");
    a.kill9();
    let started = Instant::now();
    assert!(eventually(Duration::from_secs(40), || {
        let h = holder(&b);
        !h.is_empty() && h != leader
    }));
    assert!(started.elapsed() < Duration::from_secs(25), "leadership moved after {:?}", started.elapsed());
    kt(&b, &["create", "deployment", "after", "--image=registry.example/after:1"]);
    assert!(eventually(Duration::from_secs(30), || kt(&b, &["get", "rs", "-l", "app=after", "-o", "name"]).starts_with("replicaset.apps/after-")));
}

#[test]
fn objects_in_the_old_key_layout_are_moved_on_start() {
    use nanokube_store::sqlite::{SqliteBackend, SqliteOptions};
    use nanokube_store::Backend;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        // What nanokube wrote before it followed upstream's layout.
        let store = SqliteBackend::open(SqliteOptions { path: Some(data.join("state.db")), ..Default::default() }).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dep = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"old","namespace":"default","uid":"0b5e3c6e-0000-4000-8000-000000000001","creationTimestamp":"2026-01-01T00:00:00Z","generation":1},"spec":{"replicas":0,"selector":{"matchLabels":{"app":"old"}},"template":{"metadata":{"labels":{"app":"old"}},"spec":{"containers":[{"name":"c","image":"x"}]}}}}"#;
            store.create("/registry/apps/deployments/default/old".into(), dep.into()).await.unwrap();
            let cr = r#"{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRole","metadata":{"name":"old-role","uid":"0b5e3c6e-0000-4000-8000-000000000002","creationTimestamp":"2026-01-01T00:00:00Z"},"rules":[]}"#;
            store.create("/registry/rbac.authorization.k8s.io/clusterroles/old-role".into(), cr.into()).await.unwrap();
            store.close().await.unwrap();
        });
    }
    let s = Server::start_logging_to(&data, std::path::Path::new("/dev/null"), &["--node=false"]);
    assert_eq!(kt(&s, &["get", "deployment", "old", "-o", "jsonpath={.metadata.uid}"]), "0b5e3c6e-0000-4000-8000-000000000001");
    assert_eq!(kt(&s, &["get", "clusterrole", "old-role", "-o", "jsonpath={.metadata.creationTimestamp}"]), "2026-01-01T00:00:00Z");
    drop(s);
}

#[test]
fn services_created_on_two_servers_never_share_an_address_or_port() {
    let etcd = LocalEtcd::start(1).unwrap();
    let eps = etcd.endpoints().join(",");
    // A small range, so that guesses collide.
    let range = ["--etcd-servers", eps.as_str(), "--node=false", "--service-cluster-ip-range=127.97.0.0/26", "--service-node-port-range=30000-30040"];
    let a = Server::start_with(&range);
    let b_dir = join_dir(&a);
    let b = Server::start_logging_to(&b_dir.path().join("data"), std::path::Path::new("/dev/null"), &range);
    let writers: Vec<_> = [&a, &b]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (kubeconfig, bin) = (s.kubeconfig(), common::kubectl_path("kubectl"));
            std::thread::spawn(move || {
                for n in 0..12 {
                    let out = Command::new(&bin)
                        .arg("--kubeconfig")
                        .arg(&kubeconfig)
                        .args(["create", "service", "nodeport", &format!("s{i}-{n}"), "--tcp=80:8080"])
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let out = kt(&a, &["get", "services", "-A", "-o", "jsonpath={range .items[*]}{.spec.clusterIP} {.spec.ports[0].nodePort}{\"\\n\"}{end}"]);
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for line in out.lines() {
        let mut f = line.split_whitespace();
        let ip = f.next().unwrap().to_string();
        assert!(ips.insert(ip.clone()), "{ip} handed out twice:\n{out}");
        if let Some(p) = f.next() {
            assert!(ports.insert(p.to_string()), "node port {p} handed out twice:\n{out}");
        }
    }
    assert!(ports.len() >= 24, "{out}");
    // Each address is an IPAddress object naming its Service, as kube-apiserver 1.33 keeps them.
    let ip = kt(&b, &["get", "service", "s0-3", "-o", "jsonpath={.spec.clusterIP}"]);
    let parent = kt(&b, &["get", "ipaddress", &ip, "-o", "jsonpath={.spec.parentRef.resource}/{.spec.parentRef.namespace}/{.spec.parentRef.name}"]);
    assert_eq!(parent, "services/default/s0-3");
    // Deleting a Service frees its address and port for either server.
    kt(&a, &["delete", "service", "s0-3"]);
    assert!(eventually(Duration::from_secs(5), || !b.kubectl(&["get", "ipaddress", &ip]).status.success()));
    // A requested address another server holds is refused as upstream refuses it.
    let taken = kt(&a, &["get", "service", "s1-0", "-o", "jsonpath={.spec.clusterIP}"]);
    let svc = format!(r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"wants-taken"}},"spec":{{"clusterIP":"{taken}","ports":[{{"port":80}}]}}}}"#);
    let out = b.k_stdin(&["create", "-f", "-"], &svc);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already allocated"), "{}", String::from_utf8_lossy(&out.stderr));
}
