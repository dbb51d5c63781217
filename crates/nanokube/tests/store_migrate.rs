//! `nanokube store migrate`: a cluster with an object of every kind the server's own
//! bootstrap writes, the 24 kinds of `upstream-1.33/defaults-on-create.json`, a CRD and
//! a custom resource, copied SQLite → etcd → SQLite. Every key and value compares equal
//! at both steps, a server on each copy serves the same objects (uids, creation
//! timestamps, generations), and a non-empty target is refused unless told.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::Server;
use nanokube_store::local_etcd::LocalEtcd;
use nanokube_store::Backend;
use serde_json::Value;

fn migrate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nanokube")).args(["store", "migrate"]).args(args).output().unwrap()
}

/// A stored value as an object, whether JSON or kube-apiserver's protobuf, with what
/// either encoding may leave out (empty strings, lists and maps, as Go's omitempty, and
/// a nil list Go writes as null) removed, so values compare by what they say.
fn canonical(stored: &[u8]) -> Value {
    fn prune(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.values_mut().for_each(prune);
                m.retain(|_, x| {
                    !x.is_null()
                        && !matches!(x, Value::String(s) if s.is_empty())
                        && !matches!(x, Value::Array(a) if a.is_empty())
                        && !matches!(x, Value::Object(o) if o.is_empty())
                });
            }
            Value::Array(a) => a.iter_mut().for_each(prune),
            _ => {}
        }
    }
    let mut v = if stored.starts_with(b"k8s\0") { nanokube_api::protobuf::decode_stored(stored).unwrap() } else { serde_json::from_slice(stored).unwrap() };
    prune(&mut v);
    v
}

/// Every key and value of a SQLite store.
fn dump_sqlite(db: &Path) -> BTreeMap<String, Value> {
    let store =
        nanokube_store::sqlite::SqliteBackend::open(nanokube_store::sqlite::SqliteOptions { path: Some(db.to_path_buf()), ..Default::default() }).unwrap();
    let out = store.list("/registry/", None, 0).items.iter().map(|kv| (kv.key.clone(), canonical(&kv.value))).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(store.close()).unwrap();
    out
}

/// Every key and raw value in etcd.
fn raw_etcd(etcd: &LocalEtcd) -> BTreeMap<String, Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
        let got = c.get("/registry/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
        got.kvs().iter().map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.value().to_vec())).collect()
    })
}

/// Every object in etcd (not the mark a server's consistent reads write, which is no
/// object and never in a server's index).
fn dump_etcd(etcd: &LocalEtcd) -> BTreeMap<String, Value> {
    raw_etcd(etcd).into_iter().filter(|(k, _)| k != "/registry/nanokube-sync").map(|(k, v)| (k, canonical(&v))).collect()
}

/// Equal maps, or a failure naming the keys that differ and how the first ones do.
fn assert_same(got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>, what: &str) {
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let differ: Vec<&&String> = keys.iter().filter(|k| got.get(**k) != want.get(**k)).collect();
    if !differ.is_empty() {
        let shown: Vec<String> = differ
            .iter()
            .take(3)
            .map(|k| format!("{k}:\n  got  {:?}\n  want {:?}", got.get(**k).map(Value::to_string), want.get(**k).map(Value::to_string)))
            .collect();
        panic!("{what}: {} keys differ: {differ:?}\n{}", differ.len(), shown.join("\n"));
    }
}

