//! ServiceCIDRs beyond the Service range (Kubernetes 1.33's MultiCIDRServiceAllocator, on
//! by default): when `--service-cluster-ip-range` is full, a new ServiceCIDR made Ready by
//! the servicecidrs controller gives the next Service its address; the Service answers
//! from the host and from a pod (whose capture of Service traffic grows with the new
//! range), and the ServiceCIDR cannot go while that address is in use.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, server_with_image_and};
use serde_json::Value;

/// A byte of this test's own, for ranges no other test server opens on the host.
fn own_octet() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() % 200 + 20
}

#[test]
fn a_second_service_cidr_extends_the_service_range() {
    let n = own_octet();
    let (primary, extra, lbs) = (format!("127.99.{n}.0/28"), format!("127.100.{n}.0/24"), format!("127.242.{n}.0/24"));
    let s = server_with_image_and(&["--service-proxy=true", &format!("--service-cluster-ip-range={primary}"), &format!("--load-balancer-cidr={lbs}")]);
    let pods = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: web
    image: testbox:1.0
    command: [sh, -c, "mkdir -p /www && echo hello > /www/index.html && exec busybox httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: client, image: testbox:1.0, command: [sleep, "3600"]}]
"#;
    assert!(s.k_stdin(&["apply", "-f", "-"], pods).status.success());

    // A /28 has four addresses for dynamic allocation (.11–.14).
    for i in 0..4 {
        s.k(&["create", "service", "clusterip", &format!("fill{i}"), "--tcp=80"]);
    }
    let full = s.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    assert!(!full.status.success());
    assert!(String::from_utf8_lossy(&full.stderr).contains("failed to allocate a serviceIP: range is full"), "{}", String::from_utf8_lossy(&full.stderr));

    let cidr = format!(
        "{{\"apiVersion\":\"networking.k8s.io/v1\",\"kind\":\"ServiceCIDR\",\"metadata\":{{\"name\":\"extra\"}},\"spec\":{{\"cidrs\":[\"{extra}\"]}}}}"
    );
    assert!(s.k_stdin(&["apply", "-f", "-"], &cidr).status.success());
    let path = "/apis/networking.k8s.io/v1/servicecidrs/extra";
    let condition = |status: &str, message: &str| {
        let c = s.get_json(path).1;
        c["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|x| x["type"] == "Ready" && x["status"] == status && x["message"] == message))
    };
    assert!(eventually(Duration::from_secs(10), || condition("True", "Kubernetes Service CIDR is ready")), "{}", s.get_json(path).1);
    assert_eq!(s.get_json(path).1["metadata"]["finalizers"], serde_json::json!(["networking.k8s.io/service-cidr-finalizer"]));

    s.k(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let ip = s.k(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(ip.starts_with(&format!("127.100.{n}.")), "{ip}");
    let address = s.get_json(&format!("/apis/networking.k8s.io/v1/ipaddresses/{ip}")).1;
    assert_eq!(address["spec"]["parentRef"], serde_json::json!({"group": "", "resource": "services", "namespace": "default", "name": "web"}));

    // From the host, and from a pod by address and by name.
    let answers = |from_pod: bool, target: &str| -> String {
        let out = if from_pod {
            // (busybox's `wget -T` crashes: `timeout` bounds it instead.)
            s.kubectl(&["exec", "client", "--", "timeout", "5", "wget", "-qO-", &format!("http://{target}/")])
        } else {
            Command::new("curl").args(["-sS", "--max-time", "3", &format!("http://{target}/")]).output().unwrap()
        };
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(eventually(Duration::from_secs(60), || answers(false, &ip) == "hello"), "host: {}", answers(false, &ip));
    assert!(eventually(Duration::from_secs(30), || answers(true, &ip) == "hello"), "pod: {}", answers(true, &ip));
    assert_eq!(answers(true, "web.default.svc.cluster.local"), "hello");

    // The range's address is in use: the ServiceCIDR stays, Terminating, until it is not.
    s.k(&["delete", "servicecidr", "extra", "--wait=false"]);
    let message = "There are still IPAddresses referencing the ServiceCIDR, please remove them or create a new ServiceCIDR";
    assert!(eventually(Duration::from_secs(10), || condition("False", message)), "{}", s.get_json(path).1);
    s.k(&["delete", "service", "web"]);
    assert!(eventually(Duration::from_secs(30), || s.get_json(path).0 == 404), "{}", s.get_json(path).1);
    let gone: Value = s.get_json(&format!("/apis/networking.k8s.io/v1/ipaddresses/{ip}")).1;
    assert_eq!(gone["code"], 404);
    s.k(&["delete", "pod", "web", "client", "--wait=true", "--grace-period=1"]);
}
