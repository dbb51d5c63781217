//! Hostile clients at the node's listeners.
//!
//! - Out of file descriptors: with its limit lowered (`prlimit`) and every descriptor
//!   held by clients, the server's listeners (the API, a Service's ClusterIP, the cluster
//!   DNS over TCP) and `nanokube proxy` wait and go on. None spins a core on the failing
//!   `accept`, none stops serving, and the connections that queued meanwhile are carried
//!   once descriptors are free again.
//! - A DNS client over TCP that announces a message and trickles it is cut off.
//! - UDP clients sending through a Service from many ports, and TCP clients opening many
//!   connections through one, get a quarter of the descriptors at most each, and the API
//!   still answers.
//! - Many connections to a pod's port from the host are held to the same share.
//! - A UDP flow waiting for its answer holds no receive buffer.
//! - A burst of connects while the server cannot accept (stopped) all complete: its
//!   listeners' backlog is the kernel's `somaxconn`, as Go programs listen, not std's 128.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{build_image_with, eventually, host_program_files, load_image, wait_for, KillOnDrop, Server};

/// A server with its Service proxy on a Service range of this test's own (servers run
/// side by side, and each opens its Service addresses on the host), and its DNS address;
/// `which` tells this file's tests apart when they share a process.
fn server_with_services(which: u32) -> (Server, String) {
    let n = std::process::id() % 40 * 5 + which + 20;
    let s = Server::start_with(&["--service-proxy=true", &format!("--service-cluster-ip-range=127.93.{n}.0/24")]);
    (s, format!("127.93.{n}.10:53"))
}

/// Service `echo` in front of a TCP echo server of this test, once it echoes; its
/// ClusterIP and port.
fn echo_service(s: &Server) -> String {
    let vip = service_to(s, "echo", "TCP", echo_backend());
    assert!(eventually(Duration::from_secs(10), || try_connect(&vip).is_ok_and(|mut c| echoes(&mut c))), "{vip} never echoed");
    vip
}

/// A TCP echo server on 127.0.0.1 (threads of this test); its port.
fn echo_backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let Ok(mut reader) = conn.try_clone() else { return };
                let _ = std::io::copy(&mut reader, &mut conn);
            });
        }
    });
    port
}

fn connect(addr: &str) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"))
}

/// A connection to `addr` (made within 2 s) whose reads wait 10 s at most.
fn try_connect(addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().unwrap();
    let c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(c)
}

/// Service `name` at port 7000 (`protocol`) with one endpoint, 127.0.0.1:`port`; its
/// ClusterIP and port.
fn service_to(s: &Server, name: &str, protocol: &str, port: u16) -> String {
    let objects = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: 7000\n    protocol: {protocol}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/service-name: {name}\n\
         addressType: IPv4\nports:\n- name: \"\"\n  port: {port}\n  protocol: {protocol}\nendpoints:\n- addresses: [\"127.0.0.1\"]\n  conditions:\n    ready: true\n"
    );
    let out = s.k_stdin(&["apply", "-f", "-"], &objects);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("{}:7000", s.k(&["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"]))
}

/// Whether `c` echoes what it is sent.
fn echoes(c: &mut TcpStream) -> bool {
    let mut back = [0u8; 4];
    c.write_all(b"ping").is_ok() && c.read_exact(&mut back).is_ok() && &back == b"ping"
}