const CRD: &str = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"widgets.example.com"},
"spec":{"group":"example.com","scope":"Namespaced","names":{"plural":"widgets","singular":"widget","kind":"Widget"},
"versions":[{"name":"v1","served":true,"storage":true,"schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}}"#;

#[test]
fn sqlite_to_etcd_to_sqlite_keeps_every_object() {
    let mut a = Server::start_with(&["--node=false"]);
    a.k(&["create", "namespace", "defaults"]);
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream-1.33/defaults-on-create.json")).unwrap();
    let objects: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    for (name, obj) in &objects {
        let out = a.k_stdin(&["create", "-n", "defaults", "-f", "-"], &obj["_sent"].to_string());
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(a.k_stdin(&["create", "-f", "-"], CRD).status.success());
    assert!(common::eventually(std::time::Duration::from_secs(10), || a.kubectl(&["get", "widgets"]).status.success()));
    let widget = r#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w1","namespace":"defaults"},"spec":{"size":3}}"#;
    assert!(a.k_stdin(&["create", "-f", "-"], widget).status.success());
    a.k(&["scale", "deployment", "d", "-n", "defaults", "--replicas=2"]);
    let before = |s: &Server, what: &[&str]| {
        s.k(&[&["get", "-n", "defaults", "-o", "jsonpath={.metadata.uid} {.metadata.creationTimestamp} {.metadata.generation}"][..], what].concat())
    };
    let deployment = before(&a, &["deployment", "d"]);
    let custom = before(&a, &["widget", "w1"]);
    a.stop();
    let source = a.data.join("state.db");
    let original = dump_sqlite(&source);
    let kinds: std::collections::BTreeSet<&str> = original.keys().filter_map(|k| k.split('/').nth(2)).collect();
    assert!(kinds.len() >= 30, "{kinds:?}");

    // SQLite → etcd.
    let etcd = LocalEtcd::start(1).unwrap();
    let etcd_url = format!("etcd:{}", etcd.endpoints().join(","));
    let out = migrate(&["--from", &format!("sqlite:{}", a.data.display()), "--to", &etcd_url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(&format!("copied {} objects", original.len())), "{summary}");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{n}/{n} objects", n = original.len())), "a progress bar");
    assert_same(&dump_etcd(&etcd), &original, "etcd holds the same keys and values");
    // In kube-apiserver's encoding: built-in kinds as protobuf, custom resources as JSON.
    let raw = raw_etcd(&etcd);
    assert!(raw["/registry/configmaps/defaults/cm"].starts_with(b"k8s\0"));
    assert!(raw["/registry/deployments/defaults/d"].starts_with(b"k8s\0"));
    assert!(raw["/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com"].starts_with(b"k8s\0"));
    assert!(raw["/registry/example.com/widgets/defaults/w1"].starts_with(b"{"));

    // A second copy into the same etcd is refused, and changes nothing.
    let again = migrate(&["--from", &format!("sqlite:{}", a.data.display()), "--to", &etcd_url]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"), "{}", String::from_utf8_lossy(&again.stderr));

    // A server on the etcd copy serves the same objects.
    let on_etcd = Server::start_with(&["--etcd-servers", &etcd.endpoints().join(","), "--node=false"]);
    assert_eq!(before(&on_etcd, &["deployment", "d"]), deployment);
    assert_eq!(before(&on_etcd, &["widget", "w1"]), custom);
    drop(on_etcd);

    // etcd → a new SQLite file.
    let back = tempfile::tempdir().unwrap();
    let back_data = back.path().join("data");
    std::fs::create_dir_all(&back_data).unwrap();
    for f in ["ca.crt", "ca.key", "sa.key", "sa.pub"] {
        std::fs::copy(a.data.join(f), back_data.join(f)).unwrap();
    }
    // The server on etcd wrote a little (its node lease, events): compare what was copied.
    let in_etcd = dump_etcd(&etcd);
    let out = migrate(&["--from", &etcd_url, "--to", &format!("sqlite:{}", back_data.join("state.db").display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let round_trip = dump_sqlite(&back_data.join("state.db"));
    assert_eq!(round_trip.len(), in_etcd.len());
    assert_same(&round_trip, &in_etcd, "SQLite holds what etcd held");
    // Objects no controller rewrites are byte for byte what the first server stored.
    for k in [
        "/registry/configmaps/defaults/cm",
        "/registry/secrets/defaults/sec",
        "/registry/example.com/widgets/defaults/w1",
        "/registry/clusterroles/cluster-admin",
    ] {
        assert!(original.contains_key(k), "{k}");
        assert_eq!(round_trip.get(k), original.get(k), "{k} changed on the way");
    }
    let b = Server::start_logging_to(&back_data, Path::new("/dev/null"), &["--node=false"]);
    assert_eq!(before(&b, &["deployment", "d"]), deployment);
    assert_eq!(before(&b, &["widget", "w1"]), custom);
}
