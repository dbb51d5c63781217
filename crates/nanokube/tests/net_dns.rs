//! Cluster DNS and the seed's in-pod recipe: from inside a pod (real runc containers with
//! real curl and glibc's getent), `https://kubernetes.default.svc/api` answers with the
//! service-account token; Services, headless Services, StatefulSet pods, ExternalName,
//! SRV and reverse names resolve; a name outside the cluster goes to the upstream resolver
//! (Debian's dnsmasq on loopback); the host asks the DNS address directly. A query
//! forwarded to an upstream that never answers holds up no other lookup of the pod.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{build_image_with, eventually, host_program_files, load_image, server_with_image_and, Server};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq answering `*.example.test` with 127.1.2.3 (and nothing else), on a loopback
/// port free for both UDP and TCP. dnsmasq listens on both and exits at once when either
/// is taken (another test's server may hold the TCP port), so it is started again on
/// another port until it is seen listening and still running.
fn upstream() -> (KillOnDrop, u16) {
    let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("dnsmasq (the test command installs dnsmasq-base)");
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        drop(udp);
        let mut child = KillOnDrop(
            Command::new(dnsmasq)
                .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1", "--pid-file=", "--user=root"])
                .arg(format!("--port={port}"))
                .arg("--address=/example.test/127.1.2.3")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq"),
        );
        let listening =
            eventually(Duration::from_secs(5), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() || child.0.try_wait().ok().flatten().is_some());
        if listening && child.0.try_wait().ok().flatten().is_none() {
            return (child, port);
        }
    }
    panic!("dnsmasq did not start on any of 20 ports");
}