/// Whether the DNS server on `c` answers an A query for the API's Service with an
/// address (DNS over TCP: two-byte length prefixes).
fn dns_answers(c: &mut TcpStream) -> bool {
    let mut query = vec![0x4e, 0x4b, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["kubernetes", "default", "svc", "cluster", "local"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    let mut len = [0u8; 2];
    if c.write_all(&framed).is_err() || c.read_exact(&mut len).is_err() {
        return false;
    }
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
    // Same id, a response, NOERROR, at least one answer.
    c.read_exact(&mut answer).is_ok() && answer.len() > 12 && answer[..2] == query[..2] && answer[2] & 0x80 != 0 && answer[3] & 0x0f == 0 && answer[7] > 0
}

/// The time left until `deadline` (a millisecond at least: a read timeout cannot be zero).
fn until(deadline: std::time::Instant) -> Duration {
    deadline.saturating_duration_since(std::time::Instant::now()).max(Duration::from_millis(1))
}

/// The descriptors `pid` has open, and the highest of their numbers.
fn descriptors(pid: u32) -> (usize, u32) {
    let numbers: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    (numbers.len(), numbers.iter().copied().max().unwrap_or(0))
}

/// The CPU time `pid` has used (user and system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name: state is field 3, utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant of the system.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Lower `pid`'s descriptor limit so that at least `spare` more can be opened (more where
/// lower numbers are free, as new descriptors take the lowest); the limit and how many
/// more can be opened.
fn leave_spare_descriptors(pid: u32, spare: usize) -> (usize, usize) {
    let (open, highest) = descriptors(pid);
    let limit = (open + spare).max(highest as usize + 1);
    let out = Command::new("prlimit").arg(format!("--pid={pid}")).arg(format!("--nofile={limit}:{limit}")).output().unwrap();
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
    (limit, limit - open)
}

/// CPU `pid` uses over two seconds, in seconds.
fn cpu_over_two_seconds(pid: u32) -> f64 {
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    cpu_seconds(pid) - before
}

#[test]
fn out_of_descriptors_the_servers_listeners_wait_and_then_carry_what_queued() {
    let (s, dns) = server_with_services(0);
    let vip = echo_service(&s);
    assert!(eventually(Duration::from_secs(10), || try_connect(&dns).is_ok_and(|mut c| dns_answers(&mut c))), "{dns} never answered");

    // Every descriptor the server may open is taken by connections to its API port
    // (held in their TLS handshakes; the rest queue), then connections queue at the
    // ClusterIP and the DNS address, whose accepts now fail.
    // The limit stays at 64 or more: the relay cap is an eighth of it, and the five
    // connections queued at the ClusterIP and a new one must fit under it.
    let pid = s.child.id();
    let (limit, spare) = leave_spare_descriptors(pid, 20.max(64usize.saturating_sub(descriptors(pid).0)));
    let api: Vec<TcpStream> = (0..spare + 40).map(|_| connect(&format!("127.0.0.1:{}", s.port))).collect();
    assert!(eventually(Duration::from_secs(5), || descriptors(pid).0 >= limit), "the server holds {:?} of {limit}", descriptors(pid));
    let mut queued_at_vip: Vec<TcpStream> = (0..5).map(|_| connect(&vip)).collect();
    let mut queued_at_dns: Vec<TcpStream> = (0..5).map(|_| connect(&dns)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let used = cpu_over_two_seconds(pid);
    assert!(used < 0.5, "with its accepts failing the server used {used:.2} s of CPU in 2 s: a listener spins");
    assert!(descriptors(pid).0 > 0, "the server is gone");

    // Descriptors free again: what queued is carried, and new connections are too.
    drop(api);
    for c in &mut queued_at_vip {
        assert!(echoes(c), "a connection that queued at the ClusterIP was not carried");
    }
    for c in &mut queued_at_dns {
        assert!(dns_answers(c), "a DNS query that queued was not answered");
    }
    assert!(echoes(&mut connect(&vip)));
    assert_eq!(s.k(&["get", "--raw", "/readyz", "--request-timeout=10s"]), "ok");
}

#[test]
fn out_of_descriptors_nanokube_proxy_waits_and_serves_again() {
    let s = Server::start();
    let mut proxy = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_nanokube"))
            .args(["proxy", "--port=0", "--kubeconfig"])
            .arg(s.kubeconfig())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(proxy.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap_or_else(|_| panic!("proxy said {line:?}"));
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(get("/api"), "200");

    let pid = proxy.0.id();
    let (limit, spare) = leave_spare_descriptors(pid, 8);
    // (Connections that find the proxy gone are refused; the check below says so.)
    let held: Vec<TcpStream> = (0..spare + 20).filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok()).collect();
    let exhausted = eventually(Duration::from_secs(5), || proxy.0.try_wait().is_ok_and(|e| e.is_some()) || descriptors(pid).0 >= limit);
    assert!(proxy.0.try_wait().unwrap().is_none(), "nanokube proxy ended when it ran out of descriptors");
    assert!(exhausted, "the proxy holds {:?} of {limit}", descriptors(pid));
    let used = cpu_over_two_seconds(pid);
    assert!(proxy.0.try_wait().unwrap().is_none(), "nanokube proxy ended when it ran out of descriptors");
    assert!(used < 0.5, "with its accepts failing nanokube proxy used {used:.2} s of CPU in 2 s");
    drop(held);
    assert!(eventually(Duration::from_secs(10), || get("/api") == "200"), "nanokube proxy did not serve again");
}

#[test]
fn a_dns_client_that_trickles_a_message_over_tcp_is_cut_off() {
    let (_s, dns) = server_with_services(1);
    assert!(eventually(Duration::from_secs(10), || try_connect(&dns).is_ok_and(|mut c| dns_answers(&mut c))), "{dns} never answered");
    // A 100-byte message announced, then one byte a second: it never ends. The server
    // gives a message 10 s; the test waits up to 30.
    let mut c = connect(&dns);
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    c.write_all(&[0, 100]).unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    while !closed && started.elapsed() < Duration::from_secs(30) {
        closed = c.write_all(&[0]).is_err()
            || match c.read(&mut [0u8; 16]) {
                Ok(_) => true,
                Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            };
    }
    assert!(closed, "the DNS server held a connection trickling one message for {:?}", started.elapsed());
}

#[test]
fn udp_flows_from_many_ports_leave_the_api_its_descriptors() {
    let (s, _) = server_with_services(2);
    let vip = udp_echo_service(&s);

    // More clients than the server has descriptors to spare, each from a port of its own.
    let pid = s.child.id();
    let (limit, spare) = leave_spare_descriptors(pid, 300);
    let clients: Vec<UdpSocket> = (0..spare + 50).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for c in &clients {
        c.send_to(b"ping", &vip).unwrap();
    }
    let answered = answered_within_5s(&clients);
    // The probe's flow counts too.
    assert!(answered < limit / 4, "{answered} flows started with a limit of {limit} descriptors");
    assert!(answered + 10 > limit / 4, "only {answered} flows started: the cap is {}", limit / 4);
    assert_eq!(s.k(&["get", "--raw", "/readyz", "--request-timeout=10s"]), "ok");
    // A client whose flow was started is still carried.
    let first = &clients[0];
    first.set_nonblocking(false).unwrap();
    first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    first.send_to(b"pong", &vip).unwrap();
    let mut back = [0u8; 8];
    assert!(first.recv(&mut back).is_ok_and(|n| &back[..n] == b"pong"), "a carried flow stopped");
}

/// Service `uecho` in front of a UDP echo server of this test, once it echoes (a flow of
/// its own); its ClusterIP and port.
fn udp_echo_service(s: &Server) -> String {
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let _ = backend.send_to(&buf[..n], from);
        }
    });
    let vip = service_to(s, "uecho", "UDP", backend_port);
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || probe.send_to(b"ping", &vip).is_ok() && probe.recv(&mut [0u8; 8]).is_ok_and(|n| n == 4)),
        "{vip} never echoed"
    );
    vip
}

