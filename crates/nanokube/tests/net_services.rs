//! Service traffic from the host: a Deployment's pods behind a ClusterIP, a node port on
//! 127.0.0.1 and a load-balancer IP (real runc containers, real curl), spread over the
//! pods, session affinity, UDP echo through a Service (from the host and from a pod) and
//! between pods, connections closed when their
//! endpoint leaves, a Service without endpoints refusing, and SCTP reported; affinity
//! timeouts, load-balancer classes and external IPs.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{build_image_with, eventually, host_program_files, load_image, server_with_image_and, Server};

/// A Service range and load-balancer range of this test's own (servers run side by side,
/// and each opens its Service addresses on the host).
fn own_ranges() -> (String, String, String) {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let n = h.finish() % 200 + 20;
    (format!("127.97.{n}.0/24"), format!("127.241.{n}.0/24"), format!("127.241.{n}."))
}

fn curl(url: &str) -> (bool, String, i32) {
    let out = Command::new("curl").args(["-sS", "--max-time", "5", url]).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string(), out.status.code().unwrap_or(-1))
}

fn hosts_seen(url: &str, times: usize) -> Vec<String> {
    (0..times).map(|_| curl(url)).filter(|(ok, _, _)| *ok).map(|(_, body, _)| body).collect()
}

fn ready_endpoints(s: &Server, svc: &str) -> usize {
    let out = s.k(&[
        "get",
        "endpointslices",
        "-l",
        &format!("kubernetes.io/service-name={svc}"),
        "-o",
        "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}",
    ]);
    out.split_whitespace().count()
}

