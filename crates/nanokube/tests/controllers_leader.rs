//! Leader election: the server holds the `kube-controller-manager` and `kube-scheduler`
//! Leases and renews them; while another candidate holds the first, its controllers
//! stand still, and once that Lease expires it takes it back (a transition counted).

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Server};
use serde_json::Value;

fn lease(s: &Server, name: &str) -> Value {
    serde_json::from_str(&s.k(&["get", "lease", "-n", "kube-system", name, "-o", "json"])).unwrap()
}

fn micro_now() -> String {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    now.format(&time::format_description::well_known::Rfc3339).unwrap().replace('Z', ".000000Z")
}

#[test]
fn only_the_lease_holder_runs_the_controllers() {
    let s = Server::start_with(&["--node=false"]);
    let mut first = Value::Null;
    assert!(eventually(Duration::from_secs(10), || {
        first = lease(&s, "kube-controller-manager");
        first["spec"]["holderIdentity"].is_string()
    }));
    let me = first["spec"]["holderIdentity"].as_str().unwrap().to_string();
    assert_eq!(first["spec"]["leaseDurationSeconds"], 15);
    assert!(lease(&s, "kube-scheduler")["spec"]["holderIdentity"] == me.as_str());
    // Renewed every two seconds.
    assert!(eventually(Duration::from_secs(10), || lease(&s, "kube-controller-manager")["spec"]["renewTime"] != first["spec"]["renewTime"]));

    // Another candidate holds the Lease (the test renews it for it): after its renew
    // deadline the server's controllers stop, so a new Deployment gets no ReplicaSet.
    let hold = || {
        let mut l = lease(&s, "kube-controller-manager");
        l["spec"]["holderIdentity"] = "other-server_1".into();
        l["spec"]["renewTime"] = micro_now().into();
        let out = s.k_stdin(&["replace", "-f", "-"], &l.to_string());
        out.status.success()
    };
    let until = Instant::now() + Duration::from_secs(13);
    while Instant::now() < until {
        hold();
        std::thread::sleep(Duration::from_millis(500));
    }
    s.k(&["create", "deployment", "idle", "--image=nothing:1"]);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        hold();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(s.k(&["get", "rs", "-o", "name"]), "", "a controller acted while another server led");
    }
    // The other candidate goes quiet: 15 s after its last renewal the server leads again.
    assert!(eventually(Duration::from_secs(40), || !s.k(&["get", "rs", "-o", "name"]).is_empty()), "the server never took the Lease back");
    let l = lease(&s, "kube-controller-manager");
    assert_eq!(l["spec"]["holderIdentity"], me.as_str());
    assert!(l["spec"]["leaseTransitions"].as_i64().unwrap() >= 1, "{l}");
}
