//! The original destination of a redirected UDP flow, asked of a real kernel: a network
//! namespace of the test's own with a pod's `REDIRECT` rule (root, as the node's tests).

use std::net::{SocketAddrV4, UdpSocket};

use nanokube_net::conntrack::Conntrack;
use nanokube_runtime::netns;

#[test]
fn a_redirected_flow_is_found_by_its_reply_tuple() {
    let dir = tempfile::tempdir().unwrap();
    let ns = dir.path().join("ns-net");
    netns::create(netns::Kind::Net, &ns).unwrap();
    let restore = nanokube_runtime::find_program("iptables-restore").expect("iptables-restore (Debian: iptables)");
    let found = netns::within(&ns, move || {
        use std::io::Write;
        let mut child = std::process::Command::new(restore).arg("--noflush").stdin(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(b"*nat\n-A OUTPUT -d 127.96.0.0/16 -p udp -j REDIRECT --to-ports 15001\nCOMMIT\n").unwrap();
        assert!(child.wait().unwrap().success());
        let capture = UdpSocket::bind("127.0.0.1:15001").unwrap();
        let conntrack = Conntrack::open_here();
        let mut asked = Vec::new();
        // Many flows, so a lookup that ignored the tuple would be caught.
        let clients: Vec<UdpSocket> = (0..20).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(b"q", format!("127.96.0.{}:{}", 10 + i, 53 + i)).unwrap();
        }
        let mut buf = [0u8; 16];
        for _ in 0..clients.len() {
            let (_, from) = capture.recv_from(&mut buf).unwrap();
            let std::net::SocketAddr::V4(from) = from else { panic!("{from}") };
            asked.push((from, conntrack.ask_kernel(from, "127.0.0.1:15001".parse().unwrap())));
        }
        let unknown = conntrack.ask_kernel("127.0.0.1:1".parse().unwrap(), "127.0.0.1:15001".parse().unwrap());
        (clients.iter().map(|c| c.local_addr().unwrap()).collect::<Vec<_>>(), asked, unknown)
    });
    netns::remove(&ns).unwrap();
    let (clients, asked, unknown) = found.unwrap();
    for (from, answer) in asked {
        let i = clients.iter().position(|c| *c == std::net::SocketAddr::V4(from)).unwrap();
        let want: SocketAddrV4 = format!("127.96.0.{}:{}", 10 + i, 53 + i).parse().unwrap();
        assert_eq!(answer, Some(Some(want)), "the flow from {from}");
    }
    assert_eq!(unknown, Some(None), "no flow: the kernel says so, and nothing is made up");
}