#[test]
fn host_reaches_a_deployment_by_cluster_ip_node_port_and_load_balancer() {
    let (services, lbs, lb_prefix) = own_ranges();
    let s = server_with_image_and(&["--service-proxy=true", &format!("--service-cluster-ip-range={services}"), &format!("--load-balancer-cidr={lbs}")]);
    let out = s.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=testbox:1.0",
        "--replicas=3",
        "--port=8080",
        "--",
        "sh",
        "-c",
        "mkdir /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.kubectl(&["expose", "deployment", "web", "--port=80", "--target-port=8080", "--type=LoadBalancer"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(60), || ready_endpoints(&s, "web") == 3), "{}", s.k(&["get", "pods,endpointslices", "-o", "wide"]));
    assert!(
        eventually(Duration::from_secs(10), || !s.k(&["get", "svc", "web", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"]).is_empty()),
        "no load-balancer IP: {}",
        s.k(&["get", "svc", "web", "-o", "yaml"])
    );
    let cluster_ip = s.k(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let node_port = s.k(&["get", "svc", "web", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let lb_ip = s.k(&["get", "svc", "web", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"]);
    assert!(lb_ip.starts_with(&lb_prefix), "{lb_ip} is not from {lbs}");
    assert_eq!(s.k(&["get", "svc", "web", "-o", "jsonpath={.status.loadBalancer.ingress[0].ipMode}"]), "VIP");
    let pods: BTreeSet<String> =
        s.k(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]).split_whitespace().map(String::from).collect();
    assert_eq!(pods.len(), 3);
    // Every way in reaches every pod (round-robin over the three).
    for url in [format!("http://{cluster_ip}/"), format!("http://127.0.0.1:{node_port}/"), format!("http://{lb_ip}/")] {
        let seen: BTreeSet<String> = hosts_seen(&url, 9).into_iter().collect();
        assert_eq!(seen, pods, "{url}");
    }
    // kubectl's table shows the load-balancer address.
    let table = s.k(&["get", "svc", "web"]);
    assert!(table.contains(&lb_ip) && table.contains(&format!("80:{node_port}/TCP")), "{table}");

    // Session affinity: one client, one pod.
    let out = s.kubectl(&["patch", "svc", "web", "-p", r#"{"spec":{"sessionAffinity":"ClientIP"}}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let sticky: BTreeSet<String> = hosts_seen(&format!("http://{cluster_ip}/"), 10).into_iter().collect();
    assert_eq!(sticky.len(), 1, "{sticky:?}");
    // With a timeout, the client sticks within it and is balanced afresh after it.
    let out = s.kubectl(&["patch", "svc", "web", "-p", r#"{"spec":{"sessionAffinityConfig":{"clientIP":{"timeoutSeconds":1}}}}"#]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(1300));
    let mut across = BTreeSet::new();
    for _ in 0..6 {
        let pair = hosts_seen(&format!("http://{cluster_ip}/"), 2);
        assert!(pair.len() == 2 && pair[0] == pair[1], "not sticky within the timeout: {pair:?}");
        across.insert(pair[0].clone());
        std::thread::sleep(Duration::from_millis(1300));
    }
    assert!(across.len() >= 2, "the affinity outlived its timeout: {across:?}");

    // Scaled down to one: the others stop getting traffic as soon as they leave.
    let out = s.kubectl(&["patch", "svc", "web", "-p", r#"{"spec":{"sessionAffinity":"None"}}"#]);
    assert!(out.status.success());
    s.k(&["scale", "deployment", "web", "--replicas=1"]);
    assert!(eventually(Duration::from_secs(30), || ready_endpoints(&s, "web") == 1));
    let left: BTreeSet<String> = s
        .k(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].targetRef.name}",
        ])
        .split_whitespace()
        .map(String::from)
        .collect();
    let after: BTreeSet<String> = hosts_seen(&format!("http://{cluster_ip}/"), 10).into_iter().collect();
    assert_eq!(after, left);

    // A Service without endpoints refuses at once.
    s.k_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata:\n  name: empty\nspec:\n  ports:\n  - port: 80\n");
    let empty = s.k(&["get", "svc", "empty", "-o", "jsonpath={.spec.clusterIP}"]);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (ok, _, code) = curl(&format!("http://{empty}/"));
    assert!(!ok && t.elapsed() < Duration::from_secs(3), "curl exit {code} after {:?}", t.elapsed());
    assert!(code == 56 || code == 7 || code == 52, "curl exit {code}: refused or reset");

    // SCTP is not carried, and the Service says so.
    s.k_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata:\n  name: sctp\nspec:\n  ports:\n  - port: 9\n    protocol: SCTP\n");
    assert!(
        eventually(Duration::from_secs(10), || s.k(&["get", "events", "--field-selector", "involvedObject.name=sctp"]).contains("SCTPNotSupported")),
        "{}",
        s.k(&["get", "events"])
    );

    // allocateLoadBalancerNodePorts: false: an address, no node port.
    s.k_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata:\n  name: lb-only\nspec:\n  type: LoadBalancer\n  allocateLoadBalancerNodePorts: false\n  selector: {app: web}\n  ports:\n  - {port: 8081, targetPort: 8080}\n");
    assert!(eventually(Duration::from_secs(10), || s
        .k(&["get", "svc", "lb-only", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"])
        .starts_with(&lb_prefix)));
    assert_eq!(s.k(&["get", "svc", "lb-only", "-o", "jsonpath={.spec.ports[0].nodePort}"]), "");
    let lb_only = s.k(&["get", "svc", "lb-only", "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}"]);
    assert!(eventually(Duration::from_secs(5), || curl(&format!("http://{lb_only}:8081/")).0));

    // A Service of another load-balancer class is another implementation's: no address.
    s.k_stdin(&["apply", "-f", "-"], "apiVersion: v1\nkind: Service\nmetadata:\n  name: other-class\nspec:\n  type: LoadBalancer\n  loadBalancerClass: example.com/other\n  selector: {app: web}\n  ports:\n  - {port: 8082, targetPort: 8080}\n");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.k(&["get", "svc", "other-class", "-o", "jsonpath={.status.loadBalancer}"]), "{}");
    // externalIPs in 127.0.0.0/8 are listened on like the ClusterIP.
    let external = lb_prefix.replace("127.241.", "127.242.") + "7";
    s.k_stdin(&["apply", "-f", "-"], &format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: ext-ip\nspec:\n  externalIPs: [{external}]\n  selector: {{app: web}}\n  ports:\n  - {{port: 8083, targetPort: 8080}}\n"));
    assert!(eventually(Duration::from_secs(5), || curl(&format!("http://{external}:8083/")).0), "nothing answers on the external IP {external}");

    // The load-balancer IP goes back when the Service is no longer a LoadBalancer.
    s.k(&["patch", "svc", "web", "-p", r#"{"spec":{"type":"ClusterIP"}}"#]);
    assert!(eventually(Duration::from_secs(10), || s.k(&["get", "svc", "web", "-o", "jsonpath={.status.loadBalancer}"]) == "{}"));
    assert!(eventually(Duration::from_secs(5), || !curl(&format!("http://{lb_ip}/")).0));
}

#[test]
fn udp_through_a_service_and_connections_closed_when_their_endpoint_leaves() {
    let (services, lbs, _) = own_ranges();
    let s = server_with_image_and(&["--service-proxy=true", &format!("--service-cluster-ip-range={services}"), &format!("--load-balancer-cidr={lbs}")]);
    let work = s.dir.path().join("tools");
    std::fs::create_dir_all(&work).unwrap();
    let (archive, _) = build_image_with(&work, "tools:1.0", &host_program_files(&["/usr/bin/socat"]));
    load_image(&s, &archive);
    // A UDP echo server and a TCP echo server, in one pod.
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: echo\n  labels: {app: echo}\nspec:\n  containers:\n  - name: udp\n    image: tools:1.0\n    command: [socat, 'UDP4-RECVFROM:9000,fork', 'EXEC:cat']\n  - name: tcp\n    image: tools:1.0\n    command: [socat, 'TCP4-LISTEN:9001,fork,reuseaddr', 'EXEC:cat']\n---\n\
        apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\nspec:\n  type: NodePort\n  selector: {app: echo}\n  ports:\n  - {name: udp, port: 53, protocol: UDP, targetPort: 9000}\n  - {name: tcp, port: 7, protocol: TCP, targetPort: 9001}\n";
    let out = s.k_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(eventually(Duration::from_secs(60), || ready_endpoints(&s, "echo") == 1), "{}", s.k(&["get", "pods", "-o", "wide"]));
    let ip = s.k(&["get", "svc", "echo", "-o", "jsonpath={.spec.clusterIP}"]);
    let udp_node_port = s.k(&["get", "svc", "echo", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    std::thread::sleep(Duration::from_millis(300));

    // UDP echo by the ClusterIP and by the node port.
    for target in [format!("{ip}:53"), format!("127.0.0.1:{udp_node_port}")] {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.connect(&target).unwrap();
        for msg in ["one", "two"] {
            sock.send(msg.as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no echo from {target}: {e}"));
            assert_eq!(&buf[..n], msg.as_bytes(), "{target}");
        }
    }

    // From inside another pod: UDP to the Service's ClusterIP and to the pod's IP.
    s.k(&["run", "client", "--image=tools:1.0", "--command", "--", "sleep", "3600"]);
    let ok = s.kubectl(&["wait", "--for=condition=Ready", "pod/client", "--timeout=60s"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let echo_ip = s.k(&["get", "pod", "echo", "-o", "jsonpath={.status.podIP}"]);
    for (target, word) in [(format!("{ip}:53"), "by-service"), (format!("{echo_ip}:9000"), "by-pod-ip")] {
        let out = s.kubectl(&["exec", "client", "--", "sh", "-c", &format!("echo {word} | socat -t 3 - UDP4:{target}")]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), word, "{target}: {}", String::from_utf8_lossy(&out.stderr));
    }

    // A TCP connection open through the Service is closed when its pod leaves the
    // Service (relabelled, still running), not left to a pod that is no longer behind it.
    let mut conn = TcpStream::connect(format!("{ip}:7")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(b"ping\n").unwrap();
    let mut buf = [0u8; 16];
    let n = conn.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping\n");
    s.k(&["label", "pod", "echo", "app=gone", "--overwrite"]);
    let t = Instant::now();
    let n = conn.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection stays open after its endpoint left");
    assert!(t.elapsed() < Duration::from_secs(5), "closed only after {:?}", t.elapsed());
    assert_eq!(s.k(&["get", "pod", "echo", "-o", "jsonpath={.status.phase}"]), "Running");
}
