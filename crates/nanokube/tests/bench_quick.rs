//! `nanokube bench` in quick mode: every scenario runs end to end and reports what it
//! did (counts only; timing figures are never asserted, these machines are shared).

use std::process::Command;

use serde_json::Value;

#[test]
fn every_scenario_runs_in_quick_mode() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube"))
        .args([
            "bench",
            "fsync",
            "startup",
            "testcluster",
            "create",
            "get",
            "update",
            "delete",
            "list",
            "watch",
            "pods",
            "--pods",
            "150",
            "--runs",
            "1",
            "--count",
            "30",
            "--clients",
            "1,4",
            "--objects",
            "25,40",
            "--watchers",
            "1,60",
            "--events",
            "20",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let figures: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let keys: Vec<&String> = figures.as_object().unwrap().keys().collect();
    for want in [
        "fsync: fdatasync p50 / mean (ms)",
        "startup: idle RSS 1 s after ready (MiB)",
        "create: 30 ConfigMaps, 1 client(s)",
        "create: 30 ConfigMaps, 4 client(s)",
        "list: 26 ConfigMaps, JSON",
        "list: 26 ConfigMaps, JSON, resourceVersion=0",
        "list: 26 ConfigMaps, Table, first page (limit=500)",
        "list: 26 ConfigMaps, Table, all rows",
        "list: 41 ConfigMaps, JSON",
        "bench client CPU (s) / wall (s)",
    ] {
        assert!(figures.get(want).is_some(), "{want:?} missing; have {keys:?}");
    }
    assert!(keys.iter().any(|k| k.starts_with("testcluster:")));
    assert_eq!(figures["list: 26 ConfigMaps, JSON"]["items"], 26, "25 created plus kube-root-ca.crt");
    // The collection grows to the next size, and each answer holds it all.
    assert_eq!(figures["list: 41 ConfigMaps, JSON"]["items"], 41);
    assert_eq!(figures["list: 41 ConfigMaps, JSON, resourceVersion=0"]["items"], 41);
    assert_eq!(figures["list: 41 ConfigMaps, Table, all rows"]["items"], 41);
    assert_eq!(figures["create: 30 ConfigMaps, 4 client(s)"]["clients"], 4);
    assert!(figures["create: 30 ConfigMaps, 1 client(s)"]["per_second"].as_f64().unwrap() > 0.0);
    // With fsync measured first, one client is set against the disk's ceiling.
    let share = &figures["create, 1 client: share of the fsync ceiling"];
    assert!(share["percent"].as_f64().unwrap() > 0.0 && share["ceiling_per_second"].as_f64().unwrap() > 0.0, "{share}");
    let floor = &figures["create, 1 client: floor (GET p50 + fsync)"];
    assert!(floor["floor_ms"].as_f64().unwrap() > floor["get_p50_ms"].as_f64().unwrap(), "{floor}");
    // Every watcher saw every event, in order.
    for w in [1, 60] {
        let f = &figures[format!("watch: {w} watcher(s), 20 events")];
        assert_eq!(f["missed"], 0, "{f}");
        assert_eq!(f["out_of_order"], 0, "{f}");
    }
    for k in [
        "get: 30 ConfigMaps, 4 client(s)",
        "update: 30 ConfigMaps, 4 client(s), own objects",
        "update: 30 ConfigMaps, 4 client(s), one shared object",
        "delete: 30 ConfigMaps, 4 client(s)",
    ] {
        assert!(figures.get(k).is_some(), "{k} missing");
    }
    assert_eq!(figures["update: 30 ConfigMaps, 1 client(s), one shared object"]["conflicts"], 0, "one client never conflicts with itself");
    assert_eq!(figures["pods: watch from resourceVersion=0, 150 initial events"]["events"], 150);
}

/// The deployments scenario end to end on a few Deployments: every one Available, then
/// the figures at rest (the 1,000 of the target is for `nanokube bench deployments`).
#[test]
fn deployments_become_available_on_simulated_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube")).args(["bench", "deployments", "--deployments", "20", "--json"]).arg(&json).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let figures: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let available = &figures["deployments: 20 × 3 all Available (target 30 s)"];
    assert_eq!((available["deployments"].as_u64(), available["replicas"].as_u64()), (Some(20), Some(3)), "{figures}");
    assert!(figures["deployments: server CPU at rest, 10 s from 30 s after (target < 1 %)"].is_number(), "{figures}");
}

#[test]
fn help_documents_every_scenario() {
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube")).args(["bench", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for s in ["startup", "testcluster", "create", "get", "update", "delete", "list", "watch", "pods", "deployments", "service", "fsync", "abuse"] {
        assert!(help.contains(s), "{s} not documented:\n{help}");
    }
}