/// How many of `clients` got an answer, awaited until one deadline 5 s away (the first
/// client left unanswered waits it out; the answers to the others have come by then).
fn answered_within_5s(clients: &[UdpSocket]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    clients
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(until(deadline))).unwrap();
            c.recv(&mut [0u8; 8]).is_ok()
        })
        .count()
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
}

/// A UDP flow waiting for its endpoint's answer holds its socket and little else: with a
/// 64 KiB buffer held by each waiting flow, 704 clients from ports of their own put
/// 45 MiB on the server.
#[test]
fn udp_flows_hold_no_buffer_while_they_wait() {
    let (s, _) = server_with_services(4);
    let vip = udp_echo_service(&s);
    let pid = s.child.id();
    let before = rss_kib(pid);
    let clients: Vec<UdpSocket> = (0..1500).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for chunk in clients.chunks(100) {
        for c in chunk {
            c.send_to(b"ping", &vip).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let answered = answered_within_5s(&clients);
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(answered >= 300, "only {answered} of 1,500 flows were carried");
    assert!(grown < answered * 16, "{answered} flows added {grown} KiB to the server");
}

#[test]
fn tcp_connections_through_a_service_leave_the_api_its_descriptors() {
    let (s, _) = server_with_services(3);
    let vip = echo_service(&s);

    let clients = relayed_at_most_an_eighth(&s, &vip);
    // Room again once clients leave.
    drop(clients);
    assert!(eventually(Duration::from_secs(10), || try_connect(&vip).is_ok_and(|mut c| echoes(&mut c))), "{vip} did not relay again");
}

/// With the server's descriptors lowered to leave 300 spare, more connections than that
/// to echo server `addr` through the server: at most an eighth of the limit are relayed
/// (two descriptors each), and within 10 of it; the API still answers. The connections.
fn relayed_at_most_an_eighth(s: &Server, addr: &str) -> Vec<TcpStream> {
    let (limit, spare) = leave_spare_descriptors(s.child.id(), 300);
    // Opening stops at the first connection that fails: one reset past the cap, or one
    // the kernel's full accept queue leaves unanswered (no cap: every descriptor taken
    // and the rest queued).
    let mut clients: Vec<TcpStream> = (0..spare + 50).map_while(|_| try_connect(addr).ok()).collect();
    for c in &mut clients {
        let _ = c.write_all(b"ping");
    }
    // Echoes are awaited until one deadline (connections past the cap are reset at once).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let echoed = clients
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(until(deadline))).unwrap();
            let (mut reader, mut back): (&TcpStream, _) = (c, [0u8; 4]);
            reader.read_exact(&mut back).is_ok() && &back == b"ping"
        })
        .count();
    assert!(echoed <= limit / 8, "{echoed} connections relayed with a limit of {limit} descriptors");
    assert!(echoed + 10 > limit / 8, "only {echoed} connections relayed: the cap is {}", limit / 8);
    assert_eq!(s.k(&["get", "--raw", "/readyz", "--request-timeout=10s"]), "ok");
    clients
}

