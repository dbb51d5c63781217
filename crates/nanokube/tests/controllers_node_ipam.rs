//! The node IPAM controller (kube-controller-manager's range allocator): every Node gets
//! its own /24 of the pod network 127.244.0.0/16 as `spec.podCIDR`/`podCIDRs`, never one
//! in use (a block set by hand is respected, one outside the range left alone); a full
//! range is reported with a `CIDRNotAvailable` Event and the waiting Node gets the block a
//! deleted Node frees; the API server refuses to change a Node's block once set.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{eventually, Server};
use serde_json::{json, Value};

fn node(name: &str, pod_cidr: Option<&str>) -> Value {
    let mut n = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    if let Some(c) = pod_cidr {
        n["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    n
}

fn cidrs(s: &Server) -> Vec<(String, Option<String>)> {
    let list = s.get_json("/api/v1/nodes").1;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["metadata"]["name"].as_str().unwrap().to_string(), n["spec"]["podCIDR"].as_str().map(str::to_string)))
        .collect()
}

fn create(s: &Server, items: Vec<Value>) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let out = s.k_stdin(&["create", "-f", "-"], &list.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_node_gets_its_own_block_until_the_range_is_full() {
    let s = Server::start_with(&["--node=false"]);
    // One block set by hand inside the range, one outside it.
    create(&s, vec![node("pinned", Some("127.244.7.0/24")), node("outside", Some("127.245.0.0/24"))]);
    // With `pinned`'s, 256 nodes fill the 256 /24s of 127.244.0.0/16.
    create(&s, (0..255).map(|i| node(&format!("n-{i}"), None)).collect());
    let all_given = eventually(Duration::from_secs(60), || cidrs(&s).iter().all(|(_, c)| c.is_some()));
    assert!(all_given, "{:?}", cidrs(&s).iter().filter(|(_, c)| c.is_none()).collect::<Vec<_>>());
    let given = cidrs(&s);
    let mut seen = HashSet::new();
    for (name, cidr) in &given {
        let cidr = cidr.as_deref().unwrap();
        match name.as_str() {
            "pinned" => assert_eq!(cidr, "127.244.7.0/24"),
            "outside" => assert_eq!(cidr, "127.245.0.0/24"),
            _ => {
                let third: u8 = cidr
                    .strip_prefix("127.244.")
                    .and_then(|r| r.strip_suffix(".0/24"))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("{name}: {cidr}"));
                assert_ne!(third, 7, "{name} was given the block set by hand on another node");
            }
        }
        assert!(seen.insert(cidr.to_string()), "{cidr} given twice: {given:?}");
        let n = s.get_json(&format!("/api/v1/nodes/{name}")).1;
        assert_eq!(n["spec"]["podCIDRs"], json!([cidr]), "{name}");
    }

    // A Node's block cannot change, neither by replacing nor by clearing it.
    for patch in [json!({"spec": {"podCIDR": "127.244.9.0/24", "podCIDRs": ["127.244.9.0/24"]}}), json!({"spec": {"podCIDR": "", "podCIDRs": null}})] {
        let (code, body) = s.curl("PATCH", "/api/v1/nodes/n-0", Some("application/merge-patch+json"), Some(patch.to_string().as_bytes()));
        assert_eq!(code, 422, "{body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["reason"], "Invalid", "{status}");
        assert!(status["message"].as_str().unwrap().contains("node updates may not change podCIDR except from \"\" to valid"), "{status}");
    }
    let n0 = given.iter().find(|(n, _)| n == "n-0").and_then(|(_, c)| c.clone()).unwrap();
    assert_eq!(s.get_json("/api/v1/nodes/n-0").1["spec"]["podCIDR"], json!(n0), "a refused update changed nothing");

    // The range is full: the next Node waits, and says so.
    create(&s, vec![node("late", None)]);
    let reported = eventually(Duration::from_secs(20), || {
        let events = s.get_json("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dlate").1;
        events["items"].as_array().is_some_and(|items| {
            items.iter().any(|e| {
                e["reason"] == "CIDRNotAvailable" && e["message"] == "Node late status is now: CIDRNotAvailable" && e["source"]["component"] == "cidrAllocator"
            })
        })
    });
    assert!(reported, "{}", s.k(&["get", "events", "-A"]));
    assert!(s.get_json("/api/v1/nodes/late").1["spec"]["podCIDR"].is_null());

    // A deleted Node's block goes to the one waiting.
    let out = s.kubectl(&["delete", "node", "n-0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut last = Value::Null;
    let freed = eventually(Duration::from_secs(10), || {
        last = s.get_json("/api/v1/nodes/late").1["spec"].clone();
        last["podCIDR"] == json!(n0)
    });
    assert!(freed, "late was not given {n0}: {last}");
}