fn exec(s: &Server, pod: &str, command: &str) -> (bool, String) {
    let out = s.kubectl(&["exec", pod, "--", "sh", "-c", command]);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn pods_resolve_cluster_names_and_reach_the_api_by_name() {
    let (_dnsmasq, port) = upstream();
    let n = std::process::id() % 200 + 20;
    let services = format!("127.98.{n}.0/24");
    let dns_ip = format!("127.98.{n}.10");
    let s = server_with_image_and(&[
        "--service-proxy=true",
        &format!("--service-cluster-ip-range={services}"),
        &format!("--cluster-dns-upstream=127.0.0.1:{port}"),
    ]);
    let work = s.dir.path().join("tools");
    std::fs::create_dir_all(&work).unwrap();
    let mut files = host_program_files(&["/usr/bin/curl", "/usr/bin/getent"]);
    files.push(("etc/nsswitch.conf".into(), b"hosts: files dns\n".to_vec()));
    let (archive, _) = build_image_with(&work, "tools:1.0", &files);
    load_image(&s, &archive);

    let manifests = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: web\n    image: testbox:1.0\n    command: [sh, -c, 'mkdir /www; echo hello > /www/index.html; exec httpd -f -p 8080 -h /www']\n    ports: [{name: http, containerPort: 8080}]\n---\n\
        apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n---\n\
        apiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  clusterIP: None\n  selector: {app: db}\n  ports: [{name: pg, port: 5432}]\n---\n\
        apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  serviceName: db\n  replicas: 2\n  podManagementPolicy: Parallel\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      containers:\n      - {name: db, image: testbox:1.0, command: [sleep, '3600']}\n---\n\
        apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  type: ExternalName\n  externalName: somewhere.example.test\n---\n\
        apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\nspec:\n  containers:\n  - {name: c, image: tools:1.0, command: [sleep, '3600']}\n";
    let out = s.k_stdin(&["apply", "-f", "-"], manifests);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for pod in ["web", "client", "db-0", "db-1"] {
        assert!(
            eventually(Duration::from_secs(60), || s.kubectl(&["wait", "--for=condition=Ready", &format!("pod/{pod}"), "--timeout=5s"]).status.success()),
            "{pod}: {}",
            s.k(&["get", "pods", "-o", "wide"])
        );
    }
    let hostnames = || {
        let mut h: Vec<String> = s
            .k(&["get", "endpointslices", "-l", "kubernetes.io/service-name=db", "-o", "jsonpath={.items[*].endpoints[*].hostname}"])
            .split_whitespace()
            .map(String::from)
            .collect();
        h.sort();
        h
    };
    assert!(eventually(Duration::from_secs(20), || hostnames() == ["db-0", "db-1"]), "{}", s.k(&["get", "endpointslices", "-o", "yaml"]));

    // The seed's recipe, verbatim, inside the pod.
    let (ok, api) = exec(
        &s,
        "client",
        r#"curl --cacert /var/run/secrets/kubernetes.io/serviceaccount/ca.crt -H "Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)" https://kubernetes.default.svc/api"#,
    );
    assert!(ok && api.contains(r#""kind":"APIVersions""#), "{api}");
    // The access map draws that path: the pod, through the `kubernetes` Service, as its
    // service account.
    let map: serde_json::Value = serde_json::from_str(&s.k(&["get", "--raw", "/access-map"])).unwrap();
    let identity = map["identities"].as_array().unwrap().iter().find(|i| i["name"] == "system:serviceaccount:default:default").cloned().unwrap_or_default();
    assert!(identity["methods"].to_string().contains("service-account token"), "{map}");
    assert!(identity["from"].to_string().contains("pod default/client via Service kubernetes"), "{map}");

    let web_ip = s.k(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let (ok, out) = exec(&s, "client", "getent hosts web");
    assert!(ok && out.starts_with(&web_ip) && out.contains("web.default.svc.cluster.local"), "{out}");
    let (ok, out) = exec(&s, "client", "curl -sS http://web/");
    assert!(ok && out == "hello\n", "{out}");
    // The headless Service: both pods; a StatefulSet pod by name.
    // Read until both pods have their IPs and the Service's records have caught up with
    // them (db-1 starts after db-0 is Ready).
    let (mut db0, mut db1, mut out, mut want) = (String::new(), String::new(), String::new(), Vec::new());
    let agreed = eventually(Duration::from_secs(30), || {
        db0 = s.k(&["get", "pod", "db-0", "-o", "jsonpath={.status.podIP}"]);
        db1 = s.k(&["get", "pod", "db-1", "-o", "jsonpath={.status.podIP}"]);
        want = vec![db0.clone(), db1.clone()];
        want.sort();
        let (ok, o) = exec(&s, "client", "getent ahostsv4 db | awk '{print $1}' | sort -u");
        out = o;
        ok && out.split_whitespace().collect::<Vec<_>>() == want.iter().map(String::as_str).collect::<Vec<_>>()
    });
    assert!(agreed, "{out} against {want:?}");
    let (ok, out) = exec(&s, "client", "getent hosts db-0.db");
    assert!(ok && out.starts_with(&db0) && out.contains("db-0.db.default.svc.cluster.local"), "{out}");
    // busybox's nslookup: SRV, and the reverse name of a ClusterIP.
    let (ok, out) = exec(&s, "web", "nslookup -type=SRV _http._tcp.web.default.svc.cluster.local");
    assert!(ok && out.contains("web.default.svc.cluster.local") && out.contains("80"), "{out}");
    let (ok, out) = exec(&s, "web", &format!("nslookup {web_ip}"));
    assert!(ok && out.contains("web.default.svc.cluster.local"), "{out}");
    // A name that does not exist, and ExternalName through the upstream resolver.
    let (ok, out) = exec(&s, "client", "getent hosts nothing.default.svc.cluster.local");
    assert!(!ok, "{out}");
    let (ok, out) = exec(&s, "client", "getent hosts ext");
    assert!(ok && out.starts_with("127.1.2.3"), "{out}");
    let (ok, out) = exec(&s, "client", "getent hosts somewhere.example.test");
    assert!(ok && out.starts_with("127.1.2.3"), "{out}");
    let (ok, out) = exec(&s, "client", &format!("getent hosts {}.default.pod.cluster.local", db1.replace('.', "-")));
    assert!(ok && out.starts_with(&db1), "{out}");

    // The kube-dns Service and its endpoints, as CoreDNS's.
    assert_eq!(s.k(&["-n", "kube-system", "get", "svc", "kube-dns", "-o", "jsonpath={.spec.clusterIP}"]), dns_ip);
    assert_eq!(s.k(&["-n", "kube-system", "get", "endpoints", "kube-dns", "-o", "jsonpath={.subsets[0].addresses[0].ip}"]), dns_ip);

    // From the host: the DNS address itself.
    let out = Command::new("/bin/busybox").args(["nslookup", "web.default.svc.cluster.local", &dns_ip]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&web_ip), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("/bin/busybox").args(["nslookup", "nothing.default.svc.cluster.local", &dns_ip]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("NXDOMAIN") || String::from_utf8_lossy(&out.stderr).contains("NXDOMAIN"), "{out:?}");
    // `nanokube dns lookup`, as dig would ask: A, SRV, NXDOMAIN.
    let lookup =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_nanokube")).args(["dns", "lookup", "--server", &format!("{dns_ip}:53")]).args(args).output().unwrap();
    let out = lookup(&["web.default.svc.cluster.local"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(";; NOERROR, 1 answer(s)") && text.contains(&format!("web.default.svc.cluster.local. 5 IN A {web_ip}")),
        "{text}"
    );
    let out = lookup(&["_http._tcp.web.default.svc.cluster.local", "--type", "SRV"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("IN SRV 0 100 80 web.default.svc.cluster.local."), "{out:?}");
    // A name that exists without records of the type asked: NODATA, not NXDOMAIN.
    let out = lookup(&["web.default.svc.cluster.local", "--type", "AAAA"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(";; NOERROR, 0 answer(s)"), "{out:?}");
    let out = lookup(&["nothing.default.svc.cluster.local"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stdout).contains("NXDOMAIN"), "{out:?}");
    // `nanokube dns hosts`: a marked block in a hosts file, and out again.
    let hosts = s.dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1\tlocalhost\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube"))
        .args(["dns", "hosts", "--write", "--file"])
        .arg(&hosts)
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&hosts).unwrap();
    assert!(
        text.starts_with("127.0.0.1\tlocalhost\n")
            && text.contains(&format!("{web_ip}\tweb.default.svc.cluster.local web.default.svc\n"))
            && !text.contains("db.default"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nanokube")).args(["dns", "hosts", "--remove", "--file"]).arg(&hosts).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "127.0.0.1\tlocalhost\n");

    // `--follow`: the block follows the Services while the command runs, and is gone
    // once it is stopped.
    let mut follower = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_nanokube"))
            .args(["dns", "hosts", "--write", "--follow", "--file"])
            .arg(&hosts)
            .arg("--kubeconfig")
            .arg(s.kubeconfig())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let holds = |line: &str| std::fs::read_to_string(&hosts).unwrap().contains(line);
    let web_line = format!("{web_ip}\tweb.default.svc.cluster.local web.default.svc\n");
    assert!(eventually(Duration::from_secs(10), || holds(&web_line)), "{}", std::fs::read_to_string(&hosts).unwrap());
    s.k(&["create", "service", "clusterip", "late", "--tcp=81:8080"]);
    let late_ip = s.k(&["get", "svc", "late", "-o", "jsonpath={.spec.clusterIP}"]);
    let late_line = format!("{late_ip}\tlate.default.svc.cluster.local late.default.svc\n");
    assert!(eventually(Duration::from_secs(5), || holds(&late_line)), "{}", std::fs::read_to_string(&hosts).unwrap());
    s.k(&["delete", "service", "late"]);
    assert!(eventually(Duration::from_secs(5), || !holds(&late_line) && holds(&web_line)), "{}", std::fs::read_to_string(&hosts).unwrap());
    let pid = follower.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = follower.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "127.0.0.1\tlocalhost\n");
}

/// A DNS query message for `name`, type A, with `id`.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A query the cluster DNS forwards to an upstream that never answers does not hold the
/// pod's other lookups: a cluster name asked after it is answered first, and the
/// forwarded one gets its SERVFAIL when the upstream's 2 s are up. (The pod's captured
/// UDP was served one datagram at a time, so the cluster name waited behind it.)
#[test]
fn a_silent_upstream_holds_up_no_other_lookup_from_a_pod() {
    use std::net::UdpSocket;
    // An upstream that takes queries and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let n = std::process::id() % 200 + 20;
    let dns = format!("127.89.{n}.10:53");
    let s = server_with_image_and(&[
        "--service-proxy=true",
        &format!("--service-cluster-ip-range=127.89.{n}.0/24"),
        &format!("--cluster-dns-upstream={}", silent.local_addr().unwrap()),
    ]);
    s.k(&["run", "idle", "--image=testbox:1.0", "--", "sleep", "3600"]);
    assert!(
        eventually(Duration::from_secs(60), || s.kubectl(&["wait", "--for=condition=Ready", "pod/idle", "--timeout=5s"]).status.success()),
        "{}",
        s.k(&["get", "pods", "-o", "wide"])
    );
    let uid = s.k(&["get", "pod", "idle", "-o", "jsonpath={.metadata.uid}"]);
    let ns = s.data.join("pods").join(uid.trim()).join("ns-net");
    // Two sockets made inside the pod's network namespace, as two lookups of a program there.
    let (outside, inside) = nanokube_runtime::netns::within(&ns, || (UdpSocket::bind("0.0.0.0:0").unwrap(), UdpSocket::bind("0.0.0.0:0").unwrap())).unwrap();
    let mut buf = [0u8; 512];
    // The capture is ready once the cluster name is answered.
    inside.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || inside.send_to(&a_query(1, "kubernetes.default.svc.cluster.local"), &dns).is_ok()
            && inside.recv(&mut buf).is_ok()),
        "the cluster DNS never answered inside the pod"
    );

    outside.send_to(&a_query(2, "example.org"), &dns).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    inside.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    inside.send_to(&a_query(3, "kubernetes.default.svc.cluster.local"), &dns).unwrap();
    let got = inside.recv(&mut buf).unwrap();
    assert!(got > 12 && buf[..2] == [0, 3] && buf[7] == 1, "the cluster name's answer: {:?}", &buf[..got]);
    // By then the forwarded query is still waiting for its upstream.
    outside.set_nonblocking(true).unwrap();
    let early = outside.recv(&mut buf);
    assert!(early.is_err(), "the forwarded query was answered before the cluster name: the cluster name waited behind it");
    outside.set_nonblocking(false).unwrap();
    outside.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let got = outside.recv(&mut buf).unwrap();
    assert!(got > 12 && buf[..2] == [0, 2] && buf[3] & 0x0f == 2, "SERVFAIL for the forwarded query: {:?}", &buf[..got]);
    drop(silent);
}