#[test]
fn connections_to_a_pods_port_leave_the_api_its_descriptors() {
    let s = Server::start();
    let work = s.dir.path().join("tools");
    std::fs::create_dir_all(&work).unwrap();
    let (archive, _) = build_image_with(&work, "tools:1.0", &host_program_files(&["/usr/bin/socat"]));
    load_image(&s, &archive);
    let manifest = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: echo\nspec:\n  containers:\n  - name: tcp\n    image: tools:1.0\n    \
                    command: [socat, 'TCP4-LISTEN:9001,fork,reuseaddr', 'EXEC:cat']\n    ports:\n    - containerPort: 9001\n";
    let out = s.k_stdin(&["apply", "-f", "-"], manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pod = wait_for(&s, "echo", "a pod IP", |p| p["status"]["podIP"].is_string() && p["status"]["phase"] == "Running");
    let addr = format!("{}:9001", pod["status"]["podIP"].as_str().unwrap());
    assert!(eventually(Duration::from_secs(20), || try_connect(&addr).is_ok_and(|mut c| echoes(&mut c))), "{addr} never echoed");
    let clients = relayed_at_most_an_eighth(&s, &addr);
    drop(clients);
    assert!(eventually(Duration::from_secs(10), || try_connect(&addr).is_ok_and(|mut c| echoes(&mut c))), "{addr} did not relay again");
}

#[test]
fn a_burst_of_connects_while_the_server_is_stopped_all_complete() {
    let s = Server::start();
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn").unwrap().trim().parse().unwrap();
    let want = somaxconn.min(300);
    let pid = s.child.id() as i32;
    let addr: SocketAddr = format!("127.0.0.1:{}", s.port).parse().unwrap();
    // SAFETY: kill(2) of the server this test started; SIGCONT follows before any assert.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let opened: Vec<TcpStream> = (0..want).map_while(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()).collect();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let completed = opened.len();
    drop(opened);
    assert_eq!(completed, want, "{completed} of {want} connects completed while the server could not accept (somaxconn {somaxconn})");
    assert_eq!(s.k(&["get", "--raw", "/readyz", "--request-timeout=10s"]), "ok");
}