#[test]
fn startup_times_a_given_server_command_and_reports_one_that_never_gets_ready() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let bin = env!("CARGO_BIN_EXE_nanokube");
    // Any command line: {data} and {port} are filled in, the kubeconfig it writes is read.
    let command = format!("{bin} server --in-memory --secure-port {{port}} --merge-kubeconfig=false --data-dir {{data}}");
    let out = Command::new(bin).args(["bench", "startup", "--runs", "2", "--server-command", &command, "--json"]).arg(&json).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let figures: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(figures["startup: spawn → /readyz 200, cold (ms, 2 runs)"]["p50_ms"].as_f64().unwrap() > 0.0, "{figures}");
    assert!(figures["startup: idle RSS 1 s after ready (MiB)"].as_f64().unwrap() > 0.0, "{figures}");

    // A server that exits before it is ready is an error that says so.
    let out = Command::new(bin).args(["bench", "startup", "--runs", "1", "--server-command", "sh -c 'exit 3' {data}"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited") && err.contains("before /readyz answered 200"), "{err}");
}

/// The soak of docs/security.md, briefly: every attack gets only the answers the server
/// must give (the bench fails on any other), normal clients see no error, and the
/// figures are all there.
#[test]
fn abuse_soak_gets_only_the_expected_answers() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube")).args(["bench", "abuse", "--seconds", "4", "--json"]).arg(&json).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let figures: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for phase in ["abuse: normal clients alone", "abuse: normal clients under attack"] {
        let f = &figures[phase];
        assert_eq!(f["errors"], 0, "{phase}: {f}");
        assert!(f["calls"].as_u64().unwrap() > 0, "{phase}: {f}");
    }
    // Each attack ran and was answered as it must be.
    for (attack, outcome) in [
        ("namespace-escape", "404"),
        ("patch-copy-bomb", "422"),
        ("patch-copy-bomb", "413"),
        ("yaml-brackets", "400"),
        ("metrics-labels", "403"),
        ("junk-parameters", "401"),
        ("smp-long-lists", "200"),
    ] {
        let f = &figures[format!("abuse: attack {attack}")];
        assert_eq!(f["unexpected"], 0, "{attack}: {f}");
        assert!(f["outcomes"][outcome].as_u64().unwrap_or(0) > 0, "{attack}: no {outcome}: {f}");
    }
    assert_eq!(figures["abuse: /readyz every 100 ms under attack"]["failures"], 0);
    assert!(figures["abuse: server RSS before / peak / after (MiB)"]["peak_mib"].as_f64().unwrap() > 0.0);
}

/// The service scenario briefly (as root, running a pod as the node's tests do; ranges
/// of its own): both comparisons, the pod's httpd, DNS and propagation are all measured,
/// every path carried requests, and a tenth of the Services were moved.
#[test]
fn service_scenario_compares_a_clusterip_with_a_host_process_and_a_pod_ip() {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let n = h.finish() % 200 + 20;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube"))
        .args(["bench", "service", "--run-ms", "300", "--services", "20", "--json"])
        .arg(&json)
        .arg(format!("--server-arg=--service-cluster-ip-range=127.92.{n}.0/24"))
        .arg(format!("--server-arg=--load-balancer-cidr=127.238.{n}.0/24"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let figures: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for base in ["host process", "pod IP"] {
        for what in ["keep-alive", "new connection per request"] {
            for clients in [1, 64] {
                for path in ["by ClusterIP", "directly"] {
                    let key = format!("service: {base} {path}, {what}, {clients} client(s)");
                    assert!(figures[&key]["rps"].as_f64().is_some_and(|r| r > 0.0), "{key}: {figures}");
                }
                let key = format!("service: ClusterIP / {base} ({what}, {clients})");
                assert!(figures[&key]["throughput_pct"].as_f64().is_some_and(|p| p > 0.0), "{key}: {figures}");
            }
        }
    }
    for key in ["service: pod (httpd) by ClusterIP, new connections, 1 client", "service: pod (httpd) by pod IP, new connections, 1 client"] {
        assert!(figures[key]["rps"].as_f64().is_some_and(|r| r > 0.0), "{key}: {figures}");
    }
    assert!(figures["service: DNS answers/s (UDP, 32 clients)"].as_f64().is_some_and(|q| q > 0.0), "{figures}");
    assert!(figures["service: DNS answers/s from a pod, a new socket per query (8 clients)"].as_f64().is_some_and(|q| q > 0.0), "{figures}");
    let propagation = &figures["service: endpoint propagation, 20 Services (ms)"];
    assert_eq!(propagation["moves"], 2, "{figures}");
}
